"""vision-gateway metrics (names documented in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.metrics import HTTP_DURATION_BUCKETS

# Cold model loads take seconds to minutes, so the top buckets are generous.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
STREAM_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
STREAM_OUTCOMES = ("completed", "stopped", "client_disconnected", "upstream_error", "shutdown")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.known_models: set[str] = set()
        self.streams = Counter(
            "vision_gateway_streams_total", "Streams ended, by outcome.", ["model", "outcome"], registry=registry
        )
        self.in_flight = Gauge("vision_gateway_streams_in_flight", "Open SSE streams.", ["model"], registry=registry)
        self.stream_duration = Histogram(
            "vision_gateway_stream_duration_seconds",
            "Whole stream duration.",
            ["model", "outcome"],
            buckets=STREAM_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "vision_gateway_time_to_first_token_seconds",
            "Request received to first chunk written to the client.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_ttfc = Histogram(
            "vision_gateway_upstream_time_to_first_chunk_seconds",
            "Ollama request sent to first NDJSON chunk received.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "vision_gateway_time_per_output_token_seconds",
            "Average time between output chunks of one stream.",
            ["model"],
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "vision_gateway_tokens_total", "Tokens reported by Ollama.", ["model", "type"], registry=registry
        )
        self.upstream_requests = Counter(
            "vision_gateway_upstream_requests_total",
            "Upstream HTTP responses by target and status.",
            ["target", "code"],
            registry=registry,
        )
        self.retries = Counter(
            "vision_gateway_upstream_retries_total",
            "Retries before output started.",
            ["target"],
            registry=registry,
        )
        self.image_prep = Histogram(
            "vision_gateway_image_preparation_duration_seconds",
            "Image fetch and encode time.",
            ["step"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )
        self.image_bytes_sent = Counter(
            "vision_gateway_image_bytes_sent_total", "Base64 bytes of images sent to Ollama.", registry=registry
        )
        self.capability_cache = Counter(
            "vision_gateway_capability_cache_requests_total",
            "Capability look-ups by cache result.",
            ["result"],
            registry=registry,
        )
        self.rejections = Counter(
            "vision_gateway_rejections_total",
            "Requests refused before streaming, by error code.",
            ["code"],
            registry=registry,
        )
        self.answer_saves = Counter(
            "vision_gateway_answer_saves_total",
            "Final writes of streamed answers: saved, or lost after retrying while PostgreSQL was unreachable.",
            ["result"],
            registry=registry,
        )
        self.streams_swept = Counter(
            "vision_gateway_streams_swept_total",
            "Streaming rows closed as interrupted because no gateway saved progress for them.",
            registry=registry,
        )
        for result in ("saved", "lost"):
            self.answer_saves.labels(result)
        # The HPA's metric must exist before the first stream, or the autoscaler sees nothing.
        self.in_flight.labels("other")
        for target in ("ollama", "image_store"):
            self.retries.labels(target)
        for result in ("hit", "miss"):
            self.capability_cache.labels(result)

    def model_label(self, model: str) -> str:
        """Bounded label values: configured or discovered models, everything else is 'other'."""
        return model if model in self.known_models else "other"
