"""The generated Postman collection runs under newman against live services, every assertion passing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.contract.conftest import LiveStack, run_tool
from tests.deploy.helpers import find_tool

COLLECTION = ROOT / "docs" / "retina.postman_collection.json"


@pytest.mark.slow
async def test_the_collection_runs_in_order_with_every_assertion_passing(live_stack: LiveStack, tmp_path: Path) -> None:
    newman = find_tool("newman")
    report = tmp_path / "newman.json"
    result = await run_tool(
        newman,
        "run",
        str(COLLECTION),
        "--working-dir",
        str(ROOT / "docs"),
        "--env-var",
        f"imageStoreUrl={live_stack.store_url}",
        "--env-var",
        f"gatewayUrl={live_stack.gateway_url}",
        "--env-var",
        f"serviceToken={live_stack.token}",
        "--bail",
        "--reporters",
        "cli,json",
        "--reporter-json-export",
        str(report),
        "--color",
        "off",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.output[-8000:]
    run = json.loads(report.read_text())["run"]
    stats = run["stats"]
    collection = json.loads(COLLECTION.read_text())
    requests = sum(len(folder["item"]) for folder in collection["item"])
    # Every request was sent, every test script ran, and nothing failed.
    assert stats["requests"] == {"total": requests, "pending": 0, "failed": 0}, stats
    assert stats["assertions"]["failed"] == 0, run["failures"]
    assert stats["assertions"]["total"] >= requests
    assert stats["testScripts"]["failed"] == 0, run["failures"]
    assert run["failures"] == []
    names = [execution["item"]["name"] for execution in run["executions"]]
    assert names[:3] == ["Upload a photo", "List my images", "Image record"]
    assert (
        names.index("Ask about the photo (SSE)")
        < names.index("Conversation history")
        < names.index("Stop the (finished) stream")
        < names.index("Image bytes with the signed URL (no token)")
        < names.index("Delete the photo")
    )
    assert live_stack.emulator.chats, "the ask request did not reach the model"
