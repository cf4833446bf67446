//! `/metrics` in both exposition formats, checked by Prometheus's own linter (`promtool check
//! metrics`, from Debian's `prometheus` package; `scripts/test.sh` installs it). The test fails, not
//! skips, where promtool is missing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caravel_chaos_tests::cluster::{Group, GroupOptions};

use crate::{bin, node};

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `promtool check metrics` on a text-format body: its exit status and what it printed.
fn promtool_check(body: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian's `prometheus` package (scripts/test.sh does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// GET `url` with an optional Accept header: (content type, body).
fn scrape(url: &str, accept: Option<&str>) -> (String, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.expect("scrape");
        assert_eq!(r.status().as_u16(), 200);
        let ty = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (ty, r.text().await.unwrap())
    })
}

/// Both formats of one endpoint: text for curl and promtool, OpenMetrics for Prometheus, each
/// body in the format its content type names, and the text one lint-clean.
fn check_endpoint(url: &str, must_have_counter: &str) {
    let (ty, text) = scrape(url, None);
    assert!(ty.starts_with("text/plain; version=0.0.4"), "{ty}");
    assert!(
        !text.contains("# EOF"),
        "a text-format body has no EOF line"
    );
    assert!(
        text.contains(&format!("# TYPE {must_have_counter} counter")),
        "counter families are named by their samples in the text format:\n{text}"
    );
    let (ok, said) = promtool_check(&text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n---\n{text}"
    );

    let (ty, om) = scrape(url, Some(PROMETHEUS_ACCEPT));
    assert!(
        ty.starts_with("application/openmetrics-text; version=1.0.0"),
        "{ty}"
    );
    assert!(
        om.ends_with("# EOF\n"),
        "an OpenMetrics body ends with # EOF"
    );
    let family = must_have_counter.trim_end_matches("_total");
    assert!(om.contains(&format!("# TYPE {family} counter")), "{om}");
}

#[test]
fn a_hybrid_nodes_metrics_pass_promtool_in_the_format_they_are_served() {
    let (n, _d) = node();
    // Requests, so that the API's counters and histograms have samples.
    for args in [&["agent", "alive"][..], &["job", "list"][..]] {
        let (ok, _, err) = crate::run(&n, args, None);
        assert!(ok, "{args:?}: {err}");
    }
    let url = format!("{}/metrics", n.api());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scrape(&url, None).1.contains("caravel_api_requests_total{") {
        assert!(Instant::now() < deadline, "no API request was ever counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    check_endpoint(&url, "caravel_api_requests_total");
}

#[test]
fn a_compute_only_nodes_metrics_pass_promtool_in_the_format_they_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = Group::start(&bin(), dir.path(), 1, GroupOptions::default()).expect("group");
    g.wait_leader(Duration::from_secs(60)).expect("leader");
    let edge = g
        .start_compute_proxied("edge-1", &[])
        .expect("compute node");
    let url = format!("http://127.0.0.1:{}/metrics", edge.metrics_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = std::panic::catch_unwind(|| scrape(&url, None).1)
            .is_ok_and(|t| t.contains("caravel_session_connected 1"));
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "edge-1 never connected");
        std::thread::sleep(Duration::from_millis(200));
    }
    check_endpoint(&url, "caravel_session_handshakes_total");
    g.shutdown();
}
