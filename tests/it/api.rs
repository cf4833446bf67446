//! The REST API: Bacalhau's paths, bodies and error shapes.

use serde_json::{Value, json};

use crate::node;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn wasm_job(name: &str) -> Value {
    json!({"Name": name, "Type": "batch", "Tasks": [{"Name": "main",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/m.wasm"}},
        "InputSources": [{"Target": "/m.wasm", "Source": {"Type": "inline", "Params": {"URL": "data:application/wasm;base64,AGFzbQEAAAA="}}}]}]})
}

async fn get_json(c: &reqwest::Client, url: String) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

async fn put(c: &reqwest::Client, base: &str, job: Value) -> (u16, Value) {
    let r = c
        .put(format!("{base}/api/v1/orchestrator/jobs"))
        .json(&json!({"Job": job}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_get_400_with_the_field_and_a_hint() {
    let (n, _d) = tokio::task::spawn_blocking(node).await.unwrap();
    let c = client();
    let mut job = wasm_job("bad");
    job["Tasks"][0]["Resources"] = json!({"Memory": "lots"});
    let (status, body) = put(&c, &n.api(), job).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["Code"], "ValidationError");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("Tasks[0].Resources.Memory"),
        "{body}"
    );
    assert!(!body["Hint"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(
        body["Details"]["Errors"][0]["Field"],
        "Tasks[0].Resources.Memory"
    );

    let r = c
        .get(format!("{}/api/v1/orchestrator/jobs?limit=lots", n.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["Code"], "BadRequest",
        "bad query parameters answer in the API's error shape: {body}"
    );
    assert!(
        body["Message"].as_str().unwrap().contains("limit"),
        "{body}"
    );

    let r = c
        .put(format!("{}/api/v1/orchestrator/jobs", n.api()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["Message"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_and_routes_get_404_in_bacalhaus_error_shape() {
    let (n, _d) = tokio::task::spawn_blocking(node).await.unwrap();
    let c = client();
    for path in [
        "/api/v1/orchestrator/jobs/j-nope",
        "/api/v1/orchestrator/jobs/j-nope/executions",
        "/api/v1/orchestrator/nodes/n-nope",
        "/api/v1/nothing-here",
    ] {
        let r = c.get(format!("{}{path}", n.api())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["Code"], "NotFound", "{path}: {body}");
        assert_eq!(body["Status"], 404);
    }
    let r = c
        .delete(format!("{}/api/v1/orchestrator/jobs/j-nope", n.api()))
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_25_jobs_pages_with_next_token_and_ids_resolve_by_prefix_and_name() {
    let (n, _d) = tokio::task::spawn_blocking(node).await.unwrap();
    let c = client();
    let mut ids = Vec::new();
    for i in 0..25 {
        let (status, body) = put(&c, &n.api(), wasm_job(&format!("page-{i:02}"))).await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["JobID"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let mut url = format!(
            "{}/api/v1/orchestrator/jobs?limit=10&order_by=created_at",
            n.api()
        );
        if !token.is_empty() {
            url.push_str(&format!("&next_token={token}"));
        }
        let body: Value = get_json(&c, url).await;
        pages += 1;
        seen.extend(
            body["Items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["ID"].as_str().unwrap().to_string()),
        );
        token = body["NextToken"].as_str().unwrap_or_default().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every job once, in creation order");

    let short = &ids[3][..10];
    let body: Value = get_json(&c, format!("{}/api/v1/orchestrator/jobs/{short}", n.api())).await;
    assert_eq!(body["Job"]["ID"], ids[3].as_str());
    let body: Value = get_json(&c, format!("{}/api/v1/orchestrator/jobs/page-07", n.api())).await;
    assert_eq!(body["Job"]["ID"], ids[7].as_str());
    let r = c
        .get(format!("{}/api/v1/orchestrator/jobs/j-", n.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "an ambiguous prefix is a client error"
    );

    // Resubmitting an unchanged spec is refused with a hint; --force makes a new version.
    let (status, body) = put(&c, &n.api(), wasm_job("page-07")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("no changes detected"),
        "{body}"
    );
    let r = c
        .put(format!("{}/api/v1/orchestrator/jobs", n.api()))
        .json(&json!({"Job": wasm_job("page-07"), "Force": true}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["JobID"], ids[7].as_str());
    let job: Value = get_json(&c, format!("{}/api/v1/orchestrator/jobs/page-07", n.api())).await;
    assert_eq!(job["Job"]["Version"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_endpoints_and_metrics_answer() {
    let (n, _d) = tokio::task::spawn_blocking(node).await.unwrap();
    let c = client();
    let body: Value = get_json(&c, format!("{}/api/v1/agent/alive", n.api())).await;
    assert_eq!(body["Status"], "OK");
    let body: Value = get_json(&c, format!("{}/api/v1/agent/version", n.api())).await;
    assert!(body["GitVersion"].as_str().unwrap().starts_with('v'));
    let body: Value = get_json(&c, format!("{}/api/v1/agent/config", n.api())).await;
    assert_eq!(body["config"]["API"]["Port"], n.api_port);
    let nodes: Value = get_json(&c, format!("{}/api/v1/orchestrator/nodes", n.api())).await;
    assert_eq!(nodes["Nodes"][0]["ConnectionState"]["Status"], "CONNECTED");
    put(&c, &n.api(), wasm_job("metrics")).await;
    // The scheduler processes the evaluation shortly after the submission is acknowledged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = c
            .get(format!("{}/metrics", n.api()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("caravel_evaluations_processed_total")
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for m in [
        "caravel_api_requests_total",
        "caravel_jobs",
        "caravel_raft_applied_index",
        "caravel_raft_commit_index",
        "caravel_raft_term",
        "caravel_evaluations_processed_total",
        "caravel_scheduling_latency_seconds",
        "caravel_executions",
    ] {
        assert!(text.contains(m), "metric {m} missing:\n{text}");
    }
}
