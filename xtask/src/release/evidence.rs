//! `evidence.json`: for each artefact of the release, what it is (its SHA-256), what it
//! was built from (revision, profile, compiler, target, build-native's cache key), and
//! what ran it before it shipped: the smoke run of its binary on its architecture
//! (natively, or under qemu-user), and, when the same revision has them, qemu-cluster's
//! verdict for that architecture and bench-compare's (`report::verdicts`), each saying
//! whether it tested this very binary.
//!
//! Only what the binaries and the recorded verdicts determine goes in (no time of the
//! release, no "was the smoke result reused"), so that a release made twice from the
//! same binaries and verdicts has the same evidence.

use serde::Serialize;

use super::Release;
use crate::cargo::artefact::Artefact;
use crate::cargo::smoke::Step;
use crate::report::verdicts::Recorded;
use crate::workspace::targets::Target;

#[derive(Serialize)]
pub(crate) struct Evidence {
    pub version: String,
    pub revision: String,
    pub profile: String,
    /// `rustc -vV`'s first line.
    pub rustc: String,
    pub source_date_epoch: u64,
    pub artefacts: Vec<ArtefactEvidence>,
    /// The release's files that hold no binary (install.sh): their checksums only.
    pub others: Vec<File>,
}

#[derive(Clone, Serialize)]
pub(crate) struct File {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Serialize)]
pub(crate) struct ArtefactEvidence {
    #[serde(flatten)]
    pub file: File,
    /// `archive`, `deb`, or `oci` (the image for `target` in the multi-platform archive).
    pub kind: &'static str,
    /// Its CycloneDX SBOM, a file of the release.
    pub sbom: String,
    pub target: String,
    pub binary: Binary,
    pub smoke: SmokeEvidence,
    /// qemu-cluster's last verdict on this architecture, if it was for this revision.
    pub qemu_cluster: Option<VerdictEvidence>,
    /// bench-compare's last verdict, if it was for this revision (it runs on the host, so
    /// it speaks for the host's architecture).
    pub bench_compare: Option<VerdictEvidence>,
}

/// The binary inside an artefact and the inputs of its build.
#[derive(Clone, Serialize)]
pub(crate) struct Binary {
    pub sha256: String,
    pub bytes: u64,
    pub is_static: bool,
    pub revision: String,
    pub profile: String,
    pub target: String,
    /// build-native's key over every input that can change the binary.
    pub cache_key: String,
    /// How many crates the binary says it was built from (cargo-auditable's list, read
    /// back from it): the same crates as its SBOM lists, or it would not have shipped.
    pub embedded_crates: usize,
}

#[derive(Clone, Serialize)]
pub(crate) struct SmokeEvidence {
    pub ok: bool,
    /// How it ran on its architecture: `natively` or `under qemu-<arch>`.
    pub ran: String,
    /// The key of the inputs it ran with (the binary's hash among them).
    pub key: String,
    pub steps: Vec<Step>,
}

#[derive(Clone, Serialize)]
pub(crate) struct VerdictEvidence {
    pub ok: bool,
    pub revision: String,
    /// Whether the binary it tested is this artefact's (`None`: it did not say which).
    pub same_binary: Option<bool>,
    pub checks: Vec<String>,
    /// When it was reached, in seconds since the epoch.
    pub at: u64,
}

/// What a binary's artefacts share: its build, its smoke run and the verdicts on it.
pub(crate) struct Tested {
    pub binary: Binary,
    pub smoke: SmokeEvidence,
    pub qemu_cluster: Option<VerdictEvidence>,
    pub bench_compare: Option<VerdictEvidence>,
}

impl Tested {
    /// The evidence for `artefact` (built for `target`), with the verdicts recorded for
    /// its architecture, kept when they are for its revision.
    pub(crate) fn of(
        artefact: &Artefact,
        target: &Target,
        embedded_crates: usize,
        qemu_cluster: Option<Recorded>,
        bench_compare: Option<Recorded>,
    ) -> Self {
        let verdict = |recorded: Option<Recorded>| {
            recorded
                .filter(|recorded| recorded.revision == artefact.git_revision)
                .map(|recorded| VerdictEvidence {
                    ok: recorded.ok,
                    same_binary: recorded.binary_sha256.map(|sha256| sha256 == artefact.sha256),
                    revision: recorded.revision,
                    checks: recorded.checks,
                    at: recorded.at,
                })
        };
        Self {
            binary: Binary {
                sha256: artefact.sha256.clone(),
                bytes: artefact.bytes,
                is_static: artefact.is_static,
                revision: artefact.git_revision.clone(),
                profile: artefact.profile.clone(),
                target: artefact.target.clone(),
                cache_key: artefact.cache_key.clone(),
                embedded_crates,
            },
            smoke: SmokeEvidence {
                ok: artefact.smoke.ok,
                ran: if target.is_foreign() {
                    format!("under {}", target.qemu_user())
                } else {
                    "natively".into()
                },
                key: artefact.smoke.key.clone(),
                steps: artefact.smoke.steps.clone(),
            },
            qemu_cluster: verdict(qemu_cluster),
            bench_compare: verdict(bench_compare),
        }
    }

    pub(crate) fn artefact(&self, file: File, kind: &'static str, sbom: String) -> ArtefactEvidence {
        ArtefactEvidence {
            file,
            kind,
            sbom,
            target: self.binary.target.clone(),
            binary: self.binary.clone(),
            smoke: self.smoke.clone(),
            qemu_cluster: self.qemu_cluster.clone(),
            bench_compare: self.bench_compare.clone(),
        }
    }
}

impl Evidence {
    pub(crate) fn new(release: &Release, profile: &str, rustc: &str) -> Self {
        Self {
            version: release.version.clone(),
            revision: release.revision.clone(),
            profile: profile.into(),
            rustc: rustc.lines().next().unwrap_or_default().into(),
            source_date_epoch: release.epoch,
            artefacts: Vec::new(),
            others: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cargo::smoke::Smoke;
    use crate::workspace::targets::TARGETS;

    fn artefact() -> Artefact {
        Artefact {
            target: TARGETS[1].triple.into(),
            arch: "aarch64".into(),
            path: "plexichat".into(),
            sha256: "b1".into(),
            bytes: 10,
            profile: "release".into(),
            git_revision: "r2".into(),
            cache_key: "k".into(),
            seconds: 3.0,
            cache_hit: false,
            machine: "AArch64".into(),
            is_static: true,
            smoke: Smoke {
                ok: true,
                steps: Vec::new(),
                key: "s".into(),
                cached: true,
            },
        }
    }

    fn recorded(revision: &str, binary: Option<&str>) -> Recorded {
        Recorded {
            command: "qemu-cluster".into(),
            arch: "aarch64".into(),
            revision: revision.into(),
            binary_sha256: binary.map(str::to_string),
            ok: true,
            checks: vec!["membership: ok".into()],
            at: 5,
        }
    }

    #[test]
    fn a_verdict_counts_only_for_its_own_revision_and_says_whether_it_saw_this_binary() {
        let target = &TARGETS[1];
        let tested = Tested::of(&artefact(), target, 7, Some(recorded("r1", Some("b1"))), None);
        assert!(
            tested.qemu_cluster.is_none(),
            "another revision's verdict is no evidence"
        );
        let tested = Tested::of(&artefact(), target, 7, Some(recorded("r2", Some("b1"))), None);
        assert_eq!(tested.qemu_cluster.as_ref().and_then(|v| v.same_binary), Some(true));
        let tested = Tested::of(&artefact(), target, 7, Some(recorded("r2", Some("b0"))), None);
        assert_eq!(tested.qemu_cluster.as_ref().and_then(|v| v.same_binary), Some(false));
        let tested = Tested::of(&artefact(), target, 7, None, Some(recorded("r2", None)));
        assert_eq!(tested.bench_compare.as_ref().map(|v| v.same_binary), Some(None));
        assert_eq!(tested.smoke.ran, "under qemu-aarch64-static");
    }

    #[test]
    fn nothing_that_differs_between_two_releases_of_the_same_binaries_is_in_it() {
        let tested = Tested::of(&artefact(), &TARGETS[1], 7, None, None);
        let file = File {
            file: "a.tar.gz".into(),
            sha256: "f".into(),
            bytes: 1,
        };
        let json = serde_json::to_string(&tested.artefact(file, "archive", "a.tar.gz.cdx.json".into())).unwrap();
        // Whether the smoke result was reused, and how long the build took, vary.
        assert!(!json.contains("cached") && !json.contains("seconds"), "{json}");
        assert!(
            json.contains(r#""file":"a.tar.gz""#) && json.contains(r#""cache_key":"k""#),
            "{json}"
        );
    }
}
