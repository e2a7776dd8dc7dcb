"""`retina ask` against the whole stack (store, gateway, Ollama emulator, PostgreSQL), run on real
pseudo-terminals, with Ctrl-C typed into the terminal."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

from cli.env_file import write_env_file
from tests.conftest import ROOT, SERVICE_TOKEN
from tests.image_store.conftest import photo
from tests.vision_gateway.ask_process import AskProcess, ask_env, run_piped
from tests.vision_gateway.conftest import Stack, closed_port_url

CONVERSATION = re.compile(r"conversation ([0-9a-f-]{36})")
LONG_REPLY = " ".join(f"word{i}" for i in range(200))


def gateway_url(stack: Stack) -> str:
    return str(stack.gateway.make_url("")).rstrip("/")


def env_for(stack: Stack, tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = {"RETINA_GATEWAY_URL": gateway_url(stack), "RETINA_TOKEN": SERVICE_TOKEN, **extra}
    return ask_env(tmp_path / "state", **settings)


def conversation_of(stderr: str) -> uuid.UUID:
    found = CONVERSATION.findall(stderr)
    assert found, stderr
    return uuid.UUID(found[-1])


async def test_answer_streams_to_the_terminal_with_the_settings_retina_up_wrote(
    stack: Stack, tmp_path: Path, db: asyncpg.Connection
) -> None:
    """Nothing in the environment but RETINA_STATE_DIR: token and gateway URL come from local.env."""
    state = tmp_path / "state"
    write_env_file(
        state / "local.env",
        {
            "SERVICE_TOKENS": f"{SERVICE_TOKEN},other-token-0123456789",
            "IMAGE_SIGNING_KEYS": "x" * 40,
            "RETINA_GATEWAY_URL": gateway_url(stack),
        },
    )
    image = tmp_path / "cat.png"
    image.write_bytes(photo("chelsea.png"))
    child = AskProcess(["What is this?", "-i", str(image), "-m", "llava"], ask_env(state, RETINA_USER_ID="bob"))
    try:
        assert await child.wait() == 0, child.describe()
    finally:
        child.close()
    reply = stack.emulator.find("llava").reply  # type: ignore[union-attr]
    assert child.out.text == reply + "\n", "stdout holds the answer and nothing else"
    assert "uploading cat.png [" in child.err.text, child.err.text
    assert "100%" in child.err.text, child.err.text
    conversation = conversation_of(child.err.text)

    sent = stack.emulator.chats[-1]
    assert [image.size for image in sent.images] == [(451, 300)], "the photo reached the model"
    rows = await db.fetch(
        "SELECT m.role, m.content, m.status, m.has_images, c.owner_id FROM messages m"
        " JOIN conversations c ON c.id = m.conversation_id WHERE c.id = $1 ORDER BY m.created_at, m.role DESC",
        conversation,
    )
    assert [(r["role"], r["status"], r["has_images"], r["owner_id"]) for r in rows] == [
        ("user", "complete", True, "bob"),
        ("assistant", "complete", False, "bob"),
    ]
    assert rows[0]["content"] == "What is this?"
    assert rows[1]["content"] == reply
    stored = await db.fetchval(
        "SELECT b.sha256 FROM images i JOIN image_blobs b ON b.sha256 = i.blob_sha256"
        " JOIN messages m ON m.id = i.message_id WHERE m.conversation_id = $1",
        conversation,
    )
    assert stored is not None, "the uploaded image is linked to the user's message"


async def test_ctrl_c_stops_the_stream_and_reports_what_was_kept(
    stack: Stack, tmp_path: Path, db: asyncpg.Connection
) -> None:
    stack.emulator.find("llava").reply = LONG_REPLY  # type: ignore[union-attr]
    stack.emulator.chunk_delay = 0.05  # 200 tokens: ten seconds, so the Ctrl-C lands mid-answer
    child = AskProcess(["Count for me", "-m", "llava"], env_for(stack, tmp_path))
    try:
        await child.wait_for("word5 ")
        child.ctrl_c()
        code = await child.wait()
    finally:
        child.close()
    assert code == 130, child.describe()
    match = re.search(r"stopped; (\d+) characters kept in conversation ([0-9a-f-]{36})", child.err.text)
    assert match, child.describe()
    kept, conversation = int(match[1]), uuid.UUID(match[2])
    row = await db.fetchrow(
        "SELECT content, status, error FROM messages WHERE conversation_id = $1 AND role = 'assistant'", conversation
    )
    assert row is not None
    # The stop endpoint (not a dropped connection, which is stored with error "client disconnected").
    assert (row["status"], row["error"]) == ("stopped", None)
    assert len(row["content"]) == kept
    assert 0 < kept < len(LONG_REPLY)
    assert LONG_REPLY.startswith(row["content"])
    assert row["content"] in child.out.text, "what was shown is what was kept"
    record = stack.emulator.chats[-1]
    await stack.emulator.wait_until(lambda: record.finished, what="the upstream request to end")
    assert (record.cancelled, record.completed) == (True, False), "generation stopped upstream"


async def test_continuing_a_conversation_without_a_terminal(stack: Stack, tmp_path: Path) -> None:
    """Redirected output: no progress bar, no escape codes; --conversation adds a turn to the same one."""
    image = tmp_path / "rocket.jpg"
    image.write_bytes(photo("rocket.jpg"))
    env = env_for(stack, tmp_path)
    code, out, err = await run_piped(["What is this?", "-i", str(image), "-m", "llava"], env)
    assert code == 0, err
    first = conversation_of(err)
    assert "uploading" not in err
    assert "\x1b" not in out + err
    code, out, err = await run_piped(["And the colour?", "-m", "llava", "--conversation", str(first)], env)
    assert code == 0, err
    assert conversation_of(err) == first
    history = stack.emulator.chats[-1].body["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert len(history[0].get("images", [])) == 1, "the earlier image is re-sent as history"


async def test_a_refused_request_prints_the_code_and_exits_4(stack: Stack, tmp_path: Path) -> None:
    code, out, err = await run_piped(["What is this?", "-m", "no-such-model"], env_for(stack, tmp_path))
    assert code == 4, err
    assert err.startswith("retina ask: 404 unknown_model: "), err
    assert out == ""
    assert stack.emulator.chats == []


async def test_a_wrong_token_exits_3(stack: Stack, tmp_path: Path) -> None:
    env = env_for(stack, tmp_path, RETINA_TOKEN="wrong-token-0123456789")
    code, _, err = await run_piped(["What is this?", "-m", "llava"], env)
    assert code == 3, err
    assert "401 unauthorized" in err


async def test_a_missing_token_exits_3_and_says_where_to_put_one(tmp_path: Path) -> None:
    code, out, err = await run_piped(["What is this?", "-m", "llava"], ask_env(tmp_path / "empty"))
    assert code == 3, err
    assert f"looked for `retina up`'s local.env at {tmp_path / 'empty' / 'local.env'} (from RETINA_STATE_DIR)" in err
    assert "which does not exist" in err
    assert "set RETINA_STATE_DIR" in err
    assert "RETINA_TOKEN" in err
    assert out == ""


async def test_outside_the_checkout_it_says_where_it_looked_and_which_variable_to_set(tmp_path: Path) -> None:
    """No RETINA_STATE_DIR, run from a directory with no ./var: the token from the banner is set, the URL is
    only the default guess; when nothing answers there, the line says where local.env was looked for."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = ask_env(tmp_path, RETINA_TOKEN=SERVICE_TOKEN, VISION_GATEWAY_PORT=str(closed_port_url().rsplit(":", 1)[1]))
    del env["RETINA_STATE_DIR"]
    code, _, err = await run_piped(["What is this?", "-m", "llava"], env, cwd=elsewhere)
    assert code == 5, err
    assert f"local.env at {elsewhere / 'var' / 'local.env'} (./var of the current directory)" in err, err
    assert "set RETINA_GATEWAY_URL or RETINA_STATE_DIR" in err

    del env["RETINA_TOKEN"]
    code, _, err = await run_piped(["What is this?", "-m", "llava"], env, cwd=elsewhere)
    assert code == 3, err
    assert f"local.env at {elsewhere / 'var' / 'local.env'} (./var of the current directory)" in err, err


async def test_an_unreadable_image_is_a_usage_error(tmp_path: Path) -> None:
    env = ask_env(tmp_path, RETINA_TOKEN=SERVICE_TOKEN, RETINA_GATEWAY_URL=closed_port_url())
    code, _out, err = await run_piped(["What is this?", "-i", str(tmp_path / "nope.jpg"), "-m", "llava"], env)
    assert code == 2, err
    assert "cannot read image" in err
    assert "nope.jpg" in err
    assert "cannot reach" not in err, "refused before any request"


async def test_an_unreachable_gateway_exits_5(tmp_path: Path) -> None:
    url = closed_port_url()
    env = ask_env(tmp_path, RETINA_TOKEN=SERVICE_TOKEN, RETINA_GATEWAY_URL=url)
    code, _, err = await run_piped(["What is this?", "-m", "llava"], env)
    assert code == 5, err
    assert f"cannot reach the gateway at {url}" in err


async def test_a_reader_that_leaves_the_pipe_ends_the_ask_quietly(stack: Stack, tmp_path: Path) -> None:
    """`retina ask … | head -c 20`: no traceback; the gateway sees the disconnect and stops generating."""
    stack.emulator.find("llava").reply = LONG_REPLY  # type: ignore[union-attr]
    stack.emulator.chunk_delay = 0.02
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "ask", "Count", "-m", "llava",
        cwd=ROOT, env=env_for(stack, tmp_path), stdout=write_end, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(write_end)
    first = await asyncio.to_thread(os.read, read_end, 11)
    os.close(read_end)  # as `head` exits
    assert first.startswith(b"word0")
    assert process.stderr is not None
    err = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
    assert await process.wait() == 1, err
    assert "Traceback" not in err
    record = await stack.emulator.wait_for_disconnect()
    assert not record.completed


async def test_think_and_format_with_an_image_reach_the_model_and_come_back(
    stack: Stack, tmp_path: Path, db: asyncpg.Connection
) -> None:
    """--think and --format ride in the multipart form beside the image; the gateway's parsing of those
    text parts is what this proves (the unit tests of the CLI only check what it sends)."""
    import json

    import jsonschema

    llava = stack.emulator.find("llava")
    assert llava is not None
    llava.thinking = True  # a vision model that can also think
    schema = {
        "type": "object",
        "properties": {"animal": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
        "required": ["animal", "count"],
    }
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    image = tmp_path / "cat.png"
    image.write_bytes(photo("chelsea.png"))
    args = ["How many animals?", "-i", str(image), "-m", "llava", "--think", "high", "--format", str(schema_file)]
    code, out, err = await run_piped(args, env_for(stack, tmp_path))
    assert code == 0, err

    answer = json.loads(out)
    jsonschema.validate(answer, schema)
    assert llava.thinking_reply in err, "piped thinking goes to stderr, keeping stdout parseable"
    sent = stack.emulator.chats[-1].body
    assert sent["think"] == "high"
    assert sent["format"] == schema
    assert len(sent["messages"][-1]["images"]) == 1
    stored = await db.fetchrow(
        "SELECT content, thinking, status FROM messages WHERE conversation_id = $1 AND role = 'assistant'",
        conversation_of(err),
    )
    assert stored is not None
    assert (json.loads(stored["content"]), stored["thinking"], stored["status"]) == (
        answer,
        llava.thinking_reply,
        "complete",
    )
