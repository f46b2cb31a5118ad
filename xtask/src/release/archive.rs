//! `plexichat-<version>-<triple>.tar.gz`: one directory of that name holding the static
//! binary, the README, the licences, the release's profile and the systemd unit — what
//! install.sh unpacks, and what a user can install by hand.

use super::Release;
use crate::system::tarball::{self, Tarball, ROOT};
use crate::workspace::targets::Target;

/// The archive's bytes.
pub(crate) fn make(release: &Release, target: &Target, binary: &[u8]) -> Vec<u8> {
    let top = release.archive_stem(target);
    let shipped = &release.shipped;
    let mut tar = Tarball::new(release.epoch);
    tar.dir(&format!("{top}/"), 0o755, ROOT)
        .file(&format!("{top}/plexichat"), 0o755, ROOT, binary)
        .file(&format!("{top}/README.md"), 0o644, ROOT, &shipped.readme);
    for (name, text) in &shipped.licences {
        tar.file(&format!("{top}/{name}"), 0o644, ROOT, text);
    }
    tar.file(&format!("{top}/profile.yaml"), 0o644, ROOT, &shipped.profile)
        .file(&format!("{top}/plexichat.service"), 0o644, ROOT, &shipped.unit);
    tarball::gzip(&tar.finish())
}
