"""Small side networks trained on the synthetic ground truth: a FAN and a face parser.

FAN-Face integrates a *pre-trained* FAN and FSENet a *pre-trained* face parser, both frozen
while the recognizer trains. On synthetic faces no such networks exist, so the study trains
small ones first, on identities the recognizers never see, and reports how good they are (the
landmark error of FAN's heatmaps, the parser's pixel accuracy) next to the results: a
recognizer can only use as much landmark or part knowledge as its side network has.

- FAN: 2 stacks of depth-4 hourglasses (:class:`faceaux.FAN`) on 64×64 images in [0, 1],
  heatmaps at 16×16 (σ = :data:`SIGMA` map pixels), mean-squared error on both stacks
  (intermediate supervision, as FAN is trained), Adam.
- Parser: 2 stacks of depth-3 hourglasses (:class:`faceaux.models.StackedHourGlass`) on 64×64
  images in [−1, 1] (the recognizer's range), 11 Helen classes at 16×16 up-sampled to 64×64,
  cross-entropy on both stacks, Adam.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from faceaux.layers.heatmaps import heatmaps_to_landmarks, render_heatmaps
from faceaux.models.hourglass import FAN, StackedHourGlass

__all__ = ["INPUT_SIZE", "SIGMA", "train_fan", "train_parser"]

INPUT_SIZE = 64
"""Side length of the side networks' input (images are resized to it); their maps are 16×16.

Shape:
    An ``int``.
"""


SIGMA = 2.0
"""σ of FAN's target heatmaps, in pixels of its 16×16 maps (2, not FAN's usual 1: with the study's
few hundred steps, σ = 1 maps did not train — 21 px landmark error after 100 steps against
4.7 px with σ = 2 and lr 2e-3 after 300, measured while calibrating).

Shape:
    A ``float``.
"""


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        index, order = order[:batch_size], order[batch_size:]
        yield index


def _resize(images: torch.Tensor) -> torch.Tensor:
    size = (INPUT_SIZE, INPUT_SIZE)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def train_fan(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 32,
    num_features: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    held_out: float = 0.1,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[FAN, dict[str, Any]]:
    """Train a small 2-stack FAN on images and their 68 landmarks; returns it frozen + quality.

    Args:
        images: ``(N, 3, H, W)`` ``uint8`` faces.
        landmarks: ``(N, 68, 2)`` pixel coordinates in those images.
        steps: optimisation steps.
        batch_size: images per step.
        num_features: hourglass width.
        lr: Adam's learning rate.
        seed: seed of the initialisation and the batches.
        device: where to train.
        held_out: fraction of the images kept out of training to measure the error.
        progress: called as ``progress(step, loss)``.

    Returns:
        ``(fan, quality)`` with ``quality = {"landmark_error_px", "seconds", "steps"}``: the
        mean distance (pixels of the input images) between the decoded heatmap peaks of the
        last stack and the true landmarks on the held-out images.

    Shape:
        images ``(N, 3, H, W)``, landmarks ``(N, 68, 2)`` → a FAN on ``(B, 3, 64, 64)``.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    n_test = max(1, round(n * held_out))
    torch.manual_seed(seed)
    fan = FAN(2, 68, num_features=num_features, input_size=INPUT_SIZE).to(device).train()
    optimizer = torch.optim.Adam(fan.parameters(), lr=lr)
    scale = (INPUT_SIZE / 4) / images.shape[-1]  # image pixels → 16×16 map pixels
    start = time.perf_counter()
    for step, index in enumerate(_batches(n - n_test, batch_size, steps, generator), start=1):
        x = _resize(images[index].float().to(device) / 255)
        target = render_heatmaps(
            (landmarks[index].to(device) + 0.5) * scale - 0.5, (INPUT_SIZE // 4,) * 2, sigma=SIGMA
        )
        outputs = fan.forward_features(x)
        loss = sum(F.mse_loss(outputs[f"heatmaps.{s}"], target) for s in (1, 2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step, float(loss.detach()))
    seconds = time.perf_counter() - start
    fan.freeze()
    with torch.no_grad():
        test = slice(n - n_test, n)
        maps = fan(_resize(images[test].float().to(device) / 255))
        points, _ = heatmaps_to_landmarks(maps)
        predicted = (points.cpu() + 0.5) / scale - 0.5
        error = (predicted - landmarks[test]).norm(dim=-1).mean()
    return fan, {"landmark_error_px": float(error), "seconds": seconds, "steps": steps}


def train_parser(
    images: torch.Tensor,
    parsing: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 32,
    num_features: int = 32,
    num_classes: int = 11,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    held_out: float = 0.1,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[StackedHourGlass, dict[str, Any]]:
    """Train a small 2-stack hourglass face parser; returns it frozen + its quality.

    Args:
        images: ``(N, 3, H, W)`` ``uint8`` faces.
        parsing: ``(N, H, W)`` labels ``0 … num_classes − 1`` (Helen order).
        steps, batch_size, num_features, lr, seed, device, held_out, progress: as
            :func:`train_fan`.
        num_classes: P.

    Returns:
        ``(parser, quality)`` with ``quality = {"pixel_accuracy", "part_iou", "seconds",
        "steps"}`` on the held-out images at 64×64 (``part_iou``: mean IoU over the classes
        other than background present there).

    Shape:
        images ``(N, 3, H, W)``, parsing ``(N, H, W)`` → a parser on ``(B, 3, 64, 64)`` in
        [−1, 1] giving ``(B, P, 16, 16)`` class scores.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    n_test = max(1, round(n * held_out))
    torch.manual_seed(seed)
    parser = StackedHourGlass(
        2, num_classes, num_features=num_features, depth=3, input_size=INPUT_SIZE
    )
    parser = parser.to(device).train()
    optimizer = torch.optim.Adam(parser.parameters(), lr=lr)
    size = (INPUT_SIZE, INPUT_SIZE)

    def labels_of(index) -> torch.Tensor:
        maps = parsing[index][:, None].float()
        return F.interpolate(maps, size=size, mode="nearest")[:, 0].long().to(device)

    start = time.perf_counter()
    for step, index in enumerate(_batches(n - n_test, batch_size, steps, generator), start=1):
        x = _resize(images[index].float().to(device) / 255) * 2 - 1
        target = labels_of(index)
        outputs = parser.forward_features(x)
        loss = sum(
            F.cross_entropy(
                F.interpolate(outputs[f"heatmaps.{s}"], size=size, mode="bilinear"), target
            )
            for s in (1, 2)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step, float(loss.detach()))
    seconds = time.perf_counter() - start
    parser.freeze()
    with torch.no_grad():
        test = torch.arange(n - n_test, n)
        x = _resize(images[test].float().to(device) / 255) * 2 - 1
        scores = F.interpolate(parser(x), size=size, mode="bilinear")
        predicted, truth = scores.argmax(1).cpu(), labels_of(test).cpu()
        accuracy = (predicted == truth).float().mean()
        confusion = torch.bincount(
            (truth * num_classes + predicted).flatten(), minlength=num_classes**2
        ).view(num_classes, num_classes)
        hits = confusion.diagonal()
        union = confusion.sum(0) + confusion.sum(1) - hits
        present = union[1:] > 0  # classes other than background seen in the held-out images
        iou = (hits[1:][present] / union[1:][present]).float()
    return parser, {
        "pixel_accuracy": float(accuracy),
        "part_iou": float(iou.mean()) if iou.numel() else float("nan"),
        "seconds": seconds,
        "steps": steps,
    }
