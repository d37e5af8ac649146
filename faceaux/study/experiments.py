"""The study's experiments: each paper's headline comparison, under the condition it targets.

Every arm is a :class:`faceaux.FaceRecognizer` configuration on the same small network —
``iresnet_nano`` at 56×56 with a stride-8 body (``strides=(2, 2, 2, 1)``), so its last map is
7×7, the spatial scale of the papers' 112×112 / stride-16 networks — and every arm of an
experiment gets the same data, schedule and head. Nothing is tuned per arm beyond the paper's
own setting.

Every arm trains with plain softmax cross-entropy (a linear classifier over the embedding), as
the multi-task paper does; the other four papers train with ArcFace for 10⁵ iterations and more.
In the study's budget of a few hundred steps ArcFace does not converge: with the same 6 epochs on
the ``profile`` condition, ArcFace (s = 32, m = 0.5) reached a frontal–profile TAR@FAR=1e-2 of
0.05 and EER 0.28 against softmax's 0.32 and 0.11 (one seed, measured while calibrating; m = 0.2
and CosFace were no better), which would leave every arm at the floor of the metric.

Conditions (rendered by :class:`faceaux.data.SyntheticFaces`, new identities per seed):

- ``profile``: training faces with |yaw| uniform in 0–90°; a CFP-style test set of 4 frontal
  (|yaw| ≤ 10°) and 4 profile (70–90°) images per identity.
- ``misaligned``: loosely cropped 64×64 faces with a strong random similarity and perspective
  misalignment (``warp=2.5``: scale ±25 %, rotation ±11°, shift ±17 %), mild pose.
- ``pose_expression``: |yaw| up to 51°, pitch ±17°, roll ±21°, strong expressions (mouth
  open, smile, brows, blinks; ``expression=1.5``), mild misalignment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from faceaux.conventions import FSENET_PARTS, INTERNAL_51

__all__ = ["CONDITIONS", "EXPERIMENTS", "Arm", "Condition", "Experiment", "build_arm"]

SIZE = 56
"""The recognizers' input side (the ``misaligned`` condition renders 64 and aligns to 56)."""


@dataclass(frozen=True)
class Condition:
    """How a condition's faces are rendered (keyword arguments of SyntheticFaces).

    Attributes:
        name: key in :data:`CONDITIONS`.
        description: one line for the report.
        size: rendered side in pixels.
        train: SyntheticFaces arguments of the training images.
        test: SyntheticFaces arguments of the test images.
        test_images: images per test identity (fixed by ``test`` when it lists yaw slots).
    """

    name: str
    description: str
    size: int
    train: dict[str, Any]
    test: dict[str, Any]
    test_images: int = 8


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition(
            "profile",
            "|yaw| 0–90° in training; test: 4 frontal (≤ 10°) + 4 profile (70–90°) per identity",
            SIZE,
            {"yaw_range": (0.0, 90.0), "pose": 1.0, "warp": 0.5, "expression": 1.0},
            {
                "yaw_range": [(0.0, 10.0)] * 4 + [(70.0, 90.0)] * 4,
                "pose": 1.0,
                "warp": 0.5,
                "expression": 1.0,
            },
        ),
        Condition(
            "misaligned",
            "64×64 loose crops, strong similarity + perspective misalignment (warp 2.5), "
            "|yaw| ≤ 17°",
            64,
            {"pose": 0.5, "warp": 2.5, "expression": 1.0},
            {"pose": 0.5, "warp": 2.5, "expression": 1.0},
        ),
        Condition(
            "pose_expression",
            "|yaw| ≤ 51°, strong expressions (1.5), mild misalignment",
            SIZE,
            {"pose": 1.5, "warp": 0.5, "expression": 1.5},
            {"pose": 1.5, "warp": 0.5, "expression": 1.5},
        ),
    )
}
"""The study's conditions by name.

Shape:
    A ``dict`` of :class:`Condition`.
"""


@dataclass(frozen=True)
class Arm:
    """One configuration of an experiment.

    Attributes:
        name: short key.
        label: for tables and figures.
        options: the configuration, read by :func:`build_arm`.
        head: ``"softmax"`` (every arm of the study) or ``"arcface"`` (s = 32, m = 0.5).
        upper_bound: uses ground truth no deployed system has (not a claim under test).
    """

    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    head: str = "softmax"
    upper_bound: bool = False


@dataclass(frozen=True)
class Experiment:
    """A paper's headline comparison: arms (the first is the baseline), condition, metric.

    Attributes:
        name: key in :data:`EXPERIMENTS` (``faceaux study --experiments``).
        title: for the report.
        paper: the paper and table whose claim is tested.
        claim: the claim, in one sentence.
        paper_result: the paper's own numbers for the comparison (quoted).
        condition: key in :data:`CONDITIONS`.
        protocol: ``"all_pairs"`` or ``"frontal_profile"``.
        arms: the arms; ``arms[0]`` is the baseline every other arm is compared with.
        needs: side networks to train first (``"fan"``, ``"parser"``).
        attribute_weight: λ1 (a ``(first, second)`` pair: two stages) for arms with attributes.
    """

    name: str
    title: str
    paper: str
    claim: str
    paper_result: str
    condition: str
    protocol: str
    arms: tuple[Arm, ...]
    needs: tuple[str, ...] = ()
    attribute_weight: float | tuple[float, float] = 0.1


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "gnap",
            "GNAP: the output stage under large pose",
            "GNAP (Table 1, LResNet18E on CFP-FP)",
            "GNAP's norm-aware pooling gives a higher frontal–profile TAR at low FAR than the "
            "FC output stage (and than plain GAP).",
            "CFP-FP TPR@FPR=0.1 % (LResNet18E, CASIA-WebFace): FC 75.31 % (76.07 % with "
            "FasterFC), GAP 74.69 %, GNAP 78.31 %; EER 6.14 / 5.54 / 4.97 %",
            "profile",
            "frontal_profile",
            (
                Arm("fc", "FC (E block)", {"pooling": "fc"}),
                Arm("gap", "GAP", {"pooling": "gap"}),
                Arm("gnap", "GNAP", {"pooling": "gnap"}),
            ),
        ),
        Experiment(
            "stn",
            "STN: learned alignment of misaligned crops",
            "STN alignment learning (Table 3, CASIA-WebFace → LFW / YTF)",
            "A spatial transformer trained from identity labels alone aligns loose crops better "
            "than a fixed centre crop; projective ≥ affine ≥ similarity.",
            "LFW accuracy: identity (centre crop) 98.01 %, similarity 98.87 %, affine 99.02 %, "
            "projective 99.24 % (YTF 93.4 / 94.2 / 94.6 / 94.6 %)",
            "misaligned",
            "all_pairs",
            (
                Arm("identity", "identity (centre crop)", {"align": "identity"}),
                Arm("similarity", "similarity STN", {"align": "similarity"}),
                Arm("affine", "affine STN", {"align": "affine"}),
                Arm("projective", "projective STN", {"align": "projective"}),
            ),
        ),
        Experiment(
            "fanface",
            "FAN-Face: landmark heatmaps and features under pose and expression",
            "FAN-Face (Table 1 ablations, ResNet-34 on 1M VGGFace2 images, IJB-B)",
            "Stacking a frozen FAN's heatmaps with the image (H2) helps, and integrating its "
            "features at every stage (1-1, h2l) helps more.",
            "IJB-B TAR@FAR=1e-4 with ArcFace: baseline 0.859, H2 0.864, H2 + 1-1 h2l "
            "integration 0.876; with softmax (AS5): baseline 0.786, H2 + integration 0.796",
            "pose_expression",
            "all_pairs",
            (
                Arm("baseline", "baseline"),
                Arm("h2", "H2: FAN heatmaps stacked", {"heatmaps": "fan"}),
                Arm(
                    "h2_integration",
                    "H2 + 1-1 h2l integration (paper's best)",
                    {"heatmaps": "fan", "integration": True},
                ),
                Arm(
                    "h2_ground_truth",
                    "H2 with ground-truth heatmaps (upper bound)",
                    {"heatmaps": "ground_truth"},
                    upper_bound=True,
                ),
            ),
            needs=("fan",),
        ),
        Experiment(
            "fsenet",
            "FSENet: part features under face-parsing masks",
            "FSENet (Table 7: global vs global + local)",
            "Adding part features pooled under parsing masks, with their structure correlation, "
            "to the global representation improves verification.",
            "IJB-C TAR@FAR=1e-4: global 93.95 %, global + local 95.08 %; MegaFace rank-1 81.19 → "
            "82.59 %",
            "pose_expression",
            "all_pairs",
            (
                Arm("global", "global only"),
                Arm("parts", "global + parts", {"parts": "parser"}),
                Arm(
                    "parts_structure",
                    "global + parts + structure (paper)",
                    {"parts": "parser", "structure": True},
                ),
                Arm(
                    "ground_truth_masks",
                    "global + parts + structure, ground-truth masks (upper bound)",
                    {"parts": "ground_truth", "structure": True},
                    upper_bound=True,
                ),
            ),
            needs=("parser",),
        ),
        Experiment(
            "multitask",
            "Multi-task: identity-stable attributes as a second task",
            "Multi-task face attributes (Table 7, Fast-Model; softmax, two stages)",
            "Training the identity representation jointly with identity-stable attributes "
            "improves recognition.",
            "MegaFace rank-1 identification: no attribute 70.28 %, all attributes 73.07 %; "
            "LFW 97.20 → 97.62 %",
            "pose_expression",
            "all_pairs",
            (
                Arm("identity", "softmax, identity only"),
                Arm(
                    "attributes",
                    "softmax + attribute head (λ1: 0 then 0.1)",
                    {"attributes": True},
                ),
            ),
            attribute_weight=(0.0, 0.1),
        ),
    )
}
"""The study's experiments by name, in the order they run.

Shape:
    A ``dict`` of :class:`Experiment`.
"""


class SoftmaxHead(nn.Linear):
    """Plain softmax classifier logits ``W f + b`` with the margin heads' ``(embedding, labels)``
    signature (labels unused).

    Shape:
        embedding ``(B, D)`` → logits ``(B, C)``.
    """

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(embedding)


def _fan_keys(backbone: nn.Module, fan: nn.Module) -> dict[str, str]:
    """Stage → FAN's last-stack h2l feature whose side is nearest the stage's (Fig. 2's 1-1).

    FAN-Face pairs the IResNet's 56, 28, 14, 7 maps with FAN's 64, 32, 16, 8 ones: the
    nearest size. Here the stages are 28, 14, 7, 7 and the FAN's levels 16, 8, 4, 2, 1, so
    stages 1–2 take the 16×16 feature and stages 3–4 the 8×8 one.
    """
    keys = {}
    for info in backbone.feature_info:
        side = SIZE / info["reduction"]
        nearest = min(fan.resolutions, key=lambda r: (abs(r - side), -r))
        keys[info["module"]] = f"h2l.{fan.num_stacks}.{nearest}"
    return keys


def build_arm(
    arm: Arm,
    num_classes: int,
    side: dict[str, nn.Module],
) -> tuple[nn.Module, nn.Module]:
    """The recognizer and head of an arm (a :class:`faceaux.FaceRecognizer` + margin head).

    Args:
        arm: the arm.
        num_classes: training identities.
        side: trained side networks (``"fan"``, ``"parser"``) for arms that need them.

    Shape:
        The recognizer maps ``(B, 3, 56, 56)`` (``(B, 3, 64, 64)`` loose crops for aligning
        arms) in [−1, 1] to ``(B, D)``.
    """
    from faceaux.heads.margin import ArcFace
    from faceaux.layers.alignment import SpatialTransformerAlign
    from faceaux.layers.attributes import AttributeHead
    from faceaux.layers.heatmaps import HeatmapStacker
    from faceaux.layers.parts import PartMaskPooling, StructureCorrelation
    from faceaux.models.recognizer import FaceRecognizer
    from faceaux.models.registry import create_model

    options = arm.options
    backbone = create_model(
        "iresnet_nano",
        input_size=(SIZE, SIZE),
        strides=(2, 2, 2, 1),
        pooling=options.get("pooling", "fc"),
    )
    kwargs: dict[str, Any] = {"landmark_sigma": 1.5}
    align = options.get("align")
    if align == "identity":
        kwargs["align"] = SpatialTransformerAlign(
            "identity", output_size=(SIZE, SIZE), crop_size=(SIZE, SIZE)
        )
    elif align is not None:
        kwargs["align"] = SpatialTransformerAlign(align, output_size=(SIZE, SIZE))
    if options.get("heatmaps") is not None:
        kwargs["heatmaps"] = HeatmapStacker(INTERNAL_51, normalize=None)
        if options["heatmaps"] == "fan":
            kwargs["fan"] = side["fan"]
            kwargs["fan_input_size"] = side["fan"].input_size
    if options.get("integration"):
        kwargs["integration"] = _fan_keys(backbone, side["fan"])
    if options.get("parts") is not None:
        kwargs["parts"] = PartMaskPooling(parts=FSENET_PARTS, mask_resize="max")
        kwargs["part_stage"] = "layer1"  # 28×28 at 56×56 input: FSENet's resolution (§3.3)
        if options.get("structure"):
            kwargs["structure"] = StructureCorrelation()
        if options["parts"] == "parser":
            kwargs["parser"] = side["parser"]
            kwargs["parser_input_size"] = side["parser"].input_size
    if options.get("attributes"):
        kwargs["attributes"] = AttributeHead(
            backbone.embedding_size, 7, hidden_features=128, dropout=0.5
        )
    model = FaceRecognizer(backbone, **kwargs)
    if arm.head == "softmax":
        head: nn.Module = SoftmaxHead(model.embedding_size, num_classes)
    else:
        head = ArcFace(model.embedding_size, num_classes, s=32.0, m=0.5)
    return model, head


def side_inputs_needed(arm: Arm) -> set[str]:
    """Ground truth an arm reads at every call (``"landmarks"``, ``"parsing"``)."""
    needed = set()
    if arm.options.get("heatmaps") == "ground_truth":
        needed.add("landmarks")
    if arm.options.get("parts") == "ground_truth":
        needed.add("parsing")
    return needed


Builder = Callable[[Arm, int, dict[str, nn.Module]], tuple[nn.Module, nn.Module]]
