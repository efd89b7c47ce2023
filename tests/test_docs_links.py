"""The documentation is self-contained: what the repository cites lives in docs/.

* Every ``docs/<file>.md`` cited in a tracked text file exists (also relative Markdown links that
  point into docs/); a ``§N`` / ``§N.M`` after the citation names a numbered heading of that file,
  and a ``#anchor`` one of its headings (GitHub's slugs).
* No tracked file outside docs/ cites documents that are not in the repository: the original design
  and segmenter notes or the research notes that lived beside it (by path, by bare name, or by the
  short forms "reference N.M" and "pitfall N.M"; the names are the patterns of ``OUTSIDE`` below).
  Their content is in docs/design.md and docs/reference.md.

Files come from ``git ls-files``; binary files and the generated docs/mutation_report.md are skipped.
"""
from __future__ import annotations

import posixpath
import re
import subprocess
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()
#: generated files, not written by hand
GENERATED = frozenset({"docs/mutation_report.md"})

SECTION = r"§\s?\d+(?:\.\d+)*"
#: ``docs/x.md``, optionally ``#anchor``, optionally a run of ``§N.M`` (", §a", " and §b", "/§c")
DOC_CITATION = re.compile(r"(?<![\w/.-])(docs/[\w./-]*?\.md)(#[\w-]+)?((?:\s*(?:,|;|/|and|or)?\s*" + SECTION + r")*)")
#: relative Markdown link to a .md file: ``[text](path.md#anchor)``
MD_LINK = re.compile(r"\]\((?![a-z]+:|#|/)([^)\s#]+\.md)(#[^)\s]+)?\)")
SECTION_NUMBER = re.compile(r"§\s?(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
HEADING_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?(?:\s|$)")

#: citations of documents that are not in the repository (checked outside docs/)
OUTSIDE = (
    (re.compile(r"\bDESIGN\.md\b"), "the original design notes outside the repository (now docs/design.md)"),
    (re.compile(r"\bSEGMENTERS\.md\b"), "the original segmenter notes outside the repository (now docs/design.md §8)"),
    (re.compile(r"\breference/[\w-]+\.md\b"), "reference notes outside the repository (now docs/reference.md)"),
    (re.compile(r"(?<![\w/.-])(?:translators|uda_mmseg|eval|snakemake)\.md\b"),
     "reference notes outside the repository (now docs/reference.md)"),
    (re.compile(r"\breference \d+\.\d"), "short-form reference note section (now docs/reference.md §N.M)"),
    (re.compile(r"\bpitfall \d+\.\d"), "pitfall of the outside reference notes (now docs/reference.md §N.M)"),
)


@dataclass(frozen=True)
class Citation:
    source: str      # repository-relative path of the citing file
    line: int
    target: str      # repository-relative path of the cited file
    anchor: str | None
    sections: tuple[str, ...]

    def where(self) -> str:
        return f"{self.source}:{self.line}"


@lru_cache(maxsize=1)
def tracked_text_files() -> dict[str, str]:
    """``{path: text}`` of every tracked file that exists, is not binary and decodes as UTF-8."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout ({err}): cannot enumerate tracked files")
    files = {}
    for name in sorted(p for p in out.decode().split("\0") if p):
        path = REPO / name
        if name in GENERATED or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def citations() -> list[Citation]:
    found = []
    for name, text in tracked_text_files().items():
        if name == SELF:
            continue
        for m in DOC_CITATION.finditer(text):
            found.append(Citation(name, line_of(text, m.start()), m.group(1), m.group(2),
                                  tuple(SECTION_NUMBER.findall(m.group(3) or ""))))
        if name.endswith(".md"):
            for m in MD_LINK.finditer(text):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.group(1)))
                if target.startswith("docs/"):
                    found.append(Citation(name, line_of(text, m.start()), target, m.group(2), ()))
    return found


def github_slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    slug = []
    for ch in title.strip().lower():
        if ch in " -":
            slug.append("-")
        elif ch == "_" or unicodedata.category(ch)[0] in "LN":
            slug.append(ch)
    return "".join(slug)


@lru_cache(maxsize=None)
def headings(target: str) -> tuple[frozenset[str], frozenset[str]]:
    """(section numbers, anchors) of the headings of a Markdown file (code blocks ignored)."""
    text = (REPO / target).read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    numbers, anchors, seen = set(), set(), {}
    for m in HEADING.finditer(text):
        title = m.group(2)
        number = HEADING_NUMBER.match(title)
        if number:
            numbers.add(number.group(1))
        slug = github_slug(title)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return frozenset(numbers), frozenset(anchors)


def test_cited_docs_exist():
    missing = [f"{c.where()}: cites {c.target}, which does not exist"
               for c in citations() if not (REPO / c.target).is_file()]
    assert not missing, "citations of missing docs:\n" + "\n".join(missing)


def test_cited_sections_and_anchors_exist():
    bad = []
    for c in citations():
        if not (REPO / c.target).is_file() or not c.target.endswith(".md"):
            continue  # reported by test_cited_docs_exist
        numbers, anchors = headings(c.target)
        for number in c.sections:
            if number not in numbers:
                bad.append(f"{c.where()}: cites {c.target} §{number}; its numbered headings are "
                           f"{', '.join(sorted(numbers, key=lambda n: [int(p) for p in n.split('.')])) or 'none'}")
        if c.anchor and c.anchor[1:] not in anchors:
            bad.append(f"{c.where()}: cites {c.target}{c.anchor}, which is no heading anchor of that file")
    assert not bad, "citations of missing sections:\n" + "\n".join(bad)


def test_no_citations_of_documents_outside_the_repository():
    found = []
    for name, text in tracked_text_files().items():
        if name == SELF or name.startswith("docs/"):
            continue
        for pattern, what in OUTSIDE:
            for m in pattern.finditer(text):
                found.append(f"{name}:{line_of(text, m.start())}: '{m.group(0)}' -- {what}")
    assert not found, (f"{len(found)} citation(s) of documents that are not in the repository "
                       "(cite docs/design.md §N or docs/reference.md §N.M instead):\n" + "\n".join(sorted(found)))


def test_checker_recognises_citation_forms():
    """The patterns above on hand-made text (so a silent regex change cannot pass everything)."""
    text = "see docs/design.md §3, §8.4 and docs/reference.md §2.3/§2.2; [x](docs/methods.md#tests)."
    got = [(m.group(1), m.group(2), SECTION_NUMBER.findall(m.group(3))) for m in DOC_CITATION.finditer(text)]
    assert got == [("docs/design.md", None, ["3", "8.4"]), ("docs/reference.md", None, ["2.3", "2.2"]),
                   ("docs/methods.md", "#tests", [])]
    assert [m.group(1) for m in MD_LINK.finditer("[a](methods.md) [b](https://x/y.md) [c](../README.md#z)")] == \
        ["methods.md", "../README.md"]
    outside = "DESIGN.md section 6; reference/eval.md 3.1; uda_mmseg.md 2.1; (reference 2.3); pitfall 8.4"
    hits = [m.group(0) for pattern, _ in OUTSIDE for m in pattern.finditer(outside)]
    assert hits == ["DESIGN.md", "reference/eval.md", "uda_mmseg.md", "reference 2.3", "pitfall 8.4"]
    assert not [m for pattern, _ in OUTSIDE for m in pattern.finditer("docs/reference.md §2.3; docs/eval.md")]
    assert github_slug("3.2 Rounds") == "32-rounds"
    assert github_slug("8.4 `final.pth`") == "84-finalpth"
