"""What the operator lets one request ask of the Ollama server it shares with everyone else.

`keep_alive` decides how long a model stays resident (a negative value pins it for ever, keeping
other models out of GPU memory) and `options.num_ctx` how much memory its context takes. Both are
legitimate per-request wishes, so the request rules (ollama_request_fields) accept every value
Ollama accepts; these caps are the operator's settings on top, off unless configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from services.vision_gateway.chat.ollama_request_fields import InvalidField

# One "<number><unit>" of a Go duration already checked by ollama_request_fields.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
NO_KEEP_ALIVE_CAP = -1
NO_NUM_CTX_CAP = 0


def keep_alive_seconds(value: int | float | str) -> float:
    """A checked keep_alive (seconds, or a Go duration such as "1h30m" or "-1m") in seconds."""
    if not isinstance(value, str):
        return float(value)
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value))
    return -seconds if value.startswith("-") else seconds


@dataclass(frozen=True, slots=True)
class OperatorCaps:
    max_keep_alive_seconds: int = NO_KEEP_ALIVE_CAP  # VISION_MAX_KEEP_ALIVE_SECONDS
    max_num_ctx: int = NO_NUM_CTX_CAP  # VISION_MAX_NUM_CTX

    def check(self, keep_alive: int | float | str | None, options: dict[str, Any] | None) -> None:
        """400 bad_request naming the field when a request asks for more than this server allows."""
        cap = self.max_keep_alive_seconds
        if keep_alive is not None and cap != NO_KEEP_ALIVE_CAP:
            seconds = keep_alive_seconds(keep_alive)
            if seconds < 0:
                raise InvalidField("keep_alive", f"must not keep the model loaded for ever here (at most {cap} s)")
            if seconds > cap:
                raise InvalidField("keep_alive", f"must be at most {cap} s on this server")
        num_ctx = (options or {}).get("num_ctx")
        if self.max_num_ctx != NO_NUM_CTX_CAP and num_ctx is not None and num_ctx > self.max_num_ctx:
            raise InvalidField("options.num_ctx", f"must be at most {self.max_num_ctx} on this server")
