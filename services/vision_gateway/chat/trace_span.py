"""The ask's span: one per relayed stream, from the `start` event to the final one.

Named and attributed after OpenTelemetry's GenAI conventions where they have a name (model, token
counts), `retina.*` for the rest (stream, message and conversation IDs, time to first token, the
outcome). IDs and numbers only: never the message, the answer, the thinking or an image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from opentelemetry.util.types import AttributeValue

from common.tracing.spans import UNTRACED, current_tracer, traced
from services.vision_gateway.chat.relay import StreamRelay


def ask_span(relay: StreamRelay) -> contextlib.AbstractContextManager[None]:
    """Around `relay.run()`: what the relay measured is put on the span however the stream ended.

    Untraced (tracing off) it is the shared do-nothing context manager, as `traced()` would give:
    it is held for the stream's whole life, and a generator one would be three objects and a frame.
    """
    if current_tracer() is None:
        return UNTRACED
    return _ask_span(relay)


@contextlib.contextmanager
def _ask_span(relay: StreamRelay) -> Iterator[None]:
    turn = relay.turn
    model = turn.prepared.model
    with traced(
        f"chat {model}",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "ollama",
            "gen_ai.request.model": model,
            "retina.stream.id": str(turn.stream_id),
            "retina.message.id": str(turn.message_id),
            "retina.conversation.id": str(turn.turn.conversation_id),
            "retina.images": len(turn.prepared.image_ids),
            "retina.vision": turn.prepared.vision,
        },
    ) as span:
        try:
            yield
        finally:
            if span is not None:
                span.set_attributes(_measured(relay))
                if relay.first_at is not None:
                    # The moment the first token arrived, dated back from now on the wall clock.
                    ago = time.perf_counter() - relay.first_at
                    span.add_event("first_token", timestamp=time.time_ns() - int(ago * 1e9))


def _measured(relay: StreamRelay) -> dict[str, AttributeValue]:
    stats = relay.stats()
    measured: dict[str, AttributeValue] = {
        "retina.stream.outcome": relay.outcome,
        "retina.stream.chunks": relay.chunks,
        "gen_ai.usage.input_tokens": int(stats["prompt_tokens"]),
        "gen_ai.usage.output_tokens": int(stats["completion_tokens"]),
    }
    if stats["time_to_first_token_ms"] is not None:
        measured["retina.stream.time_to_first_token_ms"] = float(stats["time_to_first_token_ms"])
    return measured
