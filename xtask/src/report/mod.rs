//! What a subcommand reports: a table for people (stderr), a JSON document for programs
//! (stdout with --json), and whether every check held.

pub mod error;
pub mod progress;

use std::fmt;

use serde::Serialize;

pub struct Report {
    pub ok: bool,
    pub table: Table,
    pub summary: Option<String>,
    pub json: serde_json::Value,
}

impl Report {
    pub fn new(ok: bool, table: Table, json: &impl Serialize) -> Self {
        Self {
            ok,
            table,
            summary: None,
            json: serde_json::to_value(json).unwrap_or_default(),
        }
    }

    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }
}

/// A plain text table: columns padded to their widest cell.
#[derive(Debug, Default)]
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
