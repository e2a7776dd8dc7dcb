"""Migrations on real PostgreSQL: stairway (apply, roll back, re-apply each) and upgrade paths."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from yoyo import get_backend, read_migrations

from common.migrations import apply_migrations, migration_ids, rollback_last, yoyo_url
from tests.conftest import MIGRATIONS, ROOT

pytestmark = pytest.mark.postgres_paths  # .ci/run runs these on both kinds of test server


def schema_snapshot(url: str) -> list[tuple[str, str, str, str, str]]:
    """Tables, columns, types, defaults and nullability: enough to see a lossy rollback."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            SELECT table_name, column_name, data_type, coalesce(column_default, ''), is_nullable
              FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name NOT LIKE '%yoyo%'
             ORDER BY 1, 2
            """
        ).fetchall()
        indexes = conn.execute(
            "SELECT tablename, indexname, indexdef, '', '' FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename NOT LIKE '%yoyo%' ORDER BY 1, 2"
        ).fetchall()
        triggers = conn.execute(
            "SELECT event_object_table, trigger_name, event_manipulation, action_statement, action_timing"
            " FROM information_schema.triggers WHERE trigger_schema = 'public' ORDER BY 1, 2, 3"
        ).fetchall()
    return [*rows, *indexes, *triggers]


def test_every_migration_has_a_rollback() -> None:
    ids = migration_ids(MIGRATIONS)
    assert ids == [
        "0001_chat_schema",
        "0002_image_support",
        "0003_message_streams",
        "0004_stream_recovery",
        "0005_image_change_notify",
        "0006_message_thinking",
        "0007_blob_deletions",
    ]
    for mid in ids:
        assert (MIGRATIONS / f"{mid}.rollback.sql").is_file(), mid


def test_stairway_apply_rollback_reapply(empty_database_url: str) -> None:
    backend = get_backend(yoyo_url(empty_database_url))
    try:
        migrations = read_migrations(str(MIGRATIONS))
        snapshots_before: list[list[tuple[str, str, str, str, str]]] = []
        for migration in migrations:
            snapshots_before.append(schema_snapshot(empty_database_url))
            with backend.lock():
                backend.apply_one(migration)
                applied = schema_snapshot(empty_database_url)
                assert applied != snapshots_before[-1], f"{migration.id} changed nothing"
                backend.rollback_one(migration)
                assert schema_snapshot(empty_database_url) == snapshots_before[-1], (
                    f"{migration.id} rollback did not restore the schema"
                )
                backend.apply_one(migration)
                assert schema_snapshot(empty_database_url) == applied
    finally:
        backend.connection.close()


def test_upgrade_keeps_existing_messages(empty_database_url: str) -> None:
    """A chat database from before image support migrates without losing a message."""
    backend = get_backend(yoyo_url(empty_database_url))
    try:
        migrations = read_migrations(str(MIGRATIONS))
        with backend.lock():
            backend.apply_one(next(m for m in migrations if m.id == "0001_chat_schema"))
    finally:
        backend.connection.close()

    conversation = uuid.uuid4()
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("INSERT INTO conversations (id, owner_id) VALUES (%s, 'alice')", (conversation,))
        for index in range(500):
            conn.execute(
                "INSERT INTO messages (conversation_id, role, content, model, status) "
                "VALUES (%s, %s, %s, 'llava', 'complete')",
                (conversation, "user" if index % 2 == 0 else "assistant", f"message {index}"),
            )
        before = conn.execute("SELECT id, content FROM messages ORDER BY id").fetchall()

    result = apply_migrations(empty_database_url, MIGRATIONS)
    assert result.applied == [
        "0002_image_support",
        "0003_message_streams",
        "0004_stream_recovery",
        "0005_image_change_notify",
        "0006_message_thinking",
        "0007_blob_deletions",
    ]

    with psycopg.connect(empty_database_url) as conn:
        after = conn.execute("SELECT id, content FROM messages ORDER BY id").fetchall()
        flags = conn.execute("SELECT DISTINCT has_images FROM messages").fetchall()
    assert after == before
    assert flags == [(False,)], "existing messages are backfilled as having no images"


def test_rollback_after_images_exist_then_reapply(empty_database_url: str) -> None:
    apply_migrations(empty_database_url, MIGRATIONS)
    with psycopg.connect(empty_database_url) as conn:
        conversation = conn.execute("INSERT INTO conversations (owner_id) VALUES ('alice') RETURNING id").fetchone()[0]
        message = conn.execute(
            "INSERT INTO messages (conversation_id, role, content, has_images) "
            "VALUES (%s, 'user', 'look', true) RETURNING id",
            (conversation,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO image_blobs (sha256, size_bytes, mime_type, width, height, storage_key) "
            "VALUES (%s, 10, 'image/png', 1, 1, 'ab/cd/x')",
            ("ab" * 32,),
        )
        conn.execute(
            "INSERT INTO images (owner_id, blob_sha256, message_id) VALUES ('alice', %s, %s)",
            ("ab" * 32, message),
        )
    assert rollback_last(empty_database_url, MIGRATIONS, count=6).rolled_back == [
        "0007_blob_deletions",
        "0006_message_thinking",
        "0005_image_change_notify",
        "0004_stream_recovery",
        "0003_message_streams",
        "0002_image_support",
    ]
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('images')").fetchone() == (None,)
    assert apply_migrations(empty_database_url, MIGRATIONS).applied == [
        "0002_image_support",
        "0003_message_streams",
        "0004_stream_recovery",
        "0005_image_change_notify",
        "0006_message_thinking",
        "0007_blob_deletions",
    ]
    assert apply_migrations(empty_database_url, MIGRATIONS).applied == [], "idempotent at head"


def test_stream_recovery_rolls_back_with_interrupted_rows(empty_database_url: str) -> None:
    """`interrupted` does not exist before 0004: rolling back turns such rows into `error`, losing no text."""
    apply_migrations(empty_database_url, MIGRATIONS)
    with psycopg.connect(empty_database_url) as conn:
        conversation = conn.execute("INSERT INTO conversations (owner_id) VALUES ('alice') RETURNING id").fetchone()[0]
        conn.execute(
            "INSERT INTO messages (conversation_id, role, content, status, progress_at) "
            "VALUES (%s, 'assistant', 'half an answer', 'interrupted', now())",
            (conversation,),
        )
    assert rollback_last(empty_database_url, MIGRATIONS, count=4).rolled_back == [
        "0007_blob_deletions",
        "0006_message_thinking",
        "0005_image_change_notify",
        "0004_stream_recovery",
    ]
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT status, content FROM messages").fetchall() == [("error", "half an answer")]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE messages SET status = 'interrupted'")
    assert apply_migrations(empty_database_url, MIGRATIONS).applied == [
        "0004_stream_recovery",
        "0005_image_change_notify",
        "0006_message_thinking",
        "0007_blob_deletions",
    ]


def test_thinking_rolls_back_without_touching_the_answers(empty_database_url: str) -> None:
    apply_migrations(empty_database_url, MIGRATIONS)
    with psycopg.connect(empty_database_url) as conn:
        conversation = conn.execute("INSERT INTO conversations (owner_id) VALUES ('alice') RETURNING id").fetchone()[0]
        conn.execute(
            "INSERT INTO messages (conversation_id, role, content, thinking, status) "
            "VALUES (%s, 'assistant', 'Four.', 'Two and two.', 'complete')",
            (conversation,),
        )
    assert rollback_last(empty_database_url, MIGRATIONS, count=2).rolled_back == [
        "0007_blob_deletions",
        "0006_message_thinking",
    ]
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT content, status FROM messages").fetchall() == [("Four.", "complete")]
    assert apply_migrations(empty_database_url, MIGRATIONS).applied == ["0006_message_thinking", "0007_blob_deletions"]
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT content, thinking FROM messages").fetchall() == [("Four.", None)]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_migrate_and_rollback(empty_database_url: str) -> None:
    env = {"DATABASE_URL": empty_database_url}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (
        "applied: 0001_chat_schema, 0002_image_support, 0003_message_streams, 0004_stream_recovery,"
        " 0005_image_change_notify, 0006_message_thinking, 0007_blob_deletions"
    )
    again = run_cli("migrate", env=env)
    assert again.stdout.strip() == "applied: nothing (already at head)"
    back = run_cli("migrate", "--rollback", env=env)
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == "rolled back: 0007_blob_deletions"
    back = run_cli("migrate", "--rollback", env=env)
    assert back.stdout.strip() == "rolled back: 0006_message_thinking"
    back = run_cli("migrate", "--rollback", env=env)
    assert back.stdout.strip() == "rolled back: 0005_image_change_notify"
    back = run_cli("migrate", "--rollback", env=env)
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == "rolled back: 0004_stream_recovery"
    with psycopg.connect(empty_database_url) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'messages'"
            ).fetchall()
        }
        assert "progress_at" not in columns
        assert "thinking" not in columns
        assert "stream_id" in columns
        assert conn.execute("SELECT to_regclass('messages')").fetchone() != (None,)


@pytest.mark.parametrize(
    ("database_url", "message"),
    [
        ("", "retina migrate: DATABASE_URL is required"),
        ("mysql://u:hunter2@h/db", "retina migrate: DATABASE_URL must be a postgresql:// URL"),
    ],
)
def test_cli_migrate_refuses_bad_database_url(database_url: str, message: str) -> None:
    result = run_cli("migrate", env={"DATABASE_URL": database_url})
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert "hunter2" not in result.stderr


def test_cli_migrate_refuses_a_missing_migrations_directory(empty_database_url: str, tmp_path) -> None:
    missing = tmp_path / "nowhere"
    result = run_cli("migrate", env={"DATABASE_URL": empty_database_url, "MIGRATIONS_PATH": str(missing)})
    assert result.returncode == 2
    assert result.stderr.strip() == f"retina migrate: MIGRATIONS_PATH ({missing}) is not a directory"
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('messages')").fetchone() == (None,), "nothing was applied"
