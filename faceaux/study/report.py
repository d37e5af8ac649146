"""The study's report: ``report.md``, ``results.json`` and one figure per experiment.

Every sentence with a number is generated from the results it describes; the verdict of an arm
is read off its interval: "higher" or "lower" when the 95 % interval of the paired difference
excludes zero, "no detectable difference" otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from faceaux.study.experiments import CONDITIONS, EXPERIMENTS

__all__ = ["markdown", "verdict", "write_report"]


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}"


def verdict(difference: dict[str, Any]) -> str:
    """ "higher" / "lower" (the interval excludes zero) or "no detectable difference".

    Shape:
        A dict of :func:`~faceaux.study.stats.paired_difference` in, a ``str`` out.

    Examples:
        >>> verdict({"low": 0.01, "high": 0.05, "excludes_zero": True})
        'higher'
    """
    if not difference["excludes_zero"]:
        return "no detectable difference"
    return "higher" if difference["low"] > 0 else "lower"


def _experiment_section(name: str, result: dict[str, Any]) -> list[str]:
    experiment = EXPERIMENTS[name]
    summary = result["summary"]
    seeds = len(next(iter(result["runs"].values())))
    first = next(iter(result["runs"].values()))[0]
    lines = [
        f"## {experiment.title}",
        "",
        f"*Paper:* {experiment.paper}. *Claim:* {experiment.claim}",
        f"*The paper's numbers:* {experiment.paper_result}.",
        "",
        f"*Condition:* {CONDITIONS[experiment.condition].description}. *Metric:* "
        f"{result['metric']} ({first['n_genuine']:,} genuine and {first['n_impostor']:,} "
        f"impostor pairs per seed), {seeds} seeds paired across arms.",
        "",
        "| arm | TAR@FAR=1e-3 (%) mean ± sd | Δ vs baseline (points) [95 % t-CI] | verdict "
        "| 10-fold acc. (%) | EER (%) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for arm in experiment.arms:
        s = summary[arm.name]
        label = s["label"]
        if "difference" in s:
            d = s["difference"]
            delta = f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            call = verdict(d)
        else:
            delta, call = "baseline", ""
        lines.append(
            f"| {label} | {_pct(s['mean'])} ± {_pct(s['std'])} | {delta} | {call} | "
            f"{_pct(s['accuracy'])} | {_pct(s['eer'])} |"
        )
    claims = [a for a in experiment.arms[1:] if not a.upper_bound]
    reading = []
    for arm in claims:
        d = summary[arm.name]["difference"]
        word = "from" if verdict(d) == "no detectable difference" else "than"
        reading.append(
            f"{summary[arm.name]['label']}: {verdict(d)} {word} "
            f"{summary[experiment.arms[0].name]['label']} "
            f"({100 * d['mean']:+.1f} points, 95 % CI [{100 * d['low']:+.1f}, "
            f"{100 * d['high']:+.1f}])"
        )
    lines += ["", "*Reading:* " + "; ".join(reading) + ".", ""]
    if name == "gnap":
        ff = {
            arm.name: np.mean([r["ff_tar@1e-3"] for r in result["runs"][arm.name]])
            for arm in experiment.arms
        }
        lines += [
            "Frontal–frontal TAR@FAR=1e-3 (%) for comparison: "
            + ", ".join(f"{summary[a]['label']} {_pct(v)}" for a, v in ff.items())
            + ".",
            "",
        ]
    lines += [f"![{name}]({name}.png)", ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The report as Markdown (what ``report.md`` holds).

    Shape:
        The :func:`faceaux.study.run_study` dict in, a ``str`` out.
    """
    env = results["environment"]
    settings = results["settings"]
    lines = [
        "# faceaux study",
        "",
        f"Measured by `faceaux study` in {results['wall_seconds'] / 60:.1f} min on "
        f"{env['device']} ({env['machine']}, {env['threads']} threads of {env['cpu_count']} "
        f"CPUs), torch {env['torch']}, faceaux {env['faceaux']}.",
        "",
        f"Settings: {settings['seeds']} seeds from {settings['seed']}; per seed "
        f"{settings['train_identities']} training identities × "
        f"{settings['images_per_identity']} images and {settings['test_identities']} test "
        f"identities × 8 images (new identities per seed), {settings['epochs']} epochs, batch "
        f"{settings['batch_size']}, SGD lr {settings['lr']} with warm-up and cosine decay; the "
        "network is iresnet_nano at 56×56 with a stride-8 body (7×7 final map).",
        "",
        "Δ is the mean over seeds of the paired difference arm − baseline (same data and "
        "initialisation stream per seed), in points of TAR; the interval is the Student-t 95 % "
        "interval of that mean (n − 1 degrees of freedom). 'higher'/'lower' mean the interval "
        "excludes zero.",
        "",
    ]
    quality = results.get("side_networks", {})
    if quality:
        parts = []
        if "fan" in quality:
            error = quality["fan"]["landmark_error_px"]
            parts.append(
                f"the FAN reaches a mean landmark error of {error:.2f} px (56-px faces, "
                "held-out images)"
            )
        if "parser" in quality:
            parts.append(
                f"the parser {100 * quality['parser']['pixel_accuracy']:.1f} % pixel accuracy and "
                f"{100 * quality['parser']['part_iou']:.1f} % mean part IoU"
            )
        lines += [
            f"Side networks, trained first on {quality['images']} faces of other identities: "
            + "; ".join(parts)
            + ".",
            "",
        ]
    for name in results["experiments"]:
        lines += _experiment_section(name, results["experiments"][name])
    return "\n".join(lines)


def _figure(name: str, result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from faceaux.study import _ROC_GRID
    from faceaux.study.stats import student_t_quantile

    experiment = EXPERIMENTS[name]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, arm in enumerate(experiment.arms):
        values = np.array([r["tar@1e-3"] for r in result["runs"][arm.name]])
        n = len(values)
        half = student_t_quantile(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
        left.errorbar(i, values.mean(), yerr=half, fmt="o", capsize=4, color=f"C{i}")
        left.scatter(np.full(n, i) + 0.12, values, s=9, color=f"C{i}", alpha=0.5)
        curves = np.array([r["roc_tpr"] for r in result["runs"][arm.name]])
        right.plot(_ROC_GRID, curves.mean(0), color=f"C{i}", label=arm.label)
    left.set_xticks(range(len(experiment.arms)))
    left.set_xticklabels([a.name for a in experiment.arms], rotation=20, fontsize=8)
    left.set_ylabel("TAR@FAR=1e-3 (mean, 95 % CI)")
    left.grid(True, alpha=0.3)
    right.set_xscale("log")
    right.set_xlim(1e-4, 1)
    right.set_xlabel("false accept rate")
    right.set_ylabel("true accept rate (mean over seeds)")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=7, loc="lower right")
    fig.suptitle(experiment.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(results: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``results.json``, ``report.md`` and ``<experiment>.png`` figures into ``out``.

    Shape:
        The :func:`faceaux.study.run_study` dict in; the written paths out.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, separators=(",", ":"), default=float))
    (out / "report.md").write_text(markdown(results) + "\n")
    written = [out / "results.json", out / "report.md"]
    for name, result in results["experiments"].items():
        if _figure(name, result, out / f"{name}.png"):
            written.append(out / f"{name}.png")
    return written
