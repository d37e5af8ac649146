"""Every row of ``docs/ablations.md`` ("Reproducing the ablations") is built and told apart.

Each documented table row has a check here, registered under the row's first cell: it builds
the row's configuration at full size on the meta device (structure and parameter counts, no
memory) and, where the row runs differently, at reduced width for a forward pass, and asserts
what sets the row apart from its neighbours (parameter count, output shape, the active branch).
``test_every_documented_row_has_a_check`` keeps the page and this file in step. The acceptance
tests of issue 14's fixes are at the end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_configs import NARROW, small_fan, small_parser
from torch import nn

from faceaux import (
    INTERNAL_51,
    ArcFace,
    CosFace,
    FaceRecognizer,
    HeatmapStacker,
    SphereFace,
)
from faceaux.conventions import FSENET_PARTS
from faceaux.layers.alignment import LOCALIZATION_SETTINGS, param_groups
from faceaux.layers.attributes import CELEBA_FACE_ATTRIBUTES, MULTITASK_STAGES
from faceaux.layers.gnap import GNAP, faster_fc_param_groups
from faceaux.models import FAN, StackedHourGlass, create_model
from faceaux.models.embedding_head import EmbeddingHead
from faceaux.models.fanface import FANFeatureIntegrator, fanface
from faceaux.models.multitask import identity_branch
from faceaux.models.stnface import AlignmentResNet, ResidualUnit

DOC = Path(__file__).resolve().parents[1] / "docs" / "ablations.md"
ROWS: dict[str, dict[str, Callable[[], None]]] = {}


def row(section: str, *labels: str) -> Callable:
    """Register a check for the documented rows ``labels`` of ``section``."""

    def register(check: Callable[..., None]) -> Callable[..., None]:
        for label in labels:
            ROWS.setdefault(section, {})[label] = (
                (lambda label=label: check(label)) if len(labels) > 1 else check
            )
        return check

    return register


def documented_rows() -> dict[str, list[str]]:
    """First cells of the table rows under each ``## section`` of the page."""
    rows: dict[str, list[str]] = {}
    section = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section and line.startswith("| ") and not line.startswith("| row |"):
            rows.setdefault(section, []).append(line.split("|")[1].strip())
    rows.pop("Choices where the paper is ambiguous", None)
    return rows


def meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build at full size on the meta device (no memory, no initialisation cost)."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # randomly initialised side networks
        return build()


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- FAN-Face ------------------------------------------------------------------------------------

FANFACE = "FAN-Face"
FANFACE_ROWS = {
    "AS1 H2": ({"fan_part": None}, 29_376),
    "AS1 H2+": ({"fan_part": None, "heatmaps": "all"}, 426_496),
    "AS1 H1": ({"fan_part": None, "heatmap_key": "heatmaps.1"}, 29_376),
    "AS2 H2,1-1,BL,l2h-2": ({"fan_part": "l2h"}, 977_344),
    "AS2 H2,1-1,BL,h2l-2": ({}, 977_344),
    "AS3 H2,1-1,AL,h2l-2": ({"variant": "advanced"}, 739_424),
    "AS3 H2,1-1,SL,h2l-2": ({"variant": "simple"}, 278_144),
    "AS4 H2,1M,BL,h2l-2": ({"connectivity": "1-many"}, 3_534_288),
}


@row(FANFACE, *FANFACE_ROWS)
def fanface_row(label: str) -> None:
    kwargs, extra = FANFACE_ROWS[label]
    model = meta(lambda: create_model("fanface_iresnet34", fan=FAN(), **kwargs))
    baseline = meta(lambda: create_model("iresnet34"))
    assert trainable(model) - trainable(baseline) == extra
    assert model.backbone.conv1.in_channels == 3 + 51  # H2: 51 heatmaps stacked with the image
    assert model.stacker.normalize is None  # the paper's raw heatmaps
    assert model.heatmap_key == kwargs.get("heatmap_key", "heatmaps.2")
    assert len(model.projection) == (4 if kwargs.get("heatmaps") == "all" else 0)
    layers = list(model.integration.values())
    if kwargs.get("fan_part", "h2l") is None:
        assert not layers
        return
    part = kwargs.get("fan_part", "h2l")
    assert all(key.startswith(f"{part}.2.") for key in model.integration_points.values())
    assert {layer.variant for layer in layers} == {kwargs.get("variant", "basic")}
    assert len(layers) == (16 if kwargs.get("connectivity") == "1-many" else 4)
    assert all(layer.learnable_gamma == (len(layers) == 16) for layer in layers)
    small = create_model(
        "fanface_iresnet34", fan=small_fan(), fan_input_size=64, widths=NARROW, **kwargs
    ).eval()
    with torch.no_grad():
        assert small(torch.rand(2, 3, 112, 112) * 2 - 1).shape == (2, 512)


@row(FANFACE, "Baseline ArcFace (ResNet-34)", "AS5 ResNet-34-Softmax")
def fanface_baseline(label: str) -> None:
    model = meta(lambda: create_model("iresnet34"))
    assert total(model) == 34_139_328
    assert model.conv1.in_channels == 3
    head = ArcFace(512, 10) if label.startswith("Baseline") else nn.Linear(512, 10)
    small = create_model("iresnet34", widths=NARROW).eval()
    with torch.no_grad():
        embedding = small(torch.rand(2, 3, 112, 112))
    logits = head(embedding, torch.tensor([1, 2])) if isinstance(head, ArcFace) else head(embedding)
    assert logits.shape == (2, 10)


@row(FANFACE, "AS5 H2,1-1,BL,h2l-2-Softmax")
def fanface_softmax() -> None:
    model = create_model("fanface_iresnet34", fan=small_fan(), fan_input_size=64, widths=NARROW)
    classifier = nn.Linear(512, 10)
    loss = F.cross_entropy(classifier(model.train()(torch.rand(4, 3, 112, 112))), torch.arange(4))
    loss.backward()
    assert model.integration["layer1"].variant == "basic"
    assert classifier.weight.grad is not None
    assert torch.isfinite(loss)


class CoordinateDetector(nn.Module):
    """A stand-in for AS6's other landmark networks: an encoder with its own feature keys."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first = self.stem(x)
        return {"encoder.1": first, "encoder.2": self.down(first)}


@row(FANFACE, "AS6 Wing, Simple, HRNet")
def fanface_other_detector() -> None:
    detector = CoordinateDetector()
    model = FaceRecognizer(
        create_model("iresnet34", widths=NARROW),
        heatmaps=HeatmapStacker(INTERNAL_51, normalize=None),
        fan=detector,
        integration={"layer1": "encoder.1", "layer2": "encoder.2"},
        fan_input_size=64,
    ).eval()
    landmarks = torch.rand(2, 68, 2) * 100 + 6  # a coordinate regressor: heatmaps rendered
    with torch.no_grad():
        out = model.forward_aux(torch.rand(2, 3, 112, 112), landmarks=landmarks)
    assert out["embedding"].shape == (2, 512)
    assert out["heatmaps"].shape == (2, 68, 112, 112)
    assert set(model.integration) == {"layer1", "layer2"}
    assert not any(p.requires_grad for p in model.fan.parameters())


@row(FANFACE, "AS7 Multi-task")
def fanface_multitask() -> None:
    model = create_model("iresnet34", widths=NARROW).train()
    head = nn.Conv2d(NARROW[-1], 51, 1)
    fan = small_fan().eval()
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        fan_input = F.interpolate((images + 1) / 2, size=(64, 64), mode="bilinear")  # [0, 1]
        target = F.adaptive_avg_pool2d(fan(fan_input)[:, list(INTERNAL_51)], 7)
    features = model.forward_features(images)
    predicted = head(features)
    assert predicted.shape == target.shape == (2, 51, 7, 7)
    loss = ArcFace(512, 5)(model.forward_head(features), torch.tensor([0, 1])).mean()
    (loss + 0.1 * F.mse_loss(predicted, target)).backward()
    assert head.weight.grad.abs().sum() > 0


@row(FANFACE, "§6 ResNet-50", "§6 ResNet-100 (Table 4)")
def fanface_deeper(label: str) -> None:
    deep = label.endswith("(Table 4)")
    model = meta(
        lambda: (
            fanface((3, 13, 30, 3), fan=FAN())
            if deep
            else create_model("fanface_iresnet50", fan=FAN())
        )
    )
    baseline = meta(lambda: create_model("iresnet100" if deep else "iresnet50"))
    assert trainable(model) - trainable(baseline) == 977_344  # one Basic Layer per stage
    assert len(model.backbone.layer3) == (30 if deep else 14)


# --- STN -----------------------------------------------------------------------------------------

STN = "STN alignment learning"
RECOGNIZER_PARAMETERS = 34_623_232  # AlignmentResNet at 112×112, D = 512
LOCALISATION = {1: 263_080, 2: 150_568, 3: 159_016, 4: 2_117_800, 5: 1_143_208}  # projective


@row(STN, "Table 3 Identical")
def stn_identity() -> None:
    model = meta(
        lambda: create_model("stnface_resnet36", transform="identity", crop_size=(112, 112))
    )
    assert model.align.regressor is None
    assert total(model) == RECOGNIZER_PARAMETERS
    small = create_model(
        "stnface_resnet36", transform="identity", crop_size=(112, 112), widths=NARROW
    ).eval()
    faces = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        aligned = small.forward_aux(faces)["aligned"]
    torch.testing.assert_close(aligned, faces[:, :, 8:120, 8:120], atol=1e-5, rtol=0)


@row(STN, "Table 3 Similarity", "Table 3 Affine", "Table 3 Projective")
def stn_transform(label: str) -> None:
    kind = label.split()[-1].lower()
    model = meta(lambda: create_model("stnface_resnet36", transform=kind))
    count = {"similarity": 4, "affine": 6, "projective": 8}[kind]
    assert model.align.regressor.out_features == count
    assert total(model.align) == 93_472 + (128 * 8 * 8 + 1) * count  # setting 3
    assert total(model) == RECOGNIZER_PARAMETERS + total(model.align)
    small = create_model("stnface_resnet36", transform=kind, widths=NARROW).eval()
    with torch.no_grad():
        out = small.forward_aux(torch.rand(2, 3, 128, 128))
    assert out["aligned"].shape == (2, 3, 112, 112)
    assert out["embedding"].shape == (2, 512)


@row(STN, *(f"Table 2 setting {n}" for n in range(1, 6)))
def stn_setting(label: str) -> None:
    setting = int(label.split()[-1])
    model = meta(lambda: create_model("stnface_resnet36", **LOCALIZATION_SETTINGS[setting]))
    layers = [*model.align.localization, model.align.regressor]
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == (1, 2, 3, 2, 3)[setting - 1]
    assert sum(isinstance(m, nn.Linear) for m in layers) == (1, 1, 1, 2, 2)[setting - 1]
    assert total(model.align) == LOCALISATION[setting]
    assert total(model) == RECOGNIZER_PARAMETERS + LOCALISATION[setting]


@row(STN, "Table 2 landmark regression")
def stn_landmark_regression() -> None:
    from faceaux import SpatialTransformerAlign

    for setting in LOCALIZATION_SETTINGS:
        stn = SpatialTransformerAlign("projective", **LOCALIZATION_SETTINGS[setting])
        regressor = nn.Sequential(stn.localization, nn.Linear(stn.regressor.in_features, 10))
        points = regressor(torch.rand(2, 3, 64, 64))
        loss = F.mse_loss(points, torch.rand(2, 10))
        loss.backward()
        assert points.shape == (2, 10)


@row(STN, "Table 1 network")
def stn_table_1() -> None:
    model = meta(lambda: create_model("stnface_resnet36"))
    net = model.backbone
    assert isinstance(net, AlignmentResNet)
    units = [
        sum(isinstance(m, ResidualUnit) for m in net.get_submodule(f"layer{i}"))
        for i in (1, 2, 3, 4)
    ]
    assert units == [2, 4, 8, 2]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 36
    assert [c.out_channels for c in convs if c.stride == (2, 2)] == [64, 128, 256, 512]
    assert convs[0].kernel_size == (3, 3)  # the 7×7 stem replaced by a 3×3 (§3.1)
    assert (net.dropout.p, net.fc.in_features, net.fc.out_features) == (0.4, 512 * 7 * 7, 512)
    assert isinstance(net.features, nn.BatchNorm1d)
    assert total(net) == RECOGNIZER_PARAMETERS


@row(STN, "§4 localisation learning rate")
def stn_learning_rate() -> None:
    model = create_model("stnface_resnet36", widths=NARROW)
    for scale in (0.1, 0.01):
        groups = param_groups(model, lr=0.01, loc_lr_scale=scale)
        assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.01 * scale)]
        assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.align.parameters()}


# --- FSENet --------------------------------------------------------------------------------------

FSENET = "FSENet"
FSENET_ROWS = {
    "Table 13 Norm sum-weighted": ({}, 1340),
    "Table 13 Norm mean-pooling": ({"pooling_mode": "mean"}, 1340),
    "Table 13 Norm max-pooling": ({"pooling_mode": "max"}, 1340),
    "Table 13 Non-Norm sum-weighted": ({"pooling_normalize": False}, 1340),
    "Table 13 Non-Norm mean-pooling": ({"pooling_mode": "mean", "pooling_normalize": False}, 1340),
    "Table 13 Non-Norm max-pooling": ({"pooling_mode": "max", "pooling_normalize": False}, 1340),
    "Table 13 w/o correlation": ({"structure": False}, 512 + 6 * 128),
    "Table 12 56×56": ({"part_stage": 0}, 512 + 6 * (64 + 10)),
    "Table 12 28×28": ({"part_stage": 1}, 1340),
    "Table 12 14×14": ({"part_stage": 2}, 512 + 6 * (256 + 10)),
    "Table 11 All": ({"parts": range(11)}, 512 + 11 * (128 + 20)),
    "Table 11 Nine": ({"parts": range(1, 10)}, 512 + 9 * (128 + 16)),
    "Table 11 Six": ({}, 1340),
    "Table 9 Parsing": ({}, 1340),
    "Table 8 1:1": ({"local_weight": 1.0}, 1340),
    "Table 8 1:0.8": ({"local_weight": 0.8}, 1340),
    "Table 8 1:0.6": ({}, 1340),
    "Table 8 1:0.4": ({"local_weight": 0.4}, 1340),
    "Table 7 Global+Local": ({}, 1340),
    "Table 14 ours": ({}, 1340),
}
FSENET_TRAINABLE = 43_590_336  # IResNet-50's: the parser is frozen


@row(FSENET, *FSENET_ROWS)
def fsenet_row(label: str) -> None:
    kwargs, size = FSENET_ROWS[label]
    model = meta(lambda: create_model("fsenet_iresnet50", **kwargs))
    assert model.embedding_size == size
    assert trainable(model) == FSENET_TRAINABLE
    pool = model.parts
    assert pool.mode == kwargs.get("pooling_mode", "weighted")
    assert pool.normalize == kwargs.get("pooling_normalize", True)
    assert pool.parts == tuple(kwargs.get("parts", FSENET_PARTS))
    assert (model.structure is None) == (kwargs.get("structure") is False)
    assert model.part_stage == f"layer{kwargs.get('part_stage', 1) + 1}"
    assert model.local_weight == kwargs.get("local_weight", 0.6)
    small = create_model("fsenet_iresnet50", parsing_net=small_parser(), widths=NARROW, **kwargs)
    with torch.no_grad():
        out = small.eval().forward_aux(torch.rand(2, 3, 112, 112) * 2 - 1)
    local = out["local"]
    torch.testing.assert_close(
        out["embedding"][:, 512:], model.local_weight * torch.nn.functional.normalize(local, dim=1)
    )
    torch.testing.assert_close(out["embedding"][:, :512].norm(dim=1), torch.ones(2))
    channels = NARROW[kwargs.get("part_stage", 1)]
    assert out["parts"].shape == (2, len(pool.parts), channels)


def _trained_like(**kwargs) -> FaceRecognizer:
    return create_model(
        "fsenet_iresnet50", parsing_net=small_parser(), widths=NARROW, **kwargs
    ).eval()


@row(FSENET, "Table 8 Local Part", "Table 8 Global", "Table 7 Global")
def fsenet_halves(label: str) -> None:
    model = _trained_like()
    with torch.no_grad():
        out = model.forward_aux(torch.rand(2, 3, 112, 112) * 2 - 1)
    if label.endswith("Local Part"):
        assert out["local"].shape == (2, 6 * (NARROW[1] + 10))
    else:
        assert out["global"].shape == (2, 512)
        torch.testing.assert_close(F.normalize(out["global"]), out["embedding"][:, :512])
    if label == "Table 7 Global":  # or the global network trained alone
        assert total(meta(lambda: create_model("iresnet50"))) == 43_590_848


@row(FSENET, "Table 8 Parsing")
def fsenet_parsing_features() -> None:
    """Not defined by the text: the page says so; the parser's own output is available."""
    model = _trained_like()
    with torch.no_grad():
        out = model.forward_aux(torch.rand(2, 3, 112, 112))
    assert out["masks"].shape == (2, 11, 128, 128)
    assert "not defined" in DOC.read_text().split("| Table 8 Parsing |")[1].split("\n")[0]


@row(
    FSENET,
    "Table 10 one module, 8×8 / 4×4 / 2×2",
    "Table 10 two modules, 8×8 / 4×4 / 2×2",
    "Table 10 three modules, 8×8 / 4×4 / 2×2",
)
def fsenet_parser(label: str) -> None:
    stacks = {"one": 1, "two": 2, "three": 3}[label.split()[2]]
    for depth, bottom in ((2, 8), (3, 4), (4, 2)):
        parser = meta(lambda: StackedHourGlass(stacks, 11, depth=depth, input_size=128))  # noqa: B023
        assert parser.num_stacks == stacks
        assert min(parser.resolutions) == bottom
        model = meta(lambda: create_model("fsenet_iresnet50", parsing_net=parser))  # noqa: B023
        assert model.parser is parser
    small = StackedHourGlass(stacks, 11, num_features=16, depth=3, input_size=128)
    model = create_model("fsenet_iresnet50", parsing_net=small, widths=NARROW).eval()
    with torch.no_grad():
        assert model.forward_aux(torch.rand(1, 3, 112, 112))["masks"].shape == (1, 11, 128, 128)


@row(FSENET, "Table 9 Landmarks")
def fsenet_landmarks() -> None:
    model = FaceRecognizer(
        create_model("iresnet50", widths=NARROW),
        heatmaps=HeatmapStacker(None, normalize=None),
        fan=small_fan(),
        integration={"layer2": None},
        stage_heatmaps=True,
        fan_input_size=64,
    ).eval()
    assert set(model.projection) == {"layer2"}
    assert model.projection["layer2"].in_channels == NARROW[1] + 68
    with torch.no_grad():
        assert model(torch.rand(2, 3, 112, 112)).shape == (2, 512)


@row(
    FSENET,
    "Table 6 Softmax",
    "Table 6 A-softmax",
    "Table 6 CosFace",
    "Table 6 ArcFace m = 0.5, 1, 1.5",
)
def fsenet_losses(label: str) -> None:
    model = _trained_like().train()
    embedding = model(torch.rand(4, 3, 112, 112) * 2 - 1)
    labels = torch.tensor([0, 1, 2, 3])
    kind, size = label.split()[2], model.embedding_size  # 1340 at full width
    if kind == "Softmax":
        heads = [nn.Linear(size, 10)]
    elif kind == "A-softmax":
        heads = [SphereFace(size, 10, m=4)]
    elif kind == "CosFace":
        heads = [CosFace(size, 10)]
    else:
        heads = [ArcFace(size, 10, m=m) for m in (0.5, 1.0, 1.5)]
    for head in heads:
        if isinstance(head, nn.Linear):
            loss = F.cross_entropy(head(embedding), labels)
        else:
            loss = F.cross_entropy(head(embedding, labels), labels)
        assert torch.isfinite(loss)


@row(FSENET, "Table 14 w/o parsing", "Table 14 w/o hourglass")
def fsenet_timing_variants(label: str) -> None:
    if label.endswith("parsing"):
        model = meta(lambda: create_model("iresnet50"))
        assert trainable(model) == FSENET_TRAINABLE
        return
    model = _trained_like()
    calls = []
    model.parser.register_forward_hook(lambda *_: calls.append(1))
    labels = torch.randint(0, 11, (2, 112, 112))
    with torch.no_grad():
        out = model.forward_aux(torch.rand(2, 3, 112, 112), masks=labels)
    assert not calls  # ground-truth parsing: the hourglass does not run
    assert out["embedding"].shape == (2, 512 + 6 * (NARROW[1] + 10))


# --- GNAP ----------------------------------------------------------------------------------------

GNAP_SECTION = "GNAP"


@row(GNAP_SECTION, "Table 1 LResNet18E", "Table 1 LResNet18E(FasterFC)")
def gnap_lresnet(label: str) -> None:
    model = meta(lambda: create_model("lresnet18e"))
    assert total(model) == 24_025_600
    assert model.dropout.p == 0.4
    if label.endswith("(FasterFC)"):
        small = create_model("lresnet18e", widths=NARROW)
        head = ArcFace(512, 10)
        groups = faster_fc_param_groups(small, head, lr=0.1)
        assert [(g["lr"], g["weight_decay"]) for g in groups] == [
            (0.1, 5e-4),
            (pytest.approx(1.0), 5e-4),
        ]
        assert len(groups[1]["params"]) == len(list(head.parameters()))


@row(GNAP_SECTION, "Table 1 LResNet18E(GAP)", "Table 1 LResNet18E(GNAP)")
def gnap_output_stage(label: str) -> None:
    kind = "gap" if "GAP" in label else "gnap"
    kwargs = {"pooling": "gap", "dropout": 0.0} if kind == "gap" else {"pooling": "gnap"}
    model = meta(lambda: create_model("lresnet18e", **kwargs))
    assert total(model) == (11_443_200 if kind == "gap" else 11_179_008)
    assert not hasattr(model, "fc")
    if kind == "gap":
        assert isinstance(model.gap, EmbeddingHead)
        assert model.gap.kind == "gap"
        assert model.gap.dropout.p == 0.0  # InsightFace's fc_type="GAP" has no dropout
    else:
        assert isinstance(model.gnap, GNAP)
        assert total(meta(lambda: create_model("iresnet18_gnap"))) == 11_179_008
    small = create_model("lresnet18e", widths=NARROW, **kwargs).eval()
    with torch.no_grad():
        features = small.forward_features(torch.rand(2, 3, 112, 112))
        shuffled = features.flatten(2)[:, :, torch.randperm(49)].reshape(features.shape)
        # both global operators are spatially symmetric (the FC is not)
        torch.testing.assert_close(small.forward_head(shuffled), small.forward_head(features))


@row(GNAP_SECTION, "Table 2 MobileFaceNet", "Table 2 MobileFaceNet+", "Table 2 MobileFaceNet++")
def gnap_mobilefacenet(label: str) -> None:
    plus = label.endswith("+")
    model = meta(lambda: create_model("mobilefacenet_gnap" if plus else "mobilefacenet"))
    assert total(model) == (912_256 if plus else 1_200_512)
    assert model.pooling == ("gnap" if plus else "gdc")
    if label.endswith("++"):
        head = ArcFace(512, 10)
        groups = faster_fc_param_groups(create_model("mobilefacenet_gnap"), head, lr=0.1)
        assert groups[1]["lr"] == pytest.approx(1.0)


@row(GNAP_SECTION, "InsightFace's GNAP")
def gnap_batch_mean() -> None:
    model = create_model("iresnet18_gnap", widths=NARROW, embedding_size=64).eval()
    images = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        per_sample = model(images)
        model.gnap.norm_mean = "batch"
        batch = model(images)
        alone = model(images[:1])
    assert not torch.allclose(per_sample, batch)
    assert not torch.allclose(batch[:1], alone)  # one face's embedding depends on its batch


# --- Multi-task ----------------------------------------------------------------------------------

MTL = "Multi-task attributes"
MTL_PARAMETERS = {"mtl_attr_fast": 35_775_367, "mtl_attr_full": 47_103_943}


def _mtl(name: str, **kwargs) -> FaceRecognizer:
    kwargs.setdefault("attribute_hidden", 32)
    return create_model(name, widths=NARROW, embedding_size=64, **kwargs)


@row(
    MTL,
    "Table 2 Fast-Model (without Attribute)",
    "Table 2 Fast-Model",
    "Table 2 Full-Model (without Attribute)",
    "Table 2 Full-Model",
    "Table 5 Fast-Block",
    "Table 5 Full-Block",
    "Table 6 Configuration-1",
    "Table 7 No attribute",
    "Table 7 All attributes",
    "Table 4 attribute prediction",
)
def mtl_model(label: str) -> None:
    name = "mtl_attr_full" if "Full" in label or label.startswith("Table 4") else "mtl_attr_fast"
    model = meta(lambda: create_model(name))
    assert total(model) == MTL_PARAMETERS[name]
    block = model.backbone.groups[0][-1]
    assert len(block.body) == (3 if name == "mtl_attr_full" else 2)
    assert block.bypass is None
    assert model.attributes.num_attributes == 7
    assert model.attributes.dropout.p == 0.5
    without = "without" in label or label == "Table 7 No attribute"
    stages = [MULTITASK_STAGES[0]] * 2 if without else list(MULTITASK_STAGES)
    assert [stage.loss().lambda_attr for stage in stages] == ([0.0, 0.0] if without else [0.0, 0.1])
    small = _mtl(name).train()
    images, labels = torch.randn(4, 3, 112, 96), torch.tensor([0, 1, 2, 3])
    out = small.forward_aux(images)
    classifier = nn.Linear(64, 10)
    targets = torch.randint(0, 2, (4, 7)).float()
    loss = stages[-1].loss()(classifier(out["embedding"]), labels, out["attributes"], targets)
    loss.backward()
    reached = small.attributes.classifier.weight.grad
    assert (reached is None or reached.abs().sum() == 0) == without


@row(MTL, "Table 5 Variants-Block")
def mtl_variants_block() -> None:
    model = meta(lambda: create_model("mtl_attr_fast", bypass_conv=True))
    block = model.backbone.groups[1][-1]
    assert len(block.body) == 2
    assert isinstance(block.bypass[0], nn.Conv2d)
    assert block.bypass[0].kernel_size == (3, 3)
    assert total(model) == MTL_PARAMETERS["mtl_attr_full"]  # as many convs, one on the bypass
    small = _mtl("mtl_attr_fast", bypass_conv=True).eval()
    x = torch.randn(1, NARROW[0], 6, 5)
    unit = small.backbone.groups[0][-1]
    with torch.no_grad():
        torch.testing.assert_close(unit(x), unit.bypass(x) + unit.body(x))
        assert small(torch.randn(2, 3, 112, 96)).shape == (2, 64)


@row(MTL, "Table 6 Configuration-2")
def mtl_configuration_2() -> None:
    model = meta(lambda: create_model("mtl_attr_fast", attribute_hidden=None))
    assert model.attributes.attribute_fc is None
    assert model.attributes.classifier.in_features == 1024
    assert total(model) == 34_723_719
    small = _mtl("mtl_attr_fast", attribute_hidden=None).eval()
    with torch.no_grad():
        out = small.forward_aux(torch.randn(2, 3, 112, 96))
    head = small.attributes.classifier
    torch.testing.assert_close(out["attributes"], head(out["embedding"]))


@row(MTL, "Table 6 Configuration-3")
def mtl_configuration_3() -> None:
    model = _mtl("mtl_attr_fast").train()
    branch = identity_branch(64, 64)
    classifier = nn.Linear(64, 10)
    out = model.forward_aux(torch.randn(4, 3, 112, 96))
    logits = classifier(branch(out["embedding"]))
    F.cross_entropy(logits, torch.arange(4)).backward()
    assert branch[0].weight.grad.abs().sum() > 0
    assert model.attributes.attribute_fc is not None  # the attribute-only FC as well
    assert [type(m) for m in identity_branch()] == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.PReLU,
        nn.Dropout,
    ]
    assert identity_branch()[0].weight.shape == (1024, 1024)


@row(MTL, "Table 7 Eye attribute", "Table 7 Nose attributes", "Table 7 Global attributes")
def mtl_attribute_group(label: str) -> None:
    group = label.split()[2].lower()
    positions = CELEBA_FACE_ATTRIBUTES.group_positions(group)
    assert len(positions) == {"eye": 1, "nose": 2, "global": 4}[group]
    model = _mtl("mtl_attr_fast", num_attributes=len(positions)).eval()
    all_labels = torch.randint(0, 2, (2, 7)).float()
    with torch.no_grad():
        out = model.forward_aux(torch.randn(2, 3, 112, 96))
    assert out["attributes"].shape == all_labels[:, list(positions)].shape


# --- the page and this file agree ---------------------------------------------------------------


def test_every_documented_row_has_a_check() -> None:
    documented = documented_rows()
    assert set(documented) == set(ROWS), "sections differ"
    for section, labels in documented.items():
        assert len(labels) == len(set(labels)), f"{section}: duplicate rows"
        assert set(labels) == set(ROWS[section]), section


CASES = [(section, label) for section, rows in ROWS.items() for label in rows]


@pytest.mark.parametrize(("section", "label"), CASES, ids=[f"{s}: {r}" for s, r in CASES])
def test_ablation_row(section: str, label: str) -> None:
    ROWS[section][label]()


# --- acceptance tests of issue 14's fixes ---------------------------------------------------------


def test_fsenet_global_half_has_unit_norm() -> None:
    """§4.7.2: the global representation is L2-normalised before the 1 : 0.6 weighting."""
    model = _trained_like()
    with torch.no_grad():
        out = model.forward_aux(torch.rand(3, 3, 112, 112) * 2 - 1)
    torch.testing.assert_close(out["embedding"][:, :512].norm(dim=1), torch.ones(3))
    assert out["global"].norm(dim=1).min() > 2  # the raw g is not unit-length


def test_integrator_heatmaps_keep_their_relative_peaks() -> None:
    """FAN-Face stacks FAN's heatmaps as they are: a confident (0.84) and an unsure (0.0089)
    landmark stay apart; the integrator used to rescale both to 1."""

    def backbone() -> nn.Module:  # the integrator grows its first convolution in place
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))

    fan = small_fan()
    heatmaps = torch.zeros(1, 68, 16, 16)
    heatmaps[0, 0, 5, 6], heatmaps[0, 1, 9, 3] = 0.0089, 0.84
    images = torch.rand(1, 3, 16, 16)
    for normalize, peaks in ((None, (0.0089, 0.84)), ("max", (1.0, 1.0))):
        model = FANFeatureIntegrator(
            backbone(),
            fan,
            {"2": "h2l.2.16"},
            landmarks=(0, 1),
            fan_input_size=64,
            input_size=(16, 16),
            heatmap_normalize=normalize,
        ).eval()
        stacked = model.stacker(images, heatmaps)
        assert stacked.shape == (1, 5, 16, 16)
        torch.testing.assert_close(stacked[0, 3:].amax(dim=(1, 2)), torch.tensor(peaks))
        with torch.no_grad():
            assert model.forward_aux(images, heatmaps=heatmaps)["embedding"].shape[0] == 1
    assert FANFeatureIntegrator(backbone(), fan, {"2": "h2l.2.16"}, fan_input_size=64,
                                input_size=(16, 16)).stacker.normalize is None  # fmt: skip
    fanface_model = create_model("fanface_iresnet34", fan=fan, fan_input_size=64, widths=NARROW)
    assert fanface_model.stacker.normalize is None
    with pytest.raises(ValueError, match="normalize"):
        create_model("fanface_iresnet34", fan=fan, heatmap_normalize="sum", widths=NARROW)
