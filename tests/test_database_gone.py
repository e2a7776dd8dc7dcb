"""A test PostgreSQL that dies mid-run stops the run with one line naming it (issue 20: a data
directory pruned by another pytest run gave 319 errors, one per test that followed)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

pytest_plugins = ["pytester"]

INNER_CONFTEST = """
from tests.conftest import (  # noqa: F401 - pytest finds fixtures and hooks by name
    database_factory,
    database_url,
    postgres_admin_url,
    pytest_runtest_makereport,
)
"""

INNER_TESTS = """
import os
import signal

import psutil
import psycopg


def test_the_database_works(database_url):
    psycopg.connect(database_url).close()


def test_the_server_dies(postgres_admin_url):
    with psycopg.connect(postgres_admin_url) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        postmaster = psutil.Process(backend).parent()
    postmaster.send_signal(signal.SIGKILL)
    postmaster.wait(10)


def test_needs_the_database_1(database_url):
    pass


def test_needs_the_database_2(database_url):
    pass


def test_needs_the_database_3(database_url):
    pass
"""


@pytest.mark.slow
# "1": one pytest-xdist worker, as make test runs them (the stop must reach the controller).
@pytest.mark.parametrize("workers", ["0", "1"], ids=["one-process", "xdist"])
def test_a_dead_test_server_stops_the_run_with_one_line(
    workers: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)  # the embedded server, as make test runs it
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-n", workers, timeout=120)
    output = result.stdout.str()
    gone = [line for line in output.splitlines() if "Interrupted: the test PostgreSQL at" in line]
    assert len(gone) == 1, output
    assert "Interrupted: the test PostgreSQL at postgresql://" in gone[0], gone
    assert "(the embedded server) is gone: " in gone[0], gone
    assert result.ret == pytest.ExitCode.INTERRUPTED, output
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2, output
    assert outcomes.get("errors") == 1, "only the first test after the death ran"
