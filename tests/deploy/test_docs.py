"""The docs: the README and the mdBook under docs/ (docs/book.toml, docs/src/).

Every relative link of README.md and docs/src/**/*.md points at a file that exists, and
every `#anchor` at a heading of its target; a link of the book stays inside docs/src (the
HTML book holds nothing else). `mdbook build` builds the book, and its HTML carries the ids
the book's anchors name. Every chapter file is in SUMMARY.md; every failure class the
binary writes (`image_sync_failures{class}`) is explained in the failure-modes chapter.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_deploy import REPO, find_tool, missing_tool

BOOK = REPO / "docs"
SRC = BOOK / "src"
README = REPO / "README.md"
# Link targets that are not files in the repository.
EXTERNAL = re.compile(r"^(https?:|mailto:)")
INCLUDE = re.compile(r"\{\{#include ([^}\s]+)\}\}")


def markdown_files() -> list[Path]:
    return [README, *sorted(SRC.rglob("*.md"))]


def expand(path: Path) -> str:
    """The Markdown as mdBook sees it: `{{#include FILE}}` replaced by the file."""
    return INCLUDE.sub(lambda m: (path.parent / m.group(1)).read_text(), path.read_text())


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans, where a `[x](y)` is no link."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text, flags=re.S)


def links(path: Path) -> list[str]:
    text = prose(path.read_text())
    inline = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    reference = re.findall(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, re.M)
    return [target for target in inline + reference if not EXTERNAL.match(target)]


def slug(heading: str) -> str:
    """GitHub's and mdBook's id of a heading: its text lowercased, spaces to `-`, every
    character other than letters, digits, `-` and `_` dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return "".join(c.lower() if c.isalnum() or c in "-_" else "-" if c.isspace() else ""
                   for c in text.strip())


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", expand(path), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


def resolve(source: Path, target: str) -> tuple[Path, str]:
    file_part, _, anchor = target.partition("#")
    return ((source.parent / file_part).resolve() if file_part else source), anchor


def broken_links() -> list[str]:
    problems = []
    for source in markdown_files():
        where = source.relative_to(REPO)
        for target in links(source):
            path, anchor = resolve(source, target)
            if not path.exists():
                problems.append(f"{where}: {target}: no such file")
                continue
            if source.is_relative_to(SRC) and not path.is_relative_to(SRC):
                problems.append(f"{where}: {target}: leaves docs/src, which is all the HTML book "
                                "holds; name the file as `code` or link it on GitHub")
                continue
            if anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(f"{where}: {target}: no heading `{anchor}` in {path.relative_to(REPO)}")
    return problems


def test_every_relative_link_and_anchor_resolves():
    assert not broken_links(), "\n".join(broken_links())


def test_the_link_check_finds_broken_links(tmp_path, monkeypatch):
    # Guards the guard: a missing file, a missing anchor and a link out of the book fail.
    chapter = tmp_path / "docs/src/chapter.md"
    chapter.parent.mkdir(parents=True)
    (tmp_path / "README.md").write_text("# Top\n\n[ok](docs/src/chapter.md#a-b-c) [gone](nope.md)\n")
    chapter.write_text("# Chapter\n\n## A `b` (c)\n\n[ok](#a-b-c) [bad](#nothing) [out](../../README.md)\n"
                       "`[code](nope.md)`\n\n```\n[fenced](nope.md)\n```\n")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "REPO", tmp_path)
    monkeypatch.setattr(module, "README", tmp_path / "README.md")
    monkeypatch.setattr(module, "SRC", tmp_path / "docs/src")
    problems = broken_links()
    assert len(problems) == 3, problems
    assert any("nope.md: no such file" in p for p in problems)
    assert any("#nothing: no heading" in p for p in problems)
    assert any("leaves docs/src" in p for p in problems)


def test_every_chapter_is_in_the_summary():
    summary = (SRC / "SUMMARY.md").read_text()
    listed = {(SRC / target).resolve() for target in re.findall(r"\]\(([^)#]+\.md)\)", summary)}
    missing = [str(p.relative_to(REPO)) for p in SRC.rglob("*.md")
               if p.name != "SUMMARY.md" and p.resolve() not in listed]
    assert not missing, f"chapters not in docs/src/SUMMARY.md: {missing}"
    assert all(p.is_file() for p in listed), "SUMMARY.md names a chapter that does not exist"


def test_the_book_builds_and_its_html_has_every_anchor_the_book_links(tmp_path):
    mdbook = find_tool("mdbook") or (str(Path.home() / ".cargo/bin/mdbook")
                                     if (Path.home() / ".cargo/bin/mdbook").is_file() else None)
    if mdbook is None:
        missing_tool("mdbook not found (scripts/install-test-tools: cargo install mdbook)")
    out = tmp_path / "book"
    proc = subprocess.run([mdbook, "build", str(BOOK), "--dest-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not re.search(r"\b(WARN|ERROR)\b", proc.stderr), proc.stderr
    for source in sorted(SRC.rglob("*.md")):
        if source.name == "SUMMARY.md":
            continue
        page = out / source.relative_to(SRC).with_suffix(".html")
        assert page.is_file(), f"{page} not built"
        for target in links(source):
            path, anchor = resolve(source, target)
            if not anchor or path.suffix != ".md":
                continue
            html = (out / path.relative_to(SRC.resolve()).with_suffix(".html")).read_text()
            assert f'id="{anchor}"' in html, f"{source.relative_to(REPO)}: {target}: no id in the HTML"


def failure_classes() -> list[str]:
    """The `class` label values the binary writes: the arms of `Class::label`."""
    source = (REPO / "src/registry/failure.rs").read_text()
    body = source[source.index("pub fn label(self)"):]
    body = body[:body.index("\n    }\n")]
    return re.findall(r'=> "([a-z_]+)"', body)


def test_every_failure_class_is_explained():
    classes = failure_classes()
    assert len(classes) >= 15 and "manifest_unknown" in classes, classes
    chapter = (SRC / "failure-modes.md").read_text()
    missing = [c for c in classes if f"| `{c}` |" not in chapter]
    assert not missing, f"docs/src/failure-modes.md (Failure classes) lacks: {missing}"

