#!/usr/bin/env python3
"""Checks that the Grafana dashboard and the Prometheus rules only use metrics Caravel exports.

    python3 deploy/grafana/check_metrics.py [--promtool]

Reads the metric families registered in the Rust sources (`….register("name", "help", family)` in
src/ and compute/src/; every registry is prefixed `caravel_`), works out each family's type from
its declaration (counter → `NAME_total`; histogram → `NAME_bucket`/`_sum`/`_count`; gauge → `NAME`)
and its label names from its label-set struct, then checks every PromQL expression of
deploy/grafana/caravel-dashboard.json and deploy/prometheus/rules.yaml:

- each `caravel_…` name is an exported sample name (so `caravel_raft_is_leader_total` or
  `caravel_raft_write_seconds_bucket` are errors);
- each label in a `caravel_…{…}` selector is one of that family's labels or a target label
  (job, instance, cluster; le on buckets);
- each recording-rule name used (`level:metric:op`) is recorded in rules.yaml.

With --promtool, every dashboard expression is also parsed by `promtool check rules` (Grafana
variables replaced by plain values). Exit status: 0 when everything holds, 1 otherwise.
Needs python3 and PyYAML (Debian: python3-yaml).
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SOURCES = [ROOT / "src", ROOT / "compute" / "src"]
DASHBOARD = HERE / "caravel-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
TARGET_LABELS = {"job", "instance", "cluster"}

REGISTER = re.compile(
    r'\.register\(\s*"([a-z0-9_]+)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*'
    r"([A-Za-z_][A-Za-z0-9_.]*?)(?:\.clone\(\))?\s*,?\s*\)",
    re.S,
)


def resolve_type(text, ident, depth=0):
    """The declared type (or initialiser) of a struct field or local `ident` in `text`."""
    if depth > 5:
        return None
    # A field is declared one per line (`pub name: Type,`); struct literals (`name: X::default(),`)
    # say nothing about the type, so take the first declaration that names a metric type.
    for field in re.finditer(r"^\s*(?:pub\s+)?" + re.escape(ident) + r"\s*:\s*(.+?),?\s*$", text, re.M):
        if re.search(r"Counter|Gauge|Hist", field.group(1)):
            return field.group(1)
    let = re.search(r"\blet\s+(?:mut\s+)?" + re.escape(ident) + r"\s*(?::[^=]+)?=\s*([^;]+);", text)
    if let:
        value = let.group(1).strip()
        alias = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\.clone\(\)", value)
        return resolve_type(text, alias.group(1), depth + 1) if alias else value
    return None


def label_fields(all_text, type_str):
    """Label names of the label-set struct a Family/HistFamily is keyed by."""
    m = re.search(r"(?:Family|HistFamily)\s*(?:::)?\s*<\s*([A-Za-z_][A-Za-z0-9_]*)", type_str)
    if not m:
        return set()
    struct = re.search(r"struct\s+" + m.group(1) + r"\s*\{([^}]*)\}", all_text)
    if not struct:
        return None
    return {f.replace("r#", "") for f in re.findall(r"pub\s+((?:r#)?[a-z_][a-z0-9_]*)\s*:", struct.group(1))}


def exported_families():
    """{sample name: (family, kind, label names)} of every registered family."""
    files = [p for d in SOURCES for p in sorted(d.rglob("*.rs"))]
    all_text = "\n".join(p.read_text() for p in files)
    samples, problems = {}, []
    for path in files:
        text = path.read_text()
        for name, expr in REGISTER.findall(text):
            ident = expr.split(".")[-1]
            ty = resolve_type(text, ident)
            where = f"{path.relative_to(ROOT)}: family {name!r} ({expr})"
            if ty is None:
                problems.append(f"{where}: cannot find its declaration")
                continue
            kind = "histogram" if "Hist" in ty else "counter" if "Counter" in ty else "gauge" if "Gauge" in ty else None
            if kind is None:
                problems.append(f"{where}: unknown metric type {ty!r}")
                continue
            labels = label_fields(all_text, ty)
            if labels is None:
                problems.append(f"{where}: cannot find the label struct of {ty!r}")
                continue
            family = "caravel_" + name
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}[kind]
            for s in suffixes:
                samples[family + s] = (family, kind, labels | ({"le"} if s == "_bucket" else set()))
    if not samples:
        problems.append("no metric registrations found in " + ", ".join(str(d) for d in SOURCES))
    return samples, problems


def dashboard_exprs():
    d = json.loads(DASHBOARD.read_text())
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(d.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"dashboard panel {p.get('title')!r}", t["expr"]))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            out.append((f"dashboard variable {v['name']!r}", q))
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"dashboard annotation {a.get('name')!r}", a["expr"]))
    return out


def rule_exprs():
    doc = yaml.safe_load(RULES.read_text())
    exprs, recorded = [], set()
    for g in doc["groups"]:
        for r in g["rules"]:
            name = r.get("record") or r.get("alert")
            if "record" in r:
                recorded.add(r["record"])
            exprs.append((f"rules.yaml {name}", str(r["expr"])))
    return exprs, recorded


STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"\b(caravel_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_:]*[a-z0-9_]\b")


def check_expr(where, expr, samples, recorded):
    problems = []
    used = set(RECORDED.findall(STRINGS.sub('""', expr)))
    for name in sorted(used - recorded):
        problems.append(f"{where}: recording rule {name} is not recorded in rules.yaml")
    bare = RECORDED.sub(" ", STRINGS.sub('""', expr))
    for name in sorted(set(re.findall(r"\bcaravel_[a-z0-9_]+\b", bare))):
        if name not in samples:
            problems.append(f"{where}: {name} is not a metric Caravel exports")
    for name, body in SELECTOR.findall(RECORDED.sub(" ", expr)):
        if name not in samples:
            continue
        allowed = samples[name][2] | TARGET_LABELS
        for label in MATCHER.findall(body):
            if label not in allowed:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(samples[name][2]) or 'none'})")
    return problems


def promtool_parse(exprs):
    """Parses every dashboard expression with promtool (Grafana variables replaced)."""
    tool = shutil.which("promtool")
    if not tool:
        return ["--promtool: promtool not found (Debian: apt-get install prometheus)"]
    subst = [
        (r"^label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$", r"\1"),  # Grafana's, not PromQL
        (r"\$__rate_interval|\$__interval|\$__range", "5m"),
        (r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*"),
    ]
    rules = []
    for i, (where, e) in enumerate(exprs):
        for pat, rep in subst:
            e = re.sub(pat, rep, e)
        rules.append({"record": f"dashboard_expr_{i}", "expr": e})
    with tempfile.TemporaryDirectory() as d:
        f = pathlib.Path(d) / "dashboard_rules.yaml"
        f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        r = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True)
        if r.returncode != 0:
            return ["promtool could not parse a dashboard expression:\n" + r.stdout + r.stderr]
    return []


def main(argv):
    if any(a not in ("--promtool",) for a in argv):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    samples, problems = exported_families()
    rexprs, recorded = rule_exprs()
    dexprs = dashboard_exprs()
    for where, e in rexprs + dexprs:
        problems += check_expr(where, e, samples, recorded)
    if "--promtool" in argv:
        problems += promtool_parse(dexprs)
    families = {v[0] for v in samples.values()}
    if problems:
        for p in problems:
            print("ERROR:", p)
        print(f"check_metrics: {len(problems)} problem(s)")
        return 1
    print(f"check_metrics: OK: {len(dexprs)} dashboard and {len(rexprs)} rule expressions use only "
          f"the {len(families)} metric families registered in the Rust sources")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
