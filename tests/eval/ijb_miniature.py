"""A miniature IJB-C folder rendered from SyntheticFaces (not a test module).

``make_ijbc_folder`` writes the standard layout (``meta/ijbc_*.txt``, the 1:N CSVs and
``loose_crop/``) with five-point landmarks derived from the renderer's 68-point ground truth
(eye centres = mean of points 36–41 and 42–47, nose tip 30, mouth corners 48 and 54: the same
reduction InsightFace's ``eval_ijbc.py`` applies to 68-point landmarks). Used by
``tests/eval/test_ijb.py`` and by the CI job (``.ci/train_smoke.sh``).

Layout: identity ``k`` has images ``6k … 6k+5``; its first three images form template
``2k+1`` and the last three template ``2k+2``; consecutive pairs of images share a media id
(video frames). Pairs: every identity's two templates (genuine) and every ``(2a+1, 2b+2)`` for
``a ≠ b`` (impostors). 1:N: gallery G1 = first templates of even identities, G2 = of odd
identities, probes = all second templates (mated in one gallery, non-mated in the other).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, when run as a script

import numpy as np
import torch
from train.tiny_data import synthetic


def five_points(landmarks68: torch.Tensor) -> torch.Tensor:
    """``(N, 68, 2)`` → ``(N, 5, 2)``: eye centres, nose tip, mouth corners."""
    return torch.stack(
        [
            landmarks68[:, 36:42].mean(1),
            landmarks68[:, 42:48].mean(1),
            landmarks68[:, 30],
            landmarks68[:, 48],
            landmarks68[:, 54],
        ],
        dim=1,
    )


def make_ijbc_folder(
    root: Path, num_identities: int = 20, size: tuple[int, int] = (56, 56), seed: int = 0
) -> Path:
    """Write the miniature IJB-C folder under ``root/IJBC``; returns that folder."""
    from PIL import Image

    images_per_identity = 6
    data = synthetic(num_identities, images_per_identity, tuple(size), seed)
    folder = root / "IJBC"
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    (folder / "loose_crop").mkdir(exist_ok=True)
    points = five_points(data.landmarks)
    scores = 0.5 + 0.5 * torch.rand(len(data), generator=torch.Generator().manual_seed(seed))
    name_lines, tid_lines = [], []
    for index in range(len(data)):
        name = f"{index + 1}.png"
        Image.fromarray(data.images[index].permute(1, 2, 0).numpy()).save(
            folder / "loose_crop" / name
        )
        label = int(data.labels[index])
        template = 2 * label + 1 + (index % images_per_identity >= 3)
        media = 1000 + index // 2
        coords = " ".join(f"{v:.3f}" for v in points[index].flatten().tolist())
        name_lines.append(f"{name} {coords} {scores[index]:.3f}")
        tid_lines.append(f"{name} {template} {media}")
    (folder / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(name_lines) + "\n")
    (folder / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    pairs = [f"{2 * k + 1} {2 * k + 2} 1" for k in range(num_identities)]
    pairs += [
        f"{2 * a + 1} {2 * b + 2} 0"
        for a in range(num_identities)
        for b in range(num_identities)
        if a != b
    ]
    (folder / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")

    def csv_rows(templates: list[int]) -> str:
        rows = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
        for line in tid_lines:
            name, template, _ = line.split()
            if int(template) in templates:
                rows.append(f"{template},{(int(template) - 1) // 2 + 100},{name}")
        return "\n".join(rows) + "\n"

    even = [2 * k + 1 for k in range(0, num_identities, 2)]
    odd = [2 * k + 1 for k in range(1, num_identities, 2)]
    probes = [2 * k + 2 for k in range(num_identities)]
    (folder / "meta" / "ijbc_1N_gallery_G1.csv").write_text(csv_rows(even))
    (folder / "meta" / "ijbc_1N_gallery_G2.csv").write_text(csv_rows(odd))
    (folder / "meta" / "ijbc_1N_probe_mixed.csv").write_text(csv_rows(probes))
    return folder


def make_verification_bin(path: Path, num_identities: int = 20, size=(56, 56), seed=0) -> Path:
    """A small InsightFace ``.bin``: PNG pairs from SyntheticFaces (genuine/impostor alternate)."""
    import io

    from PIL import Image

    from faceaux.data import make_pairs, save_verification_bin

    data = synthetic(num_identities, 6, tuple(size), seed)
    pairs, issame = make_pairs(data, 40, seed=seed)
    encoded = []
    for index in pairs.flatten().tolist():
        buffer = io.BytesIO()
        Image.fromarray(data.images[index].permute(1, 2, 0).numpy()).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    save_verification_bin(path, encoded, issame.numpy().astype(np.bool_))
    return path


if __name__ == "__main__":  # python tests/eval/ijb_miniature.py OUT_DIR: the CI job's data
    out = Path(sys.argv[1])
    print(make_ijbc_folder(out))
    print(make_verification_bin(out / "tiny.bin"))
