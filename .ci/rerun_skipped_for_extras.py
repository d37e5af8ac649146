"""Re-run the tests that the README's test command skipped for want of an optional extra.

CI runs the README's `pip install ".[dev]" && pytest` as written, so tests that need another
extra (onnx, demo, …) skip there. After CI installs every extra, this reads that run's JUnit XML
(written through PYTEST_ADDOPTS, which leaves the command itself as the README has it) and runs
exactly those tests with pytest.main — not `python -m pytest`, which would put the checkout
first on sys.path and test the source tree instead of the installed package.

A test counts when its skip reason names one of the extras given (``the onnx extra``,
``faceaux[onnx]``); skips for a GPU, for packages no extra provides (timm, torchvision) or for
opt-in slow runs stay skipped. A listed test that skips again with the extras installed fails
the step.

Usage: python .ci/rerun_skipped_for_extras.py READMES_RUN.xml onnx,demo,docs,notebooks,train
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def node_id(classname: str, name: str) -> str:
    """``tests.models.test_export`` + ``test_x[cpu]`` → ``tests/models/test_export.py::test_x[cpu]``
    (trailing parts that are not a file are test classes)."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = Path(*parts[:end]).with_suffix(".py")
        if (ROOT / path).is_file():
            return "::".join([path.as_posix(), *parts[end:], name])
    raise ValueError(f"no test file for {classname!r}")


def skipped_for_extras(junit: Path, extras: list[str]) -> list[str]:
    names = "|".join(re.escape(extra) for extra in extras)
    for_an_extra = re.compile(rf"\b(?:{names})`?\s+extra\b|faceaux\[(?:{names})\]")
    ids = []
    for case in ET.parse(junit).iter("testcase"):
        skip = case.find("skipped")
        if skip is None or skip.get("type") != "pytest.skip":  # xfail is reported as skipped too
            continue
        if for_an_extra.search(skip.get("message", "")):
            ids.append(node_id(case.get("classname", ""), case.get("name", "")))
    return ids


class StillSkipped:
    """A pytest plugin that remembers the tests that skipped again."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.ids.append(report.nodeid)


def main() -> int:
    ids = skipped_for_extras(Path(sys.argv[1]), sys.argv[2].split(","))
    print(f"{len(ids)} tests were skipped for want of an extra", flush=True)
    for node in ids:
        print(f"  {node}")
    if not ids:
        return 0
    plugin = StillSkipped()
    status = int(pytest.main(["-p", "no:cacheprovider", "-q", "-rs", *ids], plugins=[plugin]))
    if plugin.ids:
        print(f"still skipped with every extra installed: {plugin.ids}", file=sys.stderr)
        return status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
