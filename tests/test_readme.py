"""The README stays true: its Python blocks run (in order, in one namespace, as
tests/test_docs.py runs the docs pages'), the test command CI runs is the one it shows, and its
local links point at files that exist.

A block that must not run is preceded by the line ``<!-- no-run -->``; lines that need a file
you downloaded are commented out in the blocks and say so.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"(<!-- no-run -->\s*\n)?```python\n(.*?)\n```", re.DOTALL)


def test_readme_python_blocks_run(monkeypatch, tmp_path) -> None:
    blocks = [code for skip, code in FENCE.findall(README.read_text()) if not skip]
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)  # nothing may depend on (or write into) the checkout
    namespace: dict = {"__name__": "readme"}
    for index, code in enumerate(blocks):
        exec(compile(code, f"README.md[block {index}]", "exec"), namespace)


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text()
    block = re.search(r"<!-- ci: tests -->\s*\n```bash\n(.*?)\n```", text, re.DOTALL)
    assert block is not None, "README: no <!-- ci: tests --> block"
    assert block.group(1).strip() == 'pip install ".[dev]" && pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block tests" in ci, ".ci/run does not run the README's test block"


def test_readme_local_links_exist() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to a missing {target}"
