//! Templated job specs, as `bacalhau job run` reads them: the spec is a Go `text/template` whose
//! data is the `-V/--template-vars key=value` pairs and the environment variables whose names match
//! `-E/--template-envs REGEX`, rendered with `missingkey=error`. Caravel renders the part of that
//! language specs use — `{{ .name }}` (with `{{-`/`-}}` trimming the space beside it) and
//! `{{ "{{" }}`-style string literals — and refuses any other action by name instead of guessing.
//! `--no-template` sends the text as it is.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// The template's data: `-V` pairs over matching environment variables (`-V` wins).
pub fn template_data(
    vars: &[String],
    env_pattern: Option<&str>,
    env: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    if let Some(p) = env_pattern {
        let re = regex::Regex::new(&format!("^(?:{p})$"))
            .with_context(|| format!("--template-envs {p:?} is not a regular expression"))?;
        for (k, v) in env.filter(|(k, _)| re.is_match(k)) {
            data.insert(k, v);
        }
    }
    for kv in vars.iter().flat_map(|v| v.split(',')) {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                data.insert(k.trim().to_string(), v.to_string());
            }
            _ => bail!("--template-vars {kv:?}: write key=value"),
        }
    }
    Ok(data)
}

/// Renders `text` with `data`; a key that is not in `data` is an error naming it (and the line).
pub fn render(text: &str, data: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        let line = text[..text.len() - rest.len() + start]
            .matches('\n')
            .count()
            + 1;
        let end = after
            .find("}}")
            .with_context(|| format!("line {line}: a template action opened with {{{{ is never closed with }}}}; use --no-template to send the spec as it is"))?;
        let mut action = &after[2..end];
        let trim_left = action.starts_with('-');
        let trim_right = action.ends_with('-');
        if trim_left {
            action = &action[1..];
        }
        if trim_right {
            action = &action[..action.len() - 1];
        }
        out.push_str(if trim_left { before.trim_end() } else { before });
        let action = action.trim();
        if let Some(key) = action.strip_prefix('.') {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!(
                    "line {line}: {{{{ {action} }}}} is not a value Caravel renders; write {{{{ .name }}}} (or use --no-template)"
                );
            }
            match data.get(key) {
                Some(v) => out.push_str(v),
                None => bail!(
                    "line {line}: map has no entry for key {key:?}: give it with -V {key}=VALUE, or export it and pass -E '{key}'"
                ),
            }
        } else if let Some(lit) = action
            .strip_prefix('"')
            .and_then(|a| a.strip_suffix('"'))
            .filter(|l| !l.contains('"'))
        {
            out.push_str(lit);
        } else {
            let word = action.split_whitespace().next().unwrap_or_default();
            bail!(
                "line {line}: the template action {word:?} is not supported (Caravel renders {{{{ .name }}}} values only); use --no-template to send the spec as it is"
            );
        }
        rest = &after[end + 2..];
        if trim_right {
            rest = rest.trim_start();
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_substituted_and_trim_markers_eat_the_space_beside_them() {
        let d = data(&[("name", "wc"), ("count", "3")]);
        assert_eq!(
            render("Name: {{.name}}\nCount: {{ .count }}\n", &d).unwrap(),
            "Name: wc\nCount: 3\n"
        );
        assert_eq!(render("a  {{- .name -}}  b", &d).unwrap(), "awcb");
        assert_eq!(render(r#"x: {{ "{{" }}"#, &d).unwrap(), "x: {{");
        assert_eq!(render("no actions", &d).unwrap(), "no actions");
    }

    #[test]
    fn a_missing_key_or_an_unknown_action_is_an_error_naming_it() {
        let d = data(&[]);
        let e = render("Name: x\nImage: {{ .image }}\n", &d)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("\"image\"") && e.contains("-V image="),
            "{e}"
        );
        let e = render("{{ if .x }}y{{ end }}", &d).unwrap_err().to_string();
        assert!(
            e.contains("\"if\" is not supported") && e.contains("--no-template"),
            "{e}"
        );
        let e = render("oops {{ .x", &d).unwrap_err().to_string();
        assert!(e.contains("never closed"), "{e}");
    }

    #[test]
    fn data_comes_from_vars_and_matching_environment_variables() {
        let env = vec![
            ("JOB_IMAGE".to_string(), "busybox".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let d = template_data(
            &["count=2,name=a".into(), "JOB_IMAGE=alpine".into()],
            Some("JOB_.*"),
            env.into_iter(),
        )
        .unwrap();
        assert_eq!(
            d,
            data(&[("JOB_IMAGE", "alpine"), ("count", "2"), ("name", "a")])
        );
        assert!(template_data(&["novalue".into()], None, std::iter::empty()).is_err());
        assert!(template_data(&[], Some("("), std::iter::empty()).is_err());
    }
}
