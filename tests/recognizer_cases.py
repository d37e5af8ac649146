"""The "everything at once" recognizer, shared by the recognizer tests on every backbone.

STN (similarity) → heatmap stacking (51 internal points) → FAN integration at every stage
(1-1 or 1-many) → part pooling + structure correlation on the reduction-4 stage → GNAP output
stage → attribute head, with a small FAN and a small parser (random weights, real layouts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from faceaux import (
    ArcFace,
    FaceRecognizer,
    HeatmapStacker,
    PartMaskPooling,
    SpatialTransformerAlign,
    StructureCorrelation,
)
from faceaux.conventions import FSENET_PARTS, INTERNAL_51
from faceaux.models import FAN, StackedHourGlass

FAN_SIZE = 64
PARSER_SIZE = 64


def small_fan() -> FAN:
    torch.manual_seed(7)
    return FAN(num_stacks=2, num_landmarks=68, num_features=16, input_size=FAN_SIZE)


def small_parser() -> StackedHourGlass:
    torch.manual_seed(8)
    return StackedHourGlass(2, 11, num_features=16, depth=2, input_size=PARSER_SIZE)


def fan_keys(backbone: nn.Module) -> dict[str, str]:
    """Stage → the FAN h2l feature at the nearest resolution (FAN-Face's 1-1 rule, Fig. 2)."""
    resolutions = (16, 8, 4, 2, 1)  # h2l levels of a depth-4 FAN at 64×64 input
    keys = {}
    for info in backbone.feature_info:
        size = 112 // info["reduction"]
        nearest = min(resolutions, key=lambda r: abs(r * 4 - size))  # FAN scale vs 112 input
        keys[info["module"]] = f"h2l.2.{nearest}"
    return keys


def compose_everything(backbone: nn.Module, connectivity: str = "1-1") -> FaceRecognizer:
    """Every faceaux layer on one backbone (speaking the stage contract)."""
    torch.manual_seed(0)
    align = SpatialTransformerAlign(
        "similarity",
        output_size=(112, 112),
        loc_input_size=(32, 32),
        loc_channels=(8, 16),
        loc_hidden=16,
    )
    parts = PartMaskPooling(parts=FSENET_PARTS, mask_resize="max")
    return FaceRecognizer(
        backbone,
        align=align,
        heatmaps=HeatmapStacker(INTERNAL_51, normalize=None),
        fan=small_fan(),
        integration=fan_keys(backbone),
        connectivity=connectivity,
        parser=small_parser(),
        parser_input_size=PARSER_SIZE,
        parts=parts,
        structure=StructureCorrelation(),
        fan_input_size=FAN_SIZE,
        attributes=7,  # an AttributeHead sized for the fused embedding
    )


def train_steps(model: FaceRecognizer, steps: int = 3, batch: int = 4) -> list[float]:
    """A few SGD steps of ArcFace + attribute MSE; returns the losses."""
    torch.manual_seed(1)
    head = ArcFace(model.embedding_size, 5, s=16.0, m=0.2)
    trainable = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9)
    images = torch.rand(batch, 3, 120, 120) * 2 - 1
    labels = torch.arange(batch) % 5
    attributes = torch.randint(0, 2, (batch, 7)).float()
    losses = []
    model.train()
    for _ in range(steps):
        out = model.forward_aux(images)
        loss = F.cross_entropy(head(out["embedding"], labels), labels)
        loss = loss + 0.1 * model.attributes.loss(out["attributes"], attributes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def check_gradients(model: FaceRecognizer) -> None:
    """After one backward: every trainable part has gradients, the side networks none."""
    model.zero_grad(set_to_none=True)
    model.train()
    out = model.forward_aux(torch.rand(4, 3, 120, 120) * 2 - 1)
    (out["embedding"].square().sum() + out["attributes"].square().sum()).backward()
    groups = {
        "align": model.align,
        "integration": model.integration,
        "backbone": model.backbone,
        "attributes": model.attributes,
    }
    for name, module in groups.items():
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        assert params, name
        missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"{name}: no finite gradient for {missing[:5]}"
        assert any(p.grad.abs().sum() > 0 for _, p in params), name
    grown = model.backbone.first_conv_module().weight.grad
    assert grown[:, 3:].abs().sum() > 0  # the heatmap filters learn
    for side in (model.fan, model.parser):
        assert all(not p.requires_grad and p.grad is None for p in side.parameters())
        assert not side.training
