"""Generate Grafana dashboards and the PrometheusRule from code, so they stay consistent.

    .venv/bin/python deploy/generate.py

Writes deploy/k8s/components/monitoring/dashboards/*.json and .../prometheusrule.yaml (from
deploy/prometheus/rules.yaml). tests/deploy checks that the committed files match this output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
MONITORING = HERE / "k8s" / "components" / "monitoring"
RULES = HERE / "prometheus" / "rules.yaml"

JOB = 'job=~"$job"'


def q(quantile: float, metric: str, by: str = "") -> str:
    group = f"le{', ' + by if by else ''}"
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket{{{JOB}}}[$__rate_interval])))"


def panel(title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries") -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": [
            {"refId": chr(65 + index), "expr": expr, "legendFormat": legend}
            for index, (expr, legend) in enumerate(targets)
        ],
    }


def http_panels() -> list[dict[str, Any]]:
    return [
        panel(
            "Requests per second by route",
            [
                (
                    f"sum by (route, code) (rate(http_server_requests_total{{{JOB}}}[$__rate_interval]))",
                    "{{route}} {{code}}",
                )
            ],
            "reqps",
        ),
        panel(
            "5xx ratio",
            [
                (
                    f'sum(rate(http_server_requests_total{{{JOB}, code=~"5.."}}[$__rate_interval]))'
                    f" / sum(rate(http_server_requests_total{{{JOB}}}[$__rate_interval]))",
                    "5xx ratio",
                )
            ],
            "percentunit",
        ),
        panel(
            "Latency by route (p50 / p95 / p99)",
            [
                (q(0.5, "http_server_request_duration_seconds", "route"), "p50 {{route}}"),
                (q(0.95, "http_server_request_duration_seconds", "route"), "p95 {{route}}"),
                (q(0.99, "http_server_request_duration_seconds", "route"), "p99 {{route}}"),
            ],
            "s",
        ),
        panel("Requests in flight", [(f"sum by (route) (http_server_requests_in_flight{{{JOB}}})", "{{route}}")]),
    ]


def image_store_panels() -> list[dict[str, Any]]:
    return [
        panel(
            "Uploads by outcome",
            [(f"sum by (outcome) (rate(image_store_uploads_total{{{JOB}}}[$__rate_interval]))", "{{outcome}}")],
            "ops",
        ),
        panel(
            "Upload size (p50 / p95)",
            [(q(0.5, "image_store_upload_size_bytes"), "p50"), (q(0.95, "image_store_upload_size_bytes"), "p95")],
            "bytes",
        ),
        panel(
            "Processing time p95 by step",
            [(q(0.95, "image_store_processing_duration_seconds", "step"), "{{step}}")],
            "s",
        ),
        panel(
            "Storage operation latency p95",
            [(q(0.95, "image_store_storage_operation_duration_seconds", "operation"), "{{operation}}")],
            "s",
        ),
        panel("Stored bytes", [(f"max(image_store_stored_bytes{{{JOB}}})", "bytes")], "bytes"),
        panel(
            "Images and blobs",
            [(f"max(image_store_images{{{JOB}}})", "images"), (f"max(image_store_blobs{{{JOB}}})", "blobs")],
        ),
        panel(
            "Dedup hits per second",
            [(f"sum(rate(image_store_dedup_hits_total{{{JOB}}}[$__rate_interval]))", "dedup hits")],
            "ops",
        ),
        panel(
            "Serve responses by status",
            [(f"sum by (status) (rate(image_store_serve_responses_total{{{JOB}}}[$__rate_interval]))", "{{status}}")],
            "reqps",
        ),
        panel("Decodes in flight", [(f"sum(image_store_decodes_in_flight{{{JOB}}})", "decodes")]),
        panel(
            "Clean-up deletions",
            [(f"sum by (kind) (increase(image_store_cleanup_deleted_total{{{JOB}}}[1h]))", "{{kind}}")],
        ),
        panel(
            "Integrity problems found",
            [(f"sum by (kind) (increase(image_store_integrity_problems_total{{{JOB}}}[1h]))", "{{kind}}")],
        ),
        panel(
            "Time since last successful maintenance",
            [(f"time() - max by (task) (image_store_maintenance_last_success_timestamp_seconds{{{JOB}}})", "{{task}}")],
            "s",
        ),
    ]


def gateway_panels() -> list[dict[str, Any]]:
    return [
        panel(
            "Time to first token p50 / p95 by model",
            [
                (q(0.5, "vision_gateway_time_to_first_token_seconds", "model"), "p50 {{model}}"),
                (q(0.95, "vision_gateway_time_to_first_token_seconds", "model"), "p95 {{model}}"),
            ],
            "s",
        ),
        panel(
            "Upstream time to first chunk p95 by model",
            [(q(0.95, "vision_gateway_upstream_time_to_first_chunk_seconds", "model"), "{{model}}")],
            "s",
        ),
        panel(
            "Gateway overhead (TTFT − upstream first chunk, p50)",
            [
                (
                    f"{q(0.5, 'vision_gateway_time_to_first_token_seconds', 'model')}"
                    f" - {q(0.5, 'vision_gateway_upstream_time_to_first_chunk_seconds', 'model')}",
                    "{{model}}",
                )
            ],
            "s",
        ),
        panel(
            "Output tokens per second by model",
            [
                (
                    f'sum by (model) (rate(vision_gateway_tokens_total{{{JOB}, type="output"}}[$__rate_interval]))',
                    "{{model}}",
                )
            ],
        ),
        panel(
            "Time per output token p50",
            [(q(0.5, "vision_gateway_time_per_output_token_seconds", "model"), "{{model}}")],
            "s",
        ),
        panel("Streams in flight", [(f"sum by (model) (vision_gateway_streams_in_flight{{{JOB}}})", "{{model}}")]),
        panel(
            "Streams ended by outcome",
            [(f"sum by (outcome) (rate(vision_gateway_streams_total{{{JOB}}}[$__rate_interval]))", "{{outcome}}")],
            "ops",
        ),
        panel(
            "Upstream responses by target and code",
            [
                (
                    f"sum by (target, code) (rate(vision_gateway_upstream_requests_total{{{JOB}}}[$__rate_interval]))",
                    "{{target}} {{code}}",
                )
            ],
            "reqps",
        ),
        panel(
            "Upstream retries",
            [
                (
                    f"sum by (target) (rate(vision_gateway_upstream_retries_total{{{JOB}}}[$__rate_interval]))",
                    "{{target}}",
                )
            ],
            "ops",
        ),
        panel(
            "Image preparation p95 by step",
            [(q(0.95, "vision_gateway_image_preparation_duration_seconds", "step"), "{{step}}")],
            "s",
        ),
        panel(
            "Image bytes sent to Ollama",
            [(f"sum(rate(vision_gateway_image_bytes_sent_total{{{JOB}}}[$__rate_interval]))", "bytes/s")],
            "Bps",
        ),
        panel(
            "Capability cache hit ratio",
            [
                (
                    f'sum(rate(vision_gateway_capability_cache_requests_total{{{JOB}, result="hit"}}[$__rate_interval]))'
                    f" / sum(rate(vision_gateway_capability_cache_requests_total{{{JOB}}}[$__rate_interval]))",
                    "hit ratio",
                )
            ],
            "percentunit",
        ),
        panel(
            "Refusals by error code",
            [(f"sum by (code) (rate(vision_gateway_rejections_total{{{JOB}}}[$__rate_interval]))", "{{code}}")],
            "ops",
        ),
    ]


def dashboard(uid: str, title: str, job: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    for index, item in enumerate(panels):
        item["id"] = index + 1
        item["gridPos"] = {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8}
    return {
        "uid": uid,
        "title": title,
        "tags": ["retina"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "job",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": f'label_values(http_server_requests_total{{job=~"{job}.*"}}, job)',
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


def prometheus_rule() -> dict[str, Any]:
    rules = yaml.safe_load(RULES.read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "retina", "labels": {"release": "kube-prometheus-stack"}},
        "spec": rules,
    }


def outputs() -> dict[Path, str]:
    dashboards = {
        "image-store.json": dashboard(
            "retina-image-store", "retina / image-store", "retina-image-store", http_panels() + image_store_panels()
        ),
        "vision-gateway.json": dashboard(
            "retina-vision-gateway",
            "retina / vision-gateway",
            "retina-vision-gateway",
            http_panels() + gateway_panels(),
        ),
    }
    files = {MONITORING / "dashboards" / name: json.dumps(body, indent=2) + "\n" for name, body in dashboards.items()}
    header = "# Generated by deploy/generate.py from deploy/prometheus/rules.yaml; do not edit.\n"
    files[MONITORING / "prometheusrule.yaml"] = header + yaml.safe_dump(prometheus_rule(), sort_keys=False, width=120)
    return files


def main() -> None:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
