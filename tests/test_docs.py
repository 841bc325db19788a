"""The repository's documentation stands on its own: no references to files it does not ship,
no broken relative links, and the licence pyproject declares is there."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache", "courtyard-data", "node_modules"}

#: Planning notes that were never part of the repository; nothing in it may send a reader there.
OUTSIDE_DOCS = re.compile(r"\b(DESIGN|DOMAIN|LIBRARIES)(\.md\b|\s+(section\s+|§)?\d)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def repo_files(pattern: str) -> list[Path]:
    """Files of the repository matching `pattern` (a glob), outside caches, venvs and build output."""
    return sorted(p for p in ROOT.rglob(pattern)
                  if not any(part in SKIP or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_nothing_refers_to_documents_outside_the_repository() -> None:
    offenders = []
    shipped = [*repo_files("*.md"), *repo_files("*.py"), *repo_files("*.yaml"), *repo_files("*.json")]
    for path in shipped:
        if path == Path(__file__).resolve():  # this file names the pattern it looks for
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE_DOCS.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_pattern_catches_each_form() -> None:
    for text in ("see DOMAIN.md 1d", "(LIBRARIES.md §3)", "as in DOMAIN 4b", "../shared/DESIGN.md"):
        assert OUTSIDE_DOCS.search(text), text
    for text in ("the domain notes", "docs/domain.md", "a DOMAIN name"):
        assert not OUTSIDE_DOCS.search(text), text


def test_every_relative_markdown_link_resolves() -> None:
    broken = []
    checked = 0
    for path in repo_files("*.md"):
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            checked += 1
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    assert checked >= 10, "the link pattern found the README's links"


def test_license_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert "Apache-2.0" in str(declared)
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000, "the full text, not a pointer"


def test_no_document_shows_a_secret_with_a_public_default() -> None:
    secret = re.compile(r"\$\{(\w*(?:TOKEN|KEY|SECRET|PASSWORD)\w*):-([^}]+)\}")
    offenders = []
    for path in repo_files("*.md"):
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in secret.finditer(text)]
        offenders += [f"{path.relative_to(ROOT)}: change-me"] if "change-me" in text else []
    assert not offenders, "\n".join(offenders)
