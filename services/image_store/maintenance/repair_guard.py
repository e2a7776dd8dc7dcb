"""When an integrity repair must not run: storage that looks wrong rather than damaged.

A repair removes the rows (and images) of blobs whose bytes are missing. A mistyped
IMAGE_STORAGE_PATH, a volume that is not mounted, or the wrong S3_BUCKET / S3_PREFIX makes every
blob look missing, and repairing would delete every image. So a repair is refused, changing
nothing, when the storage location does not exist, lists no blobs at all while the database
records some, or misses more than a set share of them; `--force` overrides. Kept free of heavy
imports: the `retina` command's parser reads the default from here.
"""

from __future__ import annotations

from typing import Final

DEFAULT_MAX_MISSING_PERCENT: Final = 10.0


def suspicion(
    where: str, *, location_exists: bool, recorded: int, listed: int, missing: int, max_missing_percent: float
) -> str | None:
    """Why these counts more likely mean the wrong storage than lost blobs, or None.

    `where` names the storage (see BlobStore.describe); `recorded` blobs are in the database,
    `listed` objects in the storage, and `missing` of the recorded ones are not there.
    """
    if not location_exists:
        return f"{where} does not exist: a mistyped path or a volume that is not mounted?"
    if recorded and listed == 0:
        return (
            f"{where} holds no blobs at all while the database records {recorded}: "
            "the wrong location, or a volume or bucket that is not the store's?"
        )
    if recorded and missing * 100 > max_missing_percent * recorded:
        return (
            f"{missing} of the {recorded} blobs the database records ({missing * 100 / recorded:.1f}%) are missing "
            f"from {where}, more than --max-missing-percent {max_missing_percent:g}"
        )
    return None
