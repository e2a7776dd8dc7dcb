"""Links from deploy/ and the alert rules into docs/ point at sections that exist."""

from __future__ import annotations

import re

import pytest

from tests.deploy.helpers import DEPLOY, ROOT, anchors, env_example_variables

DOCUMENTS = ["deployment.md", "operations.md"]


def references() -> list[tuple[str, str, str]]:
    found = []
    sources = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.json"), *DEPLOY.rglob("*.py"), *(ROOT / "docs").glob("*.md")]
    for path in sources:
        for document, anchor in re.findall(r"docs/(deployment|operations)\.md#([\w-]+)", path.read_text()):
            found.append((str(path.relative_to(ROOT)), f"{document}.md", anchor))
        if path.parent.name == "docs" and path.name in DOCUMENTS:
            # In-page links: [text](#anchor)
            for anchor in re.findall(r"\]\(#([\w-]+)\)", path.read_text()):
                found.append((str(path.relative_to(ROOT)), path.name, anchor))
    return found


def test_there_are_links_to_check() -> None:
    assert len(references()) > 20


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_link_into_the_docs_has_its_section(document: str) -> None:
    sections = anchors(ROOT / "docs" / document)
    missing = [f"{source} -> {doc}#{anchor}" for source, doc, anchor in references() if doc == document]
    missing = [link for link in missing if link.rsplit("#", 1)[1] not in sections]
    assert not missing, "\n".join(missing)


def test_docs_name_only_real_environment_variables() -> None:
    variables = set(env_example_variables())
    for name in DOCUMENTS:
        text = (ROOT / "docs" / name).read_text()
        # Upper-case names retina reads (not Ollama's OLLAMA_KEEP_ALIVE etc., which are Ollama's own).
        mentioned = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", text))
        ollama_own = {"OLLAMA_KEEP_ALIVE", "OLLAMA_NUM_PARALLEL"}
        unknown = mentioned - variables - ollama_own
        assert not unknown, f"docs/{name} names variables .env.example does not have: {sorted(unknown)}"


def test_the_architecture_names_only_files_and_functions_that_exist() -> None:
    """docs/architecture.md walks an ask and an image GET through the code: every module it names
    (`chat/ask.py`, `http/serving_s3.py`, ...) is a real file, and every `module.function` it names
    is defined there, so the walk cannot silently go stale when code moves."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    folders = ("services", "common", "cli", "tests")
    sources = [p.relative_to(ROOT).as_posix() for folder in folders for p in (ROOT / folder).rglob("*.py")]
    named = set(re.findall(r"([\w/]+\.py)", text))
    assert len(named) > 20
    missing = [name for name in sorted(named) if not any(s == name or s.endswith("/" + name) for s in sources)]
    assert not missing, missing
    for module, function in re.findall(r"`([\w/]+)\.(\w+)`", text):
        candidates = [s for s in sources if s.endswith(f"/{module}.py") or s == f"{module}.py"]
        if candidates and not function.startswith(("py", "md")):
            body = "\n".join((ROOT / s).read_text() for s in candidates)
            assert re.search(rf"(def|class) {function}\b|^{function} = ", body, re.MULTILINE), f"{module}.{function}"
