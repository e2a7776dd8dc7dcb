"""Re-encoding an accepted image into a clean copy in its own format (a still GIF becomes PNG).

The copy is upright and sRGB with no metadata and no trailing bytes; the encoder settings trade
a few per cent of size for much faster uploads.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Final

from PIL import Image

from services.image_store.imaging.decode import PILLOW_FORMATS, ValidationLimits
from services.image_store.imaging.metadata import strip, to_srgb, upright

# zlib level 3 writes a 12 MP photo-like PNG ~2.5x faster than the default 6 for ~7 % more bytes.
PNG_COMPRESS_LEVEL: Final = 3
# libwebp effort: method 2 is as fast as 0 and within ~2 % of the default 4's size (lossy);
# for lossless, quality is the effort knob and the default (80) takes seconds on a photo.
WEBP_METHOD: Final = 2
WEBP_LOSSLESS_EFFORT: Final = 25


@dataclass(frozen=True, slots=True)
class Encoded:
    mime_type: str
    size: tuple[int, int]
    data: bytes | memoryview


def reencode(
    image: Image.Image, mime: str, frames: int, orientation: int, lossless: bool, limits: ValidationLimits
) -> Encoded:
    """A clean copy: upright, sRGB, no EXIF/XMP/ICC/comments/text chunks, no trailing bytes."""
    if frames > 1:
        return _reencode_animation(image, mime, frames, orientation, lossless, limits)
    picture = upright(image, orientation)
    picture = to_srgb(picture, image.info.get("icc_profile"))
    buffer = io.BytesIO()
    if mime == "image/jpeg":
        if picture.mode not in ("L", "RGB"):
            picture = picture.convert("RGB")  # CMYK without a usable profile, and the rare others
        strip(picture)
        picture.save(buffer, "JPEG", quality=limits.jpeg_quality, optimize=False, progressive=False)
        out_mime = "image/jpeg"
    elif mime == "image/webp":
        strip(picture)
        picture.save(buffer, "WEBP", **_webp_options(lossless, limits))
        out_mime = "image/webp"
    else:
        # PNG stays PNG; a single-frame GIF becomes a PNG (lossless, palette and transparency kept).
        if picture.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            picture = picture.convert("RGBA" if "A" in picture.mode else "RGB")
        strip(picture, keep_transparency=True)
        picture.save(buffer, "PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
        out_mime = "image/png"
    return Encoded(out_mime, picture.size, buffer.getbuffer())


def _reencode_animation(
    image: Image.Image, mime: str, frames: int, orientation: int, lossless: bool, limits: ValidationLimits
) -> Encoded:
    """Animations (only when max_frames allows) keep their format; each frame is copied clean."""
    loop = int(image.info.get("loop", 0) or 0)
    clean: list[Image.Image] = []
    durations: list[int] = []
    for index in range(frames):
        image.seek(index)
        durations.append(int(image.info.get("duration", 0) or 0))
        frame = upright(image, orientation, copy=True)
        strip(frame, keep_transparency=True)
        clean.append(frame)
    image.seek(0)
    fmt = PILLOW_FORMATS[mime]
    options: dict[str, Any] = {
        "save_all": True,
        "append_images": clean[1:],
        "duration": durations,
        "loop": loop,
    }
    if fmt == "WEBP":
        options.update(_webp_options(lossless, limits))
    elif fmt == "PNG":
        options.update(optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    buffer = io.BytesIO()
    clean[0].save(buffer, fmt, **options)
    return Encoded(mime, clean[0].size, buffer.getbuffer())


def _webp_options(lossless: bool, limits: ValidationLimits) -> dict[str, Any]:
    if lossless:
        return {"lossless": True, "exact": True, "quality": WEBP_LOSSLESS_EFFORT, "method": WEBP_METHOD}
    return {"lossless": False, "quality": limits.jpeg_quality, "method": WEBP_METHOD}
