//! Every `examples/*.yaml` goes through the parser `caravel job run` uses.

use std::path::{Path, PathBuf};

use caravel_cli::job::spec_to_value_reading;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Reads client-side files as `job run` does, except build outputs (a `target/` path such as the
/// wordcount module), which stand in as a tiny placeholder when not built yet.
fn read(p: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(p).or_else(|e| {
        if p.components().any(|c| c.as_os_str() == "target") {
            Ok(b"\0asm\x01\0\0\0".to_vec())
        } else {
            Err(e)
        }
    })
}

#[test]
fn every_example_spec_parses_as_job_run_reads_it() {
    let dir = examples_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected the wasm and docker examples in {}: {files:?}",
        dir.display()
    );
    for f in &files {
        let text = std::fs::read(f).unwrap();
        if let Err(e) = spec_to_value_reading(&text, &dir, &read) {
            panic!("{} does not parse: {e:#}", f.display());
        }
    }
}

#[test]
fn the_docker_examples_say_what_they_promise() {
    let dir = examples_dir();
    let parse = |name: &str| {
        let text = std::fs::read(dir.join(name)).unwrap();
        spec_to_value_reading(&text, &dir, &read).unwrap()
    };
    let wc = parse("docker-wordcount.yaml");
    let t = &wc["Tasks"][0];
    assert_eq!(t["Engine"]["Type"], "docker");
    assert_eq!(t["Engine"]["Params"]["Image"], "caravel-busybox:latest");
    assert_eq!(t["InputSources"][0]["Source"]["Type"], "urlDownload");
    assert_eq!(
        t["InputSources"][0]["Source"]["Params"]["URL"],
        "http://127.0.0.1:8000/declaration.txt"
    );
    assert_eq!(t["Publisher"]["Type"], "s3");
    assert_eq!(t["Publisher"]["Params"]["Bucket"], "caravel-results");
    assert_eq!(t["Publisher"]["Params"]["Key"], "wordcount/{jobID}/");
    assert_eq!(
        t["Publisher"]["Params"]["Endpoint"],
        "http://127.0.0.1:5000"
    );
    assert!(dir.join("data/declaration.txt").is_file());

    let limits = parse("docker-limits.yaml");
    let t = &limits["Tasks"][0];
    assert_eq!(t["Engine"]["Type"], "docker");
    for k in ["CPU", "Memory", "Disk"] {
        assert_ne!(t["Resources"][k], "", "{k} is set");
    }
    assert!(t["Timeouts"]["ExecutionTimeout"].as_i64().unwrap() > 0);
    assert_eq!(
        t["Engine"]["Params"]["EnvironmentVariables"][0],
        "GREETING=hello"
    );
}
