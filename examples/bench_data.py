"""Decode throughput of RecordFaces against ImageFolderFaces on the same images (a benchmark,
not a test). Run: ``OMP_NUM_THREADS=1 python examples/bench_data.py [--images 3000]``.

Renders 128 SyntheticFaces at 112×112 and writes ``--images`` JPEG files from them (quality 95,
one folder per identity; each copy shifted by a few pixels and re-noised, so every file is a
distinct encoding of a face-like image of the usual size), packs the folder with
``faceaux.data.pack_folder`` and times a ``DataLoader`` (2 workers, batch 128) over each
dataset: images per second over full passes, after one untimed pass that warms the page cache
and the workers' imports. Passes alternate between the datasets; the median pass is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from faceaux.data import ImageFolderFaces, RecordFaces, SyntheticFaces, pack_folder


def write_folder(root: Path, images: int, per_identity: int) -> None:
    faces = SyntheticFaces(64, 2, size=(112, 112), seed=0).images
    generator = torch.Generator().manual_seed(0)
    for index in range(images):
        shift = torch.randint(-4, 5, (2,), generator=generator).tolist()
        image = faces[index % len(faces)].roll(shift, dims=(1, 2)).float()
        image += torch.randn(image.shape, generator=generator) * 2
        array = image.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        folder = root / f"{index // per_identity:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{index:07d}.jpg", "JPEG", quality=95)


def one_pass(dataset, workers: int, batch: int) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    count = sum(b["image"].shape[0] for b in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="images (default: 3000)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes (default: 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_identity = 20
        write_folder(root / "folder", args.images, per_identity)
        pack_folder(root / "folder", root / "rec" / "train")
        datasets = {
            "ImageFolderFaces (Pillow)": ImageFolderFaces(root / "folder"),
            "RecordFaces (Pillow)": RecordFaces(root / "rec", decoder="pillow"),
        }
        try:
            datasets["RecordFaces (torchvision.io)"] = RecordFaces(
                root / "rec", decoder="torchvision"
            )
        except ImportError as error:
            print(f"(no torchvision decoder: {error})")
        for dataset in datasets.values():
            one_pass(dataset, args.workers, args.batch)  # warm-up
        rates = {name: [] for name in datasets}
        for _ in range(args.passes):
            for name, dataset in datasets.items():
                rates[name].append(one_pass(dataset, args.workers, args.batch))
        size = sum(p.stat().st_size for p in (root / "folder").rglob("*.jpg"))
        print(
            f"{len(datasets['RecordFaces (Pillow)'])} JPEG images 112x112, {size / 2**20:.1f} "
            f"MiB, {args.workers} workers, batch {args.batch}, torch {torch.__version__}"
        )
        print(f"{'dataset':<30}{'images/s (median)':>20}{'passes':>30}")
        for name, values in rates.items():
            shown = ", ".join(f"{v:.0f}" for v in values)
            print(f"{name:<30}{statistics.median(values):>20.0f}{shown:>30}")


if __name__ == "__main__":
    main()
