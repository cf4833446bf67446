//! What a new version of a job changes: both specs as YAML (without the fields the orchestrator
//! sets), compared line by line — what `job run --dry-run` and `PUT /jobs/diff` show.

use crate::spec::Job;

/// The part of a job its author wrote: server-owned fields and reserved Meta left out (what a
/// rerun submits again).
pub fn user_spec_value(job: &Job) -> serde_json::Value {
    let mut v = serde_json::to_value(job).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in crate::parse::SERVER_OWNED_KEYS {
            o.remove(*k);
        }
        if let Some(serde_json::Value::Object(meta)) = o.get_mut("Meta") {
            meta.retain(|k, _| !k.starts_with(crate::RESERVED_META_PREFIX));
        }
    }
    v
}

/// [`user_spec_value`] as YAML for people, long strings shown by size and digest.
pub fn user_spec_yaml(job: &Job) -> String {
    let mut v = user_spec_value(job);
    elide_long_strings(&mut v);
    serde_norway::to_string(&v).unwrap_or_default()
}

/// Strings longer than this (inline modules and data) are shown by size and digest, so a diff
/// stays readable and still shows that they changed.
const LONGEST_SHOWN: usize = 256;

fn elide_long_strings(v: &mut serde_json::Value) {
    use sha2::Digest;
    match v {
        serde_json::Value::String(s) if s.len() > LONGEST_SHOWN => {
            let digest = sha2::Sha256::digest(s.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            *s = format!("<{} bytes, sha256 {hex}…>", s.len());
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(elide_long_strings),
        serde_json::Value::Object(m) => m.values_mut().for_each(elide_long_strings),
        _ => {}
    }
}

/// Longest inputs compared line by line; longer ones are shown as replaced whole.
const MAX_DIFF_LINES: usize = 4000;

/// A line diff: ` ` kept, `-` only in `old`, `+` only in `new`; empty when they are equal.
pub fn line_diff(old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut out = String::new();
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        for l in &a {
            out.push_str(&format!("-{l}\n"));
        }
        for l in &b {
            out.push_str(&format!("+{l}\n"));
        }
        return out;
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_are_marked_and_equal_texts_give_nothing() {
        assert_eq!(line_diff("a\nb\n", "a\nb\n"), "");
        assert_eq!(line_diff("a\nb\nc\n", "a\nx\nc\n"), " a\n-b\n+x\n c\n");
        assert_eq!(line_diff("", "n\n"), "+n\n");
    }

    #[test]
    fn the_user_spec_leaves_out_what_the_orchestrator_sets() {
        let mut j = Job {
            id: "j-1".into(),
            name: "x".into(),
            version: 3,
            ..Default::default()
        };
        j.meta.insert(
            format!("{}orchestrator.id", crate::RESERVED_META_PREFIX),
            "o".into(),
        );
        j.meta.insert("blob".into(), "x".repeat(1000));
        let y = user_spec_yaml(&j);
        assert!(y.contains("Name: x"), "{y}");
        assert!(y.contains("blob: <1000 bytes, sha256 "), "{y}");
        assert!(
            !y.contains("j-1") && !y.contains("Version") && !y.contains("orchestrator.id"),
            "{y}"
        );
    }
}
