//! The Debian package of a target's build, `plexichat_<version>_<arch>.deb`, built by
//! Debian's own `dpkg-deb` from a staged tree: the binary in /usr/bin, the unit in
//! /lib/systemd/system, the profile as the conffile /etc/plexichat/profile.yaml, the
//! README and copyright in /usr/share/doc/plexichat, and the maintainer scripts of
//! `packaging/debian/` (the system user, /var/lib/plexichat, the service enabled).
//!
//! Reproducible: dpkg-deb dates the ar members at `SOURCE_DATE_EPOCH` and clamps every
//! file's mtime to it, `--root-owner-group` makes every entry root's, the modes are set
//! here, and xz runs on one thread (its output depends on the thread count).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use md5::{Digest, Md5};
use services::process::{self, cmd};
use services::teardown::TempDir;

use super::Release;
use crate::system::hex;
use crate::workspace::targets::Target;

/// Debian's tool that builds packages (package `dpkg`, on every Debian system).
pub(crate) const DPKG_DEB: &str = "dpkg-deb";

/// The installed files: (path in the package, mode, contents).
type Files = Vec<(&'static str, u32, Vec<u8>)>;

/// The package's file name for `target`.
pub(crate) fn file_name(release: &Release, target: &Target) -> String {
    format!("plexichat_{}_{}.deb", debian_version(&release.version), target.deb_arch)
}

/// Builds the package of `binary` for `target` as `out`.
pub(crate) fn make(release: &Release, target: &Target, binary: &[u8], out: &Path) -> Result<()> {
    let debian = release.packaging.join("debian");
    let read = |name: &str| {
        let path = debian.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let shipped = &release.shipped;
    let files: Files = vec![
        ("usr/bin/plexichat", 0o755, binary.to_vec()),
        ("etc/plexichat/profile.yaml", 0o644, shipped.profile.clone()),
        ("lib/systemd/system/plexichat.service", 0o644, shipped.unit.clone()),
        ("usr/share/doc/plexichat/README.md", 0o644, shipped.readme.clone()),
        ("usr/share/doc/plexichat/copyright", 0o644, read("copyright")?),
    ];
    let control = read("control")?;
    let control = String::from_utf8(control)
        .context("packaging/debian/control is not UTF-8")?
        .replace("@VERSION@", &debian_version(&release.version))
        .replace("@ARCH@", target.deb_arch)
        .replace("@INSTALLED_SIZE@", &installed_kib(&files).to_string());
    let md5sums: String = files
        .iter()
        .map(|(path, _, data)| format!("{}  {path}\n", hex(&Md5::digest(data))))
        .collect();
    let mut control_files: Vec<(&str, u32, Vec<u8>)> = vec![
        ("control", 0o644, control.into_bytes()),
        // /etc is the administrator's: an upgrade keeps their edits (dpkg asks).
        ("conffiles", 0o644, b"/etc/plexichat/profile.yaml\n".to_vec()),
        ("md5sums", 0o644, md5sums.into_bytes()),
    ];
    for script in ["postinst", "prerm", "postrm"] {
        control_files.push((script, 0o755, read(script)?));
    }

    let stage = TempDir::new("deb")?;
    let root = stage.path().join("root");
    for (path, mode, data) in &files {
        put(&root, path, *mode, data)?;
    }
    for (name, mode, data) in &control_files {
        put(&root, &format!("DEBIAN/{name}"), *mode, data)?;
    }
    let sh = process::shell()?;
    let epoch = release.epoch.to_string();
    process::run(
        cmd!(
            sh,
            "{DPKG_DEB} --root-owner-group -Zxz --threads-max=1 --build {root} {out}"
        )
        .env("SOURCE_DATE_EPOCH", epoch),
    )
}

/// Writes `data` at `root/path` with `mode`, its directories 0755.
fn put(root: &Path, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let file = root.join(path);
    let mut dir = file.parent();
    while let Some(parent) = dir.filter(|d| d.starts_with(root)) {
        std::fs::create_dir_all(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        dir = parent.parent();
    }
    std::fs::write(&file, data).with_context(|| format!("writing {}", file.display()))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Installed-Size: KiB on disk, each file rounded up to a whole KiB as dpkg-gencontrol
/// counts it.
fn installed_kib(files: &Files) -> u64 {
    files
        .iter()
        .map(|(_, _, data)| (data.len() as u64).div_ceil(1024))
        .sum()
}

/// A Cargo version as Debian orders it: a pre-release (`1.0.0-rc.1`) sorts before its
/// release only with `~` (`1.0.0~rc.1`); a `-` would be read as a Debian revision.
pub(crate) fn debian_version(version: &str) -> String {
    version.replacen('-', "~", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pre_release_sorts_before_its_release_in_debian() {
        assert_eq!(debian_version("0.1.0"), "0.1.0");
        assert_eq!(debian_version("1.0.0-rc.1"), "1.0.0~rc.1");
        assert_eq!(debian_version("1.0.0-rc-2+build.5"), "1.0.0~rc-2+build.5");
    }

    #[test]
    fn installed_size_counts_whole_kib_per_file() {
        let files: Files = vec![
            ("a", 0o644, vec![0; 1]),
            ("b", 0o644, vec![0; 1024]),
            ("c", 0o644, vec![0; 1025]),
        ];
        assert_eq!(installed_kib(&files), 1 + 1 + 2);
    }
}
