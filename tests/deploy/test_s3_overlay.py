"""overlays/prod-s3 (components/s3-storage): image bytes in a bucket, several image-store pods.

Rendered offline with kubectl kustomize and checked like the other targets: strict schemas,
the services' own settings loader, checkov; plus what makes many replicas possible.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import K8S, ROOT, by_kind, env_example_variables, find_tool, named, pod_spec, render, run
from tests.deploy.test_kustomize import (
    BASE_OBJECTS,
    CHECKOV_CONFIG,
    CRD_KINDS,
    INGRESS,
    KUBERNETES_VERSION,
    MONITORING,
    NETWORK_POLICIES,
)

TARGET = "overlays/prod-s3"
STORE = "retina-image-store"
COMPONENT = K8S / "components" / "s3-storage"


def test_renders_prod_without_the_volume_and_with_s3_egress() -> None:
    documents = render(TARGET)
    rendered = {(doc["kind"], doc["metadata"]["name"]) for doc in documents}
    expected = (BASE_OBJECTS | NETWORK_POLICIES | MONITORING | INGRESS) - {("PersistentVolumeClaim", "retina-images")}
    assert rendered == expected | {("NetworkPolicy", "retina-image-store-s3-egress")}
    assert {doc["metadata"].get("namespace") for doc in documents} == {"retina"}
    assert not by_kind(documents, "Secret"), "credentials are created out of band"
    assert "persistentVolumeClaim" not in yaml.safe_dump_all(documents)


def test_image_store_scales_out() -> None:
    documents = render(TARGET)
    deployment = named(documents, "Deployment", STORE)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    hpa = named(documents, "HorizontalPodAutoscaler", STORE)
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    pdb = named(documents, "PodDisruptionBudget", STORE)
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": STORE}}}
    spec = pod_spec(deployment)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["images"] == {"name": "images", "emptyDir": {"sizeLimit": "2Gi"}}, "scratch space only"
    [container] = spec["containers"]
    assert {"secretRef": {"name": "retina-s3-credentials", "optional": True}} in container["envFrom"]


def test_configuration_is_accepted_by_the_image_store(tmp_path: Path) -> None:
    from services.image_store.settings import load_image_store_settings

    documents = render(TARGET)
    config = named(documents, "ConfigMap", "retina-config")["data"]
    assert set(config) <= set(env_example_variables())
    secrets = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())["stringData"]
    settings = load_image_store_settings(
        {**config, **secrets, "IMAGE_STORAGE_PATH": str(tmp_path), "MIGRATIONS_PATH": str(ROOT / "migrations")}
    )
    assert (settings.storage_backend, settings.serve_mode) == ("s3", "proxy")
    assert (settings.s3.bucket, settings.s3.region) == ("retina-images-prod", "eu-central-1")
    assert settings.s3.prefix == "images/"
    assert settings.s3.endpoint_url is None, "empty S3_ENDPOINT_URL means AWS"


def test_credentials_template_is_not_a_resource() -> None:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert "resources" not in kustomization, "the component only patches; the Secret is made out of band"
    template = yaml.safe_load((COMPONENT / "secret.example.yaml").read_text())
    assert (template["kind"], template["metadata"]["name"]) == ("Secret", "retina-s3-credentials")
    assert set(template["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(value == "CHANGE-ME" for value in template["stringData"].values())


def test_strict_schema_validation() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (a dev dependency in pyproject.toml)"
    )
    problems = []
    for doc in render(TARGET):
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert not problems, "\n".join(problems)


def test_checkov_passes(tmp_path: Path) -> None:
    checkov = find_tool("checkov")
    rendered = tmp_path / "prod-s3.yaml"
    rendered.write_text(yaml.safe_dump_all(render(TARGET)))
    result = run([checkov, "--config-file", str(CHECKOV_CONFIG), "-f", str(rendered)])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0,", result.stdout), result.stdout[-2000:]
