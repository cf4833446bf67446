//! Parsing job specs from YAML or JSON, accepting keys in any case, converting Bacalhau's legacy WASM
//! parameters, applying defaults and validating. One entry point for the CLI and the API server.

use serde_json::Value;

use crate::spec::{InputSource, Job, SpecConfig};
use crate::validate::{SpecError, SpecErrors, validate_job};

/// The largest spec accepted (inline modules and data included). The API's body limit is above it.
pub const MAX_SPEC_BYTES: usize = 8 << 20;

/// Top-level keys a user may not set; the server drops them with a warning, the CLI refuses them.
pub const SERVER_OWNED_KEYS: &[&str] = &[
    "ID",
    "State",
    "Version",
    "Revision",
    "CreateTime",
    "ModifyTime",
];

/// Who is parsing: the CLI is strict about server-owned keys, the server sanitises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Client,
    Server,
}

/// A parsed, defaulted and validated job, with warnings for what was changed.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub job: Job,
    pub warnings: Vec<String>,
}

/// Parses YAML or JSON text (JSON is YAML) into a job.
pub fn parse_job(text: &[u8], mode: Mode) -> Result<Parsed, SpecErrors> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecErrors::one(SpecError::new(
            "",
            format!(
                "the spec is {} bytes, more than the limit of {} bytes",
                text.len(),
                MAX_SPEC_BYTES
            ),
            "keep large data out of the spec: use an s3, urlDownload or local input source instead of inline data",
        )));
    }
    let text = std::str::from_utf8(text).map_err(|_| {
        SpecErrors::one(SpecError::new(
            "",
            "the spec is not UTF-8 text",
            "save the file as UTF-8",
        ))
    })?;
    if text.trim().is_empty() {
        return Err(SpecErrors::one(SpecError::new(
            "",
            "the spec is empty",
            "give a job in YAML or JSON",
        )));
    }
    let value: Value = serde_norway::from_str(text).map_err(|e| {
        SpecErrors::one(SpecError::new(
            "",
            format!("not valid YAML or JSON: {e}"),
            "check the indentation and quoting",
        ))
    })?;
    job_from_value(value, mode)
}

/// Builds a job from an already-decoded JSON value (the API's `{"Job": …}` body).
pub fn job_from_value(value: Value, mode: Mode) -> Result<Parsed, SpecErrors> {
    job_from_value_with(value, mode, &crate::config::JobDefaults::default())
}

/// [`job_from_value`] with the orchestrator's `JobDefaults` filled in where the job leaves a field
/// unset (before its normalisation and validation, so a default is checked as the job's own).
pub fn job_from_value_with(
    mut value: Value,
    mode: Mode,
    defaults: &crate::config::JobDefaults,
) -> Result<Parsed, SpecErrors> {
    if !value.is_object() {
        return Err(SpecErrors::one(SpecError::new(
            "",
            "the spec must be a mapping with Name, Type and Tasks",
            "see examples/wordcount.yaml",
        )));
    }
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    // Unknown keys are ignored, as Go ignores them (a newer client may send fields this server
    // does not know), and reported: as a warning when the job is accepted, beside the errors
    // when it is not (a misspelt required key is then named with its likely spelling).
    let mut unknown = Vec::new();
    for path in crate::normalize::canonicalize_job(&mut value) {
        let hint = match crate::normalize::suggest(&path) {
            Some(s) => format!("did you mean {s}?"),
            None => "remove it; see the job spec reference in docs/".into(),
        };
        warnings.push(format!("{path}: unknown field, ignored ({hint})"));
        unknown.push(SpecError::new(&path, "unknown field", hint));
    }
    let obj = value.as_object_mut().expect("checked above");
    for key in SERVER_OWNED_KEYS {
        let Some(v) = obj.get(*key) else { continue };
        // Go clients send every field: their zero values say nothing and are dropped quietly.
        if is_zero_value(v) {
            obj.remove(*key);
            continue;
        }
        match mode {
            Mode::Client => errors.push(SpecError::new(
                key,
                "is set by the orchestrator and not allowed in a submitted spec",
                format!("remove {key} from the spec"),
            )),
            Mode::Server => {
                obj.remove(*key);
                warnings.push(format!(
                    "{key} is set by the orchestrator; the value in the spec was ignored"
                ));
            }
        }
    }
    if !errors.is_empty() {
        errors.extend(unknown);
        return Err(SpecErrors(errors));
    }
    let count_given = obj.get("Count").is_some_and(|c| !c.is_null());
    let mut job: Job = match serde_path_to_error::deserialize(value) {
        Ok(job) => job,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let mut errors = vec![SpecError::new(
                &path,
                e.into_inner().to_string(),
                "fix the value's type",
            )];
            errors.extend(unknown);
            return Err(SpecErrors(errors));
        }
    };
    convert_legacy_wasm(&mut job, &mut warnings);
    if job.tasks.len() > 1 {
        warnings.push(format!(
            "only one task per job is supported; {} extra task(s) were dropped",
            job.tasks.len() - 1
        ));
        job.tasks.truncate(1);
    }
    for t in job.tasks.iter_mut() {
        let reserved: Vec<String> = t
            .meta
            .keys()
            .filter(|k| k.starts_with(crate::RESERVED_META_PREFIX))
            .cloned()
            .collect();
        for k in reserved {
            t.meta.remove(&k);
            warnings.push(format!("Meta key {k} is reserved and was dropped"));
        }
    }
    let reserved: Vec<String> = job
        .meta
        .keys()
        .filter(|k| k.starts_with(crate::RESERVED_META_PREFIX))
        .cloned()
        .collect();
    for k in reserved {
        job.meta.remove(&k);
        warnings.push(format!("Meta key {k} is reserved and was dropped"));
    }
    defaults.apply(&mut job);
    job.normalize(count_given);
    if let Err(SpecErrors(mut errors)) = validate_job(&job) {
        errors.extend(unknown);
        return Err(SpecErrors(errors));
    }
    Ok(Parsed { job, warnings })
}

/// What Go's `encoding/json` writes for a field nobody set: `""`, `0`, `false`, an empty list or
/// map, or a state of type `Undefined` with nothing else in it.
fn is_zero_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.iter().all(|(k, v)| {
            is_zero_value(v) || (k.eq_ignore_ascii_case("StateType") && v == "Undefined")
        }),
    }
}

/// Bacalhau ≤1.6 wrote `EntryModule` (and `ImportModules`) as InputSource objects and called the
/// entry function `EntryPoint`; v1.7+ names input targets. Convert the legacy form in place.
fn convert_legacy_wasm(job: &mut Job, warnings: &mut Vec<String>) {
    for task in job.tasks.iter_mut() {
        if !task.engine.kind.eq_ignore_ascii_case("wasm") {
            continue;
        }
        let params = &mut task.engine.params.0;
        if let Some(key) = params
            .keys()
            .find(|k| k.eq_ignore_ascii_case("EntryModule"))
            .cloned()
            && params.get(&key).is_some_and(Value::is_object)
        {
            let v = params.remove(&key).unwrap_or_default();
            if let Some(target) = legacy_input(v, "/main.wasm", &mut task.input_sources) {
                params.insert("EntryModule".into(), Value::String(target));
                warnings.push("EntryModule as an InputSource is the legacy form; converted to an input target".into());
            }
        }
        if let Some(key) = params
            .keys()
            .find(|k| k.eq_ignore_ascii_case("ImportModules"))
            .cloned()
            && let Some(Value::Array(items)) = params.get(&key).cloned()
            && items.iter().any(Value::is_object)
        {
            let mut targets = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(_) => {
                        if let Some(t) = legacy_input(
                            item,
                            &format!("/import-{i}.wasm"),
                            &mut task.input_sources,
                        ) {
                            targets.push(Value::String(t));
                        }
                    }
                    other => targets.push(other),
                }
            }
            params.remove(&key);
            params.insert("ImportModules".into(), Value::Array(targets));
        }
        // A module named relative to the task's root (`EntryModule: wasm.main` beside an input
        // whose Target is `/wasm.main`), as Bacalhau's testdata writes it: resolve it against `/`.
        let targets: Vec<String> = task
            .input_sources
            .iter()
            .map(|i| i.target.clone())
            .collect();
        let absolute = |m: &str| {
            let rel = m.trim_start_matches("./");
            let abs = format!("/{rel}");
            targets
                .iter()
                .any(|t| {
                    let t = t.trim_end_matches('/');
                    abs == t || abs.starts_with(&format!("{t}/"))
                })
                .then_some(abs)
        };
        if let Some(key) = params
            .keys()
            .find(|k| k.eq_ignore_ascii_case("EntryModule"))
            .cloned()
            && let Some(Value::String(m)) = params.get(&key)
            && !m.starts_with('/')
            && !m.is_empty()
            && let Some(abs) = absolute(m)
        {
            warnings.push(format!(
                "EntryModule {m:?} is relative; read as {abs:?} (the root of the task's inputs)"
            ));
            params.remove(&key);
            params.insert("EntryModule".into(), Value::String(abs));
        }
        if let Some(Value::Array(items)) = params.get_mut("ImportModules") {
            for item in items.iter_mut() {
                if let Some(m) = item.as_str()
                    && !m.starts_with('/')
                    && !m.is_empty()
                    && let Some(abs) = absolute(m)
                {
                    *item = Value::String(abs);
                }
            }
        }
        // `EntryPoint` (legacy) and `Entrypoint` (v1.7+) both name the exported function.
        if let Some(key) = params
            .keys()
            .find(|k| k.as_str() != "Entrypoint" && k.eq_ignore_ascii_case("EntryPoint"))
            .cloned()
            && let Some(v) = params.remove(&key)
        {
            params.entry("Entrypoint").or_insert(v);
        }
    }
}

fn legacy_input(v: Value, default_target: &str, inputs: &mut Vec<InputSource>) -> Option<String> {
    let mut wrapped = serde_json::json!({ "InputSources": [v] });
    // Reuse the canonicaliser through a task-shaped wrapper.
    let mut job = serde_json::json!({ "Tasks": [wrapped.take()] });
    crate::normalize::canonicalize_job(&mut job);
    let src = job["Tasks"][0]["InputSources"][0].take();
    let mut input: InputSource = serde_json::from_value(src).ok()?;
    if input.source.is_empty() {
        // Some legacy specs put the SpecConfig itself in EntryModule.
        return None;
    }
    if input.target.is_empty() {
        input.target = default_target.to_string();
    }
    let target = input.target.clone();
    if !inputs.iter().any(|i| i.target == target) {
        inputs.push(input);
    }
    Some(target)
}

/// Go's `strconv.ParseBool`, as Bacalhau's CLI flags and server query parameters read booleans.
pub fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Builds a `data:` URL for inline sources (what `wasm run` sends for a local module).
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The bytes of a base64 `data:` URL as a task will see them, when that is known without
/// decompressing (gzipped data and other encodings: `None`, the node decides).
pub fn data_url_bytes(url: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let rest = url.trim().strip_prefix("data:")?;
    let (meta, payload) = rest.split_once(',')?;
    if !meta
        .split(';')
        .any(|p| p.trim().eq_ignore_ascii_case("base64"))
        || meta.to_ascii_lowercase().contains("gzip")
    {
        return None;
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .ok()?;
    (!data.starts_with(&[0x1f, 0x8b])).then_some(data)
}

/// Convenience: an inline input source.
pub fn inline_input(target: &str, mime: &str, bytes: &[u8]) -> InputSource {
    InputSource {
        source: SpecConfig::new("inline").with("URL", data_url(mime, bytes)),
        alias: String::new(),
        target: target.to_string(),
    }
}
