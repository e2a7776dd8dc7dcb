"""Generate the Grafana dashboards and the PrometheusRule from code, so they stay consistent.

    .venv/bin/python deploy/generate.py

Writes deploy/grafana/image-store.json and deploy/grafana/vision-gateway.json (packed into
ConfigMaps by deploy/grafana/kustomization.yaml), and
deploy/k8s/components/monitoring/prometheusrule.yaml, which wraps the groups of
deploy/prometheus/rules.yaml (the one source of the alert rules). tests/deploy checks that the
committed files equal this output, that every expression parses, and that every metric is in
docs/metrics.md. Run it after changing a panel or a rule, and commit what it writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
GRAFANA = HERE / "grafana"
RULES = HERE / "prometheus" / "rules.yaml"
PROMETHEUS_RULE = HERE / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job"'  # every query is filtered by the dashboard's job variable
RATE = "$__rate_interval"
ACCEPTED = 'outcome=~"stored|duplicate"'  # uploads that were kept (new bytes or already stored)

Panel = dict[str, Any]
Target = tuple[str, str]  # (PromQL, legend)


# ---- PromQL helpers ---------------------------------------------------------------------------


def sel(extra: str = "") -> str:
    return "{" + SEL + (", " + extra if extra else "") + "}"


def rate(metric: str, extra: str = "", by: str = "") -> str:
    inner = f"rate({metric}{sel(extra)}[{RATE}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q: float, histogram: str, by: str = "", extra: str = "") -> str:
    group = "le" + (", " + by if by else "")
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{sel(extra)}[{RATE}])))"


def ratio(metric: str, numerator: str, by: str = "") -> str:
    return f"{rate(metric, numerator, by)} / {rate(metric, '', by)}"


# ---- panels -----------------------------------------------------------------------------------


def panel(
    title: str,
    targets: list[Target],
    *,
    unit: str = "short",
    description: str = "",
    kind: str = "timeseries",
    width: int = 12,
    stack: bool = False,
) -> Panel:
    body: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        "gridPos": {"h": 8, "w": width},
    }
    if kind == "timeseries":
        body["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        if stack:
            body["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
    elif kind == "stat":
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "textMode": "auto"}
    return body


def heatmap(title: str, histogram: str, *, unit: str, description: str) -> Panel:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {
            "calculate": False,
            "yAxis": {"unit": unit},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges"},
        },
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "expr": f"sum by (le) (increase({histogram}_bucket{sel()}[{RATE}]))",
                "legendFormat": "{{le}}",
                "format": "heatmap",
            }
        ],
        "gridPos": {"h": 8, "w": 12},
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1, "w": 24}}


def http_panels(build_info: str) -> list[Panel]:
    metric = "http_server_requests_total"
    return [
        row("HTTP"),
        panel(
            "Requests per second by route and status",
            [(rate(metric, by="route, code"), "{{route}} {{code}}")],
            unit="reqps",
            description="http_server_requests_total; `route` is the route template (`unmatched` for 404s).",
            width=8,
        ),
        panel(
            "5xx ratio by route",
            [(ratio(metric, 'code=~"5.."', by="route"), "{{route}}"), (ratio(metric, 'code=~"5.."'), "all routes")],
            unit="percentunit",
            description="Share of responses with a 5xx status; the RetinaHighErrorRatio alert fires above 5%.",
            width=8,
        ),
        panel(
            "4xx ratio by route",
            [(ratio(metric, 'code=~"4.."', by="route"), "{{route}}")],
            unit="percentunit",
            description="Client errors: bad requests, auth failures, 404s, rate limiting (429).",
            width=8,
        ),
        panel(
            "Latency p50 by route",
            [(quantile(0.5, "http_server_request_duration_seconds", "route"), "{{route}}")],
            unit="s",
            description="Time to a complete response (SSE streams excluded).",
            width=8,
        ),
        panel(
            "Latency p95 by route",
            [(quantile(0.95, "http_server_request_duration_seconds", "route"), "{{route}}")],
            unit="s",
            width=8,
        ),
        panel(
            "Latency p99 by route",
            [(quantile(0.99, "http_server_request_duration_seconds", "route"), "{{route}}")],
            unit="s",
            width=8,
        ),
        panel(
            "Requests in flight by route",
            [(f"sum by (route) (http_server_requests_in_flight{sel()})", "{{route}}")],
            width=12,
        ),
        panel(
            "Pods by version",
            [(f"count by (version) ({build_info}{sel()})", "{{version}}")],
            kind="stat",
            description="Processes reporting each build version (a rollout shows two).",
            width=12,
        ),
    ]


def image_store_panels() -> list[Panel]:
    sizes = "image_store_upload_size_bytes"
    processing = "image_store_processing_duration_seconds"
    storage = "image_store_storage_operation_duration_seconds"
    return [
        row("Uploads"),
        panel(
            "Uploads by outcome",
            [(rate("image_store_uploads_total", by="outcome"), "{{outcome}}")],
            unit="ops",
            description="One per upload attempt: stored, duplicate, or why it was refused.",
            stack=True,
        ),
        heatmap(
            "Upload size distribution",
            sizes,
            unit="bytes",
            description="Bytes received per accepted upload, before re-encoding.",
        ),
        panel(
            "Upload size p50 / p95",
            [(quantile(0.5, sizes), "p50"), (quantile(0.95, sizes), "p95")],
            unit="bytes",
            width=8,
        ),
        panel(
            "Dedup hits",
            [
                (rate("image_store_dedup_hits_total"), "dedup hits/s"),
                (
                    f"{rate('image_store_dedup_hits_total')} / {rate('image_store_uploads_total', ACCEPTED)}",
                    "share of accepted uploads",
                ),
            ],
            description="Uploads whose bytes were already stored (kept once, content-addressed).",
            width=8,
        ),
        panel(
            "Decodes in flight",
            [(f"sum(image_store_decodes_in_flight{sel()})", "running or queued")],
            description="Above IMAGE_MAX_PENDING_DECODES new uploads get 503 busy.",
            width=8,
        ),
        panel(
            "Decode budget",
            [
                (f"sum(image_store_decode_budget_used_bytes{sel()})", "reserved"),
                (f"sum(image_store_decode_budget_bytes{sel()})", "budget"),
            ],
            unit="bytes",
            description="Decoded bytes (from image headers) held by decodes; an upload that does not fit "
            "within 2 s gets 503 busy. IMAGE_DECODE_BUDGET_MB, docs/deployment.md#image-store-memory.",
            width=8,
        ),
        panel(
            "Processing time p50 by step",
            [(quantile(0.5, processing, "step"), "{{step}}")],
            unit="s",
            description="sniff, decode, reencode, hash and total, in the decode workers.",
        ),
        panel(
            "Processing time p95 by step",
            [(quantile(0.95, processing, "step"), "{{step}}")],
            unit="s",
        ),
        row("Storage and serving"),
        panel(
            "Storage operation latency p95",
            [(quantile(0.95, storage, "operation"), "{{operation}}")],
            unit="s",
            description="write (including fsync), rename, delete; network volumes show here first.",
            width=8,
        ),
        panel(
            "Storage operation latency p99",
            [(quantile(0.99, storage, "operation"), "{{operation}}")],
            unit="s",
            width=8,
        ),
        panel(
            "Serve responses by status",
            [(rate("image_store_serve_responses_total", by="status"), "{{status}}")],
            unit="reqps",
            description="GET/HEAD of image bytes: 200, 206 (Range), 304 (cache), 404.",
            width=8,
        ),
        panel(
            "Stored bytes",
            [(f"max(image_store_stored_bytes{sel()})", "bytes in stored files")],
            unit="bytes",
            description="Refreshed by each maintenance run and by /api/storage/stats.",
            width=8,
        ),
        panel(
            "Stored images and blobs",
            [(f"max(image_store_images{sel()})", "images"), (f"max(image_store_blobs{sel()})", "blobs (files)")],
            description="Image rows (one per upload) and distinct files (shared by duplicates).",
            width=8,
        ),
        panel(
            "Stored bytes growth per day",
            [(f"max(deriv(image_store_stored_bytes{sel()}[6h])) * 86400", "bytes/day (6 h trend)")],
            unit="bytes",
            description="The trend RetinaImageStorageFillingUp extrapolates.",
            width=8,
        ),
        row("Maintenance"),
        panel(
            "Clean-up deletions per hour",
            [(f"sum by (kind) (increase(image_store_cleanup_deleted_total{sel()}[1h]))", "{{kind}}")],
            description="Expired images, unreferenced blobs and their files removed by retention clean-up.",
            width=8,
        ),
        panel(
            "Integrity problems per hour",
            [
                (f"sum by (kind) (increase(image_store_integrity_problems_total{sel()}[1h]))", "{{kind}}"),
                (f"sum(increase(image_store_missing_files_total{sel()}[1h]))", "missing when requested"),
            ],
            description=(
                "missing_file, orphan_file, checksum_mismatch (docs/operations.md#retinaintegrityproblems); "
                "missing when requested: image rows whose file a request did not find "
                "(docs/operations.md#retinaimagefilesmissing)."
            ),
            width=8,
        ),
        panel(
            "Time since last successful maintenance",
            [
                (
                    f"time() - max by (task) (image_store_maintenance_last_success_timestamp_seconds{sel()})",
                    "{{task}}",
                )
            ],
            unit="s",
            description="Runs every IMAGE_MAINTENANCE_INTERVAL_SECONDS; RetinaCleanupNotRunning fires after 2 h.",
            width=8,
        ),
    ]


def gateway_panels() -> list[Panel]:
    ttft = "vision_gateway_time_to_first_token_seconds"
    ttfc = "vision_gateway_upstream_time_to_first_chunk_seconds"
    tpot = "vision_gateway_time_per_output_token_seconds"
    prep = "vision_gateway_image_preparation_duration_seconds"
    return [
        row("Time to first token"),
        panel(
            "Time to first token p50 / p95 by model",
            [(quantile(0.5, ttft, "model"), "p50 {{model}}"), (quantile(0.95, ttft, "model"), "p95 {{model}}")],
            unit="s",
            description="Request received to first chunk written to the client (includes image preparation).",
            width=8,
        ),
        panel(
            "Upstream time to first chunk p50 / p95 by model",
            [(quantile(0.5, ttfc, "model"), "p50 {{model}}"), (quantile(0.95, ttfc, "model"), "p95 {{model}}")],
            unit="s",
            description="Ollama request sent to first NDJSON chunk: model load and prompt processing.",
            width=8,
        ),
        panel(
            "Gateway overhead (TTFT − upstream TTFC) by model",
            [
                (f"{quantile(0.5, ttft, 'model')} - {quantile(0.5, ttfc, 'model')}", "p50 {{model}}"),
                (f"{quantile(0.95, ttft, 'model')} - {quantile(0.95, ttfc, 'model')}", "p95 {{model}}"),
            ],
            unit="s",
            description="Difference of the quantiles (not a quantile of differences): the gateway's own share.",
            width=8,
        ),
        row("Throughput"),
        panel(
            "Output tokens per second by model",
            [(rate("vision_gateway_tokens_total", 'type="output"', by="model"), "{{model}}")],
            description="All streams together, from Ollama's final chunk.",
            width=8,
        ),
        panel(
            "Input tokens per second by model",
            [(rate("vision_gateway_tokens_total", 'type="input"', by="model"), "{{model}}")],
            width=8,
        ),
        panel(
            "Per-stream decode speed p50 by model",
            [(f"1 / {quantile(0.5, tpot, 'model')}", "{{model}}")],
            description="Chunks per second of a median stream (1 / time per output token).",
            width=8,
        ),
        row("Streams"),
        panel(
            "Streams in flight by model",
            [(f"sum by (model) (vision_gateway_streams_in_flight{sel()})", "{{model}}")],
            description="Open SSE streams; the HPA's per-pod metric (target 50 per pod).",
            width=8,
            stack=True,
        ),
        panel(
            "Stream outcomes",
            [(rate("vision_gateway_streams_total", by="outcome"), "{{outcome}}")],
            unit="ops",
            description="completed, stopped, client_disconnected, upstream_error, shutdown.",
            width=8,
            stack=True,
        ),
        panel(
            "Stream duration p95 by model",
            [(quantile(0.95, "vision_gateway_stream_duration_seconds", "model"), "{{model}}")],
            unit="s",
            width=8,
        ),
        row("Upstreams"),
        panel(
            "Upstream responses by target and code",
            [(rate("vision_gateway_upstream_requests_total", by="target, code"), "{{target}} {{code}}")],
            unit="reqps",
            description='Responses from Ollama and the image-store; code="error" when none came.',
            width=8,
        ),
        panel(
            "Upstream retries by target",
            [(rate("vision_gateway_upstream_retries_total", by="target"), "{{target}}")],
            unit="ops",
            description="Retries before output started (UPSTREAM_RETRIES).",
            width=8,
        ),
        panel(
            "Refusals by error code",
            [(rate("vision_gateway_rejections_total", by="code"), "{{code}}")],
            unit="ops",
            description="Requests refused before streaming, by their JSON error code.",
            width=8,
        ),
        row("Ollama fleet"),
        panel(
            "Backends up",
            [("max by (backend) (vision_gateway_backend_up" + sel() + ")", "{{backend}}")],
            description="1: takes asks; 0: marked down (connect refused or timed out) until a probe after "
            "OLLAMA_BACKEND_COOLDOWN_SECONDS answers. RetinaOllamaBackendDown fires after 5 minutes down.",
            width=6,
        ),
        panel(
            "Streams in flight by backend",
            [("sum by (backend) (vision_gateway_backend_streams_in_flight" + sel() + ")", "{{backend}}")],
            description="Open streams per Ollama backend, all replicas; routing keeps them within 1.5x + 1 of the "
            "least busy backend that has the model.",
            width=6,
            stack=True,
        ),
        panel(
            "Backend requests by outcome",
            [(rate("vision_gateway_backend_requests_total", by="backend, outcome"), "{{backend}} {{outcome}}")],
            unit="reqps",
            description="Before the first token: opened (serves the ask), connect_failed (marked down), failed "
            "(5xx, reset: the ask moved on), refused (Ollama's verdict on the request).",
            width=6,
        ),
        panel(
            "Routing decisions",
            [(rate("vision_gateway_routing_decisions_total", by="decision"), "{{decision}}")],
            unit="ops",
            description="affinity_kept: a conversation's turn went where its last one ran (prompt cache); "
            "loaded_preferred: a backend with the model in memory won; least_loaded; failover: an attempt moved to "
            "the next backend before the first token.",
            width=6,
        ),
        row("Stored answers"),
        panel(
            "Final answer writes: saved, queued, saved late, lost",
            [(rate("vision_gateway_answer_saves_total", by="result"), "{{result}}")],
            unit="ops",
            description="queued: not stored within STREAM_SAVE_RETRY_SECONDS, kept in memory; saved_late: stored from "
            "that queue when PostgreSQL returned; lost: never stored (RetinaAnswersLost). Queued now = queued - "
            "saved_late - lost.",
            width=12,
        ),
        panel(
            "Streams swept as interrupted",
            [(rate("vision_gateway_streams_swept_total"), "swept")],
            unit="ops",
            description="Streams whose gateway died (no progress for STREAM_SWEEP_AFTER_SECONDS), closed by a sweeper.",
            width=12,
        ),
        row("Images and capabilities"),
        panel(
            "Image preparation p50 / p95 by step",
            [(quantile(0.5, prep, "step"), "p50 {{step}}"), (quantile(0.95, prep, "step"), "p95 {{step}}")],
            unit="s",
            description="fetch: from the image-store; encode: downscale, re-encode and base64.",
            width=8,
        ),
        panel(
            "Image bytes sent to Ollama",
            [(rate("vision_gateway_image_bytes_sent_total"), "base64 bytes/s")],
            unit="Bps",
            width=8,
        ),
        panel(
            "Capability cache hit ratio",
            [(ratio("vision_gateway_capability_cache_requests_total", 'result="hit"'), "hit ratio")],
            unit="percentunit",
            description="Model capability look-ups answered from the cache (VISION_CAPABILITY_TTL_SECONDS).",
            width=8,
        ),
    ]


# ---- dashboards -------------------------------------------------------------------------------


def layout(panels: list[Panel]) -> list[Panel]:
    """Give every panel an id and a position: rows span the width, panels fill rows left to right."""
    x = y = 0
    height = 0
    for index, item in enumerate(panels, start=1):
        item["id"] = index
        grid = item["gridPos"]
        if item["type"] == "row" or x + grid["w"] > 24:
            x, y, height = 0, y + height, 0
        grid["x"], grid["y"] = x, y
        x += grid["w"]
        height = max(height, grid["h"])
        if item["type"] == "row":
            x, y, height = 0, y + grid["h"], 0
    return panels


def dashboard(uid: str, title: str, build_info: str, panels: list[Panel]) -> dict[str, Any]:
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": "Generated by deploy/generate.py; metrics in docs/metrics.md.",
        "tags": ["retina"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [{"type": "dashboards", "tags": ["retina"], "title": "retina", "asDropdown": False}],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "job",
                    "label": "Job",
                    "type": "query",
                    "datasource": DATASOURCE,
                    # Only jobs of this service: its build_info exists on every one of its processes.
                    "query": {"query": f"label_values({build_info}, job)", "refId": "job"},
                    "definition": f"label_values({build_info}, job)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".+",
                    "current": {"text": "All", "value": "$__all"},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": layout(panels),
    }


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        "image-store.json": dashboard(
            "retina-image-store",
            "retina / image-store",
            "image_store_build_info",
            http_panels("image_store_build_info") + image_store_panels(),
        ),
        "vision-gateway.json": dashboard(
            "retina-vision-gateway",
            "retina / vision-gateway",
            "vision_gateway_build_info",
            http_panels("vision_gateway_build_info") + gateway_panels(),
        ),
    }


# ---- PrometheusRule ---------------------------------------------------------------------------


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, so the generated YAML reads like the source."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "retina",
            "labels": {"release": "kube-prometheus-stack", "app.kubernetes.io/part-of": "retina"},
        },
        "spec": yaml.safe_load(RULES.read_text()),
    }


def outputs() -> dict[Path, str]:
    files = {GRAFANA / name: json.dumps(body, indent=2) + "\n" for name, body in dashboards().items()}
    header = (
        "# Generated by deploy/generate.py from deploy/prometheus/rules.yaml: edit that file and re-run.\n"
        "# kube-prometheus-stack loads PrometheusRules labelled release=<its Helm release name>.\n"
    )
    body = yaml.dump(prometheus_rule(), Dumper=_BlockDumper, sort_keys=False, width=1000, allow_unicode=True)
    files[PROMETHEUS_RULE] = header + body
    return files


def main() -> None:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
