"""Figure for docs/layers/parts.md (FSENet part-mask pooling and structure correlation).

Top row: the six part masks FSENet pools under (skin, left eye, right eye, nose, upper lip,
lower lip), taken from a SyntheticFaces ground-truth parsing map (standing in for the parsing
network) and max-pooled from 112×112 to the 28×28 feature grid, as ``mask_resize="max"`` does.

Bottom row: the face with each part's centre, computed by ``part_mask_pooling`` itself on a
two-channel "feature map" holding the x and y pixel coordinates (eq. 6 then returns the
probability-weighted mean position of each part); the parsing map; the distance and cosine
matrices D and A of ``structure_correlation`` (eq. 7) on the part features of an untrained
``iresnet_nano`` at 28×28 (stage 2, C = 32, as FSENet pools its backbone's 28×28 stage); and
the flattened local descriptor, K·(C + 2(K − 1)) = 6 · (32 + 10) = 252 values, with the
correlation entries marked.

Run: ``python examples/doc_figures/parts.py [out_dir]`` (default docs/img).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _figures import ROOT, save_png

from faceaux import (
    PartMaskPooling,
    StructureCorrelation,
    SyntheticFaces,
    part_mask_pooling,
    structure_correlation,
)
from faceaux.conventions import PARSING_CLASSES
from faceaux.models import create_model

PART_NAMES = ("skin", "left_eye", "right_eye", "nose", "upper_lip", "lower_lip")
# Look the parts up by name: the same code works for a parser with another label order.
PARTS = tuple(PARSING_CLASSES.index(name) for name in PART_NAMES)


def compute() -> dict:
    torch.manual_seed(0)
    data = SyntheticFaces(num_identities=5, images_per_identity=2, size=(112, 112), seed=3)
    images = torch.stack([data[i]["image"] for i in range(len(data))])  # (10, 3, 112, 112)
    parsing = torch.stack([data[i]["parsing"] for i in range(len(data))])  # (10, 112, 112)
    masks = F.one_hot(parsing, len(PARSING_CLASSES)).permute(0, 3, 1, 2).float()  # (10, 11, ...)
    index = 2

    # The six masks on the 28×28 grid, as mask_resize="max" prepares them.
    grid_masks = F.adaptive_max_pool2d(masks[:, list(PARTS)], (28, 28))

    # Part centres: eq. 6 on a feature map whose two channels are the pixel coordinates.
    v, u = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    coordinates = torch.stack([u, v])[None].expand(len(images), 2, 112, 112)
    centres = part_mask_pooling(coordinates, masks, parts=PARTS)  # (10, 6, 2)

    # Part features of a (random, untrained) backbone's 28×28 stage, then eq. 7.
    backbone = create_model("iresnet_nano").train()  # BatchNorm on batch statistics
    with torch.no_grad():
        features = backbone.layer2(backbone.layer1(backbone.forward_stem(images * 2 - 1)))
        part_features = PartMaskPooling(parts=PARTS)(features, masks)  # (10, 6, 32)
        rows = structure_correlation(part_features, flatten=False)  # (10, 6, 32 + 10)
        descriptor = StructureCorrelation()(part_features)  # (10, 252)
    channels = features.shape[1]
    pairs = rows[index, :, channels:].reshape(len(PARTS), len(PARTS) - 1, 2)
    distance = torch.zeros(len(PARTS), len(PARTS))
    cosine = torch.ones(len(PARTS), len(PARTS))
    for n in range(len(PARTS)):  # scatter the "other parts, ascending" layout into K × K
        others = [i for i in range(len(PARTS)) if i != n]
        distance[n, others] = pairs[n, :, 0]
        cosine[n, others] = pairs[n, :, 1]
    return {
        "image": images[index],
        "parsing": parsing[index],
        "grid_masks": grid_masks[index],
        "centres": centres[index],
        "distance": distance,
        "cosine": cosine,
        "descriptor": descriptor[index],
        "channels": channels,
        "shapes": (tuple(features.shape), tuple(part_features.shape), tuple(descriptor.shape)),
    }


def main(out_dir: str | Path) -> Path:
    r = compute()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(12, 5.4))
    spec = fig.add_gridspec(2, 6, height_ratios=(1, 1.25))
    for k, name in enumerate(PART_NAMES):
        ax = fig.add_subplot(spec[0, k])
        ax.imshow(r["grid_masks"][k].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name} (ch {PARTS[k]}), 28×28", fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])

    ax = fig.add_subplot(spec[1, 0])
    ax.imshow(r["image"].permute(1, 2, 0).numpy())
    centres = r["centres"].numpy()
    ax.scatter(*centres.T, c=[f"C{k}" for k in range(len(PARTS))], s=28, edgecolors="white")
    ax.set_title("part centres via eq. 6", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])

    ax = fig.add_subplot(spec[1, 1])
    ax.imshow(r["parsing"].numpy(), cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
    ax.set_title("parsing map (11 classes)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])

    short = ("skin", "l_eye", "r_eye", "nose", "u_lip", "l_lip")
    for column, key, title, cmap in (
        (2, "distance", "D = ‖L_n − L_i‖₂", "viridis"),
        (3, "cosine", "A = cos(L_n, L_i)", "viridis"),
    ):
        ax = fig.add_subplot(spec[1, column])
        matrix = r[key].numpy()
        off = matrix[~torch.eye(len(PARTS), dtype=torch.bool).numpy()]
        low, high = off.min(), off.max()
        ax.imshow(matrix, cmap=cmap, vmin=low, vmax=high)
        for n in range(len(PARTS)):
            for i in range(len(PARTS)):
                if n != i:
                    value = matrix[n, i]
                    colour = "white" if value < (low + high) / 2 else "black"
                    text = f"{value:.1f}" if key == "distance" else f"{value:.2f}"
                    ax.text(i, n, text, ha="center", va="center", fontsize=6, color=colour)
        ax.set_xticks(range(len(PARTS)), short, rotation=90, fontsize=7)
        ax.set_yticks(range(len(PARTS)), short, fontsize=7)
        ax.set_title(title, fontsize=9)

    ax = fig.add_subplot(spec[1, 4:])
    descriptor = r["descriptor"].numpy()
    width = r["channels"] + 2 * (len(PARTS) - 1)
    ax.plot(descriptor, lw=0.8, c="gray")
    for k in range(len(PARTS)):
        start = k * width + r["channels"]
        ax.axvspan(start - 0.5, start + 2 * (len(PARTS) - 1) - 0.5, color=f"C{k}", alpha=0.3)
    ax.set_title(
        f"flattened, {r['shapes'][2][1]}-D: per part [L_n (C = {r['channels']}), D, A, D, A, …]",
        fontsize=9,
    )
    ax.set_xlim(0, len(descriptor))
    ax.tick_params(labelsize=7)
    fig.suptitle(
        "FSENet: part masks → PartMaskPooling (eq. 6) → StructureCorrelation (eq. 7); "
        "untrained backbone features",
        fontsize=11,
    )
    fig.tight_layout()
    path = save_png(fig, out_dir / "parts.png")
    features, parts, desc = r["shapes"]
    print(f"wrote {path}; features {features} → parts {parts} → descriptor {desc}")
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
