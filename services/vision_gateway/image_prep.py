"""Images as the model gets them: downscaled to a longest edge, re-encoded, plain base64.

JPEG and PNG are the formats every Ollama engine decodes, so that is all we send. JPEG draft
mode lets libjpeg decode a 12 MP photo at 1/2, 1/4 or 1/8 scale directly, which is most of the
speed-up. Results are cached by SHA-256 (the edge is fixed per process) so history turns neither re-fetch
nor re-encode.
"""

from __future__ import annotations

import asyncio
import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cachetools import LRUCache
from PIL import Image

from common.tracing.spans import traced

JPEG_QUALITY = 85
# Modes thumbnail() resizes as they are (P and 16-bit modes are converted first).
RESIZABLE_MODES = ("RGB", "RGBA", "L", "LA")
# Images with alpha larger than this many times the target edge get a nearest-neighbour step first.
ALPHA_STEP = 4


@dataclass(frozen=True, slots=True)
class PreparedImage:
    base64: str
    width: int
    height: int
    encoded_bytes: int


def prepare_for_model(data: bytes, max_edge: int) -> PreparedImage:
    """Blocking: decode, downscale, re-encode (run in the encoder pool).

    Downscaling happens before any mode conversion, and the full-size decode is released as soon
    as a smaller copy exists, so about one full-size copy of the pixels is alive at a time
    (admission.prep_cost counts on that: about 5 bytes per pixel at the peak).
    """
    with Image.open(io.BytesIO(data)) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", (max_edge, max_edge))
        has_alpha = opened.mode in ("RGBA", "LA", "PA") or (opened.mode == "P" and "transparency" in opened.info)
        target = "RGBA" if has_alpha else "RGB"
        working: Image.Image = opened if opened.mode in RESIZABLE_MODES else opened.convert(target)
        if working.mode in ("RGBA", "LA") and max(working.size) > ALPHA_STEP * max_edge:
            working = _nearest_step(working, ALPHA_STEP * max_edge)
            opened.close()  # frees the full-size decode now, not when the function returns
        if max(working.size) > max_edge:
            working.thumbnail((max_edge, max_edge), Image.Resampling.BICUBIC, reducing_gap=2.0)
        small = working.convert(target) if working.mode != target else working
        buffer = io.BytesIO()
        if has_alpha:
            small.save(buffer, "PNG", compress_level=3)
        else:
            small.save(buffer, "JPEG", quality=JPEG_QUALITY)
    encoded = base64.b64encode(buffer.getbuffer()).decode("ascii")
    return PreparedImage(encoded, small.width, small.height, len(encoded))


def _nearest_step(image: Image.Image, edge: int) -> Image.Image:
    """A nearest-neighbour copy with `edge` as its longest side.

    Pillow's resize() and reduce() premultiply RGBA/LA by alpha into a second full-size copy
    first (+160 MB for a 40 MP image); nearest-neighbour is the one filter that skips it. At
    ALPHA_STEP times the target the aliasing it adds is smoothed away by the bicubic step after.
    """
    scale = edge / max(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.NEAREST
    )


class ImagePreparer:
    """Encodes on a bounded thread pool; keeps prepared images in an LRU bounded by count and bytes."""

    def __init__(self, *, max_edge: int, workers: int, cache_entries: int, cache_bytes: int) -> None:
        self.max_edge = max_edge
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-prep")
        self._cache_entries = cache_entries
        # Sized by base64 length: 256 prepared PNGs with alpha could otherwise hold over a GiB.
        self._cache: LRUCache[str, PreparedImage] = LRUCache(
            maxsize=max(1, cache_bytes), getsizeof=lambda prepared: prepared.encoded_bytes
        )

    def cached(self, sha256: str) -> PreparedImage | None:
        return self._cache.get(sha256)

    async def prepare(self, sha256: str, data: bytes) -> PreparedImage:
        cached = self.cached(sha256)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        with traced("image prepare", {"retina.image.input_bytes": len(data)}) as span:
            prepared = await loop.run_in_executor(self._executor, prepare_for_model, data, self.max_edge)
            if span is not None:
                span.set_attributes({"retina.image.width": prepared.width, "retina.image.height": prepared.height})
        self._remember(sha256, prepared)
        return prepared

    def _remember(self, sha256: str, prepared: PreparedImage) -> None:
        if self._cache_entries <= 0 or not sha256 or prepared.encoded_bytes > self._cache.maxsize:
            return
        while len(self._cache) >= self._cache_entries:
            self._cache.popitem()  # least recently used
        self._cache[sha256] = prepared

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
