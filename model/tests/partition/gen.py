#!/usr/bin/env python3
"""Writes expected.json: for each partitioning rule of Bacalhau's pkg/s3/partitioning.go, the
partition each object key lands in, computed here independently of Caravel's Rust code (FNV-1a 32
and the rules as Bacalhau's Go source states them). Run: python3 gen.py > expected.json"""
import json, re, datetime

def fnv1a(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode():
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h

def rel(key, prefix):
    prefix = prefix.strip().rstrip("*")
    k = key[len(prefix):] if key.startswith(prefix) else key
    return k[1:] if k.startswith("/") else k

def part(rule, key, prefix, count):
    kind = rule["Type"]
    r = rel(key, prefix)
    if kind == "object":
        return fnv1a(key) % count
    if kind == "regex":
        m = re.search(rule["Pattern"], r)
        if not m or m.group(0) == "":
            return 0
        groups = [g for g in m.groups() if g]
        return fnv1a("\x1f".join(groups) if groups else m.group(0)) % count
    if kind == "substring":
        if len(r) < rule["EndIndex"]:
            return 0
        return fnv1a(r[rule["StartIndex"]:rule["EndIndex"]]) % count
    if kind == "date":
        go, py = rule["DateFormat"], rule["_py"]
        head = r[: len(go)]
        try:
            t = datetime.datetime.strptime(head, py)
        except ValueError:
            return 0
        return fnv1a(t.strftime(py)) % count
    raise ValueError(kind)

keys = [
    "logs/2024-01-05/app-a.log", "logs/2024-01-05/app-b.log", "logs/2024-01-06/app-a.log",
    "logs/2024-02-29/app-c.log", "logs/2023-02-29/bad.log", "logs/readme.txt",
    "logs/2024-03-10/app-a.log", "logs/2024-03-11/app-b.log", "logs/x", "logs/2024-12-31/z.log",
    "logs/user-0042/data.csv", "logs/user-0007/data.csv", "logs/user-1234/more.csv",
]
rules = [
    {"Type": "object"},
    {"Type": "regex", "Pattern": r"^(\d{4}-\d{2})-\d{2}/"},
    {"Type": "regex", "Pattern": r"user-(\d+)/(\w+)"},
    {"Type": "regex", "Pattern": r"app-[a-z]"},
    {"Type": "substring", "StartIndex": 0, "EndIndex": 7},
    {"Type": "date", "DateFormat": "2006-01-02", "_py": "%Y-%m-%d"},
]
cases = []
for count in (2, 3, 5):
    for rule in rules:
        spec = {k: v for k, v in rule.items() if not k.startswith("_")}
        cases.append({"Partition": spec, "Key": "logs/", "Count": count,
                      "Expected": {k: part(rule, k, "logs/", count) for k in keys}})
print(json.dumps(cases, indent=1, sort_keys=True))
