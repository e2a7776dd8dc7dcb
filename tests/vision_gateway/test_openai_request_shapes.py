"""A message `role` of the wrong JSON type is a 400 naming the field, not a 500.

schemathesis found `{"role": {}}` answering 500 internal_error: the role was looked up in a dict
before its type was checked, and a JSON object or array is unhashable.
"""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import BadRequest
from services.vision_gateway.openai_compat.mapping import map_completion as parse_completion_request


@pytest.mark.parametrize("role", [{}, [], ["user"], {"user": 1}, 1, None, True])
def test_a_role_that_is_not_a_string_is_refused_with_its_param(role: Any) -> None:
    body = {"model": "llava", "messages": [{"role": role, "content": "hi"}]}
    with pytest.raises(BadRequest) as refused:
        parse_completion_request(body, max_images=4)
    assert refused.value.status == 400
    assert refused.value.code == "bad_request"
    assert refused.value.message == "role must be one of system, developer, user, assistant"
    assert refused.value.details == {"param": "messages[0].role"}


def test_a_string_role_still_parses() -> None:
    parsed = parse_completion_request({"model": "llava", "messages": [{"role": "user", "content": "hi"}]}, max_images=4)
    assert parsed.last.role == "user"
    assert parsed.last.text == "hi"
