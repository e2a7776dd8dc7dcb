"""Decoding untrusted bytes within limits: the limits, the rejection error, and the checks.

The header's dimensions are checked before any pixel is decoded (even before `Image.open`, from
the header as `dimensions.read_header` reads it); a full decode then proves the file is intact. Any
failure caused by the content becomes a refusal with the contract's code (`InvalidImage`,
`ImageTooLarge`, `TooManyFrames`), never a 500.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Final

from PIL import Image, UnidentifiedImageError

from common.errors import ApiError, ImageTooLarge, InvalidImage, TooManyFrames
from services.image_store.imaging.dimensions import read_header

# Pillow format name for each MIME type we can accept.
PILLOW_FORMATS: Final[dict[str, str]] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    allowed_types: frozenset[str]
    max_side_px: int
    max_pixels: int
    max_frames: int
    reencode: bool
    jpeg_quality: int


@contextlib.contextmanager
def untrusted_content(label: str) -> Iterator[None]:
    """Map whatever a decoder raises on hostile bytes to a 422 refusal (never a 500)."""
    with warnings.catch_warnings():
        # Pillow reports odd-but-readable files ("Corrupt EXIF data", "malformed MPO") as UserWarning.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ApiError:
            raise  # our own refusal, already with its code
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(_too_many_pixels(exc)) from exc
        except MemoryError as exc:
            raise ImageTooLarge("decoding the image needs more memory than this server allows") from exc
        except Exception as exc:  # a crafted file can make a decoder raise anything
            message = f"the file is not a valid {label} image: {_reason(exc)}"
            raise InvalidImage(message) from exc


def _too_many_pixels(exc: Exception) -> str:
    """Pillow's own bomb check spoke first (inside a reader that grows its canvas, or above our
    limits): our sentence, with the pixel count its text names."""
    counted = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f" ({counted.group(1)} pixels)" if counted else ""
    return f"the image has too many pixels{pixels} for this server to decode"


def _reason(exc: Exception) -> str:
    """A short cause without Pillow's text, which can include our temp file's path."""
    if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
        return "it is truncated"
    if isinstance(exc, UnidentifiedImageError):
        return "its header cannot be read"
    return "its data is corrupt"


def open_image(stream: IO[bytes], mime: str, limits: ValidationLimits) -> Image.Image:
    # Our limits go first: Pillow's WebP plugin allocates the whole canvas while opening, and
    # Image.open's own bomb check would name no dimensions. An unreadable header is left to it.
    header = read_header(stream, PILLOW_FORMATS[mime])
    if header is not None and min(header.size) > 0:  # 0 is left to Pillow (GIFs may say 0x0)
        _check_dimensions(header.size, limits)
    return Image.open(stream, formats=[PILLOW_FORMATS[mime]])


def check_header(image: Image.Image, mime: str, limits: ValidationLimits) -> int:
    """Sides, area and frame count from the header, before any pixel is decoded."""
    _check_dimensions(image.size, limits)
    # A JPEG's extra MPF images (phones store depth maps and gain maps there) are not
    # frames of the picture: only the primary image is decoded and stored.
    frames = 1 if mime == "image/jpeg" else int(getattr(image, "n_frames", 1))
    if frames > limits.max_frames:
        raise TooManyFrames(f"the image has {frames} frames; at most {limits.max_frames} allowed")
    return frames


def _check_dimensions(size: tuple[int, int], limits: ValidationLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image is {width}x{height} px, which has no pixels")
    if max(width, height) > limits.max_side_px:
        raise ImageTooLarge(f"the image is {width}x{height} px; each side may be at most {limits.max_side_px} px")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} px ({width * height} pixels); "
            f"at most {limits.max_pixels} pixels are allowed",
        )


def decode_fully(image: Image.Image, frames: int, limits: ValidationLimits) -> None:
    """Decode every pixel (of every frame) so truncation and corruption show up now."""
    if frames == 1:
        image.load()
        return
    for index in range(frames):
        image.seek(index)
        _check_dimensions(image.size, limits)  # a GIF frame may grow the canvas
        image.load()
    image.seek(0)
