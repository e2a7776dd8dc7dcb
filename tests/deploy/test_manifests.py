"""Deployment artefacts validated offline: kustomize, Kubernetes schemas, security invariants,
PromQL, alert unit tests, and metric names checked against live /metrics of both services."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
MONITORING = DEPLOY / "k8s" / "components" / "monitoring"
METRIC_PREFIXES = ("http_server_", "image_store_", "vision_gateway_")


def needs(tool: str) -> str:
    # Console scripts of the test environment sit next to its interpreter, PATH or not.
    path = shutil.which(tool, path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(
            f"{tool} is not installed (kubectl ships with the machine image; promtool: apt-get install prometheus)"
        )
    return path


def render(target: str) -> list[dict[str, Any]]:
    output = subprocess.run(
        [needs("kubectl"), "kustomize", str(DEPLOY / "k8s" / target)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.mark.parametrize("target", OVERLAYS)
def test_kustomize_renders_and_validates_strictly(target: str, tmp_path: Path) -> None:
    documents = render(target)
    kinds = {doc["kind"] for doc in documents}
    assert {"Deployment", "Service", "ConfigMap", "Job", "PersistentVolumeClaim", "HorizontalPodAutoscaler"} <= kinds
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run(
        [needs("kubernetes-validate"), "--strict", "--quiet", "-k", "1.30.0", str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout


def test_prod_has_policies_monitoring_and_valid_crds() -> None:
    documents = render("overlays/prod")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)
    assert len(by_kind["NetworkPolicy"]) == 7
    deny = next(p for p in by_kind["NetworkPolicy"] if p["metadata"]["name"] == "retina-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]
    for monitor in by_kind["ServiceMonitor"]:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"].startswith("retina-")
        assert monitor["spec"]["endpoints"][0] == {
            **monitor["spec"]["endpoints"][0],
            "port": "http",
            "path": "/metrics",
        }
    [rule] = by_kind["PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    [dashboards] = [c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == "retina-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {"image-store.json", "vision-gateway.json"}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_workloads_are_hardened_and_shut_down_in_time(target: str) -> None:
    for doc in render(target):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in containers(doc):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
            assert "requests" in container["resources"]
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), "writable /tmp"
        if doc["kind"] != "Deployment":
            continue
        [container] = containers(doc)
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/livez"
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        shutdown = float(next(e["value"] for e in container["env"] if e["name"] == "SHUTDOWN_TIMEOUT_SECONDS"))
        assert pre_stop + shutdown < pod["terminationGracePeriodSeconds"], doc["metadata"]["name"]


def test_dockerfile_basics() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "multi-stage"
    assert all(re.search(r":\d+\.\d+\.\d+-slim", image) for image in stages), "pinned slim base images"
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001", final, flags=re.MULTILINE), "runs as non-root"
    assert "libmagic1" in final
    assert not re.search(r"^ADD\s+https?://", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["retina"]' in final
    assert "MIGRATIONS_PATH=/app/migrations" in final


def test_generated_monitoring_files_are_current() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, text in module.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run deploy/generate.py"


def all_expressions() -> list[str]:
    expressions = []
    for name in ("image-store.json", "vision-gateway.json"):
        dashboard = json.loads((MONITORING / "dashboards" / name).read_text())
        expressions += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    expressions += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return expressions


def test_every_promql_expression_parses() -> None:
    expressions = all_expressions()
    assert len(expressions) > 30
    for expr in expressions:
        concrete = expr.replace("$__rate_interval", "5m").replace('"$job"', '"retina-.*"')
        promql_parser.parse(concrete)  # raises on a syntax error


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:http_server|image_store|vision_gateway)_[a-z_]+)\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_rules_pass_promtool_unit_tests() -> None:
    promtool = needs("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "rules.test.yaml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


async def test_every_metric_used_exists_in_live_scrapes(aiohttp_client: Any, service_env: dict[str, str]) -> None:
    from common.settings import load_gateway_settings, load_image_store_settings
    from services.image_store.app import create_app as create_store
    from services.vision_gateway.app import create_app as create_gateway

    exposed: set[str] = set()
    for factory, loader in ((create_store, load_image_store_settings), (create_gateway, load_gateway_settings)):
        client = await aiohttp_client(factory(loader(service_env)))
        await client.get("/livez")
        text = await (await client.get("/metrics")).text()
        for line in text.splitlines():
            match = re.match(r"# (?:HELP|TYPE) (\S+)", line) or re.match(r"([a-z_]+)[{ ]", line)
            if match:
                exposed.add(re.sub(r"_(bucket|sum|count|total)$", "", match.group(1)))
    used = set().union(*(metric_names(e) for e in all_expressions()))
    documented = (ROOT / "docs" / "metrics.md").read_text()
    assert used, "dashboards and rules use our metrics"
    for name in sorted(used):
        assert re.sub(r"_total$", "", name) in exposed, f"{name} is used but not exposed by either service"
        assert name in documented or f"{name}_total" in documented, f"{name} is not in docs/metrics.md"


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/prod"])
def test_checkov_passes_with_justified_skips(target: str, tmp_path: Path) -> None:
    checkov = needs("checkov")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(render(target)))
    result = subprocess.run(
        [checkov, "--config-file", str(DEPLOY / "k8s" / ".checkov.yaml"), "-f", str(rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", result.stdout), result.stdout[-1000:]
