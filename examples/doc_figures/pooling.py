"""Figure for docs/layers/pooling.md (GNAP, global norm-aware pooling).

For two SyntheticFaces faces — the most frontal and the most turned (largest perspective term
of the rendering warp) of a small batch — the figure shows the 7×7 local-feature norms ‖F_ij‖
(eq. 1) of the last feature map of an untrained ``iresnet18_gnap`` (the paper's
LResNet18E(GNAP)) after GNAP's first fixed-gamma BatchNorm, the re-weighting factor
‖F‖_mean / ‖F_ij‖ of eq. 3, and the norms after ``norm_aware_reweight``: every local feature
now has the sample's mean norm, so global average pooling weighs all positions alike instead of
following the large-norm ones. The network is randomly initialised (BatchNorm on batch
statistics); the maps show what the block does to the map it receives, not what a trained
network attends to.

Run: ``python examples/doc_figures/pooling.py [out_dir]`` (default docs/img).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from _figures import ROOT, save_png

from faceaux import SyntheticFaces, norm_aware_reweight
from faceaux.models import create_model


def compute() -> dict:
    torch.manual_seed(0)
    data = SyntheticFaces(num_identities=4, images_per_identity=3, size=(112, 112), seed=5)
    images = data.images.float() / 255  # (12, 3, 112, 112)
    turn = data.warps[:, 2, 0].abs()  # perspective term: grows with the head's yaw
    chosen = [int(turn.argmin()), int(turn.argmax())]

    model = create_model("iresnet18_gnap").train()  # BatchNorm on batch statistics
    with torch.no_grad():
        feature_map = model.forward_features(images * 2 - 1)  # (12, 512, 7, 7), before GNAP
        normalised = model.gnap.input_norm(feature_map)  # GNAP's first fixed-gamma BN
        reweighted = norm_aware_reweight(normalised)  # eq. 3
        embedding = model.gnap(feature_map)  # the whole block: (12, 512)
    before = normalised.norm(dim=1)  # (12, 7, 7), eq. 1
    after = reweighted.norm(dim=1)
    ratio = before.mean(dim=(1, 2), keepdim=True) / before  # eq. 3's factor
    return {
        "images": images[chosen],
        "before": before[chosen],
        "ratio": ratio[chosen],
        "after": after[chosen],
        "shapes": (tuple(feature_map.shape), tuple(embedding.shape)),
    }


def main(out_dir: str | Path) -> Path:
    r = compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(9.6, 5.2))
    labels = ("most frontal", "most turned")
    for row in range(2):
        before, ratio, after = r["before"][row], r["ratio"][row], r["after"][row]
        low, high = float(before.min()), float(before.max())
        ax = axes[row, 0]
        ax.imshow(r["images"][row].permute(1, 2, 0).numpy())
        ax.set_title(f"input, {labels[row]}", fontsize=9)
        panels = (
            (1, before, f"‖F_ij‖ (eq. 1): {low:.1f} … {high:.1f}", low, high, "viridis"),
            (2, ratio, "‖F‖_mean / ‖F_ij‖ (eq. 3)", None, None, "coolwarm"),
            (
                3,
                after,
                f"after re-weighting: {float(after.mean()):.1f} everywhere",
                low,
                high,
                "viridis",
            ),
        )
        for column, tensor, title, vmin, vmax, cmap in panels:
            ax = axes[row, column]
            if cmap == "coolwarm":
                spread = float((tensor - 1).abs().max())
                vmin, vmax = 1 - spread, 1 + spread
            image = ax.imshow(tensor.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
            ax.set_title(title, fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "GNAP on the 7×7 map of an untrained iresnet18_gnap: local-feature norms before and "
        "after norm-aware re-weighting",
        fontsize=10,
    )
    fig.tight_layout()
    path = save_png(fig, out_dir / "pooling.png")
    feature_shape, embedding_shape = r["shapes"]
    print(f"wrote {path}; feature map {feature_shape} → GNAP embedding {embedding_shape}")
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
