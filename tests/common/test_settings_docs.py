"""`.env.example` and docs/configuration.md are generated from the settings models; the committed
files must be what the generator writes (run `python -m cli.settings_docs` after a change)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cli.settings_docs import render_env_example, render_markdown
from services.image_store.settings import ImageStoreSettings
from services.vision_gateway.settings import GatewaySettings
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("path", "render"), [(".env.example", render_env_example), ("docs/configuration.md", render_markdown)]
)
def test_committed_file_is_the_generated_one(path: str, render) -> None:
    assert (ROOT / path).read_text() == render(), f"stale {path}: run python -m cli.settings_docs"


def test_every_variable_has_a_description_and_a_row() -> None:
    table = render_markdown()
    for model in (ImageStoreSettings, GatewaySettings):
        for field in model.model_fields.values():
            assert field.description, f"{field.validation_alias} has no description"
            assert re.search(rf"^\| `{field.validation_alias}` \|", table, flags=re.MULTILINE)


def test_the_table_shows_defaults_limits_and_what_is_required() -> None:
    lines = render_markdown().splitlines()
    rows = {line.split(" | ")[0].strip("| `"): line for line in lines if line.startswith("| `")}
    assert "| **required** |" in rows["IMAGE_SIGNING_KEYS"]
    assert "| `8081` | 1 to 65535 |" in rows["IMAGE_STORE_PORT"]
    assert "| `reject` | reject \\| fallback_model \\| text_only |" in rows["VISION_FALLBACK_POLICY"]
    assert "| `./migrations` |" in rows["MIGRATIONS_PATH"], "the documented default, not this checkout's path"


def test_check_mode_fails_on_a_stale_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import settings_docs as docs

    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    monkeypatch.setattr(docs, "OUTPUTS", {stale: docs.render_markdown})
    assert docs.main(["--check"]) == 1
    assert stale.read_text() == "old\n", "--check writes nothing"
    assert docs.main([]) == 0
    assert stale.read_text() == render_markdown()
    assert docs.main(["--check"]) == 0


def test_the_generator_runs_as_a_module_and_finds_the_repository_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.settings_docs", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
