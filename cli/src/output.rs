//! Output for people (tables) and scripts (JSON, YAML). Data on stdout, everything else on stderr.

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Args, Default)]
pub struct OutputArgs {
    /// table, csv, json or yaml.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Indent JSON.
    #[arg(long)]
    pub pretty: bool,
    /// Leave out the table header.
    #[arg(long)]
    pub hide_header: bool,
    /// Print ids in full instead of their short form.
    #[arg(long)]
    pub wide: bool,
    /// Plain text (Caravel's tables carry no colour or styling; accepted as Bacalhau accepts it).
    #[arg(long)]
    pub no_style: bool,
}

impl OutputArgs {
    /// Prints `v` as JSON/YAML; returns false for table output (the caller prints a table).
    pub fn structured<T: Serialize>(&self, v: &T) -> anyhow::Result<bool> {
        match self.output {
            Format::Table | Format::Csv => Ok(false),
            Format::Json => {
                let s = if self.pretty {
                    serde_json::to_string_pretty(v)?
                } else {
                    serde_json::to_string(v)?
                };
                println!("{s}");
                Ok(true)
            }
            Format::Yaml => {
                print!("{}", serde_norway::to_string(v)?);
                Ok(true)
            }
        }
    }
}

impl OutputArgs {
    /// The rows as a table, or as CSV (RFC 4180) with `--output csv`.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>]) -> String {
        match self.output {
            Format::Csv => csv(header, rows, self.hide_header),
            _ => table(header, rows, self.hide_header),
        }
    }

    /// An id as a table shows it: short, or whole with `--wide`.
    pub fn id<'a>(&self, id: &'a str) -> &'a str {
        if self.wide {
            id
        } else {
            caravel_model::ids::short(id)
        }
    }
}

/// Rows as CSV: a header line (unless hidden), fields quoted where they hold a comma, a quote or a
/// line break.
pub fn csv(header: &[&str], rows: &[Vec<String>], hide_header: bool) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    };
    let mut out = String::new();
    if !hide_header {
        let h: Vec<String> = header.iter().map(|h| field(&h.to_uppercase())).collect();
        out.push_str(&h.join(","));
        out.push('\n');
    }
    for r in rows {
        let r: Vec<String> = r.iter().map(|c| field(c)).collect();
        out.push_str(&r.join(","));
        out.push('\n');
    }
    out
}

/// A plain text table with left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>], hide_header: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = String::new();
    if !hide_header {
        out.push_str(&line(header.iter().map(|h| h.to_uppercase()).collect()));
        out.push('\n');
    }
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// `26-11-28 02:09:42` style local-agnostic (UTC) time for tables.
pub fn short_time(ns: i64) -> String {
    let s = caravel_model::time::rfc3339(ns);
    format!("{} {}", &s[2..10], &s[11..19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let rows = vec![
            vec!["a".to_string(), "b,c".to_string()],
            vec!["say \"hi\"".to_string(), "two\nlines".to_string()],
        ];
        assert_eq!(
            csv(&["id", "labels"], &rows, false),
            "ID,LABELS\na,\"b,c\"\n\"say \"\"hi\"\"\",\"two\nlines\"\n"
        );
        assert_eq!(csv(&["id"], &[vec!["x".into()]], true), "x\n");
    }
}
