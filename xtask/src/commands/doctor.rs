//! `cargo xtask doctor [--fix]`: what this host has and lacks to build, run and emulate
//! PlexiChat, with the exact fix for each gap; `--fix` applies the fixes it can.

use anyhow::Result;
use serde::Serialize;

use crate::provision::{self, Check, Requirement, Status};
use crate::report::{Outcome, Table};

#[derive(clap::Args)]
pub struct Args {
    /// Install what is missing: rustup targets, Debian packages (as root), binfmt entries.
    #[arg(long)]
    fix: bool,
}

#[derive(Serialize)]
pub struct DoctorReport {
    ok: bool,
    checks: Vec<Check>,
    fixed: Vec<String>,
    not_fixed: Vec<NotFixed>,
    /// Whether `--fix` ran: what the summary advises depends on it.
    #[serde(skip)]
    fix_ran: bool,
}

#[derive(Serialize)]
struct NotFixed {
    item: String,
    fix: String,
    reason: String,
}

pub fn run(args: Args) -> Result<DoctorReport> {
    let everything = Requirement::all();
    let mut checks = provision::probe_all(&everything);
    let mut fixed = Vec::new();
    let mut not_fixed = Vec::new();
    if args.fix {
        let outcome = provision::apply_fixes(&checks);
        checks = provision::probe_all(&everything);
        for (fix, result) in outcome {
            match result {
                Ok(()) => fixed.push(fix.to_string()),
                Err(reason) => {
                    for check in checks.iter().filter(|c| c.fix.as_ref() == Some(&fix)) {
                        not_fixed.push(NotFixed {
                            item: check.requirement.to_string(),
                            fix: fix.to_string(),
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        // A fix that ran without error but left the item missing must still be reported.
        for check in checks.iter().filter(|c| c.is_missing()) {
            if !not_fixed.iter().any(|n| n.item == check.requirement.to_string()) {
                let fix = check.fix.as_ref().map(ToString::to_string).unwrap_or_default();
                not_fixed.push(NotFixed {
                    item: check.requirement.to_string(),
                    fix,
                    reason: "still missing after the fix ran".into(),
                });
            }
        }
    }
    Ok(DoctorReport {
        ok: !checks.iter().any(|c| c.required && c.is_missing()),
        checks,
        fixed,
        not_fixed,
        fix_ran: args.fix,
    })
}

impl Outcome for DoctorReport {
    fn ok(&self) -> bool {
        self.ok
    }

    fn table(&self) -> Table {
        let mut table = Table::new(&["item", "status", "version / detail", "fix"]);
        for check in &self.checks {
            let status = match check.status {
                Status::Found => "ok",
                Status::Missing => "MISSING",
                Status::Unusable => "unusable",
            };
            let detail = check
                .version
                .clone()
                .or_else(|| check.detail.clone())
                .unwrap_or_default();
            let fix = check.fix.as_ref().map(ToString::to_string).unwrap_or_default();
            table.row(vec![check.requirement.to_string(), status.into(), detail, fix]);
        }
        table
    }

    fn summary(&self) -> Option<String> {
        let missing = self.checks.iter().filter(|c| c.is_missing()).count();
        let mut summary = if missing == 0 {
            "everything PlexiChat's toolchain needs is here".to_string()
        } else if self.fix_ran {
            format!("{missing} item(s) still missing")
        } else {
            format!("{missing} item(s) missing: `cargo xtask doctor --fix` installs what it can")
        };
        for item in &self.not_fixed {
            summary.push_str(&format!(
                "\n  could not fix {}: {} ({})",
                item.item, item.reason, item.fix
            ));
        }
        Some(summary)
    }
}
