"""The docs stay true: their Python snippets run, the API reference lists every public name,
every public name documents its shape contract, and the notebooks stay small.

Snippet rule: every ```python block of a page runs, in page order, in one namespace per page.
A block that must not run (it needs several processes, a dataset on disk, ...) is preceded by the
line ``<!-- no-run -->``.
"""

import ast
import importlib.util
import itertools
import re
from pathlib import Path

import pytest

import faceaux

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"(<!-- no-run -->\s*\n)?```python\n(.*?)\n```", re.DOTALL)


def runnable_blocks(page: Path) -> list[str]:
    return [code for skip, code in FENCE.findall(page.read_text()) if not skip]


def test_docs_have_pages():
    assert len(PAGES) >= 12, [p.name for p in PAGES]


SNIPPET_PAGES = [page for page in PAGES if runnable_blocks(page)]


def test_every_layer_page_has_a_runnable_example():
    expected = {"index.md", "getting-started.md", "heads.md", "models.md"}
    expected |= {f"layers/{p.name}" for p in (DOCS / "layers").glob("*.md")}
    have = {str(p.relative_to(DOCS)) for p in SNIPPET_PAGES}
    assert expected <= have, f"pages without a runnable python block: {expected - have}"


@pytest.mark.parametrize("page", SNIPPET_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_snippets_run(page, monkeypatch, tmp_path):
    blocks = runnable_blocks(page)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page.relative_to(ROOT)}[block {i}]", "exec"), namespace)


def test_api_reference_lists_every_public_name():
    text = (DOCS / "api.md").read_text()
    listed = set(re.findall(r"^::: faceaux\.(\w+)", text, re.MULTILINE))
    missing = sorted(set(faceaux.__all__) - listed)
    unknown = sorted(listed - set(faceaux.__all__))
    assert not missing, f"docs/api.md lacks: {missing}"
    assert not unknown, f"docs/api.md lists names faceaux does not export: {unknown}"


def attribute_docstrings() -> dict[str, str]:
    """Docstrings of module-level names (a string literal right after the assignment), the
    convention mkdocstrings reads, for every module under faceaux/."""
    docs = {}
    for path in (ROOT / "faceaux").rglob("*.py"):
        body = ast.parse(path.read_text()).body
        for node, nxt in itertools.pairwise(body):
            if not isinstance(node, ast.Assign | ast.AnnAssign):
                continue
            if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(nxt.value.value, str):
                    docs[target.id] = nxt.value.value
    return docs


def public_docstring(name: str) -> str:
    obj = getattr(faceaux, name)
    if callable(obj) and getattr(obj, "__module__", "").startswith("faceaux"):
        return obj.__doc__ or ""
    return attribute_docstrings().get(name, "")


@pytest.mark.parametrize("name", sorted(faceaux.__all__))
def test_public_name_states_its_shape_contract(name):
    doc = public_docstring(name)
    assert doc.strip(), f"faceaux.{name} has no docstring"
    assert re.search(r"^\s*Shape:", doc, re.MULTILINE), f"faceaux.{name}: no 'Shape:' section"


FIGURE_SCRIPTS = sorted((ROOT / "examples" / "doc_figures").glob("[!_]*.py"))


@pytest.mark.parametrize("script", FIGURE_SCRIPTS, ids=lambda p: p.stem)
def test_figure_script_draws_what_the_page_shows(script, tmp_path, monkeypatch):
    """Each docs figure is reproducible: its script runs from any cwd and writes small PNGs with
    the names the pages use."""
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(script.parent))  # the scripts share _figures.py
    spec = importlib.util.spec_from_file_location(f"doc_figure_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn, f"{script.name} drew nothing"
    committed = {p.name for p in (DOCS / "img").glob("*.png")}
    assert set(drawn) <= committed, f"not in docs/img: {set(drawn) - committed}"
    for png in tmp_path.glob("*.png"):
        assert png.stat().st_size < 200_000, f"{png.name} is {png.stat().st_size} bytes"


def test_every_docs_image_exists():
    for page in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / target).resolve().is_file(), f"{page.name}: missing {target}"


def test_notebooks_are_small():
    notebooks = sorted((ROOT / "examples").glob("*.ipynb"))
    assert len(notebooks) >= 6, [n.name for n in notebooks]
    for nb in notebooks:
        assert nb.stat().st_size < 1_000_000, f"{nb.name} is {nb.stat().st_size} bytes"
