//! Output for people (tables) and scripts (JSON, YAML). Data on stdout, everything else on stderr.

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Args, Default)]
pub struct OutputArgs {
    /// table, json or yaml.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Indent JSON.
    #[arg(long)]
    pub pretty: bool,
    /// Leave out the table header.
    #[arg(long)]
    pub hide_header: bool,
}

impl OutputArgs {
    /// Prints `v` as JSON/YAML; returns false for table output (the caller prints a table).
    pub fn structured<T: Serialize>(&self, v: &T) -> anyhow::Result<bool> {
        match self.output {
            Format::Table => Ok(false),
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
