//! What a subcommand reports: a table for people (stderr), a JSON document for programs
//! (stdout with --json), and whether every check held — all three read from one
//! [`Outcome`], so that they cannot disagree.

pub mod error;
pub mod progress;
pub mod verdicts;

use std::fmt;

use serde::Serialize;

/// What a command did, as data. Serialised, it is the JSON document; the table and the
/// summary are views of the same fields, kept beside the type rather than in `run`.
/// Whatever a view needs that the document leaves out is a `#[serde(skip)]` field.
pub trait Outcome: Serialize {
    /// Whether every check held: exit status 0, else 1.
    fn ok(&self) -> bool;
    fn table(&self) -> Table;
    /// Lines printed under the table: where the results are, what to do next.
    fn summary(&self) -> Option<String> {
        None
    }
}

/// An outcome rendered: what `main` prints, and what a held cluster shows while it waits.
pub struct Report {
    pub ok: bool,
    pub table: Table,
    pub summary: Option<String>,
    pub json: serde_json::Value,
}

impl Report {
    pub fn of(outcome: &impl Outcome) -> Self {
        Self {
            ok: outcome.ok(),
            table: outcome.table(),
            summary: outcome.summary(),
            // Through a `Value`, whose maps are sorted: the documents keep the key order
            // they have always had, whatever the order of the fields.
            json: serde_json::to_value(outcome).unwrap_or_default(),
        }
    }
}

/// A plain text table: columns padded to their widest cell.
#[derive(Debug, Default, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String], f: &mut fmt::Formatter<'_>| -> fmt::Result {
            let padded: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = cells.get(i).map_or("", String::as_str);
                    format!("{cell:<width$}", width = widths[i])
                })
                .collect();
            writeln!(f, "{}", padded.join("  ").trim_end())
        };
        line(&self.headers, f)?;
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, f)?;
        for row in &self.rows {
            line(row, f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Built {
        targets: Vec<&'static str>,
        ok: bool,
    }

    impl Outcome for Built {
        fn ok(&self) -> bool {
            self.ok
        }

        fn table(&self) -> Table {
            let mut table = Table::new(&["target"]);
            for target in &self.targets {
                table.row(vec![target.to_string()]);
            }
            table
        }
    }

    #[test]
    fn a_report_renders_one_outcome() {
        let report = Report::of(&Built {
            targets: vec!["aarch64"],
            ok: false,
        });
        assert!(!report.ok);
        assert_eq!(report.table.to_string(), "target\n-------\naarch64\n");
        assert_eq!(report.summary, None);
        // Keys sorted, not in field order: the documents' order before outcomes.
        assert_eq!(
            serde_json::to_string(&report.json).unwrap(),
            r#"{"ok":false,"targets":["aarch64"]}"#
        );
    }

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(&["target", "status"]);
        table.row(vec!["aarch64".into(), "ok".into()]);
        table.row(vec!["x86_64-unknown-linux-gnu".into(), "failed".into()]);
        let text = table.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let status_column = lines[0].find("status").unwrap();
        assert_eq!(lines[2].find("ok"), Some(status_column));
        assert_eq!(lines[3].find("failed"), Some(status_column));
    }
}
