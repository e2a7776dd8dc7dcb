"""Start-up configuration: defaults, every problem reported at once, secrets never echoed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.settings import SettingsError
from services.image_store.settings import ImageStoreSettings, load_image_store_settings
from services.vision_gateway.settings import GatewaySettings, load_gateway_settings
from tests.conftest import ROOT, SERVICE_TOKEN, SIGNING_KEY


def minimal_env(tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": "postgresql://retina:hunter2-secret@db.internal:5432/retina",
        "SERVICE_TOKENS": SERVICE_TOKEN,
        "IMAGE_SIGNING_KEYS": SIGNING_KEY,
        "IMAGE_STORAGE_PATH": str(tmp_path / "images"),
    }


def test_defaults_follow_the_design(tmp_path: Path) -> None:
    store = load_image_store_settings(minimal_env(tmp_path))
    assert store.port == 8081
    assert store.upload_enabled is True
    assert store.allowed_types == {"image/png", "image/jpeg", "image/webp"}
    assert store.serve_endpoint == "/api/images"
    assert store.max_size_bytes == 10 * 1024 * 1024, "the original plan's 10 MB"
    assert store.storage_path.is_dir(), "the storage directory is created at start-up"

    gateway = load_gateway_settings(minimal_env(tmp_path))
    assert gateway.port == 8082
    assert gateway.model_detection_enabled is True
    assert gateway.fallback_policy == "reject"
    assert gateway.image_store_token.get_secret_value() == SERVICE_TOKEN, "defaults to the first service token"
    assert gateway.max_size_bytes == 10 * 1024 * 1024
    assert gateway.demo_page_enabled is False, "the demo page is off unless asked for"
    assert gateway.cors_allowed_origins == ()


def test_storage_path_defaults_to_the_plans_uploads_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = minimal_env(tmp_path)
    del env["IMAGE_STORAGE_PATH"]
    store = load_image_store_settings(env)
    assert store.storage_path == Path("uploads/images")
    assert (tmp_path / "uploads" / "images").is_dir()


def test_every_problem_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    unreadable = tmp_path / "file-not-dir"
    unreadable.write_text("x")
    env = {
        **minimal_env(tmp_path),
        "DATABASE_URL": "mysql://root:topsecret@db/retina",
        "IMAGE_MAX_SIZE_MB": "-5",
        "IMAGE_ALLOWED_TYPES": "image/png,image/svg+xml,application/x-msdownload",
        "IMAGE_STORAGE_PATH": str(unreadable),
        "IMAGE_UPLOAD_ENABLED": "perhaps",
        "IMAGE_STORE_PORT": "eighty",
    }
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings(env)
    problems = caught.value.problems
    joined = "\n".join(problems)
    assert len(problems) == 7, joined
    assert any(p.startswith("DATABASE_URL must be a postgresql:// URL") for p in problems)
    assert "IMAGE_MAX_SIZE_MB must be at least 1, got -5" in problems
    assert any("image/svg+xml is never allowed" in p for p in problems)
    assert any("unknown type 'application/x-msdownload'" in p for p in problems)
    assert any(p.startswith(f"IMAGE_STORAGE_PATH ({unreadable}) is not a writable directory") for p in problems)
    assert "IMAGE_UPLOAD_ENABLED must be true or false, got 'perhaps'" in problems
    assert "IMAGE_STORE_PORT must be a whole number, got 'eighty'" in problems
    assert "topsecret" not in joined, "secrets are never printed"
    assert all("\n" not in p for p in problems)


def test_missing_required_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings({"IMAGE_STORAGE_PATH": str(tmp_path)})
    names = sorted(p.split(" ")[0] for p in caught.value.problems)
    assert names == ["DATABASE_URL", "IMAGE_SIGNING_KEYS", "SERVICE_TOKENS"]


def test_gateway_rejects_bad_urls_and_inconsistent_limits(tmp_path: Path) -> None:
    env = {
        **minimal_env(tmp_path),
        "OLLAMA_URL": "ftp://ollama",
        "IMAGE_STORE_URL": "not a url",
        "VISION_FALLBACK_POLICY": "fallback_model",
        "VISION_MAX_IMAGES_PER_MESSAGE": "10",
        "VISION_MAX_IMAGES_PER_REQUEST": "2",
    }
    with pytest.raises(SettingsError) as caught:
        load_gateway_settings(env)
    problems = caught.value.problems
    assert "OLLAMA_URL must be an http:// or https:// URL with a host, got 'ftp://ollama'" in problems
    assert any(p.startswith("IMAGE_STORE_URL must be an http://") for p in problems)
    assert "VISION_FALLBACK_MODEL is required when VISION_FALLBACK_POLICY=fallback_model" in problems
    assert any(p.startswith("VISION_MAX_IMAGES_PER_REQUEST (2) must be at least") for p in problems)


def test_short_secrets_are_refused(tmp_path: Path) -> None:
    env = {**minimal_env(tmp_path), "SERVICE_TOKENS": "short", "IMAGE_SIGNING_KEYS": "also-short"}
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings(env)
    assert "SERVICE_TOKENS: every token must be at least 16 characters long" in caught.value.problems
    assert "IMAGE_SIGNING_KEYS: key 1 must be at least 32 characters long" in caught.value.problems


def test_env_example_lists_every_variable_with_a_default_and_meaning(tmp_path: Path) -> None:
    """`.env.example` is the operator's reference; it must not drift from the code."""
    models = (ImageStoreSettings, GatewaySettings)
    consulted = {str(field.validation_alias) for model in models for field in model.model_fields.values()}

    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert "DATABASE_URL" in consulted
    assert consulted - documented == set(), "variables missing from .env.example"
    assert documented - consulted == set(), ".env.example lists variables nothing reads"
    for plan_variable in (
        "IMAGE_UPLOAD_ENABLED",
        "IMAGE_STORAGE_PATH",
        "IMAGE_MAX_SIZE_MB",
        "IMAGE_RETENTION_DAYS",
        "IMAGE_ALLOWED_TYPES",
        "VISION_MODEL_DETECTION_ENABLED",
        "IMAGE_SERVE_ENDPOINT",
    ):
        assert plan_variable in documented


def test_upload_clocks_default_to_30_and_300_seconds_on_both_services(tmp_path: Path) -> None:
    store = load_image_store_settings(minimal_env(tmp_path))
    gateway = load_gateway_settings(minimal_env(tmp_path))
    for settings in (store, gateway):
        assert settings.upload_idle_timeout_seconds == 30.0
        assert settings.upload_deadline_seconds == 300.0


def test_an_idle_clock_longer_than_the_deadline_is_refused(tmp_path: Path) -> None:
    env = {**minimal_env(tmp_path), "IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS": "60", "IMAGE_UPLOAD_DEADLINE_SECONDS": "10"}
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings(env)
    assert caught.value.problems == [
        "IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS (60) must not exceed IMAGE_UPLOAD_DEADLINE_SECONDS (10)"
    ]


def test_cross_field_rules_are_reported_next_to_unrelated_field_errors(tmp_path: Path) -> None:
    """Pydantic skips a model's rules once a field fails; each rule's own group is checked too."""
    env = {
        **minimal_env(tmp_path),
        "IMAGE_STORE_PORT": "eighty",
        "IMAGE_MAX_SIZE_MB": "0",
        "DB_POOL_MIN_SIZE": "9",
        "DB_POOL_MAX_SIZE": "3",
        "IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS": "60",
        "IMAGE_UPLOAD_DEADLINE_SECONDS": "10",
        "IMAGE_SERVE_MODE": "redirect",
    }
    with pytest.raises(SettingsError) as caught:
        load_image_store_settings(env)
    problems = caught.value.problems
    assert problems[:2] == [
        "IMAGE_MAX_SIZE_MB must be at least 1, got 0",
        "IMAGE_STORE_PORT must be a whole number, got 'eighty'",
    ], "field problems first, in the order of the models' fields"
    assert sorted(problems[2:]) == [
        "DB_POOL_MIN_SIZE (9) must not exceed DB_POOL_MAX_SIZE (3)",
        "IMAGE_SERVE_MODE=redirect needs IMAGE_STORAGE_BACKEND=s3 (a file has no URL to redirect to)",
        "IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS (60) must not exceed IMAGE_UPLOAD_DEADLINE_SECONDS (10)",
    ]


def test_every_rule_is_reported_when_only_rules_are_broken(tmp_path: Path) -> None:
    env = {
        **minimal_env(tmp_path),
        "VISION_FALLBACK_POLICY": "fallback_model",
        "VISION_MAX_IMAGES_PER_MESSAGE": "10",
        "VISION_MAX_IMAGES_PER_REQUEST": "2",
        "DB_POOL_MIN_SIZE": "9",
        "DB_POOL_MAX_SIZE": "3",
    }
    with pytest.raises(SettingsError) as caught:
        load_gateway_settings(env)
    assert sorted(caught.value.problems) == [
        "DB_POOL_MIN_SIZE (9) must not exceed DB_POOL_MAX_SIZE (3)",
        "VISION_FALLBACK_MODEL is required when VISION_FALLBACK_POLICY=fallback_model",
        "VISION_MAX_IMAGES_PER_REQUEST (2) must be at least VISION_MAX_IMAGES_PER_MESSAGE (10)",
    ]


def test_secrets_never_appear_in_settings_or_their_errors(tmp_path: Path) -> None:
    env = {**minimal_env(tmp_path), "IMAGE_STORE_TOKEN": "store-token-" + "s" * 20}
    secrets = ["hunter2-secret", SERVICE_TOKEN, SIGNING_KEY, env["IMAGE_STORE_TOKEN"]]
    gateway = load_gateway_settings(env)
    store = load_image_store_settings(env)
    shown = repr(gateway) + str(gateway) + repr(store) + str(store) + repr(store.model_dump())
    assert not [secret for secret in secrets if secret in shown]
    assert gateway.image_store_token.get_secret_value() == env["IMAGE_STORE_TOKEN"]
    assert store.signing_keys.get_secret_value() == (SIGNING_KEY.encode(),)

    broken = {**env, "SERVICE_TOKENS": "short-" + SERVICE_TOKEN[:9], "IMAGE_SIGNING_KEYS": "k" * 31}
    for loader in (load_gateway_settings, load_image_store_settings):
        with pytest.raises(SettingsError) as caught:
            loader({**broken, "DATABASE_URL": "mysql://root:hunter2-secret@db/x"})
        text = str(caught.value) + repr(caught.value.__context__) + repr(caught.value.__cause__)
        assert not [secret for secret in [*secrets, broken["SERVICE_TOKENS"], "k" * 31] if secret in text]
        assert caught.value.__context__ is None, "pydantic's error (which quotes inputs) is not chained"


def test_values_are_trimmed_and_blank_means_unset(tmp_path: Path) -> None:
    env = {
        **minimal_env(tmp_path),
        "IMAGE_STORE_PORT": " 9001 ",
        "LOG_LEVEL": "  ",
        "IMAGE_ALLOWED_TYPES": "IMAGE/PNG, ",
    }
    store = load_image_store_settings(env)
    assert (store.port, store.log_level, store.allowed_types) == (9001, "info", {"image/png"})


def test_ollama_urls_list_the_backends_and_ollama_url_is_a_list_of_one(tmp_path: Path) -> None:
    env = {**minimal_env(tmp_path), "OLLAMA_URL": "http://solo:11434"}
    assert load_gateway_settings(env).ollama_urls == ("http://solo:11434",)
    fleet = load_gateway_settings({**env, "OLLAMA_URLS": " http://gpu-a:11434/, http://gpu-b:11434 ,"})
    assert fleet.ollama_urls == ("http://gpu-a:11434", "http://gpu-b:11434"), "OLLAMA_URLS wins, trimmed"
    assert (fleet.ollama_refresh_seconds, fleet.ollama_backend_cooldown_seconds) == (10.0, 5.0)
    for value, problem in (
        (
            "http://gpu-a:11434,ftp://gpu-b",
            "OLLAMA_URLS must be an http:// or https:// URL with a host, got 'ftp://gpu-b'",
        ),
        ("http://gpu-a:11434,http://gpu-a:11434/", "OLLAMA_URLS names one URL twice"),
        ("http://gpu-a:11434/one,http://gpu-a:11434/two", "OLLAMA_URLS names two servers at the same host and port"),
        ("http://gpu-a,http://gpu-a:80/v", "OLLAMA_URLS names two servers at the same host and port"),
        (
            "http://gpu-a,ftp://ops:hunter2@gpu-b",
            "OLLAMA_URLS must be an http:// or https:// URL with a host (value not shown: it holds credentials)",
        ),
        (
            "ops:hunter2@gpu-b:11434",
            "OLLAMA_URLS must be an http:// or https:// URL with a host (value not shown: it holds credentials)",
        ),
        ("https://gpu-a:443,https://GPU-A", "OLLAMA_URLS names two servers at the same host and port"),
    ):
        with pytest.raises(SettingsError) as caught:
            load_gateway_settings({**env, "OLLAMA_URLS": value})
        assert problem in caught.value.problems
        assert "hunter2" not in str(caught.value.problems)
