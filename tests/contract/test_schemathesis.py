"""schemathesis (seeded, bounded, every default check) against both live services finds nothing.

What it proves: each documented operation answers only documented statuses and bodies (SSE events
included, through the `contentSchema` of each `data:` line), accepts what the document calls valid,
refuses what it calls invalid (400/404/...), and the links (upload -> meta/bytes/link/delete,
stream -> stop/history) lead to resources that exist. The settings (model names drawn from the
emulator, the few rules a schema cannot state) are in tests/contract/schemathesis.toml.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.contract.conftest import Finished, LiveStack, run_tool

HERE = Path(__file__).resolve().parent
SEED = 20261127
MAX_EXAMPLES = 10
BUDGET_SECONDS = 90.0


async def schemathesis(document: str, base_url: str, token: str, report: Path) -> Finished:
    return await run_tool(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        str(ROOT / "docs" / "openapi" / document),
        "--url",
        base_url,
        "--header",
        f"Authorization: Bearer {token}",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-shrink",  # a failure is reported as found: shrinking a stateful run can take minutes
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        cwd=report.parent,  # schemathesis and Hypothesis leave their working files there
        timeout=BUDGET_SECONDS,
        env={"COLUMNS": "200"},
    )


def summary(output: str) -> str:
    """The part of schemathesis' report worth reading in a failed assertion."""
    start = output.find("FAILURES")
    return output[start if start >= 0 else 0 :][-12000:]


@pytest.mark.slow
async def test_schemathesis_finds_nothing_in_either_document(live_stack: LiveStack, tmp_path: Path) -> None:
    started = time.monotonic()
    store, gateway = await asyncio.gather(
        schemathesis("image-store.yaml", live_stack.store_url, live_stack.token, tmp_path / "store.xml"),
        schemathesis("vision-gateway.yaml", live_stack.gateway_url, live_stack.token, tmp_path / "gateway.xml"),
    )
    elapsed = time.monotonic() - started
    print(f"schemathesis: both documents in {elapsed:.1f}s")
    for name, result in (("image-store", store), ("vision-gateway", gateway)):
        assert result.returncode == 0, f"{name}:\n{summary(result.output)}"
        # Every phase ran and the links were followed: a run that tested nothing must not pass.
        for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
            assert re.search(rf"✅\s+{phase}", result.output), f"{name}: {phase} did not pass:\n{result.output[-3000:]}"
        covered = re.search(r"API Links:\s+(\d+) covered", result.output)
        assert covered is not None
        assert int(covered.group(1)) >= 2, f"{name}: links not exercised:\n{result.output[-3000:]}"
    # The emulator really answered streams, so SSE events were validated against the document.
    assert live_stack.emulator.chats, "no stream reached the model"
    assert elapsed < BUDGET_SECONDS
