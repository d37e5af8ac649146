"""Figure for docs/layers/landmark-integration.md (FAN-Face heatmaps and integration layer).

Top row: a SyntheticFaces face with its 68 ground-truth landmarks (the 51 internal points that
FAN-Face stacks, the 17 jaw points it drops, and the FIVE_POINT subset); the 51 internal heatmaps
rendered at FAN's 64×64 resolution by ``render_heatmaps`` and summed; the image channels plus the
51 heatmaps as ``HeatmapStacker`` stacks them at 112×112 (heatmaps summed, over the grey image);
the landmarks decoded back from the 64×64 heatmaps by ``heatmaps_to_landmarks``.

Bottom row: one ``FANIntegrationLayer`` (Basic Layer) merging those heatmaps (standing in for a
FAN feature, Cl = 51 at 64×64) into the 56×56 stage-1 feature of an untrained ``iresnet_nano``
(Ck = 16): the channel-mean magnitude of y, of the aligned FAN feature x' = Conv1×1(BN(x)), of
AdaIN(y; x'), of γ·f(x, y) and of ỹ = y + γ·f(x, y). The layer is freshly initialised (not
trained): the panels show where the FAN signal enters, not what a trained network learns.

Run: ``python examples/doc_figures/landmark_integration.py [out_dir]`` (default docs/img).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from _figures import ROOT, save_png

from faceaux import (
    FIVE_POINT,
    INTERNAL_51,
    FANIntegrationLayer,
    HeatmapStacker,
    SyntheticFaces,
    adain,
    heatmaps_to_landmarks,
    render_heatmaps,
)
from faceaux.models import create_model

FAN_MAP = 64  # FAN's heatmap resolution (256×256 input / 4)


def compute() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    data = SyntheticFaces(num_identities=5, images_per_identity=2, size=(112, 112), seed=3)
    image = data[8]["image"][None]  # (1, 3, 112, 112) in [0, 1]
    landmarks = data[8]["landmarks"][None]  # (1, 68, 2) pixels of the 112×112 image

    # Heatmaps at FAN's 64×64: landmarks rescaled to that map (pixel centres on integers).
    scale = FAN_MAP / 112
    fan_points = (landmarks + 0.5) * scale - 0.5
    heatmaps = render_heatmaps(fan_points, size=(FAN_MAP, FAN_MAP), sigma=1.0)  # (1, 68, 64, 64)
    decoded, confidence = heatmaps_to_landmarks(heatmaps)
    decoded_px = (decoded + 0.5) / scale - 0.5  # back to 112×112 pixels
    error = (decoded_px - landmarks).norm(dim=-1)

    stacked = HeatmapStacker()(image, heatmaps)  # (1, 3 + 51, 112, 112)

    # Integration: an untrained iresnet_nano's stage-1 feature (16 × 56 × 56) and the heatmaps.
    backbone = create_model("iresnet_nano").eval()
    layer = FANIntegrationLayer(len(INTERNAL_51), 16, "basic").eval()
    with torch.no_grad():
        y = backbone.layer1(backbone.forward_stem(image * 2 - 1))  # faces in [-1, 1]
        x = torch.nn.functional.interpolate(
            heatmaps[:, list(INTERNAL_51)], size=y.shape[-2:], mode="bilinear"
        )
        x_aligned = layer.align(layer.norm(x))
        y_styled = adain(y, x_aligned)
        out = layer(y, heatmaps[:, list(INTERNAL_51)])
    return {
        "image": image[0],
        "landmarks": landmarks[0],
        "heatmaps": heatmaps[0],
        "stacked": stacked[0],
        "decoded": decoded_px[0],
        "confidence": confidence[0],
        "error": error[0],
        "y": y[0],
        "x_aligned": x_aligned[0],
        "y_styled": y_styled[0],
        "delta": (out - y)[0],
        "out": out[0],
    }


def main(out_dir: str | Path) -> Path:
    r = compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 5, figsize=(11, 5))
    rgb = r["image"].permute(1, 2, 0).numpy()
    points = r["landmarks"].numpy()
    internal = list(INTERNAL_51)

    ax = axes[0, 0]
    ax.imshow(rgb)
    ax.scatter(*points[:17].T, s=6, c="tab:orange")
    ax.scatter(*points[internal].T, s=6, c="cyan")
    ax.scatter(*points[list(FIVE_POINT)].T, s=40, facecolors="none", edgecolors="red", lw=1.2)
    ax.set_title("jaw 0–16 (orange, dropped),\n51 internal (cyan), 5-point (red)", fontsize=8)

    ax = axes[0, 1]
    ax.imshow(r["heatmaps"][internal].sum(0).numpy(), cmap="magma")
    ax.set_title("render_heatmaps at 64×64\n(Σ of the 51 maps)", fontsize=9)

    ax = axes[0, 2]
    grey = r["stacked"][:3].mean(0).numpy()
    ax.imshow(grey, cmap="gray")
    ax.imshow(r["stacked"][3:].sum(0).clamp(max=1).numpy(), cmap="magma", alpha=0.6)
    ax.set_title(
        f"HeatmapStacker: 3 + 51 = {r['stacked'].shape[0]} ch\n(heatmaps summed)", fontsize=9
    )

    ax = axes[0, 3]
    ax.imshow(rgb)
    ax.scatter(
        *points[internal].T,
        s=18,
        facecolors="none",
        edgecolors="white",
        lw=0.8,
        label="ground truth",
    )
    ax.scatter(*r["decoded"][internal].numpy().T, s=5, c="red", label="decoded")
    ax.legend(loc="lower center", fontsize=6.5, framealpha=0.8)
    err = r["error"][internal]
    ax.set_title(f"heatmaps_to_landmarks\n(mean error {err.mean():.2f} px)", fontsize=9)

    ax = axes[0, 4]
    ax.hist(r["error"][internal].numpy(), bins=12, color="tab:blue")
    ax.set_title("decoding error, px at 112×112\n(argmax + ¼-pixel refinement)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.set_aspect("auto")

    panels = [
        ("y: FRN stage-1 (16×56×56)", r["y"]),
        ("x' = Conv1×1(BN(x))", r["x_aligned"]),
        ("AdaIN(y; x')", r["y_styled"]),
        ("γ·f(x, y), Basic Layer", r["delta"]),
        ("ỹ = y + γ·f(x, y)", r["out"]),
    ]
    for ax, (title, tensor) in zip(axes[1], panels, strict=True):
        ax.imshow(tensor.abs().mean(0).numpy(), cmap="viridis")
        ax.set_title(title + "\n(channel mean |·|)", fontsize=9)
    for ax in axes.flat:
        if ax is not axes[0, 4]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "FAN-Face: landmark heatmaps (top) and one integration layer, untrained (bottom)",
        fontsize=11,
    )
    fig.tight_layout()
    path = save_png(fig, out_dir / "landmark_integration.png")
    print(f"wrote {path}; mean decoding error {r['error'][internal].mean():.3f} px")
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
