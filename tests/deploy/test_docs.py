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


def opentelemetry_variables() -> set[str]:
    """The OTEL_* variables the OpenTelemetry SDK reads itself (docs/operations.md, traces): the
    names its modules define, so a misspelt one in the docs still fails."""
    import opentelemetry.environment_variables as api_variables
    import opentelemetry.sdk.environment_variables as sdk_variables

    return {name for module in (api_variables, sdk_variables) for name in dir(module) if name.startswith("OTEL_")}


def test_docs_name_only_real_environment_variables() -> None:
    variables = set(env_example_variables())
    for name in DOCUMENTS:
        text = (ROOT / "docs" / name).read_text()
        # Upper-case names retina reads (not Ollama's OLLAMA_KEEP_ALIVE etc., which are Ollama's own).
        mentioned = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", text))
        ollama_own = {"OLLAMA_KEEP_ALIVE", "OLLAMA_NUM_PARALLEL"}
        unknown = mentioned - variables - ollama_own - opentelemetry_variables()
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


def test_the_readme_fits_on_a_screen_and_the_reference_is_in_docs_api() -> None:
    """The README is a first session (at most 200 lines); the reference lives in docs/api.md, and
    every document the README sends a newcomer to exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, len(readme.splitlines())
    for command in ("make up", "make test", "retina ask", "/demo", "OpenAI(", "--ollama-emulator"):
        assert command in readme, command
    linked = set(re.findall(r"\]\((docs/[\w./-]+?)(?:#[\w-]+)?\)", readme))
    for document in ("api", "architecture", "configuration", "deployment", "operations", "metrics", "migration"):
        assert f"docs/{document}.md" in linked, document
    assert not [link for link in linked if not (ROOT / link).exists()], linked


def test_links_into_docs_api_have_their_sections() -> None:
    api = ROOT / "docs" / "api.md"
    sections = anchors(api)
    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    missing = []
    for source in sources:
        text = source.read_text()
        links = re.findall(r"\(docs/api\.md#([\w-]+)\)", text) + re.findall(r"\(api\.md#([\w-]+)\)", text)
        if source == api:
            links += re.findall(r"\]\(#([\w-]+)\)", text)
        missing += [f"{source.relative_to(ROOT)} -> api.md#{anchor}" for anchor in links if anchor not in sections]
    # and the reference's own links into the other guides
    for document, anchor in re.findall(r"\]\((\w+\.md)#([\w-]+)\)", api.read_text()):
        if anchor not in anchors(ROOT / "docs" / document):
            missing.append(f"docs/api.md -> {document}#{anchor}")
    assert not missing, "\n".join(missing)


def test_the_api_reference_lists_every_error_code_and_route() -> None:
    """docs/api.md names every error code of common/errors.py and every path of the OpenAPI documents."""
    import yaml

    from common import errors

    text = (ROOT / "docs" / "api.md").read_text()
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ApiError) and isinstance(cls.__dict__.get("code"), str)
    }
    assert len(codes) > 25
    assert not [code for code in sorted(codes) if f"`{code}`" not in text]
    for name in ("image-store.yaml", "vision-gateway.yaml"):
        document = yaml.safe_load((ROOT / "docs" / "openapi" / name).read_text())
        for path in document["paths"]:
            # The tables write `{image_id}` and `{conversation_id}` as `{id}`.
            shown = path.replace("{image_id}", "{id}").replace("{conversation_id}", "{id}")
            assert path in text or shown in text, path
