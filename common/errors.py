"""The JSON error model shared by both services: `{"error": {"code", "message"}}`.

Services raise domain errors; handlers (or the error middleware) turn them into `ApiError`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An error with a stable snake_case code that clients can branch on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details or {}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def json_error(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    return web.json_response(error_body(code, message, **extra), status=status, headers=headers)
