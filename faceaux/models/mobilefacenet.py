"""MobileFaceNet: the mobile face recognizer with a global depthwise convolution (GDConv) head.

Chen et al., *MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile
Devices* (2018), Table 1: at 112×112, conv3×3 (64, stride 2) → depthwise conv3×3 (64) → inverted
residual bottlenecks (expansion t, output c, repeats n, stride s) = (2, 64, 5, 2), (4, 128, 1, 2),
(2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1) → conv1×1 (512) → linear GDConv 7×7 (512) →
linear 1×1 conv (D). PReLU is the non-linearity; BatchNorm follows every conv.

``mobilefacenet_gnap`` is the GNAP paper's MobileFaceNet+ (§4, Table 2): GNAP replaces the global
depthwise convolution layer (and the linear 1×1 conv after it; GNAP's own optional 1×1 projection
gives D when D ≠ 512).

Examples:
    >>> import torch
    >>> from faceaux.models import create_model
    >>> model = create_model("mobilefacenet", embedding_size=128).eval()
    >>> model(torch.randn(2, 3, 112, 112)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from faceaux.layers.gnap import GNAP
from faceaux.models.embedding_head import EmbeddingHead
from faceaux.models.features import StagedBackbone, check_images
from faceaux.models.registry import register_model

__all__ = ["MOBILEFACENET_SETTING", "ConvBN", "InvertedResidual", "MobileFaceNet"]

#: Table 1 of the MobileFaceNets paper: (expansion t, output channels c, repeats n, stride s).
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBN(nn.Module):
    """Conv (no bias) → BatchNorm → PReLU; ``activation=False`` gives the paper's "linear" conv.

    Args:
        in_channels, out_channels: C_in, C_out.
        kernel_size, stride, groups: of the convolution; padding is ``kernel_size // 2`` unless
            given.
        activation: append a PReLU.

    Shape:
        (B, C_in, H, W) → (B, C_out, H', W') with the usual convolution arithmetic.

    Examples:
        >>> ConvBN(8, 16, 3, stride=2)(torch.randn(2, 8, 14, 14)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int = 1,
        groups: int = 1,
        padding: int | tuple[int, int] | None = None,
        activation: bool = True,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = (
                kernel_size // 2
                if isinstance(kernel_size, int)
                else tuple(k // 2 for k in kernel_size)
            )
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck with PReLU: 1×1 expand → depthwise 3×3 (stride) → linear 1×1.

    MobileFaceNets §3.2 / Table 1. Residual connection when stride is 1 and C_in = C_out.

    Shape:
        (B, C_in, H, W) → (B, C_out, ⌈H / stride⌉, ⌈W / stride⌉).

    Examples:
        >>> InvertedResidual(16, 16, expansion=2, stride=1)(torch.randn(2, 16, 7, 7)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBN(in_channels, hidden, 1)
        self.depthwise = ConvBN(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, 1, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileFaceNet(StagedBackbone):
    """MobileFaceNet (Table 1 of the MobileFaceNets paper), optionally with the GNAP head.

    It speaks the stage contract of :mod:`faceaux.models.features`. Stem: ``conv1`` →
    ``conv2_dw`` (56×56 at 112×112); a new stage starts at every stride-2 bottleneck, so the
    three stages are ``blocks.0``–``blocks.4`` (28×28, 64 channels), ``blocks.5``–``blocks.11``
    (14×14, 128) and ``blocks.12``–``blocks.14`` + ``conv_sep`` (7×7, 512); the output stage is
    the GDConv head (or GAP / GNAP).

    Args:
        embedding_size: D (the paper uses 128; default 512 like the other reference models).
        setting: bottleneck configuration, default :data:`MOBILEFACENET_SETTING`.
        input_size: (H, W); the GDConv kernel is the final map size (7×7 at 112×112).
        pooling: ``"gdc"`` (linear GDConv → flatten → linear 1×1 conv (bias-free) → BN1d),
            ``"gap"`` (:class:`faceaux.models.EmbeddingHead` ``"gap"``) or ``"gnap"`` (GNAP
            paper's MobileFaceNet+: :class:`faceaux.GNAP` on the 512-channel map).

    Shape:
        - images: (B, 3, H, W).
        - output: (B, D).
        - ``forward_features``: (B, 512, ⌈H/16⌉, ⌈W/16⌉), the conv1×1 (512) output.

    Examples:
        >>> model = MobileFaceNet(embedding_size=128).eval()
        >>> model.forward_features(torch.randn(1, 3, 112, 112)).shape
        torch.Size([1, 512, 7, 7])
    """

    def __init__(
        self,
        *,
        embedding_size: int = 512,
        setting: Sequence[tuple[int, int, int, int]] = MOBILEFACENET_SETTING,
        input_size: tuple[int, int] = (112, 112),
        pooling: str = "gdc",
    ) -> None:
        super().__init__()
        if pooling not in ("gdc", "gap", "gnap"):
            raise ValueError(f"pooling: expected 'gdc', 'gap' or 'gnap', received {pooling!r}")
        self.embedding_size = embedding_size
        self.input_size = tuple(input_size)
        self.pooling = pooling
        self.first_conv = "conv1.conv"
        self.conv1 = ConvBN(3, 64, 3, stride=2)
        self.conv2_dw = ConvBN(64, 64, 3, groups=64)
        blocks: list[nn.Module] = []
        stages: list[list[str]] = []  # a new stage starts at every stride-2 bottleneck
        widths: list[int] = []
        channels = 64
        for expansion, out_channels, repeats, stride in setting:
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                if block_stride == 2 or not stages:
                    stages.append([])
                    widths.append(out_channels)
                stages[-1].append(f"blocks.{len(blocks)}")
                blocks.append(InvertedResidual(channels, out_channels, expansion, block_stride))
                channels = widths[-1] = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.conv_sep = ConvBN(channels, 512, 1)
        stages[-1].append("conv_sep")
        widths[-1] = 512
        self.feature_info = [
            {
                "module": names[-1],
                "num_chs": width,
                "reduction": 4 * 2**index,
                "blocks": tuple(names),
            }
            for index, (names, width) in enumerate(zip(stages, widths, strict=True))
        ]
        self.feature_size = tuple(math.ceil(s / 16) for s in self.input_size)
        if pooling == "gdc":
            self.gdc = ConvBN(512, 512, self.feature_size, groups=512, padding=0, activation=False)
            self.linear = nn.Linear(512, embedding_size, bias=False)
            self.features = nn.BatchNorm1d(embedding_size)
        elif pooling == "gap":
            self.gap = EmbeddingHead("gap", 512, embedding_size)
        else:
            self.gnap = GNAP(512, out_features=embedding_size)

    def forward_stem(self, images: torch.Tensor) -> torch.Tensor:
        """conv1 (stride 2) → depthwise conv2_dw: (B, 3, H, W) → (B, 64, H/2, W/2)."""
        check_images(self, images, sizes=(None, self.in_channels, None, None))
        return self.conv2_dw(self.conv1(images))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The output stage: (B, 512, h, w) → (B, D)."""
        if self.pooling == "gnap":
            return self.gnap(features)
        if self.pooling == "gap":
            return self.gap(features)
        return self.features(self.linear(torch.flatten(self.gdc(features), 1)))


@register_model(paper="MobileFaceNets (2018), Table 1")
def mobilefacenet(**kwargs) -> MobileFaceNet:
    """MobileFaceNet with the GDConv head: 1,003,136 parameters at D = 128 (1,200,512 at the
    default D = 512); the paper reports 0.99 M at D = 128."""
    return MobileFaceNet(**kwargs)


@register_model(baseline="mobilefacenet", paper="GNAP, Table 2 MobileFaceNet+")
def mobilefacenet_gnap(**kwargs) -> MobileFaceNet:
    """MobileFaceNet+ of the GNAP paper (§4, Table 2): GNAP replaces the GDConv head."""
    kwargs["pooling"] = "gnap"
    return MobileFaceNet(**kwargs)
