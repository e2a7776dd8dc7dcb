"""The fleet's metrics, one series per backend (labelled host:port, never the URL's credentials)."""

from __future__ import annotations

from common.metrics import MetricFactory
from services.vision_gateway.fleet.routing import DECISIONS

# The `outcome` label of vision_gateway_backend_requests_total.
OUTCOMES = (
    "opened",  # the stream's first line arrived: the backend serves the ask
    "connect_failed",  # no connection (refused, unreachable, connect timeout): the backend is marked down
    "failed",  # a 5xx, a reset or a timeout before the first line: the ask moves on
    "refused",  # Ollama's verdict on the request (4xx, an error line, no such model)
)


class FleetMetrics:
    def __init__(self, m: MetricFactory) -> None:
        self.requests = m.counter(
            "vision_gateway_backend_requests_total",
            "Chat requests sent to each Ollama backend, by outcome before the first token.",
            ["backend", "outcome"],
        )
        self.in_flight = m.gauge(
            "vision_gateway_backend_streams_in_flight", "Streams open to each Ollama backend.", ["backend"]
        )
        self.up = m.gauge(
            "vision_gateway_backend_up",
            "1 while an Ollama backend takes asks; 0 while it is marked down (connect refused or timed out) "
            "until a probe succeeds.",
            ["backend"],
        )
        self.decisions = m.counter(
            "vision_gateway_routing_decisions_total",
            "Routing decisions by the backend chosen and why: affinity_kept, loaded_preferred, least_loaded, "
            "failover (an attempt moved to the next backend before the first token).",
            ["backend", "decision"],
        )

    def add_backend(self, backend: str) -> None:
        """Every series of a backend from the first scrape (alerts and rate() need them at 0)."""
        for outcome in OUTCOMES:
            self.requests.labels(backend, outcome)
        for decision in DECISIONS:
            self.decisions.labels(backend, decision)
        self.in_flight.labels(backend).set(0)
        self.up.labels(backend).set(1)
