//! A cluster that lets in no one who does not belong, tried as an attacker and as an operator would:
//! every route's capability (401 / 403 / 2xx), loopback-only defaults seen from another host (a
//! network namespace), browser protections, HTTPS on the API, redaction, `env:NAME` secrets, joining
//! by one-time token, and rejecting and deleting a connected node. Real processes throughout.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use caravel_chaos_tests::NodeProcess;
use caravel_chaos_tests::cluster::{Group, GroupOptions};
use caravel_chaos_tests::netns::Netns;
use serde_json::{Value, json};

use crate::{bin, test_module};

const ADMIN: &str = "admin-key-0123456789abcdef";
const STAR: &str = "star-key-0123456789abcdef";
const READER: &str = "reader-key-0123456789abcdef";
const JOBS: &str = "jobs-key-0123456789abcdef";
const NODES: &str = "nodes-key-0123456789abcdef";

fn users_config(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("users.yaml");
    std::fs::write(
        &f,
        format!(
            r#"API:
  Auth:
    Users:
      - {{Alias: admin, APIKey: {ADMIN}, Capabilities: [{{Actions: ["*", admin]}}]}}
      - {{Alias: star, APIKey: {STAR}, Capabilities: [{{Actions: ["*"]}}]}}
      - {{Alias: reader, APIKey: {READER}, Capabilities: [{{Actions: ["read:*"]}}]}}
      - {{Alias: jobs, APIKey: {JOBS}, Capabilities: [{{Actions: [read:job, write:job]}}]}}
      - {{Alias: nodes, APIKey: {NODES}, Capabilities: [{{Actions: [read:node]}}]}}
      - {{Alias: ci, Username: ci, Password: ci-password-123, Capabilities: [{{Actions: [read:job]}}]}}
"#
        ),
    )
    .unwrap();
    f
}

fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One request: (status, body).
fn call(
    rt: &tokio::runtime::Runtime,
    method: &str,
    url: &str,
    auth: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    rt.block_on(async {
        let c = reqwest::Client::new();
        let mut r = c.request(method.parse().unwrap(), url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
}

fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}

fn wasm_job(name: &str) -> Value {
    json!({"Name": name, "Type": "batch", "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
        "InputSources": [{"Target": "/m.wasm", "Source": {"Type": "inline", "Params": {"URL": "data:application/wasm;base64,AGFzbQEAAAA="}}}]}]})
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    Open,
    Read(&'static str),
    Write(&'static str),
    Admin,
}

/// Whether the user holding `key` has what `need` asks.
fn granted(key: &str, need: Needs) -> bool {
    match (key, need) {
        (_, Needs::Open) => true,
        (ADMIN, _) => true,
        (STAR, Needs::Admin) => false,
        (STAR, _) => true,
        (READER, Needs::Read(_)) => true,
        (JOBS, Needs::Read("job") | Needs::Write("job")) => true,
        (NODES, Needs::Read("node")) => true,
        _ => false,
    }
}

/// Every route with what it needs, and whether the right credential gets a 2xx (some answer a
/// 4xx from the handler with a right credential: an unknown id, a body it refuses).
#[rustfmt::skip]
fn routes(job: &str, node_id: &str) -> Vec<(&'static str, String, Option<Value>, Needs, bool)> {
    use Needs::*;
    vec![
        ("GET", "/api/v1/agent/alive".into(), None, Open, true),
        ("GET", "/api/v1/agent/version".into(), None, Open, true),
        ("GET", "/api/v1/agent/authconfig".into(), None, Open, true),
        ("GET", "/livez".into(), None, Open, true),
        ("GET", "/readyz".into(), None, Open, true),
        ("GET", "/api/v1/agent/node".into(), None, Read("agent"), true),
        ("GET", "/api/v1/agent/config".into(), None, Read("agent"), true),
        ("GET", "/api/v1/orchestrator/jobs".into(), None, Read("job"), true),
        ("PUT", "/api/v1/orchestrator/jobs".into(), Some(json!({"Job": wasm_job("sec-2")})), Write("job"), true),
        ("POST", "/api/v1/orchestrator/jobs".into(), Some(json!({"Job": wasm_job("sec-3")})), Write("job"), true),
        ("GET", format!("/api/v1/orchestrator/jobs/{job}"), None, Read("job"), true),
        ("GET", format!("/api/v1/orchestrator/jobs/{job}/history"), None, Read("job"), true),
        ("GET", format!("/api/v1/orchestrator/jobs/{job}/executions"), None, Read("job"), true),
        ("GET", format!("/api/v1/orchestrator/jobs/{job}/versions"), None, Read("job"), true),
        ("PUT", format!("/api/v1/orchestrator/jobs/{job}/rerun"), Some(json!({})), Write("job"), true),
        ("PUT", "/api/v1/orchestrator/jobs/diff".into(), Some(json!({"Job": wasm_job("sec-4")})), Write("job"), true),
        ("POST", "/api/v1/orchestrator/jobs/diff".into(), Some(json!({"Job": wasm_job("sec-5")})), Write("job"), true),
        ("GET", format!("/api/v1/orchestrator/jobs/{job}/results"), None, Read("job"), true),
        ("GET", format!("/api/v1/orchestrator/jobs/{job}/logs"), None, Read("job"), false),
        ("DELETE", "/api/v1/orchestrator/jobs/j-none".into(), Some(json!({"reason": "x"})), Write("job"), false),
        ("GET", "/api/v1/orchestrator/executions/e-none/result".into(), None, Read("job"), false),
        ("GET", "/api/v1/orchestrator/nodes".into(), None, Read("node"), true),
        ("GET", format!("/api/v1/orchestrator/nodes/{node_id}"), None, Read("node"), true),
        ("PUT", "/api/v1/orchestrator/nodes".into(), Some(json!({"NodeID": node_id, "Action": "approve"})), Admin, false),
        ("GET", "/api/v1/orchestrator/cluster".into(), None, Read("cluster"), true),
        ("POST", "/api/v1/orchestrator/cluster/members".into(), Some(json!({})), Admin, false),
        ("DELETE", "/api/v1/orchestrator/cluster/members/orch-9".into(), None, Admin, false),
        ("GET", "/api/v1/orchestrator/snapshot".into(), None, Admin, true),
        ("GET", "/api/v1/orchestrator/tokens".into(), None, Admin, true),
        ("POST", "/api/v1/orchestrator/tokens".into(), Some(json!({})), Admin, false),
        ("GET", "/api/v1/orchestrator/revocations".into(), None, Admin, true),
        ("GET", "/metrics".into(), None, Read("metrics"), true),
    ]
}

#[test]
fn every_route_answers_401_without_a_credential_403_without_the_capability_and_2xx_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = users_config(dir.path());
    let n = NodeProcess::start_hybrid_as(
        &bin(),
        &dir.path().join("node"),
        &["-c", cfg.to_str().unwrap()],
        Some(ADMIN),
    )
    .expect("start");
    let rt = rt();
    let api = n.api();
    // A job to address.
    let (s, b) = call(
        &rt,
        "PUT",
        &format!("{api}/api/v1/orchestrator/jobs"),
        Some(&bearer(ADMIN)),
        Some(json!({"Job": wasm_job("sec")})),
        &[],
    );
    assert_eq!(s, 200, "{b}");
    let job = b["JobID"].as_str().unwrap().to_string();
    let node = n.cli(&["node", "list", "--output", "json"]).unwrap();
    let nodes: Value = serde_json::from_slice(&node.stdout).unwrap();
    let node_id = nodes["Nodes"][0]["Info"]["NodeID"]
        .as_str()
        .unwrap()
        .to_string();

    let routes = routes(&job, &node_id);
    for (method, path, body, need, two_xx) in &routes {
        let url = format!("{api}{path}");
        let (s, b) = call(&rt, method, &url, None, body.clone(), &[]);
        if *need == Needs::Open {
            assert!(
                (200..300).contains(&s),
                "{method} {path} is open, got {s}: {b}"
            );
            continue;
        }
        assert_eq!(s, 401, "{method} {path} without a credential: {b}");
        assert_eq!(b["Code"], "Unauthorized", "{method} {path}: {b}");
        assert!(
            !b["Hint"].as_str().unwrap_or_default().is_empty(),
            "a 401 says what to do: {b}"
        );
        let (s, _) = call(
            &rt,
            method,
            &url,
            Some(&bearer("wrong-key-0123456789abc")),
            body.clone(),
            &[],
        );
        assert_eq!(s, 401, "{method} {path} with a wrong key");
        for key in [ADMIN, STAR, READER, JOBS, NODES] {
            // A new job name per caller, so a second submission is not "no changes".
            let mut body = body.clone();
            if let Some(name) = body.as_mut().and_then(|b| b.pointer_mut("/Job/Name")) {
                *name = format!("{}-{}", name.as_str().unwrap_or_default(), &key[..4]).into();
            }
            let (s, b) = call(&rt, method, &url, Some(&bearer(key)), body, &[]);
            if granted(key, *need) {
                assert!(s != 401 && s != 403, "{method} {path} with {key}: {s} {b}");
                if *two_xx {
                    assert!(
                        (200..300).contains(&s),
                        "{method} {path} with {key}: {s} {b}"
                    );
                }
            } else {
                assert_eq!(s, 403, "{method} {path} with {key} ({need:?}): {b}");
                assert_eq!(b["Code"], "Forbidden");
                if *need == Needs::Admin {
                    assert!(b["Hint"].as_str().unwrap().contains("admin"), "{b}");
                }
            }
        }
    }
    // Basic credentials, plain password.
    use base64::Engine;
    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let (s, _) = call(
        &rt,
        "GET",
        &format!("{api}/api/v1/orchestrator/jobs"),
        Some(&basic("ci", "ci-password-123")),
        None,
        &[],
    );
    assert_eq!(s, 200);
    let (s, _) = call(
        &rt,
        "GET",
        &format!("{api}/api/v1/orchestrator/jobs"),
        Some(&basic("ci", "wrong-password")),
        None,
        &[],
    );
    assert_eq!(s, 401);
    // Refusals are counted.
    let (_, m) = call(
        &rt,
        "GET",
        &format!("{api}/metrics"),
        Some(&bearer(ADMIN)),
        None,
        &[],
    );
    assert!(
        m.as_str()
            .unwrap()
            .contains("caravel_api_auth_failures_total{reason=\"forbidden\"}"),
        "{m}"
    );
    // The CLI reads BACALHAU_API_KEY as a Bacalhau user's scripts set it.
    let o = Command::new(bin())
        .args(["--api-port", &n.api_port.to_string(), "job", "list"])
        .env("BACALHAU_API_KEY", READER)
        .env_remove("CARAVEL_API_KEY")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin())
        .args(["--api-port", &n.api_port.to_string(), "job", "list"])
        .env_remove("CARAVEL_API_KEY")
        .env_remove("BACALHAU_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("needs a credential") && err.contains("no credential"),
        "{err}"
    );
}

#[test]
fn without_users_a_remote_client_gets_401_and_allow_anonymous_read_lets_only_reads_through() {
    let ns = Netns::new().expect("a network namespace (the tests run as root in CI)");
    let dir = tempfile::tempdir().unwrap();
    let remote = |n: &NodeProcess, args: &[&str]| {
        let port = n.api_port.to_string();
        let mut all = vec![
            "--api-host",
            ns.host_ip.as_str(),
            "--api-port",
            port.as_str(),
        ];
        all.extend_from_slice(args);
        let o = ns.run(&bin(), &all, &[]).unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            // How it ended too, for a failure's message.
            format!("{}[{}]", String::from_utf8_lossy(&o.stderr), o.status),
        )
    };
    // No users: loopback works as today, the other host is refused with the keys to set.
    let open =
        NodeProcess::start_hybrid_on(&bin(), &dir.path().join("a"), "0.0.0.0", &[], None).unwrap();
    assert!(open.cli(&["job", "list"]).unwrap().status.success());
    // What a failure here needs to be understood: the two ends' addresses and the node's log.
    let context = |n: &NodeProcess| {
        let addrs = std::process::Command::new("ip")
            .args(["-brief", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "host {} / namespace {}; this side's addresses:\n{addrs}\nthe node's log:\n{}",
            ns.host_ip,
            ns.ns_ip,
            n.log_text()
        )
    };
    let (ok, _, err) = remote(&open, &["agent", "alive"]);
    assert!(
        ok,
        "health stays open from another host: {err}\n{}",
        context(&open)
    );
    let (ok, _, err) = remote(&open, &["job", "list"]);
    assert!(
        !ok,
        "a remote client read jobs of a node without users\n{}",
        context(&open)
    );
    assert!(
        err.contains("401") || err.contains("only loopback"),
        "{err}\n{}",
        context(&open)
    );
    assert!(
        err.contains("API.Auth.Users"),
        "the hint names the config keys: {err}"
    );
    drop(open);

    // AllowAnonymous read: GETs pass, writes are refused.
    let ro = NodeProcess::start_hybrid_on(
        &bin(),
        &dir.path().join("b"),
        "0.0.0.0",
        &["-c", "API.Auth.AllowAnonymous=read"],
        None,
    )
    .unwrap();
    // The warning is written at start; give a loaded machine time to flush it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ro.log_text().contains("AllowAnonymous=read") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        ro.log_text().contains("AllowAnonymous=read"),
        "a warning at start:\n{}",
        ro.log_text()
    );
    let (ok, out, err) = remote(&ro, &["job", "list", "--output", "json"]);
    assert!(ok, "{err}\n{}", context(&ro));
    assert!(out.contains("Items"), "{out}");
    // A 5 MiB upload: the refusal comes before the body is read, and the client still gets it
    // (the API reads the rest of a refused upload before answering).
    let module = dir.path().join("big.wasm");
    std::fs::write(&module, vec![7u8; 5 << 20]).unwrap();
    let (ok, _, err) = remote(
        &ro,
        &["wasm", "run", module.to_str().unwrap(), "--wait=false"],
    );
    assert!(!ok, "an anonymous remote client submitted a job");
    assert!(
        err.contains("403") || err.contains("may not"),
        "{err}\n{}",
        context(&ro)
    );
}

#[test]
fn browsers_cannot_post_forms_cross_origin_or_through_rebinding() {
    let dir = tempfile::tempdir().unwrap();
    let n = NodeProcess::start_hybrid(&bin(), &dir.path().join("node"), &[]).unwrap();
    let rt = rt();
    let api = n.api();
    let jobs = format!("{api}/api/v1/orchestrator/jobs");
    let body = serde_json::to_string(&json!({"Job": wasm_job("form")})).unwrap();
    // A form post: text/plain, a valid job inside.
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(&jobs)
            .header("content-type", "text/plain")
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 415);
    let (s, b) = call(
        &rt,
        "PUT",
        &jobs,
        None,
        Some(json!({"Job": wasm_job("x")})),
        &[("origin", "http://evil.example")],
    );
    assert_eq!(s, 403, "{b}");
    assert!(b["Message"].as_str().unwrap().contains("origin"), "{b}");
    // The logs WebSocket upgrade from a foreign page is refused too.
    let (s, _) = call(
        &rt,
        "GET",
        &format!("{jobs}/j-1/logs"),
        None,
        None,
        &[
            ("origin", "http://evil.example"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    );
    assert_eq!(s, 403);
    // DNS rebinding: a page of evil.example that resolves to 127.0.0.1.
    let (s, b) = call(
        &rt,
        "GET",
        &jobs,
        None,
        None,
        &[("host", "rebind.evil.example:1234")],
    );
    assert_eq!(s, 403, "{b}");
    // Nothing was submitted; the API's own origin and a JSON client are fine.
    let (s, b) = call(&rt, "GET", &jobs, None, None, &[("origin", &api)]);
    assert_eq!(s, 200);
    assert_eq!(b["Items"].as_array().unwrap().len(), 0, "{b}");
}

#[test]
fn the_api_serves_https_and_clients_verify_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let run = |args: &[&str]| {
        let o = Command::new(bin()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let c = certs.to_str().unwrap();
    run(&["cert", "ca", "--out-dir", c]);
    run(&[
        "cert",
        "issue",
        "--ca-dir",
        c,
        "--node-id",
        "localhost",
        "--role",
        "orchestrator",
        "--out-dir",
        c,
    ]);
    let crt = certs.join("localhost.crt");
    let key = certs.join("localhost.key");
    let data = dir.path().join("node");
    let port = caravel_chaos_tests::free_port().unwrap();
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--orchestrator",
            "--compute",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args(["--api-host", "127.0.0.1", "--api-port", &port.to_string()])
        .args(["-c", &format!("API.TLS.CertFile={}", crt.display())])
        .args(["-c", &format!("API.TLS.KeyFile={}", key.display())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let host = format!("https://localhost:{port}");
    let cli = |extra: &[&str]| {
        let mut args = vec!["--api-host", host.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["agent", "version"]);
        Command::new(bin()).args(&args).output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let ca = certs.join("ca.crt");
    loop {
        let o = cli(&["--cacert", ca.to_str().unwrap()]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HTTPS never answered: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = cli(&[]);
    assert!(
        !o.status.success(),
        "a client trusted a certificate of an unknown CA"
    );
    assert!(cli(&["--insecure"]).status.success());
    // Plain HTTP to the TLS port gets nothing.
    let rt = rt();
    let plain = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/v1/agent/alive"))
            .send()
            .await
    });
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let o = Command::new(bin())
        .args([
            "--api-host",
            &host,
            "--cacert",
            ca.to_str().unwrap(),
            "job",
            "list",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(&ca).unwrap();
        let c = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        c.get(format!("{host}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("caravel_tls_cert_expiry_timestamp_seconds{cert=\"api\"}"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn agent_config_and_config_list_never_show_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = users_config(dir.path());
    let n = NodeProcess::start_hybrid_as(
        &bin(),
        &dir.path().join("node"),
        &["-c", cfg.to_str().unwrap()],
        Some(ADMIN),
    )
    .unwrap();
    let rt = rt();
    let (s, b) = call(
        &rt,
        "GET",
        &format!("{}/api/v1/agent/config", n.api()),
        Some(&bearer(READER)),
        None,
        &[],
    );
    assert_eq!(s, 200);
    let text = b.to_string();
    for secret in [ADMIN, STAR, READER, JOBS, NODES, "ci-password-123"] {
        assert!(
            !text.contains(secret),
            "agent config shows a secret: {text}"
        );
    }
    assert!(text.contains("<redacted>"), "{text}");
    let o = Command::new(bin())
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "config",
            "list",
            "--output",
            "yaml",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        !listed.contains(ADMIN) && listed.contains("<redacted>"),
        "{listed}"
    );
    assert!(!n.log_text().contains(ADMIN), "the log shows a key");
}

#[test]
fn env_values_read_only_the_host_variables_the_node_allows() {
    let dir = tempfile::tempdir().unwrap();
    let n = NodeProcess::start_hybrid(
        &bin(),
        &dir.path().join("node"),
        &["-c", "Compute.Env.AllowList=HOME,CARAVEL_TEST_*"],
    )
    .unwrap();
    let module = test_module("echo");
    let home = std::env::var("HOME").unwrap();
    let (ok, out, err) = crate::run(
        &n,
        &[
            "wasm",
            "run",
            module.to_str().unwrap(),
            "-e",
            "GREETING=env:HOME",
            "--id-only",
        ],
        None,
    );
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    let d = crate::describe(&n, &id);
    assert_eq!(d["Job"]["State"]["StateType"], "Completed", "{d}");
    let (ok, logs, _) = crate::run(&n, &["job", "logs", &id], None);
    assert!(ok);
    assert!(logs.contains(&format!("env GREETING={home}")), "{logs}");
    // The spec keeps the reference, never the value.
    let spec = serde_json::to_string(&d["Job"]["Tasks"]).unwrap();
    assert!(spec.contains("env:HOME"), "{spec}");
    let (_, out, _) = crate::run(
        &n,
        &[
            "wasm",
            "run",
            module.to_str().unwrap(),
            "-e",
            "GREETING=env:PATH",
            "--id-only",
        ],
        None,
    );
    let id = out.trim().to_string();
    let d = crate::describe(&n, &id);
    assert_eq!(d["Job"]["State"]["StateType"], "Failed", "{d}");
    let why = d.to_string();
    assert!(
        why.contains("Compute.Env.AllowList") && why.contains("PATH"),
        "{why}"
    );
}

/// A group of one orchestrator (no compute of its own) that signs join requests, with auth on.
fn joining_group(dir: &Path) -> Group {
    let ca_key = dir.join("certs").join("ca.key");
    Group::start(
        &bin(),
        dir,
        1,
        GroupOptions {
            auth: true,
            extra: vec!["-c".into(), format!("TLS.CAKey={}", ca_key.display())],
            ..Default::default()
        },
    )
    .expect("group")
}

/// `serve --compute` joining with `token` as `id`: (exit status if it ended within `wait`, log).
fn join_node(
    g: &Group,
    dir: &Path,
    id: &str,
    token: &str,
    wait: Duration,
) -> (
    Option<std::process::ExitStatus>,
    std::process::Child,
    std::path::PathBuf,
) {
    let data = dir.join(id);
    std::fs::create_dir_all(&data).unwrap();
    let log = data.join("node.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--compute",
            "--node-id",
            id,
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .args([
            "--orchestrators",
            &format!("127.0.0.1:{}", g.members[0].compute_port),
        ])
        .args(["--join-token", token])
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + wait;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, child, log)
}

fn node_state(g: &Group, id: &str) -> Option<Value> {
    let (ok, out, _) = g.cli(0, &["node", "list", "--output", "json"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    v["Nodes"]
        .as_array()?
        .iter()
        .find(|n| n["Info"]["NodeID"] == id)
        .cloned()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_join_token_works_once_and_reused_expired_tampered_or_foreign_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = joining_group(dir.path());
    let (ok, out, err) = g.cli(
        0,
        &[
            "node", "token", "create", "--ttl", "1h", "--labels", "zone=a",
        ],
    );
    assert!(ok, "{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("cvj1."), "{token}");
    assert!(err.contains("--join-token"), "it says how to use it: {err}");
    // The node joins, stores its certificate, connects and runs a job.
    let (status, mut edge, log) =
        join_node(&g, dir.path(), "edge-j", &token, Duration::from_secs(3));
    assert!(
        status.is_none(),
        "the joining node exited: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    wait_until("edge-j CONNECTED", Duration::from_secs(60), || {
        node_state(&g, "edge-j").is_some_and(|n| n["ConnectionState"]["Status"] == "CONNECTED")
    });
    let n = node_state(&g, "edge-j").unwrap();
    assert_eq!(n["Info"]["Labels"]["zone"], "a", "the token's labels: {n}");
    assert!(dir.path().join("edge-j/tls/edge-j.crt").is_file());
    let module = test_module("echo");
    let (ok, out, err) = g.cli(0, &["wasm", "run", module.to_str().unwrap(), "--id-only"]);
    assert!(ok, "{err}");
    let (ok, d, _) = g.cli(0, &["job", "describe", out.trim(), "--output", "json"]);
    assert!(ok);
    let d: Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["Job"]["State"]["StateType"], "Completed", "{d}");
    assert_eq!(d["Executions"]["Items"][0]["NodeID"], "edge-j");

    // The same token again: refused, and the node says why.
    let (status, _c, log) = join_node(&g, dir.path(), "edge-k", &token, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a reused token was accepted: {text}"
    );
    assert!(text.contains("already used"), "{text}");
    // Tampered secret.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[2] = parts[2].chars().rev().collect();
    let (status, _c, log) = join_node(
        &g,
        dir.path(),
        "edge-t",
        &parts.join("."),
        Duration::from_secs(30),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()) && text.contains("does not match"),
        "{text}"
    );
    // Expired.
    let (ok, out, _) = g.cli(0, &["node", "token", "create", "--ttl", "1s"]);
    assert!(ok);
    std::thread::sleep(Duration::from_secs(2));
    let (status, _c, log) = join_node(
        &g,
        dir.path(),
        "edge-x",
        out.trim(),
        Duration::from_secs(30),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()) && text.contains("expired"),
        "{text}"
    );
    // Bound to another id.
    let (ok, out, _) = g.cli(0, &["node", "token", "create", "--node-id", "edge-z"]);
    assert!(ok);
    let (status, _c, log) = join_node(
        &g,
        dir.path(),
        "edge-y",
        out.trim(),
        Duration::from_secs(30),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()) && text.contains("is for node edge-z"),
        "{text}"
    );
    // A token of another cluster: the node does not trust this orchestrator (its CA is not pinned).
    let foreign = format!("cvj1.{}.{}.{}", parts[1], parts[2], "f".repeat(64));
    let (status, _c, log) = join_node(&g, dir.path(), "edge-f", &foreign, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "{text}");
    assert!(
        text.contains("cannot reach an orchestrator to join"),
        "{text}"
    );
    // Malformed.
    let (status, _c, log) = join_node(
        &g,
        dir.path(),
        "edge-m",
        "not-a-token",
        Duration::from_secs(30),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()) && text.contains("not a Caravel join token"),
        "{text}"
    );
    // Tokens are listed without secrets; attempts are counted.
    let (ok, out, _) = g.cli(0, &["node", "token", "list", "--output", "json"]);
    assert!(ok);
    assert!(!out.contains(&parts[2]), "a listing shows a secret: {out}");
    assert!(out.contains("\"used\"") && out.contains("edge-j"), "{out}");
    let rt = rt();
    let m = rt.block_on(async {
        g.http_client()
            .get(format!("{}/metrics", g.members[0].api()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        m.contains("caravel_join_attempts_total{outcome=\"accepted\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("caravel_join_attempts_total{outcome=\"refused\"}"),
        "{m}"
    );
    let _ = edge.kill();
    let _ = edge.wait();
}

#[test]
fn a_rejected_then_deleted_node_loses_its_session_cannot_reconnect_and_its_jobs_move() {
    let dir = tempfile::tempdir().unwrap();
    let g = Group::start(
        &bin(),
        dir.path(),
        1,
        GroupOptions {
            auth: true,
            ..Default::default()
        },
    )
    .expect("group");
    let mut a = g.start_compute("edge-a").unwrap();
    wait_until("edge-a CONNECTED", Duration::from_secs(60), || {
        node_state(&g, "edge-a").is_some_and(|n| n["ConnectionState"]["Status"] == "CONNECTED")
    });
    let module = test_module("sleep");
    let (ok, out, err) = g.cli(
        0,
        &[
            "wasm",
            "run",
            module.to_str().unwrap(),
            "--id-only",
            "--wait=false",
            "--",
            "30",
        ],
    );
    assert!(ok, "{err}");
    let job = out.trim().to_string();
    let executions = |g: &Group| -> Vec<Value> {
        let (_, d, _) = g.cli(0, &["job", "describe", &job, "--output", "json"]);
        serde_json::from_str::<Value>(&d)
            .map(|v| {
                v["Executions"]["Items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let describe = |g: &Group| g.cli(0, &["job", "describe", &job, "--output", "json"]).1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !executions(&g).iter().any(|e| {
        e["NodeID"] == "edge-a" && e["ComputeState"]["StateType"] == 6
    } /* Running */)
    {
        assert!(
            Instant::now() < deadline,
            "the job never ran on edge-a: {}\nedge-a log: {}",
            describe(&g),
            std::fs::read_to_string(dir.path().join("edge-a/node.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut b = g.start_compute("edge-b").unwrap();
    wait_until("edge-b CONNECTED", Duration::from_secs(60), || {
        node_state(&g, "edge-b").is_some_and(|n| n["ConnectionState"]["Status"] == "CONNECTED")
    });
    let (ok, out, err) = g.cli(0, &["node", "reject", "edge-a", "-m", "key leaked"]);
    assert!(ok && out.contains("Ok"), "{err}");
    let a_log = || std::fs::read_to_string(dir.path().join("edge-a/node.log")).unwrap_or_default();
    wait_until(
        "edge-a's session closed with the reason",
        Duration::from_secs(30),
        || a_log().contains("key leaked"),
    );
    let n = node_state(&g, "edge-a").unwrap();
    assert_eq!(n["Membership"], "REJECTED", "{n}");
    // Its execution is replaced on edge-b at once (no grace period for a rejected node).
    wait_until("a replacement on edge-b", Duration::from_secs(60), || {
        executions(&g).iter().any(|e| e["NodeID"] == "edge-b")
    });
    let execs = executions(&g);
    let on_a = execs.iter().find(|e| e["NodeID"] == "edge-a").unwrap();
    assert!(
        on_a["ComputeState"]["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected"),
        "{on_a}"
    );
    // Every later handshake is refused, and the node logs why.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a_log().contains("certificate is revoked") {
        assert!(
            Instant::now() < deadline,
            "edge-a was not told why it is refused:\n{}",
            a_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node_state(&g, "edge-a").unwrap()["ConnectionState"]["Status"] != "CONNECTED");
    // Deleted: the record goes, its certificate stays refused.
    let (ok, _, err) = g.cli(0, &["node", "delete", "edge-a"]);
    assert!(ok, "{err}");
    assert!(node_state(&g, "edge-a").is_none());
    let (ok, out, _) = g.cli(0, &["cert", "revoke", "--fingerprint", &"0".repeat(64)]);
    assert!(ok, "{out}");
    let rt = rt();
    let revs: Value = rt.block_on(async {
        g.http_client()
            .get(format!(
                "{}/api/v1/orchestrator/revocations",
                g.members[0].api()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let items = revs["Items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|d| d["NodeID"] == "edge-a" && d["Reason"].as_str().unwrap().contains("deleted")),
        "{revs}"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        node_state(&g, "edge-a").is_none(),
        "a deleted node came back with its old certificate"
    );
    wait_until(
        "the job completed on edge-b",
        Duration::from_secs(90),
        || {
            let (_, d, _) = g.cli(0, &["job", "describe", &job, "--output", "json"]);
            serde_json::from_str::<Value>(&d)
                .is_ok_and(|v| v["Job"]["State"]["StateType"] == "Completed")
        },
    );
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
}

/// A server that answers before reading the body and closes at once (Caravel's own API reads a
/// refused upload first; a proxy or another server may not): the client must say what happened,
/// not die of SIGPIPE while still uploading. The server here keeps its receive window tiny, so the
/// upload is surely still running when the connection is reset.
#[test]
fn a_client_whose_upload_is_cut_off_says_so_instead_of_dying() {
    use std::io::{Read, Write};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(8).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let port = listener.local_addr().unwrap().port();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server_done = done.clone();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && !server_done.load(std::sync::atomic::Ordering::Relaxed) {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => break,
            };
            s.set_nonblocking(false).unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let body = r#"{"Status":403,"Message":"user \"nobody\" may not write:job","Code":"Forbidden","Component":"API"}"#;
            let _ = write!(
                s,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            // FIN, then close at once with the upload unread: the kernel resets the connection
            // while the client is still writing (a socket in CLOSE_WAIT that is reset answers the
            // next write with EPIPE, which is SIGPIPE for a `writev`).
            let _ = s.shutdown(std::net::Shutdown::Write);
            drop(s);
            let put = line.starts_with("PUT");
            seen.push(line);
            if put {
                break;
            }
        }
        seen
    });
    let dir = tempfile::tempdir().unwrap();
    // 5 MiB of module (under the CLI's 8 MiB spec limit once base64-encoded): far more than a
    // tiny receive window and the sender's buffer hold.
    let module = dir.path().join("big.wasm");
    std::fs::write(&module, vec![7u8; 5 << 20]).unwrap();
    let o = Command::new(bin())
        .args(["--api-host", "127.0.0.1", "--api-port", &port.to_string()])
        .args(["wasm", "run", module.to_str().unwrap(), "--wait=false"])
        .env_remove("CARAVEL_API_HOST")
        .env_remove("CARAVEL_API_PORT")
        .env_remove("CARAVEL_API_KEY")
        .output()
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = server.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        seen.iter().any(|l| l.starts_with("PUT")),
        "the upload was never sent: {seen:?} {err}"
    );
    assert!(
        o.status.code().is_some(),
        "the client was killed by a signal ({:?}) without a word",
        o.status
    );
    assert!(!o.status.success());
    // The answer when it was read in time, else the failure to send.
    assert!(
        err.contains("may not write:job") || err.contains("error sending request"),
        "{err}"
    );
}
