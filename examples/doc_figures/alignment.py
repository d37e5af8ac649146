"""Figure for docs/layers/alignment.md (learned alignment with a spatial transformer).

Top row: one 128×128 SyntheticFaces face (posed and misaligned) with the sampling grid that
``warp`` reads for a 112×112 output, for the identity, a similarity, an affine and a projective
matrix built by ``transform_matrix`` from hand-picked parameters (the kind of matrix the
localisation network of ``SpatialTransformerAlign`` regresses), and for the classical 5-point
alignment (``similarity_from_landmarks`` onto ``ARCFACE_TEMPLATE_112``, converted with
``from_pixel_matrix``). Bottom row: the 112×112 outputs of ``warp``; the last one also shows the
ArcFace template points and where the face's five points landed.

Run: ``python examples/doc_figures/alignment.py [out_dir]`` (default docs/img).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from _figures import ROOT, save_png

from faceaux import (
    ARCFACE_TEMPLATE_112,
    SpatialTransformerAlign,
    SyntheticFaces,
    from_pixel_matrix,
    similarity_from_landmarks,
    to_pixel_matrix,
    transform_matrix,
    warp,
)

IN_SIZE = (128, 128)
OUT_SIZE = (112, 112)


def five_points(landmarks: torch.Tensor) -> torch.Tensor:
    """(B, 68, 2) → (B, 5, 2) in the template's layout: eye centres, nose tip, mouth corners."""
    left_eye = landmarks[:, 36:42].mean(dim=1)
    right_eye = landmarks[:, 42:48].mean(dim=1)
    return torch.stack(
        [left_eye, right_eye, landmarks[:, 30], landmarks[:, 48], landmarks[:, 54]], dim=1
    )


def grid_in_input_pixels(matrix: torch.Tensor, step: int = 8) -> torch.Tensor:
    """Input-pixel positions of every ``step``-th output pixel (where ``warp`` samples)."""
    pixel = to_pixel_matrix(matrix, IN_SIZE, OUT_SIZE)  # input pixel → output pixel
    back = torch.linalg.inv(pixel)[0]  # output pixel → input pixel
    v, u = torch.meshgrid(
        torch.arange(0, OUT_SIZE[0], step, dtype=torch.float64).add(step / 2 - 0.5),
        torch.arange(0, OUT_SIZE[1], step, dtype=torch.float64).add(step / 2 - 0.5),
        indexing="ij",
    )
    homogeneous = torch.stack([u, v, torch.ones_like(u)], dim=-1) @ back.T.to(torch.float64)
    return homogeneous[..., :2] / homogeneous[..., 2:]


def compute() -> dict:
    torch.manual_seed(0)
    data = SyntheticFaces(num_identities=5, images_per_identity=2, size=IN_SIZE, seed=3)
    sample = data[2]
    image = sample["image"][None]  # (1, 3, 128, 128)
    landmarks = sample["landmarks"][None]  # (1, 68, 2)

    matrices = {
        "identity": transform_matrix(torch.zeros(1, 0), "identity"),
        "similarity": transform_matrix(
            torch.tensor([[0.85, math.radians(12), 0.05, 0.02]]), "similarity"
        ),
        "affine": transform_matrix(torch.tensor([[0.80, 0.15, 0.0, -0.05, 0.95, 0.05]]), "affine"),
        "projective": transform_matrix(
            torch.tensor([[0.85, 0.0, 0.0, 0.0, 0.85, 0.05, 0.30, 0.0]]), "projective"
        ),
    }
    src = five_points(landmarks)
    similarity_px = similarity_from_landmarks(src)  # input pixel → template pixel
    matrices["5-point → ArcFace"] = from_pixel_matrix(similarity_px, IN_SIZE, OUT_SIZE)

    warped = {name: warp(image, m, OUT_SIZE) for name, m in matrices.items()}
    grids = {name: grid_in_input_pixels(m.double()) for name, m in matrices.items()}

    moved = torch.cat([src, torch.ones(1, 5, 1)], dim=-1) @ similarity_px[0].T
    residual = (moved[0, :, :2] - ARCFACE_TEMPLATE_112).norm(dim=-1)

    # At initialisation a SpatialTransformerAlign is exactly the plain resize (identity warp).
    stn = SpatialTransformerAlign("projective", output_size=OUT_SIZE).eval()
    with torch.no_grad():
        stn_out = stn(image)
    stn_gap = (stn_out - warped["identity"]).abs().max().item()
    return {
        "image": image[0],
        "warped": warped,
        "grids": grids,
        "aligned_points": moved[0, :, :2],
        "residual": residual,
        "stn_gap": stn_gap,
    }


def main(out_dir: str | Path) -> Path:
    r = compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(r["warped"])
    fig, axes = plt.subplots(2, len(names), figsize=(10.5, 5.0))
    rgb = r["image"].permute(1, 2, 0).numpy()
    for column, name in enumerate(names):
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(rgb)
        grid = r["grids"][name].numpy()
        for row in range(grid.shape[0]):
            top.plot(grid[row, :, 0], grid[row, :, 1], c="yellow", lw=0.6)
        for col in range(grid.shape[1]):
            top.plot(grid[:, col, 0], grid[:, col, 1], c="yellow", lw=0.6)
        top.set_xlim(-0.5, IN_SIZE[1] - 0.5)
        top.set_ylim(IN_SIZE[0] - 0.5, -0.5)
        top.set_title(name, fontsize=10)
        bottom.imshow(r["warped"][name][0].permute(1, 2, 0).clamp(0, 1).numpy())
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    last = axes[1, -1]
    template = ARCFACE_TEMPLATE_112.numpy()
    last.scatter(*template.T, s=45, facecolors="none", edgecolors="cyan", lw=1.2)
    last.scatter(*r["aligned_points"].numpy().T, s=8, c="red")
    rms = r["residual"].square().mean().sqrt()
    last.set_title(f"template ○, face • (RMS {rms:.1f} px)", fontsize=8)
    axes[1, 0].set_title(f"= STN at init (max diff {r['stn_gap']:.0e})", fontsize=8)
    axes[0, 0].set_ylabel("128×128 input + sampling grid", fontsize=9)
    axes[1, 0].set_ylabel("warp → 112×112", fontsize=9)
    fig.suptitle("warp with transform_matrix kinds, and classical 5-point alignment", fontsize=11)
    fig.tight_layout(h_pad=1.2)
    path = save_png(fig, out_dir / "alignment.png")
    print(
        f"wrote {path}; 5-point residual RMS {r['residual'].square().mean().sqrt():.2f} px, "
        f"STN-at-init vs resize max |diff| {r['stn_gap']:.2e}"
    )
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
