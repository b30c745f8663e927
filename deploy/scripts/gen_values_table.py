#!/usr/bin/env python3
"""Regenerate the values table of the chart README from the `# --` comments in values.yaml.

A value is documented by a comment block that starts with `# --` right above its key; nested
keys get dotted paths. The table sits between the markers
`<!-- values-table:start -->` and `<!-- values-table:end -->` of deploy/helm/paxoskv/README.md.

    python3 deploy/scripts/gen_values_table.py           # rewrite the table
    python3 deploy/scripts/gen_values_table.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "paxoskv"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):")


def rows(values_text: str) -> list[str]:
    values = yaml.safe_load(values_text)
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    out = ["| key | default | description |", "| --- | --- | --- |"]
    for line in values_text.splitlines():
        s = line.strip()
        if s.startswith("# --"):
            comment = [s[4:].strip()]
            continue
        if s.startswith("#"):
            if comment:
                comment.append(s[1:].strip())
            continue
        m = KEY.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if not comment:
            continue
        path = ".".join(k for _, k in stack)
        node: Any = values
        for k in path.split("."):
            node = node[k]
        default = json.dumps(node)
        if len(default) > 60:
            default = "see values.yaml"
        text = " ".join(comment).replace("|", "\\|")
        out.append(f"| `{path}` | `{default}` | {text} |")
        comment = []
    return out


def render(readme: str, values_text: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + "\n" + "\n".join(rows(values_text)) + "\n" + END + tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    new = render(readme, (CHART / "values.yaml").read_text())
    if args.check:
        if new != readme:
            print(f"{readme_path} values table is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
