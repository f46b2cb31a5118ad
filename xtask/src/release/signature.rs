//! `SHA256SUMS.minisig`: the checksums signed with minisign (Debian's `minisign`), so
//! that one public key vouches for every file of the release. The trusted comment names
//! the release instead of minisign's default timestamp: Ed25519 signatures are
//! deterministic, so the same key signs the same checksums with the same bytes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use services::process::{self, cmd};

use crate::report::error::UsageError;

pub(crate) const MINISIGN: &str = "minisign";

/// A signing key the user named, checked before anything is built.
pub(crate) struct SigningKey(PathBuf);

impl SigningKey {
    /// `--sign KEY`: a minisign secret key file.
    pub(crate) fn given(path: &Path) -> Result<Self, UsageError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            UsageError(format!(
                "--sign {}: cannot read the key: {err}\n  fix: give a minisign secret key, or make one: minisign -G -W -s {} -p {}.pub",
                path.display(),
                path.display(),
                path.display()
            ))
        })?;
        if !text.starts_with("untrusted comment:") {
            return Err(UsageError(format!(
                "--sign {}: not a minisign secret key (it starts with `untrusted comment:`)\n  fix: give the file `minisign -G` wrote with -s",
                path.display()
            )));
        }
        Ok(Self(path.to_path_buf()))
    }

    /// Signs `file` into `file.minisig`; returns the signature's path.
    pub(crate) fn sign(&self, file: &Path, trusted_comment: &str) -> Result<PathBuf> {
        let signature = PathBuf::from(format!("{}.minisig", file.display()));
        let key = &self.0;
        let sh = process::shell()?;
        // stdin is closed: a key with a password fails here rather than waiting for one.
        process::run(cmd!(
            sh,
            "{MINISIGN} -S -s {key} -m {file} -x {signature} -t {trusted_comment}"
        ))?;
        Ok(signature)
    }
}
