"""Shared helpers for tests/deploy: rendering overlays, finding tools, reading PromQL and docs.

Everything here works offline. External tools are looked up on PATH (and next to the test
interpreter, where pip puts console scripts); a test that needs one that is missing is skipped
with the exact install command.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
RULES = DEPLOY / "prometheus" / "rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "rules.test.yaml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

TARGETS = ["base", "overlays/dev", "overlays/prod"]
OVERLAYS = ["overlays/dev", "overlays/prod"]
DASHBOARDS = ["image-store.json", "vision-gateway.json"]

INSTALL_HINTS = {
    "kubectl": "kubectl with its built-in kustomize (v5) comes with the machine image (apt package kubectl of "
    "the Google Cloud SDK repository), or set KUBECTL=/path/to/kubectl",
    "checkov": "pip install -c requirements/tools-constraints.txt -r requirements/tools.txt "
    "(make test puts .venv-tools/bin on PATH), or set CHECKOV=/path/to/checkov",
    "promtool": "apt-get install prometheus (Debian ships promtool in it), or set PROMTOOL=/path/to/promtool",
    "newman": "make test installs it with npm ci from requirements/node into .venv-tools/node (needs npm), "
    "or set NEWMAN=/path/to/newman",
}
# Tools .ci/run installs: in CI (CI set and not "0"/"false") their absence is a failure, not a skip.
REQUIRED_IN_CI = frozenset({"promtool", "newman"})
NODE_TOOLS_BIN = ROOT / ".venv-tools" / "node" / "node_modules" / ".bin"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_tool(name: str) -> str:
    """The tool's path, or skip the calling test saying how to install it."""
    configured = os.environ.get(name.upper())
    if configured:
        if not Path(configured).is_file():
            pytest.fail(f"{name.upper()}={configured} does not exist")
        return configured
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), str(NODE_TOOLS_BIN)])
    path = shutil.which(name, path=search)
    if path is None:
        reason = f"{name} not found on PATH and {name.upper()} is unset: {INSTALL_HINTS.get(name, f'install {name}')}"
        if name in REQUIRED_IN_CI and in_ci():
            pytest.fail(f"{reason} (.ci/run installs it, so in CI this is a failure)")
        pytest.skip(reason)
    return path


def run(args: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


@functools.cache
def _render_text(target: str) -> str:
    result = run([find_tool("kubectl"), "kustomize", str(K8S / target)])
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return result.stdout


def render(target: str) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize deploy/k8s/<target>` renders (fresh copies)."""
    return [doc for doc in yaml.safe_load_all(_render_text(target)) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def named(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in by_kind(documents, kind) if d["metadata"]["name"] == name]
    return doc


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def anchors(document: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", document.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def env_example_variables() -> dict[str, str]:
    """Every variable .env.example names (commented defaults included), with its example value."""
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))


# ---- PromQL in dashboards and rules -------------------------------------------------------------

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
JOB_PLACEHOLDER = "retina-job-variable"


@dataclass(frozen=True)
class Expression:
    source: str  # where it comes from, for messages
    expr: str  # as written (Grafana variables included)

    def concrete(self) -> str:
        """The expression with Grafana's variables replaced so a PromQL parser accepts it."""
        text = self.expr
        for variable, value in GRAFANA_VARIABLES.items():
            text = text.replace(variable, value)
        return text.replace("$job", JOB_PLACEHOLDER)


def dashboard(name: str) -> dict[str, Any]:
    return json.loads((GRAFANA / name).read_text())


def dashboard_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[Expression]:
    return [
        Expression(f"{name}: {panel['title']}", target["expr"])
        for name in DASHBOARDS
        for panel in dashboard_panels(dashboard(name))
        for target in panel.get("targets", [])
    ]


def rule_expressions() -> list[Expression]:
    return [Expression(f"rules.yaml: {rule['alert']}", rule["expr"]) for rule in alert_rules()]


# ---- docs/metrics.md, the metric contract -----------------------------------------------------


@dataclass
class MetricDoc:
    name: str
    type: str
    labels: dict[str, set[str] | None] = field(default_factory=dict)  # None: any value


def documented_metrics() -> tuple[dict[str, MetricDoc], list[str]]:
    """Metrics from the tables of docs/metrics.md, and the documented name families (`process_*`)."""
    metrics: dict[str, MetricDoc] = {}
    families: list[str] = []
    for line in METRICS_DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z_*]+)`", cells[0])
        labels: dict[str, set[str] | None] = {}
        for part in cells[2].split(";"):
            # "`model`, `outcome` ∈ `completed`, …": the label right before ∈ takes the values.
            before, _, values = part.partition("∈")
            names_before = re.findall(r"`(\w+)`", before)
            labels.update(dict.fromkeys(names_before))
            if values:
                labels[names_before[-1]] = set(re.findall(r"`(\w+)`", values))
        for name in names:
            if name.endswith("*"):
                families.append(name.rstrip("*"))
            else:
                metrics[name] = MetricDoc(name, cells[1], labels)
    return metrics, families
