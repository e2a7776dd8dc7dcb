"""Invariants of the rendered workloads: hardening, probes, shutdown timing, storage, scaling,
configuration (against .env.example and the services' own settings loader) and network policies."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    K8S,
    OVERLAYS,
    ROOT,
    TARGETS,
    by_kind,
    env_example_variables,
    named,
    pod_spec,
    render,
)

UID = 10001
STORE, GATEWAY, MIGRATE = "retina-image-store", "retina-vision-gateway", "retina-migrate"
SECRETS = {"DATABASE_URL", "DATABASE_DIRECT_URL", "SERVICE_TOKENS", "IMAGE_SIGNING_KEYS", "IMAGE_STORE_TOKEN"}


def workloads(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_kind(documents, "Deployment") + by_kind(documents, "Job")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_hardened(target: str) -> None:
    documents = render(target)
    accounts = {a["metadata"]["name"]: a for a in by_kind(documents, "ServiceAccount")}
    for workload in workloads(documents):
        name, pod = workload["metadata"]["name"], pod_spec(workload)
        assert pod["automountServiceAccountToken"] is False, name
        assert accounts[pod["serviceAccountName"]]["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == UID, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not any(pod.get(host) for host in ("hostNetwork", "hostPID", "hostIPC")), name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["runAsNonRoot"] is True, name
            assert security.get("privileged", False) is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"
            # A read-only root needs a writable /tmp (Python tempfiles, Pillow).
            [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], name


@pytest.mark.parametrize("target", TARGETS)
def test_probes_and_graceful_shutdown_fit_the_grace_period(target: str) -> None:
    documents = render(target)
    for deployment in by_kind(documents, "Deployment"):
        name, pod = deployment["metadata"]["name"], pod_spec(deployment)
        [container] = pod["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert set(ports) == {"http"}
        for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, f"{name} {probe}"
        startup = container["startupProbe"]
        # Long enough for the migration Job to finish before the kubelet restarts a waiting pod.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name
        # Readiness turns 503 at SIGTERM; preStop keeps the pod serving until endpoints drop it;
        # the service then has SHUTDOWN_TIMEOUT_SECONDS, all inside the grace period.
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", name
        pre_stop = float(command[1])
        shutdown = float(env_of(container)["SHUTDOWN_TIMEOUT_SECONDS"])
        grace = pod["terminationGracePeriodSeconds"]
        assert pre_stop >= 5, name
        assert pre_stop + shutdown < grace, f"{name}: {pre_stop} + {shutdown} >= {grace}"
    gateway = pod_spec(named(documents, "Deployment", GATEWAY))
    assert gateway["terminationGracePeriodSeconds"] == 45
    assert env_of(gateway["containers"][0])["SHUTDOWN_TIMEOUT_SECONDS"] == "30"


@pytest.mark.parametrize("target", TARGETS)
def test_services_route_to_the_named_ports(target: str) -> None:
    documents = render(target)
    for name, port in ((STORE, 8081), (GATEWAY, 8082)):
        deployment, service = named(documents, "Deployment", name), named(documents, "Service", name)
        [container] = pod_spec(deployment)["containers"]
        assert container["args"] == [name.removeprefix("retina-")]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/part-of"] == "retina"  # what the NetworkPolicies select


@pytest.mark.parametrize("target", TARGETS)
def test_image_store_owns_a_read_write_once_volume_alone(target: str) -> None:
    documents = render(target)
    deployment = named(documents, "Deployment", STORE)
    config = named(documents, "ConfigMap", "retina-config")["data"]
    claim = named(documents, "PersistentVolumeClaim", "retina-images")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One pod can mount a ReadWriteOnce volume: one replica, Recreate, an HPA capped at 1.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    hpa = named(documents, "HorizontalPodAutoscaler", STORE)
    assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1
    pod = pod_spec(deployment)
    [volume] = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == "retina-images"
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == config["IMAGE_STORAGE_PATH"] == "/var/lib/retina/images"
    assert not mount.get("readOnly")
    assert pod["securityContext"]["fsGroup"] == UID


SCALING = [("base", 2, True), ("overlays/dev", 1, False), ("overlays/prod", 3, True)]


@pytest.mark.parametrize(("target", "minimum", "on_streams"), SCALING)
def test_gateway_scales_on_streams_in_flight_with_cpu_fallback(target: str, minimum: int, on_streams: bool) -> None:
    documents = render(target)
    deployment = named(documents, "Deployment", GATEWAY)
    # The HPA owns the replica count; a replicas field would be re-applied and cut streams.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = named(documents, "HorizontalPodAutoscaler", GATEWAY)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    assert hpa["minReplicas"] == minimum
    assert hpa["maxReplicas"] > minimum
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    if on_streams:
        pods = metrics["Pods"]["pods"]
        assert pods["metric"] == {"name": "vision_gateway_streams_in_flight"}
        assert pods["target"] == {"type": "AverageValue", "averageValue": "50"}
    else:
        assert "Pods" not in metrics  # dev clusters rarely run prometheus-adapter
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


@pytest.mark.parametrize("target", TARGETS)
def test_disruption_budgets_allow_drains(target: str) -> None:
    documents = render(target)
    for name in (STORE, GATEWAY):
        budget = named(documents, "PodDisruptionBudget", name)["spec"]
        assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}}


@pytest.mark.parametrize("target", TARGETS)
def test_migration_job_can_run_again_safely(target: str) -> None:
    from common.migrations import LOCK_TIMEOUT_SECONDS

    job = named(render(target), "Job", MIGRATE)
    spec, pod = job["spec"], pod_spec(job)
    [container] = pod["containers"]
    assert container["args"] == ["migrate"]
    assert pod["restartPolicy"] == "Never"
    assert 1 <= spec["backoffLimit"] <= 3
    assert spec["ttlSecondsAfterFinished"] > 0
    # A second run waits for yoyo's lock; the deadline must leave room for that and the work.
    assert spec["activeDeadlineSeconds"] > LOCK_TIMEOUT_SECONDS * 2
    assert container["envFrom"] == [{"secretRef": {"name": "retina-secrets"}}]


def test_image_tags_are_pinned_per_overlay() -> None:
    documents = {target: render(target) for target in OVERLAYS}
    for target, expected, policy in (("overlays/dev", "dev", "Always"), ("overlays/prod", "0.1.0", "IfNotPresent")):
        for workload in workloads(documents[target]):
            [container] = pod_spec(workload)["containers"]
            assert container["image"] == f"ghcr.io/retina/retina:{expected}"
            # `dev` moves, so it is pulled every time; release tags are immutable.
            assert container["imagePullPolicy"] == policy


# ---- configuration ------------------------------------------------------------------------------


def test_config_map_holds_only_known_non_secret_variables() -> None:
    variables = env_example_variables()
    config = named(render("base"), "ConfigMap", "retina-config")["data"]
    assert set(config) <= set(variables), f"not in .env.example: {set(config) - set(variables)}"
    assert not set(config) & SECRETS
    # Every variable is deliberately placed: ConfigMap, Secret, per-Deployment env, image, or default.
    per_deployment = {"SHUTDOWN_TIMEOUT_SECONDS"}
    in_image = {"MIGRATIONS_PATH"}
    image_defaults = {"IMAGE_STORE_HOST", "IMAGE_STORE_PORT", "VISION_GATEWAY_HOST", "VISION_GATEWAY_PORT"}
    unplaced = set(variables) - set(config) - SECRETS - per_deployment - in_image - image_defaults
    assert not unplaced, f"decide where these go (deploy/k8s/base/configmap.yaml): {sorted(unplaced)}"


def test_config_map_and_secret_template_are_accepted_by_both_services(tmp_path: Path) -> None:
    """The services' own settings loader validates the rendered configuration (as at start-up)."""
    from common.settings import SettingsError
    from services.image_store.settings import load_image_store_settings
    from services.vision_gateway.settings import load_gateway_settings

    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())["stringData"]
    for target in ("overlays/dev", "overlays/prod"):
        documents = render(target)
        config = named(documents, "ConfigMap", "retina-config")["data"]
        for name, loader in ((STORE, load_image_store_settings), (GATEWAY, load_gateway_settings)):
            [container] = pod_spec(named(documents, "Deployment", name))["containers"]
            environ = {**config, **secret, **env_of(container)}
            # Paths of the container, moved to where this test can create them.
            environ["IMAGE_STORAGE_PATH"] = str(tmp_path / "images")
            environ["MIGRATIONS_PATH"] = str(ROOT / "migrations")
            try:
                settings = loader(environ)
            except SettingsError as exc:
                pytest.fail(f"{target} {name}: {exc.problems}")
            assert settings.common.shutdown_timeout_seconds == float(env_of(container)["SHUTDOWN_TIMEOUT_SECONDS"])
    gateway = load_gateway_settings({**config, **secret, "MIGRATIONS_PATH": str(ROOT / "migrations")})
    assert gateway.image_store_url.rstrip("/") == "http://retina-image-store:8081"
    assert gateway.ollama_url.rstrip("/").endswith(":11434")


# ---- network policies ---------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def namespace_of(peer: dict[str, Any]) -> str | None:
    return peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")


@pytest.mark.parametrize("target", OVERLAYS)
def test_network_policies_deny_by_default_and_allow_only_what_is_needed(target: str) -> None:
    documents = render(target)
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(documents, "NetworkPolicy")}
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(documents)}
    for name, spec in policies.items():
        assert any(selects(spec["podSelector"], labels) for labels in pods.values()), f"{name} selects no pod"

    deny = policies["retina-default-deny"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "retina"}}
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    assert all(selects(deny["podSelector"], labels) for labels in pods.values())

    [dns] = policies["retina-allow-dns"]["egress"]
    assert namespace_of(dns["to"][0]) == "kube-system"
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}

    [postgres] = policies["retina-allow-postgres"]["egress"]
    assert postgres["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert all(ipaddress.ip_network(peer["ipBlock"]["cidr"]).is_private for peer in postgres["to"])

    egress = policies["retina-vision-gateway-egress"]
    assert selects(egress["podSelector"], pods[GATEWAY])
    assert not selects(egress["podSelector"], pods[STORE])
    to_store, to_ollama = egress["egress"]
    assert selects(to_store["to"][0]["podSelector"], pods[STORE])
    assert to_store["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert namespace_of(to_ollama["to"][0]) == "ollama"
    assert to_ollama["ports"] == [{"protocol": "TCP", "port": 11434}]

    [to_gateway] = policies["retina-vision-gateway-ingress"]["ingress"]
    assert to_gateway["from"] == [{"namespaceSelector": {}}]  # anywhere in the cluster
    assert to_gateway["ports"] == [{"protocol": "TCP", "port": 8082}]

    store_ingress = policies["retina-image-store-ingress"]
    assert selects(store_ingress["podSelector"], pods[STORE])
    assert not selects(store_ingress["podSelector"], pods[GATEWAY])
    [to_store_rule] = store_ingress["ingress"]
    gateway_peer, ingress_peer = to_store_rule["from"]
    assert selects(gateway_peer["podSelector"], pods[GATEWAY])
    assert "namespaceSelector" not in gateway_peer
    assert namespace_of(ingress_peer) == "ingress-nginx"
    assert "podSelector" not in ingress_peer
    assert to_store_rule["ports"] == [{"protocol": "TCP", "port": 8081}]

    [scrape] = policies["retina-allow-prometheus"]["ingress"]
    assert namespace_of(scrape["from"][0]) == "monitoring"
    assert {p["port"] for p in scrape["ports"]} == {8081, 8082}


@pytest.mark.parametrize("target", TARGETS)
def test_migration_can_be_applied_on_its_own(target: str) -> None:
    """`kubectl apply -k <overlay> -l app.kubernetes.io/component=migrate` creates the Job and its account."""
    selected = {
        (doc["kind"], doc["metadata"]["name"])
        for doc in render(target)
        if doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "migrate"
    }
    assert selected == {("ServiceAccount", MIGRATE), ("Job", MIGRATE)}
