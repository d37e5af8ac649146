"""Figure for docs/heads.md: the target logit of every margin head as a function of the angle θ.

Every curve is the output of the library's own logits functions on a column of cosines
``cos θ`` for θ from 0° to 180° (the target class is column 0), divided by the scale ``s``:

- left: :func:`faceaux.margin_logits` for the plain normalised softmax, CosFace (m3 = 0.35),
  ArcFace (m2 = 0.5, with its linear fallback beyond θ = π − m) and the combined margin
  (1, 0.3, 0.2); the non-target logit ``cos θ`` is the softmax curve;
- middle: :func:`faceaux.sphereface_logits` (A-Softmax, m = 4) at ‖x‖ = 1, with λ = 0 (the
  pure ψ(θ)) and λ = 5 (the floor of the annealing schedule);
- right: :func:`faceaux.adaface_logits` (m = 0.4, h = 0.333) for three feature norms whose
  standardised value ẑ = h·(‖x‖ − μ)/σ is −1, 0 and +1 (μ = 20, σ = 6).

The dashed curve of each panel is the plain ``cos θ``, the logit of every non-target class.

Run: ``python examples/doc_figures/heads.py [out_dir]`` (default docs/img).
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

from faceaux import adaface_logits, margin_logits, sphereface_logits

S = 64.0
MU, SIGMA, H = 20.0, 6.0, 0.333


def compute() -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    theta = torch.linspace(0.0, math.pi, 721, dtype=torch.float64)
    # Column 0 is the target, column 1 a dummy non-target class.
    cosine = torch.stack([torch.cos(theta), torch.zeros_like(theta)], dim=1)
    labels = torch.zeros(theta.numel(), dtype=torch.long)

    def target(logits: torch.Tensor, scale: float = S) -> torch.Tensor:
        return logits[:, 0] / scale

    margins = {
        "softmax (NormSoftmax)": target(margin_logits(cosine, labels, s=S, m2=0.0)),
        "CosFace, m3 = 0.35": target(margin_logits(cosine, labels, s=S, m2=0.0, m3=0.35)),
        "ArcFace, m2 = 0.5": target(margin_logits(cosine, labels, s=S, m2=0.5)),
        "combined (1, 0.3, 0.2)": target(margin_logits(cosine, labels, s=S, m2=0.3, m3=0.2)),
    }
    ones = torch.ones(theta.numel(), dtype=torch.float64)
    sphere = {
        "cos θ": torch.cos(theta),
        "ψ(θ), m = 4, λ = 0": target(sphereface_logits(cosine, labels, ones, m=4), 1.0),
        "m = 4, λ = 5": target(sphereface_logits(cosine, labels, ones, m=4, lambda_=5.0), 1.0),
    }
    ada = {"cos θ (no margin)": torch.cos(theta)}
    for z in (-1.0, 0.0, 1.0):
        norm = MU + z * SIGMA / H
        norms = torch.full((theta.numel(),), norm, dtype=torch.float64)
        logits = adaface_logits(cosine, labels, norms, MU, SIGMA, m=0.4, h=H, s=S)
        ada[f"ẑ = {z:+.0f} (‖x‖ = {norm:.1f})"] = target(logits)
    return {"theta": torch.rad2deg(theta), "margins": margins, "sphere": sphere, "ada": ada}


def main(out_dir: str | Path) -> Path:
    r = compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    theta = r["theta"].numpy()
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0))
    panels = (
        ("margin_logits: target logit / s", r["margins"]),
        ("sphereface_logits at ‖x‖ = 1", r["sphere"]),
        ("adaface_logits: target logit / s", r["ada"]),
    )
    for ax, (title, curves) in zip(axes, panels, strict=True):
        for index, (label, values) in enumerate(curves.items()):
            style = "--" if index == 0 else "-"
            ax.plot(theta, values.numpy(), style, label=label, linewidth=1.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("θ between embedding and its class centre (degrees)")
        ax.set_xlim(0, 180)
        ax.set_xticks(range(0, 181, 30))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].axvline(math.degrees(math.pi - 0.5), color="grey", linewidth=0.8, linestyle=":")
    axes[0].annotate(
        "ArcFace fallback\nθ > π − m",
        (math.degrees(math.pi - 0.5), 0.1),
        xytext=(-78, 0),
        textcoords="offset points",
        fontsize=8,
        color="grey",
    )
    axes[0].set_ylabel("target logit (÷ s, or ÷ ‖x‖)")
    fig.tight_layout()
    path = out_dir / "heads_margins.png"
    save_png(fig, path)
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
