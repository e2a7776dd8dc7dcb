"""image-store metrics (names documented in docs/metrics.md)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry

from common.metrics import HTTP_DURATION_BUCKETS, SIZE_BUCKETS, STEP_BUCKETS, MetricFactory, children

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
    """Every image-store metric, defined by area; attribute names are what the code uses."""

    def __init__(self, registry: CollectorRegistry) -> None:
        factory = MetricFactory(registry)
        self._define_upload_metrics(factory)
        self._define_storage_metrics(factory)
        self._define_maintenance_metrics(factory)

    def _define_upload_metrics(self, m: MetricFactory) -> None:
        self.uploads = m.counter(
            "image_store_uploads_total", "Upload attempts by outcome.", ["outcome"], preset=UPLOAD_OUTCOMES
        )
        self.upload_size = m.histogram(
            "image_store_upload_size_bytes",
            "Bytes received per accepted upload, before re-encoding.",
            buckets=SIZE_BUCKETS,
        )
        self.processing = m.histogram(
            "image_store_processing_duration_seconds",
            "Validation and re-encoding time by step.",
            ["step"],
            buckets=STEP_BUCKETS,
        )
        self.dedup_hits = m.counter("image_store_dedup_hits_total", "Uploads whose bytes were already stored.")
        self.decodes_in_flight = m.gauge("image_store_decodes_in_flight", "Decodes running or waiting.")
        # Read from the decode pool at scrape time (app.py wires them); busy 503s with few decodes
        # in flight but this near the limit mean a burst of very large images.
        self.decode_budget_used = m.gauge(
            "image_store_decode_budget_used_bytes", "Decoded bytes reserved by decodes running or waiting for a worker."
        )
        self.decode_budget_limit = m.gauge("image_store_decode_budget_bytes", "IMAGE_DECODE_BUDGET_MB in bytes.")

    def _define_storage_metrics(self, m: MetricFactory) -> None:
        self.storage_ops = m.histogram(
            "image_store_storage_operation_duration_seconds",
            "File-system operation latency.",
            ["operation"],
            buckets=HTTP_DURATION_BUCKETS,
        )
        self.images = m.gauge("image_store_images", "Image rows.")
        self.blobs = m.gauge("image_store_blobs", "Distinct stored files.")
        self.stored_bytes = m.gauge("image_store_stored_bytes", "Bytes in stored files.")
        self.serve_responses = m.counter(
            "image_store_serve_responses_total", "Responses to GET/HEAD of image bytes, by status.", ["status"]
        )
        self._served = children(self.serve_responses)
        self.missing_files = m.counter(
            "image_store_missing_files_total",
            "Image rows whose file was missing from storage when their bytes were requested.",
        )

    def _define_maintenance_metrics(self, m: MetricFactory) -> None:
        self.cleanup_deleted = m.counter(
            "image_store_cleanup_deleted_total",
            "Removed by retention clean-up.",
            ["kind"],
            preset=("image", "blob", "file"),
        )
        self.integrity_problems = m.counter(
            "image_store_integrity_problems_total",
            "Problems found by integrity checks.",
            ["kind"],
            preset=("missing_file", "orphan_file", "checksum_mismatch"),
        )
        self.maintenance_success = m.gauge(
            "image_store_maintenance_last_success_timestamp_seconds",
            "Unix time of the last successful maintenance run.",
            ["task"],
        )

    def storage_timer(self, operation: str) -> contextlib.AbstractContextManager[Any]:
        """Times one file-system operation (write, rename, delete) into its histogram."""
        return self.storage_ops.labels(operation).time()

    def count_served(self, status: int) -> None:
        """One response to a GET/HEAD of image bytes (on every image GET: the child is cached)."""
        self._served(str(status)).inc()
