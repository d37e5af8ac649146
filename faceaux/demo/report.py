"""The demo's report: a Markdown table, compact JSON (ROC curves in their own file), a ROC plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "save_report"]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (one row per variant).

    Shape:
        No tensors: one Markdown line per row, after a two-line header.

    Examples:
        >>> row = {"variant": "baseline", "extra_params": 0, "train_seconds": 1.0,
        ...        "accuracy": 0.9, "accuracy_std": 0.01, "tar_at_far_1e-2": 0.5, "eer": 0.1,
        ...        "final_map": "7×7"}
        >>> print(format_table([row]).splitlines()[2])
        | baseline | 7×7 | +0 | 1.0 | 0.9000 ± 0.0100 | 0.5000 | 0.1000 |
    """
    lines = [
        "| variant | final map | extra params | train time (s) | 10-fold accuracy "
        "| TAR@FAR=1e-2 | EER |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['final_map']} | {r['extra_params']:+,} | "
            f"{r['train_seconds']:.1f} | {r['accuracy']:.4f} ± {r['accuracy_std']:.4f} | "
            f"{r['tar_at_far_1e-2']:.4f} | {r['eer']:.4f} |"
        )
    return "\n".join(lines)


def save_report(
    rows: Sequence[dict[str, Any]], settings: dict[str, Any], table: str, out: str | Path
) -> list[Path]:
    """Write ``results.json`` (compact, no curves), ``roc.json``, ``results.md`` and, with
    matplotlib, ``roc.png`` into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {r["variant"]: {"fpr": r["fpr"], "tpr": r["tpr"]} for r in rows}
    summary = [{k: v for k, v in r.items() if k not in ("fpr", "tpr")} for r in rows]
    (out / "results.json").write_text(
        json.dumps({"settings": settings, "results": summary}, separators=(",", ":"))
    )
    (out / "roc.json").write_text(json.dumps(curves, separators=(",", ":")))
    header = (
        f"# faceaux demo\n\nSettings: `{json.dumps(settings)}`\n\n"
        "Accuracy: LFW 10-fold protocol on pairs of held-out identities (mean ± std over folds). "
        "Train time: wall clock of this run. One seed: differences of a few points between "
        "variants are within run-to-run noise; `faceaux study` gives confidence intervals.\n\n"
    )
    (out / "results.md").write_text(header + table + "\n")
    written = [out / "results.json", out / "roc.json", out / "results.md"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in rows:
        ax.plot(r["fpr"], r["tpr"], label=f"{r['variant']} (AUC {r['auc']:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)
    written.append(out / "roc.png")
    return written
