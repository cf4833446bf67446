//! `caravel devstack`: a local cluster for development and demos. With one orchestrator and at most
//! one compute node it runs one hybrid node in this process (fast to start: the README's first
//! command); with more, or `--processes`, every node is its own OS process
//! ([`crate::devstack_cluster`]). With `--run FILE` it runs that job, prints its output and exits
//! with 0 if the job completed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caravel_cli::{ApiClient, DevstackArgs, Global};
use caravel_model::states::NodeConnection;

pub async fn run(global: &Global, args: &DevstackArgs) -> anyhow::Result<ExitCode> {
    if args.orchestrators == 0 {
        bail!("a devstack needs at least one orchestrator (--orchestrators 1, 3 or 5)");
    }
    if args.orchestrators > 1 || args.compute > 1 || args.processes {
        return crate::devstack_cluster::run(global, args).await;
    }
    let mut g = global.clone();
    let dir = match &global.data_dir {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("caravel-devstack-{}", std::process::id())),
    };
    g.data_dir = Some(dir.to_string_lossy().into_owned());
    let mut config = caravel_cli::config::load(&g)?;
    config.api.host = "127.0.0.1".into();
    config.api.port = global
        .api_port
        .unwrap_or(if args.run.is_some() { 0 } else { 1234 });
    crate::node::init_tracing(if args.run.is_some() {
        "warn"
    } else {
        &config.logging.level
    });
    let started = Instant::now();
    let node = crate::node::start(config, true, args.compute > 0, None).await?;
    let client = ApiClient::new(&format!("http://{}", node.api_addr));
    // Wait until the compute node is registered, so the first job finds it.
    if args.compute > 0 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node.cluster.read(|s| {
            s.nodes.values().any(|n| {
                n.info.node_type == "Compute"
                    && n.connection_state.status == NodeConnection::Connected
            })
        }) {
            if Instant::now() > deadline {
                bail!("the compute node did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "devstack: node {} ready in {:.1}s — API http://{}  data {}",
        node.node_name,
        started.elapsed().as_secs_f64(),
        node.api_addr,
        dir.display()
    );

    let Some(file) = &args.run else {
        eprintln!(
            "\nexport CARAVEL_API_HOST=127.0.0.1 CARAVEL_API_PORT={}\nPress Ctrl-C to stop.",
            node.api_addr.port()
        );
        crate::node::wait_for_signal().await;
        node.stop().await;
        return Ok(ExitCode::SUCCESS);
    };
    let code = run_job_file(&client, file).await?;
    node.stop().await;
    if global.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(code)
}

/// Submits a job spec file, follows it to its end and prints its stdout (from the executions'
/// run output); the exit code says whether it completed.
pub async fn run_job_file(client: &ApiClient, file: &str) -> anyhow::Result<ExitCode> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    let base = std::path::Path::new(file)
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let value = caravel_cli::job::spec_to_value(&text, &base)?;
    let rt = caravel_cli::job::RuntimeArgs {
        wait: true,
        wait_timeout_secs: 600,
        no_hints: true,
        ..Default::default()
    };
    let code = caravel_cli::job::submit_and_follow(client, value, &rt).await?;
    // Print the job's full stdout from its results.
    let jobs: caravel_model::api::ListJobsResponse = client
        .get(
            "/api/v1/orchestrator/jobs",
            &[("limit", "1".into()), ("reverse", "true".into())],
        )
        .await?;
    if let Some(job) = jobs.items.first() {
        let execs: caravel_model::api::ListExecutionsResponse = client
            .get(
                &format!("/api/v1/orchestrator/jobs/{}/executions", job.id),
                &[],
            )
            .await?;
        for e in &execs.items {
            if let Some(o) = &e.run_output {
                if !o.stdout.is_empty() {
                    println!("{}", o.stdout.trim_end());
                }
                if !o.error_msg.is_empty() {
                    eprintln!("error: {}", o.error_msg);
                }
            }
        }
    }
    Ok(code)
}
