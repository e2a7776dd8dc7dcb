"""The Dockerfile, linted in Python (no Docker engine or hadolint needed): stages, pinned bases,
non-root user, no remote ADD, libmagic, no secrets, and a build context that keeps what it copies."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from tests.deploy.helpers import DEPLOY, ROOT, env_example_variables, named, pod_spec, render

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    parsed: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), flags=re.IGNORECASE)
            assert match, line
            parsed.append(Stage(match.group(1), match.group(2) or ""))
        else:
            assert parsed, f"{keyword} before FROM"
            parsed[-1].instructions.append((keyword, " ".join(args.split())))
    return parsed


def test_multi_stage_build_on_pinned_slim_python() -> None:
    built = stages()
    assert [stage.name for stage in built] == ["builder", "runtime"]
    for stage in built:
        # python:3.11.<patch>-slim-<debian>: an exact release, never `latest` or a moving minor tag.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    assert built[0].base == built[1].base, "both stages on the same base"
    [install] = [cmd for cmd in built[0].all("RUN") if "pip install" in cmd]
    assert "-c requirements/constraints.txt ." in install


def test_runtime_stage() -> None:
    runtime = stages()[-1]
    [user] = runtime.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric USER, so runAsNonRoot can verify it"
    assert int(uid) == 10001
    # The pods run as the image's user.
    deployment = named(render("base"), "Deployment", "retina-image-store")
    assert pod_spec(deployment)["securityContext"]["runAsUser"] == int(uid)
    # USER comes after everything that needs root.
    keywords = [key for key, _ in runtime.instructions]
    assert keywords.index("USER") > max(i for i, key in enumerate(keywords) if key in ("RUN", "COPY"))

    [apt] = [cmd for cmd in runtime.all("RUN") if "apt-get install" in cmd]
    assert re.search(r"apt-get install -y --no-install-recommends libmagic1\b", apt)
    assert "rm -rf /var/lib/apt/lists/*" in apt

    env = " ".join(runtime.all("ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "MIGRATIONS_PATH=/app/migrations"):
        assert setting in env
    assert "COPY migrations /app/migrations" in [f"COPY {args}" for args in runtime.all("COPY")]
    assert runtime.all("ENTRYPOINT") == ['["retina"]']
    assert runtime.all("CMD") == ['["image-store"]']
    assert set(" ".join(runtime.all("EXPOSE")).split()) == {"8081", "8082"}


def test_no_remote_add_and_no_secrets() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*ADD\s", text, flags=re.MULTILINE | re.IGNORECASE), "COPY only, never ADD"
    secrets = ("DATABASE_URL", "SERVICE_TOKENS", "IMAGE_SIGNING_KEYS", "IMAGE_STORE_TOKEN")
    for stage in stages():
        for key, args in stage.instructions:
            if key in ("ENV", "ARG", "LABEL"):
                assert not any(name in args for name in secrets), f"{key} {args}"
    assert set(secrets) <= set(env_example_variables())


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, f"**/{pattern}") for prefix in prefixes):
            result = not negate
    return result


def test_build_context_keeps_what_the_image_needs_and_drops_the_rest() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for stage in stages()
        for args in stage.all("COPY")
        if not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is copied but excluded by {DOCKERIGNORE.name}"
    assert not ignored("migrations/0001_chat_schema.sql", patterns)
    for path in (".git", ".venv/bin/python", ".venv-tools", ".env", "var/local.env", "var/images/ab/cd/x", "tests"):
        assert ignored(path, patterns), f"{path} must not reach the build context"
