//! A Bacalhau user switches with nothing to change: jobs exactly as Bacalhau's Go client marshals
//! them, Bacalhau's query parameters, versions, reruns and diffs, templates, flags, profiles, the
//! `bacalhau` name, `BACALHAU_*` variables and a Bacalhau `config.yaml` — each against a real
//! hybrid node (docs/compatibility.md).

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::{bin, describe, node, repo, run, test_module};

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn module_url() -> String {
    let bytes = std::fs::read(test_module("echo")).unwrap();
    format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Waits until the job is terminal; returns its `job describe` JSON.
fn finished(n: &caravel_chaos_tests::NodeProcess, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = describe(n, id);
        let state = d["Job"]["State"]["StateType"].as_str().unwrap_or_default();
        if matches!(state, "Completed" | "Failed" | "Stopped") {
            return d;
        }
        assert!(Instant::now() < deadline, "job {id} still {state}: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stdout_of(d: &Value) -> String {
    d["Executions"]["Items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["RunOutput"]["Stdout"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every fixture of `model/tests/compat` (the Go client's JSON: nulls, zero values, a newer
/// client's keys) is submitted through the API and runs to Completed; the unknown keys come back
/// in `Warnings`; the task sees Bacalhau's variables; executions carry their job.
#[test]
fn jobs_as_the_go_client_sends_them_run_to_completed_with_bacalhau_s_variables() {
    let (n, _d) = node();
    let module = module_url();
    let dir = repo().join("model/tests/compat");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    let c = client();
    let rt = rt();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("@MODULE@", &module);
        let job: Value = serde_json::from_str(&text).unwrap();
        let (status, body): (u16, Value) = rt.block_on(async {
            let r = c
                .put(format!("{}/api/v1/orchestrator/jobs", n.api()))
                .json(&json!({"Job": job}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        });
        assert_eq!(status, 200, "{name}: {body}");
        let warnings = body["Warnings"].to_string();
        if name == "go-client-newer.json" {
            for key in [
                "Schedule",
                "Tasks[0].Affinity",
                "Tasks[0].InputSources[0].Mount",
            ] {
                assert!(
                    warnings.contains(&format!("{key}: unknown field, ignored")),
                    "{name}: {warnings}"
                );
            }
        } else {
            assert!(!warnings.contains("unknown field"), "{name}: {warnings}");
        }
        let id = body["JobID"].as_str().unwrap().to_string();
        let d = finished(&n, &id);
        assert_eq!(d["Job"]["State"]["StateType"], "Completed", "{name}: {d}");
        let out = stdout_of(&d);
        let job_name = name.trim_end_matches(".json");
        for line in [
            format!("env BACALHAU_JOB_ID={id}"),
            format!("env BACALHAU_JOB_NAME={job_name}"),
            "env BACALHAU_JOB_NAMESPACE=default".into(),
            "env BACALHAU_JOB_TYPE=batch".into(),
            "env BACALHAU_PARTITION_INDEX=0".into(),
            "env BACALHAU_PARTITION_COUNT=1".into(),
            "env BACALHAU_NODE_ID=".into(),
            "env BACALHAU_EXECUTION_ID=e-".into(),
        ] {
            assert!(out.contains(&line), "{name}: {line} missing from\n{out}");
        }
        if name == "go-client-full.json" {
            assert!(out.contains("env GREETING=hello"), "{out}");
        }
        // Executions carry the job they ran, as Bacalhau's do.
        let execs: Value = rt.block_on(async {
            c.get(format!(
                "{}/api/v1/orchestrator/jobs/{id}/executions",
                n.api()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
        });
        assert_eq!(execs["Items"][0]["Job"]["ID"], id, "{execs}");
    }
}

/// Versions, history by version, reruns, diffs and Go's query parameters.
#[test]
fn versions_reruns_diffs_and_go_query_parameters_work_as_bacalhau() {
    let (n, d) = node();
    // A relative SourcePath is read on the client and sent inline (beside the spec file).
    std::fs::copy(test_module("echo"), d.path().join("echo.wasm")).unwrap();
    let module = std::path::PathBuf::from("echo.wasm");
    let spec = |greeting: &str| {
        format!(
            "Name: versioned\nType: batch\nLabels: {{team: data, tier: gold}}\nTasks:\n  - Name: main\n    Engine: {{Type: wasm, Params: {{EntryModule: /echo.wasm}}}}\n    Env: {{GREETING: {greeting}}}\n    InputSources:\n      - Target: /echo.wasm\n        Source: {{Type: local, Params: {{SourcePath: {}}}}}\n",
            module.display()
        )
    };
    let file = d.path().join("versioned.yaml");
    std::fs::write(&file, spec("one")).unwrap();
    let f = file.to_str().unwrap();
    let (ok, out, err) = run(&n, &["job", "run", f, "--id-only"], None);
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    // --dry-run shows what would change against the submitted version, and submits nothing.
    std::fs::write(&file, spec("two")).unwrap();
    let (ok, out, err) = run(&n, &["job", "run", f, "--dry-run"], None);
    assert!(ok, "{err}");
    let changed: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('+'))
        .collect();
    assert_eq!(
        changed,
        ["-    GREETING: one", "+    GREETING: two"],
        "{out}"
    );
    let (ok, out, _) = run(&n, &["job", "versions", &id, "--output", "json"], None);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["Items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A new version.
    let (ok, _, err) = run(&n, &["job", "run", f, "--id-only"], None);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&n, &["job", "versions", &id], None);
    assert!(ok);
    assert_eq!(out.lines().count(), 3, "header and two versions:\n{out}");
    let versions_in = |args: &[&str]| -> Vec<u64> {
        let mut a = vec!["job"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--output", "json"]);
        let (ok, out, err) = run(&n, &a, None);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut seen: Vec<u64> = v["Items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["JobVersion"].as_u64().unwrap())
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    assert_eq!(
        versions_in(&["history", &id]),
        vec![2],
        "history shows the latest version"
    );
    assert_eq!(versions_in(&["history", &id, "-v", "1"]), vec![1]);
    assert_eq!(versions_in(&["history", &id, "--all-versions"]), vec![1, 2]);
    assert_eq!(
        versions_in(&["executions", &id, "--all-versions"]),
        vec![1, 2]
    );
    assert_eq!(versions_in(&["executions", &id, "--version", "1"]), vec![1]);
    // Rerun version 1: a third version with version 1's spec, run to completion.
    let (ok, _, err) = run(&n, &["job", "rerun", &id, "--version", "1", "--wait"], None);
    assert!(ok, "{err}");
    assert!(err.contains("version 3"), "{err}");
    let d3 = finished(&n, &id);
    assert_eq!(d3["Job"]["Version"], 3);
    assert!(stdout_of(&d3).contains("env GREETING=one"), "{d3}");

    // Query parameters as Go reads them.
    let c = client();
    let rt = rt();
    let get = |q: &str| -> (u16, Value) {
        rt.block_on(async {
            let r = c
                .get(format!("{}/api/v1/orchestrator/jobs?{q}", n.api()))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or_default())
        })
    };
    for yes in ["True", "1", "t", "TRUE"] {
        assert_eq!(get(&format!("reverse={yes}")).0, 200, "{yes}");
    }
    let (status, body) = get("reverse=maybe");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["Message"].as_str().unwrap().contains("not a boolean"),
        "{body}"
    );
    let count = |q: &str| get(q).1["Items"].as_array().map_or(0, Vec::len);
    assert_eq!(count("labels=team%3Ddata&labels=tier%3Dgold"), 1);
    assert_eq!(
        count("labels=team%3Ddata&labels=tier%3Dsilver"),
        0,
        "every requirement applies"
    );
    // The diff endpoint writes nothing.
    let diff: Value = rt.block_on(async {
        c.put(format!("{}/api/v1/orchestrator/jobs/diff", n.api()))
            .json(
                &json!({"Job": {"Name": "brand-new", "Type": "batch", "Tasks": [{"Name": "main",
                "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
                "InputSources": [{"Target": "/m.wasm", "Source": {"Type": "inline",
                    "Params": {"URL": "data:application/wasm;base64,AGFzbQEAAAA="}}}]}]}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(
        diff["Diff"].as_str().unwrap().contains("+Name: brand-new"),
        "{diff}"
    );
    let (_, list) = get("");
    assert!(
        !list.to_string().contains("brand-new"),
        "a diff submits nothing"
    );
}

/// Templates, Bacalhau's flags, csv and wide tables, profiles, the `bacalhau` name and Bacalhau's
/// environment variables, against one node.
#[test]
fn templates_flags_profiles_and_the_bacalhau_name_work_as_bacalhau() {
    let (n, d) = node();
    std::fs::copy(test_module("echo"), d.path().join("echo.wasm")).unwrap();
    let module = std::path::PathBuf::from("echo.wasm");
    // A templated spec: -V values and -E environment variables; a missing key is named.
    let file = d.path().join("tmpl.yaml");
    std::fs::write(
        &file,
        format!(
            "Name: {{{{ .name }}}}\nType: batch\nTasks:\n  - Name: main\n    Engine: {{Type: wasm, Params: {{EntryModule: /echo.wasm, Parameters: [\"{{{{.CARAVEL_TEST_WORD}}}}\"]}}}}\n    InputSources:\n      - Target: /echo.wasm\n        Source: {{Type: local, Params: {{SourcePath: {}}}}}\n",
            module.display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let direct = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(bin());
        c.args([
            "--api-host",
            "127.0.0.1",
            "--api-port",
            &n.api_port.to_string(),
        ])
        .args(args)
        .env_remove("CARAVEL_API_HOST")
        .env_remove("CARAVEL_API_PORT");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, out, err) = direct(
        &[
            "job",
            "run",
            f,
            "-V",
            "name=templated",
            "-E",
            "CARAVEL_TEST_.*",
            "--id-only",
        ],
        &[("CARAVEL_TEST_WORD", "hello-from-env")],
    );
    assert!(ok, "{err}");
    let dj = finished(&n, out.trim());
    assert_eq!(dj["Job"]["Name"], "templated");
    assert!(stdout_of(&dj).contains("hello-from-env"), "{dj}");
    let (ok, out, _) = run(&n, &["job", "validate", f, "-V", "name=x"], None);
    assert!(
        !ok && out.contains("\"CARAVEL_TEST_WORD\""),
        "the missing key is named: {out}"
    );
    let (ok, out, _) = run(&n, &["job", "validate", f, "--no-template"], None);
    assert!(
        !ok && !out.contains("template"),
        "--no-template parses the braces as they are: {out}"
    );

    // A boolean flag does not swallow the next word; -l key; durations; csv and wide tables.
    let module_file = test_module("echo");
    let m = module_file.to_str().unwrap();
    let (ok, _, err) = run(
        &n,
        &[
            "wasm",
            "run",
            "--wait",
            m,
            "-l",
            "canary",
            "--timeout",
            "2m",
            "--",
            "flag-test",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, _) = run(&n, &["job", "list", "--output", "csv", "--wide"], None);
    assert!(ok);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("CREATED,ID,NAME,JOB,TYPE,STATE"));
    assert!(
        lines.any(|l| l.contains(",j-") && l.split(',').nth(1).unwrap().len() > 20),
        "{out}"
    );
    let (ok, out, _) = run(&n, &["job", "list", "--no-style", "--output", "json"], None);
    assert!(ok);
    let jobs: Value = serde_json::from_str(&out).unwrap();
    let flagged = jobs["Items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["Labels"].get("canary").is_some())
        .expect("the -l canary job");
    assert_eq!(flagged["Labels"]["canary"], "");
    assert_eq!(flagged["Tasks"][0]["Timeouts"]["TotalTimeout"], 120);
    let (ok, out, _) = run(&n, &["node", "list", "--show", "version,features"], None);
    assert!(ok);
    let header = out.lines().next().unwrap();
    assert!(
        header.contains("VERSION") && header.contains("ENGINES") && !header.contains("CPU"),
        "{out}"
    );

    // Invoked as `bacalhau`, with Bacalhau's variables, it is the same client.
    let link = d.path().join("bacalhau");
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    let o = Command::new(&link)
        .args(["job", "list", "--output", "json"])
        .env_remove("CARAVEL_API_HOST")
        .env_remove("CARAVEL_API_PORT")
        .env("BACALHAU_API_HOST", "127.0.0.1")
        .env("BACALHAU_API_PORT", n.api_port.to_string())
        .env("BACALHAU_DIR", d.path().join("client"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("templated"));

    // Profiles: saved, selected and used when no flag says otherwise; the token stays hidden.
    let home = d.path().join("client");
    let profile = |args: &[&str]| {
        let o = Command::new(bin())
            .args(["--data-dir", home.to_str().unwrap()])
            .args(args)
            .env_remove("CARAVEL_API_HOST")
            .env_remove("CARAVEL_API_PORT")
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let token = d.path().join("token");
    std::fs::write(&token, "not-a-real-key-0123456789\n").unwrap();
    let endpoint = n.api();
    let (ok, _, err) = profile(&[
        "profile",
        "save",
        "local",
        "--endpoint",
        &endpoint,
        "--timeout",
        "30s",
        "--select",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = profile(&[
        "profile",
        "save",
        "elsewhere",
        "--endpoint",
        "http://127.0.0.1:9",
        "--auth-token-file",
        token.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = profile(&["profile", "list"]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with('*') && l.contains("local")),
        "{out}"
    );
    let (ok, out, _) = profile(&["profile", "show"]);
    assert!(ok && out.contains(&endpoint), "{out}");
    let (ok, out, _) = profile(&["profile", "show", "elsewhere"]);
    assert!(
        ok && out.contains("hidden") && !out.contains("0123456789"),
        "{out}"
    );
    let (ok, out, _) = profile(&["profile", "show", "elsewhere", "--show-token"]);
    assert!(ok && out.contains("not-a-real-key-0123456789"), "{out}");
    let (ok, out, err) = profile(&["job", "list", "--output", "json"]);
    assert!(ok, "the selected profile's endpoint is used: {err}");
    assert!(out.contains("templated"));
    let (ok, _, err) = profile(&["--profile", "elsewhere", "job", "list"]);
    assert!(!ok && err.contains("127.0.0.1:9"), "{err}");
    let (ok, _, err) = profile(&["profile", "delete", "local"]);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, _, err) = profile(&["profile", "delete", "local", "--force"]);
    assert!(ok, "{err}");
}

/// A Bacalhau `config.yaml`: the keys Caravel has are used, the others named once at start.
#[test]
fn a_bacalhau_config_file_starts_a_node_and_names_what_it_ignores() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "Compute:\n  Heartbeat:\n    Interval: 3s\n    InfoUpdateInterval: 1m\nWebUI:\n  Enabled: false\nLogging:\n  Level: info\n  Mode: default\nUpdateConfig:\n  Interval: 24h\nJobDefaults:\n  Batch:\n    Task:\n      Resources: {CPU: 250m}\n      Timeouts: {ExecutionTimeout: 5m}\n",
    )
    .unwrap();
    let n = caravel_chaos_tests::NodeProcess::start_hybrid(
        &bin(),
        &d.path().join("node"),
        &["-c", cfg.to_str().unwrap()],
    )
    .unwrap();
    let log = n.log_text();
    for key in ["WebUI", "Logging.Mode", "UpdateConfig", "Compute.Heartbeat"] {
        let warned = format!("config key {key} is not used by Caravel");
        assert_eq!(
            log.matches(&warned).count(),
            1,
            "{key} is named once:\n{log}"
        );
    }
    assert!(
        log.contains("Compute.Heartbeat.Interval is read as Compute.HeartbeatSecs = 3"),
        "{log}"
    );
    let (ok, _, err) = run(&n, &["job", "list"], None);
    assert!(ok, "{err}");
    // JobDefaults fill in what a submitted batch job leaves unset, and the job says so.
    let spec = d.path().join("job.yaml");
    std::fs::write(
        &spec,
        format!(
            "Name: defaulted\nType: batch\nTasks:\n  - Name: main\n    Engine: {{Type: wasm, Params: {{EntryModule: /m.wasm}}}}\n    InputSources:\n      - Target: /m.wasm\n        Source: {{Type: inline, Params: {{URL: \"{}\"}}}}\n",
            module_url()
        ),
    )
    .unwrap();
    let (ok, out, err) = run(&n, &["job", "run", spec.to_str().unwrap()], None);
    assert!(ok, "{out}\n{err}");
    let got = finished(&n, &crate::e2e::job_id(&err, &out));
    assert_eq!(got["Job"]["State"]["StateType"], "Completed", "{got}");
    let task = &got["Job"]["Tasks"][0];
    assert_eq!(task["Resources"]["CPU"], "250m", "{task}");
    assert_eq!(task["Timeouts"]["ExecutionTimeout"], 300, "{task}");
    assert!(!log.contains("config key JobDefaults"), "{log}");
}

/// The S3 server of the tests (scripts/test.sh starts moto), or a failure saying how to get one.
fn s3_endpoint() -> String {
    std::env::var("CARAVEL_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| {
            panic!(
                "this test needs an S3-compatible server: set CARAVEL_TEST_S3_ENDPOINT=http://127.0.0.1:PORT \
                 (scripts/test.sh starts moto_server; by hand: moto_server -H 127.0.0.1 -p 5000)"
            )
        })
        .trim_end_matches('/')
        .to_string()
}

/// The examples name `busybox:1.37.0`; with no registry here, the test image stands in for it
/// (tagged only when the engine has no image of that name).
fn busybox_1_37() {
    let has = |image: &str| {
        Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs a running Docker engine and the docker CLI: {e}")
            })
            .status
            .success()
    };
    if has("busybox:1.37.0") {
        return;
    }
    assert!(
        has("caravel-busybox:latest"),
        "this test needs the image caravel-busybox:latest: run scripts/test-image.sh"
    );
    let o = Command::new("docker")
        .args(["tag", "caravel-busybox:latest", "busybox:1.37.0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Waits until `job describe` satisfies `done`; returns it.
fn wait_for(
    n: &caravel_chaos_tests::NodeProcess,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = describe(n, id);
        if done(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: {what} within 120 s: {d}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every example spec of the reference (§3.10, Bacalhau's `testdata/jobs` shapes), run as a
/// Bacalhau user runs them — `job run FILE` — on a hybrid node with the real Docker engine and a
/// real S3 server: the S3 input is a directory of the prefix's objects, the local publisher's
/// result path comes back with `job get`, the inline WASM module runs from its relative target,
/// and the daemon runs on the node labelled `region=eu` with `API_KEY` read from the node.
#[test]
fn bacalhau_s_example_specs_run_as_bacalhau_runs_them() {
    busybox_1_37();
    let endpoint = s3_endpoint();
    let c = client();
    let rt = rt();
    // The example's bucket, `my-bucket`, under a name of this run's (moto is shared).
    let bucket = format!(
        "caravel-examples-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    rt.block_on(async {
        let r = c.put(format!("{endpoint}/{bucket}")).send().await.unwrap();
        assert!(r.status().is_success(), "creating {bucket}: {}", r.status());
        for key in ["a.txt", "b.txt", "deeper/c.txt"] {
            let r = c
                .put(format!("{endpoint}/{bucket}/some/prefix/{key}"))
                .body(format!("{key}\n"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "put {key}: {}", r.status());
        }
    });
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "Labels: {region: eu}\nCompute:\n  Env:\n    AllowList: [API_KEY]\n",
    )
    .unwrap();
    let n = caravel_chaos_tests::NodeProcess::start_hybrid_env(
        &bin(),
        &d.path().join("node"),
        &["-c", cfg.to_str().unwrap()],
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("API_KEY", "from-the-node"),
        ],
    )
    .unwrap();
    let examples = repo().join("model/tests/bacalhau-examples");
    let spec = |name: &str| examples.join(name).display().to_string();
    let ran = |name: &str, args: &[&str]| {
        let (ok, out, err) = run(&n, args, None);
        assert!(ok, "{name}: {out}\n{err}\n{}", n.log_text());
        crate::e2e::job_id(&err, &out)
    };

    // Docker with an S3 input: `ls /input_custom` lists the prefix's objects by key.
    let s3_spec = d.path().join("docker-s3.yaml");
    std::fs::write(
        &s3_spec,
        std::fs::read_to_string(examples.join("docker-s3.yaml"))
            .unwrap()
            .replace("Bucket: my-bucket", &format!("Bucket: {bucket}")),
    )
    .unwrap();
    let id = ran("docker-s3", &["job", "run", s3_spec.to_str().unwrap()]);
    let got = finished(&n, &id);
    assert_eq!(got["Job"]["State"]["StateType"], "Completed", "{got}");
    let listed: Vec<String> = stdout_of(&got)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(listed, ["a.txt", "b.txt", "deeper"], "{got}");

    // Docker with the local publisher: the result path comes back with `job get`.
    let id = ran(
        "docker-output",
        &["job", "run", &spec("docker-output.yaml")],
    );
    let got = finished(&n, &id);
    assert_eq!(got["Job"]["State"]["StateType"], "Completed", "{got}");
    let out = d.path().join("results");
    let (ok, _, err) = run(
        &n,
        &["job", "get", &id, "--output-dir", out.to_str().unwrap()],
        None,
    );
    assert!(ok, "job get: {err}");
    assert_eq!(
        std::fs::read_to_string(out.join("output_custom/output.txt")).unwrap(),
        "15\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("exitCode"))
            .unwrap()
            .trim(),
        "0"
    );

    // WASM from an inline module at `/wasm.main`.
    let wasm = d.path().join("wasm-inline.yaml");
    std::fs::write(
        &wasm,
        std::fs::read_to_string(examples.join("wasm-inline.yaml"))
            .unwrap()
            .replace("data:application/wasm;base64,AGFzbQ==", &module_url()),
    )
    .unwrap();
    let id = ran("wasm-inline", &["job", "run", wasm.to_str().unwrap()]);
    let got = finished(&n, &id);
    assert_eq!(got["Job"]["State"]["StateType"], "Completed", "{got}");
    assert!(
        stdout_of(&got).contains("env BACALHAU_JOB_NAME=Wasm Job"),
        "{got}"
    );

    // The daemon runs on the node labelled region=eu, reading API_KEY from the node.
    let id = ran(
        "daemon",
        &[
            "job",
            "run",
            "--wait=false",
            "--id-only",
            &spec("daemon.yaml"),
        ],
    );
    wait_for(&n, &id, "the daemon's copy running", |d| {
        d["Executions"]["Items"]
            .as_array()
            .is_some_and(|e| e.len() == 1 && e[0]["ComputeState"]["StateType"] == 6)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, logs, err) = run(&n, &["job", "logs", &id], None);
        if ok && logs.contains("start from-the-node") {
            break;
        }
        assert!(Instant::now() < deadline, "daemon logs: {logs}\n{err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, _, err) = run(&n, &["job", "stop", &id], None);
    assert!(ok, "job stop: {err}");
    let got = finished(&n, &id);
    assert_eq!(got["Job"]["State"]["StateType"], "Stopped", "{got}");
}
