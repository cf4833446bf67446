//! The abuse suite: one test per way a job, a client or a peer could knock a node over, each
//! showing the attack fails with a specific error and the node goes on serving others. Real
//! processes, real QUIC, real HTTP throughout.
//!
//! Elsewhere, closer to the part under attack: host networking refused by policy
//! (`tests/it/admission.rs`), the fork bomb and the container's confinement
//! (`compute/tests/it/docker.rs`), metadata/loopback URLs and redirects
//! (`compute/tests/it/inputs.rs`), the gzip bomb (`compute/tests/it/inputs.rs`), S3 credentials kept
//! from a job's endpoint (`compute/tests/it/s3.rs`), the tail of a 1 GiB log
//! (`compute/src/node.rs`), oversized frames on compute sessions (`net/tests/session.rs`) and on
//! Raft RPCs (`net/tests/rpc.rs`), all WASM memories counted together
//! (`compute/tests/it/executor.rs`), corrupt RocksDB WAL and outbox records (`raft-store`,
//! `compute/src/outbox.rs`).

use std::time::{Duration, Instant};

use caravel_chaos_tests::NodeProcess;
use caravel_chaos_tests::cluster::{Group, GroupOptions};
use serde_json::{Value, json};

use crate::bin;

pub(crate) fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn hybrid(extra: &[&str]) -> (NodeProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let n = NodeProcess::start_hybrid(&bin(), &dir.path().join("node"), extra)
        .expect("start hybrid node");
    (n, dir)
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pseudo-random, incompressible base64 of `n` bytes (xorshift; no dependency).
fn noise_base64(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// A wasm job (the empty module) with an extra inline input of `extra_bytes` random bytes.
fn job_with_payload(name: &str, extra_bytes: usize, seed: u64) -> Value {
    let mut inputs = vec![json!({"Target": "/m.wasm", "Source": {"Type": "inline",
        "Params": {"URL": "data:application/wasm;base64,AGFzbQEAAAA="}}})];
    if extra_bytes > 0 {
        inputs.push(
            json!({"Target": "/inputs/blob", "Source": {"Type": "inline",
            "Params": {"URL": format!("data:;base64,{}", noise_base64(extra_bytes, seed))}}}),
        );
    }
    json!({"Name": name, "Type": "batch", "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
        "InputSources": inputs}]})
}

pub(crate) async fn put_job(c: &reqwest::Client, base: &str, job: &Value) -> (u16, Value) {
    let r = c
        .put(format!("{base}/api/v1/orchestrator/jobs"))
        .json(&json!({ "Job": job }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The sum of the samples of `metric` whose labels contain `labels` (e.g. `kind="rate"`).
pub(crate) fn metric_sum(text: &str, metric: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Kibibytes of a process's resident set now (`VmRSS`) or at its peak (`VmHWM`).
fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A 6 MiB job is refused at submit with a 400 naming the limit (it once became a frame the
/// node refused, closing its session for ever); the node then takes a normal job.
#[test]
fn a_job_over_the_size_limit_is_refused_at_submit_naming_it() {
    let (n, _d) = hybrid(&[]);
    let rt = rt();
    let c = reqwest::Client::new();
    let (status, body) = rt.block_on(put_job(&c, &n.api(), &job_with_payload("big", 6 << 20, 1)));
    assert_eq!(status, 400, "{body}");
    let msg = body["Message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("more than the limit of 3145728 bytes (3 MiB)"),
        "{body}"
    );
    assert!(
        body["Hint"]
            .as_str()
            .unwrap_or_default()
            .contains("S3 or URL input"),
        "{body}"
    );
    // The diff endpoint reads the same submission, with the same limit.
    let (status, body) = rt.block_on(async {
        let r = c
            .put(format!("{}/api/v1/orchestrator/jobs/diff", n.api()))
            .json(&json!({ "Job": job_with_payload("big", 6 << 20, 1) }))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or_default(),
        )
    });
    assert_eq!(status, 400, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("more than the limit of 3145728 bytes (3 MiB)"),
        "{body}"
    );
    let (status, body) = rt.block_on(put_job(&c, &n.api(), &job_with_payload("small", 0, 1)));
    assert_eq!(status, 200, "{body}");
}

/// Durations far past any sensible value are a 400 naming the field, never an overflow in the
/// leader (a debug build once panicked its broker task on `QueueTimeout: 9e18`).
#[test]
fn huge_timeouts_get_a_400_not_an_overflow() {
    let (n, _d) = hybrid(&[]);
    let rt = rt();
    let c = reqwest::Client::new();
    for field in ["QueueTimeout", "ExecutionTimeout", "TotalTimeout"] {
        let mut job = job_with_payload("t", 0, 1);
        job["Tasks"][0]["Timeouts"] = json!({ field: 9_000_000_000_000_000_000i64 });
        let (status, body) = rt.block_on(put_job(&c, &n.api(), &job));
        assert_eq!(status, 400, "{field}: {body}");
        let msg = body["Message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(field) && msg.contains("a year"),
            "{field}: {body}"
        );
    }
    let (status, _) = rt.block_on(put_job(&c, &n.api(), &job_with_payload("ok", 0, 1)));
    assert_eq!(status, 200, "the node still takes jobs");
    let live = rt.block_on(async {
        c.get(format!("{}/livez", n.api()))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(live, 200, "the node is still running:\n{}", n.log_text());
}

/// Methods a client invents share the label `other`: they cannot add series to /metrics.
#[test]
fn invented_http_methods_add_no_metric_series() {
    let (n, _d) = hybrid(&[]);
    let rt = rt();
    let c = reqwest::Client::new();
    let methods: Vec<String> = rt.block_on(async {
        let mut seen = Vec::new();
        for i in 0..40 {
            let m = format!("X{i}{}", uuid_like(i));
            let _ = c
                .request(
                    m.parse().unwrap(),
                    format!("{}/api/v1/orchestrator/jobs", n.api()),
                )
                .send()
                .await
                .unwrap();
            seen.push(m);
        }
        seen
    });
    let text = rt.block_on(async {
        c.get(format!("{}/metrics", n.api()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for m in &methods {
        assert!(!text.contains(m.as_str()), "{m} became a label");
    }
    let labels: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("caravel_api_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    let closed = [
        "GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
    ];
    assert!(labels.iter().all(|m| closed.contains(m)), "{labels:?}");
    assert!(labels.contains("other"), "{labels:?}");
}

fn uuid_like(i: u64) -> String {
    format!("{:08X}", i.wrapping_mul(0x9E37_79B9))
}

/// A client over its rate gets 429 with `Retry-After` and Bacalhau's error body; probes are never
/// limited; the refusals are counted.
#[test]
fn a_client_over_its_rate_limit_gets_429_with_retry_after() {
    let (n, _d) = hybrid(&[
        "-c",
        "API.RateLimit.RequestsPerSecond=2",
        "-c",
        "API.RateLimit.Burst=5",
        "-c",
        "API.RateLimit.ExemptLoopback=false",
    ]);
    let rt = rt();
    let c = reqwest::Client::new();
    let (statuses, refused) = rt.block_on(async {
        let mut statuses = Vec::new();
        let mut refused = None;
        for _ in 0..20 {
            let r = c
                .get(format!("{}/api/v1/agent/version", n.api()))
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
            if r.status() == 429 && refused.is_none() {
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let body: Value = r.json().await.unwrap();
                refused = Some((retry, body));
            }
        }
        (statuses, refused)
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // The start-up checks of the harness may have spent a token or two of the burst.
    assert!(
        (3..=8).contains(&ok),
        "the burst and a little refill pass: {statuses:?}"
    );
    let (retry, body) = refused.expect("some requests are refused");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    assert_eq!(body["Code"], "TooManyRequests", "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("rate limit of 2"),
        "{body}"
    );
    // Liveness probes are never limited.
    rt.block_on(async {
        for _ in 0..20 {
            let r = c.get(format!("{}/livez", n.api())).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    // After a pause the client is served again, and the refusals were counted.
    std::thread::sleep(Duration::from_secs(3));
    let text = rt.block_on(async {
        c.get(format!("{}/metrics", n.api()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metric_sum(&text, "caravel_api_throttled_total", "reason=\"rate\"") >= 1.0,
        "{text}"
    );
}

/// Log WebSockets are capped on the API (`API.MaxLogStreams`: a 429 before the upgrade) and on the
/// compute node (`Compute.MaxLogStreams`: the stream ends with the node's reason); a stream given
/// back makes room.
#[test]
fn log_streams_are_capped_per_api_and_per_node() {
    use futures::StreamExt;
    let module = crate::test_module("sleep");
    for (cfg, at_api) in [
        (
            ["-c", "API.MaxLogStreams=1", "-c", "Compute.MaxLogStreams=0"],
            true,
        ),
        (
            ["-c", "API.MaxLogStreams=0", "-c", "Compute.MaxLogStreams=1"],
            false,
        ),
    ] {
        let (n, _d) = hybrid(&cfg);
        let (ok, out, err) = crate::run(
            &n,
            &[
                "wasm",
                "run",
                module.to_str().unwrap(),
                "--id-only",
                "--wait=false",
                "--",
                "60",
            ],
            None,
        );
        assert!(ok, "{err}");
        let job = out.trim().to_string();
        wait_until("the job runs", Duration::from_secs(60), || {
            crate::describe(&n, &job)["Executions"]["Items"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["ComputeState"]["StateType"] == 6))
        });
        let url = format!(
            "{}/api/v1/orchestrator/jobs/{job}/logs?follow=true",
            n.api().replace("http://", "ws://")
        );
        let rt = rt();
        rt.block_on(async {
            let (mut first, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            // The first stream is being served (its first line arrives).
            let line = tokio::time::timeout(Duration::from_secs(30), first.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert!(line.to_text().unwrap().contains("sleeping"), "{line:?}");
            if at_api {
                match tokio_tungstenite::connect_async(url.as_str()).await {
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        assert_eq!(resp.status().as_u16(), 429);
                        assert!(resp.headers().contains_key("retry-after"));
                        let body =
                            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                                .into_owned();
                        assert!(body.contains("API.MaxLogStreams"), "{body}");
                    }
                    other => panic!("a second log stream was not refused: {other:?}"),
                }
            } else {
                let (mut second, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .unwrap();
                let mut text = String::new();
                while let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_secs(30), second.next()).await
                {
                    text.push_str(m.to_text().unwrap_or_default());
                    if text.contains("error") {
                        break;
                    }
                }
                assert!(text.contains("Compute.MaxLogStreams"), "{text}");
            }
            drop(first);
            // Once the first is gone, a new stream is served again.
            let mut served = false;
            for _ in 0..50 {
                if let Ok((mut again, _)) = tokio_tungstenite::connect_async(url.as_str()).await
                    && let Ok(Some(Ok(m))) =
                        tokio::time::timeout(Duration::from_secs(10), again.next()).await
                    && !m.to_text().unwrap_or_default().contains("error")
                {
                    served = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(served, "a freed slot is not reused");
        });
        let _ = crate::run(&n, &["job", "stop", &job], None);
    }
}

/// Raft under its own peers: while a follower is stopped, six ~2.9 MiB jobs (17 MiB, more than one
/// 16 MiB frame) commit on the other two; resumed, it catches up in batches cut below the frame
/// limit. Then a peer with an orchestrator certificate announces oversized frames on hundreds of
/// streams (it loses each connection at once), and fills as many streams as it may with the largest
/// frames allowed (its bytes wait in bounded windows): the member's peak RSS stays bounded, and jobs
/// and status go on being served.
#[test]
fn large_entries_replicate_and_a_hostile_peer_costs_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(
        &bin(),
        dir.path(),
        3,
        GroupOptions {
            auth: true,
            ..Default::default()
        },
    )
    .unwrap();
    let leader = g.wait_leader(Duration::from_secs(60)).unwrap();
    let follower = (leader + 1) % 3;
    let rt = rt();
    let c = g.http_client();

    // 1. Large entries while a follower is away.
    g.pause(follower);
    let base = g.members[leader].api();
    let ids: Vec<String> = rt.block_on(async {
        let mut ids = Vec::new();
        for i in 0..6 {
            let (status, body) = put_job(
                &c,
                &base,
                &job_with_payload(&format!("large-{i}"), 2_150_000, i + 7),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            ids.push(body["JobID"].as_str().unwrap().to_string());
        }
        ids
    });
    g.resume(follower);
    let deadline = Instant::now() + Duration::from_secs(60);
    let caught_up = |g: &Group| {
        g.status(leader).is_some_and(|s| {
            let m = s["Members"].as_array().cloned().unwrap_or_default();
            let last = |id: &str| {
                m.iter().find(|x| x["ID"] == id).map(|x| {
                    (
                        x["AppliedIndex"].as_u64().unwrap_or(0),
                        x["LastLogIndex"].as_u64().unwrap_or(0),
                    )
                })
            };
            let (_, leader_last) = last(&g.members[leader].id).unwrap_or_default();
            last(&g.members[follower].id)
                .is_some_and(|(applied, _)| applied >= leader_last && leader_last > 0)
        })
    };
    while !caught_up(&g) {
        assert!(
            Instant::now() < deadline,
            "the follower did not catch up: {:?}\nlogs (warnings and errors):\n{}",
            g.status(leader),
            g.members
                .iter()
                .map(|m| format!(
                    "--- {} ---\n{}",
                    m.id,
                    m.log_text()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fbase = g.members[follower].api();
    rt.block_on(async {
        for id in &ids {
            let r = c
                .get(format!("{fbase}/api/v1/orchestrator/jobs/{id}?stale=true"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{id} on the resumed follower");
        }
    });

    // 2. A hostile peer.
    let target = leader;
    let pid = g.members[target].pid().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(pid, "VmRSS");
    let idle_peak = rss_kib(pid, "VmHWM");
    let certs = g.issue_cert_as("orch-evil", "orchestrator").unwrap();
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let identity = caravel_net::tls::Identity::from_pem(
        &read("ca.crt"),
        &read("orch-evil.crt"),
        &read("orch-evil.key"),
    )
    .unwrap();
    let addr = g.members[target].raft_socket();
    let server_name = g.members[target].id.clone();
    let connect = {
        let identity = identity.clone();
        let server_name = server_name.clone();
        move || {
            let identity = identity.clone();
            let server_name = server_name.clone();
            async move {
                let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                ep.set_default_client_config(
                    identity
                        .client_config(
                            caravel_net::rpc::RAFT_ALPN,
                            caravel_net::tls::Role::Orchestrator,
                            caravel_net::tls::NameCheck::Dialled,
                        )
                        .unwrap(),
                );
                let conn = ep.connect(addr, &server_name).unwrap().await;
                (ep, conn)
            }
        }
    };
    let header = |len: u32| {
        let mut h = caravel_net::frame::encode(1, b"").to_vec();
        h[0..4].copy_from_slice(&len.to_be_bytes());
        h
    };
    let mut peak = idle_rss;
    let sample = |peak: &mut u64| *peak = (*peak).max(rss_kib(pid, "VmRSS"));
    // 2a. Announcements of 1 GiB: each connection is closed at its first.
    rt.block_on(async {
        for _ in 0..10 {
            let (_ep, conn) = connect().await;
            let Ok(conn) = conn else { continue };
            for _ in 0..256 {
                let Ok((mut tx, _rx)) = conn.open_bi().await else {
                    break;
                };
                if tx.write_all(&header(1 << 30)).await.is_err() {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        }
    });
    sample(&mut peak);
    let after_oversized = rss_kib(pid, "VmRSS");
    // 2b. Frames of exactly the limit on every stream of as many connections as it may hold, each
    // pushing its 16 MiB as fast as flow control lets it, for 10 s.
    let (conns, served_meanwhile) = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..6 {
            let (ep, conn) = connect().await;
            if let Ok(conn) = conn {
                for _ in 0..256 {
                    let conn = conn.clone();
                    let h = header(caravel_net::frame::DEFAULT_MAX_FRAME as u32);
                    tokio::spawn(async move {
                        let Ok((mut tx, _rx)) = conn.open_bi().await else {
                            return;
                        };
                        if tx.write_all(&h).await.is_err() {
                            return;
                        }
                        let chunk = vec![0u8; 1 << 20];
                        for _ in 0..16 {
                            if tx.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(30), tx.stopped()).await;
                    });
                }
                held.push((ep, conn));
            }
        }
        // Legitimate work meanwhile.
        let mut served = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut i = 0;
        while tokio::time::Instant::now() < until {
            let (status, _) = put_job(
                &c,
                &base,
                &job_with_payload(&format!("meanwhile-{i}"), 0, 1),
            )
            .await;
            if status == 200 {
                served += 1;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let open = held
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .count();
        (open, served)
    });
    for _ in 0..5 {
        sample(&mut peak);
        std::thread::sleep(Duration::from_millis(200));
    }
    let peak_hwm = rss_kib(pid, "VmHWM");
    let status = g
        .status(target)
        .expect("status answers during and after the attack");
    let text = rt.block_on(async {
        c.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    eprintln!(
        "orchestrator {} RSS: idle {} MiB (peak so far {} MiB); after 10 × 256 oversized announcements {} MiB; \
         under 6 × 256 streams of 16 MiB frames: peak {} MiB (VmHWM {} MiB); {conns} attacking connections held, \
         {served_meanwhile} jobs served meanwhile; violations oversized_frame={} too_many_connections={}",
        g.members[target].id,
        idle_rss / 1024,
        idle_peak / 1024,
        after_oversized / 1024,
        peak / 1024,
        peak_hwm / 1024,
        metric_sum(
            &text,
            "caravel_raft_peer_violations_total",
            "kind=\"oversized_frame\""
        ),
        metric_sum(
            &text,
            "caravel_raft_peer_violations_total",
            "kind=\"too_many_connections\""
        ),
    );
    assert!(
        metric_sum(
            &text,
            "caravel_raft_peer_violations_total",
            "kind=\"oversized_frame\""
        ) >= 10.0,
        "{text}"
    );
    assert!(
        conns <= 4,
        "a peer holds at most 4 connections, held {conns}"
    );
    assert!(
        metric_sum(
            &text,
            "caravel_raft_peer_violations_total",
            "kind=\"too_many_connections\""
        ) >= 1.0
    );
    assert!(
        served_meanwhile >= 10,
        "jobs went on being accepted: {served_meanwhile}"
    );
    assert!(
        !status["Leader"].as_str().unwrap_or_default().is_empty(),
        "{status}"
    );
    // Unbounded, 4 connections × 256 streams × 16 MiB would be 16 GiB; the bound is 4 × (32 MiB of
    // payload being read + a 32 MiB QUIC window) plus the allocator's slack.
    let grown_mib = peak_hwm.saturating_sub(idle_peak) / 1024;
    assert!(
        grown_mib < 512,
        "the attack grew the peak RSS by {grown_mib} MiB"
    );
    g.shutdown();
}

/// A compute session client for node `name`, with a certificate the group issued to it, to the
/// compute port of member `member`.
pub(crate) fn session_client(
    g: &Group,
    member: usize,
    name: &str,
) -> caravel_net::session::SessionClient {
    let certs = g.issue_cert(name).unwrap();
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let identity = caravel_net::session::ClientIdentity::from_pem(
        &read("ca.crt"),
        &read(&format!("{name}.crt")),
        &read(&format!("{name}.key")),
    )
    .unwrap();
    caravel_net::session::SessionClient::new(
        vec![format!("127.0.0.1:{}", g.members[member].compute_port)],
        &identity,
        caravel_net::session::SessionOptions::default(),
    )
    .unwrap()
}

/// A compute peer that floods the orchestrator with reports about executions that do not exist
/// gets every one acknowledged (so it cannot replay them for ever) and counted, and the Raft log
/// does not grow with them.
#[test]
fn a_flood_of_reports_for_unknown_executions_writes_nothing() {
    use caravel_model::execution::ExecutionUpdate;
    use caravel_model::wire::{ToCompute, ToOrchestrator};
    const FLOOD: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let mut g = Group::start(
        &bin(),
        dir.path(),
        3,
        GroupOptions {
            auth: true,
            ..Default::default()
        },
    )
    .unwrap();
    let leader = g.wait_leader(Duration::from_secs(60)).unwrap();
    let last_index = |g: &Group| -> u64 {
        g.status(leader)
            .and_then(|s| {
                s["Members"]
                    .as_array()?
                    .iter()
                    .map(|m| m["LastLogIndex"].as_u64().unwrap_or(0))
                    .max()
            })
            .unwrap_or(0)
    };
    let rt = rt();
    let stop = tokio_util::sync::CancellationToken::new();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::channel::<u64>(16);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let client = session_client(&g, leader, "flooder");
    let s2 = stop.clone();
    rt.spawn(async move {
        let _ = client
            .run(s2, move |mut end, _connected| {
                let acked_tx = acked_tx.clone();
                let mut go_rx = go_rx.clone();
                Box::pin(async move {
                    let info = caravel_model::NodeInfo {
                        node_id: "flooder".into(),
                        node_type: "Compute".into(),
                        ..Default::default()
                    };
                    let _ = end
                        .outbox
                        .send(ToOrchestrator::Hello {
                            info: Box::new(info),
                            last_seq: 0,
                        })
                        .await;
                    let _ = go_rx.wait_for(|go| *go).await;
                    let outbox = end.outbox.clone();
                    tokio::spawn(async move {
                        for seq in 1..=FLOOD {
                            let update = ExecutionUpdate {
                                execution_id: format!("e-{:032x}", seq),
                                state: caravel_model::ExecutionStateType::Running,
                                message: "x".repeat(512),
                                run_output: None,
                                published_result: None,
                                topic: "Running Execution".into(),
                                time: 1,
                            };
                            if outbox
                                .send(ToOrchestrator::Report { seq, update })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    while let Some(m) = end.inbox.recv().await {
                        if let ToCompute::Ack { seq } = m {
                            let _ = acked_tx.send(seq).await;
                        }
                    }
                })
            })
            .await;
    });
    wait_until("the flooder registered", Duration::from_secs(60), || {
        let (ok, out, _) = g.cli(leader, &["node", "list", "--output", "json"]);
        ok && out.contains("flooder")
    });
    std::thread::sleep(Duration::from_secs(2));
    let before = last_index(&g);
    let started = Instant::now();
    go_tx.send(true).unwrap();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match tokio::time::timeout_at(deadline, acked_rx.recv()).await {
                Ok(Some(seq)) if seq >= FLOOD => break,
                Ok(Some(_)) => {}
                other => panic!("the flood was not acknowledged: {other:?}"),
            }
        }
    });
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = last_index(&g);
    let text = rt.block_on(async {
        g.http_client()
            .get(format!("{}/metrics", g.members[leader].api()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let dropped = metric_sum(
        &text,
        "caravel_compute_reports_total",
        "outcome=\"unknown_execution\"",
    );
    eprintln!(
        "{FLOOD} reports about unknown executions acknowledged in {took:?}; Raft log {before} -> {after}; counted as unknown_execution: {dropped}"
    );
    assert_eq!(dropped as u64, FLOOD, "{text}");
    assert!(
        after <= before + 3,
        "the Raft log grew from {before} to {after}"
    );
    // The cluster still takes jobs.
    let (status, _) = rt.block_on(put_job(
        &g.http_client(),
        &g.members[leader].api(),
        &job_with_payload("after", 0, 1),
    ));
    assert_eq!(status, 200);
    stop.cancel();
    g.shutdown();
}
