"""Settings for browsers: CORS allow-lists, Cross-Origin-Resource-Policy, public base URL, demo page."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import SettingsError
from services.image_store.settings import load_image_store_settings
from services.vision_gateway.settings import load_gateway_settings
from tests.common.test_settings import minimal_env


def test_origins_are_normalised_and_deduplicated(tmp_path: Path) -> None:
    env = {
        **minimal_env(tmp_path),
        "IMAGE_CORS_ALLOWED_ORIGINS": " https://Chat.Example.com/ ,http://127.0.0.1:5173,https://chat.example.com",
        "GATEWAY_CORS_ALLOWED_ORIGINS": "http://localhost:3000",
    }
    store = load_image_store_settings(env)
    assert store.cors_allowed_origins == ("https://chat.example.com", "http://127.0.0.1:5173")
    assert load_gateway_settings(env).cors_allowed_origins == ("http://localhost:3000",)


@pytest.mark.parametrize("value", ["*", "chat.example.com", "https://chat.example.com/app", "ftp://x.test", "https://"])
def test_anything_but_an_origin_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings({**minimal_env(tmp_path), "IMAGE_CORS_ALLOWED_ORIGINS": value})
    [problem] = caught.value.problems
    assert problem.startswith(f"IMAGE_CORS_ALLOWED_ORIGINS: {value!r} is not an origin")


def test_resource_policy_defaults_follow_the_allow_list(tmp_path: Path) -> None:
    assert load_image_store_settings(minimal_env(tmp_path)).cross_origin_resource_policy == "same-site"
    with_origin = {**minimal_env(tmp_path), "IMAGE_CORS_ALLOWED_ORIGINS": "https://chat.example.com"}
    assert load_image_store_settings(with_origin).cross_origin_resource_policy == "cross-origin"
    empty = {**with_origin, "IMAGE_CROSS_ORIGIN_RESOURCE_POLICY": ""}
    assert load_image_store_settings(empty).cross_origin_resource_policy == "cross-origin", "empty = the default"
    explicit = {**with_origin, "IMAGE_CROSS_ORIGIN_RESOURCE_POLICY": "Same-Origin"}
    assert load_image_store_settings(explicit).cross_origin_resource_policy == "same-origin"
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings({**with_origin, "IMAGE_CROSS_ORIGIN_RESOURCE_POLICY": "anywhere"})
    assert caught.value.problems == [
        "IMAGE_CROSS_ORIGIN_RESOURCE_POLICY must be one of same-origin, same-site, cross-origin, got 'anywhere'"
    ]


def test_public_base_url(tmp_path: Path) -> None:
    env = {**minimal_env(tmp_path), "IMAGE_PUBLIC_BASE_URL": "https://images.example.com/store/"}
    assert load_image_store_settings(env).public_base_url == "https://images.example.com/store"
    assert load_image_store_settings(minimal_env(tmp_path)).public_base_url == ""
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings({**env, "IMAGE_PUBLIC_BASE_URL": "images.example.com"})
    assert caught.value.problems == [
        "IMAGE_PUBLIC_BASE_URL must be an http:// or https:// URL with a host, got 'images.example.com'"
    ]


def test_demo_page_switch(tmp_path: Path) -> None:
    assert load_gateway_settings({**minimal_env(tmp_path), "DEMO_PAGE_ENABLED": "true"}).demo_page_enabled is True
    with pytest.raises(SettingsError):
        load_gateway_settings({**minimal_env(tmp_path), "DEMO_PAGE_ENABLED": "maybe"})
