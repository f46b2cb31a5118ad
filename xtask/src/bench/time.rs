//! Time mode: criterion measures each side, the baseline saved as a named criterion
//! baseline and the current side compared against it, so the verdict comes from
//! criterion's own bootstrap confidence interval of the change in the mean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use services::process::{self, cmd};

use super::build::Side;
use super::Measurement;
use crate::report::progress::Task;

const BASELINE_NAME: &str = "xtask-baseline";

/// Runs each bench executable of the baseline then the current side in turn (one
/// executable's benches at a time, so slow drift of the machine hits both sides alike)
/// and reads criterion's estimates back.
pub(crate) fn measure(
    baseline: &Side,
    current: &Side,
    ids: &[String],
    criterion_home: &Path,
    task: &Task,
) -> Result<BTreeMap<String, Measurement>> {
    std::fs::create_dir_all(criterion_home)?;
    for (index, id) in ids.iter().enumerate() {
        task.step(format!("[{}/{}] {id}: baseline, then current", index + 1, ids.len()));
        run(baseline, id, &["--save-baseline", BASELINE_NAME], criterion_home)?;
        run(current, id, &["--baseline", BASELINE_NAME], criterion_home)?;
    }
    let directories = benchmark_directories(criterion_home);
    let mut results = BTreeMap::new();
    for id in ids {
        let dir = directories
            .get(id)
            .with_context(|| format!("criterion wrote no results for {id} under {}", criterion_home.display()))?;
        let mean = |file: &Path| -> Result<Value> {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let estimates: Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            Ok(estimates["mean"].clone())
        };
        let base = mean(&dir.join(BASELINE_NAME).join("estimates.json"))?;
        let new = mean(&dir.join("new").join("estimates.json"))?;
        let change = mean(&dir.join("change").join("estimates.json"))?;
        let number = |value: &Value| value.as_f64().context("a number in criterion's estimates");
        let interval = &change["confidence_interval"];
        results.insert(
            id.clone(),
            Measurement {
                baseline: number(&base["point_estimate"])?,
                current: number(&new["point_estimate"])?,
                change: number(&change["point_estimate"])?,
                interval: Some((number(&interval["lower_bound"])?, number(&interval["upper_bound"])?)),
            },
        );
    }
    Ok(results)
}

fn run(side: &Side, id: &str, baseline_args: &[&str], criterion_home: &Path) -> Result<()> {
    let executable = &side.benches[id];
    let sh = process::shell_in(&side.root)?;
    let output = process::output(
        cmd!(sh, "{executable} --bench --noplot --exact {id} {baseline_args...}").env("CRITERION_HOME", criterion_home),
    )
    .with_context(|| format!("running {}", executable.display()))?;
    if !output.status.success() {
        bail!(
            "the {} side's benchmark {id} failed ({}):\n{}",
            side.label,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Criterion's directory of each benchmark, by id (its directory names are sanitised ids,
/// so the id is read from the `benchmark.json` it keeps there).
fn benchmark_directories(home: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![home.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name == "benchmark.json")
                && path
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|name| name == "new")
            {
                let id = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                    .and_then(|value| value["full_id"].as_str().map(str::to_string));
                if let (Some(id), Some(bench_dir)) = (id, path.parent().and_then(Path::parent)) {
                    found.insert(id, bench_dir.to_path_buf());
                }
            }
        }
    }
    found
}
