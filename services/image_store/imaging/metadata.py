"""EXIF orientation, ICC profiles and the other metadata a stored image must not carry.

Stored pixels are upright and sRGB, and the stored file has no EXIF/XMP/ICC/comments/text
chunks: orientation and colour are applied to the pixels, then the metadata is dropped.
"""

from __future__ import annotations

import io
from typing import Final

from PIL import ExifTags, Image, ImageCms

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

_srgb_profile: ImageCms.ImageCmsProfile | None = None


def srgb() -> ImageCms.ImageCmsProfile:
    """The sRGB profile, built once per worker process."""
    global _srgb_profile
    if _srgb_profile is None:
        _srgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _srgb_profile


def exif_orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation; an unreadable EXIF block counts as upright, as in browsers."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - metadata is discarded anyway; a broken block must not reject
        return 1


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def upright(image: Image.Image, orientation: int, *, copy: bool = False) -> Image.Image:
    """Apply the EXIF orientation to the pixels (what ImageOps.exif_transpose does)."""
    method = _UPRIGHT.get(orientation)
    if method is not None:
        return image.transpose(method)
    return image.copy() if copy else image


def strip(image: Image.Image, *, keep_transparency: bool = False) -> None:
    """Encoders copy parts of `info` (a JPEG comment, a PNG ICC profile); keep none of it."""
    transparency = image.info.get("transparency") if keep_transparency else None
    image.info = {} if transparency is None else {"transparency": transparency}


def to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
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
        transform = ImageCms.buildTransform(profile, srgb(), image.mode, out_mode)
        if out_mode == image.mode:
            ImageCms.applyTransform(image, transform, inPlace=True)
            return image
        converted = ImageCms.applyTransform(image, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image
    return converted if converted is not None else image
