"""Dashboards and alert rules: generated files current, PromQL parses, only documented metrics and
labels, promtool checks and unit tests pass, every alert has a runbook and a unit test."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    DASHBOARDS,
    DEPLOY,
    JOB_PLACEHOLDER,
    OPERATIONS_DOC,
    RULE_TESTS,
    RULES,
    Expression,
    alert_rules,
    anchors,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    documented_metrics,
    find_tool,
    run,
)

promql_parser = pytest.importorskip("promql_parser", reason="pip install promql-parser (a dev dependency)")

# Metrics that retina does not export but the rules read, each with its source.
EXTERNAL_METRICS = {
    "kubelet_volume_stats_capacity_bytes": "kubelet volume statistics (kube-prometheus-stack scrapes them)",
}
# Labels Prometheus attaches to every scraped series (ServiceMonitor target labels).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_expressions() -> list[Expression]:
    return dashboard_expressions() + [Expression(f"rules.yaml: {r['alert']}", r["expr"]) for r in alert_rules()]


def selectors(expression: Expression) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expression.concrete()), visit)
    return found


def aggregations(expression: Expression) -> list[tuple[list[str], list[str]]]:
    """(grouping labels, metric names below) of every `by (…)` aggregation."""
    found: list[tuple[list[str], list[str]]] = []

    def visit(node: Any) -> None:
        modifier = getattr(node, "modifier", None)
        if not isinstance(node, promql_parser.AggregateExpr) or modifier is None:
            return
        if modifier.type == promql_parser.AggModifierType.By:
            below: list[str] = []
            promql_parser.walk(
                node.expr,
                lambda n: below.append(n.name) if isinstance(n, promql_parser.VectorSelector) else None,
            )
            found.append((list(modifier.labels), below))

    promql_parser.walk(promql_parser.parse(expression.concrete()), visit)
    return found


def test_generated_files_are_current() -> None:
    for path, text in load_generator().outputs().items():
        assert path.exists(), f"{path} missing: run .venv/bin/python deploy/generate.py"
        assert path.read_text() == text, f"{path} is stale: run .venv/bin/python deploy/generate.py"


def test_prometheus_rule_embeds_exactly_rules_yaml() -> None:
    rule = yaml.safe_load((DEPLOY / "k8s" / "components" / "monitoring" / "prometheusrule.yaml").read_text())
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_every_expression_parses() -> None:
    expressions = all_expressions()
    assert len(expressions) > 50
    for expression in expressions:
        try:
            promql_parser.parse(expression.concrete())
        except ValueError as exc:
            pytest.fail(f"{expression.source}: {exc}\n{expression.expr}")


def resolve(name: str, metrics: dict[str, Any], families: list[str]) -> tuple[str, Any]:
    """The documented metric a selector reads (histogram series resolve to their histogram)."""
    if name in metrics:
        assert metrics[name].type != "histogram", f"{name}: read a histogram through _bucket, _sum or _count"
        return name, metrics[name]
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in metrics and metrics[base].type == "histogram":
            return base, metrics[base]
    if any(name.startswith(family) for family in families) or name in EXTERNAL_METRICS:
        return name, None
    pytest.fail(f"{name} is not in docs/metrics.md")


def test_every_metric_and_label_is_documented() -> None:
    """docs/metrics.md is the contract: names, label names and enumerated label values."""
    metrics, families = documented_metrics()
    used: set[str] = set()
    for expression in all_expressions():
        for selector in selectors(expression):
            assert selector.name, f"{expression.source}: select metrics by name"
            base, doc = resolve(selector.name, metrics, families)
            used.add(base)
            if doc is None:
                continue
            allowed = set(doc.labels) | TARGET_LABELS | ({"le"} if selector.name.endswith("_bucket") else set())
            for matcher in selector.matchers.matchers:
                where = f"{expression.source}: {selector.name}{{{matcher.name}…}}"
                assert matcher.name in allowed, f"{where}: label not documented"
                values = doc.labels.get(matcher.name)
                if values is None:
                    continue
                if matcher.op == promql_parser.MatchOp.Equal:
                    assert matcher.value in values, f"{where}: value {matcher.value!r} not documented"
                elif matcher.op == promql_parser.MatchOp.Re:
                    for alternative in matcher.value.split("|"):
                        assert alternative in values, f"{where}: value {alternative!r} not documented"
        for labels, below in aggregations(expression):
            known = set(TARGET_LABELS) | {"le"}
            for name in below:
                if name:
                    _, doc = resolve(name, metrics, families)
                    known |= set(doc.labels) if doc else set()
            assert set(labels) <= known, f"{expression.source}: grouping by undocumented {set(labels) - known}"
    # Every retina metric family is on a dashboard or in an alert.
    retina = {name for name in metrics if name.startswith(("http_server_", "image_store_", "vision_gateway_"))}
    assert retina <= used, f"documented but shown nowhere: {sorted(retina - used)}"


def test_dashboard_queries_filter_by_the_job_variable() -> None:
    for expression in dashboard_expressions():
        for selector in selectors(expression):
            jobs = [m for m in selector.matchers.matchers if m.name == "job"]
            assert [(m.op, m.value) for m in jobs] == [(promql_parser.MatchOp.Re, JOB_PLACEHOLDER)], (
                f'{expression.source}: {selector.name} needs job=~"$job"'
            )


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_structure(name: str) -> None:
    board = dashboard(name)
    assert board["uid"] == f"retina-{name.removesuffix('.json')}"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["includeAll"] is True
    panels = list(dashboard_panels(board))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        columns = range(grid["x"], grid["x"] + grid["w"])
        cells = {(x, y) for x in columns for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), "panel titles are unique"


# ---- alerts -------------------------------------------------------------------------------------


def test_every_alert_is_complete_and_has_a_runbook_section() -> None:
    runbooks = anchors(OPERATIONS_DOC)
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Retina[A-Z]\w+", name)
        assert re.fullmatch(r"\d+[mh]", rule["for"]), f"{name}: needs `for`"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://github.com/retina/retina/blob/main/docs/operations.md#{name.lower()}"
        assert name.lower() in runbooks, f"docs/operations.md needs a `### {name}` section"


def test_every_alert_has_unit_tests_that_fire_and_stay_quiet() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for name in (rule["alert"] for rule in alert_rules()):
        outcomes = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == name]
        assert True in outcomes, f"{name}: no promtool test where it fires"
        assert False in outcomes, f"{name}: no promtool test where it stays quiet"


def test_promtool_checks_the_rules() -> None:
    promtool = find_tool("promtool")
    result = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = find_tool("promtool")
    result = run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
