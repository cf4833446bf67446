//! `node list|describe|approve|reject|delete|drain|eligibility` and `node token create|list|delete` (join tokens).

use std::process::ExitCode;

use caravel_model::api::{GetNodeResponse, ListNodesResponse};
use caravel_model::quantity::format_bytes;
use clap::{Args, Subcommand};

use crate::ApiClient;
use crate::output::{Format, OutputArgs};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    List(ListArgs),
    /// Describe one node (id or unique prefix).
    Describe {
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Approve a pending (or rejected) node so it is scheduled (admin).
    Approve {
        id: String,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Reject a node: its session closes, its certificate is refused, its executions move (admin).
    Reject {
        id: String,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Delete a node: its record goes and the certificates it used are revoked; it may join again
    /// with a new token (admin).
    Delete {
        id: String,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Drain a node, as Nomad's `node drain`: it takes no new work, its service copies move to
    /// other nodes now (each stops once its replacement is placed), its batch executions finish
    /// there until the deadline, then move; daemons and ops executions stay (admin).
    Drain {
        id: String,
        /// How long batch executions may keep running there: 90s, 30m, 1h (default), 2d.
        #[arg(long, default_value = "1h")]
        deadline: String,
        /// Move everything now (a deadline of 0).
        #[arg(long, conflicts_with = "deadline")]
        force: bool,
        /// End the drain: the node is eligible for new work again.
        #[arg(long, conflicts_with = "force")]
        disable: bool,
        /// With `--disable`: end the drain but keep the node ineligible (`node eligibility
        /// --enable` lets it back), as Nomad's.
        #[arg(long, requires = "disable")]
        keep_ineligible: bool,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Make a node eligible or ineligible for new work; what runs there stays (admin).
    Eligibility {
        id: String,
        #[arg(long, conflicts_with = "disable", required_unless_present = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// One-time join tokens for new compute nodes (admin).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it once. Give it to the node: serve --compute --join-token TOKEN.
    Create {
        /// How long it stays valid: 30m, 1h (default), 24h, … (at most 7 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Labels the joining node gets, k=v comma separated.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Only this node id may use it.
        #[arg(long)]
        node_id: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// List tokens (never their secrets).
    List(OutputArgs),
    /// Withdraw a token by id.
    Delete { id: String },
}

/// `30m`, `1h`, `2d`, `90s` or plain seconds.
fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("--ttl {s:?}: use e.g. 30m, 1h, 24h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("--ttl {s:?}: the unit is s, m, h or d"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("--ttl {s:?} is too long"))
}

async fn node_action(c: &ApiClient, id: &str, action: &str, message: &str) -> anyhow::Result<()> {
    let _: serde_json::Value = c
        .put(
            "/api/v1/orchestrator/nodes",
            &serde_json::json!({"NodeID": id, "Action": action, "Message": message}),
        )
        .await?;
    println!("Ok");
    Ok(())
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Label selector, e.g. region=eu.
    #[arg(long)]
    labels: Option<String>,
    /// approved, pending or rejected.
    #[arg(long)]
    filter_approval: Option<String>,
    /// connected or disconnected.
    #[arg(long)]
    filter_status: Option<String>,
    #[arg(long)]
    limit: Option<u32>,
    #[arg(long)]
    order_by: Option<String>,
    #[arg(long)]
    order_reversed: bool,
    /// Column groups after id, type, approval and status: labels, version, features, capacity
    /// (comma list; default labels,capacity).
    #[arg(long, value_delimiter = ',', default_value = "labels,capacity", value_parser = ["labels", "version", "features", "capacity"])]
    show: Vec<String>,
    #[command(flatten)]
    out: OutputArgs,
}

/// The `node list` table: id, type, approval and status, then each group asked for with `--show`
/// in Bacalhau's order (labels; version, architecture, os; engines, inputs from, outputs; cpu,
/// memory, disk, gpu as free / total).
fn node_rows(r: &ListNodesResponse, show: &[String]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let shows = |g: &str| show.iter().any(|s| s == g);
    let mut header = vec!["id", "type", "approval", "status"];
    if shows("labels") {
        header.push("labels");
    }
    if shows("version") {
        header.extend(["version", "architecture", "os"]);
    }
    if shows("features") {
        header.extend(["engines", "inputs from", "outputs"]);
    }
    if shows("capacity") {
        header.extend(["cpu", "memory", "disk", "gpu"]);
    }
    let rows = r
        .nodes
        .iter()
        .map(|n| {
            let ci = &n.info.compute_node_info;
            let (free, max) = (&ci.available_capacity, &ci.max_capacity);
            let mut row = vec![
                n.info.node_id.clone(),
                n.info.node_type.clone(),
                n.membership.as_str().into(),
                match n.eligibility() {
                    caravel_model::node::Eligibility::Eligible => {
                        n.connection_state.status.as_str().into()
                    }
                    e => format!("{} ({})", n.connection_state.status.as_str(), e.as_str()),
                },
            ];
            if shows("labels") {
                row.push(
                    n.info
                        .labels
                        .iter()
                        // System labels (the admission policy) are for `node describe`.
                        .filter(|(k, _)| !k.starts_with("caravel.io/"))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            if shows("version") {
                let v = &n.info.bacalhau_version;
                row.extend([v.git_version.clone(), v.goarch.clone(), v.goos.clone()]);
            }
            if shows("features") {
                row.extend([
                    ci.execution_engines.join(" "),
                    ci.storage_sources.join(" "),
                    ci.publishers.join(" "),
                ]);
            }
            if shows("capacity") {
                row.extend([
                    format!("{:.1} / {:.1}", free.cpu, max.cpu),
                    format!(
                        "{} / {}",
                        format_bytes(free.memory),
                        format_bytes(max.memory)
                    ),
                    format!("{} / {}", format_bytes(free.disk), format_bytes(max.disk)),
                    format!("{} / {}", free.gpu, max.gpu),
                ]);
            }
            row
        })
        .collect();
    (header, rows)
}

pub async fn run(c: &ApiClient, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::List(a) => {
            let mut q = vec![];
            if let Some(l) = a.labels {
                q.push(("labels", l));
            }
            if let Some(f) = a.filter_approval {
                q.push(("filter-approval", f));
            }
            if let Some(f) = a.filter_status {
                q.push(("filter-status", f));
            }
            if let Some(l) = a.limit {
                q.push(("limit", l.to_string()));
            }
            if let Some(o) = a.order_by {
                q.push(("order_by", o));
            }
            if a.order_reversed {
                q.push(("reverse", "true".into()));
            }
            let r: ListNodesResponse = c.get("/api/v1/orchestrator/nodes", &q).await?;
            if !a.out.structured(&r)? {
                let (header, rows) = node_rows(&r, &a.show);
                print!("{}", a.out.table(&header, &rows));
            }
        }
        NodeCommand::Describe { id, out } => {
            let r: GetNodeResponse = c
                .get(&format!("/api/v1/orchestrator/nodes/{id}"), &[])
                .await?;
            let mut out = out;
            if out.output == Format::Table {
                out.output = Format::Yaml;
            }
            out.structured(&r.node)?;
        }
        NodeCommand::Approve { id, message } => node_action(c, &id, "approve", &message).await?,
        NodeCommand::Reject { id, message } => node_action(c, &id, "reject", &message).await?,
        NodeCommand::Delete { id, message } => node_action(c, &id, "delete", &message).await?,
        NodeCommand::Drain {
            id,
            deadline,
            force,
            disable,
            keep_ineligible,
            message,
        } => {
            if disable {
                let action = if keep_ineligible {
                    "ineligible"
                } else {
                    "eligible"
                };
                node_action(c, &id, action, &message).await?;
            } else {
                let secs = if force {
                    0
                } else {
                    caravel_model::spec::parse_duration_secs(&deadline)
                        .map_err(|e| anyhow::anyhow!("--deadline {e}"))?
                        .ceil() as i64
                };
                let _: serde_json::Value = c
                    .put(
                        "/api/v1/orchestrator/nodes",
                        &serde_json::json!({
                            "NodeID": id, "Action": "drain", "Message": message,
                            "DeadlineSeconds": secs,
                        }),
                    )
                    .await?;
                eprintln!(
                    "node {id} is draining: no new work; service copies move now, batch executions in {secs} s at the latest; `caravel node drain --disable {id}` ends it"
                );
                println!("Ok");
            }
        }
        NodeCommand::Eligibility {
            id,
            enable,
            disable: _,
            message,
        } => {
            let action = if enable { "eligible" } else { "ineligible" };
            node_action(c, &id, action, &message).await?
        }
        NodeCommand::Token(TokenCommand::Create {
            ttl,
            labels,
            node_id,
            description,
            out,
        }) => {
            let mut l = serde_json::Map::new();
            for kv in labels.iter().filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--labels {kv:?}: use key=value"))?;
                l.insert(k.trim().into(), v.trim().into());
            }
            let r: serde_json::Value = c
                .post(
                    "/api/v1/orchestrator/tokens",
                    &serde_json::json!({
                        "TTLSeconds": parse_ttl(&ttl)?,
                        "Labels": l,
                        "NodeID": node_id.unwrap_or_default(),
                        "Description": description,
                    }),
                )
                .await?;
            if !out.structured(&r)? {
                println!("{}", r["Token"].as_str().unwrap_or_default());
                eprintln!(
                    "token {} is valid until {} and works once; start the node with:\n\tcaravel serve --compute --orchestrators HOST:4222 --join-token <the token above>",
                    r["ID"].as_str().unwrap_or_default(),
                    r["ExpiresAt"].as_str().unwrap_or_default()
                );
            }
        }
        NodeCommand::Token(TokenCommand::List(out)) => {
            let r: serde_json::Value = c.get("/api/v1/orchestrator/tokens", &[]).await?;
            if !out.structured(&r["Items"])? {
                let rows: Vec<Vec<String>> = r["Items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let f = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                        vec![
                            f("ID"),
                            f("State"),
                            f("ExpiresAt"),
                            f("NodeID"),
                            f("UsedBy"),
                            f("Description"),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    out.table(
                        &["id", "state", "expires", "node", "used by", "description"],
                        &rows,
                    )
                );
            }
        }
        NodeCommand::Token(TokenCommand::Delete { id }) => {
            let _: serde_json::Value = c
                .delete(
                    &format!("/api/v1/orchestrator/tokens/{id}"),
                    &serde_json::json!({}),
                )
                .await?;
            println!("Ok");
        }
    }
    Ok(ExitCode::SUCCESS)
}
