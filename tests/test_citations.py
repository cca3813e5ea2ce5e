"""Citations a user can follow: no pointers into the project's private notes, a well-formed bib.

The library, configs and published-number files once cited ``shared/seeds/…`` and
``shared/docs/methods.md``, which are not part of the repository. Every such citation now names
the paper (authors, venue, year, arXiv id, table/section/equation) or the authors' public code;
this test keeps it that way. It reads only tracked files of this repository, never ``shared/``.
"""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent

#: What is checked: the package, the Hydra configs, the published numbers and the README.
CHECKED = ["bayescomp", "conf", "experiments", "README.md"]

#: Private locations a user cannot follow. ``shared/`` is the project's notes directory;
#: ``methods.md`` its research note and ``seeds/0…`` its copies of slides.
PRIVATE = re.compile(r"shared/|methods\.md|seeds/\d{3}_")

#: A BibTeX key: letters, digits and ``_:-``, starting with a letter (what bibtex and biber
#: accept without quoting, and what our ``author-year-word`` keys look like).
KEY = re.compile(r"[A-Za-z][A-Za-z0-9_:\-]*")
ENTRY = re.compile(r"@(\w+)\s*\{\s*([^,\s]*)\s*,", re.DOTALL)
ARXIV = re.compile(r"\d{4}\.\d{4,5}")


def _tracked_files() -> list[pathlib.Path]:
    """Tracked text files under :data:`CHECKED`; all files there when git is unavailable."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *CHECKED], cwd=REPO,
                             capture_output=True, check=True, text=True).stdout
        paths = [REPO / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # e.g. a copy of the tree without .git
        paths = [p for name in CHECKED for p in
                 ([REPO / name] if (REPO / name).is_file() else (REPO / name).rglob("*"))]
    return [p for p in paths if p.is_file() and p.suffix in {".py", ".yaml", ".yml", ".md", ".txt"}]


def _bib_entries() -> list[tuple[str, str, str]]:
    """``(type, key, body)`` of every entry of references.bib, split at top-level ``@``.

    A minimal parser: enough to check keys and fields, not a BibTeX implementation. Braces are
    counted so a field value containing ``@`` or ``,`` does not split an entry.
    """
    text = (REPO / "references.bib").read_text(encoding="utf-8")
    entries, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "@" and depth == 0:
            start = i
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            assert depth >= 0, f"references.bib: unbalanced '}}' at offset {i}"
            if depth == 0 and start is not None:
                chunk = text[start:i + 1]
                m = ENTRY.match(chunk)
                assert m, f"references.bib: malformed entry head: {chunk[:60]!r}"
                entries.append((m.group(1).lower(), m.group(2), chunk[m.end():-1]))
                start = None
    assert depth == 0, "references.bib: unbalanced '{'"
    return entries


def _fields(body: str) -> dict[str, str]:
    """``name = {value}`` / ``name = "value"`` / ``name = 2017`` fields of one entry body."""
    fields, i = {}, 0
    pattern = re.compile(r"\s*(\w+)\s*=\s*")
    while i < len(body):
        m = pattern.match(body, i)
        if not m:
            assert not body[i:].strip(" \n\t,"), f"unparsed text in entry: {body[i:i + 60]!r}"
            break
        name, j = m.group(1).lower(), m.end()
        if body[j] == "{":
            depth, k = 0, j
            while True:
                depth += {"{": 1, "}": -1}.get(body[k], 0)
                if depth == 0:
                    break
                k += 1
            value, i = body[j + 1:k], k + 1
        elif body[j] == '"':
            k = body.index('"', j + 1)
            value, i = body[j + 1:k], k + 1
        else:
            m2 = re.compile(r"[^,\s]+").match(body, j)
            value, i = m2.group(0), m2.end()
        assert name not in fields, f"field {name!r} given twice"
        fields[name] = " ".join(value.split())
        i = body.find(",", i) + 1 if "," in body[i:] else len(body)
    return fields


def test_no_tracked_file_cites_the_private_notes():
    files = _tracked_files()
    assert any(p.name == "tables.py" for p in files), "found none of the checked files"
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
            for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace")
                                     .splitlines(), 1)
            if PRIVATE.search(line)]
    assert not hits, ("cite the paper (authors, venue, year, arXiv id, table/section) or the "
                      "authors' public code instead of the project's private notes:\n"
                      + "\n".join(hits))


def test_references_bib_entries_are_well_formed():
    entries = _bib_entries()
    assert entries, "references.bib defines no entries"
    keys = [key for _, key, _ in entries]
    assert len(keys) == len(set(keys)), f"duplicate keys: {sorted(keys)}"
    for kind, key, body in entries:
        assert KEY.fullmatch(key), f"malformed key {key!r}"
        fields = _fields(body)
        for required in ("author", "title", "year"):
            assert fields.get(required), f"{key}: no {required}"
        assert re.fullmatch(r"(19|20)\d\d", fields["year"]), f"{key}: year {fields['year']!r}"
        if kind == "inproceedings":
            assert fields.get("booktitle"), f"{key}: an @inproceedings needs a booktitle"
        if "eprint" in fields:
            assert ARXIV.fullmatch(fields["eprint"]), f"{key}: arXiv id {fields['eprint']!r}"
            assert fields.get("archiveprefix") == "arXiv", f"{key}: eprint without arXiv prefix"
        # Authors are "First Last and First Last": no stray commas or empty names.
        for name in fields["author"].split(" and "):
            assert name.strip() and "," not in name, f"{key}: author {name!r}"


PUBLISHED_TABLES = sorted(p.name for p in (REPO / "experiments" / "published").glob("*.yaml"))


def test_the_published_tables_are_found():
    assert {"louizos2017.yaml", "zhao2019_vcnn.yaml", "liu2017_slimming.yaml"} <= set(
        PUBLISHED_TABLES)


@pytest.mark.parametrize("name", PUBLISHED_TABLES)
def test_every_published_table_paper_is_in_references_bib(name):
    # The tables print these citations (bayescomp/tables.py, bayescomp/cifar_tables.py); the
    # bib must have each paper, matched by arXiv id (by title where the paper has none), with
    # the same year.
    cite = yaml.safe_load((REPO / "experiments" / "published" / name).read_text())["citation"]
    entries = [_fields(body) for _, _, body in _bib_entries()]
    key, matches = ((f"arXiv:{cite['arxiv']}", [f for f in entries if f.get("eprint")
                                                 == cite["arxiv"]])
                    if cite.get("arxiv") else
                    (cite["title"], [f for f in entries if " ".join(f["title"].split())
                                     == cite["title"]]))
    assert matches, f"{name}: {key} not in references.bib"
    assert matches[0]["year"] == str(cite["year"])
    source = cite.get("source") or {}
    values = source.values() if isinstance(source, dict) else [source]
    assert all(not PRIVATE.search(str(v)) for v in values)
