"""Tiny training sets for the training and CLI tests (not a test module).

``write_image_folder`` renders :class:`faceaux.data.SyntheticFaces` to an image folder (one
sub-folder per identity, JPEG files); ``pack_tiny`` packs one into a RecordIO pair with
``faceaux.data.pack_folder``, the same code path as ``faceaux pack``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from faceaux.data import SyntheticFaces, pack_folder


@functools.lru_cache(maxsize=4)
def synthetic(
    num_identities: int = 20,
    images_per_identity: int = 6,
    size: tuple[int, int] = (56, 56),
    seed: int = 0,
) -> SyntheticFaces:
    """One rendered set per argument tuple and test session (rendering costs seconds)."""
    return SyntheticFaces(num_identities, images_per_identity, size=size, seed=seed)


def write_image_folder(
    root: Path,
    num_identities: int = 20,
    images_per_identity: int = 6,
    size: tuple[int, int] = (56, 56),
    seed: int = 0,
    fmt: str = "JPEG",
) -> Path:
    """Render SyntheticFaces into ``root/<identity>/<n>.jpg``; returns ``root``."""
    from PIL import Image

    data = synthetic(num_identities, images_per_identity, tuple(size), seed)
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    for index in range(len(data)):
        label = int(data.labels[index])
        folder = root / f"id{label:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        array = data.images[index].permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{index:05d}{suffix}", fmt, quality=90)
    return root


def pack_tiny(root: Path, **kwargs) -> Path:
    """Write ``root/images`` and pack it into ``root/rec/train.rec``; returns the prefix."""
    folder = write_image_folder(root / "images", **kwargs)
    prefix = root / "rec" / "train"
    pack_folder(folder, prefix)
    return prefix
