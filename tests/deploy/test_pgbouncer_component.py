"""components/pgbouncer: DATABASE_URL through a transaction pooler, DATABASE_DIRECT_URL from a Secret.

Rendered offline with kubectl kustomize on top of the base (a throwaway overlay in tmp_path), and
checked with the services' own settings loaders: with the Secret both services and `retina
migrate` start behind the pooler; without it they refuse, naming the setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.settings import SettingsError, load_database_settings
from tests.deploy.helpers import K8S, ROOT, by_kind, env_example_variables, find_tool, named, pod_spec, run

COMPONENT = K8S / "components" / "pgbouncer"
DIRECT_SECRET = "retina-database-direct"


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    overlay = tmp_path_factory.mktemp("pgbouncer-overlay")
    # kustomize takes only relative paths to bases and components.
    relative = Path(os.path.relpath(K8S, overlay))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative / "base")],
                "components": [str(relative / "components" / "pgbouncer")],
            }
        )
    )
    result = run([find_tool("kubectl"), "kustomize", str(overlay)])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_every_retina_container_reads_the_direct_url_secret(documents: list[dict[str, Any]]) -> None:
    workloads = [*by_kind(documents, "Deployment"), *by_kind(documents, "Job")]
    names = {workload["metadata"]["name"] for workload in workloads}
    assert names == {"retina-image-store", "retina-vision-gateway", "retina-migrate"}
    for workload in workloads:
        for container in pod_spec(workload)["containers"]:
            assert {"secretRef": {"name": DIRECT_SECRET}} in container["envFrom"], workload["metadata"]["name"]
    assert not by_kind(documents, "Secret"), "the Secret is created out of band"


def test_services_and_migrate_accept_the_configuration(documents: list[dict[str, Any]], tmp_path: Path) -> None:
    from services.image_store.settings import load_image_store_settings
    from services.vision_gateway.settings import load_gateway_settings

    config = named(documents, "ConfigMap", "retina-config")["data"]
    assert config["DATABASE_POOLER"] == "transaction"
    assert set(config) <= set(env_example_variables())
    secrets = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())["stringData"]
    direct = yaml.safe_load((COMPONENT / "secret.example.yaml").read_text())
    assert (direct["kind"], direct["metadata"]["name"]) == ("Secret", DIRECT_SECRET)
    env = {
        **config,
        **secrets,
        **direct["stringData"],
        "IMAGE_STORAGE_PATH": str(tmp_path),
        "MIGRATIONS_PATH": str(ROOT / "migrations"),
    }
    for load in (load_image_store_settings, load_gateway_settings):
        settings = load(env)
        assert settings.transaction_pooler
        assert settings.direct_url == direct["stringData"]["DATABASE_DIRECT_URL"]
    # The migration Job reads only the Secrets (no ConfigMap): it migrates through the direct URL.
    migrate = load_database_settings({**secrets, **direct["stringData"], "MIGRATIONS_PATH": str(ROOT / "migrations")})
    assert migrate.direct_url == direct["stringData"]["DATABASE_DIRECT_URL"]
    with pytest.raises(SettingsError) as missing:
        load_gateway_settings({key: value for key, value in env.items() if key != "DATABASE_DIRECT_URL"})
    assert any(problem.startswith("DATABASE_DIRECT_URL is required") for problem in missing.value.problems)


def test_the_template_is_not_a_resource() -> None:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert "resources" not in kustomization, "the component only patches; the Secret is made out of band"
