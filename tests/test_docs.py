"""The repository's documents stand alone: nothing tracked points a reader at a document the
repository does not hold.

Method: every tracked text file (`git ls-files`) is searched for
1. names of documents that were never part of the repository (a small denylist: notes,
   reports and style guides that lived elsewhere, issue numbers of a tracker the repository
   does not carry), and
2. references that must resolve inside it: relative Markdown links, and "invariant N" /
   "pitfall N" of docs/design.md, which must be items that page numbers.
Each check is also run on a planted bad file, so a check that can no longer fail is caught.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# Names of working notes that live outside the repository (case matters: docs/design.md is
# ours). Each is written in two pieces so that this list does not itself name them.
_OUTSIDE = ("DES" + "IGN.md", "STY" + "LE.md", "ANCH" + "ORS", "OFFLINE" + "-K8S")
DENIED: dict[str, re.Pattern[str]] = {
    **{name: re.compile(rf"\b{re.escape(name)}\b") for name in _OUTSIDE},
    "design report": re.compile(r"\bdesign report\b", re.I),
    "a shared notes folder": re.compile(r"(?<![\w./-])" + "sha" + "red/"),
    "issue number": re.compile(r"\bissue #?\d+\b", re.I),
    "upstream issue number": re.compile(r"\b(kubernetes|etcd|helm|prometheus)#\d+\b", re.I),
}

MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
DESIGN_REF = re.compile(r"design\.md[,)]?\s+(invariants?|pitfall)\s+(\d+)(?:\s+and\s+(\d+))?")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError) as exc:  # not a git checkout
        pytest.skip(f"git ls-files failed: {exc}")
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.resolve() != THIS:
            files.append(path)
    return files


def read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def outside_references(paths: list[Path], root: Path = ROOT) -> list[str]:
    found = []
    for path in paths:
        text = read_text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for name, pattern in DENIED.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(root)}:{lineno}: {name}: {line.strip()}")
    return found


def broken_links(paths: list[Path], root: Path = ROOT) -> list[str]:
    found = []
    for path in paths:
        if path.suffix != ".md":
            continue
        text = read_text(path) or ""
        for lineno, line in enumerate(text.splitlines(), 1):
            for target in MD_LINK.findall(line):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue  # URL, mailto or in-page anchor
                file_part = target.split("#", 1)[0]
                if not (path.parent / file_part).exists():
                    found.append(f"{path.relative_to(root)}:{lineno}: {target}")
    return found


def numbered_items(design: str, heading: str) -> int:
    section = design.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return len(re.findall(r"^(\d+)\. ", section, flags=re.M))


def unresolved_design_refs(paths: list[Path], design: str, root: Path = ROOT) -> list[str]:
    counts = {"invariant": numbered_items(design, "Invariants"),
              "pitfall": numbered_items(design, "Pitfalls")}
    found = []
    for path in paths:
        text = read_text(path)
        if text is None:
            continue
        flat = " ".join(text.split())  # references wrap across lines
        for m in DESIGN_REF.finditer(flat):
            kind = "pitfall" if m.group(1) == "pitfall" else "invariant"
            for n in (m.group(2), m.group(3)):
                if n and not 1 <= int(n) <= counts[kind]:
                    found.append(f"{path.relative_to(root)}: {kind} {n}")
    return found


def test_no_tracked_file_cites_an_outside_document() -> None:
    assert outside_references(tracked_files()) == []


def test_relative_markdown_links_resolve() -> None:
    assert broken_links(tracked_files()) == []


def test_design_references_resolve() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    assert numbered_items(design, "Invariants") >= 9
    assert numbered_items(design, "Pitfalls") >= 7
    assert unresolved_design_refs(tracked_files(), design) == []
    seen = sum(len(DESIGN_REF.findall(" ".join((read_text(p) or "").split())))
               for p in tracked_files())
    assert seen > 20  # the code cites many; a pattern that stopped matching would pass above


def test_docs_hold_the_design_the_invariants_and_the_recovery_procedures() -> None:
    recovery = (ROOT / "docs" / "recovery.md").read_text()
    for topic in ("Rejoin after a lost volume", "restore", "peer", "TLS", "--rejoin",
                  "rejoinOrdinals", "rejoin: complete", "allowSwitchOnRunningRelease"):
        assert topic in recovery, topic
    assert "[recovery.md](recovery.md)" in (ROOT / "docs" / "design.md").read_text()
    measurements = (ROOT / "docs" / "measurements.md").read_text()
    for fact in ("2 vCPUs", "RAM", "load average", "Python", "constraints.txt"):
        assert fact in measurements, fact


def test_the_checks_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text(
        f"See {' and '.join(_OUTSIDE)}, the design report,\n"
        "sha" "red/notes.txt, issue 4, kubernetes#96886; [gone](nowhere.md), [ok](bad.md).\n"
        "As docs/design.md invariant 42 and docs/design.md pitfall 3 say.\n"
    )
    found = " ".join(outside_references([bad], tmp_path))
    links = broken_links([bad], tmp_path)
    design = (ROOT / "docs" / "design.md").read_text()
    refs = unresolved_design_refs([bad], design, tmp_path)
    for name in DENIED:
        assert f": {name}: " in found, name
    assert links == ["bad.md:2: nowhere.md"]
    assert refs == ["bad.md: invariant 42"]
