"""Service-to-service auth: a bearer token from `SERVICE_TOKENS` plus the acting user's ID.

Several tokens are accepted at once so a token can be rotated without downtime.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from common.errors import BadRequest, Unauthorized

USER_ID_HEADER = "X-User-Id"
MAX_USER_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request acts for: the owner whose data it may see."""

    user_id: str


class ServiceAuth:
    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(token.encode() for token in tokens)

    def token_is_valid(self, presented: str) -> bool:
        try:
            candidate = presented.encode()
        except UnicodeEncodeError:
            # aiohttp hands over bytes that are not UTF-8 as lone surrogates; no token contains them.
            return False
        # Compare against every token so timing does not reveal which one nearly matched.
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens]
        return any(matches)

    def check_token(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not self.token_is_valid(token.strip()):
            raise Unauthorized(
                "a valid service token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="retina"'},
            )

    def caller(self, request: web.Request) -> Caller:
        """Authenticate the service and name the user it acts for."""
        self.check_token(request)
        return Caller(user_id=parse_user_id(request.headers.get(USER_ID_HEADER)))


def parse_user_id(raw: str | None) -> str:
    if raw is None or not raw.strip():
        raise BadRequest(f"the {USER_ID_HEADER} header is required")
    user_id = raw.strip()
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise BadRequest(f"{USER_ID_HEADER} must be at most {MAX_USER_ID_LENGTH} characters")
    if not user_id.isprintable():
        raise BadRequest(f"{USER_ID_HEADER} must not contain control characters")
    return user_id
