//! The wasm executor on its own: exit codes, traps, limits, missing modules and entry points.

use std::time::{Duration, Instant};

use caravel_compute::{ExecError, Executor, PreparedInput, RunRequest, WasmExecutor};
use caravel_model::spec::{SpecConfig, Task};
use tokio_util::sync::CancellationToken;

use crate::support::module;

fn request(
    dir: &std::path::Path,
    module_name: &str,
    target: &str,
    engine: SpecConfig,
) -> RunRequest {
    RunRequest {
        execution_id: "e-x".into(),
        job_id: "j-x".into(),
        task: Task {
            engine,
            ..Default::default()
        },
        inputs: vec![PreparedInput {
            host_path: module(module_name),
            target: target.into(),
            read_only: true,
        }],
        results: vec![],
        stdout_path: dir.join("stdout"),
        stderr_path: dir.join("stderr"),
        timeout_secs: 0,
        memory_limit: 256 << 20,
        max_output_bytes: 1 << 20,
        env: Default::default(),
        args: vec![],
        scratch_dir: dir.join("scratch"),
    }
}

#[tokio::test]
async fn exit_codes_and_a_module_at_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let ex = WasmExecutor::new().unwrap();
    // A module whose target sits directly under / (the legacy `/wasm.main` shape) is staged and found.
    let req = request(
        dir.path(),
        "exit3",
        "/wasm.main",
        SpecConfig::new("wasm").with("EntryModule", "/wasm.main"),
    );
    let r = ex.run(req, CancellationToken::new()).await.unwrap();
    assert_eq!(r.exit_code, 3);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stdout")).unwrap(),
        "exiting with 3\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stderr")).unwrap(),
        "bye\n"
    );

    let req = request(
        dir.path(),
        "echo",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/m.wasm"),
    );
    assert_eq!(
        ex.run(req, CancellationToken::new())
            .await
            .unwrap()
            .exit_code,
        0,
        "a normal return is exit code 0"
    );
}

#[tokio::test]
async fn clear_errors_for_missing_modules_and_entry_points() {
    let dir = tempfile::tempdir().unwrap();
    let ex = WasmExecutor::new().unwrap();
    let req = request(
        dir.path(),
        "echo",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/other.wasm"),
    );
    let e = ex.run(req, CancellationToken::new()).await.unwrap_err();
    assert_eq!(e, ExecError::ModuleNotFound("/other.wasm".into()));
    assert_eq!(
        e.to_string(),
        "module not found at /other.wasm: no input has that Target"
    );

    let req = request(
        dir.path(),
        "echo",
        "/m.wasm",
        SpecConfig::new("wasm")
            .with("EntryModule", "/m.wasm")
            .with("Entrypoint", "foo"),
    );
    let e = ex.run(req, CancellationToken::new()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "entry point `foo` not exported by the module"
    );

    let req = request(dir.path(), "echo", "/m.wasm", SpecConfig::new("docker"));
    assert!(matches!(
        ex.run(req, CancellationToken::new()).await.unwrap_err(),
        ExecError::UnsupportedEngine(_)
    ));

    // Not a wasm module.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let mut req = request(
        dir.path(),
        "echo",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/j.wasm"),
    );
    req.inputs.push(PreparedInput {
        host_path: junk,
        target: "/j.wasm".into(),
        read_only: true,
    });
    let e = ex.run(req, CancellationToken::new()).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot load the module at /j.wasm"),
        "{e}"
    );
}

#[tokio::test]
async fn traps_report_the_trap_and_frames() {
    let dir = tempfile::tempdir().unwrap();
    let ex = WasmExecutor::new().unwrap();
    let req = request(
        dir.path(),
        "trap",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/m.wasm"),
    );
    let e = ex.run(req, CancellationToken::new()).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("trap message: {msg}");
    assert!(msg.starts_with("trap: "), "{msg}");
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(msg.contains(" (in "), "a backtrace summary: {msg}");
}

#[tokio::test]
async fn timeout_memory_limit_and_cancel_stop_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let ex = WasmExecutor::new().unwrap();
    let mut req = request(
        dir.path(),
        "spin",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/m.wasm"),
    );
    req.timeout_secs = 1;
    let t = Instant::now();
    assert_eq!(
        ex.run(req, CancellationToken::new()).await.unwrap_err(),
        ExecError::Timeout(1)
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    let mut req = request(
        dir.path(),
        "hog",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/m.wasm"),
    );
    req.memory_limit = 32 << 20;
    let e = ex.run(req, CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.to_string(), "memory limit of 32.0 MiB exceeded");

    let req = request(
        dir.path(),
        "spin",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/m.wasm"),
    );
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    let t = Instant::now();
    assert_eq!(ex.run(req, cancel).await.unwrap_err(), ExecError::Cancelled);
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// A module with two memories of 20 MiB each: under a 32 MiB limit one by one, over it together.
fn two_memories_module() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend([0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type () -> ()
    m.extend([0x03, 0x02, 0x01, 0x00]); // one function of that type
    m.extend([0x05, 0x07, 0x02, 0x00, 0xC0, 0x02, 0x00, 0xC0, 0x02]); // two memories, 320 pages each
    m.extend([0x07, 0x0A, 0x01, 0x06]);
    m.extend(b"_start");
    m.extend([0x00, 0x00]); // export _start = func 0
    m.extend([0x0A, 0x04, 0x01, 0x02, 0x00, 0x0B]); // its body: end
    m
}

/// Abuse: the memory limit holds across all of a module's memories, not per memory.
#[tokio::test]
async fn the_memory_limit_covers_all_memories_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.wasm");
    std::fs::write(&path, two_memories_module()).unwrap();
    let ex = WasmExecutor::new().unwrap();
    let mut req = request(
        dir.path(),
        "echo",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/m.wasm"),
    );
    req.inputs[0].host_path = path;
    req.memory_limit = 64 << 20;
    ex.run(req.clone(), CancellationToken::new()).await.unwrap();
    req.memory_limit = 32 << 20;
    let e = ex.run(req, CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.to_string(), "memory limit of 32.0 MiB exceeded");
}

#[tokio::test]
async fn output_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let ex = WasmExecutor::new().unwrap();
    let mut req = request(
        dir.path(),
        "echo",
        "/m.wasm",
        SpecConfig::new("wasm").with("EntryModule", "/m.wasm"),
    );
    req.args = vec!["--many-lines".into()];
    req.max_output_bytes = 100;
    let r = ex.run(req, CancellationToken::new()).await.unwrap();
    assert!(r.stdout_capped);
    assert!(!r.stderr_capped);
    assert_eq!(
        std::fs::metadata(dir.path().join("stdout")).unwrap().len(),
        100
    );
}
