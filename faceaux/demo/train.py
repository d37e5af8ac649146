"""The small in-memory training loop shared by ``faceaux demo`` and ``faceaux study``.

One loop for every arm of a comparison, so that nothing differs between arms but the model:
SGD with momentum and weight decay, linear warm-up then cosine decay, horizontal flips with
their ground truth, a margin head (or softmax) for identity, and the attribute loss for models
with an :class:`faceaux.AttributeHead`. The recognizer's side inputs (ground-truth landmarks or
part masks) are passed when the model has no side network of its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceaux.demo.data import Split, flip_batch
from faceaux.layers.alignment import SpatialTransformerAlign, param_groups
from faceaux.layers.attributes import attribute_loss

__all__ = ["Schedule", "embed", "fit", "side_inputs", "to_model_range"]


@dataclass
class Schedule:
    """Optimisation settings shared by every arm.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak learning rate (SGD).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        warmup: fraction of the steps with a linear warm-up (then cosine decay to 0).
        loc_lr_scale: learning-rate factor of every SpatialTransformerAlign's localisation
            network (Tang et al. §4: 10–100× smaller; :func:`faceaux.param_groups`).
        attribute_weight: λ1 of the multi-task loss for models with an attribute head; a
            ``(first, second)`` pair trains the first half of the epochs with ``first`` and the
            rest with ``second`` (the paper's two stages: λ1 = 0, then 0.1).
        attribute_loss: ``"mse"`` (the paper's) or ``"bce"``.
        flip: random horizontal flips (with ground truth).
        clip_grad_norm: the largest global gradient norm of a step (``None``: no clipping;
            InsightFace's trainer clips at 5).

    Shape:
        No tensors.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.1
    loc_lr_scale: float = 0.01
    attribute_weight: float | tuple[float, float] = 0.1
    attribute_loss: str = "mse"
    flip: bool = True
    clip_grad_norm: float | None = None

    def attribute_weight_at(self, epoch: int) -> float:
        """λ1 in ``epoch`` (0-based)."""
        if isinstance(self.attribute_weight, tuple):
            first, second = self.attribute_weight
            return first if epoch < self.epochs // 2 else second
        return float(self.attribute_weight)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → the models' [−1, 1] (InsightFace's (x − 127.5) / 127.5)."""
    return images * 2 - 1


def side_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ground-truth side inputs for a recognizer that has no side network of its own.

    Landmarks (rendered into heatmaps by the recognizer) when it stacks heatmaps without a FAN;
    the parsing labels (one-hot part masks) when it pools parts without a parser.
    """
    out: dict[str, torch.Tensor] = {}
    if getattr(model, "stacker", None) is not None and getattr(model, "fan", None) is None:
        out["landmarks"] = batch["landmarks"]
    if getattr(model, "parts", None) is not None and getattr(model, "parser", None) is None:
        out["masks"] = batch["parsing"]
    return out


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    images = to_model_range(batch["image"])
    if hasattr(model, "forward_aux"):
        return model.forward_aux(images, **side_inputs(model, batch))
    return {"embedding": model(images)}


def fit(
    model: nn.Module,
    head: nn.Module,
    split: Split,
    schedule: Schedule,
    *,
    device: torch.device,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with ``head`` on ``split``; returns ``{"losses", "seconds"}``.

    ``head(embedding, labels)`` gives identity logits (a margin head, or a linear layer for
    softmax). ``progress(step, loss)`` is called after every step.
    """
    model.to(device).train()
    head.to(device).train()
    if any(isinstance(m, SpatialTransformerAlign) for m in model.modules()):
        groups = param_groups(model, schedule.lr, schedule.loc_lr_scale)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups.append({"params": list(head.parameters())})
    for group in groups:
        group["params"] = [p for p in group["params"] if p.requires_grad]
        group["initial_lr"] = group.get("lr", schedule.lr)
    optimizer = torch.optim.SGD(
        groups, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    steps_per_epoch = max(1, len(split) // schedule.batch_size)
    total = steps_per_epoch * schedule.epochs
    warmup = max(1, round(total * schedule.warmup))
    generator = torch.Generator().manual_seed(seed)
    has_attributes = getattr(model, "attributes", None) is not None
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    for epoch in range(schedule.epochs):
        order = torch.randperm(len(split), generator=generator)
        weight = schedule.attribute_weight_at(epoch)
        for i in range(steps_per_epoch):
            batch = split.batch(order[i * schedule.batch_size : (i + 1) * schedule.batch_size])
            if schedule.flip and torch.rand((), generator=generator) < 0.5:
                batch = flip_batch(batch)
            batch = {k: v.to(device) for k, v in batch.items()}
            if step < warmup:
                factor = (step + 1) / warmup
            else:
                factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            out = _forward(model, batch)
            loss = F.cross_entropy(head(out["embedding"], batch["label"]), batch["label"])
            if has_attributes and weight > 0:
                prediction = out["attributes"]
                target = batch["attributes"].to(prediction.dtype)
                loss = loss + weight * attribute_loss(
                    prediction, target, loss=schedule.attribute_loss
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if schedule.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for group in groups for p in group["params"]], schedule.clip_grad_norm
                )
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if progress is not None:
                progress(step, losses[-1])
    return {"losses": losses, "seconds": time.perf_counter() - start}


@torch.no_grad()
def embed(
    model: nn.Module,
    split: Split,
    *,
    device: torch.device,
    flip: bool = True,
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised embeddings (N, D) of a split; with ``flip``, of the image plus its mirror
    (InsightFace's flip fusion: the sum, then the L2 norm)."""
    model.to(device).eval()
    out = []
    for batch in split.batches(batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        embedding = _forward(model, batch)["embedding"].float()
        if flip:
            embedding = embedding + _forward(model, flip_batch(batch))["embedding"].float()
        out.append(F.normalize(embedding, dim=1).cpu())
    return torch.cat(out)
