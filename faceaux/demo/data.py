"""In-memory face sets for the demo and the study: tensor splits, pairs, flips with ground truth.

A :class:`Split` keeps every sample of one side of a train/test split as tensors (images as
``uint8``), so a small experiment runs without a ``DataLoader``; :func:`flip_batch` mirrors a
batch with its ground truth (landmark order and left/right parsing labels, from
:mod:`faceaux.conventions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from faceaux.conventions import MIRROR_68, MIRROR_PARSING
from faceaux.data.synthetic import SyntheticFaces, make_pairs, split_identities

__all__ = ["Split", "flip_batch", "folder_splits", "synthetic_splits"]


@dataclass
class Split:
    """Images and ground truth of one side of a split, as tensors (first dim = samples).

    Attributes:
        tensors: ``"image"`` (N, 3, H, W) ``uint8``, ``"label"`` (N,) and any ground truth
            (``"landmarks"`` (N, 68, 2), ``"parsing"`` (N, H, W), ``"attributes"`` (N, M) …).
        num_classes: identities in ``"label"`` (labels are ``0 … num_classes − 1``).

    Shape:
        ``batch(index)`` returns the same keys with the first dim indexed, ``"image"`` as float
        in [0, 1].
    """

    tensors: dict[str, torch.Tensor]
    num_classes: int

    def __len__(self) -> int:
        return self.tensors["image"].shape[0]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples ``index`` (a 1-D index tensor); images as float in [0, 1]."""
        out = {k: v[index] for k, v in self.tensors.items()}
        out["image"] = out["image"].float() / 255
        return out

    def batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Consecutive batches covering the split in order."""
        return [
            self.batch(torch.arange(i, min(len(self), i + batch_size)))
            for i in range(0, len(self), batch_size)
        ]

    def subset(self, mask: torch.Tensor) -> Split:
        """The samples where ``mask`` (N,) is true (labels unchanged)."""
        return Split({k: v[mask] for k, v in self.tensors.items()}, self.num_classes)


def flip_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror a batch horizontally, ground truth included.

    Landmarks are re-ordered with :data:`~faceaux.conventions.MIRROR_68` and mirrored
    (x ↦ W − 1 − x), parsing labels swap left and right
    (:data:`~faceaux.conventions.MIRROR_PARSING`); visibility follows the landmark order.

    Shape:
        the keys of the batch, same shapes.

    Examples:
        >>> batch = {"image": torch.rand(1, 3, 8, 8), "landmarks": torch.zeros(1, 68, 2)}
        >>> flip_batch(batch)["landmarks"][0, 0].tolist()
        [7.0, 0.0]
    """
    out = dict(batch)
    out["image"] = batch["image"].flip(-1)
    width = batch["image"].shape[-1]
    mirror = None
    if "landmarks" in batch:
        mirror = torch.tensor(MIRROR_68, device=batch["landmarks"].device)
        points = batch["landmarks"][:, mirror]
        out["landmarks"] = torch.stack([width - 1 - points[..., 0], points[..., 1]], -1)
    if "visibility" in batch:
        order = torch.tensor(MIRROR_68, device=batch["visibility"].device)
        out["visibility"] = batch["visibility"][:, order]
    if "parsing" in batch:
        table = torch.tensor(MIRROR_PARSING, device=batch["parsing"].device)
        out["parsing"] = table[batch["parsing"].long()].flip(-1).to(batch["parsing"].dtype)
    return out


def synthetic_splits(
    data: SyntheticFaces, test_fraction: float, seed: int, n_pairs: int
) -> tuple[Split, Split, torch.Tensor, torch.Tensor]:
    """Split a :class:`SyntheticFaces` set by identity; balanced pairs of test images.

    Returns ``(train, test, pairs, issame)``: training labels re-indexed to ``0 … n − 1``,
    ``pairs`` indexing the test split.
    """
    n_ids = data.num_identities
    train_ids, test_ids = split_identities(n_ids, test_fraction, seed=seed)
    everything: dict[str, Any] = {
        "image": data.images,
        "label": data.labels,
        "landmarks": data.landmarks,
        "parsing": data.parsing,
        "attributes": data.attributes,
    }
    for key, attribute in (
        ("visibility", "visibility"),
        ("pose", "poses"),
        ("nuisance", "nuisance"),
    ):
        value = getattr(data, attribute, None)  # the 3-D pose keys of SyntheticFaces
        if isinstance(value, torch.Tensor) and value.shape[0] == len(data):
            everything[key] = value
    train_mask = torch.isin(data.labels, train_ids)
    test_index = torch.isin(data.labels, test_ids).nonzero().squeeze(1)
    train = {k: v[train_mask] for k, v in everything.items()}
    train["label"] = torch.searchsorted(train_ids, train["label"])
    test = {k: v[test_index] for k, v in everything.items()}
    pairs, issame = make_pairs(data, n_pairs, seed=seed + 1, identities=test_ids)
    position = torch.full((len(data),), -1, dtype=torch.long)
    position[test_index] = torch.arange(test_index.numel())
    return Split(train, len(train_ids)), Split(test, len(test_ids)), position[pairs], issame


def _folder_tensor(dataset: Any, indices: torch.Tensor) -> torch.Tensor:
    return torch.stack([(dataset[int(i)]["image"] * 255).round().to(torch.uint8) for i in indices])


def folder_splits(
    data: str,
    train_data: str | None,
    size: tuple[int, int],
    test_fraction: float,
    seed: int,
    n_pairs: int,
) -> tuple[Split, Split, torch.Tensor, torch.Tensor]:
    """Your own crops: a folder (one sub-folder per identity) split by identity, or a ``.bin``
    verification file for testing with ``train_data`` (a folder) for training."""
    from faceaux.data.folders import ImageFolderFaces
    from faceaux.data.verification_bin import load_verification_bin

    path = Path(data)
    if path.is_dir():
        folder = ImageFolderFaces(path, size=size)
        train_ids, test_ids = split_identities(len(folder.classes), test_fraction, seed)
        train_index = torch.isin(folder.labels, train_ids).nonzero().squeeze(1)
        test_index = torch.isin(folder.labels, test_ids).nonzero().squeeze(1)
        train = {
            "image": _folder_tensor(folder, train_index),
            "label": torch.searchsorted(train_ids, folder.labels[train_index]),
        }
        test = {"image": _folder_tensor(folder, test_index), "label": folder.labels[test_index]}
        pairs, issame = make_pairs(folder.labels[test_index], n_pairs, seed=seed + 1)
        return Split(train, len(train_ids)), Split(test, len(test_ids)), pairs, issame
    if train_data is None:
        raise ValueError(
            "--data: a .bin verification file has pairs but no identity labels to train on; "
            "give --train-data FOLDER (aligned crops, one folder per identity)"
        )
    folder = ImageFolderFaces(train_data, size=size)
    train = {"image": _folder_tensor(folder, torch.arange(len(folder))), "label": folder.labels}
    images, issame = load_verification_bin(path, image_size=size)
    pairs = torch.arange(images.shape[0]).view(-1, 2)
    test = {"image": images, "label": torch.zeros(images.shape[0], dtype=torch.long)}
    return Split(train, len(folder.classes)), Split(test, 0), pairs, issame
