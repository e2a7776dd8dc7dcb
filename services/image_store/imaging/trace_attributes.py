"""What an image decode span says: the result's type and size and the time of each step, no bytes."""

from __future__ import annotations

from opentelemetry.util.types import AttributeValue

from services.image_store.imaging.pipeline import ProcessedImage


def decode_span_attributes(processed: ProcessedImage) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "retina.image.mime_type": processed.mime_type,
        "retina.image.width": processed.width,
        "retina.image.height": processed.height,
        "retina.image.size_bytes": processed.size_bytes,
    }
    # The worker's own steps (sniff, decode, re-encode, ...): the span's remainder is queueing.
    for step, seconds in processed.timings.items():
        attributes[f"retina.image.{step}_ms"] = round(seconds * 1000, 3)
    return attributes
