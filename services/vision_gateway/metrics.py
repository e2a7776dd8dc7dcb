"""vision-gateway metrics (names documented in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from common.metrics import HTTP_DURATION_BUCKETS, MetricFactory
from services.vision_gateway.fleet.metrics import FleetMetrics

# Cold model loads take seconds to minutes, so the top buckets are generous.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
STREAM_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
STREAM_OUTCOMES = ("completed", "stopped", "client_disconnected", "upstream_error", "shutdown")


class GatewayMetrics:
    """Every gateway metric, defined by area; attribute names are what the code uses."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.known_models: set[str] = set()
        factory = MetricFactory(registry)
        self._define_stream_metrics(factory)
        self._define_upstream_metrics(factory)
        self._define_outcome_metrics(factory)
        self.fleet = FleetMetrics(factory)  # per Ollama backend

    def _define_stream_metrics(self, m: MetricFactory) -> None:
        self.streams = m.counter("vision_gateway_streams_total", "Streams ended, by outcome.", ["model", "outcome"])
        # The HPA's metric must exist before the first stream, or the autoscaler sees nothing.
        self.in_flight = m.gauge("vision_gateway_streams_in_flight", "Open SSE streams.", ["model"], preset=("other",))
        self.stream_duration = m.histogram(
            "vision_gateway_stream_duration_seconds",
            "Whole stream duration.",
            ["model", "outcome"],
            buckets=STREAM_BUCKETS,
        )
        self.ttft = m.histogram(
            "vision_gateway_time_to_first_token_seconds",
            "Request received to first chunk written to the client.",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.tpot = m.histogram(
            "vision_gateway_time_per_output_token_seconds",
            "Average time between output chunks of one stream.",
            ["model"],
            buckets=TPOT_BUCKETS,
        )
        self.tokens = m.counter("vision_gateway_tokens_total", "Tokens reported by Ollama.", ["model", "type"])

    def _define_upstream_metrics(self, m: MetricFactory) -> None:
        self.upstream_ttfc = m.histogram(
            "vision_gateway_upstream_time_to_first_chunk_seconds",
            "Ollama request sent to first NDJSON chunk received.",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_requests = m.counter(
            "vision_gateway_upstream_requests_total",
            "Upstream HTTP responses by target and status.",
            ["target", "code"],
        )
        self.retries = m.counter(
            "vision_gateway_upstream_retries_total",
            "Retries before output started.",
            ["target"],
            preset=("ollama", "image_store"),
        )
        self.image_prep = m.histogram(
            "vision_gateway_image_preparation_duration_seconds",
            "Image fetch and encode time.",
            ["step"],
            buckets=HTTP_DURATION_BUCKETS,
        )
        self.image_bytes_sent = m.counter(
            "vision_gateway_image_bytes_sent_total", "Base64 bytes of images sent to Ollama."
        )
        self.capability_cache = m.counter(
            "vision_gateway_capability_cache_requests_total",
            "Capability look-ups by cache result.",
            ["result"],
            preset=("hit", "miss"),
        )

    def _define_outcome_metrics(self, m: MetricFactory) -> None:
        self.rejections = m.counter(
            "vision_gateway_rejections_total", "Requests refused before streaming, by error code.", ["code"]
        )
        self.answer_saves = m.counter(
            "vision_gateway_answer_saves_total",
            "Final writes of streamed answers: saved in time; queued in memory after retrying while PostgreSQL "
            "was unreachable, then saved_late or lost.",
            ["result"],
            preset=("saved", "queued", "saved_late", "lost"),
        )
        self.streams_swept = m.counter(
            "vision_gateway_streams_swept_total",
            "Streaming rows closed as interrupted because no live gateway touched them (their gateway died).",
        )

    def model_label(self, model: str) -> str:
        """Bounded label values: configured or discovered models, everything else is 'other'."""
        return model if model in self.known_models else "other"
