//! Case-insensitive keys, as Bacalhau accepts them (Go's `encoding/json` matches field names without
//! regard to case, and its CLI turns YAML into JSON first). We walk the spec's known shape and rewrite
//! every struct key to its canonical PascalCase spelling; user maps (`Labels`, `Meta`, `Env`, `Params`)
//! keep their keys. Unknown keys are reported with the path where they were found. A `null` struct
//! field is dropped, as Go's `encoding/json` leaves the field at its zero value: Bacalhau's Go
//! clients send `"Constraints":null`, `"Publisher":null` and the like for every unset field.

use serde_json::{Map, Value};

#[derive(Clone, Copy)]
enum Shape {
    Job,
    Task,
    Spec,
    Input,
    ResultPath,
    Resources,
    Network,
    Port,
    Timeouts,
    Constraint,
    State,
    Free,
    FreeMap,
}

fn fields(shape: Shape) -> &'static [(&'static str, Shape, bool)] {
    // (canonical name, shape of the value, is a list of that shape)
    use Shape::*;
    match shape {
        Job => &[
            ("ID", Free, false),
            ("Name", Free, false),
            ("Namespace", Free, false),
            ("Type", Free, false),
            ("Priority", Free, false),
            ("Count", Free, false),
            ("Constraints", Constraint, true),
            ("Meta", FreeMap, false),
            ("Labels", FreeMap, false),
            ("Tasks", Task, true),
            ("State", State, false),
            ("Version", Free, false),
            ("Revision", Free, false),
            ("CreateTime", Free, false),
            ("ModifyTime", Free, false),
        ],
        Task => &[
            ("Name", Free, false),
            ("Engine", Spec, false),
            ("Publisher", Spec, false),
            ("Env", FreeMap, false),
            ("Meta", FreeMap, false),
            ("InputSources", Input, true),
            ("ResultPaths", ResultPath, true),
            ("Resources", Resources, false),
            ("Network", Network, false),
            ("Timeouts", Timeouts, false),
        ],
        Spec => &[("Type", Free, false), ("Params", FreeMap, false)],
        Input => &[
            ("Source", Spec, false),
            ("Alias", Free, false),
            ("Target", Free, false),
        ],
        ResultPath => &[("Name", Free, false), ("Path", Free, false)],
        Resources => &[
            ("CPU", Free, false),
            ("Memory", Free, false),
            ("Disk", Free, false),
            ("GPU", Free, false),
        ],
        Network => &[
            ("Type", Free, false),
            ("Domains", Free, false),
            ("Ports", Port, true),
        ],
        Port => &[
            ("Name", Free, false),
            ("Static", Free, false),
            ("Target", Free, false),
            ("HostNetwork", Free, false),
        ],
        Timeouts => &[
            ("ExecutionTimeout", Free, false),
            ("QueueTimeout", Free, false),
            ("TotalTimeout", Free, false),
        ],
        Constraint => &[
            ("Key", Free, false),
            ("Operator", Free, false),
            ("Values", Free, false),
        ],
        State => &[
            ("StateType", Free, false),
            ("Message", Free, false),
            ("Details", FreeMap, false),
        ],
        Free | FreeMap => &[],
    }
}

/// Aliases Bacalhau accepts besides the canonical names.
fn alias(shape: Shape, lower: &str) -> Option<&'static str> {
    match (shape, lower) {
        (Shape::Task, "resourcesconfig") => Some("Resources"),
        (Shape::Job, "id") => Some("ID"),
        _ => None,
    }
}

/// Rewrites the keys of a job document to their canonical spelling. Returns the unknown keys found,
/// each with its path (`Tasks[0].Engin`).
pub fn canonicalize_job(v: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    walk(v, Shape::Job, "", &mut unknown);
    unknown
}

fn walk(v: &mut Value, shape: Shape, path: &str, unknown: &mut Vec<String>) {
    let table = fields(shape);
    if table.is_empty() {
        return;
    }
    let Value::Object(map) = v else { return };
    let old = std::mem::take(map);
    let mut out = Map::new();
    for (k, mut val) in old {
        if val.is_null() {
            continue;
        }
        let lower = k.to_ascii_lowercase();
        let found = table
            .iter()
            .find(|(name, _, _)| name.to_ascii_lowercase() == lower)
            .or_else(|| alias(shape, &lower).and_then(|a| table.iter().find(|(n, _, _)| *n == a)));
        match found {
            Some((name, sub, list)) => {
                let sub_path = if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                };
                if *list {
                    if let Value::Array(items) = &mut val {
                        for (i, item) in items.iter_mut().enumerate() {
                            walk(item, *sub, &format!("{sub_path}[{i}]"), unknown);
                        }
                    }
                } else {
                    walk(&mut val, *sub, &sub_path, unknown);
                }
                out.insert(name.to_string(), val);
            }
            None => {
                unknown.push(if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                });
                // Kept where it was (the typed parse ignores it), so a second pass reports it too.
                out.insert(k, val);
            }
        }
    }
    *map = out;
}

/// The closest known field name, for "did you mean" hints.
pub fn suggest(path: &str) -> Option<&'static str> {
    let key = path.rsplit('.').next().unwrap_or(path).to_ascii_lowercase();
    let all = [
        "Name",
        "Namespace",
        "Type",
        "Priority",
        "Count",
        "Constraints",
        "Meta",
        "Labels",
        "Tasks",
        "Engine",
        "Publisher",
        "Env",
        "InputSources",
        "ResultPaths",
        "Resources",
        "Network",
        "Timeouts",
        "Params",
        "Source",
        "Alias",
        "Target",
        "Path",
        "CPU",
        "Memory",
        "Disk",
        "GPU",
        "ExecutionTimeout",
        "QueueTimeout",
        "TotalTimeout",
        "Key",
        "Operator",
        "Values",
        "Domains",
    ];
    all.iter()
        .map(|c| (edit_distance(&key, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_any_case_become_canonical_but_user_maps_keep_theirs() {
        let mut v = serde_json::json!({
            "name": "x", "TYPE": "batch",
            "labels": {"myKey": "v"},
            "tasks": [{"name": "main", "engine": {"type": "wasm", "params": {"entryModule": "/m"}},
                       "resourcesConfig": {"cpu": "1"}, "inputsources": [{"target": "/m", "source": {"type": "inline"}}]}]
        });
        let unknown = canonicalize_job(&mut v);
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(v["Labels"]["myKey"], "v");
        assert_eq!(v["Tasks"][0]["Engine"]["Params"]["entryModule"], "/m");
        assert_eq!(v["Tasks"][0]["Resources"]["CPU"], "1");
        assert_eq!(v["Tasks"][0]["InputSources"][0]["Source"]["Type"], "inline");
    }

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        let mut v = serde_json::json!({"Name": "x", "Tasks": [{"Engin": {}}]});
        assert_eq!(canonicalize_job(&mut v), vec!["Tasks[0].Engin".to_string()]);
        assert_eq!(suggest("Tasks[0].Engin"), Some("Engine"));
    }
}
