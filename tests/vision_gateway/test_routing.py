"""The fleet's routing rules as a pure function: every branch without a backend in sight."""

from __future__ import annotations

import pytest

from services.vision_gateway.fleet.backend import backend_label, model_key
from services.vision_gateway.fleet.routing import Option, overloaded, route


def test_the_loaded_backend_is_preferred() -> None:
    chosen = route([Option("a:1", False, 0), Option("b:1", True, 0), Option("c:1", False, 0)])
    assert chosen.order[0] == "b:1"
    assert chosen.decision == "loaded_preferred"


def test_among_equals_the_fewest_streams_win() -> None:
    chosen = route([Option("a:1", True, 3), Option("b:1", True, 1), Option("c:1", True, 2)])
    assert chosen.order == ("b:1", "c:1", "a:1")
    assert chosen.decision == "least_loaded"


def test_ties_rotate_with_the_turn() -> None:
    options = [Option("a:1", False, 0), Option("b:1", False, 0), Option("c:1", False, 0)]
    firsts = [route(options, turn=turn).order[0] for turn in range(6)]
    assert firsts == ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]


def test_an_overloaded_loaded_backend_loses_its_preference() -> None:
    # 3 > 1.5 * 0 + 1: a cold load elsewhere beats queueing behind three streams.
    chosen = route([Option("a:1", True, 3), Option("b:1", False, 0)])
    assert chosen.order == ("b:1", "a:1")
    assert chosen.decision == "least_loaded"
    # 1 is not overloaded against 0: the model stays where it is loaded.
    assert route([Option("a:1", True, 1), Option("b:1", False, 0)]).order[0] == "a:1"


def test_affinity_is_kept_over_load_and_loading_until_overloaded() -> None:
    options = [Option("a:1", True, 0), Option("b:1", False, 1), Option("c:1", True, 0)]
    kept = route(options, affinity="b:1")
    assert kept.order == ("b:1", "a:1", "c:1")
    assert kept.decision == "affinity_kept"
    busy = [Option("a:1", True, 2), Option("b:1", True, 4), Option("c:1", True, 2)]
    assert route(busy, affinity="b:1").decision == "affinity_kept"  # 4 <= 1.5 * 2 + 1
    busier = [Option("a:1", True, 2), Option("b:1", True, 5), Option("c:1", True, 2)]
    moved = route(busier, affinity="b:1")  # 5 > 4: the conversation moves
    assert moved.order[0] != "b:1"
    assert moved.decision == "least_loaded"


def test_affinity_to_a_backend_that_is_no_candidate_is_ignored() -> None:
    chosen = route([Option("a:1", False, 0), Option("b:1", False, 0)], affinity="gone:1")
    assert chosen.order == ("a:1", "b:1")
    assert chosen.decision == "least_loaded"


@pytest.mark.parametrize(("in_flight", "least", "expected"), [(1, 0, False), (2, 0, True), (4, 2, False), (5, 2, True)])
def test_overloaded_is_above_one_and_a_half_times_the_least_plus_one(
    in_flight: int, least: int, expected: bool
) -> None:
    assert overloaded(in_flight, least) is expected


def test_routing_needs_a_candidate() -> None:
    with pytest.raises(ValueError, match="at least one candidate"):
        route([])


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("http://user:secret@gpu-a:11434", "gpu-a:11434"),
        ("https://ollama.example.com/base", "ollama.example.com:443"),
        ("http://10.0.0.7", "10.0.0.7:80"),
        ("http://[::1]:11434", "[::1]:11434"),
    ],
)
def test_backend_labels_are_host_and_port_without_credentials(url: str, label: str) -> None:
    assert backend_label(url) == label


@pytest.mark.parametrize(
    "name", ["llava", "LLaVA", "llava:latest", "library/llava", "registry.ollama.ai/library/llava"]
)
def test_model_names_resolve_as_ollama_resolves_them(name: str) -> None:
    assert model_key(name) == "llava:latest"
