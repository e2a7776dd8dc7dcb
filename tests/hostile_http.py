"""Hostile HTTP input for property-based tests: raw requests over a real socket, and the strategies.

Hypothesis drives a synchronous test function, so the requests go through `http.client` from a
worker thread while the aiohttp server under test keeps running on the event loop. `http.client`
sends header bytes exactly as given (no re-encoding), which is what a hostile client does.
"""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

# Bytes a header value may carry on the wire (RFC 9110 field-vchar, obs-text, SP, HTAB). Other
# bytes are refused by aiohttp's HTTP parser before any application code runs.
FIELD_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    method: str = "GET"

    def error(self) -> dict[str, Any]:
        """The JSON error body; fails the test when the answer is not one."""
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.headers)
        if self.method == "HEAD":
            return {"code": "(HEAD: no body)", "message": ""}
        body = json.loads(self.body)
        assert set(body) == {"error"}, body
        error = body["error"]
        assert re.fullmatch(r"[a-z][a-z_]*", error["code"]), body
        assert isinstance(error["message"], str), body
        assert error["message"], body
        return error


def request(
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, bytes | str]] | None = None,
    *,
    body: bytes | None = None,
) -> Answer:
    """One request on a fresh connection; `target` must already be percent-encoded."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers or []:
            connection.putheader(name, field_bytes(value))
        connection.endheaders(body)
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body, method)
    finally:
        connection.close()


def field_bytes(value: str | bytes) -> bytes:
    """What can travel as a header value: UTF-8 for text, minus bytes the HTTP parser refuses."""
    raw = value.encode() if isinstance(value, str) else value
    return bytes(b for b in raw if b in FIELD_BYTES).strip(b" \t")


def assert_sane(answer: Answer, allowed: set[int], codes: set[str] | None = None) -> None:
    """Never a 5xx; every 4xx is a JSON error with a stable code."""
    assert answer.status < 500, (answer.status, answer.body[:300])
    assert answer.status in allowed, (answer.status, answer.body[:300])
    if answer.status >= 400:
        error = answer.error()
        if codes is not None and answer.method != "HEAD":
            assert error["code"] in codes, error


def encode(value: str | bytes) -> str:
    """Percent-encode text (as UTF-8) or raw bytes (possibly invalid UTF-8) for a URL."""
    return quote(value, safe="")


# ---- strategies ------------------------------------------------------------------------------

unicode_digits = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=8)
huge_numbers = st.integers(min_value=1, max_value=6_000).map(lambda n: "9" * n)
numbers = st.one_of(st.integers(min_value=-(10**30), max_value=10**30).map(str), huge_numbers)

query_values = st.one_of(
    st.text(max_size=64),
    unicode_digits,
    numbers,
    st.binary(max_size=64),
    st.just(""),
)

# For the parameters next to the one under test: together they must fit aiohttp's 8190-byte line.
short_values = st.one_of(st.text(max_size=32), unicode_digits, st.binary(max_size=32))

header_values = st.one_of(st.binary(max_size=200), st.text(max_size=100), unicode_digits, numbers)

path_segments = st.one_of(
    st.text(min_size=1, max_size=80),
    st.binary(min_size=1, max_size=80),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: f"{u}\n"),  # `$` in a regex also matches before a final newline
    st.text("0123456789abcdef-", min_size=36, max_size=36),
)


def entity_tag(real: str) -> st.SearchStrategy[str]:
    """Entity tags near the real one: itself, weak, unquoted, other, junk."""
    return st.one_of(
        st.just(f'"{real}"'),
        st.just(f'W/"{real}"'),
        st.just(real),
        st.just("*"),
        st.text(max_size=20).map(lambda t: f'"{t}"'),
        st.text(max_size=20),
    )


def tag_lists(real: str) -> st.SearchStrategy[str]:
    return st.lists(entity_tag(real), min_size=1, max_size=4).map(", ".join)


def range_headers(size: int) -> st.SearchStrategy[str]:
    ends = st.one_of(st.integers(min_value=0, max_value=size * 2).map(str), st.just(""), numbers, unicode_digits)
    unit = st.sampled_from(["bytes", "Bytes", "items", "bytes ", ""])
    one = st.builds(lambda a, b: f"{a}-{b}", ends, ends)
    return st.one_of(
        st.builds(lambda u, ranges: f"{u}={','.join(ranges)}", unit, st.lists(one, min_size=1, max_size=3)),
        st.text(max_size=40),
    )
