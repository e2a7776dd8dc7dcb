"""Where the gateway is and who is asking: flags, then the environment, then `retina up`'s local.env.

Variables (the first three are `retina ask`'s own; the rest are the names the services already use):
  RETINA_GATEWAY_URL  the gateway's base URL (`retina up` writes it to local.env)
  RETINA_TOKEN        the bearer token (the name `retina up`'s banner and the README export)
  RETINA_USER_ID      the acting user, sent as X-User-Id (default `alice`, the user of the banner's
                      examples and the demo page, so conversations started there can be continued)
  SERVICE_TOKENS      the services' own token list; its first token is used when RETINA_TOKEN is unset
  VISION_GATEWAY_PORT the gateway's port when no URL is known (default 8082)
  RETINA_STATE_DIR    where local.env lives (default ./var, as for `retina up`)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cli.env_file import local_env_path, read_env_file, state_dir
from services.vision_gateway.settings import GatewaySettings

DEFAULT_USER = "alice"
DEFAULT_GATEWAY_PORT = str(GatewaySettings.model_fields["port"].default)  # the gateway's own default


class MissingToken(Exception):
    """No token anywhere: nothing can be asked (exit code 3)."""


@dataclass(frozen=True, slots=True)
class AskConfig:
    gateway_url: str
    token: str
    user_id: str
    # When the URL is only the default guess: where local.env was looked for and what to set instead.
    url_hint: str = ""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-User-Id": self.user_id}

    def url(self, path: str) -> str:
        return self.gateway_url.rstrip("/") + path


def _first_token(tokens: str | None) -> str | None:
    first = (tokens or "").split(",")[0].strip()
    return first or None


def load_config(
    environ: Mapping[str, str] = os.environ,
    *,
    gateway_url: str | None = None,
    user_id: str | None = None,
) -> AskConfig:
    local_env = local_env_path(state_dir(environ))
    local = read_env_file(local_env)
    token = (
        environ.get("RETINA_TOKEN", "").strip()
        or _first_token(environ.get("SERVICE_TOKENS"))
        or _first_token(local.get("SERVICE_TOKENS"))
    )
    if not token:
        looked = _where_we_looked(local_env, environ, found=local_env.exists(), missing="token")
        raise MissingToken(
            f"no token: {looked}; run `retina ask` in the directory where `retina up` runs, set "
            "RETINA_STATE_DIR to that directory's var/, or set RETINA_TOKEN (or SERVICE_TOKENS) and RETINA_GATEWAY_URL"
        )
    port = environ.get("VISION_GATEWAY_PORT", "").strip() or DEFAULT_GATEWAY_PORT
    url = (
        gateway_url
        or environ.get("RETINA_GATEWAY_URL", "").strip()
        or local.get("RETINA_GATEWAY_URL")
        or f"http://127.0.0.1:{port}"
    )
    user = user_id or environ.get("RETINA_USER_ID", "").strip() or DEFAULT_USER
    guessed = not (gateway_url or environ.get("RETINA_GATEWAY_URL", "").strip() or local.get("RETINA_GATEWAY_URL"))
    hint = ""
    if guessed:
        looked = _where_we_looked(local_env, environ, found=local_env.exists(), missing="gateway URL")
        hint = f"that URL is only the default: {looked}; set RETINA_GATEWAY_URL or RETINA_STATE_DIR"
    return AskConfig(gateway_url=url, token=token, user_id=user, url_hint=hint)


def _where_we_looked(local_env: Path, environ: Mapping[str, str], *, found: bool, missing: str) -> str:
    origin = "from RETINA_STATE_DIR" if environ.get("RETINA_STATE_DIR") else "./var of the current directory"
    state = f"has no {missing}" if found else "does not exist"
    return f"looked for `retina up`'s local.env at {local_env} ({origin}), which {state}"
