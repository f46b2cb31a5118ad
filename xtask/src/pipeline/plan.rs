//! From steps to the entries that run: each matrix expanded into entries of its own
//! (`build-native (aarch64)`), `${{ matrix.NAME }}` replaced, needs resolved entry to
//! entry, and one order that respects them: file order wherever the needs allow it, so
//! that every run of a workflow goes the same way.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use super::workflow::{Step, Workflow};
use crate::report::error::UsageError;

#[derive(Debug)]
pub(crate) struct Entry<'w> {
    /// The step's id, with the matrix values in parentheses: `build-native (aarch64)`.
    pub id: String,
    pub step: &'w Step,
    /// (axis, value) in the matrix's order; empty for a step without a matrix.
    pub matrix: Vec<(&'w str, &'w str)>,
    /// The step's script with this entry's values in it.
    pub run: String,
    /// `requires.programs` with this entry's values in them.
    pub programs: Vec<String>,
    /// The entries this one waits for, as indices into the plan; all of them come earlier.
    pub needs: Vec<usize>,
}

/// Every entry of the workflow, in the order they run.
///
/// A step that needs a matrix step waits for the entries that agree with it on the axes
/// both have (`qemu-cluster (aarch64)` waits for `build-native (aarch64)` only), and for
/// all of them when they share no axis.
pub(crate) fn plan(workflow: &Workflow) -> Result<Vec<Entry<'_>>, UsageError> {
    refuse_cycles(workflow)?;
    let (mut entries, ranges) = expand(workflow)?;
    for index in 0..entries.len() {
        entries[index].needs = resolve_needs(workflow, &entries, &ranges, index)?;
    }
    Ok(in_order(entries))
}

/// The entries `only` names (a step: all its entries; or one entry by its id). What a
/// kept entry needs from outside the selection is taken as done: `--only` is how a CI
/// service that runs the architectures in parallel jobs runs each job's part.
pub(crate) fn select<'w>(
    entries: Vec<Entry<'w>>,
    only: &[String],
    workflow: &Workflow,
) -> Result<Vec<Entry<'w>>, UsageError> {
    if only.is_empty() {
        return Ok(entries);
    }
    let named = |entry: &Entry, name: &String| entry.id == *name || entry.step.id == *name;
    if let Some(unknown) = only.iter().find(|name| !entries.iter().any(|entry| named(entry, name))) {
        let example = entries
            .iter()
            .find(|entry| !entry.matrix.is_empty())
            .map(|entry| format!(", or one matrix entry such as `{}`", entry.id))
            .unwrap_or_default();
        return Err(UsageError(format!(
            "--only `{unknown}`: {} has no such step\n  fix: use one of {}{example}",
            workflow.place,
            workflow.step_ids()
        )));
    }
    let mut renumbered = vec![None; entries.len()];
    let mut kept = Vec::new();
    for (index, mut entry) in entries.into_iter().enumerate() {
        if only.iter().any(|name| named(&entry, name)) {
            entry.needs = entry.needs.iter().filter_map(|need| renumbered[*need]).collect();
            renumbered[index] = Some(kept.len());
            kept.push(entry);
        }
    }
    Ok(kept)
}

fn refuse_cycles(workflow: &Workflow) -> Result<(), UsageError> {
    let needs: Vec<Vec<usize>> = workflow
        .steps
        .iter()
        .map(|step| {
            step.needs
                .iter()
                .filter_map(|need| step_index(workflow, need))
                .collect()
        })
        .collect();
    let Err(cycle) = topological(&needs) else {
        return Ok(());
    };
    let names: Vec<&str> = cycle.iter().map(|&index| workflow.steps[index].id.as_str()).collect();
    let first = names.first().copied().unwrap_or_default();
    Err(workflow.error(
        &format!("steps.{first}.needs"),
        format!(
            "the needs form a cycle: {} → {first} (each needs the next)",
            names.join(" → ")
        ),
        "remove one of these needs, so that one of the steps needs none of the others",
    ))
}

fn step_index(workflow: &Workflow, id: &str) -> Option<usize> {
    workflow.steps.iter().position(|step| step.id == id)
}

/// The entries in file order, and for each step the range of its entries.
type Expanded<'w> = (Vec<Entry<'w>>, Vec<Range<usize>>);

fn expand(workflow: &Workflow) -> Result<Expanded<'_>, UsageError> {
    let mut entries = Vec::new();
    let mut ranges = Vec::new();
    for step in &workflow.steps {
        let start = entries.len();
        for matrix in combinations(step) {
            let fill = |text: &str, field: String| {
                substitute(text, &matrix).map_err(|problem| {
                    let fix = if step.axes().is_empty() {
                        "give the step a `matrix`, or write the value itself".to_string()
                    } else {
                        let names: Vec<String> = step
                            .axes()
                            .iter()
                            .map(|(axis, _)| format!("`${{{{ matrix.{axis} }}}}`"))
                            .collect();
                        format!("use {}", names.join(" or "))
                    };
                    workflow.error(&format!("steps.{}.{field}", step.id), problem, fix)
                })
            };
            let run = fill(&step.run, "run".into())?;
            let programs = step
                .requires
                .programs
                .iter()
                .enumerate()
                .map(|(index, program)| fill(program, format!("requires.programs[{index}]")))
                .collect::<Result<_, _>>()?;
            entries.push(Entry {
                id: entry_id(&step.id, &matrix),
                step,
                matrix,
                run,
                programs,
                needs: Vec::new(),
            });
        }
        ranges.push(start..entries.len());
    }
    Ok((entries, ranges))
}

/// Every combination of the step's axes, the first axis varying slowest; one empty
/// combination for a step without a matrix.
fn combinations(step: &Step) -> Vec<Vec<(&str, &str)>> {
    step.axes().iter().fold(vec![Vec::new()], |done, (axis, values)| {
        done.iter()
            .flat_map(|prefix| {
                values.iter().map(move |value| {
                    let mut combination = prefix.clone();
                    combination.push((axis.as_str(), value.as_str()));
                    combination
                })
            })
            .collect()
    })
}

fn entry_id(step: &str, matrix: &[(&str, &str)]) -> String {
    if matrix.is_empty() {
        return step.to_string();
    }
    let values: Vec<&str> = matrix.iter().map(|(_, value)| *value).collect();
    format!("{step} ({})", values.join(", "))
}

/// `text` with each `${{ matrix.NAME }}` replaced by the entry's value of NAME.
fn substitute(text: &str, matrix: &[(&str, &str)]) -> Result<String, String> {
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        filled.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| "`${{` without its closing `}}`".to_string())?;
        let expression = after[..end].trim();
        let value = expression
            .strip_prefix("matrix.")
            .and_then(|name| matrix.iter().find(|(axis, _)| *axis == name))
            .map(|(_, value)| *value)
            .ok_or_else(|| format!("`${{{{ {expression} }}}}` names no axis of this step's matrix"))?;
        filled.push_str(value);
        rest = &after[end + 2..];
    }
    filled.push_str(rest);
    Ok(filled)
}

fn resolve_needs(
    workflow: &Workflow,
    entries: &[Entry],
    ranges: &[Range<usize>],
    index: usize,
) -> Result<Vec<usize>, UsageError> {
    let entry = &entries[index];
    let mut needs = Vec::new();
    for need in &entry.step.needs {
        let Some(step) = step_index(workflow, need) else {
            continue; // refused when the file was read
        };
        let agreeing: Vec<usize> = ranges[step]
            .clone()
            .filter(|&other| agrees(&entry.matrix, &entries[other].matrix))
            .collect();
        if agreeing.is_empty() {
            let needed = &workflow.steps[step];
            let (axis, value) = entry
                .matrix
                .iter()
                .find(|(axis, value)| {
                    needed
                        .axes()
                        .iter()
                        .any(|(other, values)| other == axis && !values.iter().any(|v| v == value))
                })
                .copied()
                .unwrap_or_default();
            return Err(workflow.error(
                &format!("steps.{}.needs", entry.step.id),
                format!(
                    "`{}` needs the entry of `{need}` with {axis} `{value}`, and `{need}` has none",
                    entry.id
                ),
                format!(
                    "add {value} to steps.{need}.matrix.{axis}, or remove it from steps.{}.matrix.{axis}",
                    entry.step.id
                ),
            ));
        }
        needs.extend(agreeing);
    }
    Ok(needs)
}

/// Whether two entries have the same value on every axis both have.
fn agrees(one: &[(&str, &str)], other: &[(&str, &str)]) -> bool {
    one.iter().all(|(axis, value)| {
        other
            .iter()
            .all(|(their_axis, their_value)| their_axis != axis || their_value == value)
    })
}

fn in_order(entries: Vec<Entry<'_>>) -> Vec<Entry<'_>> {
    let needs: Vec<Vec<usize>> = entries.iter().map(|entry| entry.needs.clone()).collect();
    // Cycles between steps were refused, and entries only need entries of needed steps.
    let order = topological(&needs).unwrap_or_else(|_| (0..entries.len()).collect());
    let mut position = vec![0; entries.len()];
    for (place, &index) in order.iter().enumerate() {
        position[index] = place;
    }
    let mut slots: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&index| slots[index].take())
        .map(|mut entry| {
            entry.needs = entry.needs.iter().map(|need| position[*need]).collect();
            entry
        })
        .collect()
}

/// Kahn's algorithm, taking the lowest-numbered node that is ready first. `Err`: the
/// nodes of one cycle, each needing the next.
fn topological(needs: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); needs.len()];
    for (node, its_needs) in needs.iter().enumerate() {
        for &need in its_needs {
            dependents[need].push(node);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..needs.len())
        .filter(|&node| waiting[node] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(needs.len());
    while let Some(Reverse(node)) = ready.pop() {
        order.push(node);
        for &dependent in &dependents[node] {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.push(Reverse(dependent));
            }
        }
    }
    if order.len() == needs.len() {
        return Ok(order);
    }
    // Each node left still waits on another node left: following those needs from any
    // of them must come back to a node already on the path.
    let mut placed = vec![false; needs.len()];
    for &node in &order {
        placed[node] = true;
    }
    let mut path = Vec::new();
    let mut node = placed.iter().position(|done| !done).unwrap_or_default();
    loop {
        if let Some(start) = path.iter().position(|&seen| seen == node) {
            return Err(path.split_off(start));
        }
        path.push(node);
        match needs[node].iter().copied().find(|&need| !placed[need]) {
            Some(next) => node = next,
            None => return Err(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|entry| entry.id.clone()).collect()
    }

    fn planned(text: &str) -> Result<Vec<String>, String> {
        let workflow = Workflow::from_text(text).map_err(|err| err.to_string())?;
        plan(&workflow)
            .map(|entries| ids(&entries))
            .map_err(|err| err.to_string())
    }

    #[test]
    fn needs_come_first_and_file_order_breaks_ties() {
        let order = planned(
            "steps:\n  tests:\n    run: 'true'\n    needs: [build]\n  fmt:\n    run: 'true'\n  build:\n    run: 'true'\n  docs:\n    run: 'true'\n",
        )
        .unwrap();
        assert_eq!(order, ["fmt", "build", "tests", "docs"]);
    }

    #[test]
    fn a_matrix_expands_with_its_values_in_ids_and_scripts() {
        let workflow = Workflow::from_text(
            "steps:\n  build:\n    run: build --target ${{ matrix.arch }} --os ${{matrix.os}}\n    requires:\n      programs: ['qemu-${{ matrix.arch }}']\n    matrix:\n      os: [linux]\n      arch: [x86_64, aarch64]\n",
        )
        .unwrap();
        let entries = plan(&workflow).unwrap();
        assert_eq!(ids(&entries), ["build (linux, x86_64)", "build (linux, aarch64)"]);
        assert_eq!(entries[1].run, "build --target aarch64 --os linux");
        assert_eq!(entries[1].programs, ["qemu-aarch64"]);
        assert_eq!(entries[1].matrix, [("os", "linux"), ("arch", "aarch64")]);
    }

    #[test]
    fn a_matrix_step_needs_the_entry_of_its_own_values() {
        let workflow = Workflow::from_text(
            "steps:\n  lint:\n    run: 'true'\n  build:\n    run: 'true'\n    needs: [lint]\n    matrix:\n      arch: [x86_64, aarch64]\n  boot:\n    run: 'true'\n    needs: [build]\n    matrix:\n      arch: [x86_64, aarch64]\n  publish:\n    run: 'true'\n    needs: [build]\n",
        )
        .unwrap();
        let entries = plan(&workflow).unwrap();
        let needs_of = |id: &str| -> Vec<String> {
            let entry = entries.iter().find(|entry| entry.id == id).unwrap();
            entry.needs.iter().map(|&need| entries[need].id.clone()).collect()
        };
        assert_eq!(needs_of("build (aarch64)"), ["lint"]);
        assert_eq!(needs_of("boot (aarch64)"), ["build (aarch64)"]);
        assert_eq!(needs_of("publish"), ["build (x86_64)", "build (aarch64)"]);
        for (place, entry) in entries.iter().enumerate() {
            assert!(
                entry.needs.iter().all(|&need| need < place),
                "{} runs too early",
                entry.id
            );
        }
    }

    #[test]
    fn an_entry_without_a_matching_entry_to_need_is_refused() {
        let err = planned(
            "steps:\n  build:\n    run: 'true'\n    matrix:\n      arch: [x86_64]\n  boot:\n    run: 'true'\n    needs: [build]\n    matrix:\n      arch: [x86_64, riscv64]\n",
        )
        .unwrap_err();
        assert!(err.contains("field `steps.boot.needs`"), "{err}");
        assert!(
            err.contains("`boot (riscv64)` needs the entry of `build` with arch `riscv64`"),
            "{err}"
        );
        assert!(err.contains("fix: add riscv64 to steps.build.matrix.arch"), "{err}");
    }

    #[test]
    fn a_cycle_is_refused_naming_its_steps() {
        let err = planned(
            "steps:\n  fmt:\n    run: 'true'\n  a:\n    run: 'true'\n    needs: [fmt, c]\n  b:\n    run: 'true'\n    needs: [a]\n  c:\n    run: 'true'\n    needs: [b]\n",
        )
        .unwrap_err();
        assert!(err.starts_with("workflows/test.yaml: field `steps."), "{err}");
        assert!(err.contains("a → c → b → a"), "{err}");
        assert!(err.contains("fix: remove one of these needs"), "{err}");
        let err = planned("steps:\n  a:\n    run: 'true'\n    needs: [a]\n").unwrap_err();
        assert!(
            err.contains("field `steps.a.needs`: the needs form a cycle: a → a"),
            "{err}"
        );
    }

    #[test]
    fn a_placeholder_must_name_an_axis() {
        let err = planned("steps:\n  build:\n    run: build ${{ matrix.target }}\n    matrix:\n      arch: [x86_64]\n")
            .unwrap_err();
        assert!(err.contains("field `steps.build.run`"), "{err}");
        assert!(err.contains("fix: use `${{ matrix.arch }}`"), "{err}");
        let err = planned("steps:\n  fmt:\n    run: echo ${{ matrix.arch }}\n").unwrap_err();
        assert!(err.contains("fix: give the step a `matrix`"), "{err}");
        let err = planned("steps:\n  fmt:\n    run: echo ${{ matrix.arch\n").unwrap_err();
        assert!(err.contains("without its closing"), "{err}");
    }

    #[test]
    fn only_keeps_the_named_steps_and_entries() {
        let workflow = Workflow::from_text(
            "steps:\n  lint:\n    run: 'true'\n  build:\n    run: 'true'\n    needs: [lint]\n    matrix:\n      arch: [x86_64, aarch64]\n  boot:\n    run: 'true'\n    needs: [build]\n    matrix:\n      arch: [x86_64, aarch64]\n",
        )
        .unwrap();
        let only = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
            select(plan(&workflow).unwrap(), &names, &workflow)
        };
        let kept = only(&["build (aarch64)", "boot"]).unwrap();
        assert_eq!(ids(&kept), ["build (aarch64)", "boot (x86_64)", "boot (aarch64)"]);
        assert_eq!(kept[0].needs, Vec::<usize>::new(), "lint was not selected");
        assert_eq!(kept[2].needs, [0]);
        assert_eq!(kept[1].needs, Vec::<usize>::new());
        let err = only(&["lint", "tests"]).unwrap_err().to_string();
        assert!(err.contains("--only `tests`"), "{err}");
        assert!(
            err.contains("use one of lint, build, boot, or one matrix entry such as `build (x86_64)`"),
            "{err}"
        );
    }
}
