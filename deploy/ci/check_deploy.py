#!/usr/bin/env python3
"""Offline checks of floq's deployment artifacts that no off-the-shelf tool makes.

Run by deploy/ci/validate.sh (with the venv's python, which has PyYAML):

    check_deploy.py ROOT k8s            Kubernetes: custom resources' required fields,
                                         references between objects, the overlay's
                                         patch targets, settings names and ports
    check_deploy.py ROOT compose        compose.yaml's references (beyond its schema)
    check_deploy.py ROOT metrics        every metric the dashboard, the alerts and
                                         docs/operations.md name exists, and the docs
                                         table lists every metric
    check_deploy.py ROOT promql OUT     writes every dashboard query as a recording
                                         rule into OUT, for `promtool check rules`

Prints one line per problem and exits 1 if there was any.
"""

import json
import os
import re
import sys

import yaml

PROBLEMS = []


def problem(where, what):
    PROBLEMS.append(f"{where}: {what}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def dig(doc, path):
    """Follows a dotted path (a number indexes a list); None when it is not there."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


# --- what floq itself defines ------------------------------------------------------


def config_vars(root):
    """Every FLOQ_* name shared/src/config.rs reads (FLOQ_PLUGIN_* are open-ended)."""
    text = open(os.path.join(root, "shared/src/config.rs")).read()
    return set(re.findall(r'"(FLOQ_[A-Z0-9_]+)"', text))


# Settings config.rs holds in `Secret` (never in a ConfigMap, always in the Secret).
SECRET_VARS = {
    "FLOQ_DATABASE_URL",
    "FLOQ_AMQP_URL",
    "FLOQ_JWT_SECRET",
    "FLOQ_ENC_KEY_SECRET",
    "FLOQ_ENC_KEY_SALT",
    "FLOQ_ENC_OLD_KEYS",
    "FLOQ_METRICS_TOKEN",
    "FLOQ_SMTP_URL",
}

# Metrics being added alongside these artifacts (issue #18), with their type.
ADDED_METRICS = {
    "floq_workflow_execution_duration_seconds": "histogram",
    "floq_runs_completed_total": "counter",
    "floq_company_runs_total": "counter",
    "floq_queue_consumers": "gauge",
    "floq_audit_seal_lag_seconds": "gauge",
    "floq_sandbox_threads_busy": "gauge",
    "floq_sandbox_threads": "gauge",
    "floq_db_pool_connections": "gauge",
    "floq_db_pool_max_connections": "gauge",
    "floq_broker_reconnects_total": "counter",
    "floq_database_up": "gauge",
    "floq_broker_up": "gauge",
}
STANDARD_METRICS = {"up": "gauge"}


def telemetry_metrics(root):
    """name -> type for every metric registered in shared/src/telemetry.rs.

    Only histograms matter (their series carry _bucket, _sum and _count): a name
    passed to histogram(...), plain_histogram(...) or HistogramOpts::new(...).
    """
    text = open(os.path.join(root, "shared/src/telemetry.rs")).read()
    histograms = set(re.findall(r'(?:histogram|HistogramOpts::new)\(\s*"(floq_[a-z0-9_]+)"', text))
    found = {}
    # A metric is registered as (name, help): other floq_ strings (crate names) are not metrics.
    for name in re.findall(r'"(floq_[a-z0-9_]+)",\s*"[A-Z1-9]', text):
        found[name] = "histogram" if name in histograms else ("counter" if name.endswith("_total") else "gauge")
    return found


def known_metrics(root):
    metrics = dict(telemetry_metrics(root))
    for name, kind in ADDED_METRICS.items():
        metrics.setdefault(name, kind)
    metrics.update(STANDARD_METRICS)
    return metrics


def series_names(metrics):
    names = set()
    for name, kind in metrics.items():
        names.add(name)
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
    # aggregation operators (`sum by (x) (...)` leaves no "(" right after the name)
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "limitk", "limit_ratio",
}


def promql_metric_names(expr):
    """Metric names a PromQL expression selects (best effort, no full parser)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^}]*\}", "{}", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "[]", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end() :].lstrip()
        if rest.startswith("("):  # a function
            continue
        if word.lower() in PROMQL_WORDS or word.startswith("$"):
            continue
        if m.start() > 0 and e[m.start() - 1] in "$":
            continue
        names.add(word)
    return names


def dashboard_exprs(root):
    path = os.path.join(root, "deploy/grafana/floq.json")
    with open(path) as f:
        dash = json.load(f)
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    exprs.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []) or [])

    walk(dash.get("panels", []))
    return dash, exprs


def alert_exprs(root):
    doc = load_all(os.path.join(root, "deploy/prometheus/alerts.yml"))[0]
    out = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            out.append((rule.get("alert") or rule.get("record"), rule["expr"]))
    return out


# --- metrics ---------------------------------------------------------------------------


def check_metrics(root):
    metrics = known_metrics(root)
    names = series_names(metrics)
    dash, exprs = dashboard_exprs(root)
    if not exprs:
        problem("deploy/grafana/floq.json", "no panel has a query")
    if not 36 <= int(dash.get("schemaVersion", 0)) <= 41:
        problem("deploy/grafana/floq.json", f"schemaVersion {dash.get('schemaVersion')} (want about 39)")
    variables = {v.get("name"): v for v in dig(dash, "templating.list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem("deploy/grafana/floq.json", "needs a `datasource` template variable of type datasource, query prometheus")

    def walk(panels):
        for p in panels:
            if p.get("type") != "row":
                uid = dig(p, "datasource.uid")
                if uid != "${datasource}":
                    problem("deploy/grafana/floq.json", f"panel {p.get('title')!r}: datasource uid {uid!r}, not ${{datasource}}")
            walk(p.get("panels", []) or [])

    walk(dash.get("panels", []))
    for where, expr in [(f"dashboard panel {t!r}", e) for t, e in exprs] + [
        (f"alert {a}", e) for a, e in alert_exprs(root)
    ]:
        for name in sorted(promql_metric_names(expr)):
            if name not in names:
                problem(where, f"metric {name} is neither in shared/src/telemetry.rs nor in the list of metrics being added")
    # docs/operations.md: its metrics table lists every metric, and only real ones.
    docs = os.path.join(root, "docs/operations.md")
    if not os.path.exists(docs):
        problem("docs/operations.md", "missing")
        return
    text = open(docs).read()
    table = set(re.findall(r"^\|\s*`(floq_[a-z0-9_]+)`", text, re.M))
    for name in sorted(set(metrics) - set(STANDARD_METRICS) - table):
        problem("docs/operations.md", f"the metrics table has no row for {name}")
    for name in sorted(table - set(metrics)):
        problem("docs/operations.md", f"the metrics table lists {name}, which no code or issue defines")


def write_promql_rules(root, out):
    _, exprs = dashboard_exprs(root)
    rules = []
    for i, (title, expr) in enumerate(exprs):
        e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        if "$" in e:
            problem("deploy/grafana/floq.json", f"panel {title!r}: a variable promtool cannot check is left in {expr!r}")
            continue
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)


# --- Kubernetes ------------------------------------------------------------------------

CR_REQUIRED = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): ["spec.replicas", "spec.rabbitmq.additionalConfig"],
    ("postgresql.cnpg.io/v1", "Cluster"): ["spec.instances", "spec.storage.size", "spec.bootstrap.initdb.database"],
    ("keda.sh/v1alpha1", "ScaledObject"): ["spec.scaleTargetRef.name", "spec.triggers.0.type", "spec.triggers.0.metadata"],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ["spec.secretTargetRef.0.parameter", "spec.secretTargetRef.0.name", "spec.secretTargetRef.0.key"],
    ("monitoring.coreos.com/v1", "PodMonitor"): ["spec.selector", "spec.podMetricsEndpoints.0.port"],
    ("external-secrets.io/v1beta1", "ExternalSecret"): ["spec.secretStoreRef.name", "spec.target.name", "spec.data.0.secretKey", "spec.data.0.remoteRef.key"],
    ("external-secrets.io/v1", "ExternalSecret"): ["spec.secretStoreRef.name", "spec.target.name", "spec.data.0.secretKey", "spec.data.0.remoteRef.key"],
}


def base_objects(root):
    base = os.path.join(root, "deploy/k8s/base")
    kust = load_all(os.path.join(base, "kustomization.yaml"))[0]
    objs = []
    for res in kust.get("resources", []):
        path = os.path.join(base, res)
        if not os.path.isfile(path):
            problem("deploy/k8s/base/kustomization.yaml", f"resource {res} does not exist")
            continue
        for d in load_all(path):
            objs.append((res, d))
    return kust, objs


def check_restricted(where, spec):
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        sc = c.get("securityContext") or {}
        name = f"{where} container {c.get('name')}"
        want = {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
        }
        for k, v in want.items():
            if sc.get(k) is not v:
                problem(name, f"securityContext.{k} must be {str(v).lower()}")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problem(name, "securityContext.capabilities.drop must be [ALL]")
        if dig(sc, "seccompProfile.type") != "RuntimeDefault" and dig(spec, "securityContext.seccompProfile.type") != "RuntimeDefault":
            problem(name, "seccompProfile must be RuntimeDefault")
        if not dig(c, "resources.requests") or not dig(c, "resources.limits.memory"):
            problem(name, "needs resources.requests and a memory limit")


def check_k8s(root):
    kust, objs = base_objects(root)
    known = config_vars(root)
    by_kind = {}
    for res, d in objs:
        by_kind.setdefault(d.get("kind"), {})[dig(d, "metadata.name")] = (res, d)
    example = os.path.join(root, "deploy/k8s/base/externalsecret.example.yaml")
    extra = [("externalsecret.example.yaml", d) for d in load_all(example)] if os.path.exists(example) else []

    # Custom resources: parse, and carry their required fields.
    for res, d in objs + extra:
        key = (d.get("apiVersion"), d.get("kind"))
        if key in CR_REQUIRED:
            for path in CR_REQUIRED[key]:
                if dig(d, path) in (None, "", [], {}):
                    problem(f"{res} {d['kind']}/{dig(d, 'metadata.name')}", f"missing {path}")
    for kind in ("RabbitmqCluster", "Cluster", "ScaledObject", "TriggerAuthentication", "PodMonitor"):
        if kind not in by_kind:
            problem("deploy/k8s/base", f"no {kind}")

    # Settings: only names config.rs knows; secrets only in the Secret, all of them there.
    cm = by_kind.get("ConfigMap", {}).get("floq-config", (None, {}))[1].get("data", {}) or {}
    secret = by_kind.get("Secret", {}).get("floq-secrets", (None, {}))[1].get("stringData", {}) or {}
    for name in cm:
        if name.startswith("FLOQ_") and name not in known and not name.startswith("FLOQ_PLUGIN_"):
            problem("configmap.yaml", f"{name} is not a setting shared/src/config.rs reads")
        if name in SECRET_VARS:
            problem("configmap.yaml", f"{name} is a secret: it belongs in secret.yaml")
    for name in secret:
        if name not in known:
            problem("secret.yaml", f"{name} is not a setting shared/src/config.rs reads")
    for name in sorted(SECRET_VARS - set(secret)):
        problem("secret.yaml", f"{name} (a Secret in config.rs) is missing")
    for _, d in extra:
        if d.get("kind") == "ExternalSecret":
            keys = {x.get("secretKey") for x in dig(d, "spec.data") or []}
            if keys != set(secret):
                problem("externalsecret.example.yaml", f"secretKeys {sorted(keys)} differ from secret.yaml's {sorted(secret)}")

    # Deployments: restricted security context, probes on the port each service listens on.
    listen = {}
    for var, comp in (("FLOQ_HTTP_ADDR", "api"), ("FLOQ_WORKER_HTTP_ADDR", "worker"), ("FLOQ_SCHEDULER_HTTP_ADDR", "scheduler")):
        if var not in cm:
            problem("configmap.yaml", f"{var} must be set (to 0.0.0.0:PORT) for probes to reach the pod")
        else:
            listen[comp] = int(str(cm[var]).rsplit(":", 1)[1])
    metrics_port = int(str(cm.get("FLOQ_API_METRICS_ADDR", ":8083")).rsplit(":", 1)[1])
    deploy_ports = {}
    for name, (res, d) in by_kind.get("Deployment", {}).items():
        spec = dig(d, "spec.template.spec") or {}
        check_restricted(f"{res} {name}", spec)
        if spec.get("enableServiceLinks") is not False:
            problem(f"{res} {name}", "enableServiceLinks must be false (Service variables would look like FLOQ_* settings)")
        comp = name.removeprefix("floq-")
        main = next((c for c in spec.get("containers", []) if c.get("name") == comp), None)
        if not main:
            problem(f"{res} {name}", f"no container named {comp}")
            continue
        ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
        deploy_ports[name] = ports
        if not any("migrate" in " ".join(c.get("args", []) + c.get("command", [])) for c in spec.get("initContainers", [])):
            problem(f"{res} {name}", "no init container runs `floq-api migrate`")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            p = main.get(probe)
            if not p:
                problem(f"{res} {name}", f"no {probe}")
                continue
            if dig(p, "httpGet.path") != path:
                problem(f"{res} {name}", f"{probe} must GET {path}")
            port = dig(p, "httpGet.port")
            port = ports.get(port, port)
            if comp in listen and port != listen[comp]:
                problem(f"{res} {name}", f"{probe} on port {port}, but the service listens on {listen[comp]}")
        if comp == "api" and ports.get("metrics") != metrics_port:
            problem(f"{res} {name}", f"container port `metrics` is {ports.get('metrics')}, FLOQ_API_METRICS_ADDR says {metrics_port}")
        if comp in ("worker", "scheduler") and ports.get("metrics") != listen.get(comp):
            problem(f"{res} {name}", f"container port `metrics` is {ports.get('metrics')}, the service listens on {listen.get(comp)}")
        for ref in [e.get("configMapRef", {}).get("name") for e in main.get("envFrom", [])]:
            if ref and ref not in by_kind.get("ConfigMap", {}):
                problem(f"{res} {name}", f"envFrom names ConfigMap {ref}, which base does not define")

    # References between objects.
    for name, (res, d) in by_kind.get("HorizontalPodAutoscaler", {}).items():
        if dig(d, "spec.scaleTargetRef.name") not in by_kind.get("Deployment", {}):
            problem(res, f"HPA {name} targets a Deployment base does not define")
        if dig(d, "spec.metrics.0.resource.name") != "cpu":
            problem(res, f"HPA {name} should scale on CPU")
    for name, (res, d) in by_kind.get("ScaledObject", {}).items():
        if dig(d, "spec.scaleTargetRef.name") not in by_kind.get("Deployment", {}):
            problem(res, f"ScaledObject {name} targets a Deployment base does not define")
        for i, trig in enumerate(dig(d, "spec.triggers") or []):
            md = trig.get("metadata") or {}
            where = f"{res} ScaledObject {name} trigger {i}"
            if trig.get("type") != "rabbitmq":
                continue
            if md.get("mode") != "QueueLength" or not str(md.get("value", "")).isdigit():
                problem(where, "needs mode QueueLength and a whole-number value")
            if dig(trig, "authenticationRef.name") not in by_kind.get("TriggerAuthentication", {}):
                problem(where, "authenticationRef names no TriggerAuthentication in base")
            if md.get("excludeUnacknowledged") == "true":
                problem(where, "excludeUnacknowledged: the queue length must count unacknowledged messages")
            prefix = cm.get("FLOQ_QUEUE_PREFIX", "floq")
            shards = int(cm.get("FLOQ_QUEUE_SHARDS", "8"))
            want = [f"{prefix}.runs.{n}" for n in range(shards)] + [f"{prefix}.runs"]
            avoid = [f"{prefix}.runs.dead", f"{prefix}.runs.delay.5000", f"{prefix}.runs.wake", f"{prefix}.dlx", f"{prefix}x.runs.0"]
            if md.get("useRegex") == "true":
                if md.get("protocol") != "http":
                    problem(where, "useRegex needs protocol http")
                if md.get("operation", "sum") != "sum":
                    problem(where, "operation must be sum (the backlog is every shard's)")
                try:
                    rx = re.compile(md.get("queueName", ""))
                except re.error as e:
                    problem(where, f"queueName is not a regex: {e}")
                    continue
                for q in want:
                    if not rx.search(q):
                        problem(where, f"queueName {md.get('queueName')!r} misses run queue {q}")
                for q in avoid:
                    if rx.search(q):
                        problem(where, f"queueName {md.get('queueName')!r} also matches {q}, which is not a run queue")
            elif md.get("queueName") not in want:
                problem(where, f"queueName {md.get('queueName')!r} is not a run queue ({want})")
    for name, (res, d) in by_kind.get("PodMonitor", {}).items():
        selected = set(dig(d, "spec.selector.matchExpressions.0.values") or [])
        for dep in ("floq-api", "floq-worker", "floq-scheduler"):
            if dep not in selected:
                problem(res, f"PodMonitor {name} does not select {dep}")
            elif dig(d, "spec.podMetricsEndpoints.0.port") not in deploy_ports.get(dep, {}):
                problem(res, f"PodMonitor {name}: {dep} has no container port {dig(d, 'spec.podMetricsEndpoints.0.port')!r}")
        cred = dig(d, "spec.podMetricsEndpoints.0.authorization.credentials") or dig(d, "spec.podMetricsEndpoints.0.bearerTokenSecret")
        if not cred or cred.get("name") != "floq-secrets" or cred.get("key") != "FLOQ_METRICS_TOKEN":
            problem(res, f"PodMonitor {name} must send FLOQ_METRICS_TOKEN from floq-secrets")
    for name, (res, d) in by_kind.get("RabbitmqCluster", {}).items():
        if dig(d, "spec.replicas") != 3:
            problem(res, f"RabbitmqCluster {name}: 3 replicas expected")
        if "default_queue_type = quorum" not in (dig(d, "spec.rabbitmq.additionalConfig") or ""):
            problem(res, f"RabbitmqCluster {name}: additionalConfig must set default_queue_type = quorum")
    for name, (res, d) in by_kind.get("Cluster", {}).items():
        if dig(d, "spec.instances") != 3:
            problem(res, f"Cluster {name}: 3 instances expected")
        sync = dig(d, "spec.postgresql.synchronous.number") or dig(d, "spec.minSyncReplicas")
        if not sync:
            problem(res, f"Cluster {name}: no synchronous replica (postgresql.synchronous or minSyncReplicas)")
        url = secret.get("FLOQ_DATABASE_URL", "")
        if f"{name}-rw" not in url:
            problem("secret.yaml", f"FLOQ_DATABASE_URL should point at {name}-rw (the primary, through fail-overs)")
    for dep in by_kind.get("Deployment", {}):
        if dep not in by_kind.get("PodDisruptionBudget", {}):
            problem("deploy/k8s/base", f"no PodDisruptionBudget for {dep}")
    if "default-deny-ingress" not in by_kind.get("NetworkPolicy", {}):
        problem("networkpolicy.yaml", "no default-deny-ingress policy")

    check_overlay(root, objs)


def check_overlay(root, base_objs):
    """Every patch of the production overlay parses and targets something base defines."""
    ovl = os.path.join(root, "deploy/k8s/overlays/production")
    path = os.path.join(ovl, "kustomization.yaml")
    if not os.path.exists(path):
        problem("deploy/k8s/overlays/production", "no kustomization.yaml")
        return
    kust = load_all(path)[0]
    where = "overlays/production/kustomization.yaml"
    if "../../base" not in (kust.get("resources") or []):
        problem(where, "does not build on ../../base")
    ids = {(d.get("kind"), dig(d, "metadata.name")) for _, d in base_objs}
    images = set()
    for _, d in base_objs:
        for spec_path in ("spec.template.spec.containers", "spec.template.spec.initContainers"):
            for c in dig(d, spec_path) or []:
                images.add(c.get("image"))
    base_kust = load_all(os.path.join(root, "deploy/k8s/base/kustomization.yaml"))[0]
    renamed = {i.get("newName", i["name"]) for i in base_kust.get("images", [])}
    for img in kust.get("images", []) or []:
        if img.get("name") not in images | renamed:
            problem(where, f"images: {img.get('name')} names no image of base ({sorted(images | renamed)})")
    for i, p in enumerate(kust.get("patches", []) or []):
        label = f"{where} patch {i}"
        docs = []
        if "path" in p:
            ppath = os.path.join(ovl, p["path"])
            if not os.path.exists(ppath):
                problem(label, f"{p['path']} does not exist")
                continue
            try:
                docs = load_all(ppath)
            except yaml.YAMLError as e:
                problem(label, f"{p['path']} does not parse: {e}")
                continue
        elif "patch" in p:
            try:
                docs = [yaml.safe_load(p["patch"])]
            except yaml.YAMLError as e:
                problem(label, f"inline patch does not parse: {e}")
                continue
        else:
            problem(label, "neither path nor patch")
            continue
        target = p.get("target")
        if target:
            if (target.get("kind"), target.get("name")) not in ids:
                problem(label, f"target {target.get('kind')}/{target.get('name')} is not in base")
            if isinstance(docs[0], list):
                for op in docs[0]:
                    if op.get("op") not in ("add", "remove", "replace", "move", "copy", "test") or not str(op.get("path", "")).startswith("/"):
                        problem(label, f"not a JSON 6902 operation: {op}")
        else:
            for d in docs:
                if not isinstance(d, dict) or (d.get("kind"), dig(d, "metadata.name")) not in ids:
                    problem(label, f"patches {d.get('kind') if isinstance(d, dict) else d}/{dig(d, 'metadata.name') if isinstance(d, dict) else ''}, which is not in base")


# --- Compose ---------------------------------------------------------------------------


def check_compose(root):
    cdir = os.path.join(root, "deploy/compose")
    where = "deploy/compose/compose.yaml"
    doc = load_all(os.path.join(cdir, "compose.yaml"))[0]
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    secrets = set((doc.get("secrets") or {}).keys())
    known = config_vars(root)
    env_example = os.path.join(cdir, ".env.example")
    example_vars = set()
    if os.path.exists(env_example):
        example_vars = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", open(env_example).read(), re.M))
    else:
        problem("deploy/compose", ".env.example is missing")
    text = open(os.path.join(cdir, "compose.yaml")).read()
    for var in sorted(set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text)) - example_vars):
        problem(where, f"${{{var}}} is not in .env.example")
    for want in ("postgres", "rabbitmq", "migrate", "api", "worker", "scheduler", "prometheus", "grafana"):
        if want not in services:
            problem(where, f"no service {want}")
    for name, svc in services.items():
        s = f"{where} service {name}"
        if "image" not in svc and "build" not in svc:
            problem(s, "has neither image nor build")
        deps = svc.get("depends_on") or {}
        for dep in deps if isinstance(deps, (list, dict)) else []:
            if dep not in services:
                problem(s, f"depends_on {dep}, which is not a service")
        for f in ([svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file") or []):
            fpath = f if isinstance(f, str) else f.get("path")
            required = True if isinstance(f, str) else f.get("required", True)
            if required and not os.path.exists(os.path.join(cdir, fpath)):
                problem(s, f"env_file {fpath} does not exist")
        for v in svc.get("volumes") or []:
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source")
            if src.startswith((".", "/")):
                if not os.path.exists(os.path.join(cdir, src)):
                    problem(s, f"bind mount {src} does not exist")
            elif src not in volumes:
                problem(s, f"volume {src} is not declared")
        for sec in svc.get("secrets") or []:
            src = sec if isinstance(sec, str) else sec.get("source")
            if src not in secrets:
                problem(s, f"secret {src} is not declared")
        env = svc.get("environment") or {}
        if isinstance(env, dict):
            for var in env:
                if var.startswith("FLOQ_") and var not in known and var not in ("FLOQ_DB_PASSWORD",):
                    problem(s, f"{var} is not a setting shared/src/config.rs reads")
        if name in ("migrate", "api", "worker", "scheduler"):
            if svc.get("read_only") is not True or str(svc.get("user", "")).split(":")[0] in ("", "0", "root"):
                problem(s, "floq's services run read-only and non-root")
            if "ALL" not in (svc.get("cap_drop") or []):
                problem(s, "cap_drop must include ALL")
            if name != "migrate":
                if not dig(svc, "healthcheck.test"):
                    problem(s, "no healthcheck")
                dep = deps.get("migrate") if isinstance(deps, dict) else None
                if not dep or dep.get("condition") != "service_completed_successfully":
                    problem(s, "must depend on migrate with condition service_completed_successfully")
            for var in ("FLOQ_JWT_SECRET", "FLOQ_ENC_KEY_SECRET", "FLOQ_ENC_KEY_SALT", "FLOQ_METRICS_TOKEN", "FLOQ_DATABASE_URL", "FLOQ_AMQP_URL"):
                if var not in env:
                    problem(s, f"{var} is not set")
        if name in ("api", "worker", "scheduler") and dig(svc, "deploy.replicas") != 2:
            problem(s, "2 replicas expected")
    # Prometheus scrapes each floq service, on the right port, with the token.
    prom = load_all(os.path.join(cdir, "prometheus.yml"))[0]
    ports = {}
    env = (services.get("api") or {}).get("environment") or {}
    for var, svc in (("FLOQ_API_METRICS_ADDR", "api"), ("FLOQ_WORKER_HTTP_ADDR", "worker"), ("FLOQ_SCHEDULER_HTTP_ADDR", "scheduler")):
        ports[svc] = int(str(env.get(var, ":0")).rsplit(":", 1)[1])
    scraped = {}
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for n in sd.get("names", []):
                scraped[n] = (job.get("job_name", ""), sd.get("port"), job)
    for svc, port in ports.items():
        if svc not in scraped:
            problem("deploy/compose/prometheus.yml", f"does not scrape {svc}")
            continue
        job, sport, cfg = scraped[svc]
        if not job.startswith("floq"):
            problem("deploy/compose/prometheus.yml", f"job {job} must start with floq (FloqTargetDown)")
        if sport != port:
            problem("deploy/compose/prometheus.yml", f"scrapes {svc} on {sport}, it serves metrics on {port}")
        if not dig(cfg, "authorization.credentials_file"):
            problem("deploy/compose/prometheus.yml", f"job {job} sends no FLOQ_METRICS_TOKEN")
    for p in ("grafana/provisioning/datasources", "grafana/provisioning/dashboards"):
        if not any(f.endswith((".yml", ".yaml")) for f in os.listdir(os.path.join(cdir, p))):
            problem("deploy/compose", f"{p} has no provisioning file")
        for f in os.listdir(os.path.join(cdir, p)):
            load_all(os.path.join(cdir, p, f))


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    root, what = sys.argv[1], sys.argv[2]
    try:
        if what == "k8s":
            check_k8s(root)
        elif what == "compose":
            check_compose(root)
        elif what == "metrics":
            check_metrics(root)
        elif what == "promql":
            write_promql_rules(root, sys.argv[3])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (OSError, yaml.YAMLError, json.JSONDecodeError, KeyError, ValueError) as e:
        problem(what, f"{type(e).__name__}: {e}")
    for p in PROBLEMS:
        print(f"  {p}", file=sys.stderr)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
