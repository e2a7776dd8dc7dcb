"""The one reading of a list endpoint's `limit` and `cursor` (common/http/paging.py), as a table."""

from __future__ import annotations

import pytest

from common.errors import BadRequest
from common.http.paging import CURSOR_NOT_ISSUED, PageParams, page_params

LIMIT_RULE = "limit must be a whole number from 1 to 100"


@pytest.mark.parametrize(
    "raw",
    [
        "²",  # str.isdigit() says yes, int() says no
        "①",  # likewise
        "٣",  # an Arabic-Indic three: int() accepts it
        "５",  # a fullwidth five: int() accepts it
        "",
        " 5",
        "5 ",
        "5\n",
        "+5",
        "-1",
        "0",
        "000",
        "101",
        "0100",  # more digits than the maximum has
        "9" * 5000,  # refused before int() converts it
        "1.0",
        "1e2",
        "0x10",
        "1_0",
        "abc",
    ],
)
def test_bad_limits_are_400(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        page_params({"limit": raw}, default=20, maximum=100)
    assert (caught.value.status, caught.value.code, caught.value.message) == (400, "bad_request", LIMIT_RULE)


@pytest.mark.parametrize(
    ("raw", "limit"),
    [("1", 1), ("7", 7), ("05", 5), ("050", 50), ("99", 99), ("100", 100)],
)
def test_good_limits_are_their_value(raw: str, limit: int) -> None:
    assert page_params({"limit": raw}, default=20, maximum=100) == PageParams(limit, None)


def test_an_absent_limit_is_the_endpoints_default() -> None:
    assert page_params({}, default=20, maximum=100) == PageParams(20, None)
    assert page_params({"cursor": "abc"}, default=50, maximum=100) == PageParams(50, "abc")


def test_the_range_is_the_endpoints() -> None:
    assert page_params({"limit": "1000"}, default=50, maximum=1000).limit == 1000
    with pytest.raises(BadRequest, match=r"^limit must be a whole number from 1 to 10$"):
        page_params({"limit": "11"}, default=5, maximum=10)


def test_an_empty_cursor_is_400_and_any_other_is_passed_on() -> None:
    with pytest.raises(BadRequest) as caught:
        page_params({"cursor": ""}, default=20, maximum=100)
    assert (caught.value.code, caught.value.message) == ("bad_request", CURSOR_NOT_ISSUED)
    assert page_params({"limit": "3", "cursor": "opaque"}, default=20, maximum=100) == PageParams(3, "opaque")


def test_page_params_are_frozen() -> None:
    with pytest.raises(AttributeError):
        page_params({}, default=20, maximum=100).limit = 5  # type: ignore[misc]
