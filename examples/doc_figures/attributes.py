"""Figure for docs/layers/attributes.md: majority voting of per-image attribute labels (§3.2).

The multi-task paper labels its training set with an attribute classifier run per image, then
gives every image of an identity that identity's majority label ("15 images of Bruce Lee, 14
predicted male, one female → all male"). Here the per-image classifier is simulated by flipping
each ground-truth label of a ``SyntheticFaces`` identity independently with probability p; the
vote is :func:`faceaux.majority_vote`.

Left: one identity with 15 images at p = 0.2. Rows: the 15 per-image labels (a cross marks a
flipped label), the majority vote, and the identity's ground truth (``identity_attributes``).

Right: fraction of labels equal to the ground truth after the vote, against p, for 1 (no
vote), 3, 5 and 15 images per identity, over the seven attributes of 100 synthetic identities
and 4 independent noise draws per point (2,800 labels per point).

Run: ``python examples/doc_figures/attributes.py [out_dir]`` (default docs/img).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from _figures import ROOT, save_png

from faceaux import SyntheticFaces, majority_vote
from faceaux.data import SYNTHETIC_ATTRIBUTES

IMAGES_SHOWN = 15
FLIP_SHOWN = 0.2
COUNTS = (1, 3, 5, 15)
RATES = np.linspace(0.0, 0.5, 11)
DRAWS = 4


def noisy_labels(truth: torch.Tensor, n: int, p: float, gen: torch.Generator) -> tuple:
    """``n`` copies of every identity's labels, each entry flipped with probability ``p``."""
    labels = truth.repeat_interleave(n, dim=0)  # (I·n, M), identity-major
    flips = torch.rand(labels.shape, generator=gen) < p
    identities = torch.arange(truth.shape[0]).repeat_interleave(n)
    return torch.where(flips, 1 - labels, labels), identities, flips


def compute() -> dict:
    # Only the identity-level attributes are used: render the smallest images the set allows.
    data = SyntheticFaces(num_identities=100, images_per_identity=1, size=(8, 8), seed=0)
    truth = data.identity_attributes  # (100, 7), 0/1
    gen = torch.Generator().manual_seed(0)

    one = truth[3:4]  # an identity with both 0 and 1 attributes
    labels, identities, flips = noisy_labels(one, IMAGES_SHOWN, FLIP_SHOWN, gen)
    vote = majority_vote(labels, identities)[0]

    accuracy = {}
    for n in COUNTS:
        curve = []
        for p in RATES:
            correct = []
            for _ in range(DRAWS):
                noisy, ids, _ = noisy_labels(truth, n, float(p), gen)
                voted = majority_vote(noisy, ids)[::n]  # one row per identity
                correct.append((voted == truth).float().mean().item())
            curve.append(float(np.mean(correct)))
        accuracy[n] = np.array(curve)
    return {"labels": labels, "flips": flips, "vote": vote, "truth": one[0], "accuracy": accuracy}


def main(out_dir: str | Path) -> Path:
    r = compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.0, 1.15]}
    )

    matrix = torch.cat([r["labels"], r["vote"][None], r["truth"][None]]).numpy()
    rows = IMAGES_SHOWN + 2
    display = np.insert(matrix, IMAGES_SHOWN, np.nan, axis=0)  # a gap before the vote row
    left.imshow(display, cmap="Blues", vmin=-0.4, vmax=1.2, aspect="auto")
    flips = r["flips"].numpy()
    ys, xs = np.nonzero(flips)
    left.scatter(xs, ys, marker="x", color="crimson", s=40)
    left.set_xticks(range(len(SYNTHETIC_ATTRIBUTES)))
    left.set_xticklabels(SYNTHETIC_ATTRIBUTES, rotation=35, ha="right", fontsize=8)
    ticks = [*range(IMAGES_SHOWN), IMAGES_SHOWN + 1, IMAGES_SHOWN + 2]
    names = [f"image {i + 1}" for i in range(IMAGES_SHOWN)] + ["majority vote", "ground truth"]
    left.set_yticks(ticks)
    left.set_yticklabels(names, fontsize=7)
    for y in (IMAGES_SHOWN + 1, IMAGES_SHOWN + 2):
        for x in range(matrix.shape[1]):
            value = int(matrix[y - 1, x])
            left.text(x, y, str(value), ha="center", va="center", fontsize=8,
                      color="white" if value else "black")  # fmt: skip
    left.set_title(
        f"one identity, {IMAGES_SHOWN} images, labels flipped with p = {FLIP_SHOWN}\n"
        "dark = 1, light = 0, red × = flipped label",
        fontsize=9,
    )
    left.set_ylim(rows + 0.5, -0.5)

    for n, curve in r["accuracy"].items():
        label = "1 image (no vote)" if n == 1 else f"{n} images per identity"
        right.plot(RATES, curve, "o-", markersize=3, label=label)
    right.set_xlabel("p, probability that the per-image classifier flips a label")
    right.set_ylabel("labels equal to the ground truth after majority_vote")
    right.set_title(
        f"majority_vote: 100 identities × 7 attributes × {DRAWS} noise draws", fontsize=9
    )
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "attributes_majority_vote.png"
    save_png(fig, path)
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
