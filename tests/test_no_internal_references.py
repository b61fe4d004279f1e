"""Users cannot read our design notes: code, README and docs cite papers and reference repositories,
never the internal "card N" notes the first round was written from."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERN = re.compile(r"\bcards? \d")


def test_no_card_references():
    hits = []
    for folder in ("dlmarch", "trainers", "conversions", "benchmarks", "configs", "docs", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".md", ".yaml") or path == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if PATTERN.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    hits += [f"README.md:{n}: {line.strip()}" for n, line in enumerate(readme, 1) if PATTERN.search(line)]
    assert not hits, "\n".join(hits)
