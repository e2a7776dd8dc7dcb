"""Tools that .ci/run installs (promtool, newman) skip with a reason locally but fail in CI when missing."""

from __future__ import annotations

import pytest

from tests.deploy import helpers


@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(helpers, "NODE_TOOLS_BIN", tmp_path)
    monkeypatch.setattr(helpers.sys, "executable", str(tmp_path / "python"))
    for name in ("PROMTOOL", "NEWMAN", "KUBECTL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("tool", ["promtool", "newman"])
@pytest.mark.usefixtures("no_tools")
def test_a_missing_ci_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tool: str) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=rf"{tool} not found .* in CI this is a failure"):
        helpers.find_tool(tool)


@pytest.mark.parametrize("ci", ["", "0", "false"])
@pytest.mark.usefixtures("no_tools")
def test_a_missing_tool_skips_locally_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        helpers.find_tool("promtool")


@pytest.mark.usefixtures("no_tools")
def test_other_tools_still_skip_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.skip.Exception, match="kubectl not found"):
        helpers.find_tool("kubectl")
