//! `SHA256SUMS`: a line per file, as `sha256sum` writes it and `sha256sum -c` reads it,
//! in name order.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::system::file_sha256;

pub(crate) const FILE: &str = "SHA256SUMS";

/// The checksums of the files `names` in `dir`, by name.
pub(crate) fn of(dir: &Path, names: &[String]) -> Result<BTreeMap<String, String>> {
    names
        .iter()
        .map(|name| Ok((name.clone(), file_sha256(&dir.join(name))?)))
        .collect()
}

/// The file's text: `<hex>  <name>` per line (two spaces: text mode, as sha256sum).
pub(crate) fn render(sums: &BTreeMap<String, String>) -> String {
    sums.iter().map(|(name, sum)| format!("{sum}  {name}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_in_name_order_as_sha256sum_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.tar.gz"), b"b").unwrap();
        std::fs::write(dir.path().join("a.deb"), b"").unwrap();
        let sums = of(dir.path(), &["b.tar.gz".into(), "a.deb".into()]).unwrap();
        assert_eq!(
            render(&sums),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.deb\n\
             3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d  b.tar.gz\n"
        );
    }
}
