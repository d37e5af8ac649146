"""Figure for docs/models.md: parameters of every registered reference model, counted live.

Every model in ``faceaux.list_models()`` is built with its default configuration on PyTorch's
``meta`` device (shapes only, no memory, no initialisation cost), its parameters are counted,
split into trainable ones and frozen ones (the FAN of ``fanface_*`` and the parsing network of
``fsenet_*``), and a meta forward pass on its input size gives the embedding size. The bars are
those counts; running the script also prints them as the Markdown table of the page.

Run: ``python examples/doc_figures/models.py [out_dir]`` (default docs/img).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from _figures import ROOT, save_png

from faceaux import create_model, list_models


def input_size(name: str) -> tuple[int, int]:
    """The (H, W) each model is built for (STN-Face resizes any input itself; 128 shown)."""
    if name.startswith("mtl_attr"):
        return (112, 96)
    if name.startswith("stnface"):
        return (128, 128)
    return (112, 112)


def count(name: str) -> dict[str, int | str]:
    """Parameters (all / trainable) and embedding size of ``create_model(name)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "FAN / parser randomly initialised"
        with torch.device("meta"):
            model = create_model(name).eval()
            embedding = model(torch.empty(1, 3, *input_size(name)))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "name": name,
        "total": total,
        "trainable": trainable,
        "embedding": embedding.shape[1],
        "input": "{}×{}".format(*input_size(name)),
    }


def compute() -> list[dict[str, int | str]]:
    return [count(name) for name in list_models()]


def main(out_dir: str | Path) -> Path:
    rows = compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["total"])
    names = [r["name"] for r in rows]
    trainable = [r["trainable"] / 1e6 for r in rows]
    frozen = [(r["total"] - r["trainable"]) / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(9.0, 5.4))
    ax.barh(names, trainable, color="tab:blue", label="trainable")
    ax.barh(
        names,
        frozen,
        left=trainable,
        color="tab:gray",
        label="not trained (frozen FAN, parsing net)",
    )
    for y, r in enumerate(rows):
        ax.text(
            r["total"] / 1e6 + 0.6,
            y,
            f"{r['total'] / 1e6:.2f} M  (D = {r['embedding']}, {r['input']})",
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("parameters (millions), default configuration")
    ax.set_xlim(0, max(r["total"] for r in rows) / 1e6 * 1.42)
    ax.set_title("faceaux.list_models(): parameters counted on the meta device", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "models_parameters.png"
    save_png(fig, path)
    print("| model | input | D | parameters | trainable |")
    print("|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["name"]):
        print(
            f"| `{r['name']}` | {r['input']} | {r['embedding']} | {r['total']:,} "
            f"| {r['trainable']:,} |"
        )
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
