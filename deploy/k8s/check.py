#!/usr/bin/env python3
"""Strict offline checks of the Kubernetes manifests in this folder.

    python3 deploy/k8s/check.py [DIR]         # exit 0: all checks hold; 1: problems (listed); 2: usage
    python3 deploy/k8s/check.py --self-test   # also proves each check fails on a broken copy

Needs python3 and PyYAML only (Debian: python3-yaml; pip: pyyaml). No cluster is contacted.

What it checks, for every multi-document *.yaml in DIR (kustomization.yaml: only that it lists
every manifest):
- each document parses, has apiVersion, kind, metadata.name, and (namespaced kinds) a namespace
  that is defined here; no two objects share kind/namespace/name;
- workloads: the selector matches the pod template's labels; a StatefulSet's serviceName is a
  headless Service here selecting its pods (publishing not-ready addresses, with
  podManagementPolicy Parallel: Caravel members are ready only once a quorum runs);
- pods: volume names unique and each used; every volumeMount names a volume or claim template;
  ConfigMaps, Secrets (and their listed keys), ServiceAccounts exist in the pod's namespace; every
  $(VAR) in command/args/env is defined earlier in the container; probe ports exist on the
  container (TCP); hardening (runAsNonRoot for app containers, allowPrivilegeEscalation false,
  readOnlyRootFilesystem, capabilities drop ALL, a seccomp profile), resources (cpu and memory
  requests, a memory limit), and no :latest image that the kubelet would try to pull;
- Services, PodDisruptionBudgets and NetworkPolicies select at least one pod template in their
  namespace; every Service targetPort / NetworkPolicy port exists on each selected pod with the
  same protocol; namespaceSelectors name namespaces defined here; a PodDisruptionBudget over
  Caravel orchestrators never allows losing the Raft quorum;
- `caravel serve` containers, against the Rust sources when they are found (../../cli/src/lib.rs,
  ../../model/src/config.rs): every flag exists; every key of the mounted config file and every
  CARAVEL_* variable is a real configuration key; --node-id comes from the pod or node name;
  --peers is exactly <pod>@<pod>.<headless service>.<namespace>.svc:<raft port> for each replica;
  --orchestrators point at the members' compute port; --metrics-addr is a container port; every
  file the config or flags name (certificates, keys, API key files, the join token file) lies in
  a mounted volume, and for Secrets/ConfigMaps the key exists (for each pod name).
"""

import copy
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLI_SOURCE = ROOT / "cli" / "src" / "lib.rs"
CONFIG_SOURCE = ROOT / "model" / "src" / "config.rs"

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "PriorityClass", "CustomResourceDefinition"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
FIELD_PATHS = {"metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
               "status.hostIP", "status.podIP", "status.podIPs"}
USER_KEYS = {"alias", "username", "password", "passwordfile", "apikey", "apikeyfile", "capabilities"}
FILE_KEYS = ["TLS.CA", "TLS.Cert", "TLS.Key", "TLS.CAKey", "API.TLS.CertFile", "API.TLS.KeyFile",
             "Compute.Auth.TokenFile"]
FILE_FLAGS = {"--tls-ca": "TLS.CA", "--tls-cert": "TLS.Cert", "--tls-key": "TLS.Key"}


# ------------------------------------------------------------------------------------- loading

def load(directory):
    """[(file, index, doc)] of every manifest document; problems for files that do not parse."""
    docs, problems, kustomizations = [], [], []
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        problems.append(f"{directory}: no *.yaml manifests")
    for path in files:
        try:
            parsed = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as e:
            problems.append(f"{path.name}: not valid YAML: {e}")
            continue
        for i, d in enumerate(parsed):
            if d is None:
                continue
            if not isinstance(d, dict):
                problems.append(f"{path.name}[{i}]: a document must be a mapping")
            elif d.get("kind") == "Kustomization":
                kustomizations.append((path, d))
            else:
                docs.append((path.name, i, d))
    for path, k in kustomizations:
        listed = set(k.get("resources") or [])
        for f in files:
            if f != path and f.name not in listed:
                problems.append(f"{path.name}: does not list {f.name}")
        for r in sorted(listed):
            if not (directory / r).exists():
                problems.append(f"{path.name}: lists {r}, which does not exist")
    return docs, problems


# ------------------------------------------------------------------------------------- helpers

def matches(selector, labels):
    """Whether a label selector (matchLabels/matchExpressions, or a plain map) selects labels."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    labels = labels or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e.get("operator"), e.get("key"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))


def kebab(ident):
    return "--" + ident.replace("r#", "").replace("_", "-")


def struct_fields(text, name):
    m = re.search(r"pub struct " + name + r"\s*\{(.*?)\n\}", text, re.S)
    return re.findall(r"pub\s+([a-z_][a-z0-9_]*)\s*:", m.group(1)) if m else None


class Sources:
    """Flags and configuration keys from the Rust sources (None when the sources are absent)."""

    def __init__(self):
        self.flags = self.keys = self.envs = None
        if CLI_SOURCE.exists():
            text = CLI_SOURCE.read_text()
            serve, glob = struct_fields(text, "ServeArgs"), struct_fields(text, "Global")
            if serve and glob:
                self.flags = {kebab(f) for f in serve + glob} | {"-c"}
                # `#[arg(short = 'c', long = "config")]`: the long name of Global.config
                self.flags |= {"--" + n for n in re.findall(r'long\s*=\s*"([a-z-]+)"', text)}
                self.envs = set(re.findall(r'env\s*=\s*"(CARAVEL_[A-Z_]+)"', text))
        if CONFIG_SOURCE.exists():
            text = CONFIG_SOURCE.read_text()
            block = re.search(r"pub const KEYS: &\[\(&str, &str\)\] = &\[(.*?)\n\];", text, re.S)
            if block:
                self.keys = {k.lower(): k for k in re.findall(r'\(\s*"([A-Za-z.]+)"\s*,', block.group(1))}
                self.envs = (self.envs or set()) | {
                    "CARAVEL_" + k.replace(".", "_").upper() for k in self.keys.values()}
                self.envs |= {"CARAVEL_LOG", "CARAVEL_DIR"}


def flatten(doc, prefix=""):
    """Dot paths of a config document's leaves; API.Auth.Users and Labels are leaves."""
    out = {}
    for k, v in (doc or {}).items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and path.lower() not in ("labels",):
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def expand(value, env):
    """Kubernetes $(VAR) expansion with env {name: [possible values]}: every possible result."""
    results = [value]
    for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
        results = [r.replace(f"$({name})", v) for r in results for v in env.get(name, [f"$({name})"])]
    return results


# ------------------------------------------------------------------------------------- checker

class Checker:
    def __init__(self, docs, sources):
        self.docs = docs
        self.src = sources
        self.problems = []
        self.by_kind = {}
        for f, i, d in docs:
            self.by_kind.setdefault(d.get("kind"), []).append((f, i, d))

    def err(self, where, message):
        self.problems.append(f"{where}: {message}")

    def objects(self, kind, namespace=None):
        return [d for _, _, d in self.by_kind.get(kind, [])
                if namespace is None or d["metadata"].get("namespace") == namespace]

    def find(self, kind, namespace, name):
        for d in self.objects(kind, namespace):
            if d["metadata"]["name"] == name:
                return d
        return None

    def templates(self, namespace):
        """(workload, pod template) of every workload in a namespace."""
        return [(w, w["spec"]["template"]) for k in WORKLOADS for w in self.objects(k, namespace)
                if isinstance(w.get("spec", {}).get("template"), dict)]

    # ---------------------------------------------------------------------------------- run
    def run(self):
        if not self.basics():
            return self.problems
        for f, i, d in self.docs:
            where = f"{f}: {d['kind']} {d['metadata'].get('namespace', '-')}/{d['metadata']['name']}"
            kind = d["kind"]
            if kind in WORKLOADS:
                self.workload(where, d)
            elif kind == "Service":
                self.service(where, d)
            elif kind == "PodDisruptionBudget":
                self.pdb(where, d)
            elif kind == "NetworkPolicy":
                self.netpol(where, d)
        return self.problems

    def basics(self):
        seen = set()
        for f, i, d in self.docs:
            where = f"{f}[{i}]"
            meta = d.get("metadata")
            if not d.get("apiVersion") or not d.get("kind") or not isinstance(meta, dict) or not meta.get("name"):
                self.err(where, "needs apiVersion, kind and metadata.name")
                continue
            key = (d["kind"], meta.get("namespace"), meta["name"])
            if key in seen:
                self.err(where, f"{d['kind']} {meta.get('namespace')}/{meta['name']} is defined twice")
            seen.add(key)
        if self.problems:
            return False
        namespaces = {d["metadata"]["name"] for d in self.objects("Namespace")}
        for f, i, d in self.docs:
            ns = d["metadata"].get("namespace")
            where = f"{f}: {d['kind']} {d['metadata']['name']}"
            if d["kind"] in CLUSTER_SCOPED:
                if ns:
                    self.err(where, "is cluster-scoped and must not set metadata.namespace")
            elif not ns:
                self.err(where, "sets no metadata.namespace (every object here names its namespace)")
            elif ns not in namespaces:
                self.err(where, f"namespace {ns!r} is not defined by a Namespace here")
        return True

    # ---------------------------------------------------------------------------------- workloads
    def workload(self, where, w):
        spec, ns = w.get("spec", {}), w["metadata"]["namespace"]
        tpl = spec.get("template") or {}
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        if not matches(spec.get("selector"), labels):
            self.err(where, f"spec.selector {spec.get('selector')} does not match its pod template labels {labels}")
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates") or []}
        if w["kind"] == "StatefulSet":
            svc = self.find("Service", ns, spec.get("serviceName"))
            if svc is None:
                self.err(where, f"serviceName {spec.get('serviceName')!r} is not a Service in namespace {ns}")
            else:
                if (svc.get("spec") or {}).get("clusterIP") != "None":
                    self.err(where, f"serviceName {svc['metadata']['name']!r} is not headless (clusterIP: None)")
                if not matches((svc.get("spec") or {}).get("selector"), labels):
                    self.err(where, f"its headless Service {svc['metadata']['name']!r} does not select its pods")
                if self.is_caravel(tpl, "--orchestrator") and not (svc.get("spec") or {}).get("publishNotReadyAddresses"):
                    self.err(where, f"Service {svc['metadata']['name']!r} must set publishNotReadyAddresses: true "
                                    "(members are ready only once they reach a quorum through these names)")
            if self.is_caravel(tpl, "--orchestrator") and spec.get("podManagementPolicy") != "Parallel":
                self.err(where, "podManagementPolicy must be Parallel (OrderedReady waits for orch-0 to be ready, "
                                "which needs a quorum of running members)")
        self.pod(where, ns, tpl.get("spec") or {}, claims, w)

    def is_caravel(self, tpl, role=None):
        for c in ((tpl.get("spec") or {}).get("containers") or []):
            words = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
            # `command: [caravel]` + args, or the image's entrypoint with args starting at `serve`.
            runs = bool(words) and (words[0].endswith("caravel") or (not c.get("command") and words[0] == "serve"))
            if runs and "serve" in words and (role is None or role in words):
                return True
        return False

    def pod(self, where, ns, ps, claims, workload):
        volumes = {}
        for v in ps.get("volumes") or []:
            if v["name"] in volumes:
                self.err(where, f"volume {v['name']!r} is defined twice")
            volumes[v["name"]] = v
        overlap = claims & set(volumes)
        if overlap:
            self.err(where, f"volumes {sorted(overlap)} are also volumeClaimTemplates")
        used = set()
        sa = ps.get("serviceAccountName")
        if sa and sa != "default" and self.find("ServiceAccount", ns, sa) is None:
            self.err(where, f"serviceAccountName {sa!r} is not a ServiceAccount in namespace {ns}")
        for name, v in volumes.items():
            self.volume_refs(where, ns, name, v)
        sc_pod = ps.get("securityContext") or {}
        containers = [(c, False) for c in ps.get("initContainers") or []] + [(c, True) for c in ps.get("containers") or []]
        if not ps.get("containers"):
            self.err(where, "has no containers")
        for c, app in containers:
            cw = f"{where} container {c.get('name')!r}"
            mounts = set()
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes and m["name"] not in claims:
                    self.err(cw, f"volumeMount {m['name']!r} names no volume or volumeClaimTemplate")
                if m["mountPath"] in mounts:
                    self.err(cw, f"mountPath {m['mountPath']} is used twice")
                mounts.add(m["mountPath"])
                used.add(m["name"])
            env = self.container_env(cw, ns, c)
            self.ports_and_probes(cw, c)
            self.hardening(cw, c, sc_pod, app)
            if app and self.is_caravel({"spec": {"containers": [c]}}):
                self.caravel(cw, ns, c, env, volumes, workload)
        for name in sorted((set(volumes) | claims) - used):
            self.err(where, f"volume {name!r} is mounted by no container")

    def volume_refs(self, where, ns, name, v):
        sources = [v] + [s for s in ((v.get("projected") or {}).get("sources") or [])]
        for s in sources:
            for kind, field, ref in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName"),
                                     ("Secret", "secret", "name")):
                block = s.get(field)
                if not isinstance(block, dict) or ref not in block:
                    continue
                obj = self.find(kind, ns, block[ref])
                if obj is None:
                    if not block.get("optional"):
                        self.err(where, f"volume {name!r}: {kind} {block[ref]!r} does not exist in namespace {ns}")
                    continue
                keys = self.keys_of(obj)
                for item in block.get("items") or []:
                    if item["key"] not in keys:
                        self.err(where, f"volume {name!r}: {kind} {block[ref]!r} has no key {item['key']!r}")

    @staticmethod
    def keys_of(obj):
        return set((obj.get("data") or {})) | set((obj.get("stringData") or {})) | set((obj.get("binaryData") or {}))

    def container_env(self, cw, ns, c):
        """{name: [possible values]} of the container's variables, checking references on the way."""
        env = {}
        def refs_defined(text, what):
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(text)):
                if var not in env:
                    self.err(cw, f"{what} uses $({var}), which is not defined before it in env")
        for e in c.get("env") or []:
            name = e["name"]
            if "value" in e:
                refs_defined(e["value"], f"env {name}")
                env[name] = expand(str(e["value"]), env)
            else:
                vf = e.get("valueFrom") or {}
                if "fieldRef" in vf:
                    fp = vf["fieldRef"].get("fieldPath", "")
                    if fp not in FIELD_PATHS and not re.fullmatch(r"metadata\.(labels|annotations)\['[^']+'\]", fp):
                        self.err(cw, f"env {name}: fieldPath {fp!r} is not one the downward API offers")
                    env[name] = ["<" + fp + ">"]
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in vf:
                        r = vf[key]
                        obj = self.find(kind, ns, r.get("name"))
                        if obj is None and not r.get("optional"):
                            self.err(cw, f"env {name}: {kind} {r.get('name')!r} does not exist in namespace {ns}")
                        elif obj is not None and r.get("key") not in self.keys_of(obj):
                            self.err(cw, f"env {name}: {kind} {r.get('name')!r} has no key {r.get('key')!r}")
                        env[name] = ["<secret>"]
        for ef in c.get("envFrom") or []:
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in ef and self.find(kind, ns, ef[key].get("name")) is None and not ef[key].get("optional"):
                    self.err(cw, f"envFrom: {kind} {ef[key].get('name')!r} does not exist in namespace {ns}")
        for part in (c.get("command") or []) + (c.get("args") or []):
            refs_defined(part, "command/args")
        return env

    def ports_and_probes(self, cw, c):
        names, numbers = {}, {}
        for p in c.get("ports") or []:
            proto = p.get("protocol", "TCP")
            if proto not in ("TCP", "UDP", "SCTP"):
                self.err(cw, f"port {p} has protocol {proto!r}")
            if "name" in p:
                if p["name"] in names:
                    self.err(cw, f"port name {p['name']!r} is used twice")
                if len(p["name"]) > 15 or not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", p["name"]):
                    self.err(cw, f"port name {p['name']!r} is not a valid IANA service name")
                names[p["name"]] = (p["containerPort"], proto)
            numbers.setdefault(p["containerPort"], set()).add(proto)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            pr = c.get(probe)
            if not pr:
                continue
            for handler in ("httpGet", "tcpSocket", "grpc"):
                if handler in pr:
                    port = pr[handler].get("port")
                    if isinstance(port, str) and not port.isdigit():
                        if port not in names:
                            self.err(cw, f"{probe}.{handler}.port {port!r} is not a named port of the container")
                        elif names[port][1] != "TCP":
                            self.err(cw, f"{probe}.{handler}.port {port!r} is {names[port][1]}, probes need TCP")
                    elif "TCP" not in numbers.get(int(port), set()):
                        self.err(cw, f"{probe}.{handler}.port {port} is not a TCP port of the container")

    def hardening(self, cw, c, sc_pod, app):
        sc = c.get("securityContext") or {}
        def eff(key):
            return sc.get(key, sc_pod.get(key))
        if app and eff("runAsNonRoot") is not True:
            self.err(cw, "must run with runAsNonRoot: true")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.err(cw, "must set allowPrivilegeEscalation: false")
        if sc.get("readOnlyRootFilesystem") is not True:
            self.err(cw, "must set readOnlyRootFilesystem: true")
        if sc.get("privileged"):
            self.err(cw, "must not be privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            self.err(cw, "must drop ALL capabilities")
        if app and (sc.get("capabilities") or {}).get("add"):
            self.err(cw, "an application container must add no capabilities")
        seccomp = (sc.get("seccompProfile") or sc_pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            self.err(cw, "needs seccompProfile RuntimeDefault (pod or container)")
        res = c.get("resources") or {}
        for k in ("cpu", "memory"):
            if k not in (res.get("requests") or {}):
                self.err(cw, f"needs resources.requests.{k}")
        if "memory" not in (res.get("limits") or {}):
            self.err(cw, "needs resources.limits.memory")
        image = str(c.get("image", ""))
        if not image:
            self.err(cw, "has no image")
        elif (image.endswith(":latest") or ":" not in image.split("/")[-1]) and c.get("imagePullPolicy") not in ("IfNotPresent", "Never"):
            self.err(cw, f"image {image} is :latest: set imagePullPolicy IfNotPresent (a locally built image cannot be pulled)")

    # ---------------------------------------------------------------------------------- caravel
    def caravel(self, cw, ns, c, env, volumes, workload):
        words = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        args = words[words.index("serve") + 1:]
        flags, i = {}, 0
        while i < len(args):
            a = args[i]
            if not a.startswith("-"):
                self.err(cw, f"caravel serve: unexpected argument {a!r}")
                i += 1
                continue
            name, _, inline = a.partition("=")
            boolean = name in ("--orchestrator", "--compute", "--stale", "--tls", "--insecure")
            value = inline or (None if boolean else (args[i + 1] if i + 1 < len(args) else None))
            if value is None and not boolean:
                self.err(cw, f"caravel serve: {name} needs a value")
            flags.setdefault(name, []).append(value)
            i += 1 if (boolean or inline) else 2
        if self.src.flags is not None:
            for name in flags:
                if name not in self.src.flags:
                    self.err(cw, f"caravel serve: {name} is not a flag of caravel serve (cli/src/lib.rs)")
        pod_names = self.pod_names(workload)
        if pod_names:
            env = dict(env)
            for k, v in env.items():
                if v == ["<metadata.name>"]:
                    env[k] = pod_names
        # The config file: -c / --config naming a file in a mounted ConfigMap.
        config = {}
        for f in flags.get("-c", []) + flags.get("--config", []):
            if f and f.endswith((".yaml", ".yml")):
                content = self.mounted_file(cw, ns, c, volumes, f, read=True)
                if isinstance(content, str):
                    try:
                        config.update(flatten(yaml.safe_load(content)))
                    except yaml.YAMLError as e:
                        self.err(cw, f"config file {f} is not valid YAML: {e}")
        lowered = {k.lower(): v for k, v in config.items()}
        if self.src.keys is not None:
            for k in config:
                if k.lower() not in self.src.keys:
                    self.err(cw, f"config key {k} is not a Caravel configuration key (model/src/config.rs KEYS)")
            for e in c.get("env") or []:
                if e["name"].startswith("CARAVEL_") and e["name"] not in (self.src.envs or set()):
                    self.err(cw, f"env {e['name']} is not a Caravel variable (CARAVEL_<KEY> of model/src/config.rs KEYS)")
        for u in lowered.get("api.auth.users") or []:
            for k in u:
                if k.lower() not in USER_KEYS:
                    self.err(cw, f"API.Auth.Users entry {u.get('Alias')!r}: unknown key {k}")
        # Every file Caravel will open.
        files = []
        for key in FILE_KEYS:
            v = lowered.get(key.lower())
            if v:
                files.append((key, str(v)))
        for u in lowered.get("api.auth.users") or []:
            for k, v in u.items():
                if k.lower() in ("apikeyfile", "passwordfile") and v:
                    files.append((f"API.Auth.Users[{u.get('Alias')}].{k}", str(v)))
        for flag, key in FILE_FLAGS.items():
            for v in flags.get(flag, []):
                files = [f for f in files if f[0] != key] + [(flag, v)]
        for e in c.get("env") or []:
            if e["name"] == "CARAVEL_COMPUTE_AUTH_TOKENFILE" and "value" in e:
                files = [f for f in files if f[0] != "Compute.Auth.TokenFile"] + [(e["name"], e["value"])]
        for what, path in files:
            for p in expand(path, env):
                if "$(" in p or "<" in p:
                    self.mounted_file(cw, ns, c, volumes, re.sub(r"<[^>]*>|\$\([^)]*\)", "*", p), what=what)
                else:
                    self.mounted_file(cw, ns, c, volumes, p, what=what)
        ports = {p.get("name"): p for p in c.get("ports") or []}
        # Identity.
        ids = flags.get("--node-id", [])
        if ids and not any(v in (["<metadata.name>"], ["<spec.nodeName>"]) or v == pod_names
                           for v in (env.get(n) for n in re.findall(r"\$\(([A-Za-z_0-9]+)\)", ids[0] or ""))):
            self.err(cw, "--node-id should be the pod's (StatefulSet) or node's (DaemonSet) name through the downward API")
        if "--orchestrator" in flags:
            self.orchestrator_flags(cw, ns, c, flags, lowered, ports, workload)
        if "--orchestrators" in flags:
            for target in ",".join(v or "" for v in flags["--orchestrators"]).split(","):
                self.compute_target(cw, target)
        for addr in flags.get("--metrics-addr", []):
            port = int(str(addr).rsplit(":", 1)[-1])
            if not any(p.get("containerPort") == port and p.get("protocol", "TCP") == "TCP" for p in ports.values()):
                self.err(cw, f"--metrics-addr {addr}: port {port} is not a TCP container port")

    def pod_names(self, w):
        if w["kind"] == "StatefulSet":
            return [f"{w['metadata']['name']}-{i}" for i in range(int(w["spec"].get("replicas", 1)))]
        return None

    def orchestrator_flags(self, cw, ns, c, flags, cfg, ports, w):
        raft = ports.get("raft")
        if raft is None or raft.get("protocol") != "UDP":
            self.err(cw, "an orchestrator needs a UDP container port named 'raft'")
            return
        compute = ports.get("compute")
        if compute is None or compute.get("protocol") != "UDP":
            self.err(cw, "an orchestrator needs a UDP container port named 'compute'")
        api = ports.get("api")
        if api is None or api.get("protocol", "TCP") != "TCP":
            self.err(cw, "an orchestrator needs a TCP container port named 'api'")
        for key, port, default in (("orchestrator.raftport", raft, 1235), ("orchestrator.computeport", compute, 4222),
                                   ("api.port", api, 1234)):
            want = int((flags.get("--raft-port") or [None])[0] or cfg.get(key) or default) if key.endswith("raftport") \
                else int(cfg.get(key) or default)
            if port and port["containerPort"] != want:
                self.err(cw, f"container port {port.get('name')} is {port['containerPort']}, Caravel listens on {want} ({key})")
        if w["kind"] != "StatefulSet":
            return
        svc = w["spec"]["serviceName"]
        expected = [f"{p}@{p}.{svc}.{ns}.svc:{raft['containerPort']}" for p in self.pod_names(w)]
        peers = ",".join(v or "" for v in flags.get("--peers", [])).split(",") if "--peers" in flags \
            else [str(x) for x in cfg.get("orchestrator.peers") or []]
        got = [p.replace(".svc.cluster.local:", ".svc:") for p in peers if p]
        if sorted(got) != sorted(expected):
            self.err(cw, f"--peers {peers} should be exactly {expected} (one per replica, the headless Service's names)")
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            got_path = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if got_path != path:
                self.err(cw, f"{probe} should be httpGet {path} (got {got_path})")
        tls = cfg.get("api.tls.certfile")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            h = (c.get(probe) or {}).get("httpGet")
            if h and bool(tls) != (h.get("scheme") == "HTTPS"):
                self.err(cw, f"{probe}: scheme must be {'HTTPS' if tls else 'HTTP'} (API.TLS.CertFile is {'set' if tls else 'empty'})")

    def compute_target(self, cw, target):
        m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)", target)
        if not m:
            self.err(cw, f"--orchestrators {target!r} is not POD.SERVICE.NAMESPACE.svc:PORT")
            return
        pod, svc_name, ns, port = m.group(1), m.group(2), m.group(3), int(m.group(4))
        svc = self.find("Service", ns, svc_name)
        if svc is None:
            self.err(cw, f"--orchestrators {target}: no Service {ns}/{svc_name}")
            return
        for w in self.objects("StatefulSet", ns):
            if w["spec"].get("serviceName") == svc_name and pod in (self.pod_names(w) or []):
                ports = [p for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports") or []]
                if not any(p.get("name") == "compute" and p["containerPort"] == port and p.get("protocol") == "UDP" for p in ports):
                    self.err(cw, f"--orchestrators {target}: port {port} is not the members' UDP port 'compute'")
                return
        self.err(cw, f"--orchestrators {target}: {pod} is not a pod of a StatefulSet behind Service {ns}/{svc_name}")

    def mounted_file(self, cw, ns, c, volumes, path, read=False, what="file"):
        """Checks that `path` lies in a mounted volume (and its key exists); its text when read."""
        best = None
        for m in c.get("volumeMounts") or []:
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                    best = m
        if best is None:
            self.err(cw, f"{what} {path} is in no mounted volume")
            return None
        rel = path[len(best["mountPath"].rstrip("/")) + 1:]
        if best.get("subPath"):
            rel = best["subPath"] + ("/" + rel if rel else "")
        v = volumes.get(best["name"])
        if v is None:  # a volume claim template: anything may be there
            return None
        for kind, field, ref in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
            block = v.get(field)
            if not isinstance(block, dict):
                continue
            obj = self.find(kind, ns, block.get(ref))
            if obj is None:
                return None  # reported with the volume
            items = {i["path"]: i["key"] for i in block.get("items") or []}
            key = items.get(rel, rel) if items else rel
            data = {**(obj.get("data") or {}), **(obj.get("stringData") or {})}
            if "*" in key:
                if not any(re.fullmatch(re.escape(key).replace(r"\*", ".+"), k) for k in data):
                    self.err(cw, f"{what} {path}: {kind} {obj['metadata']['name']!r} has no key like {key!r}")
                return None
            if key not in data:
                self.err(cw, f"{what} {path}: {kind} {obj['metadata']['name']!r} (mounted at {best['mountPath']}) has no key {key!r}")
                return None
            return data[key] if read else None
        if read:
            self.err(cw, f"{what} {path} is not in a ConfigMap or Secret")
        return None

    # ---------------------------------------------------------------------------------- selectors
    def selected(self, ns, selector):
        return [(w, t) for w, t in self.templates(ns) if matches(selector, (t.get("metadata") or {}).get("labels"))]

    def service(self, where, s):
        ns, spec = s["metadata"]["namespace"], s.get("spec") or {}
        if spec.get("type") == "ExternalName":
            return
        sel = spec.get("selector")
        if not sel:
            self.err(where, "has no selector")
            return
        pods = self.selected(ns, sel)
        if not pods:
            self.err(where, f"selector {sel} matches no pod template in namespace {ns}")
        for p in spec.get("ports") or []:
            proto, target = p.get("protocol", "TCP"), p.get("targetPort", p.get("port"))
            for w, t in pods:
                if not self.pod_has_port(t, target, proto):
                    self.err(where, f"port {p.get('name', p.get('port'))}: targetPort {target}/{proto} is not a container port of "
                                    f"{w['kind']} {w['metadata']['name']}")

    @staticmethod
    def pod_has_port(t, target, proto):
        for c in (t.get("spec") or {}).get("containers") or []:
            for cp in c.get("ports") or []:
                if cp.get("protocol", "TCP") != proto:
                    continue
                if (isinstance(target, str) and not target.isdigit() and cp.get("name") == target) or \
                        (not isinstance(target, str) or target.isdigit()) and cp["containerPort"] == int(target):
                    return True
        return False

    def pdb(self, where, p):
        ns, spec = p["metadata"]["namespace"], p.get("spec") or {}
        pods = self.selected(ns, spec.get("selector"))
        if not pods:
            self.err(where, f"selector {spec.get('selector')} matches no pod template in namespace {ns}")
        for w, t in pods:
            if w["kind"] == "StatefulSet" and self.is_caravel(t, "--orchestrator"):
                n = int(w["spec"].get("replicas", 1))
                spare = (n - 1) // 2
                mu = spec.get("maxUnavailable")
                ma = spec.get("minAvailable")
                if mu is not None and (not isinstance(mu, int) or mu > max(spare, 0) or mu < 1):
                    self.err(where, f"maxUnavailable {mu} for {n} Raft members: at most {spare} may go without losing the quorum")
                if ma is not None and (not isinstance(ma, int) or ma < n // 2 + 1):
                    self.err(where, f"minAvailable {ma} for {n} Raft members is below a majority ({n // 2 + 1})")
                if mu is None and ma is None:
                    self.err(where, "sets neither maxUnavailable nor minAvailable")

    def netpol(self, where, n):
        ns, spec = n["metadata"]["namespace"], n.get("spec") or {}
        pods = self.selected(ns, spec.get("podSelector"))
        if not pods:
            self.err(where, f"podSelector {spec.get('podSelector')} matches no pod template in namespace {ns}")
        namespaces = {d["metadata"]["name"]: d for d in self.objects("Namespace")}
        for rule in spec.get("ingress") or []:
            for peer in rule.get("from") or []:
                nss = [ns]
                if "namespaceSelector" in peer:
                    nss = [name for name, d in namespaces.items()
                           if matches(peer["namespaceSelector"],
                                      {**((d.get("metadata") or {}).get("labels") or {}), "kubernetes.io/metadata.name": name})]
                    if not nss:
                        self.err(where, f"namespaceSelector {peer['namespaceSelector']} matches no namespace defined here")
                if "podSelector" in peer and not any(self.selected(x, peer["podSelector"]) for x in nss):
                    self.err(where, f"from podSelector {peer['podSelector']} matches no pod template")
            for port in rule.get("ports") or []:
                for w, t in pods:
                    if not self.pod_has_port(t, port.get("port"), port.get("protocol", "TCP")):
                        self.err(where, f"port {port.get('port')}/{port.get('protocol', 'TCP')} is not a container port of "
                                        f"{w['kind']} {w['metadata']['name']}")


# ------------------------------------------------------------------------------------- self-test

def mutations():
    """(description, function(docs) → None, expected fragment of a problem)."""
    def doc(docs, kind, name):
        return next(d for _, _, d in docs if d["kind"] == kind and d["metadata"]["name"] == name)

    def sts(docs):
        return doc(docs, "StatefulSet", "orch")

    def orch(docs):
        return sts(docs)["spec"]["template"]["spec"]["containers"][0]

    def compute(docs):
        return doc(docs, "DaemonSet", "caravel-compute")["spec"]["template"]["spec"]["containers"][0]

    def set_arg(c, flag, value):
        c["args"][c["args"].index(flag) + 1] = value

    return [
        ("a Service selector matching no pod",
         lambda d: doc(d, "Service", "caravel")["spec"]["selector"].update({"app.kubernetes.io/component": "orchestrators"}),
         "matches no pod template"),
        ("serviceName of no Service", lambda d: sts(d)["spec"].update(serviceName="caravel-orch"), "is not a Service"),
        ("a headless Service hiding not-ready pods",
         lambda d: doc(d, "Service", "caravel-orchestrators")["spec"].pop("publishNotReadyAddresses"), "publishNotReadyAddresses"),
        ("OrderedReady members", lambda d: sts(d)["spec"].update(podManagementPolicy="OrderedReady"), "podManagementPolicy"),
        ("a workload selector not matching its template",
         lambda d: sts(d)["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "other"}), "does not match its pod template"),
        ("a volumeMount of no volume", lambda d: orch(d)["volumeMounts"][1].update(name="configs"), "names no volume"),
        ("a probe on a missing port", lambda d: orch(d)["readinessProbe"]["httpGet"].update(port="http"), "not a named port"),
        ("a Service targetPort missing", lambda d: doc(d, "Service", "caravel-orchestrators")["spec"]["ports"][1].update(targetPort="rafts"),
         "is not a container port"),
        ("a UDP port served as TCP", lambda d: doc(d, "Service", "caravel-orchestrators")["spec"]["ports"][1].update(protocol="TCP"),
         "is not a container port"),
        ("a missing Secret", lambda d: doc(d, "Secret", "caravel-api-keys")["metadata"].update(name="caravel-keys"), "does not exist"),
        ("a missing ConfigMap", lambda d: doc(d, "ConfigMap", "caravel-compute-config")["metadata"].update(namespace="caravel"),
         "does not exist in namespace caravel-compute"),
        ("a member certificate missing", lambda d: doc(d, "Secret", "caravel-cluster-tls")["stringData"].pop("orch-2.key"),
         "has no key 'orch-2.key'"),
        ("an API key file outside the mounts",
         lambda d: doc(d, "ConfigMap", "caravel-orchestrator-config")["data"].update(
             {"config.yaml": doc(d, "ConfigMap", "caravel-orchestrator-config")["data"]["config.yaml"].replace(
                 "/etc/caravel/secrets/operator.key", "/etc/caravel/keys/operator.key")}), "is in no mounted volume"),
        ("a wrong peer address", lambda d: set_arg(orch(d), "--peers", "orch-0@orch-0.caravel-orchestrators.caravel.svc:1235,"
                                                   "orch-1@orch-1.caravel-orchestrators.caravel.svc:1235,orch-3@orch-3.caravel-orchestrators.caravel.svc:1235"),
         "--peers"),
        ("replicas not matching --peers", lambda d: sts(d)["spec"].update(replicas=5), "--peers"),
        ("an unknown serve flag", lambda d: orch(d)["args"].append("--raft-address"), "is not a flag"),
        ("an unknown config key",
         lambda d: doc(d, "ConfigMap", "caravel-compute-config")["data"].update(
             {"config.yaml": doc(d, "ConfigMap", "caravel-compute-config")["data"]["config.yaml"].replace("HeartbeatSecs", "HeartbeatSeconds")}),
         "is not a Caravel configuration key"),
        ("an unknown CARAVEL_ variable", lambda d: compute(d)["env"][1].update(name="CARAVEL_COMPUTE_TOKENFILE"), "is not a Caravel variable"),
        ("an undefined $(VAR)", lambda d: compute(d)["env"].pop(0), "$(NODE_NAME)"),
        ("compute dialling the Raft port", lambda d: set_arg(compute(d), "--orchestrators", "orch-0.caravel-orchestrators.caravel.svc:1235"),
         "is not the members' UDP port 'compute'"),
        ("compute dialling a pod that does not exist",
         lambda d: set_arg(compute(d), "--orchestrators", "orch-7.caravel-orchestrators.caravel.svc:4222"), "is not a pod"),
        ("a PDB that can lose the quorum", lambda d: doc(d, "PodDisruptionBudget", "caravel-orchestrators")["spec"].update(maxUnavailable=2),
         "without losing the quorum"),
        ("a PDB selecting nothing",
         lambda d: doc(d, "PodDisruptionBudget", "caravel-orchestrators")["spec"]["selector"]["matchLabels"].update(extra="x"),
         "matches no pod template"),
        ("a NetworkPolicy on a missing port",
         lambda d: doc(d, "NetworkPolicy", "caravel-orchestrators")["spec"]["ingress"][0]["ports"][0].update(port="rpc"),
         "is not a container port"),
        ("a writable root filesystem", lambda d: orch(d)["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        ("capabilities kept", lambda d: compute(d)["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
        ("no memory limit", lambda d: orch(d)["resources"].pop("limits"), "limits.memory"),
        (":latest pulled", lambda d: orch(d).pop("imagePullPolicy"), "imagePullPolicy"),
        ("an unused volume", lambda d: orch(d)["volumeMounts"].pop(), "is mounted by no container"),
        ("a missing namespace", lambda d: doc(d, "Namespace", "caravel-compute")["metadata"].update(name="compute"), "is not defined"),
        ("HTTP probes against HTTPS", lambda d: orch(d)["livenessProbe"]["httpGet"].update(scheme="HTTP"), "scheme must be HTTPS"),
        ("a metrics port not exposed", lambda d: set_arg(compute(d), "--metrics-addr", "0.0.0.0:9465"), "--metrics-addr"),
    ]


def self_test(docs, sources):
    failures = 0
    if sources.flags is None or sources.keys is None:
        print("self-test: the Rust sources were not found; flag and key mutations cannot be detected")
        return 1
    for description, mutate, fragment in mutations():
        broken = copy.deepcopy(docs)
        try:
            mutate(broken)
        except (StopIteration, KeyError, IndexError, ValueError) as e:
            print(f"self-test: cannot apply {description!r} to these manifests: {e!r}")
            failures += 1
            continue
        problems = Checker(broken, sources).run()
        if not any(fragment in p for p in problems):
            print(f"self-test FAILED: {description!r} was not reported (expected {fragment!r}); got {problems}")
            failures += 1
    n = len(mutations())
    print(f"self-test: {n - failures} of {n} broken copies rejected")
    return 1 if failures else 0


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    opts = [a for a in argv if a.startswith("--")]
    if len(args) > 1 or any(o not in ("--self-test",) for o in opts):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    directory = pathlib.Path(args[0]) if args else HERE
    docs, problems = load(directory)
    sources = Sources()
    if not problems:
        problems = Checker(docs, sources).run()
    for p in problems:
        print("ERROR:", p)
    skipped = [what for what, v in (("flags", sources.flags), ("config keys", sources.keys)) if v is None]
    if skipped:
        print(f"note: Rust sources not found, {' and '.join(skipped)} not checked")
    if problems:
        print(f"check.py: {len(problems)} problem(s) in {directory}")
        return 1
    kinds = sorted({d['kind'] for _, _, d in docs})
    print(f"check.py: OK: {len(docs)} objects ({', '.join(kinds)}) in {directory}")
    if "--self-test" in opts:
        return self_test(docs, sources)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
