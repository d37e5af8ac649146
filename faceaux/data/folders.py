"""``ImageFolderFaces``: aligned face crops stored one folder per identity."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderFaces"]

#: File extensions read as images (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageFolderFaces(Dataset):
    """Aligned face crops laid out as ``root/<identity>/<image>``, one folder per identity.

    Identities are the sub-folders of ``root`` in sorted order, labelled ``0 … K − 1``; images are
    the files with an extension in :data:`IMAGE_EXTENSIONS` directly inside each, sorted by name
    (so the order, and hence pairs drawn with ``make_pairs``, is reproducible). Images are decoded
    with Pillow (the ``demo`` extra) when a sample is read, converted to RGB and, if ``size`` is
    given, resized bilinearly.

    Args:
        root: the folder holding one sub-folder per identity.
        size: optional ``(H, W)`` to resize every image to (aligned sets are usually 112×112).
        min_images: identities with fewer images are skipped (2 to keep genuine pairs possible).

    A file that does not decode raises ``ValueError`` naming it when its sample is read (an
    index out of range raises ``IndexError``, as for any sequence).

    Shape:
        ``dataset[i]`` is a dict: ``image (3, H, W)`` float in [0, 1] and ``label ()`` int64.
        ``labels (N,)`` holds every sample's label; ``classes`` the folder names.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for person in ("ann", "bob"):
        ...     (root / person).mkdir()
        ...     Image.new("RGB", (8, 8)).save(root / person / "0.png")
        >>> data = ImageFolderFaces(root)
        >>> data.classes, data.labels.tolist(), data[1]["image"].shape
        (['ann', 'bob'], [0, 1], torch.Size([3, 8, 8]))
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: Sequence[int] | None = None,
        min_images: int = 1,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise ValueError(f"root: expected a path, received {type(root).__name__}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root: expected a folder of identity folders, received {root!r}")
        if size is not None:
            valid = isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
            if not valid or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
            ):
                raise ValueError(f"size: expected (H, W), two positive ints, received {size!r}")
        if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
            raise ValueError(f"min_images: expected a positive int, received {min_images!r}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        self.classes: list[str] = []
        self.samples: list[tuple[Path, int]] = []
        for folder in folders:
            files = sorted(
                f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            if len(files) < min_images:
                continue
            label = len(self.classes)
            self.classes.append(folder.name)
            self.samples.extend((f, label) for f in files)
        if not self.samples:
            raise ValueError(
                f"root: no images with extensions {IMAGE_EXTENSIONS} found in the sub-folders "
                f"of {os.fspath(root)!r}"
            )
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        try:
            from PIL import Image
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "ImageFolderFaces needs Pillow: pip install 'faceaux[demo]'"
            ) from error
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if self.size is not None and image.size != (self.size[1], self.size[0]):
                    image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise ValueError(f"{os.fspath(path)}: not a decodable image ({error})") from None
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
        return {"image": tensor, "label": torch.tensor(label)}
