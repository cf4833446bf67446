//! Prints its arguments, two chosen environment variables and every `BACALHAU_*` one, reads the files under `/inputs` (if that
//! directory is mounted), and writes `/outputs/result.txt`.
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("args: {}", args.join(" "));
    for key in ["GREETING", "FROM_PARAMS"] {
        println!("env {key}={}", std::env::var(key).unwrap_or_default());
    }
    // Every variable the orchestrator sets (BACALHAU_JOB_ID, BACALHAU_PARTITION_INDEX, …).
    let mut system: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BACALHAU_"))
        .collect();
    system.sort();
    for (key, value) in system {
        println!("env {key}={value}");
    }
    eprintln!("to stderr");
    let mut seen = String::new();
    if let Ok(dir) = std::fs::read_dir("/inputs") {
        let mut names: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        names.sort();
        for p in names {
            if let Ok(text) = std::fs::read_to_string(&p) {
                println!("input {}: {}", p.display(), text.trim_end());
                seen.push_str(&text);
            }
        }
    }
    let verbose = args.iter().any(|a| a == "--many-lines");
    if verbose {
        for i in 0..500 {
            println!("line {i}");
        }
    }
    if std::path::Path::new("/outputs").exists() {
        let mut f =
            std::fs::File::create("/outputs/result.txt").expect("create /outputs/result.txt");
        writeln!(f, "echo wrote this; inputs had {} bytes", seen.len()).expect("write");
        if std::fs::write("/inputs/forbidden.txt", b"x").is_ok() {
            println!("inputs are writable");
        } else {
            println!("inputs are read-only");
        }
    }
}
