//! `/api/v1/orchestrator/jobs*`: submit, list, describe, stop, history, executions, results, logs.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use caravel_model::api::*;
use caravel_model::command::{Command, CommandResponse, RejectCode};
use caravel_model::evaluation::{Evaluation, trigger};
use caravel_model::execution::Execution;
use caravel_model::history::JobHistory;
use caravel_model::parse::{Mode, job_from_value_with};
use caravel_model::spec::{Job, LabelSelectorRequirement, SpecConfig};
use caravel_model::state::{ClusterState, LookupError};
use caravel_model::states::ExecutionStateType;
use caravel_model::view::StateView;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use serde::Deserialize;

use super::{ApiErr, ApiQuery, ApiState, json_body};
use crate::orchestrator::now_ns;
use crate::orchestrator::relay::{self, Relay, RelayRequest, SESSION_LOST};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

fn reject_to_api(code: RejectCode, message: String, hint: String) -> ApiErr {
    let (status, c) = match code {
        RejectCode::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        RejectCode::Conflict => (StatusCode::CONFLICT, "ResourceInUse"),
        RejectCode::NoChange | RejectCode::Invalid => (StatusCode::BAD_REQUEST, "BadRequest"),
        RejectCode::Stale => (StatusCode::PRECONDITION_FAILED, "VersionMismatch"),
    };
    ApiErr::new(status, c, message).hint(hint)
}

/// A submitted job, parsed and validated as the API takes it (the 400 names each bad field).
fn parse_submission(
    s: &ApiState,
    job: serde_json::Value,
) -> Result<caravel_model::parse::Parsed, ApiErr> {
    let parsed =
        job_from_value_with(job, Mode::Server, &s.config.job_defaults).map_err(|errs| {
            let details: Vec<serde_json::Value> = errs
                .0
                .iter()
                .map(|e| serde_json::to_value(e).unwrap_or_default())
                .collect();
            let hint = errs.0.first().map(|e| e.hint.clone()).unwrap_or_default();
            ApiErr::new(StatusCode::BAD_REQUEST, "ValidationError", errs.to_string())
                .hint(hint)
                .detail("Errors", serde_json::Value::Array(details))
        })?;
    caravel_model::validate::check_job_size(&parsed.job).map_err(|e| {
        ApiErr::new(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            e.message.clone(),
        )
        .hint(e.hint.clone())
        .detail(
            "Errors",
            serde_json::Value::Array(vec![serde_json::to_value(&e).unwrap_or_default()]),
        )
    })?;
    Ok(parsed)
}

pub async fn submit(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<Json<PutJobResponse>, ApiErr> {
    let req: PutJobRequest = json_body(&body)?;
    let parsed = parse_submission(&s, req.job)?;
    let (job_id, evaluation_id, _) =
        write_submission(&s, parsed.job, req.force, body.len()).await?;
    Ok(Json(PutJobResponse {
        job_id,
        evaluation_id,
        warnings: parsed.warnings,
    }))
}

/// Writes a job (new, or a new version of the job with its name) and its evaluation, grouped with
/// other clients' submissions ([`crate::orchestrator::Cluster::write_submission`]; `weight` is
/// about its encoded size); returns the job id, the evaluation id and the version.
async fn write_submission(
    s: &ApiState,
    mut job: Job,
    force: bool,
    weight: usize,
) -> Result<(String, String, u64), ApiErr> {
    let now = now_ns();
    job.id = caravel_model::ids::new_job_id();
    if job.name.is_empty() || job.name == job.id {
        job.name = job.id.clone();
    }
    let eval = Evaluation::new(
        caravel_model::ids::new_evaluation_id(),
        &job,
        trigger::JOB_REGISTER,
        now,
    );
    let cmd = Command::SubmitJob {
        job,
        evaluation: eval,
        force,
        now,
    };
    match s.cluster.write_submission(cmd, weight).await? {
        CommandResponse::JobSubmitted {
            job_id,
            evaluation_id,
            version,
        } => Ok((job_id, evaluation_id, version)),
        CommandResponse::Rejected {
            code,
            message,
            hint,
        } => Err(reject_to_api(code, message, hint)),
        other => Err(ApiErr::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("unexpected answer {other:?}"),
        )),
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    namespace: Option<String>,
    limit: Option<u32>,
    next_token: Option<String>,
    order_by: Option<String>,
    reverse: Option<bool>,
    labels: Option<String>,
}

/// A label selector (`labels=`), with the grammar of the CLI's `--constraints`
/// ([`caravel_model::selector`]).
pub fn parse_selector(s: &str) -> Result<Vec<LabelSelectorRequirement>, ApiErr> {
    caravel_model::selector::parse_selector(s).map_err(|e| {
        ApiErr::bad_request(format!("invalid label selector: {e}"))
            .hint("use key=value, key!=value, key in (a,b), key notin (a,b), key or !key")
    })
}

pub fn selector_matches(
    sel: &[LabelSelectorRequirement],
    labels: &BTreeMap<String, String>,
) -> bool {
    sel.iter().all(|r| r.matches(labels))
}

pub async fn list(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListJobsResponse>, ApiErr> {
    let mut token = PagingToken {
        sort_by: q.order_by.clone().unwrap_or_else(|| "created_at".into()),
        sort_reverse: q.reverse.unwrap_or(false),
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
        offset: 0,
    };
    if let Some(t) = q.next_token.as_deref().filter(|t| !t.is_empty()) {
        token = PagingToken::decode(t).ok_or_else(|| {
            ApiErr::bad_request("next_token is not a token this server issued")
                .hint("pass the NextToken of a previous answer unchanged")
        })?;
    }
    if token.limit == 0 || token.limit > MAX_LIMIT {
        return Err(
            ApiErr::bad_request(format!("limit {} is out of range", token.limit))
                .hint(format!("use 1 to {MAX_LIMIT}")),
        );
    }
    if !["created_at", "modified_at", "id", "name", ""].contains(&token.sort_by.as_str()) {
        return Err(
            ApiErr::bad_request(format!("cannot order by {:?}", token.sort_by))
                .hint("use created_at, modified_at, id or name"),
        );
    }
    let selector = match q.labels.as_deref() {
        Some(l) if !l.trim().is_empty() => Some(parse_selector(l)?),
        _ => None,
    };
    let ns = q
        .namespace
        .unwrap_or_else(|| caravel_model::DEFAULT_NAMESPACE.into());
    let mut jobs: Vec<Job> = s
        .cluster
        .read_linearizable(|st| {
            st.jobs
                .values()
                .filter(|j| {
                    (ns == "*" || j.namespace == ns)
                        && selector
                            .as_ref()
                            .is_none_or(|sel| selector_matches(sel, &j.labels))
                })
                .cloned()
                .collect()
        })
        .await?;
    match token.sort_by.as_str() {
        "id" => jobs.sort_by(|a, b| a.id.cmp(&b.id)),
        "name" => jobs.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id))),
        "modified_at" => {
            jobs.sort_by(|a, b| a.modify_time.cmp(&b.modify_time).then(a.id.cmp(&b.id)))
        }
        _ => jobs.sort_by(|a, b| a.create_time.cmp(&b.create_time).then(a.id.cmp(&b.id))),
    }
    if token.sort_reverse {
        jobs.reverse();
    }
    let start = (token.offset as usize).min(jobs.len());
    let end = (start + token.limit as usize).min(jobs.len());
    let next = if end < jobs.len() {
        PagingToken {
            offset: end as u64,
            ..token
        }
        .encode()
    } else {
        String::new()
    };
    Ok(Json(Page {
        items: jobs[start..end].to_vec(),
        next_token: next,
    }))
}

#[derive(Debug, Deserialize, Default)]
pub struct JobQuery {
    namespace: Option<String>,
    include: Option<String>,
    limit: Option<usize>,
    event_type: Option<String>,
    execution_id: Option<String>,
    order_by: Option<String>,
    reverse: Option<bool>,
    job_version: Option<u64>,
    all_job_versions: Option<bool>,
    follow: Option<bool>,
    tail: Option<bool>,
    /// Resume a log stream at these byte offsets of stdout and stderr.
    stdout_offset: Option<u64>,
    stderr_offset: Option<u64>,
    /// Serve only from a compute session held by this orchestrator (a peer's proxied request).
    local: Option<bool>,
}

fn lookup(st: &ClusterState, ns: &Option<String>, id: &str) -> Result<Job, ApiErr> {
    let ns = ns
        .clone()
        .unwrap_or_else(|| caravel_model::DEFAULT_NAMESPACE.into());
    match st.find_job(&ns, id) {
        Ok(j) => Ok(j.clone()),
        Err(LookupError::NotFound) => Err(ApiErr::not_found(format!("job {id} not found"))
            .hint("list jobs with `caravel job list`")),
        Err(LookupError::Ambiguous) => Err(ApiErr::bad_request(format!(
            "job id prefix {id} matches several jobs"
        ))
        .hint("give more characters of the id")),
    }
}

/// [`executions_of`], each carrying the job (version) it runs, as Bacalhau's executions endpoint
/// answers. Only there: `job describe` has the job once at the top, and a copy per execution of a
/// large spec would multiply what a read costs.
fn executions_with_job(st: &ClusterState, job: &Job, q: &JobQuery) -> Vec<Execution> {
    let mut v = executions_of(st, job, q);
    if let Some(l) = q.limit.filter(|l| *l > 0) {
        v.truncate(l);
    }
    for e in v.iter_mut().filter(|e| e.job.is_none()) {
        e.job = st
            .job_version(&job.id, e.job_version)
            .or((e.job_version == job.version).then_some(job))
            .cloned()
            .map(Box::new);
    }
    v
}

fn executions_of(st: &ClusterState, job: &Job, q: &JobQuery) -> Vec<Execution> {
    let mut v: Vec<Execution> = st
        .executions_of(&job.id)
        .into_iter()
        .filter(|e| {
            q.all_job_versions.unwrap_or(false)
                || e.job_version == q.job_version.unwrap_or(job.version)
                || q.job_version.is_none() && e.job_version == job.version
        })
        .cloned()
        .collect();
    match q.order_by.as_deref() {
        Some("modified_at") => v.sort_by_key(|e| e.modify_time),
        _ => v.sort_by_key(|e| e.create_time),
    }
    if q.reverse.unwrap_or(false) {
        v.reverse();
    }
    v
}

fn history_of(st: &ClusterState, job: &Job, q: &JobQuery) -> Vec<JobHistory> {
    st.history_of(&job.id)
        .into_iter()
        .filter(|h| match q.event_type.as_deref().unwrap_or("all") {
            "job" => h.execution_id.is_empty(),
            "execution" => !h.execution_id.is_empty(),
            _ => true,
        })
        .filter(|h| {
            q.execution_id
                .as_ref()
                .is_none_or(|e| h.execution_id.starts_with(e.as_str()))
        })
        // As Bacalhau: the latest version's events unless a version or all of them are asked for.
        .filter(|h| {
            q.all_job_versions.unwrap_or(false)
                || h.job_version == 0
                || h.job_version == q.job_version.unwrap_or(job.version)
        })
        .cloned()
        .collect()
}

pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<GetJobResponse>, ApiErr> {
    let include = q.include.clone().unwrap_or_default().to_ascii_lowercase();
    s.cluster
        .read_linearizable(|st| {
            let job = lookup(st, &q.namespace, &id)?;
            let job = match q.job_version {
                Some(v) if v != job.version => {
                    st.job_version(&job.id, v).cloned().ok_or_else(|| {
                        ApiErr::not_found(format!("job {} has no version {v}", job.id))
                    })?
                }
                _ => job,
            };
            let history = include.contains("history").then(|| Page {
                items: history_of(st, &job, &q),
                next_token: String::new(),
            });
            let executions = include.contains("executions").then(|| Page {
                items: executions_of(st, &job, &q),
                next_token: String::new(),
            });
            Ok(Json(GetJobResponse {
                job,
                history,
                executions,
            }))
        })
        .await?
}

pub async fn stop(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
    body: Bytes,
) -> Result<Json<StopJobResponse>, ApiErr> {
    let req: StopJobRequest = if body.is_empty() {
        StopJobRequest::default()
    } else {
        json_body(&body)?
    };
    let job = s
        .cluster
        .read_linearizable(|st| lookup(st, &q.namespace, &id))
        .await??;
    let cmd = Command::StopJob {
        job_id: job.id,
        reason: req.reason,
        evaluation_id: caravel_model::ids::new_evaluation_id(),
        now: now_ns(),
    };
    match s.cluster.write(cmd).await? {
        CommandResponse::JobStopped { evaluation_id } => {
            Ok(Json(StopJobResponse { evaluation_id }))
        }
        CommandResponse::Rejected {
            code,
            message,
            hint,
        } => Err(reject_to_api(code, message, hint)),
        other => Err(ApiErr::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// A job's list (history, executions) as a page, `limit` applied.
async fn job_page<T: Send + 'static>(
    s: &ApiState,
    id: &str,
    q: &JobQuery,
    items: fn(&ClusterState, &Job, &JobQuery) -> Vec<T>,
) -> Result<Json<Page<T>>, ApiErr> {
    s.cluster
        .read_linearizable(|st| {
            let job = lookup(st, &q.namespace, id)?;
            let mut items = items(st, &job, q);
            if let Some(l) = q.limit.filter(|l| *l > 0) {
                items.truncate(l);
            }
            Ok(Json(Page::of(items)))
        })
        .await?
}

/// `GET /jobs/{id}/versions`: every version of the job, oldest first (Bacalhau v1.8+).
pub async fn versions(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<ListJobVersionsResponse>, ApiErr> {
    job_page(&s, &id, &q, |st, job, _| {
        st.versions_of(&job.id).into_iter().cloned().collect()
    })
    .await
}

/// `PUT /jobs/{id}/rerun`: submits a version of the job (the latest by default) again, as a new
/// version, whatever changed since.
pub async fn rerun(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
    body: Bytes,
) -> Result<Json<RerunJobResponse>, ApiErr> {
    let req: RerunJobRequest = if body.is_empty() {
        RerunJobRequest::default()
    } else {
        json_body(&body)?
    };
    let version = req.job_version;
    let job =
        s.cluster
            .read_linearizable(move |st| {
                let job = lookup(st, &q.namespace, &id)?;
                if version == 0 || version == job.version {
                    return Ok(job);
                }
                st.job_version(&job.id, version).cloned().ok_or_else(|| {
                    ApiErr::not_found(format!("job {} has no version {version}", job.id)).hint(
                        format!("list its versions with `caravel job versions {}`", job.id),
                    )
                })
            })
            .await??;
    // Its author's spec, as submitted: what the orchestrator set is set again.
    let parsed = parse_submission(&s, caravel_model::diff::user_spec_value(&job))?;
    let weight = serde_json::to_vec(&parsed.job).map_or(0, |v| v.len());
    let (job_id, evaluation_id, job_version) =
        write_submission(&s, parsed.job, true, weight).await?;
    Ok(Json(RerunJobResponse {
        job_id,
        job_version,
        evaluation_id,
        warnings: parsed.warnings,
    }))
}

/// `PUT /jobs/diff`: what submitting this job would change in the job of the same name (the whole
/// spec as added when there is none); nothing is written.
pub async fn diff(State(s): State<ApiState>, body: Bytes) -> Result<Json<DiffJobResponse>, ApiErr> {
    let req: PutJobRequest = json_body(&body)?;
    let parsed = parse_submission(&s, req.job)?;
    let new = caravel_model::diff::user_spec_yaml(&parsed.job);
    let (ns, name) = (parsed.job.namespace.clone(), parsed.job.name.clone());
    let old = s
        .cluster
        .read_linearizable(move |st| {
            (!name.is_empty())
                .then(|| {
                    st.find_job(&ns, &name)
                        .ok()
                        .map(caravel_model::diff::user_spec_yaml)
                })
                .flatten()
                .unwrap_or_default()
        })
        .await?;
    Ok(Json(DiffJobResponse {
        diff: caravel_model::diff::line_diff(&old, &new),
        warnings: parsed.warnings,
    }))
}

pub async fn history(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<ListHistoryResponse>, ApiErr> {
    job_page(&s, &id, &q, history_of).await
}

pub async fn executions(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<ListExecutionsResponse>, ApiErr> {
    job_page(&s, &id, &q, executions_with_job).await
}

/// One item per Completed execution of the current version. Results kept on a node (local publisher)
/// are offered as a `urlDownload` from this orchestrator, which fetches them through the node's
/// session: the node needs no inbound port.
pub async fn results(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<ListResultsResponse>, ApiErr> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:1234")
        .to_string();
    s.cluster
        .read_linearizable(|st| {
            let job = lookup(st, &q.namespace, &id)?;
            if !job.is_batch_like() {
                return Err(ApiErr::bad_request(format!(
                    "job {} is a {} job; results exist only for batch and ops jobs",
                    job.id, job.kind
                )));
            }
            let items = st
                .executions_of(&job.id)
                .into_iter()
                .filter(|e| {
                    e.job_version == job.version
                        && e.compute_state.state_type == ExecutionStateType::Completed
                })
                .filter(|e| !e.published_result.is_empty())
                .map(|e| {
                    if e.published_result.kind.eq_ignore_ascii_case("local") {
                        SpecConfig::new("urlDownload").with(
                            "URL",
                            format!(
                                "http://{host}/api/v1/orchestrator/executions/{}/result",
                                e.id
                            ),
                        )
                    } else {
                        e.published_result.clone()
                    }
                })
                .collect();
            Ok(Json(Page::of(items)))
        })
        .await?
}

/// How long a followed log waits for its node to come back (a cut link, a moved session) before it
/// gives up; the client may disconnect at any time.
const LOG_RESUME_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub struct LocalQuery {
    local: Option<bool>,
}

/// Streams an execution's published results (a tar.gz) from its node through the session — the
/// one this orchestrator holds, or, through the member that holds it, another's.
pub async fn download_result(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LocalQuery>,
) -> Result<Response, ApiErr> {
    let exec = s
        .cluster
        .read_linearizable(|st| st.executions.get(&id).cloned())
        .await?
        .ok_or_else(|| ApiErr::not_found(format!("execution {id} not found")))?;
    if exec.compute_state.state_type != ExecutionStateType::Completed {
        return Err(ApiErr::new(
            StatusCode::CONFLICT,
            "ResourceInUse",
            format!(
                "execution {id} is {}, results exist once it completes",
                exec.compute_state.state_type
            ),
        ));
    }
    let not_connected = || {
        ApiErr::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!(
                "node {} that holds the results is not connected",
                exec.node_id
            ),
        )
        .hint("retry when the node is back (`caravel node list`)")
    };
    let stream = s
        .cluster
        .open_stream(&exec.node_id, |request_id| ToCompute::FetchResult {
            request_id,
            execution_id: id.clone(),
        })
        .await;
    let Some(mut stream) = stream else {
        if q.local.unwrap_or(false) {
            return Err(not_connected());
        }
        let req = RelayRequest::Result {
            node_id: exec.node_id.clone(),
            execution_id: id.clone(),
        };
        let Some(relayed) = relay::open(&s.cluster, &req).await else {
            return Err(not_connected());
        };
        return relayed_result(relayed, &id).await;
    };
    // Wait for the first message so a missing result is a clean error, not a broken download.
    let first = stream.rx.recv().await;
    let first_chunk = match first {
        Some(ToOrchestrator::ResultChunk { data, .. }) => data,
        Some(ToOrchestrator::ResultEnd { error, .. }) if !error.is_empty() => {
            return Err(ApiErr::not_found(format!("results of {id}: {error}")));
        }
        Some(ToOrchestrator::ResultEnd { .. }) => Vec::new(),
        _ => {
            return Err(ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the node's session closed during the download",
            ));
        }
    };
    let body = futures::stream::unfold(
        (Some(first_chunk), Some(stream)),
        |(pending, stream)| async move {
            if let Some(chunk) = pending {
                return Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (None, stream)));
            }
            let mut stream = stream?;
            match stream.rx.recv().await {
                Some(ToOrchestrator::ResultChunk { data, .. }) => {
                    Some((Ok(Bytes::from(data)), (None, Some(stream))))
                }
                Some(ToOrchestrator::ResultEnd { error, .. }) if !error.is_empty() => {
                    Some((Err(std::io::Error::other(error)), (None, None)))
                }
                _ => None,
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/gzip")],
        Body::from_stream(body),
    )
        .into_response())
}

/// A result download relayed from the member that holds the node's session (mutual-TLS peer
/// stream, see `orchestrator::relay`).
async fn relayed_result(mut relayed: relay::Relayed, id: &str) -> Result<Response, ApiErr> {
    let first = match relayed.next().await {
        Relay::Message(ToOrchestrator::ResultChunk { data, .. }) => data,
        Relay::Message(ToOrchestrator::ResultEnd { error, .. }) if !error.is_empty() => {
            return Err(ApiErr::not_found(format!("results of {id}: {error}")));
        }
        Relay::Message(ToOrchestrator::ResultEnd { .. }) | Relay::Ended => Vec::new(),
        Relay::Message(_) | Relay::Lost(_) => {
            return Err(ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the node's session moved or closed during the download",
            )
            .hint("retry: the download starts again wherever the node is connected"));
        }
    };
    let body = futures::stream::unfold(
        (Some(first), Some(relayed)),
        |(pending, relayed)| async move {
            if let Some(chunk) = pending {
                return Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (None, relayed)));
            }
            let mut relayed = relayed?;
            match relayed.next().await {
                Relay::Message(ToOrchestrator::ResultChunk { data, .. }) => {
                    Some((Ok(Bytes::from(data)), (None, Some(relayed))))
                }
                Relay::Message(ToOrchestrator::ResultEnd { error, .. }) if !error.is_empty() => {
                    Some((Err(std::io::Error::other(error)), (None, None)))
                }
                Relay::Lost(e) => Some((Err(std::io::Error::other(e)), (None, None))),
                _ => None,
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/gzip")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The logs WebSocket: frames `{"value": {"Type": 1|2, "Line": "…"}}`, or one `{"error": "…"}`.
/// A followed log survives a cut link, a restart of the node's session or its move to another
/// orchestrator: it resumes at the byte offsets of the last lines sent, so no line is lost or
/// repeated (frames carry `Offset`, the byte offset just past the line in its stream).
pub async fn logs(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JobQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiErr> {
    let (job, exec) = s
        .cluster
        .read_linearizable(|st| {
            let job = lookup(st, &q.namespace, &id)?;
            let mut execs = executions_of(st, &job, &JobQuery::default());
            execs.sort_by_key(|e| e.modify_time);
            let exec = match &q.execution_id {
                Some(eid) => execs.into_iter().find(|e| e.id.starts_with(eid.as_str())),
                None => execs
                    .into_iter()
                    .rev()
                    .find(|e| e.compute_state.state_type != ExecutionStateType::Cancelled),
            };
            Ok::<_, ApiErr>((job, exec))
        })
        .await??;
    let req = LogRequest {
        follow: q.follow.unwrap_or(false),
        tail: q.tail.unwrap_or(false),
        offsets: match (q.stdout_offset, q.stderr_offset) {
            (None, None) => None,
            (o, e) => Some((o.unwrap_or(0), e.unwrap_or(0))),
        },
        local: q.local.unwrap_or(false),
    };
    let permit = s.limits.log_stream()?;
    Ok(ws.on_upgrade(move |socket| async move {
        relay_logs(s, socket, job, exec, req).await;
        drop(permit);
    }))
}

#[derive(Debug, Clone, Copy)]
struct LogRequest {
    follow: bool,
    tail: bool,
    /// Where to resume; `None` = from the start (or the tail).
    offsets: Option<(u64, u64)>,
    /// Only through a session held here.
    local: bool,
}

impl LogRequest {
    /// Whether the stream can resume exactly after a cut (a tail request starts at line counts,
    /// not offsets, so it cannot).
    fn resumable(&self) -> bool {
        !self.tail || self.offsets.is_some()
    }
}

/// Lines from wherever the node's session is: here, or relayed by the member that holds it.
enum LogSource {
    Local(crate::orchestrator::NodeStream),
    Peer(relay::Relayed),
}

/// What a source yields.
enum LogEvent {
    Line {
        stream: u8,
        line: String,
        end: Option<u64>,
    },
    End {
        error: String,
    },
    /// The session (or the peer) went away mid-stream.
    Lost,
}

impl LogSource {
    async fn next(&mut self) -> LogEvent {
        match self {
            LogSource::Local(st) => match st.rx.recv().await {
                Some(m) => log_event(m),
                None => LogEvent::Lost,
            },
            LogSource::Peer(r) => match r.next().await {
                Relay::Message(m) => log_event(m),
                Relay::Ended => LogEvent::End {
                    error: String::new(),
                },
                Relay::Lost(_) => LogEvent::Lost,
            },
        }
    }
}

/// A log message from the node as what the relay does next.
fn log_event(m: ToOrchestrator) -> LogEvent {
    match m {
        ToOrchestrator::LogLine { stream, line, .. } => LogEvent::Line {
            stream,
            line,
            end: None,
        },
        ToOrchestrator::LogLineAt {
            stream,
            line,
            end_offset,
            ..
        } => LogEvent::Line {
            stream,
            line,
            end: Some(end_offset),
        },
        ToOrchestrator::LogEnd { error, .. } => LogEvent::End { error },
        _ => LogEvent::Lost,
    }
}

async fn open_log_source(s: &ApiState, exec: &Execution, req: &LogRequest) -> Option<LogSource> {
    let eid = exec.id.clone();
    let (follow, tail) = (req.follow, req.tail);
    let local = s
        .cluster
        .open_stream(&exec.node_id, |request_id| match req.offsets {
            Some((o, e)) => ToCompute::LogsFrom {
                request_id,
                execution_id: eid,
                follow,
                stdout_offset: o,
                stderr_offset: e,
            },
            None if tail => ToCompute::Logs {
                request_id,
                execution_id: eid,
                follow,
                tail,
            },
            None => ToCompute::LogsFrom {
                request_id,
                execution_id: eid,
                follow,
                stdout_offset: 0,
                stderr_offset: 0,
            },
        })
        .await;
    if let Some(l) = local {
        return Some(LogSource::Local(l));
    }
    if req.local {
        return None;
    }
    let req = RelayRequest::Logs {
        node_id: exec.node_id.clone(),
        execution_id: exec.id.clone(),
        follow: req.follow,
        tail: req.tail,
        offsets: req.offsets,
    };
    relay::open(&s.cluster, &req).await.map(LogSource::Peer)
}

async fn relay_logs(
    s: ApiState,
    mut socket: WebSocket,
    job: Job,
    exec: Option<Execution>,
    mut req: LogRequest,
) {
    let frame = |f: &LogFrame| Message::Text(serde_json::to_string(f).unwrap_or_default().into());
    let err = |m: String| {
        frame(&LogFrame {
            value: None,
            error: m,
        })
    };
    let Some(exec) = exec else {
        let _ = socket
            .send(err(format!("job {} has no execution yet", job.id)))
            .await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    };
    let mut waiting_since: Option<std::time::Instant> = None;
    let mut source: Option<LogSource> = None;
    loop {
        let Some(src) = source.as_mut() else {
            source = open_log_source(&s, &exec, &req).await;
            if source.is_some() {
                waiting_since = None;
                continue;
            }
            // Not connected anywhere (yet): a resumable request waits for the node to come back.
            let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
            let gave_up = req.local || !req.resumable() || since.elapsed() > LOG_RESUME_WAIT;
            if gave_up {
                let what = if req.local {
                    format!("node {}'s {SESSION_LOST}", exec.node_id)
                } else {
                    format!(
                        "node {} running execution {} is not connected",
                        exec.node_id, exec.id
                    )
                };
                let _ = socket.send(err(what)).await;
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    _ => {}
                },
            }
            continue;
        };
        tokio::select! {
            ev = src.next() => match ev {
                LogEvent::Line { stream, line, end } => {
                    if let Some(end) = end {
                        let o = req.offsets.get_or_insert((0, 0));
                        if stream == 2 { o.1 = end } else { o.0 = end }
                    }
                    let f = LogFrame { value: Some(LogLine { stream, line, offset: end }), error: String::new() };
                    if socket.send(frame(&f)).await.is_err() {
                        return;
                    }
                }
                LogEvent::End { error } => {
                    if !error.is_empty() {
                        let _ = socket.send(err(error)).await;
                    }
                    break;
                }
                LogEvent::Lost => {
                    source = None;
                    if req.local || !req.resumable() {
                        let _ = socket.send(err(format!("node {}'s {SESSION_LOST}", exec.node_id))).await;
                        break;
                    }
                    tracing::info!(execution = %exec.id, offsets = ?req.offsets, "log stream lost its node session; resuming when it is back");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
