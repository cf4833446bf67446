//! The two text formats of `/metrics`, chosen by the scraper's `Accept` header.
//!
//! prometheus-client encodes OpenMetrics 1.0 (a counter's family is named without `_total`, `# UNIT`
//! lines, a closing `# EOF`). Prometheus asks for it by `Accept` and gets it as is. Everything else
//! (curl, `promtool check metrics`, older scrapers, anything that sends no `Accept`) gets the
//! Prometheus text format 0.0.4, rewritten from the same body: a counter's `# HELP`/`# TYPE` name the
//! sample (`…_total`), info families become gauges named `…_info`, `unknown` becomes `untyped`, and
//! `# UNIT`, `# EOF`, `_created` samples and exemplars go, so each body matches the content type it is
//! served with.

/// The format of one scrape's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
    /// `text/plain; version=0.0.4`
    Text,
}

impl Format {
    /// Picks OpenMetrics when the client accepts it at least as readily as plain text, else text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The body for this format from prometheus-client's OpenMetrics encoding.
    pub fn body(self, openmetrics: String) -> String {
        match self {
            Format::OpenMetrics => openmetrics,
            Format::Text => to_text_format(&openmetrics),
        }
    }
}

/// The answer to a scrape: the body in the format the request's `Accept` asks for, with its type.
pub fn respond(headers: &axum::http::HeaderMap, openmetrics: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let format = Format::negotiate(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    (
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        format.body(openmetrics),
    )
        .into_response()
}

/// Rewrites an OpenMetrics 1.0 text body into the Prometheus text format 0.0.4.
pub fn to_text_format(openmetrics: &str) -> String {
    // Families by type first: a family's HELP line comes before its TYPE line.
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let renamed = |name: &str| -> (String, &'static str) {
        match types.get(name).copied().unwrap_or("unknown") {
            "counter" => (format!("{name}_total"), "counter"),
            "info" => (format!("{name}_info"), "gauge"),
            "gauge" | "stateset" => (name.to_string(), "gauge"),
            "histogram" => (name.to_string(), "histogram"),
            "summary" => (name.to_string(), "summary"),
            _ => (name.to_string(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kind, name, tail) = (
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default(),
            );
            let (name, ty) = renamed(name);
            match kind {
                "TYPE" => out.push_str(&format!("# TYPE {name} {ty}\n")),
                // 0.0.4 knows only `\\` and `\n` as escapes in HELP; OpenMetrics also escapes `"`.
                "HELP" => out.push_str(&format!("# HELP {name} {}\n", tail.replace("\\\"", "\""))),
                _ => {} // EOF, UNIT
            }
            continue;
        }
        let sample = strip_exemplar(line);
        let metric = sample.split(['{', ' ']).next().unwrap_or_default();
        let created_of_counter = metric
            .strip_suffix("_created")
            .is_some_and(|family| types.get(family) == Some(&"counter"));
        if !sample.is_empty() && !created_of_counter {
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// A sample line without its exemplar (` # {labels} value`), which 0.0.4 has no place for. The
/// marker is looked for outside quoted label values only.
fn strip_exemplar(line: &str) -> &str {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted && line[..i].ends_with(' ') => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "\
# HELP caravel_api_requests API requests by route and status.
# TYPE caravel_api_requests counter
caravel_api_requests_total{method=\"GET\",route=\"/a # b\",status=\"200\"} 3 # {trace=\"x\"} 1.0
caravel_api_requests_created{method=\"GET\",route=\"/a # b\",status=\"200\"} 1700000000.0
# HELP caravel_raft_term The \\\"current\\\" term.
# TYPE caravel_raft_term gauge
caravel_raft_term 4
# HELP caravel_build Build facts.
# TYPE caravel_build info
caravel_build_info{version=\"0.1.0\"} 1
# HELP caravel_write_seconds Write latency.
# TYPE caravel_write_seconds histogram
# UNIT caravel_write_seconds seconds
caravel_write_seconds_sum 0.5
caravel_write_seconds_count 2
caravel_write_seconds_bucket{le=\"+Inf\"} 2
# EOF
";

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        let prometheus_2_42 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::negotiate(Some(prometheus_2_42)),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.2")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text,
            "q=0 means not acceptable"
        );
        assert!(
            Format::Text
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
        assert!(
            Format::OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text; version=1.0.0")
        );
    }

    #[test]
    fn text_format_names_counters_by_their_samples_and_drops_openmetrics_only_lines() {
        let text = to_text_format(OPENMETRICS);
        assert_eq!(
            text,
            "\
# HELP caravel_api_requests_total API requests by route and status.
# TYPE caravel_api_requests_total counter
caravel_api_requests_total{method=\"GET\",route=\"/a # b\",status=\"200\"} 3
# HELP caravel_raft_term The \"current\" term.
# TYPE caravel_raft_term gauge
caravel_raft_term 4
# HELP caravel_build_info Build facts.
# TYPE caravel_build_info gauge
caravel_build_info{version=\"0.1.0\"} 1
# HELP caravel_write_seconds Write latency.
# TYPE caravel_write_seconds histogram
caravel_write_seconds_sum 0.5
caravel_write_seconds_count 2
caravel_write_seconds_bucket{le=\"+Inf\"} 2
"
        );
        assert_eq!(Format::OpenMetrics.body(OPENMETRICS.into()), OPENMETRICS);
    }
}
