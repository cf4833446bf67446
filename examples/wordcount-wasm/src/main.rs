//! Word count, as a WASI preview 1 program: `wordcount FILE|DIR…` counts the words (letters and
//! apostrophes, lower-cased) of every file given (directories are read recursively), prints the
//! `TOP_N` (default 10) most frequent as `count word` lines, and writes every count to
//! `/outputs/counts.tsv` when `/outputs` exists.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

fn add_file(
    path: &Path,
    counts: &mut HashMap<String, u64>,
    words: &mut u64,
) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for e in entries {
            add_file(&e.path(), counts, words)?;
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    for w in text.split(|c: char| !(c.is_alphabetic() || c == '\'')) {
        let w = w.trim_matches('\'').to_lowercase();
        if !w.is_empty() {
            *counts.entry(w).or_default() += 1;
            *words += 1;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: wordcount FILE|DIR…");
        return ExitCode::from(2);
    }
    let top: usize = std::env::var("TOP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut counts = HashMap::new();
    let mut words = 0;
    for a in &args {
        if let Err(e) = add_file(Path::new(a), &mut counts, &mut words) {
            eprintln!("wordcount: cannot read {a}: {e}");
            return ExitCode::from(1);
        }
    }
    let mut sorted: Vec<(&String, &u64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{words} words, {} distinct; top {}:",
        counts.len(),
        top.min(sorted.len())
    );
    for (w, c) in sorted.iter().take(top) {
        let _ = writeln!(out, "{c:>6} {w}");
    }
    if Path::new("/outputs").is_dir() {
        let mut tsv = String::new();
        for (w, c) in &sorted {
            tsv.push_str(&format!("{w}\t{c}\n"));
        }
        if let Err(e) = std::fs::write("/outputs/counts.tsv", tsv) {
            eprintln!("wordcount: cannot write /outputs/counts.tsv: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
