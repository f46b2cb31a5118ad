//! `install.sh`: the workspace's `packaging/install.sh` with this release's version and
//! download location written in.

use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::Release;

/// The installer's text.
pub(crate) fn render(release: &Release, template: &Path) -> Result<String> {
    let text = std::fs::read_to_string(template).with_context(|| format!("reading {}", template.display()))?;
    ensure!(
        text.contains("@VERSION@") && text.contains("@BASE_URL@"),
        "{} has lost its @VERSION@ or @BASE_URL@ placeholder",
        template.display()
    );
    Ok(text
        .replace("@VERSION@", &release.version)
        .replace("@BASE_URL@", &release.download_url()))
}
