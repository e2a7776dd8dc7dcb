"""image-store metrics (names documented in docs/metrics.md)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.metrics import HTTP_DURATION_BUCKETS, SIZE_BUCKETS, STEP_BUCKETS

UPLOAD_OUTCOMES = (
    "stored",
    "duplicate",
    "too_large",
    "unsupported_type",
    "invalid",
    "rate_limited",
    "disabled",
    "busy",
    "insufficient_storage",
    "timeout",
    "error",
)


class ImageStoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.uploads = Counter(
            "image_store_uploads_total", "Upload attempts by outcome.", ["outcome"], registry=registry
        )
        for outcome in UPLOAD_OUTCOMES:
            self.uploads.labels(outcome)
        self.upload_size = Histogram(
            "image_store_upload_size_bytes",
            "Bytes received per accepted upload, before re-encoding.",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.processing = Histogram(
            "image_store_processing_duration_seconds",
            "Validation and re-encoding time by step.",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.storage_ops = Histogram(
            "image_store_storage_operation_duration_seconds",
            "File-system operation latency.",
            ["operation"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )
        self.dedup_hits = Counter(
            "image_store_dedup_hits_total", "Uploads whose bytes were already stored.", registry=registry
        )
        self.images = Gauge("image_store_images", "Image rows.", registry=registry)
        self.blobs = Gauge("image_store_blobs", "Distinct stored files.", registry=registry)
        self.stored_bytes = Gauge("image_store_stored_bytes", "Bytes in stored files.", registry=registry)
        self.serve_responses = Counter(
            "image_store_serve_responses_total",
            "Responses to GET/HEAD of image bytes, by status.",
            ["status"],
            registry=registry,
        )
        self.missing_files = Counter(
            "image_store_missing_files_total",
            "Image rows whose file was missing from storage when their bytes were requested.",
            registry=registry,
        )
        self.decodes_in_flight = Gauge(
            "image_store_decodes_in_flight", "Decodes running or waiting.", registry=registry
        )
        # Read from the decode pool at scrape time (app.py wires them); busy 503s with few decodes
        # in flight but this near the limit mean a burst of very large images.
        self.decode_budget_used = Gauge(
            "image_store_decode_budget_used_bytes",
            "Decoded bytes reserved by decodes running or waiting for a worker.",
            registry=registry,
        )
        self.decode_budget_limit = Gauge(
            "image_store_decode_budget_bytes", "IMAGE_DECODE_BUDGET_MB in bytes.", registry=registry
        )
        self.cleanup_deleted = Counter(
            "image_store_cleanup_deleted_total",
            "Removed by retention clean-up.",
            ["kind"],
            registry=registry,
        )
        self.integrity_problems = Counter(
            "image_store_integrity_problems_total",
            "Problems found by integrity checks.",
            ["kind"],
            registry=registry,
        )
        self.maintenance_success = Gauge(
            "image_store_maintenance_last_success_timestamp_seconds",
            "Unix time of the last successful maintenance run.",
            ["task"],
            registry=registry,
        )
        for kind in ("image", "blob", "file"):
            self.cleanup_deleted.labels(kind)
        for kind in ("missing_file", "orphan_file", "checksum_mismatch"):
            self.integrity_problems.labels(kind)

    def storage_timer(self, operation: str) -> contextlib.AbstractContextManager[Any]:
        """Times one file-system operation (write, rename, delete) into its histogram."""
        return self.storage_ops.labels(operation).time()
