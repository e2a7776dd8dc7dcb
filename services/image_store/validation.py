"""Image validation and re-encoding: runs inside a decode worker process, never on the event loop.

Order matters: the type comes from the bytes (libmagic), Pillow may open only that format, the
header's dimensions are checked before any pixel is decoded, a full decode then proves the file
is intact, and re-encoding (after EXIF orientation) drops metadata and trailing payloads.

Everything here is synchronous and pure apart from writing `destination`. Any failure caused by
the file's content becomes `ImageRejected`; only I/O on our own files (and programming errors)
surface as other exceptions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Final

from PIL import ExifTags, Image, ImageCms, ImageFile, UnidentifiedImageError

from common.errors import ApiError
from services.image_store.headers import declared_size

# Pillow format name for each MIME type we can accept.
PILLOW_FORMATS: Final[dict[str, str]] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}
# Names some libmagic versions use for the same formats.
_MIME_ALIASES: Final[dict[str, str]] = {
    "image/apng": "image/png",
    "image/x-png": "image/png",
    "image/pjpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/x-webp": "image/webp",
}
SNIFF_BYTES: Final = 4096
COPY_BLOCK_BYTES: Final = 1024 * 1024
OUTPUT_FILE_MODE: Final = 0o640
# zlib level 3 writes a 12 MP photo-like PNG ~2.5x faster than the default 6 for ~7 % more bytes.
PNG_COMPRESS_LEVEL: Final = 3
# libwebp effort: method 2 is as fast as 0 and within ~2 % of the default 4's size (lossy);
# for lossless, quality is the effort knob and the default (80) takes seconds on a photo.
WEBP_METHOD: Final = 2
WEBP_LOSSLESS_EFFORT: Final = 25

# Orientation tag value -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_UPRIGHT: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_magic: Any = None
_srgb_profile: ImageCms.ImageCmsProfile | None = None


def _sniffer() -> Any:
    """libmagic handle, created lazily once per worker process (it loads a database)."""
    global _magic
    if _magic is None:
        import magic

        _magic = magic.Magic(mime=True)
    return _magic


def _srgb() -> ImageCms.ImageCmsProfile:
    global _srgb_profile
    if _srgb_profile is None:
        _srgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _srgb_profile


def warm_up() -> None:
    """Load libmagic and the Pillow plugins now, so a worker's first upload is not slower."""
    _sniffer()
    _srgb()
    Image.init()


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    allowed_types: frozenset[str]
    max_side_px: int
    max_pixels: int
    max_frames: int
    reencode: bool
    jpeg_quality: int


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    """What was written to `destination`; the caller records metrics from `timings` (seconds)."""

    mime_type: str
    width: int
    height: int
    sha256: str
    size_bytes: int
    timings: dict[str, float] = field(default_factory=dict)


class ImageRejected(ApiError):
    """An upload that is not an acceptable image; carries the contract's status and code."""

    _OUTCOMES: ClassVar[dict[str, str]] = {
        "unsupported_media_type": "unsupported_type",
        "image_too_large": "too_large",
    }

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, status=status, code=code)

    @property
    def outcome(self) -> str:
        return self._OUTCOMES.get(self.code, "invalid")


def sniff_mime(head: bytes) -> str:
    """The MIME type libmagic sees in the first bytes (the client's claims are never used)."""
    detected = str(_sniffer().from_buffer(head))
    return _MIME_ALIASES.get(detected, detected)


def process_image_file(source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
    """Validate `source` and write the bytes to store to `destination` (only if accepted).

    Raises ImageRejected for anything wrong with the content; OSError only for our own I/O.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; truncated uploads would pass")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with source.open("rb") as stream:
        head = stream.read(SNIFF_BYTES)
        if not head:
            raise ImageRejected(400, "empty_upload", "the upload is empty")
        mime = sniff_mime(head)
        if mime not in limits.allowed_types or mime not in PILLOW_FORMATS:
            allowed = ", ".join(sorted(limits.allowed_types & PILLOW_FORMATS.keys()))
            raise ImageRejected(
                415,
                "unsupported_media_type",
                f"the file is {mime}, which is not accepted; allowed types: {allowed}",
            )
        timings["sniff"] = time.perf_counter() - started

        step = time.perf_counter()
        label = PILLOW_FORMATS[mime]
        with _untrusted_content(label):
            lossless = mime != "image/jpeg" and (mime != "image/webp" or _webp_is_lossless(stream))
            with _open(stream, head, mime, limits) as image:
                frames = _check_header(image, mime, limits)
                _decode_fully(image, frames, limits)
                timings["decode"] = time.perf_counter() - step
                step = time.perf_counter()
                orientation = _orientation(image)
                if limits.reencode:
                    encoded = _reencode(image, mime, frames, orientation, lossless, limits)
                    out_mime, (width, height) = encoded.mime_type, encoded.size
                else:
                    encoded = None
                    out_mime, (width, height) = mime, _upright_size(image.size, orientation)

        if encoded is not None:
            sha256, size, hashing = _write_durably(destination, [encoded.data])
        else:
            stream.seek(0)
            sha256, size, hashing = _write_durably(destination, _blocks(stream))
    timings["reencode"] = time.perf_counter() - step - hashing
    timings["hash"] = hashing
    timings["total"] = time.perf_counter() - started
    return ProcessedImage(
        mime_type=out_mime, width=width, height=height, sha256=sha256, size_bytes=size, timings=timings
    )


# ---- decoding ------------------------------------------------------------------------------


@contextlib.contextmanager
def _untrusted_content(label: str) -> Iterator[None]:
    """Map whatever a decoder raises on hostile bytes to ImageRejected (never a 500)."""
    with warnings.catch_warnings():
        # Pillow reports odd-but-readable files ("Corrupt EXIF data", "malformed MPO") as UserWarning.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(422, "image_too_large", f"the image has too many pixels: {exc}") from exc
        except MemoryError as exc:
            raise ImageRejected(
                422, "image_too_large", "decoding the image needs more memory than this server allows"
            ) from exc
        except Exception as exc:  # a crafted file can make a decoder raise anything
            message = f"the file is not a valid {label} image: {_reason(exc)}"
            raise ImageRejected(422, "invalid_image", message) from exc


def _reason(exc: Exception) -> str:
    """A short cause without Pillow's text, which can include our temp file's path."""
    if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
        return "it is truncated"
    if isinstance(exc, UnidentifiedImageError):
        return "its header cannot be read"
    return "its data is corrupt"


def _open(stream: IO[bytes], head: bytes, mime: str, limits: ValidationLimits) -> Image.Image:
    # Our limits go first where the size sits at a fixed place: Pillow's WebP plugin allocates
    # the whole canvas while opening, and its own bomb check would name no dimensions.
    declared = declared_size(head, mime)
    if declared is not None and min(declared) > 0:  # 0 is left to Pillow (GIFs may say 0x0)
        _check_dimensions(declared, limits)
    return Image.open(stream, formats=[PILLOW_FORMATS[mime]])


def _check_header(image: Image.Image, mime: str, limits: ValidationLimits) -> int:
    """Sides, area and frame count from the header, before any pixel is decoded."""
    _check_dimensions(image.size, limits)
    # A JPEG's extra MPF images (phones store depth maps and gain maps there) are not
    # frames of the picture: only the primary image is decoded and stored.
    frames = 1 if mime == "image/jpeg" else int(getattr(image, "n_frames", 1))
    if frames > limits.max_frames:
        raise ImageRejected(
            422, "too_many_frames", f"the image has {frames} frames; at most {limits.max_frames} allowed"
        )
    return frames


def _check_dimensions(size: tuple[int, int], limits: ValidationLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRejected(422, "invalid_image", f"the image is {width}x{height} px, which has no pixels")
    if max(width, height) > limits.max_side_px:
        raise ImageRejected(
            422,
            "image_too_large",
            f"the image is {width}x{height} px; each side may be at most {limits.max_side_px} px",
        )
    if width * height > limits.max_pixels:
        raise ImageRejected(
            422,
            "image_too_large",
            f"the image is {width}x{height} px ({width * height} pixels); "
            f"at most {limits.max_pixels} pixels are allowed",
        )


def _decode_fully(image: Image.Image, frames: int, limits: ValidationLimits) -> None:
    """Decode every pixel (of every frame) so truncation and corruption show up now."""
    if frames == 1:
        image.load()
        return
    for index in range(frames):
        image.seek(index)
        _check_dimensions(image.size, limits)  # a GIF frame may grow the canvas
        image.load()
    image.seek(0)


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation; an unreadable EXIF block counts as upright, as in browsers."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - metadata is discarded anyway; a broken block must not reject
        return 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


# ---- re-encoding ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Encoded:
    mime_type: str
    size: tuple[int, int]
    data: bytes | memoryview


def _reencode(
    image: Image.Image, mime: str, frames: int, orientation: int, lossless: bool, limits: ValidationLimits
) -> _Encoded:
    """A clean copy: upright, sRGB, no EXIF/XMP/ICC/comments/text chunks, no trailing bytes."""
    if frames > 1:
        return _reencode_animation(image, mime, frames, orientation, lossless, limits)
    picture = _upright(image, orientation)
    picture = _to_srgb(picture, image.info.get("icc_profile"))
    buffer = io.BytesIO()
    if mime == "image/jpeg":
        if picture.mode not in ("L", "RGB"):
            picture = picture.convert("RGB")  # CMYK without a usable profile, and the rare others
        _strip(picture)
        picture.save(buffer, "JPEG", quality=limits.jpeg_quality, optimize=False, progressive=False)
        out_mime = "image/jpeg"
    elif mime == "image/webp":
        _strip(picture)
        picture.save(buffer, "WEBP", **_webp_options(lossless, limits))
        out_mime = "image/webp"
    else:
        # PNG stays PNG; a single-frame GIF becomes a PNG (lossless, palette and transparency kept).
        if picture.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            picture = picture.convert("RGBA" if "A" in picture.mode else "RGB")
        _strip(picture, keep_transparency=True)
        picture.save(buffer, "PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
        out_mime = "image/png"
    return _Encoded(out_mime, picture.size, buffer.getbuffer())


def _reencode_animation(
    image: Image.Image, mime: str, frames: int, orientation: int, lossless: bool, limits: ValidationLimits
) -> _Encoded:
    """Animations (only when max_frames allows) keep their format; each frame is copied clean."""
    loop = int(image.info.get("loop", 0) or 0)
    clean: list[Image.Image] = []
    durations: list[int] = []
    for index in range(frames):
        image.seek(index)
        durations.append(int(image.info.get("duration", 0) or 0))
        frame = _upright(image, orientation, copy=True)
        _strip(frame, keep_transparency=True)
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
    return _Encoded(mime, clean[0].size, buffer.getbuffer())


def _webp_options(lossless: bool, limits: ValidationLimits) -> dict[str, Any]:
    if lossless:
        return {"lossless": True, "exact": True, "quality": WEBP_LOSSLESS_EFFORT, "method": WEBP_METHOD}
    return {"lossless": False, "quality": limits.jpeg_quality, "method": WEBP_METHOD}


def _upright(image: Image.Image, orientation: int, *, copy: bool = False) -> Image.Image:
    """Apply the EXIF orientation to the pixels (what ImageOps.exif_transpose does)."""
    method = _UPRIGHT.get(orientation)
    if method is not None:
        return image.transpose(method)
    return image.copy() if copy else image


def _strip(image: Image.Image, *, keep_transparency: bool = False) -> None:
    """Encoders copy parts of `info` (a JPEG comment, a PNG ICC profile); keep none of it."""
    transparency = image.info.get("transparency") if keep_transparency else None
    image.info = {} if transparency is None else {"transparency": transparency}


def _to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """Stored pixels are sRGB and carry no profile (as imgproxy does): vision models and most
    viewers ignore ICC profiles, and a profile is metadata like any other. A profile that cannot
    be used is ignored, as browsers do."""
    if not icc_profile or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if image.mode != "CMYK" and ImageCms.getProfileDescription(profile).strip().startswith("sRGB"):
            return image
        out_mode = "RGB" if image.mode == "CMYK" else image.mode
        transform = ImageCms.buildTransform(profile, _srgb(), image.mode, out_mode)
        if out_mode == image.mode:
            ImageCms.applyTransform(image, transform, inPlace=True)
            return image
        converted = ImageCms.applyTransform(image, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image
    return converted if converted is not None else image


def _webp_is_lossless(stream: IO[bytes]) -> bool:
    """Whether the first image bitstream is VP8L; Pillow does not report it and re-encoding a
    lossless WebP lossily would lose what the uploader chose."""
    stream.seek(12)
    for _ in range(64):
        header = stream.read(8)
        if len(header) < 8:
            return False
        fourcc, size = header[:4], int.from_bytes(header[4:], "little")
        if fourcc == b"VP8L":
            return True
        if fourcc in (b"VP8 ", b"ALPH"):
            return False
        if fourcc == b"ANMF":
            stream.seek(16, io.SEEK_CUR)  # the frame header; the frame's own chunks follow
            continue
        stream.seek(size + (size & 1), io.SEEK_CUR)
    return False


# ---- output --------------------------------------------------------------------------------


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    while block := stream.read(COPY_BLOCK_BYTES):
        yield block


def _write_durably(destination: Path, chunks: Iterable[bytes | memoryview]) -> tuple[str, int, float]:
    """Write, flush and fsync; returns (sha256 hex, size, seconds spent hashing).

    A failed write removes the partial file, so a rejection or an error leaves nothing behind.
    """
    digest = hashlib.sha256()
    size = 0
    hashing = 0.0
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, OUTPUT_FILE_MODE)
    try:
        out = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        destination.unlink()
        raise
    try:
        with out:
            for chunk in chunks:
                started = time.perf_counter()
                digest.update(chunk)
                hashing += time.perf_counter() - started
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            destination.unlink()
        raise
    return digest.hexdigest(), size, hashing
