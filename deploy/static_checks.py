#!/usr/bin/env python3
"""Static checks of deploy/ beyond what the tools themselves validate
(deploy/check.sh runs them):

    static_checks.py k8s FILE...     probes, scrape annotations, shutdown budget,
                                      selectors, connection budget, the peered
                                      StatefulSet's [peers] against its pod names
    static_checks.py dashboard       the Grafana JSON; every PromQL expression
                                      parses (promtool check rules); metric names
    static_checks.py dockerfiles     multi-stage, non-root, ports, HEALTHCHECK,
                                      COPY sources that exist
"""

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# PostgreSQL's max_connections and superuser_reserved_connections that the
# manifests' budgets are written for (the comments in the manifests say so).
MAX_CONNECTIONS, RESERVED = 100, 3
# pgmux's metric names (deploy/README.md, Metrics).
# Every series pgmux exports, from the one list of them (stats/catalog.rs).
METRICS = set(re.findall(r'm\("(pgmux_[a-z_]+)"', (HERE.parent / "crates/pgmux/src/stats/catalog.rs").read_text()))

problems: list[str] = []


def expect(ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def report(what: str) -> int:
    for p in problems:
        print(f"  FAIL {p}")
    if not problems:
        print(f"  ok   {what}")
    return 1 if problems else 0


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_k8s(files: list[str]) -> int:
    docs = [d for f in files for d in yaml.safe_load_all(Path(f).read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    pgmux_toml = tomllib.loads(configmaps["pgmux-config"]["data"]["pgmux.toml"])
    shutdown = pgmux_toml.get("shutdown_timeout", 30)
    expect(pgmux_toml.get("metrics_addr", "").startswith("0.0.0.0:"), "pgmux-config: metrics_addr must listen on the pod IP for probes and scraping")
    contract = configmaps["booktrader-env"]["data"]
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}

    pgmux_pods = 0
    # An autoscaled workload is budgeted at its HPA's maxReplicas.
    max_replicas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"] for h in by_kind.get("HorizontalPodAutoscaler", [])}
    for dep in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        labels = pod["metadata"].get("labels", {})
        expect(all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()), f"{name}: selector does not match the pod labels")
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        pgmux = [c for c in containers if c["name"] == "pgmux"]
        if not pgmux:
            continue
        pgmux_pods += 1
        c = pgmux[0]
        if c in spec.get("initContainers", []):
            expect(c.get("restartPolicy") == "Always", f"{name}: a pgmux init container must be a native sidecar (restartPolicy: Always)")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        metrics_port = int(pgmux_toml["metrics_addr"].rsplit(":", 1)[1])
        expect(ports.get("metrics") == metrics_port, f"{name}: pgmux's metrics port is not {metrics_port}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            got = c.get(probe, {}).get("httpGet", {})
            expect(got.get("path") == path and got.get("port") in ("metrics", metrics_port), f"{name}: pgmux {probe} must GET {path} on the metrics port, got {got}")
        ann = pod["metadata"].get("annotations", {})
        expect(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(metrics_port),
               f"{name}: Prometheus scrape annotations missing or not on port {metrics_port}")
        pre_stop = 0
        sidecar = c not in spec.get("containers", [])
        for ctr in spec.get("containers", []) + (pgmux if sidecar else []):
            cmd = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            if cmd[:1] == ["sleep"]:
                pre_stop += int(cmd[1])
        app_grace = 20 if sidecar else 0  # the app's gunicorn graceful_timeout runs before a sidecar stops
        grace = spec.get("terminationGracePeriodSeconds", 30)
        needed = pre_stop + shutdown + app_grace
        expect(grace > needed, f"{name}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + shutdown_timeout {shutdown} (+ app {app_grace})")
        refs = {r.get("configMapRef", {}).get("name") or r.get("secretRef", {}).get("name") for r in c.get("envFrom", [])}
        expect({"booktrader-env", "booktrader-db"} <= refs, f"{name}: pgmux must take the app's contract (booktrader-env, booktrader-db)")
        expect("booktrader-db" in secrets, "the booktrader-db Secret is missing")
        env = env_of(c)
        pool = int(env.get("PGMUX_POOL_SIZE") or pgmux_toml.get("pool_size", 20))
        replicas = max_replicas.get(name, dep["spec"].get("replicas", 1))
        surge = dep["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 0)
        budget = MAX_CONNECTIONS - RESERVED
        expect((replicas + int(surge)) * pool <= budget,
               f"{name}: (replicas {replicas} + surge {surge}) x pool_size {pool} exceeds max_connections {MAX_CONNECTIONS} - reserved {RESERVED}")
        cap = env.get("PGMUX_MAX_DB_CONNECTIONS")
        expect(cap is not None and int(cap) <= pool, f"{name}: set PGMUX_MAX_DB_CONNECTIONS (<= pool_size) so each instance enforces its share")
        listen = env.get("PGMUX_LISTEN_ADDR") or pgmux_toml["listen_addr"]
        for app in spec.get("containers", []):
            if app["name"] == "pgmux":
                continue
            app_env = env_of(app)
            expect(app_env.get("DB_HOST") == "127.0.0.1", f"{name}: the app beside the sidecar must set DB_HOST=127.0.0.1")
            expect(listen.endswith(":" + contract["DB_PORT"]), f"{name}: the sidecar must listen on the app's DB_PORT {contract['DB_PORT']}, not {listen}")
        for svc in by_kind.get("Service", []):
            if svc["spec"].get("selector") and all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
                for p in svc["spec"]["ports"]:
                    target = p.get("targetPort")
                    known = {pp["name"] for ctr in containers for pp in ctr.get("ports", [])}
                    expect(not isinstance(target, str) or target in known, f"service {svc['metadata']['name']}: targetPort {target} names no container port")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            sel = pdb["spec"]["selector"]["matchLabels"]
            if all(labels.get(k) == v for k, v in sel.items()):
                expect(pdb["spec"].get("maxUnavailable", 0) < replicas, f"pdb {pdb['metadata']['name']}: would allow every replica down")
    peered = [d for d in by_kind.get("StatefulSet", []) if check_peer_list(d, configmaps, by_kind, max_replicas)]
    expect(peered, "expected a peered StatefulSet of pgmux (deploy/k8s/peered)")
    expect(pgmux_pods >= 2, "expected pgmux both standalone and as a sidecar")
    expect(any(p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == "pgmux" for p in by_kind.get("PodDisruptionBudget", [])),
           "no PodDisruptionBudget for the standalone pgmux")
    return report(f"{len(docs)} resources: probes, annotations, shutdown budget (shutdown_timeout {shutdown}), connection budgets")


def check_peer_list(sts: dict, configmaps: dict, by_kind: dict, max_replicas: dict) -> bool:
    """A peered StatefulSet's [peers] must name every pod it may run (its
    HPA's maxReplicas), pod K as peer K + 1 at K's stable name under the
    headless Service, and each pod must take its peer id from its ordinal.
    Whether `sts` is peered (its pgmux config has [peers])."""
    name = sts["metadata"]["name"]
    spec = sts["spec"]["template"]["spec"]
    maps = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
    tomls = [tomllib.loads(configmaps[m]["data"]["pgmux.toml"]) for m in maps if "pgmux.toml" in configmaps.get(m, {}).get("data", {})]
    peers = next((t["peers"] for t in tomls if "peers" in t), None)
    if peers is None:
        return False
    pgmux = next(c for c in spec["containers"] if c["name"] == "pgmux")
    port = {p["name"]: p["containerPort"] for p in pgmux.get("ports", [])}.get("postgres")
    service = sts["spec"]["serviceName"]
    pods = max_replicas.get(name, sts["spec"].get("replicas", 1))
    wanted = {str(k + 1): {"host": f"{name}-{k}.{service}", "port": port} for k in range(pods)}
    expect(peers == wanted, f"{name}: [peers] must be {wanted} (pod K is peer K + 1), got {peers}")
    headless = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == service]
    expect(bool(headless) and headless[0]["spec"].get("clusterIP") == "None", f"{name}: serviceName {service} must be a headless Service (clusterIP: None)")
    start = " ".join(pgmux.get("command", []) + pgmux.get("args", []))
    expect("PGMUX_PEER_ID=$(( ${HOSTNAME##*-} + 1 ))" in start, f"{name}: each pod must set PGMUX_PEER_ID to its ordinal + 1")
    return True


def check_dashboard() -> int:
    path = HERE / "grafana" / "pgmux-dashboard.json"
    try:
        dash = json.loads(path.read_text())
    except ValueError as e:
        problems.append(f"{path}: {e}")
        return report("dashboard")
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    ids = [p["id"] for p in dash["panels"]]
    expect(len(ids) == len(set(ids)), "panel ids are not unique")
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "") for v in dash["templating"]["list"] if v["type"] == "query"]
    used = set()
    rules = []
    for i, expr in enumerate(exprs):
        concrete = expr.replace("$__rate_interval", "1m").replace("$job", "pgmux")
        concrete = re.sub(r"\$(instance|database|user)", ".*", concrete)
        if concrete.startswith("label_values("):
            inner = concrete[len("label_values("):-1].rsplit(",", 1)[0]
            concrete = inner
        used |= {m.removesuffix("_bucket") for m in re.findall(r"\bpgmux_[a-z_]+", concrete)}
        rules.append({"record": f"dashboard:expr_{i}", "expr": concrete})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        expect(out.returncode == 0, f"promtool rejects a dashboard expression: {out.stdout.strip()} {out.stderr.strip()}")
    expect(not (used - METRICS), f"the dashboard uses unknown metrics: {sorted(used - METRICS)}")
    expect(len(panels) >= 10, f"only {len(panels)} panels")
    return report(f"{len(panels)} panels, {len(exprs)} PromQL expressions parse, {len(used)} pgmux metrics, all known")


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) with continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def check_dockerfiles() -> int:
    for path, context in ((HERE / "Dockerfile", ROOT), (HERE / "booktrader" / "Dockerfile", HERE / "booktrader")):
        inst = dockerfile(path)
        name = path.relative_to(ROOT)
        for word, args in inst:
            if word == "COPY" and "--from=" not in args:
                for src in args.split()[:-1]:
                    expect((context / src).exists(), f"{name}: COPY source {src} does not exist in the build context")
        users = [a for w, a in inst if w == "USER"]
        expect(bool(users) and users[-1].split(":")[0] not in ("root", "0"), f"{name}: the final stage must run as a non-root USER")
    inst = dockerfile(HERE / "Dockerfile")
    expect(sum(w == "FROM" for w, _ in inst) >= 2, "deploy/Dockerfile: expected a multi-stage build")
    exposed = {p for w, a in inst if w == "EXPOSE" for p in a.split()}
    expect({"6432", "9930"} <= exposed, f"deploy/Dockerfile: EXPOSE 6432 and 9930, got {exposed}")
    health = [a for w, a in inst if w == "HEALTHCHECK"]
    expect(bool(health) and '["pgmux", "health"' in health[0], "deploy/Dockerfile: HEALTHCHECK must run `pgmux health` (exec form, no curl)")
    copies = [a for w, a in inst if w == "COPY" and "--from=" not in a]
    final_copies = [a for a in copies if "pgmux.toml" in a]
    expect(bool(final_copies), "deploy/Dockerfile: the runtime stage must carry a default config")
    ignore = (HERE / "Dockerfile.dockerignore").read_text()
    for needed in ("!Cargo.toml", "!Cargo.lock", "!crates/", "!tests/", "!deploy/pgmux.toml"):
        expect(needed in ignore, f"deploy/Dockerfile.dockerignore must let {needed[1:]} into the context")
    return report("deploy/Dockerfile (multi-stage, non-root, 6432 + 9930, HEALTHCHECK pgmux health) and booktrader/Dockerfile")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "k8s":
        sys.exit(check_k8s(sys.argv[2:]))
    if command == "dashboard":
        sys.exit(check_dashboard())
    if command == "dockerfiles":
        sys.exit(check_dockerfiles())
    print(__doc__, file=sys.stderr)
    sys.exit(2)
