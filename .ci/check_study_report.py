"""Check a `faceaux study` output folder: every experiment and arm, finite intervals, the files.

Usage: python .ci/check_study_report.py OUT_DIR
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from faceaux.study.experiments import EXPERIMENTS


def main(out: Path) -> int:
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    problems = []
    seeds = results["settings"]["seeds"]
    for name, experiment in EXPERIMENTS.items():
        result = results["experiments"].get(name)
        if result is None:
            problems.append(f"{name}: missing from results.json")
            continue
        if experiment.title not in report:
            problems.append(f"{name}: no section in report.md")
        if not (out / f"{name}.png").is_file():
            problems.append(f"{name}: no figure {name}.png")
        for arm in experiment.arms:
            runs = result["runs"].get(arm.name, [])
            if len(runs) != seeds:
                problems.append(f"{name}/{arm.name}: {len(runs)} runs, expected {seeds}")
            if f"| {arm.label} |" not in report:
                problems.append(f"{name}/{arm.name}: no row in report.md")
            summary = result["summary"][arm.name]
            if not math.isfinite(summary["mean"]):
                problems.append(f"{name}/{arm.name}: mean is not finite")
            if arm is not experiment.arms[0]:
                d = summary["difference"]
                if not all(math.isfinite(d[k]) for k in ("mean", "low", "high")):
                    problems.append(f"{name}/{arm.name}: interval not finite: {d}")
    if not math.isfinite(results["wall_seconds"]):
        problems.append("wall_seconds is not finite")
    for problem in problems:
        print("study report:", problem, file=sys.stderr)
    if not problems:
        print(
            f"study report: {len(EXPERIMENTS)} experiments, every arm with {seeds} seeds and a "
            f"finite 95 % interval; {results['wall_seconds']:.0f} s"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
