"""The generated Postman collection runs under newman against live services, every assertion passing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli.env_file import local_env_path, write_env_file
from cli.local_stack import remember_gateway_url
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


@pytest.mark.slow
async def test_make_newman_runs_the_collection_against_the_stack_local_env_names(
    live_stack: LiveStack, tmp_path: Path
) -> None:
    """The README's `make newman`, as written: the services' URLs (any ports) and the token come from the
    local.env `retina up` writes, through the same functions, so no variable has to be typed by hand."""
    newman = find_tool("newman")
    make = find_tool("make")
    state = tmp_path / "var"
    write_env_file(local_env_path(state), {"SERVICE_TOKENS": f"{live_stack.token},another"})
    remember_gateway_url(state, live_stack.gateway_url, live_stack.store_url)
    # The installed tools: the newman found above, in a node-tools directory make considers up to date.
    node_tools = tmp_path / "node"
    (node_tools / "node_modules" / ".bin").mkdir(parents=True)
    (node_tools / "node_modules" / ".bin" / "newman").symlink_to(newman)
    (node_tools / ".installed").touch()
    env = {"RETINA_STATE_DIR": str(state), "RETINA_TOKEN": ""}  # an empty RETINA_TOKEN: local.env's token
    result = await run_tool(
        make,
        "-s",
        "newman",
        f"NODE_TOOLS={node_tools}",
        "NEWMAN_ARGS=--bail --color off",
        cwd=ROOT,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.output[-8000:]
    assert f"image-store {live_stack.store_url}, gateway {live_stack.gateway_url}" in result.output
    assert "AssertionError" not in result.output
    assert live_stack.emulator.chats, "the ask request did not reach the model"


async def test_make_newman_says_what_is_missing_without_a_stack(tmp_path: Path) -> None:
    make = find_tool("make")
    node_tools = tmp_path / "node"
    (node_tools / "node_modules" / ".bin").mkdir(parents=True)
    (node_tools / "node_modules" / ".bin" / "newman").symlink_to("/bin/true")
    (node_tools / ".installed").touch()
    env = {"RETINA_STATE_DIR": str(tmp_path / "nothing")}
    result = await run_tool(make, "-s", "newman", f"NODE_TOOLS={node_tools}", cwd=ROOT, timeout=60, env=env)
    assert result.returncode != 0
    assert "start the stack with make up first" in result.output


def test_make_newman_sets_every_variable_the_collection_has_no_working_default_for() -> None:
    """The URLs (their defaults are 8081/8082) and the token (a placeholder) are passed, under the
    collection's own names; the models can be."""
    names = {v["key"] for v in json.loads(COLLECTION.read_text())["variable"]}
    recipe = (ROOT / "Makefile").read_text().split("\nnewman:", 1)[1].split("\n\n", 1)[0]
    passed = set(re.findall(r'--env-var "(\w+)=', recipe))
    assert passed == {"imageStoreUrl", "gatewayUrl", "serviceToken", "model", "thinkingModel"}
    assert passed <= names, passed - names
