"""Which Ollama backend answers an ask: a pure decision over a snapshot, so every rule is unit-tested.

The rules, in order (docs/operations.md, "Several Ollama servers"):

1. Affinity: a conversation's later turns go to the backend that served its last turn (its prompt
   cache is there) while that backend is a candidate (healthy, has the model) and not overloaded.
2. Otherwise a backend where the model is loaded (/api/ps) is preferred, unless it is overloaded:
   a cold load costs seconds, but a queue behind one busy GPU costs more.
3. Among equals, the fewest streams in flight; ties rotate with `turn`, so sequential asks on an
   idle fleet spread out instead of all landing on the first backend.

Overloaded: more streams in flight than 1.5 x the least busy candidate's, plus 1. The slack of 1
keeps a conversation in place while the fleet is nearly idle (1 stream against 0 is not a reason
to lose the prompt cache); the factor lets it move once its backend carries clearly more than its
share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OVERLOAD_FACTOR = 1.5
OVERLOAD_SLACK = 1

# The `decision` label of vision_gateway_routing_decisions_total (failover is counted by the fleet).
DECISIONS = ("affinity_kept", "loaded_preferred", "least_loaded", "failover")


@dataclass(frozen=True, slots=True)
class Option:
    """One candidate backend as routing sees it."""

    label: str
    loaded: bool  # the model is in this backend's memory (/api/ps)
    in_flight: int  # streams this replica has open to it


@dataclass(frozen=True, slots=True)
class Route:
    order: tuple[str, ...]  # the chosen backend first, then the ones to fail over to, best first
    decision: str  # why the first one: affinity_kept, loaded_preferred or least_loaded


def overloaded(in_flight: int, least: int) -> bool:
    return in_flight > OVERLOAD_FACTOR * least + OVERLOAD_SLACK


def route(options: Sequence[Option], *, affinity: str | None = None, turn: int = 0) -> Route:
    """Order `options` (the healthy backends that have the model, in configured order) for one ask."""
    if not options:
        raise ValueError("routing needs at least one candidate")
    least = min(option.in_flight for option in options)
    count = len(options)

    def rank(indexed: tuple[int, Option]) -> tuple[bool, int, int]:
        index, option = indexed
        warm = option.loaded and not overloaded(option.in_flight, least)
        return (not warm, option.in_flight, (index - turn) % count)

    ranked = [option for _, option in sorted(enumerate(options), key=rank)]
    kept = next((o for o in options if o.label == affinity and not overloaded(o.in_flight, least)), None)
    if kept is not None:
        rest = tuple(o.label for o in ranked if o is not kept)
        return Route((kept.label, *rest), "affinity_kept")
    first = ranked[0]
    preferred = first.loaded and any(not o.loaded for o in options)
    return Route(tuple(o.label for o in ranked), "loaded_preferred" if preferred else "least_loaded")
