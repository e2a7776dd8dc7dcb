"""media_type(): aiohttp's `request.content_type`, without caching the parsed header on the request."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from common.http.media_type import media_type

HEADERS = [
    None,
    "",
    "application/json",
    " Application/JSON ; charset=utf-8",
    "multipart/form-data; boundary=----x",
    "text",
    "a/b/c",
]


@pytest.mark.parametrize("raw", HEADERS)
def test_the_same_answer_as_aiohttps_content_type(raw: str | None) -> None:
    request = make_mocked_request("POST", "/", headers={} if raw is None else {"Content-Type": raw})
    assert media_type(request) == make_mocked_request("POST", "/", headers=request.headers).content_type


def test_the_request_object_is_left_as_it_was() -> None:
    request = make_mocked_request("POST", "/", headers={"Content-Type": "application/json"})
    attributes = set(vars(request))
    assert media_type(request) == "application/json"
    assert set(vars(request)) == attributes
