"""`.env.example` and docs/configuration.md, generated from both services' settings models.

    python -m cli.settings_docs          # rewrite both files
    python -m cli.settings_docs --check  # exit 1 if either is stale (tests/common/test_settings_docs.py)

The models' Field descriptions, defaults and limits are the single source; common/settings/docs.py
renders them. A variable a service reads but no group below lists fails the generator, so a new
setting cannot go undocumented.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.settings import docs
from common.settings.base import EnvSettings
from common.settings.shared import (
    CommonSettings,
    DatabaseSettings,
    PoolerSettings,
    PoolSettings,
    UploadClockSettings,
    UploadSettings,
)
from services.image_store.settings import BrowserSettings, ImageStoreSettings, StorageBackendSettings
from services.vision_gateway.settings import FallbackSettings, FleetSettings, GatewaySettings, ImageCountSettings

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python -m cli.settings_docs"
# Documentation order; each group contributes the fields it declares itself.
GROUPS: tuple[type[EnvSettings], ...] = (
    DatabaseSettings,
    PoolerSettings,
    PoolSettings,
    CommonSettings,
    UploadSettings,
    UploadClockSettings,
    ImageStoreSettings,
    StorageBackendSettings,
    BrowserSettings,
    GatewaySettings,
    FallbackSettings,
    FleetSettings,
    ImageCountSettings,
)
SERVICES: tuple[type[EnvSettings], ...] = (ImageStoreSettings, GatewaySettings)


def _groups() -> tuple[type[EnvSettings], ...]:
    missing = docs.undocumented(GROUPS, SERVICES)
    if missing:
        raise SystemExit(f"add the group declaring {sorted(missing)} to GROUPS in {__file__}")
    return GROUPS


def render_env_example() -> str:
    return docs.render_env_example(_groups(), COMMAND)


def render_markdown() -> str:
    return docs.render_markdown(_groups(), COMMAND)


OUTPUTS = {ROOT / ".env.example": render_env_example, ROOT / "docs" / "configuration.md": render_markdown}


def main(argv: list[str]) -> int:
    return docs.write_or_check(OUTPUTS, ROOT, argv, COMMAND)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
