//! Why a benchmark got slower, as a picture: one callgrind profile of each side folded into
//! stacks and drawn by inferno as a differential flame graph. Widths are the working
//! tree's instructions; a frame is red where the working tree runs more instructions in
//! that stack than the baseline, blue where it runs fewer.
//!
//! Callgrind counts per function, not per stack. Run with `--separate-callers=N`, it
//! counts a function separately for each chain of its N nearest callers (a "context",
//! named `callee'caller'caller's caller…`): a stack cut at depth N, and a function's own
//! cost in a context is that stack's count. No maintained crate reads callgrind's format,
//! and the part needed here is small: `fn=` names the function the cost lines below it
//! belong to, and the one cost line after a `calls=` line is the callee's inclusive cost,
//! already counted in the callee's own context, so it is skipped.

use std::collections::{BTreeMap, HashMap};
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

/// The callers callgrind keeps per context: deeper stacks lose their outermost frames (the
/// process's start, the runtime), never the benchmark's own.
pub(crate) const CALLER_DEPTH: u32 = 64;

/// Folded stacks (outermost frame first, `;` between frames) and the instructions each ran.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Folded(BTreeMap<String, u64>);

impl Folded {
    /// Adds the own costs of every context in one callgrind dump.
    pub(crate) fn add_dump(&mut self, text: &str) -> Result<()> {
        let mut positions = 1;
        // `fn=(7) name` defines a compressed name, `fn=(7)` refers to it later.
        let mut names: HashMap<&str, &str> = HashMap::new();
        let mut stack: Option<String> = None;
        let mut inclusive_cost_follows = false;
        for (number, line) in text.lines().enumerate() {
            if let Some(names) = line.strip_prefix("positions:") {
                positions = names.split_whitespace().count();
            } else if let Some(name) = line.strip_prefix("fn=") {
                let name = match name.strip_prefix('(').and_then(|rest| rest.split_once(')')) {
                    Some((id, "")) => *names
                        .get(id)
                        .with_context(|| format!("line {}: fn=({id}) before its name", number + 1))?,
                    Some((id, name)) => *names.entry(id).or_insert(name.trim_start()),
                    None => name,
                };
                stack = Some(fold(name));
            } else if let Some(name) = line.strip_prefix("cfn=") {
                // Callees share the name table, so their definitions count too.
                if let Some((id, name)) = name.strip_prefix('(').and_then(|rest| rest.split_once(')')) {
                    if !name.is_empty() {
                        names.entry(id).or_insert(name.trim_start());
                    }
                }
            } else if line.starts_with("calls=") {
                inclusive_cost_follows = true;
            } else if line.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*')) {
                if std::mem::take(&mut inclusive_cost_follows) {
                    continue;
                }
                let cost = line
                    .split_whitespace()
                    .nth(positions)
                    .map_or(Ok(0), str::parse::<u64>)
                    .with_context(|| format!("line {}: {line:?} is not a cost line", number + 1))?;
                let stack = stack
                    .as_ref()
                    .with_context(|| format!("line {}: a cost before any fn=", number + 1))?;
                *self.0.entry(stack.clone()).or_default() += cost;
            }
        }
        Ok(())
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// A context's frames, outermost first, as one folded stack.
fn fold(context: &str) -> String {
    let mut frames: Vec<String> = Vec::new();
    for piece in context.split('\'') {
        match frames.last_mut() {
            // A quote inside a name is a lifetime (`&'a T`, `<'_>`, `for<'a> `): it follows
            // one of these, where no function name ends.
            Some(frame) if frame.ends_with(['&', '<', ' ', ',', '(']) => {
                frame.push('\'');
                frame.push_str(piece);
            }
            _ => frames.push(piece.to_string()),
        }
    }
    // `;` separates frames in the folded format; inside a name (`[u8; 32]`) it becomes `,`.
    frames
        .iter()
        .rev()
        .map(|frame| frame.replace(';', ","))
        .collect::<Vec<_>>()
        .join(";")
}

/// Writes the differential flame graph of `before` → `after` to `path` as SVG.
pub(crate) fn write_differential(before: &Folded, after: &Folded, title: &str, path: &Path) -> Result<()> {
    let mut stacks: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (stack, &count) in &before.0 {
        stacks.entry(stack).or_default().0 = count;
    }
    for (stack, &count) in &after.0 {
        stacks.entry(stack).or_default().1 = count;
    }
    let lines: Vec<String> = stacks
        .iter()
        .map(|(stack, (before, after))| format!("{stack} {before} {after}"))
        .collect();
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.subtitle = Some(format!(
        "width: the working tree's instructions ({} against {}); red: more than the baseline in that stack, blue: fewer",
        after.total(),
        before.total()
    ));
    options.count_name = "instructions".into();
    // Colours from the names, not at random: two drawings of the same profiles are the same file.
    options.hash = true;
    options.deterministic = true;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), BufWriter::new(file))
        .with_context(|| format!("drawing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(stacks: &[(&str, u64)]) -> Folded {
        Folded(stacks.iter().map(|(s, c)| (s.to_string(), *c)).collect())
    }

    /// What callgrind writes with --separate-callers and --compress-strings=no: `leaf`
    /// runs from `mid` (twice) and from `start`; `mid` calls `leaf`.
    const DUMP: &str = "# callgrind format\nversion: 1\npart: 2\npositions: line\nevents: Ir\n\n\
        ob=/t\nfl=t.rs\n\
        fn=leaf'mid'start'main\n1 6\n0 2\nfi=core.rs\n2533 6\n\
        fn=leaf'start'main\n1 3\n\
        fn=mid'start'main\n2 3\ncfn=leaf'mid'start'main\ncalls=2 1\n2 9005\n3 4\n\
        totals: 24\n";

    #[test]
    fn own_costs_fold_into_stacks_and_a_call_s_inclusive_cost_is_not_the_caller_s() {
        let mut stacks = Folded::default();
        stacks.add_dump(DUMP).unwrap();
        assert_eq!(
            stacks,
            folded(&[
                ("main;start;mid;leaf", 14),
                ("main;start;leaf", 3),
                ("main;start;mid", 7)
            ])
        );
        // Two dumps of the same run add up.
        stacks.add_dump(DUMP).unwrap();
        assert_eq!(stacks.total(), 48);
    }

    #[test]
    fn compressed_names_and_an_instruction_column_are_read() {
        let dump = "positions: instr line\nevents: Ir\n\
            fn=(1) mid'main\n0x10 2 5\ncfn=(2) leaf'mid'main\ncalls=1 0x20 1\n0x10 2 100\n\
            fn=(2)\n0x20 1 100\n\
            fn=(1)\n+2 3 1\n";
        let mut stacks = Folded::default();
        stacks.add_dump(dump).unwrap();
        assert_eq!(stacks, folded(&[("main;mid", 6), ("main;mid;leaf", 100)]));
    }

    #[test]
    fn a_dump_that_is_not_callgrind_s_fails() {
        assert!(Folded::default().add_dump("fn=(3)\n1 2\n").is_err());
        assert!(Folded::default().add_dump("1 2\n").is_err());
        assert!(Folded::default().add_dump("fn=f\n1 lots\n").is_err());
    }

    #[test]
    fn a_lifetime_inside_a_name_is_not_a_frame_boundary() {
        assert_eq!(
            fold("<&'a str as Debug>::fmt'<Vec<&'_ [u8; 4]>>::push'main"),
            "main;<Vec<&'_ [u8, 4]>>::push;<&'a str as Debug>::fmt"
        );
        assert_eq!(fold("(below main)'0x1ab70"), "0x1ab70;(below main)");
    }

    /// The fill of the frame whose tooltip starts with `title`, as (red, green, blue).
    fn fill_of(svg: &str, title: &str) -> (u8, u8, u8) {
        let frame = &svg[svg
            .find(&format!("<title>{title}"))
            .unwrap_or_else(|| panic!("no {title} in {svg}"))..];
        let rgb = frame.split_once("fill=\"rgb(").unwrap().1.split_once(')').unwrap().0;
        let channels: Vec<u8> = rgb.split(',').map(|c| c.parse().unwrap()).collect();
        (channels[0], channels[1], channels[2])
    }

    #[test]
    fn the_picture_is_red_where_the_working_tree_runs_more_and_blue_where_less() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/diff.svg");
        let before = folded(&[
            ("main;work;spin", 1_000),
            ("main;work", 10),
            ("main;less", 100),
            ("main;gone", 50),
        ]);
        let after = folded(&[("main;work;spin", 2_000), ("main;work", 10), ("main;less", 40)]);
        write_differential(&before, &after, "spin/work", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("spin/work"), "{svg}");
        // Widths are the working tree's counts: spin ran 2,000, and what is gone is not drawn.
        let (red, green, blue) = fill_of(&svg, "spin (2,000 instructions");
        assert!(
            red > green && red > blue,
            "spin doubled, so it is red: {:?}",
            (red, green, blue)
        );
        let (red, green, blue) = fill_of(&svg, "less (40 instructions");
        assert!(
            blue > red && blue > green,
            "less shrank, so it is blue: {:?}",
            (red, green, blue)
        );
        let (red, green, blue) = fill_of(&svg, "work (2,010 instructions");
        assert!(
            red == green && green == blue,
            "work's own cost did not move: {:?}",
            (red, green, blue)
        );
        assert!(
            !svg.contains("<title>gone"),
            "a stack the working tree never ran has no width"
        );
        let again = dir.path().join("again.svg");
        write_differential(&before, &after, "spin/work", &again).unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            svg.as_bytes(),
            "the same profiles draw the same file"
        );
    }
}
