//! Engine parameters, parsed once into types — by validation at submit, by the executors on the
//! node and by the CLI — instead of being read by string key in each place. Keys are matched in
//! any case (Bacalhau decodes `Params` with mapstructure); `null` is absent; numbers and booleans
//! in a list of words are taken as their text, as mapstructure's weak decoding takes them.
//!
//! ```text
//! Engine: {Type: docker, Params: {Image, Entrypoint?, Parameters?, EnvironmentVariables?, WorkingDirectory?}}
//! Engine: {Type: wasm,   Params: {EntryModule, Entrypoint? (_start), Parameters?, ImportModules?}}
//! ```

use crate::spec::{Params, SpecConfig};

/// A parameter that is missing or of the wrong shape: the field (below `Engine.Params`), what is
/// wrong, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub field: String,
    pub message: String,
    pub hint: String,
}

impl ParamError {
    pub(crate) fn new(
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ParamError {
            field: field.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}; {}", self.field, self.message, self.hint)
    }
}

/// A list of words (`Entrypoint`, `Parameters`, `ImportModules`); absent or `null` is empty.
pub fn words(p: &Params, keys: &[&str]) -> Result<Vec<String>, ParamError> {
    let name = keys[0];
    let bad = || {
        ParamError::new(
            name,
            "must be a list of strings",
            format!("write {name}: [\"…\"]"),
        )
    };
    match p.get_any(keys) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::Bool(b) => Ok(b.to_string()),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// `EnvironmentVariables`: a list of `KEY=VALUE` (Bacalhau's docker engine) or a map (its legacy
/// WASM engine); names starting with `BACALHAU_` are reserved for the variables the node sets.
pub fn environment_variables(p: &Params) -> Result<Vec<(String, String)>, Vec<ParamError>> {
    let field = "EnvironmentVariables";
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let add = |at: String,
               k: &str,
               v: String,
               out: &mut Vec<(String, String)>,
               errors: &mut Vec<ParamError>| {
        if k.starts_with(crate::RESERVED_ENV_PREFIX) {
            errors.push(ParamError::new(
                at,
                format!(
                    "names starting with {} are reserved",
                    crate::RESERVED_ENV_PREFIX
                ),
                "rename the variable",
            ));
        } else {
            out.push((k.to_string(), v));
        }
    };
    match p.get(field) {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{field}[{i}]");
                match item.as_str().and_then(|s| s.split_once('=')) {
                    Some((k, v)) if !k.is_empty() => {
                        add(at, k, v.to_string(), &mut out, &mut errors)
                    }
                    _ => errors.push(ParamError::new(
                        at,
                        format!(
                            "{:?} is not KEY=VALUE",
                            item.as_str().map_or(item.to_string(), String::from)
                        ),
                        "write KEY=VALUE",
                    )),
                }
            }
        }
        Some(serde_json::Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                };
                add(format!("{field}.{k}"), k, v, &mut out, &mut errors);
            }
        }
        Some(_) => errors.push(ParamError::new(
            field,
            "must be a list of KEY=VALUE",
            "write EnvironmentVariables: [\"KEY=VALUE\"]",
        )),
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The `docker` engine's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerParams {
    pub image: String,
    pub entrypoint: Vec<String>,
    pub parameters: Vec<String>,
    pub environment_variables: Vec<(String, String)>,
    /// An absolute path, if set.
    pub working_directory: Option<String>,
}

impl TryFrom<&SpecConfig> for DockerParams {
    type Error = Vec<ParamError>;

    fn try_from(engine: &SpecConfig) -> Result<Self, Vec<ParamError>> {
        let p = &engine.params;
        let mut errors = Vec::new();
        let image = match p.get("Image") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                let s = s.trim().to_string();
                if s.chars().any(char::is_whitespace) {
                    errors.push(ParamError::new(
                        "Image",
                        format!("{s:?} contains white space"),
                        "write NAME[:TAG|@DIGEST], e.g. busybox:1.37.0",
                    ));
                }
                s
            }
            _ => {
                errors.push(ParamError::new(
                    "Image",
                    "is required for docker jobs",
                    "set Image, e.g. busybox:1.37.0",
                ));
                String::new()
            }
        };
        let mut list = |keys: &[&str]| {
            words(p, keys).unwrap_or_else(|e| {
                errors.push(e);
                Vec::new()
            })
        };
        let entrypoint = list(&["Entrypoint", "EntryPoint"]);
        let parameters = list(&["Parameters"]);
        let working_directory = match p.get("WorkingDirectory") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(serde_json::Value::String(s)) if s.trim().starts_with('/') => {
                Some(s.trim().to_string())
            }
            Some(other) => {
                errors.push(ParamError::new(
                    "WorkingDirectory",
                    format!(
                        "{} is not an absolute path",
                        other
                            .as_str()
                            .map_or(other.to_string(), |s| format!("{s:?}"))
                    ),
                    "use an absolute path",
                ));
                None
            }
        };
        let environment_variables = environment_variables(p).unwrap_or_else(|e| {
            errors.extend(e);
            Vec::new()
        });
        if errors.is_empty() {
            Ok(DockerParams {
                image,
                entrypoint,
                parameters,
                environment_variables,
                working_directory,
            })
        } else {
            Err(errors)
        }
    }
}

/// The `wasm` engine's parameters (Bacalhau v1.7+; the legacy form is converted by the parser).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WasmParams {
    /// The path, in the task's file system, of the module to run (an input's Target, or a file
    /// below one).
    pub entry_module: String,
    /// The exported function to call (`_start` unless set).
    pub entrypoint: String,
    pub parameters: Vec<String>,
    pub import_modules: Vec<String>,
}

impl TryFrom<&SpecConfig> for WasmParams {
    type Error = Vec<ParamError>;

    fn try_from(engine: &SpecConfig) -> Result<Self, Vec<ParamError>> {
        let p = &engine.params;
        let mut errors = Vec::new();
        let entry_module = match p.get("EntryModule") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(serde_json::Value::String(_)) | None | Some(serde_json::Value::Null) => {
                errors.push(ParamError::new(
                    "EntryModule",
                    "is required for wasm jobs",
                    "set EntryModule to the Target of the InputSource that holds the module",
                ));
                String::new()
            }
            Some(_) => {
                errors.push(ParamError::new(
                    "EntryModule",
                    "must be the Target of an input",
                    "set EntryModule to the Target of the InputSource that holds the module",
                ));
                String::new()
            }
        };
        let entrypoint = match p.get_any(&["Entrypoint", "EntryPoint"]) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(serde_json::Value::String(_)) | None | Some(serde_json::Value::Null) => {
                "_start".to_string()
            }
            Some(_) => {
                errors.push(ParamError::new(
                    "Entrypoint",
                    "must be a function name",
                    "write Entrypoint: _start",
                ));
                String::new()
            }
        };
        let mut list = |keys: &[&str]| {
            words(p, keys).unwrap_or_else(|e| {
                errors.push(e);
                Vec::new()
            })
        };
        let parameters = list(&["Parameters"]);
        let import_modules = list(&["ImportModules"]);
        if errors.is_empty() {
            Ok(WasmParams {
                entry_module,
                entrypoint,
                parameters,
                import_modules,
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_params_read_in_any_case_with_nulls_absent() {
        let e = SpecConfig::new("docker")
            .with("image", " busybox:1.37.0 ")
            .with("ENTRYPOINT", serde_json::json!(["/bin/sh", "-c"]))
            .with("Parameters", serde_json::json!(["echo", 15, true]))
            .with("EnvironmentVariables", serde_json::json!(["A=1", "B=x=y"]))
            .with("WorkingDirectory", serde_json::Value::Null);
        let d = DockerParams::try_from(&e).unwrap();
        assert_eq!(d.image, "busybox:1.37.0");
        assert_eq!(d.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(d.parameters, ["echo", "15", "true"]);
        assert_eq!(
            d.environment_variables,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(d.working_directory, None);
    }

    #[test]
    fn every_bad_docker_param_is_named() {
        let e = SpecConfig::new("docker")
            .with("Entrypoint", "sh")
            .with(
                "EnvironmentVariables",
                serde_json::json!(["NOEQUALS", "BACALHAU_X=1"]),
            )
            .with("WorkingDirectory", "relative");
        let fields: Vec<String> = DockerParams::try_from(&e)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "Image",
                "Entrypoint",
                "WorkingDirectory",
                "EnvironmentVariables[0]",
                "EnvironmentVariables[1]"
            ]
        );
    }

    #[test]
    fn wasm_params_default_the_entry_point() {
        let e = SpecConfig::new("wasm")
            .with("EntryModule", "/m.wasm")
            .with("ImportModules", serde_json::Value::Null);
        let w = WasmParams::try_from(&e).unwrap();
        assert_eq!(w.entrypoint, "_start");
        assert!(w.import_modules.is_empty());
        let e = SpecConfig::new("wasm").with("Entrypoint", 3);
        let bad: Vec<String> = WasmParams::try_from(&e)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(bad, ["EntryModule", "Entrypoint"]);
    }
}
