#!/usr/bin/env python3
"""Checks of the Helm chart, with Helm's own library and Kubernetes' own schemas.

For the default values and for ci/production-values.yaml:
  1. `helm lint --strict` (Helm's Go library through helm-python-sdk);
  2. render the chart offline;
  3. validate every rendered built-in object with kubernetes-validate in strict mode (unknown
     fields are errors) against each Kubernetes version in KUBE_VERSIONS; the custom
     resources (Prometheus Operator, KEDA) are not in its schemas, so they are named as such
     and checked here for the fields their operators require, and the PrometheusRule's rules
     go through `promtool check rules`;
  4. check what the chart promises: hardened pods, probes, a PDB per role, the webhooks file.
Then the negative cases: ci/bad-values.yaml must fail the values schema, and mutually
exclusive options must fail rendering. Finally the chart's PrometheusRule must hold exactly
the rules of deploy/prometheus/alerts.yml, and README.md must document every value.

Exit status 0 only when every check passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kivihook"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
README = CHART / "README.md"
# Values documented as a whole rather than key by key.
DOCUMENTED_WHOLE = ("resources", "podSecurityContext", "securityContext")
RELEASE = "kivihook"
NAMESPACE = "kivihook"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ["1.27.0", "1.30.0"]
ROLES = ["ingest", "dispatcher", "scheduler"]

# Custom resources the chart may render; kubernetes-validate has no schema for them.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}

failures: list[str] = []


def ok(message: str) -> None:
    print(f"  ok    {message}")


def fail(message: str) -> None:
    print(f"  FAIL  {message}")
    failures.append(message)


def expect(condition: bool, message: str) -> None:
    (ok if condition else fail)(message)


def load_values(path: Path | None) -> dict[str, Any]:
    """Parse a values file with Helm's own YAML reader, as `-f FILE` would."""
    if path is None:
        return {}
    return helm.values_from_yaml(path.read_text())


def render(values: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Render the chart offline; the objects in template order, and NOTES.txt."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = ""
    objects: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            notes = manifests[path]
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                doc.setdefault("metadata", {})
                doc["_template"] = path
                objects.append(doc)
    return objects, notes


def lint(values: dict[str, Any], label: str) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    for message in report.get("messages") or []:
        severity = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(message["severity"], "UNKNOWN")
        print(f"        lint {severity}: {message['path']}: {message['error']}")
    problems = [m for m in report.get("messages") or [] if m["severity"] >= 2]
    problems += report.get("errors") or []
    expect(not problems, f"helm lint --strict ({label}): {len(problems)} warnings or errors")


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "_template"}


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('name', '?')}"


def kube_validate(objects: list[dict[str, Any]]) -> None:
    for version in KUBE_VERSIONS:
        builtin = 0
        for obj in objects:
            key = (obj.get("apiVersion"), obj.get("kind"))
            try:
                kubernetes_validate.validate(strip(obj), version, strict=True)
                builtin += 1
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"kubernetes-validate {version} --strict: {name_of(obj)}: {path}: {e.message}")
            except kv_utils.SchemaNotFoundError:
                if key in CUSTOM_KINDS:
                    continue
                fail(f"kubernetes-validate {version}: no schema for {key[0]} {key[1]} "
                     f"({name_of(obj)}): not a Kubernetes kind this chart may render")
        ok(f"kubernetes-validate {version} --strict: {builtin} built-in objects valid")
    custom = [name_of(o) for o in objects if (o.get("apiVersion"), o.get("kind")) in CUSTOM_KINDS]
    if custom:
        print(f"        not in kubernetes-validate's schemas (custom resources), "
              f"checked below instead: {', '.join(custom)}")


def check_custom(objects: list[dict[str, Any]], tmp: Path) -> None:
    """Fields the Prometheus Operator and KEDA reject an object without."""
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec") or {}
        if kind == "ServiceMonitor":
            endpoints = spec.get("endpoints") or []
            expect(bool(spec.get("selector", {}).get("matchLabels")) and bool(endpoints)
                   and all(e.get("port") and e.get("path") == "/metrics" for e in endpoints),
                   f"{name_of(obj)}: selector and /metrics endpoints by port name")
        elif kind == "PrometheusRule":
            groups = spec.get("groups") or []
            rules = [r for g in groups for r in g.get("rules") or []]
            expect(bool(rules) and all(r.get("expr") and r.get("alert") for r in rules),
                   f"{name_of(obj)}: {len(rules)} alerting rules with expressions")
            promtool_rules({"groups": groups}, tmp / "prometheusrule.yml", name_of(obj))
        elif kind == "ScaledObject":
            triggers = spec.get("triggers") or []
            target = spec.get("scaleTargetRef") or {}
            expect(bool(target.get("name")) and bool(triggers)
                   and all(t.get("type") and isinstance(t.get("metadata"), dict) for t in triggers),
                   f"{name_of(obj)}: scale target and typed triggers")
        elif kind == "TriggerAuthentication":
            refs = spec.get("secretTargetRef") or []
            expect(bool(refs) and all(r.get("parameter") and r.get("name") and r.get("key") for r in refs),
                   f"{name_of(obj)}: secret references with parameter, name and key")


def promtool_rules(rules: dict[str, Any], path: Path, label: str) -> None:
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    run = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    # Name the rules by their object, not by the temporary file promtool read.
    text = (run.stdout + run.stderr).replace(str(path), label)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    output = " | ".join(line for line in lines if not line.startswith("Checking "))
    expect(run.returncode == 0, f"promtool check rules on {label}: {output}")


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def role_name(role: str) -> str:
    return f"{RELEASE}-{role}"


def check_promises(objects: list[dict[str, Any]], values: dict[str, Any], label: str) -> None:
    """What the chart's README promises, on the rendered objects."""
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    pdbs = by_kind(objects, "PodDisruptionBudget")
    merged = merged_values(values)
    for role in ROLES:
        name = role_name(role)
        deployment = deployments.get(name)
        if deployment is None:
            fail(f"{label}: Deployment {name} is missing")
            continue
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        sc = container.get("securityContext") or {}
        psc = pod.get("securityContext") or {}
        hardened = (
            psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001
            and sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 10001
            and sc.get("readOnlyRootFilesystem") is True
            and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"]
            and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        )
        expect(hardened, f"{name}: non-root 10001, read-only root, no escalation, drop ALL, RuntimeDefault seccomp")
        probes = (
            container.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz"
            and container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz"
            and any(p.get("containerPort") == 8080 for p in container.get("ports", []))
        )
        expect(probes, f"{name}: liveness /healthz, readiness /readyz on 8080")
        expect(container.get("args") == [role], f"{name}: runs `kivihook {role}`")
        tmp_volume = any(v["name"] == "tmp" and "emptyDir" in v for v in pod.get("volumes", []))
        tmp_mount = any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", []))
        expect(tmp_volume and tmp_mount, f"{name}: writable emptyDir at /tmp")
        expect(bool(pod.get("topologySpreadConstraints")), f"{name}: topologySpreadConstraints")
        env = {e["name"]: e for e in container.get("env", [])}
        secret_keys = ["KIVIHOOK_AMQP_URL", "KIVIHOOK_REDIS_URL", "KIVIHOOK_ADMIN_TOKEN",
                       "KIVIHOOK_INGEST_TOKEN", "KIVIHOOK_SECRET_KEY"]
        secret_name = merged["existingSecret"] or RELEASE
        from_secret = all(
            env.get(k, {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret_name
            for k in secret_keys)
        expect(from_secret, f"{name}: credentials from Secret {secret_name}")
        expect(pod.get("enableServiceLinks") is False, f"{name}: no service-link variables")
        autoscaled = (merged[role].get("autoscaling", {}).get("enabled")
                      or (role == "dispatcher" and merged["dispatcher"]["keda"]["enabled"]))
        if autoscaled:
            expect("replicas" not in deployment["spec"], f"{name}: replicas left to the autoscaler")
        else:
            expect(deployment["spec"].get("replicas") == merged[role]["replicas"],
                   f"{name}: {merged[role]['replicas']} replicas")
        expect(name in pdbs, f"{name}: PodDisruptionBudget")
        expect(name in services, f"{name}: Service with an http port for scraping")

    # The webhooks declared in values reach ingest as a file.
    ingest = deployments.get(role_name("ingest"))
    configmaps = by_kind(objects, "ConfigMap")
    declared = merged["webhooks"]
    if declared and ingest is not None:
        cm = configmaps.get(f"{RELEASE}-webhooks")
        data = json.loads(cm["data"]["webhooks.json"]) if cm else None
        expect(data == declared, f"ConfigMap {RELEASE}-webhooks holds the {len(declared)} declared webhooks as JSON")
        container = ingest["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        mounted = any(m["mountPath"] == "/etc/kivihook" for m in container.get("volumeMounts", []))
        expect(env.get("KIVIHOOK_WEBHOOKS_FILE") == "/etc/kivihook/webhooks.json" and mounted,
               "ingest: KIVIHOOK_WEBHOOKS_FILE=/etc/kivihook/webhooks.json, mounted from the ConfigMap")
    elif not declared:
        expect(f"{RELEASE}-webhooks" not in configmaps, "no webhooks declared: no webhooks ConfigMap")

    secrets = by_kind(objects, "Secret")
    if merged["existingSecret"]:
        expect(not secrets, f"existingSecret {merged['existingSecret']}: the chart creates no Secret")
    else:
        secret = secrets.get(RELEASE, {})
        expect(sorted(secret.get("data", {})) == sorted(
            ["KIVIHOOK_AMQP_URL", "KIVIHOOK_REDIS_URL", "KIVIHOOK_ADMIN_TOKEN",
             "KIVIHOOK_INGEST_TOKEN", "KIVIHOOK_SECRET_KEY"]),
            f"Secret {RELEASE}: the five KIVIHOOK_* keys")

    if merged["dispatcher"]["keda"]["enabled"]:
        (scaled,) = by_kind(objects, "ScaledObject").values()
        queues = [t["metadata"].get("queueName") for t in scaled["spec"]["triggers"] if t["type"] == "rabbitmq"]
        wanted = [f"{merged['prefix']}.deliveries", f"{merged['prefix']}.retries"]
        expect(queues == wanted, f"ScaledObject: scales on the queues {', '.join(wanted)}")
    if merged["ingest"]["ingress"]["enabled"]:
        (ingress,) = by_kind(objects, "Ingress").values()
        expect(bool(ingress["spec"].get("tls")) == bool(merged["ingest"]["ingress"]["tls"]),
               "Ingress: TLS as configured")


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values)


def check_case(label: str, values_file: Path | None, tmp: Path) -> None:
    print(f"\n-- chart with {label}")
    values = load_values(values_file)
    lint(values, label)
    try:
        objects, notes = render(values)
    except helm.HelmError as e:
        fail(f"render ({label}): {e}")
        return
    kinds: dict[str, int] = {}
    for obj in objects:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    ok(f"rendered {len(objects)} objects: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    expect(bool(notes.strip()), "NOTES.txt renders")
    kube_validate(objects)
    check_custom(objects, tmp)
    check_promises(objects, values, label)


def expect_failure(label: str, action: Callable[[], Any], error: type[Exception], needle: str) -> None:
    try:
        action()
    except error as e:
        message = str(e).strip().splitlines()
        first = " ".join(line.strip() for line in message)[:300]
        if needle in str(e):
            ok(f"{label}: rejected as it must be: {first}")
        else:
            fail(f"{label}: rejected, but not for the expected reason: {first}")
        return
    fail(f"{label}: was accepted, but must be rejected")


def check_negative() -> None:
    print("\n-- values that must be rejected")
    bad = load_values(CHART / "ci" / "bad-values.yaml")

    def schema() -> None:
        with helm.Chart.load(CHART) as chart:
            chart.validate_schema(bad)

    expect_failure("ci/bad-values.yaml against values.schema.json", schema, helm.HelmValuesError, "replicas")
    expect_failure("ci/bad-values.yaml at render", lambda: render(bad), helm.HelmError, "replicas")
    report = helm.lint(CHART, bad, strict=True, namespace=NAMESPACE)
    lint_errors = [m["error"] for m in report.get("messages") or [] if m["severity"] >= 3]
    if any("replicas" in e for e in lint_errors):
        ok("ci/bad-values.yaml under helm lint --strict: reported as an error")
    else:
        fail("ci/bad-values.yaml under helm lint --strict: not reported as an error")
    both = {"dispatcher": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}}
    expect_failure("dispatcher HPA and KEDA together", lambda: render(both), helm.HelmRenderError, "exclusive")
    twice = {"webhooks": [{"name": "a", "url": "https://a.example.com", "events": ["*"]}] * 2}
    expect_failure("two webhooks with one name", lambda: render(twice), helm.HelmRenderError, "used twice")


def check_alerts_in_sync(tmp: Path) -> None:
    print("\n-- PrometheusRule and deploy/prometheus/alerts.yml")
    try:
        objects, _ = render({"metrics": {"prometheusRule": {"enabled": True}}})
    except helm.HelmError as e:
        fail(f"render with metrics.prometheusRule.enabled: {e}")
        return
    rules = list(by_kind(objects, "PrometheusRule").values())
    if len(rules) != 1:
        fail(f"metrics.prometheusRule.enabled renders {len(rules)} PrometheusRules, not 1")
        return
    (rule,) = rules
    plain = yaml.safe_load(ALERTS.read_text())
    same = rule["spec"]["groups"] == plain["groups"]
    if not same:
        chart_rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        file_rules = {r["alert"]: r for g in plain["groups"] for r in g["rules"]}
        for alert in sorted(set(chart_rules) | set(file_rules)):
            if chart_rules.get(alert) != file_rules.get(alert):
                print(f"        differs: {alert}")
    expect(same, "the chart's rules (default thresholds) equal deploy/prometheus/alerts.yml")


def value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and not path.endswith(DOCUMENTED_WHOLE):
            paths += value_paths(value, path)
        else:
            paths.append(path)
    return paths


def schema_node(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for key in path.split("."):
        node = (node or {}).get("properties", {}).get(key)
    return node


def check_schema_coverage() -> None:
    print("\n-- values.schema.json types every value")
    with helm.Chart.load(CHART) as chart:
        paths = value_paths(chart.values)
        schema = chart.schema or {}
    untyped = [p for p in paths if not (schema_node(schema, p) or {}).keys() & {"type", "anyOf"}]
    expect(schema.get("additionalProperties") is False, "unknown top-level values are rejected")
    expect(not untyped, f"{len(paths)} values, untyped: {untyped or 'none'}")


def check_readme() -> None:
    print("\n-- README.md documents every value")
    with helm.Chart.load(CHART) as chart:
        paths = value_paths(chart.values)
    readme = README.read_text()
    missing = [p for p in paths if f"| `{p}` |" not in readme]
    expect(not missing, f"{len(paths)} values in values.yaml, undocumented: {missing or 'none'}")


def main() -> int:
    print(f"helm SDK {helm.helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        check_case("default values", None, tmp)
        check_case("ci/production-values.yaml", CHART / "ci" / "production-values.yaml", tmp)
        check_negative()
        check_alerts_in_sync(tmp)
    check_schema_coverage()
    check_readme()
    if failures:
        print(f"\nhelm checks: {len(failures)} failed")
        return 1
    print("\nhelm checks: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
