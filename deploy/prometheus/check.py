#!/usr/bin/env python3
"""Checks the Prometheus files of this folder.

    python3 deploy/prometheus/check.py        # exit 0: all hold; 1: problems (listed)

- every alert in rules.yaml has a `for`, labels.severity (critical or warning), and annotations
  summary, description and runbook_url = docs/operations.md#<anchor> of a heading that exists;
- every alert fires in at least one test of rules_test.yaml (exp_alerts not empty), and the tests
  include cases where alerts must not fire;
- with promtool on PATH (Debian: apt-get install prometheus): `promtool check rules rules.yaml`,
  `promtool test rules rules_test.yaml`, and `promtool check config` on a temporary copy of
  scrape.yaml and rules.yaml with a dummy secrets/prometheus.key (promtool insists that
  credentials files exist; the real key is never in the repository).
Needs python3 and PyYAML (Debian: python3-yaml).
"""

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
OPERATIONS = HERE.parent.parent / "docs" / "operations.md"


def anchors(markdown):
    """GitHub's anchors of the headings of a Markdown text."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def main():
    problems = []
    rules = yaml.safe_load((HERE / "rules.yaml").read_text())
    tests = yaml.safe_load((HERE / "rules_test.yaml").read_text())
    known = anchors(OPERATIONS.read_text()) if OPERATIONS.exists() else set()
    if not known:
        problems.append(f"{OPERATIONS}: missing or without headings")
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for a in alerts:
        name = a["alert"]
        if not a.get("for"):
            problems.append(f"{name}: no `for`")
        if (a.get("labels") or {}).get("severity") not in ("critical", "warning"):
            problems.append(f"{name}: labels.severity must be critical or warning")
        ann = a.get("annotations") or {}
        for k in ("summary", "description", "runbook_url"):
            if not ann.get(k):
                problems.append(f"{name}: no annotations.{k}")
        m = re.fullmatch(r"(?:.*/)?docs/operations\.md#([\w-]+)", ann.get("runbook_url", ""))
        if not m:
            problems.append(f"{name}: runbook_url {ann.get('runbook_url')!r} is not docs/operations.md#ANCHOR")
        elif m.group(1) not in known:
            problems.append(f"{name}: runbook_url anchor #{m.group(1)} is no heading of docs/operations.md")
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test") or []]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    for a in alerts:
        if a["alert"] not in fired:
            problems.append(f"{a['alert']}: fires in no test of rules_test.yaml")
    if not quiet:
        problems.append("rules_test.yaml: no case checks that an alert does not fire")
    unknown = {c["alertname"] for c in cases} - {a["alert"] for a in alerts}
    for u in sorted(unknown):
        problems.append(f"rules_test.yaml: tests {u}, which rules.yaml does not define")

    promtool = shutil.which("promtool")
    if promtool:
        def run(*args, cwd=HERE):
            r = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"promtool {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        run("check", "rules", "rules.yaml")
        run("test", "rules", "rules_test.yaml")
        with tempfile.TemporaryDirectory() as d:
            for f in ("scrape.yaml", "rules.yaml"):
                shutil.copy(HERE / f, d)
            (pathlib.Path(d) / "secrets").mkdir()
            (pathlib.Path(d) / "secrets" / "prometheus.key").write_text("dummy-key-for-promtool-check-config\n")
            run("check", "config", "scrape.yaml", cwd=d)
    else:
        print("note: promtool not found (apt-get install prometheus): promtool checks skipped")

    for p in problems:
        print("ERROR:", p)
    if problems:
        print(f"check.py: {len(problems)} problem(s)")
        return 1
    print(f"check.py: OK: {len(alerts)} alerts, each with for/severity/summary/description/runbook_url, "
          f"each firing in rules_test.yaml ({len(quiet)} also checked not firing)"
          + ("; promtool check config, check rules, test rules passed" if promtool else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
