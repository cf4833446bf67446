//! The node's external admission probes (Bacalhau's `JobAdmissionControl.ProbeHTTP` and
//! `ProbeExec`): after the policy's own rules (`caravel_model::admission`), an operator's program
//! may decide. A probe that cannot be reached or does not answer in time refuses (fail closed).
//!
//! - HTTP: `POST URL` with `{"NodeID", "Job"}`; a 2xx answer `{"ShouldBid": true}` runs the job,
//!   `{"ShouldBid": false, "Reason": "…"}` refuses it (Bacalhau's lower-case names are read too).
//! - Exec: `sh -c COMMAND` with the same JSON on stdin; exit 0 runs the job, anything else refuses
//!   it with what the command printed.

use std::time::Duration;

use caravel_model::spec::Job;

/// How long a probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of a probe's answer kept as the reason.
const MAX_REASON: usize = 500;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    pub http: String,
    pub exec: String,
}

fn short(s: &str) -> String {
    let t = s.trim();
    if t.len() <= MAX_REASON {
        return t.to_string();
    }
    let mut end = MAX_REASON;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

/// Runs the configured probes; `Err` is the reason the job is refused.
pub async fn probe(p: &Probes, node_id: &str, job: &Job) -> Result<(), String> {
    if p.http.is_empty() && p.exec.is_empty() {
        return Ok(());
    }
    let body = serde_json::json!({"NodeID": node_id, "Job": job});
    if !p.http.is_empty() {
        http(&p.http, &body).await?;
    }
    if !p.exec.is_empty() {
        exec(&p.exec, &body).await?;
    }
    Ok(())
}

async fn http(url: &str, body: &serde_json::Value) -> Result<(), String> {
    crate::install_crypto_provider();
    let fail = |why: String| format!("the admission probe {url} {why}");
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fail(format!("cannot be called: {e}")))?;
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| fail(format!("did not answer: {e}")))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(fail(format!("answered HTTP {status}: {}", short(&text))));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        fail(format!(
            "answered something that is not JSON: {}",
            short(&text)
        ))
    })?;
    let field = |names: &[&str]| names.iter().find_map(|n| v.get(*n)).cloned();
    match field(&["ShouldBid", "shouldBid", "should_bid"]).and_then(|b| b.as_bool()) {
        Some(true) => Ok(()),
        Some(false) => {
            let reason = field(&["Reason", "reason"])
                .and_then(|r| r.as_str().map(String::from))
                .unwrap_or_default();
            Err(format!(
                "the admission probe refused the job{}",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", short(&reason))
                }
            ))
        }
        None => Err(fail("answered without ShouldBid".into())),
    }
}

async fn exec(cmd: &str, body: &serde_json::Value) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("the admission probe `{cmd}` cannot be started: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.to_string().as_bytes()).await;
    }
    let out = tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!("the admission probe `{cmd}` did not finish within {PROBE_TIMEOUT:?}")
        })?
        .map_err(|e| format!("the admission probe `{cmd}` failed: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(format!(
        "the admission probe refused the job ({}){}",
        out.status,
        if said.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", short(&said))
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            name: "probe-me".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_exec_probe_decides_by_its_exit_status_and_says_why() {
        let yes = Probes {
            exec: "grep -q probe-me".into(),
            ..Default::default()
        };
        assert!(
            probe(&yes, "n", &job()).await.is_ok(),
            "the job arrives on stdin"
        );
        let no = Probes {
            exec: "echo 'GPU jobs only'; exit 3".into(),
            ..Default::default()
        };
        let e = probe(&no, "n", &job()).await.unwrap_err();
        assert!(e.contains("GPU jobs only") && e.contains("3"), "{e}");
        let slow = Probes {
            exec: "sleep 30".into(),
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let e = probe(&slow, "n", &job()).await.unwrap_err();
        assert!(
            e.contains("did not finish") && t.elapsed() < Duration::from_secs(20),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_http_probe_answers_should_bid_and_an_unreachable_one_refuses() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if req.contains("probe-me") {
                    r#"{"shouldBid": false, "reason": "not on Sundays"}"#
                } else {
                    r#"{"ShouldBid": true}"#
                };
                let r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = s.write_all(r.as_bytes()).await;
            }
        });
        let p = Probes {
            http: format!("http://{addr}/probe"),
            ..Default::default()
        };
        let e = probe(&p, "n", &job()).await.unwrap_err();
        assert!(e.contains("not on Sundays"), "{e}");
        let other = Job {
            name: "fine".into(),
            ..Default::default()
        };
        assert!(probe(&p, "n", &other).await.is_ok());
        let dead = Probes {
            http: "http://127.0.0.1:9/probe".into(),
            ..Default::default()
        };
        let e = probe(&dead, "n", &job()).await.unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
    }
}
