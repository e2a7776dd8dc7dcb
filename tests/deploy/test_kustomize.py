"""kustomize renders every target; Kubernetes schemas (strict), CRD structure and checkov pass."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    DEPLOY,
    K8S,
    OVERLAYS,
    TARGETS,
    by_kind,
    find_tool,
    named,
    pod_spec,
    render,
    run,
)

KUBERNETES_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
IMAGE = "ghcr.io/retina/retina"

BASE_OBJECTS = {
    ("ServiceAccount", "retina-image-store"),
    ("ServiceAccount", "retina-vision-gateway"),
    ("ServiceAccount", "retina-migrate"),
    ("ConfigMap", "retina-config"),
    ("PersistentVolumeClaim", "retina-images"),
    ("Deployment", "retina-image-store"),
    ("Service", "retina-image-store"),
    ("Deployment", "retina-vision-gateway"),
    ("Service", "retina-vision-gateway"),
    ("Job", "retina-migrate"),
    ("PodDisruptionBudget", "retina-image-store"),
    ("PodDisruptionBudget", "retina-vision-gateway"),
    ("HorizontalPodAutoscaler", "retina-image-store"),
    ("HorizontalPodAutoscaler", "retina-vision-gateway"),
}
NETWORK_POLICIES = {
    ("NetworkPolicy", name)
    for name in (
        "retina-default-deny",
        "retina-allow-dns",
        "retina-allow-postgres",
        "retina-vision-gateway-egress",
        "retina-vision-gateway-ingress",
        "retina-image-store-ingress",
        "retina-allow-prometheus",
    )
}
MONITORING = {
    ("ServiceMonitor", "retina-image-store"),
    ("ServiceMonitor", "retina-vision-gateway"),
    ("PrometheusRule", "retina"),
    ("ConfigMap", "retina-dashboard-image-store"),
    ("ConfigMap", "retina-dashboard-vision-gateway"),
}
INGRESS = {("Ingress", "retina-images"), ("Ingress", "retina-vision-gateway")}

EXPECTED = {
    "base": (BASE_OBJECTS, None, None),
    "overlays/dev": (BASE_OBJECTS | NETWORK_POLICIES, "retina-dev", "dev"),
    "overlays/prod": (BASE_OBJECTS | NETWORK_POLICIES | MONITORING | INGRESS, "retina", "0.1.0"),
}


def images(documents: list[dict[str, Any]]) -> set[str]:
    found = set()
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            spec = pod_spec(doc)
            found |= {c["image"] for c in spec["containers"] + spec.get("initContainers", [])}
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_renders_the_expected_objects_namespace_and_image(target: str) -> None:
    objects, namespace, tag = EXPECTED[target]
    documents = render(target)
    rendered = [(doc["kind"], doc["metadata"]["name"]) for doc in documents]
    assert len(rendered) == len(set(rendered)), "duplicate objects"
    assert set(rendered) == objects
    assert {doc["metadata"].get("namespace") for doc in documents} == {namespace}
    # The Secret is created out of band from secret.example.yaml, never rendered.
    assert not by_kind(documents, "Secret")
    assert images(documents) == {IMAGE if tag is None else f"{IMAGE}:{tag}"}


def test_secret_template_is_not_a_resource() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]
    template = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    assert template["kind"] == "Secret"
    assert template["metadata"]["name"] == "retina-secrets"
    assert set(template["stringData"]) == {"DATABASE_URL", "SERVICE_TOKENS", "IMAGE_SIGNING_KEYS"}
    assert all("CHANGE-ME" in value for value in template["stringData"].values()), "placeholders only"


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_passes_strict_schema_validation(target: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (a dev dependency in pyproject.toml)"
    )
    problems = []
    for doc in render(target):
        if doc["kind"] in CRD_KINDS:
            continue  # no schema ships for CRDs; test_custom_resources_are_well_formed covers them
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert not problems, "\n".join(problems)


DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SPEC = {
    "type": "object",
    "required": ["selector", "endpoints"],
    "additionalProperties": False,
    "properties": {
        "selector": {
            "type": "object",
            "required": ["matchLabels"],
            "properties": {"matchLabels": LABELS},
            "additionalProperties": False,
        },
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["port"],
                "additionalProperties": False,
                "properties": {
                    "port": {"type": "string"},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": DURATION,
                    "scrapeTimeout": DURATION,
                    "honorLabels": {"type": "boolean"},
                    "relabelings": {"type": "array"},
                    "metricRelabelings": {"type": "array"},
                },
            },
        },
    },
}
PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "interval": DURATION,
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["alert", "expr", "for", "labels", "annotations"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]+$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": DURATION,
                                "keep_firing_for": DURATION,
                                "labels": LABELS,
                                "annotations": LABELS,
                            },
                        },
                    },
                },
            },
        }
    },
}


def test_custom_resources_are_well_formed() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema (comes with kubernetes-validate)")
    documents = render("overlays/prod")
    for doc in by_kind(documents, "ServiceMonitor") + by_kind(documents, "PrometheusRule"):
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        # kube-prometheus-stack's Prometheus selects these by its Helm release label.
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        schema = SERVICE_MONITOR_SPEC if doc["kind"] == "ServiceMonitor" else PROMETHEUS_RULE_SPEC
        jsonschema.validate(doc["spec"], schema)
    for monitor in by_kind(documents, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in by_kind(documents, "Service") if selector.items() <= s["metadata"]["labels"].items()]
        assert len(services) == 1, f"{monitor['metadata']['name']} must select exactly one Service"
        port_names = {port["name"] for port in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
    [rule] = by_kind(documents, "PrometheusRule")
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names))


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    documents = render("overlays/prod")
    for name in ("image-store", "vision-gateway"):
        config_map = named(documents, "ConfigMap", f"retina-dashboard-{name}")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["data"] == {f"{name}.json": (DEPLOY / "grafana" / f"{name}.json").read_text()}


# ---- checkov ------------------------------------------------------------------------------------

CHECKOV_CONFIG = K8S / ".checkov.yaml"
# Deliberate, each justified by a comment in deploy/k8s/.checkov.yaml.
EXPECTED_SKIPS = {"CKV_K8S_43", "CKV_K8S_35", "CKV_K8S_15"}


def test_checkov_skips_are_the_justified_ones() -> None:
    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    assert set(config["skip-check"]) == EXPECTED_SKIPS
    text = CHECKOV_CONFIG.read_text()
    for check in EXPECTED_SKIPS:
        assert re.search(rf"^  # {check} \"[^\"]+\": \S.*\n(?:  # .*\n)*  - {check}$", text, re.MULTILINE), (
            f"{check} needs a comment naming the check and why it is skipped"
        )


@pytest.mark.parametrize("target", OVERLAYS)
def test_checkov_passes_on_rendered_overlay(target: str, tmp_path: Path) -> None:
    checkov = find_tool("checkov")
    rendered = tmp_path / f"{target.replace('/', '-')}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(target)))
    result = run([checkov, "--config-file", str(CHECKOV_CONFIG), "-f", str(rendered)])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0,", result.stdout), result.stdout[-2000:]


def test_checkov_passes_on_dockerfile() -> None:
    checkov = find_tool("checkov")
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    result = run(
        [checkov, "-f", str(dockerfile), "--framework", "dockerfile", "--skip-download", "--compact", "--quiet"]
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # The one skip (no HEALTHCHECK: Kubernetes probes instead) is an inline comment there.
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0, Skipped checks: 1", result.stdout), result.stdout
