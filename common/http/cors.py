"""CORS for the routes browsers may call from another origin, via aiohttp-cors (aio-libs).

aiohttp-cors answers preflights (`OPTIONS`) and adds `Access-Control-Allow-Origin` /
`Access-Control-Expose-Headers` to responses for origins on the allow-list. It does not send
`Vary: Origin`, which the image-store needs: its responses are cacheable (`Cache-Control: private`),
and a copy cached for one origin (or for none) must never be reused for another. So this module
adds `Vary: Origin` to every response of a CORS-enabled route, allowed origin or not.

Credentials (cookies) are never allowed: callers authenticate with a bearer token or a signed URL,
both of which a page sends explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp_cors
from aiohttp import hdrs, web

from common.errors import Forbidden
from common.http.request_context import Handler

CORS_ROUTE_NAMES_KEY = web.AppKey("cors_route_names", frozenset)

# Preflight answers may be cached by the browser this long (seconds).
PREFLIGHT_MAX_AGE = 600


def enable_cors(
    app: web.Application,
    origins: tuple[str, ...],
    resources: Iterable[web.AbstractResource],
    *,
    allow_methods: tuple[str, ...],
    allow_headers: tuple[str, ...],
    expose_headers: tuple[str, ...],
) -> None:
    """Allow `origins` to call `resources`; with no origins nothing changes (no CORS headers, no OPTIONS)."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        allow_headers=allow_headers,
        expose_headers=expose_headers,
        max_age=PREFLIGHT_MAX_AGE,
        allow_methods=allow_methods,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    names: set[str] = set()
    for resource in resources:
        cors.add(resource)
        if resource.name:
            names.add(resource.name)
    app[CORS_ROUTE_NAMES_KEY] = frozenset(names)
    app.on_response_prepare.append(_vary_on_origin)
    app.middlewares.append(_explain_refused_preflight)


@web.middleware
async def _explain_refused_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp-cors refuses a preflight with a bare 403 whose text says why; keep the why in our JSON
    error (the request's own origin or header names are all it can contain)."""
    try:
        return await handler(request)
    except web.HTTPForbidden as exc:
        if request.method == hdrs.METH_OPTIONS and exc.text and exc.text.startswith("CORS preflight"):
            raise Forbidden(exc.text[:300]) from exc
        raise


async def _vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the answer of a CORS-enabled route depends on the Origin header. (config_dict:
    the request may be in a sub-application, such as the gateway's /v1.)"""
    if request.match_info.route.resource is None:
        return
    if request.match_info.route.resource.name not in request.config_dict[CORS_ROUTE_NAMES_KEY]:
        return
    vary = response.headers.get(hdrs.VARY, "")
    if "origin" not in (item.strip().lower() for item in vary.split(",")):
        response.headers[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"
