//! The docker executor against the machine's real Docker engine, with the image
//! `caravel-busybox:latest` (built by `scripts/test-image.sh`). These tests fail, saying why, when
//! the engine or the image is missing; nextest runs them one at a time (`.config/nextest.toml`).

use std::path::Path;
use std::time::Duration;

use caravel_compute::docker::{LABEL_EXECUTION, LABEL_NODE};
use caravel_compute::{
    ComputeMetrics, DockerExecutor, DockerOptions, ExecError, Executor, PreparedInput, ResultDir,
    RunRequest, RunResult,
};
use caravel_model::ExecutionStateType;
use caravel_model::spec::{ResultPath, SpecConfig, Task};
use tokio_util::sync::CancellationToken;

use crate::support::*;

pub const IMAGE: &str = "caravel-busybox:latest";

/// Fails the test with instructions unless the engine answers and has the test image.
fn require_docker() {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the docker tests need the image {IMAGE} on the local engine: run scripts/test-image.sh ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "the docker tests need a running Docker engine and the docker CLI (cannot run docker: {e}); scripts/test.sh sets them up"
        ),
    }
}

/// Ids of the containers labelled with `node_id`, as the docker CLI sees them.
fn containers_of(node_id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label={LABEL_NODE}={node_id}"),
        ])
        .output()
        .expect("run docker ps");
    assert!(out.status.success(), "docker ps failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

async fn executor(grace_secs: u64) -> (DockerExecutor, String) {
    require_docker();
    let node = unique("dkr");
    let mut opts = DockerOptions::new(node.clone());
    opts.stop_grace = Duration::from_secs(grace_secs);
    let ex = DockerExecutor::connect(opts, ComputeMetrics::new())
        .await
        .unwrap_or_else(|e| panic!("the docker tests need a running Docker engine: {e}"));
    (ex, node)
}

fn docker_task(cmd: &[&str]) -> Task {
    Task {
        name: "main".into(),
        engine: SpecConfig::new("docker")
            .with("Image", IMAGE)
            .with("Parameters", serde_json::json!(cmd)),
        ..Default::default()
    }
}

fn request(dir: &Path, task: Task) -> RunRequest {
    let args = caravel_compute::executor::task_args(&task).unwrap();
    let env =
        caravel_compute::executor::task_env(&task, "e-docker", "j-docker", &Default::default());
    RunRequest {
        execution_id: unique("e"),
        job_id: "j-docker".into(),
        task,
        inputs: vec![],
        results: vec![],
        stdout_path: dir.join("stdout"),
        stderr_path: dir.join("stderr"),
        timeout_secs: 0,
        memory_limit: 128 << 20,
        max_output_bytes: 1 << 20,
        env,
        args,
        scratch_dir: dir.join("scratch"),
    }
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

async fn run(ex: &DockerExecutor, req: RunRequest) -> Result<RunResult, ExecError> {
    ex.run(req, CancellationToken::new()).await
}

#[tokio::test]
async fn a_command_produces_stdout_stderr_and_exit_codes() {
    let (ex, node) = executor(10).await;
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        &ex,
        request(
            dir.path(),
            docker_task(&["sh", "-c", "echo out; echo err >&2"]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        RunResult {
            exit_code: 0,
            stdout_capped: false,
            stderr_capped: false
        }
    );
    assert_eq!(read(dir.path().join("stdout")), "out\n");
    assert_eq!(read(dir.path().join("stderr")), "err\n");

    // A non-zero exit is a result, not an executor error.
    let r = run(
        &ex,
        request(dir.path(), docker_task(&["sh", "-c", "echo bye; exit 7"])),
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code, 7);
    assert_eq!(read(dir.path().join("stdout")), "bye\n");

    // Output past the cap is dropped and flagged.
    let mut req = request(
        dir.path(),
        docker_task(&["sh", "-c", "echo 0123456789; echo e >&2"]),
    );
    req.max_output_bytes = 4;
    let r = run(&ex, req).await.unwrap();
    assert!(r.stdout_capped && !r.stderr_capped);
    assert_eq!(read(dir.path().join("stdout")), "0123");
    assert!(containers_of(&node).is_empty(), "containers are removed");
}

#[tokio::test]
async fn env_working_directory_and_entrypoint_are_applied() {
    let (ex, _) = executor(10).await;
    let dir = tempfile::tempdir().unwrap();
    let mut task = docker_task(&["echo $GREETING $FROM_PARAMS; pwd"]);
    task.engine = task
        .engine
        .with("Entrypoint", serde_json::json!(["/bin/sh", "-c"]))
        .with("WorkingDirectory", "/tmp")
        .with("EnvironmentVariables", serde_json::json!(["FROM_PARAMS=p"]));
    task.env.insert("GREETING".into(), "hi".into());
    let r = run(&ex, request(dir.path(), task)).await.unwrap();
    assert_eq!(r.exit_code, 0, "{}", read(dir.path().join("stderr")));
    assert_eq!(read(dir.path().join("stdout")), "hi p\n/tmp\n");

    // Without an entrypoint the image's command line is the parameters.
    let r = run(
        &ex,
        request(
            dir.path(),
            docker_task(&["sh", "-c", "echo $BACALHAU_JOB_ID"]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(read(dir.path().join("stdout")), "j-docker\n");
}

#[tokio::test]
async fn inputs_are_mounted_read_only_and_result_dirs_are_collected() {
    let (ex, _) = executor(10).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), "input text\n").unwrap();
    let file_input = dir.path().join("single.txt");
    std::fs::write(&file_input, "one file\n").unwrap();
    let rw = dir.path().join("rw");
    std::fs::create_dir_all(&rw).unwrap();
    let out = dir.path().join("results/outputs");
    let script = "cat /inputs/data/a.txt /inputs/single.txt; \
        cp /inputs/data/a.txt /outputs/copy.txt; mkdir /outputs/sub; echo deep > /outputs/sub/x; \
        if touch /inputs/data/new 2>/dev/null; then echo writable; else echo read-only; fi; \
        touch /scratch/made && echo rw-ok";
    let mut req = request(dir.path(), docker_task(&["sh", "-c", script]));
    req.inputs = vec![
        PreparedInput {
            host_path: input.clone(),
            target: "/inputs/data".into(),
            read_only: true,
        },
        PreparedInput {
            host_path: file_input,
            target: "/inputs/single.txt".into(),
            read_only: true,
        },
        PreparedInput {
            host_path: rw.clone(),
            target: "/scratch".into(),
            read_only: false,
        },
    ];
    req.results = vec![ResultDir {
        name: "outputs".into(),
        host_dir: out.clone(),
        guest_path: "/outputs".into(),
    }];
    let r = run(&ex, req).await.unwrap();
    assert_eq!(r.exit_code, 0, "{}", read(dir.path().join("stderr")));
    assert_eq!(
        read(dir.path().join("stdout")),
        "input text\none file\nread-only\nrw-ok\n"
    );
    assert!(!input.join("new").exists());
    assert!(rw.join("made").exists(), "a read-write input is writable");
    assert_eq!(read(out.join("copy.txt")), "input text\n");
    assert_eq!(read(out.join("sub/x")), "deep\n");
}

#[tokio::test]
async fn a_timeout_stops_and_removes_the_container() {
    let (ex, node) = executor(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), docker_task(&["sleep", "300"]));
    req.timeout_secs = 1;
    assert_eq!(run(&ex, req).await.unwrap_err(), ExecError::Timeout(1));
    assert!(containers_of(&node).is_empty(), "the container is removed");
}

#[tokio::test]
async fn cancelling_stops_and_removes_the_container() {
    let (ex, node) = executor(1).await;
    let dir = tempfile::tempdir().unwrap();
    let req = request(
        dir.path(),
        docker_task(&["sh", "-c", "echo started; exec sleep 300"]),
    );
    let exec_id = req.execution_id.clone();
    let cancel = CancellationToken::new();
    let (ex2, c2) = (ex.clone(), cancel.clone());
    let run = tokio::spawn(async move { ex2.run(req, c2).await });
    // Cancel once the task is visibly running.
    let stdout = dir.path().join("stdout");
    while std::fs::read_to_string(&stdout).unwrap_or_default() != "started\n" {
        assert!(!run.is_finished(), "the run ended before it was cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let labelled = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label={LABEL_EXECUTION}={exec_id}"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&labelled.stdout).trim().is_empty(),
        "the container carries the execution label: {}",
        String::from_utf8_lossy(&labelled.stderr)
    );
    cancel.cancel();
    assert_eq!(run.await.unwrap().unwrap_err(), ExecError::Cancelled);
    assert!(containers_of(&node).is_empty(), "the container is removed");
}

#[tokio::test]
async fn the_memory_limit_is_enforced() {
    let (ex, _) = executor(10).await;
    let dir = tempfile::tempdir().unwrap();
    // Holds ~100 MB in a shell variable.
    let mut req = request(
        dir.path(),
        docker_task(&[
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ]),
    );
    req.memory_limit = 32 << 20;
    assert_eq!(
        run(&ex, req).await.unwrap_err(),
        ExecError::MemoryLimit(32 << 20)
    );
    // The same work fits in a larger limit.
    let mut req = request(
        dir.path(),
        docker_task(&[
            "sh",
            "-c",
            "x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ]),
    );
    req.memory_limit = 64 << 20;
    let r = run(&ex, req).await.unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(read(dir.path().join("stdout")), "1000000\n");
}

/// A named port on a bridged network: the task is told its container port and the node's port
/// (`BACALHAU_PORT_WEB`, `BACALHAU_HOST_PORT_WEB`), and what it serves there is reached from the
/// node on the host port.
#[tokio::test]
async fn a_named_port_is_published_on_the_host_port_the_task_is_told() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ex, _node) = executor(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut task = docker_task(&[
        "sh",
        "-c",
        "echo served-by-the-job > /tmp/index.html; echo inside=$BACALHAU_PORT_WEB host=$BACALHAU_HOST_PORT_WEB; httpd -f -p $BACALHAU_PORT_WEB -h /tmp & sleep 15",
    ]);
    task.network.kind = "Bridge".into();
    task.network.ports.push(caravel_model::spec::PortMapping {
        name: "web".into(),
        target: 8080,
        ..Default::default()
    });
    let mut req = request(dir.path(), task.clone());
    let ports = caravel_compute::executor::port_env(&task.network).unwrap();
    assert_eq!(ports["BACALHAU_PORT_WEB"], "8080");
    let host: u16 = ports["BACALHAU_HOST_PORT_WEB"].parse().unwrap();
    assert!(host >= 1024, "{ports:?}");
    req.env.extend(ports);
    let cancel = CancellationToken::new();
    let running = {
        let (ex, cancel) = (ex.clone(), cancel.clone());
        tokio::spawn(async move { ex.run(req, cancel).await })
    };
    let url = format!("http://127.0.0.1:{host}/index.html");
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(t) = r.text().await
        {
            body = t;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    let _ = running.await;
    assert_eq!(body.trim(), "served-by-the-job", "{url}");
    assert!(
        read(dir.path().join("stdout")).contains(&format!("inside=8080 host={host}")),
        "{}",
        read(dir.path().join("stdout"))
    );
}

#[tokio::test]
async fn network_none_has_no_interfaces_but_loopback_and_http_is_refused() {
    let (ex, _) = executor(10).await;
    let dir = tempfile::tempdir().unwrap();
    // Interface names from /proc/net/dev (two header lines).
    let list = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '";
    let r = run(&ex, request(dir.path(), docker_task(&["sh", "-c", list])))
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    let ifaces = read(dir.path().join("stdout"));
    assert!(
        ifaces.contains("lo ") && !ifaces.contains("eth"),
        "network None has loopback only: {ifaces}"
    );

    let mut bridged = docker_task(&["sh", "-c", list]);
    bridged.network.kind = "Default".into();
    let r = run(&ex, request(dir.path(), bridged)).await.unwrap();
    assert_eq!(r.exit_code, 0);
    assert!(
        read(dir.path().join("stdout")).contains("eth0"),
        "Default gets a bridged interface"
    );

    let mut http = docker_task(&["true"]);
    http.network.kind = "HTTP".into();
    let e = run(&ex, request(dir.path(), http)).await.unwrap_err();
    assert!(matches!(e, ExecError::NetworkUnsupported(_)), "{e}");
    assert!(e.to_string().contains("\"HTTP\" is not supported"), "{e}");
}

#[tokio::test]
async fn an_image_that_is_nowhere_fails_with_a_clear_message() {
    let (ex, node) = executor(10).await;
    let dir = tempfile::tempdir().unwrap();
    let mut task = docker_task(&["true"]);
    task.engine = SpecConfig::new("docker").with("Image", "caravel-no-such-image:1");
    let e = run(&ex, request(dir.path(), task)).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(
            "image \"caravel-no-such-image:1\" is not on this node and cannot be pulled: "
        ),
        "{text}"
    );
    assert!(
        text.ends_with("load it with docker load or docker import"),
        "{text}"
    );
    assert!(containers_of(&node).is_empty());
}

#[tokio::test]
async fn leftover_containers_of_the_node_are_removed_at_start() {
    require_docker();
    let node = unique("dkr");
    let other = unique("dkr-other");
    for n in [&node, &other] {
        let out = std::process::Command::new("docker")
            .args([
                "create",
                "--label",
                &format!("{LABEL_NODE}={n}"),
                IMAGE,
                "true",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "docker create failed");
    }
    assert_eq!(containers_of(&node).len(), 1);
    let ex = DockerExecutor::connect(DockerOptions::new(node.clone()), ComputeMetrics::new())
        .await
        .unwrap();
    assert!(ex.node_containers().await.unwrap().is_empty());
    assert!(containers_of(&node).is_empty());
    assert_eq!(
        containers_of(&other).len(),
        1,
        "other nodes' containers stay"
    );
    let ex = DockerExecutor::connect(DockerOptions::new(other.clone()), ComputeMetrics::new())
        .await
        .unwrap();
    assert!(ex.node_containers().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_node_advertises_docker_and_leaves_nothing_behind_after_many_jobs() {
    require_docker();
    let node_id = unique("dkr-node");
    let id = node_id.clone();
    let mut h = start(move |o, _| {
        o.node_id = id;
        o.docker = true;
        o.max_concurrent = 2;
    })
    .await;
    assert_eq!(
        h.hello.compute_node_info.execution_engines,
        vec!["wasm", "docker"]
    );
    let metrics = h.node.metrics();
    const JOBS: usize = 20;
    for i in 0..JOBS {
        let mut task = docker_task(&[
            "sh",
            "-c",
            &format!("echo job {i} > /outputs/n; echo {i}; exit $(({i} % 3))"),
        ]);
        task.publisher = SpecConfig::new("local");
        task.result_paths.push(ResultPath {
            name: "outputs".into(),
            path: "/outputs".into(),
        });
        task.input_sources.push(caravel_model::parse::inline_input(
            "/inputs/in.txt",
            "text/plain",
            b"x",
        ));
        h.send(run_msg(&format!("e-many-{i}"), task)).await;
    }
    for i in 0..JOBS {
        let id = format!("e-many-{i}");
        let reports = h.reports_until_terminal(&id).await;
        let end = last(&reports);
        assert_eq!(end.state, ExecutionStateType::Completed, "{}", end.message);
        let out = end.run_output.as_ref().unwrap();
        assert_eq!(out.exit_code, (i % 3) as i32);
        assert_eq!(out.stdout, format!("{i}\n"));
        let paths = h.node.execution_paths(&id);
        assert!(
            !paths.inputs.exists() && !paths.scratch.exists(),
            "work dirs are removed"
        );
        assert!(paths.archive.exists(), "results are published");
    }
    assert!(containers_of(&node_id).is_empty(), "no container is left");
    assert_eq!(
        metrics.executions_finished("docker", "completed"),
        JOBS as u64
    );
    h.shutdown.cancel();
    let _ = h.handle.await;
}

async fn sandboxed(sandbox: caravel_compute::docker::Sandbox) -> (DockerExecutor, String) {
    require_docker();
    let node = unique("dkr");
    let mut opts = DockerOptions::new(node.clone());
    opts.stop_grace = Duration::from_secs(1);
    opts.sandbox = sandbox;
    let ex = DockerExecutor::connect(opts, ComputeMetrics::new())
        .await
        .unwrap_or_else(|e| panic!("the docker tests need a running Docker engine: {e}"));
    (ex, node)
}

/// `docker inspect` of the running container of an execution, as JSON.
fn inspect_execution(exec_id: &str) -> serde_json::Value {
    let ids = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label={LABEL_EXECUTION}={exec_id}"),
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&ids.stdout).trim().to_string();
    assert!(!id.is_empty(), "the container of {exec_id} is running");
    let out = std::process::Command::new("docker")
        .args(["inspect", &id])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

/// Abuse: a job container runs with no-new-privileges, every capability dropped but the documented
/// few, a PID limit, the configured user and a read-only root (a writable /tmp), and no host path
/// but its own; `docker inspect` shows it.
#[tokio::test]
async fn a_job_container_is_confined_as_docker_inspect_shows() {
    let (ex, _) = sandboxed(caravel_compute::docker::Sandbox {
        pids_limit: 256,
        user: "1000:1000".into(),
        read_only_rootfs: true,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let req = request(
        dir.path(),
        docker_task(&[
            "sh",
            "-c",
            "id -u; touch /tmp/ok && echo tmp-writable; touch /etc/x 2>/dev/null || echo root-read-only; echo started >&2; exec sleep 30",
        ]),
    );
    let exec_id = req.execution_id.clone();
    let cancel = CancellationToken::new();
    let (ex2, c2) = (ex.clone(), cancel.clone());
    let run = tokio::spawn(async move { ex2.run(req, c2).await });
    let stderr = dir.path().join("stderr");
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("started")
    {
        assert!(!run.is_finished(), "the run ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = inspect_execution(&exec_id);
    let hc = &c["HostConfig"];
    eprintln!(
        "docker inspect: {}",
        serde_json::json!({
            "Config.User": c["Config"]["User"],
            "HostConfig.SecurityOpt": hc["SecurityOpt"],
            "HostConfig.CapDrop": hc["CapDrop"],
            "HostConfig.CapAdd": hc["CapAdd"],
            "HostConfig.PidsLimit": hc["PidsLimit"],
            "HostConfig.ReadonlyRootfs": hc["ReadonlyRootfs"],
            "HostConfig.Tmpfs": hc["Tmpfs"],
            "HostConfig.Privileged": hc["Privileged"],
            "HostConfig.NetworkMode": hc["NetworkMode"],
            "HostConfig.Binds": hc["Binds"],
            "Mounts": c["Mounts"].as_array().map(|m| m.iter().map(|x| x["Destination"].clone()).collect::<Vec<_>>()),
        })
    );
    assert_eq!(
        hc["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]));
    let mut added: Vec<String> = hc["CapAdd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().trim_start_matches("CAP_").to_string())
        .collect();
    added.sort();
    let mut want: Vec<String> = caravel_compute::docker::CAPABILITIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    want.sort();
    assert_eq!(added, want);
    assert_eq!(hc["PidsLimit"], 256);
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["Privileged"], false);
    assert_eq!(c["Config"]["User"], "1000:1000");
    assert_eq!(hc["NetworkMode"], "none");
    // No host path is mounted but the execution's own.
    for m in c["Mounts"].as_array().unwrap() {
        if m["Type"] == "bind" {
            let src = m["Source"].as_str().unwrap();
            assert!(
                src.starts_with(dir.path().to_str().unwrap()),
                "a host path outside the execution: {src}"
            );
        }
    }
    assert_eq!(
        read(dir.path().join("stdout")),
        "1000\ntmp-writable\nroot-read-only\n"
    );
    cancel.cancel();
    assert_eq!(run.await.unwrap().unwrap_err(), ExecError::Cancelled);
}

/// Abuse: a fork bomb stops at the container's PID limit (its forks fail, the host is untouched),
/// is stopped by its timeout, and the executor runs the next job as usual.
#[tokio::test]
async fn a_fork_bomb_is_contained_by_the_pid_limit() {
    let (ex, node) = sandboxed(caravel_compute::docker::Sandbox {
        pids_limit: 64,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Past 64 processes a fork fails, and busybox sh gives up saying so.
    let r = run(
        &ex,
        request(
            dir.path(),
            docker_task(&[
                "sh",
                "-c",
                "for i in $(seq 200); do sleep 60 & done; echo all-forked",
            ]),
        ),
    )
    .await
    .unwrap();
    assert_ne!(r.exit_code, 0);
    assert!(
        read(dir.path().join("stderr")).contains("can't fork"),
        "{}",
        read(dir.path().join("stderr"))
    );
    assert!(!read(dir.path().join("stdout")).contains("all-forked"));
    // The classic bomb: it keeps the container at its limit until the timeout ends it.
    let mut req = request(
        dir.path(),
        docker_task(&["sh", "-c", "b() { b | b & }; b; sleep 60"]),
    );
    req.timeout_secs = 3;
    let started = std::time::Instant::now();
    assert_eq!(run(&ex, req).await.unwrap_err(), ExecError::Timeout(3));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(containers_of(&node).is_empty(), "the container is removed");
    let r = run(
        &ex,
        request(dir.path(), docker_task(&["echo", "still here"])),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.exit_code, read(dir.path().join("stdout"))),
        (0, "still here\n".into())
    );
}
