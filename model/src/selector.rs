//! Bacalhau's label selectors — `--constraints` (alias `-s/--selector`), `--labels` filters, the API's
//! `labels=` query — parsed once, here, into `Constraints` (one grammar for the CLI and the API). Terms are separated by commas outside parentheses:
//!
//! ```text
//! region=eu   region==eu   gpu!=true   zone in (a,b)   zone notin (c)   ssd   !spot   cores>4   cores<64
//! ```
//!
//! The operators are written as Bacalhau stores them (`=`, `==`, `!=`, `in`, `notin`, `exists`, `!`,
//! `gt`, `lt`).

use crate::spec::LabelSelectorRequirement;

/// Returns the formatted message as the error.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err(format!($($t)*))
    };
}

const HINT: &str = "write key=value, key!=value, key in (a,b), key notin (a,b), key, !key, key>N or key<N, separated by commas";

/// Parses a selector; an empty one gives no constraints.
pub fn parse_selector(s: &str) -> Result<Vec<LabelSelectorRequirement>, String> {
    split_terms(s)?
        .into_iter()
        .map(|t| parse_term(t.trim()))
        .collect()
}

/// Splits at the commas that are not inside `( … )`, leaving out empty terms.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => bail!("selector {s:?} closes a parenthesis it never opened"),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        bail!("selector {s:?} leaves a parenthesis open");
    }
    terms.push(&s[start..]);
    Ok(terms.into_iter().filter(|t| !t.trim().is_empty()).collect())
}

fn parse_term(t: &str) -> Result<LabelSelectorRequirement, String> {
    let req = |key: &str, op: &str, values: Vec<String>| -> Result<_, String> {
        let key = key.trim();
        if key.is_empty() || !key.chars().all(is_key_char) {
            bail!("constraint {t:?} has no valid label key; {HINT}");
        }
        if values.iter().any(|v| v.is_empty()) && op != "in" && op != "notin" {
            bail!("constraint {t:?} has an empty value; {HINT}");
        }
        Ok(LabelSelectorRequirement {
            key: key.to_string(),
            operator: op.to_string(),
            values,
        })
    };
    // Set operators first: their values may contain '=' or '!'.
    for (word, op) in [(" notin ", "notin"), (" in ", "in")] {
        if let Some((key, rest)) = t.split_once(word) {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| {
                    format!("constraint {t:?}: put the values in parentheses; {HINT}")
                })?;
            let values: Vec<String> = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if values.is_empty() {
                bail!("constraint {t:?} lists no values; {HINT}");
            }
            return req(key, op, values);
        }
    }
    if let Some(key) = t.strip_prefix('!') {
        return req(key, "!", vec![]);
    }
    for (sym, op) in [
        ("!=", "!="),
        ("==", "=="),
        ("=", "="),
        (">", "gt"),
        ("<", "lt"),
    ] {
        if let Some((key, value)) = t.split_once(sym) {
            let value = value.trim().to_string();
            if matches!(op, "gt" | "lt") && value.parse::<f64>().is_err() {
                bail!("constraint {t:?} compares with {value:?}, which is not a number");
            }
            return req(key, op, vec![value]);
        }
    }
    req(t, "exists", vec![])
}

/// Label keys as Kubernetes allows them (an optional `prefix/` and a name).
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_./".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(s: &str) -> Vec<(String, String, Vec<String>)> {
        parse_selector(s)
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.operator, r.values))
            .collect()
    }

    fn one(k: &str, op: &str, vals: &[&str]) -> (String, String, Vec<String>) {
        (
            k.into(),
            op.into(),
            vals.iter().map(|v| v.to_string()).collect(),
        )
    }

    #[test]
    fn equality_terms_become_one_constraint_each() {
        assert_eq!(
            ops("region=eu,gpu!=true, tier==gold"),
            vec![
                one("region", "=", &["eu"]),
                one("gpu", "!=", &["true"]),
                one("tier", "==", &["gold"]),
            ]
        );
    }

    #[test]
    fn set_existence_and_comparison_terms_follow_kubernetes() {
        assert_eq!(
            ops("zone in (a, b),zone notin (c),ssd,!spot,cores>4,mem<64"),
            vec![
                one("zone", "in", &["a", "b"]),
                one("zone", "notin", &["c"]),
                one("ssd", "exists", &[]),
                one("spot", "!", &[]),
                one("cores", "gt", &["4"]),
                one("mem", "lt", &["64"]),
            ]
        );
        assert!(ops("").is_empty());
    }

    #[test]
    fn malformed_selectors_are_refused_with_a_hint() {
        for bad in [
            "zone in a,b",
            "zone in ()",
            "=eu",
            "region=",
            "cores>many",
            "a=(b",
            "a=b)",
            "bad key=1",
        ] {
            let e = parse_selector(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("constraint") || e.starts_with("selector"),
                "{bad}: {e}"
            );
        }
    }
}
