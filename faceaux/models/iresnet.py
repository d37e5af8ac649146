"""IResNet: the "improved ResNet" face recognizer of ArcFace (LResNet-E-IR), InsightFace layout.

Deng et al., *ArcFace: Additive Angular Margin Loss for Deep Face Recognition* (CVPR 2019),
§3.2 / Fig. 7: a 3×3 stride-1 stem (conv → BN → PReLU) keeps 112×112 resolution, four stages of
"IR" basic blocks BN → conv3×3 → BN → PReLU → conv3×3 (stride) → BN plus a shortcut (1×1 conv +
BN when the shape changes), widths 64/128/256/512 and strides 2 (112 → 7), then the "E" output
block BN → dropout → FC → BN1d.

State-dict keys and shapes are identical to InsightFace ``arcface_torch/backbones/iresnet.py``
(``conv1``, ``bn1``, ``prelu``, ``layer{1..4}.{i}.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.0,
downsample.1}``, ``bn2``, ``fc``, ``features``), so checkpoints trained with InsightFace
(MS1MV3 / Glint360K r18…r100) load with ``strict=True`` and give the same embeddings:

    >>> import torch
    >>> from faceaux.models import create_model
    >>> model = create_model("iresnet_nano").eval()
    >>> model(torch.randn(2, 3, 112, 112)).shape
    torch.Size([2, 128])

Parameter counts (embedding 512, 112×112; ``sum(p.numel() for p in model.parameters())``,
the same figure InsightFace's models give): iresnet18 24,025,600; iresnet34 34,139,328;
iresnet50 43,590,848; iresnet100 65,156,160.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from faceaux.layers.gnap import GNAP
from faceaux.models.embedding_head import POOLINGS, EmbeddingHead
from faceaux.models.features import StagedBackbone, check_images
from faceaux.models.registry import register_model

__all__ = [
    "IBasicBlock",
    "IResNet",
    "iresnet18",
    "iresnet18_gnap",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet_nano",
    "lresnet18e",
]


class IBasicBlock(nn.Module):
    """ArcFace's improved residual unit: BN → conv → BN → PReLU → conv (stride) → BN, + shortcut.

    ArcFace §3.2 (Fig. 7, "IR" unit). No activation after the addition. The shortcut is a 1×1
    stride-``stride`` conv + BN when the stride or the width changes, else the identity.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: stride of the second conv (and of the shortcut).

    Shape:
        (B, C_in, H, W) → (B, C_out, ⌈H / stride⌉, ⌈W / stride⌉).

    Examples:
        >>> block = IBasicBlock(8, 16, stride=2)
        >>> block(torch.randn(2, 8, 14, 14)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(StagedBackbone):
    """The ArcFace IResNet with InsightFace's state-dict layout and the stage contract.

    ArcFace §3.2: stem conv3×3 (stride 1) → BN → PReLU; four stages ``layer1`` … ``layer4`` of
    :class:`IBasicBlock` (the first block of each stage has stride 2); then the output block.
    It speaks the stage contract of :mod:`faceaux.models.features` (``feature_info``,
    ``forward_stages``, ``forward_intermediates``, ``forward_head``).

    Output block (``pooling``), applied by :meth:`forward_head` to the last stage's map:

    - ``"fc"`` (ArcFace's "E" option, default): BN2d (``bn2``) → dropout → flatten → FC →
      BN1d (``features``) whose weight is fixed to 1 (InsightFace:
      ``features.weight.requires_grad = False``); InsightFace's keys, so its checkpoints load.
    - ``"gap"``: the GNAP paper's LResNet18E(GAP) (Table 1), as InsightFace builds it:
      :class:`faceaux.models.EmbeddingHead` ``"gap"`` (``gap``).
    - ``"gnap"``: :class:`faceaux.GNAP` (``gnap``) replaces BN2d → dropout → FC → BN1d (the GNAP
      paper's "GNAP replaces the penultimate FC layer", §4); it keeps spatial symmetry and adds
      only BatchNorm parameters (plus a 1×1 projection when ``embedding_size`` ≠ the last width).

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` for IResNet-50.
        widths: channels per stage (InsightFace: 64, 128, 256, 512; the stem has ``widths[0]``).
        embedding_size: D, the embedding size.
        dropout: dropout probability before the FC (InsightFace default 0).
        input_size: (H, W) the model is built for; the FC's input size is
            ``widths[-1] · ⌈H/16⌉ · ⌈W/16⌉`` (7×7 at 112×112).
        in_channels: input channels (3; more when heatmaps are stacked with the image).
        pooling: ``"fc"``, ``"gap"`` or ``"gnap"``, see above.
        strides: stride of each stage's first block (InsightFace: 2, 2, 2, 2, so 112 → 7);
            ``(2, 2, 2, 1)`` gives a stride-8 network whose last map is 7×7 at 56×56 input
            (small-image experiments at the GNAP paper's spatial scale).

    Shape:
        - images: (B, in_channels, H, W) with (H, W) = ``input_size`` for ``pooling="fc"``.
        - output: (B, D), not normalised.
        - ``forward_features``: (B, widths[-1], ⌈H/S⌉, ⌈W/S⌉), S = the product of ``strides``
          (16), the last stage's map (the output block's input).

    Examples:
        >>> model = IResNet((1, 1, 1, 1), widths=(8, 16, 32, 64), embedding_size=32).eval()
        >>> images = torch.randn(2, 3, 112, 112)
        >>> model(images).shape, model.forward_features(images).shape
        (torch.Size([2, 32]), torch.Size([2, 64, 7, 7]))
        >>> torch.equal(model.forward_head(model.forward_features(images)), model(images))
        True
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: tuple[int, int] = (112, 112),
        in_channels: int = 3,
        pooling: str = "fc",
        strides: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or len(strides) != 4:
            raise ValueError(
                f"layers, widths, strides: expected 4 stages each, received {tuple(layers)}, "
                f"{tuple(widths)}, {tuple(strides)}"
            )
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides: expected 1 or 2 per stage, received {tuple(strides)}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, received {pooling!r}")
        self.embedding_size = embedding_size
        self.input_size = tuple(input_size)
        self.pooling = pooling
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        previous = widths[0]
        self.feature_info = []
        reduction = 1
        stages = zip(layers, widths, strides, strict=True)
        for index, (blocks, width, stride) in enumerate(stages, start=1):
            reduction *= stride
            stage = [IBasicBlock(previous, width, stride=stride)]
            stage += [IBasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            self.feature_info.append(
                {
                    "module": f"layer{index}",
                    "num_chs": width,
                    "reduction": reduction,
                    "blocks": tuple(f"layer{index}.{i}" for i in range(blocks)),
                }
            )
            previous = width
        self.feature_size = tuple(math.ceil(s / reduction) for s in self.input_size)
        if pooling == "fc":
            self.bn2 = nn.BatchNorm2d(previous, eps=1e-5)
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(
                previous * self.feature_size[0] * self.feature_size[1], embedding_size
            )
            self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        elif pooling == "gap":
            self.gap = EmbeddingHead("gap", previous, embedding_size, dropout=dropout)
        else:
            self.gnap = GNAP(previous, out_features=embedding_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """InsightFace's initialisation: conv weights N(0, 0.1²), BN weight 1 and bias 0."""
        for name, module in self.named_modules():
            if name.startswith(("gnap", "gap")):
                continue  # the output stage initialises itself (fixed-scale BatchNorms)
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.pooling == "fc":
            nn.init.ones_(self.features.weight)
            self.features.weight.requires_grad_(False)

    def forward_stem(self, images: torch.Tensor) -> torch.Tensor:
        """conv1 → bn1 → prelu: (B, in_channels, H, W) → (B, widths[0], H, W)."""
        sizes = (None, self.in_channels, *self.input_size) if self.pooling == "fc" else None
        check_images(self, images, sizes=sizes or (None, self.in_channels, None, None))
        return self.prelu(self.bn1(self.conv1(images)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The output block: last stage's map (B, widths[-1], h, w) → embedding (B, D)."""
        if self.pooling == "gnap":
            return self.gnap(features)
        if self.pooling == "gap":
            return self.gap(features)
        x = self.dropout(torch.flatten(self.bn2(features), 1))
        return self.features(self.fc(x))


def _iresnet(layers: Sequence[int], **kwargs) -> IResNet:
    return IResNet(layers, **kwargs)


_ARCFACE = "ArcFace (CVPR 2019), §3.2"
_SMALL = {"widths": (8, 16, 32, 64), "embedding_size": 32}


@register_model(paper=_ARCFACE, small=_SMALL)
def iresnet18(**kwargs) -> IResNet:
    """IResNet-18 (2, 2, 2, 2); 24,025,600 parameters at D = 512. kwargs → :class:`IResNet`."""
    return _iresnet((2, 2, 2, 2), **kwargs)


@register_model(paper=_ARCFACE, small=_SMALL)
def iresnet34(**kwargs) -> IResNet:
    """IResNet-34 (3, 4, 6, 3); 34,139,328 parameters. kwargs → :class:`IResNet`."""
    return _iresnet((3, 4, 6, 3), **kwargs)


@register_model(paper=_ARCFACE, small=_SMALL)
def iresnet50(**kwargs) -> IResNet:
    """IResNet-50 (3, 4, 14, 3); 43,590,848 parameters. kwargs → :class:`IResNet`."""
    return _iresnet((3, 4, 14, 3), **kwargs)


@register_model(paper=_ARCFACE, small=_SMALL)
def iresnet100(**kwargs) -> IResNet:
    """IResNet-100 (3, 13, 30, 3); 65,156,160 parameters. kwargs → :class:`IResNet`."""
    return _iresnet((3, 13, 30, 3), **kwargs)


@register_model(embedding_size=128, paper="faceaux's tiny IResNet for tests and demos")
def iresnet_nano(**kwargs) -> IResNet:
    """A tiny IResNet for tests and demos: (1, 1, 1, 1) blocks, widths (16, 32, 64, 128), D = 128.

    Same code path and key layout as the full models; 1,111,792 parameters at D = 128 (most
    of them in the FC).
    """
    kwargs.setdefault("widths", (16, 32, 64, 128))
    kwargs.setdefault("embedding_size", 128)
    return _iresnet((1, 1, 1, 1), **kwargs)


@register_model(baseline="iresnet18", paper="GNAP, Table 1 LResNet18E (FasterFC)", small=_SMALL)
def lresnet18e(**kwargs) -> IResNet:
    """LResNet18E-IR, the GNAP paper's baseline (§4, Table 1): ArcFace's 18-layer IR network with
    the "E" output block (BN → dropout → FC → BN).

    This is the network InsightFace's MXNet code names ``LResNet18E-IR`` and its PyTorch code
    ``iresnet18``: the same layers, so the same parameter count (24,025,600 at D = 512). It is
    registered under the paper's name so that ``lresnet18e`` vs ``iresnet18_gnap`` reads as the
    paper's Table 1 comparison. Its dropout defaults to 0.4 with the "E" block, InsightFace's
    value (``iresnet18`` keeps the PyTorch code's 0), and to 0 with ``pooling="gap"``
    (InsightFace's GAP head has none). The three rows of Table 1 are ``lresnet18e()``,
    ``lresnet18e(pooling="gap")`` and ``lresnet18e(pooling="gnap")``.
    kwargs → :class:`IResNet`.
    """
    if kwargs.get("pooling", "fc") == "fc":  # InsightFace's GAP head has no dropout
        kwargs.setdefault("dropout", 0.4)
    return _iresnet((2, 2, 2, 2), **kwargs)


@register_model(baseline="iresnet18", paper="GNAP, Table 1 LResNet18E(GNAP)", small=_SMALL)
def iresnet18_gnap(**kwargs) -> IResNet:
    """LResNet18E(GNAP) of the GNAP paper (§4, Table 1): GNAP replaces BN → dropout → FC → BN.

    With D = 512 = the last width the head is BN(fixed γ) → norm-aware reweighting → GAP →
    BN1d(fixed γ), adding only BatchNorm parameters and removing the 25088×512 FC.
    kwargs → :class:`IResNet` (``pooling`` is fixed to ``"gnap"``).
    """
    kwargs["pooling"] = "gnap"
    return _iresnet((2, 2, 2, 2), **kwargs)
