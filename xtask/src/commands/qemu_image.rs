//! `cargo xtask qemu-image`: guest images, one per architecture, from the definitions in
//! qemu-images/<arch>.yaml. An image is a kernel (from the pinned Debian package, made
//! directly bootable) and a gzipped initramfs written here: the static server as /init,
//! the kernel modules its init loads and their load order. Built images live in
//! target/xtask/qemu-images/<arch>/ with an image.json; an image whose inputs have not
//! changed is reused, not rebuilt.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::cargo::artefact::target_binary;
use crate::guest::image::{self, BuiltImage};
use crate::guest::{load_definition, load_file, ImageDefinition};
use crate::provision::{self, Requirement};
use crate::qemu::boot_command;
use crate::report::error::UsageError;
use crate::report::progress::Progress;
use crate::report::{Outcome, Table};
use crate::workspace::profile::Profile;
use crate::workspace::targets::{Target, TARGETS};
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// x86_64, aarch64, riscv64, or all.
    #[arg(long, default_value = "all", value_name = "ARCH")]
    arch: String,
    /// Build this image definition file instead of qemu-images/<ARCH>.yaml.
    #[arg(long, value_name = "FILE", conflicts_with = "arch")]
    definition: Option<PathBuf>,
    /// Profile: NAME for profiles/NAME.yaml, or a path; its build section makes the server.
    #[arg(long, default_value = "release")]
    profile: String,
}

#[derive(Serialize)]
pub struct ImageReport {
    ok: bool,
    profile: String,
    images: Vec<BuiltImage>,
    failures: BTreeMap<String, String>,
    /// Where the images live, for the summary.
    #[serde(skip)]
    images_dir: PathBuf,
    /// For the summary's hand-boot command of the first image.
    #[serde(skip)]
    definitions: Vec<ImageDefinition>,
}

pub fn run(args: Args) -> Result<ImageReport> {
    let workspace = Workspace::discover()?;
    let profile = Profile::load(&workspace.profiles_dir(), &args.profile)?;
    let definitions = match &args.definition {
        Some(path) => vec![load_file(path)?],
        None => arches(&args.arch)?
            .into_iter()
            .map(|arch| load_definition(&workspace, arch))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let progress = Progress::new();
    let targets: Vec<&'static Target> = definitions.iter().map(|d| d.target()).collect();
    let mut failures = provision::install_per_target(&targets, Requirement::to_build, &progress);
    let mut images = Vec::new();
    for definition in &definitions {
        let task = progress.task(&definition.name());
        if let Some(missing) = failures.get(definition.target().triple).cloned() {
            task.finish(format!("FAILED: {missing}"));
            failures.remove(definition.target().triple);
            failures.insert(definition.name(), missing);
            continue;
        }
        let image = target_binary(&workspace, &profile.build, definition.target(), &task)
            .and_then(|binary| image::ensure(&workspace, definition, binary, None, &task));
        match image {
            Ok(image) => {
                task.finish(if image.cache_hit {
                    "ok (cached)".to_string()
                } else {
                    format!("ok (built in {:.1} s)", image.seconds)
                });
                images.push(image);
            }
            // A definition that is wrong stops the run: exit status 2 names its field.
            Err(err) if err.downcast_ref::<UsageError>().is_some() => {
                task.finish("FAILED: the image definition needs fixing");
                return Err(err);
            }
            Err(err) => {
                task.finish(format!("FAILED: {}", first_line(&format!("{err:#}"))));
                failures.insert(definition.name(), format!("{err:#}"));
            }
        }
    }
    Ok(ImageReport {
        ok: failures.is_empty(),
        profile: profile.name,
        images,
        failures,
        images_dir: workspace.target_dir.join("xtask/qemu-images"),
        definitions,
    })
}

impl Outcome for ImageReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&[
            "image",
            "result",
            "cache",
            "kernel package",
            "modules",
            "kernel",
            "initramfs",
            "s",
        ]);
        for image in &self.images {
            let built_in = image.modules.iter().filter(|m| m.built_in).count();
            table.row(vec![
                image.name.clone(),
                "ok".into(),
                if image.cache_hit { "hit" } else { "miss" }.into(),
                image.kernel_package.clone(),
                format!("{} (+{built_in} built in)", image.modules.len() - built_in),
                megabytes(image.kernel_bytes),
                megabytes(image.initramfs_bytes),
                format!("{:.1}", image.seconds),
            ]);
        }
        for (name, error) in &self.failures {
            let mut row = vec![name.clone(), "FAILED".into()];
            row.extend(["-"; 5].map(String::from));
            row.push(first_line(error));
            table.row(row);
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let mut summary = format!(
            "images: {}/<arch>/ (kernel, initramfs.cpio.gz, image.json)",
            self.images_dir.display()
        );
        if let Some((image, definition)) = self.images.first().and_then(|image| {
            let definition = self.definitions.iter().find(|d| d.name() == image.name)?;
            Some((image, definition))
        }) {
            if let Ok((accelerator, _)) = definition.accelerator() {
                summary.push_str(&format!(
                    "\nboot {} by hand: {}",
                    image.name,
                    shell_words(&boot_command(definition, image, accelerator))
                ));
            }
        }
        for (name, error) in &self.failures {
            summary.push_str(&format!("\n{name}: {error}"));
        }
        Some(summary)
    }
}

/// The architectures `--arch` names.
fn arches(flag: &str) -> Result<Vec<&'static str>, UsageError> {
    if flag == "all" {
        return Ok(TARGETS.iter().map(|t| t.arch).collect());
    }
    match TARGETS.iter().find(|t| t.arch == flag) {
        Some(target) => Ok(vec![target.arch]),
        None => Err(UsageError(format!(
            "--arch: unknown architecture `{flag}`\n  fix: use one of x86_64, aarch64, riscv64, all"
        ))),
    }
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            if word.is_empty() || word.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_./=,:+".contains(c))) {
                format!("'{}'", word.replace('\'', r"'\''"))
            } else {
                word.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_flags_are_checked() {
        assert_eq!(arches("all").unwrap(), ["x86_64", "aarch64", "riscv64"]);
        assert_eq!(arches("riscv64").unwrap(), ["riscv64"]);
        let err = arches("aarch64-unknown-linux-gnu").unwrap_err().to_string();
        assert!(err.contains("--arch") && err.contains("riscv64"), "{err}");
    }

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let words = ["qemu", "-append", "console=ttyS0 panic=-1", "it's"].map(String::from);
        assert_eq!(shell_words(&words), r"qemu -append 'console=ttyS0 panic=-1' 'it'\''s'");
    }
}
