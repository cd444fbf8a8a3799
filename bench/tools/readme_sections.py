#!/usr/bin/env python3
"""Refresh the generated sections of bench/README.md from bench/results/.

    readme_sections.py

Each section sits between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`:
`table` from results/latest.md, `scaling` from results/scaling.md, `micro`
from results/micro.md (their title and machine line left out, headings
demoted, images dropped since the README shows the SVGs itself). The prose
around the sections is written by hand: re-read it after a new run.
Stdlib only.
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "README.md")
RESULTS = os.path.join(HERE, "..", "results")


def body(name: str) -> str:
    """The file from its first table or `## ` heading on."""
    with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") or line.startswith("## "):
            lines = lines[i:]
            break
    text = "\n".join(lines)
    text = re.sub(r"^!\[.*$", "", text, flags=re.M)
    text = re.sub(r"^## ", "#### ", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def replace(readme: str, name: str, text: str) -> str:
    block = f"<!-- {name}:begin (generated from results/) -->\n{text}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:begin.*?<!-- {name}:end -->", re.S)
    if not pattern.search(readme):
        raise SystemExit(f"readme_sections: no '{name}' section markers in {README}")
    return pattern.sub(lambda _m: block, readme)


def main() -> int:
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    for name, source in (("table", "latest.md"), ("scaling", "scaling.md"), ("micro", "micro.md")):
        if os.path.exists(os.path.join(RESULTS, source)):
            readme = replace(readme, name, body(source))
    with open(README, "w", encoding="utf-8") as f:
        f.write(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
