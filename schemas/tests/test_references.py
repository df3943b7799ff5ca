"""Every reference resolves: each relative link in a Markdown file, and each `*.md` file named in code or prose,
is a file of this repository.

    pytest -q schemas/tests/test_references.py

A link resolves against the linking file's folder. A named `.md` file resolves against the repository root, or
the naming file's folder or one above it (`README.md` in a package's module is that package's README).
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {"build", "dist", "node_modules", "__pycache__"}
CODE = {".py", ".toml", ".ini", ".cfg", ".yml", ".yaml", ".sh", ".md"}
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
NAMED = re.compile(r"(?<![\w./-])([\w][\w./-]*\.md)\b")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def repository_files():
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") and p != ".ci" or p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1]):
            continue
        if path.is_file() and (path.suffix in CODE or path.parent.name == ".ci"):
            yield path


FILES = list(repository_files())
MARKDOWN = [p for p in FILES if p.suffix == ".md"]


def rel(path):
    return str(path.relative_to(ROOT))


def links(text):
    for match in LINK.finditer(FENCE.sub("", text)):
        target = (match.group(1) or match.group(2)).split("#", 1)[0]
        if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # not http:, mailto:, ...
            yield target


def resolves(path, name):
    if (ROOT / name).is_file():
        return True
    return any((folder / name).is_file() for folder in path.parents if folder == ROOT or ROOT in folder.parents)


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_every_relative_link_resolves(path):
    broken = [t for t in links(path.read_text(encoding="utf-8")) if not (path.parent / t).exists()]
    assert not broken, f"{rel(path)}: links to nothing: {broken}"


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_every_named_markdown_file_exists(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    missing = sorted({n for n in NAMED.findall(text) if not n.startswith("http") and not resolves(path, n)})
    assert not missing, f"{rel(path)} names Markdown files that are not in the repository: {missing}"


def test_the_checks_see_a_dangling_reference():
    gone = "NOWHERE" + ".md"  # (spelled apart, so that this file names no missing file itself)
    assert list(links(f"[rules]({gone}#ranks), [site](https://example.org), [a](#b)")) == [gone]
    assert NAMED.findall(f"see {gone}, schemas/README.md and .md files") == [gone, "schemas/README.md"]
    assert not resolves(ROOT / "packages" / "x.py", gone)
    assert resolves(ROOT / "packages" / "galvatron-run" / "src" / "galvatron_run" / "data.py", "README.md")


def test_no_file_cites_the_internal_field_notes():
    """The field notes are an internal note kept outside the repository: cite the paper, datasheet or the in-repo
    home of a convention instead."""
    name = "FIELD" + "-NOTES"
    citing = [rel(p) for p in FILES if name in p.read_text(encoding="utf-8", errors="replace")]
    assert not citing, f"these files cite the internal field notes: {citing}"
