//! A compute node's admission policy seen through the API: the node advertises it, the scheduler
//! avoids a node that would refuse, and `job describe` says which node refused and why.

use sha2::Digest;

use caravel_chaos_tests::NodeProcess;

use crate::{bin, describe, run, test_module};

fn sha256_hex(path: &std::path::Path) -> String {
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_node_runs_only_the_modules_its_owner_allows_and_says_why_it_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let echo = test_module("echo");
    let exit3 = test_module("exit3");
    let allowed = format!("Compute.Admission.WasmModules={}", sha256_hex(&echo));
    let n = NodeProcess::start_hybrid(&bin(), &dir.path().join("node"), &["-c", &allowed]).unwrap();
    // The node advertises its policy (`node describe` shows it).
    let (ok, out, _) = run(
        &n,
        &["node", "describe", &node_id(&n), "--output", "json"],
        None,
    );
    assert!(ok && out.contains("caravel.io/admission"), "{out}");

    let (ok, out, err) = run(
        &n,
        &["wasm", "run", echo.to_str().unwrap(), "--id-only"],
        None,
    );
    assert!(ok, "{err}");
    let d = describe(&n, out.trim());
    assert_eq!(d["Job"]["State"]["StateType"], "Completed", "{d}");
    // The allowed module inside a directory input (an inline tar.gz at /app): the node hashes the
    // module the executor loads, below the input's target.
    let mut tgz = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let bytes = std::fs::read(&echo).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    tgz.append_data(&mut h, "main.wasm", &bytes[..]).unwrap();
    let tgz = tgz.into_inner().unwrap().finish().unwrap();
    let spec = dir.path().join("in-a-directory.yaml");
    std::fs::write(
        &spec,
        format!(
            "Name: in-a-directory\nType: batch\nTasks:\n  - Name: main\n    Engine: {{Type: wasm, Params: {{EntryModule: /app/main.wasm}}}}\n    InputSources:\n      - Target: /app\n        Source: {{Type: inline, Params: {{URL: \"data:application/gzip;base64,{}\"}}}}\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &tgz)
        ),
    )
    .unwrap();
    let (ok, out, err) = run(
        &n,
        &["job", "run", spec.to_str().unwrap(), "--id-only"],
        None,
    );
    assert!(ok, "{err}");
    let d = describe(&n, out.trim());
    assert_eq!(d["Job"]["State"]["StateType"], "Completed", "{d}");

    // Another module: no node would take it, and the job says so, per node.
    let (_, out, _) = run(
        &n,
        &["wasm", "run", exit3.to_str().unwrap(), "--id-only"],
        None,
    );
    let d = describe(&n, out.trim());
    assert_eq!(d["Job"]["State"]["StateType"], "Failed", "{d}");
    let why = d["Job"]["State"]["Message"].as_str().unwrap_or_default();
    assert!(
        why.contains("admission policy refuses the job") && why.contains("allowed modules"),
        "{why}"
    );
    // Host networking is refused unless the owner lists it.
    let (_, out, _) = run(
        &n,
        &[
            "wasm",
            "run",
            echo.to_str().unwrap(),
            "--network",
            "Host",
            "--id-only",
        ],
        None,
    );
    let d = describe(&n, out.trim());
    let why = d["Job"]["State"]["Message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("network Host"), "{d}");
}

fn node_id(n: &NodeProcess) -> String {
    let (_, out, _) = run(n, &["node", "list", "--output", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Nodes"][0]["Info"]["NodeID"]
        .as_str()
        .unwrap()
        .to_string()
}
