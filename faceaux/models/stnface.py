"""STN-Face: a recognizer that learns its own face alignment (spatial transformer in front).

Tang et al., "An End-to-End Face Recognition Method with Alignment Learning" (Optik 2020), §3,
Tables 1–3: a localisation network regresses a 2D transform from the loosely cropped face
(Table 2's setting 3), the face is warped to 112×112 and passed to the residual network of
Table 1 — a 3×3 stride-2 convolution in front of each of four groups of 2, 4, 8, 2 residual units
(64, 128, 256, 512 channels), then dropout → FC → BatchNorm to a 512-d feature — the whole
trained with ArcFace from identity labels alone. The paper's best transform is the projective one
(Table 3), our default.

- ``stnface_resnet36``: the paper's network (:class:`AlignmentResNet`, 36 convolutions).
- ``stnface_iresnet34``: an STN in front of an IResNet-34 (ArcFace's improved residual units;
  InsightFace checkpoints load into its ``backbone``), with faceaux 0.1's setting-5 localisation
  network.

Both are :class:`faceaux.models.FaceRecognizer` configurations: a
:class:`faceaux.SpatialTransformerAlign` input stage in front of the backbone. Give the
localisation network a 10–100× smaller learning rate with :func:`faceaux.param_groups`. Table 3's
rows are ``transform="identity"`` (with ``crop_size``: the paper's centre crop),
``"similarity"``, ``"affine"`` and ``"projective"``; Table 2's localisation settings are
``**LOCALIZATION_SETTINGS[n]`` (:data:`faceaux.layers.alignment.LOCALIZATION_SETTINGS`).

Examples:
    >>> import torch
    >>> from faceaux.models import create_model
    >>> model = create_model("stnface_resnet36", transform="similarity").eval()
    >>> out = model.forward_aux(torch.randn(1, 3, 128, 128))
    >>> out["embedding"].shape, out["aligned"].shape, out["matrix"].shape
    (torch.Size([1, 512]), torch.Size([1, 3, 112, 112]), torch.Size([1, 3, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from faceaux.layers.alignment import SpatialTransformerAlign
from faceaux.models.embedding_head import POOLINGS, EmbeddingHead
from faceaux.models.features import StagedBackbone, check_images
from faceaux.models.iresnet import IResNet
from faceaux.models.recognizer import FaceRecognizer
from faceaux.models.registry import register_model

__all__ = ["AlignmentResNet", "ResidualUnit"]


def _conv_bn_prelu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    )


class ResidualUnit(nn.Module):
    """Table 1's residual unit ``[3×3, C; 3×3, C]``: two conv → BN → PReLU, plus the identity.

    Tang et al. 2020, Table 1. The paper gives the kernels and widths only; the layers inside a
    unit follow SphereFace's residual unit (conv → PReLU, twice, identity shortcut — its
    36-layer network has the same 2/4/8/2 layout) with a BatchNorm after each convolution.

    Shape:
        (B, C, H, W) → (B, C, H, W).

    Examples:
        >>> ResidualUnit(8)(torch.randn(2, 8, 7, 6)).shape
        torch.Size([2, 8, 7, 6])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_prelu(channels, channels, 1), _conv_bn_prelu(channels, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AlignmentResNet(StagedBackbone):
    """The recognizer of Tang et al. 2020, Table 1, with the stage contract.

    Each group ``layer1`` … ``layer4`` is a 3×3 stride-2 conv → BN → PReLU (the ``[3×3, C] × 1,
    S2`` row; the first one replaces ResNet's 7×7 stem, §3.1) followed by ``units`` of
    :class:`ResidualUnit` (2, 4, 8, 2 by default), widths 64, 128, 256, 512: 112×112 → 7×7.
    Output stage (Table 1's last row "Dropout, FC1, BatchNorm — 512"): dropout → flatten →
    FC → BatchNorm1d, the BatchNorm's scale fixed to 1 as in ArcFace's InsightFace output block;
    ``pooling="gap"``/``"gnap"`` swap in :class:`faceaux.models.EmbeddingHead`.

    Choices the paper leaves open: the activation (PReLU, SphereFace's and ArcFace's), a
    BatchNorm after each convolution, and the dropout probability (0.4, InsightFace's for this
    output block; the paper names the layer, not its rate).

    Args:
        units: residual units per group (2, 4, 8, 2).
        widths: channels per group (64, 128, 256, 512).
        embedding_size: D (512).
        dropout: dropout probability before the FC.
        input_size: (H, W) the FC is built for (112×112, the aligned face).
        in_channels: image channels.
        pooling: ``"fc"`` (the paper's), ``"gap"`` or ``"gnap"``.

    Shape:
        - images: (B, in_channels, H, W), (H, W) = ``input_size`` for ``pooling="fc"``
        - output: (B, D)
        - ``forward_features``: (B, widths[-1], ⌈H/16⌉, ⌈W/16⌉)

    Examples:
        >>> net = AlignmentResNet(widths=(8, 16, 32, 64), embedding_size=32).eval()
        >>> net(torch.randn(2, 3, 112, 112)).shape
        torch.Size([2, 32])
        >>> [f["reduction"] for f in net.feature_info], len(net.layer3)
        ([2, 4, 8, 16], 9)
    """

    def __init__(
        self,
        units: Sequence[int] = (2, 4, 8, 2),
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        dropout: float = 0.4,
        input_size: tuple[int, int] = (112, 112),
        in_channels: int = 3,
        pooling: str = "fc",
    ) -> None:
        super().__init__()
        if len(units) != 4 or len(widths) != 4:
            raise ValueError(
                f"units, widths: expected 4 groups each, received {tuple(units)}, {tuple(widths)}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, received {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), received {dropout!r}")
        self.embedding_size = embedding_size
        self.input_size = tuple(input_size)
        self.pooling = pooling
        self.first_conv = "layer1.0.0"
        self.feature_info = []
        channels = in_channels
        for index, (count, width) in enumerate(zip(units, widths, strict=True), start=1):
            group = [_conv_bn_prelu(channels, width, 2)]
            group += [ResidualUnit(width) for _ in range(count)]
            self.add_module(f"layer{index}", nn.Sequential(*group))
            self.feature_info.append(
                {
                    "module": f"layer{index}",
                    "num_chs": width,
                    "reduction": 2**index,
                    "blocks": tuple(f"layer{index}.{i}" for i in range(len(group))),
                }
            )
            channels = width
        self.feature_size = tuple(math.ceil(s / 16) for s in self.input_size)
        if pooling == "fc":
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(
                channels * self.feature_size[0] * self.feature_size[1], embedding_size
            )
            self.features = nn.BatchNorm1d(embedding_size)
            nn.init.ones_(self.features.weight)
            self.features.weight.requires_grad_(False)
        else:
            self.head = EmbeddingHead(pooling, channels, embedding_size, dropout=dropout)

    def forward_stem(self, images: torch.Tensor) -> torch.Tensor:
        """Input checks only: the first group's stride-2 conv is the stem (Table 1, Conv1.x)."""
        sizes = (None, self.in_channels, *self.input_size) if self.pooling == "fc" else None
        check_images(self, images, sizes=sizes or (None, self.in_channels, None, None))
        return images

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Dropout → FC → BN (or the GAP / GNAP stage): (B, 512, 7, 7) → (B, D)."""
        if self.pooling != "fc":
            return self.head(features)
        return self.features(self.fc(self.dropout(torch.flatten(features, 1))))


_PAPER = "STN alignment learning (Optik 2020)"


def _stnface(
    backbone: nn.Module, transform: str, output_size: tuple[int, int], align_kwargs: dict
) -> FaceRecognizer:
    align = SpatialTransformerAlign(transform, output_size=output_size, **align_kwargs)
    return FaceRecognizer(backbone, align=align)


@register_model(
    input_size=(3, 128, 128),
    paper=f"{_PAPER}, Table 1 network, Table 3 projective",
    small={"widths": (8, 16, 32, 64)},
)
def stnface_resnet36(
    *,
    transform: str = "projective",
    embedding_size: int = 512,
    dropout: float = 0.4,
    units: Sequence[int] = (2, 4, 8, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    output_size: Sequence[int] = (112, 112),
    pooling: str = "fc",
    **align_kwargs,
) -> FaceRecognizer:
    """The paper's model: SpatialTransformerAlign (projective) in front of Table 1's network.

    :class:`AlignmentResNet` (2/4/8/2 residual units behind stride-2 convs, dropout → FC → BN)
    at 112×112 behind the localisation network of Table 2's setting 3. Parameters at the
    defaults: 34,782,248 (the recognizer 34,623,232, 12,845,568 of it the 25088×512 FC; the
    localisation network 159,016). The paper gives no parameter count (the 0.46M of its Table 3
    is the number of training images).

    Args:
        transform: ``"identity"``, ``"translation"``, ``"similarity"``, ``"affine"`` or
            ``"projective"`` (the paper's best, Table 3).
        embedding_size: D (512).
        dropout: dropout before the FC.
        units: residual units per group (Table 1: 2, 4, 8, 2).
        widths: channels per group (Table 1: 64, 128, 256, 512).
        output_size: the aligned size the network is built for (112×112).
        pooling: the output stage, ``"fc"`` (Table 1), ``"gap"`` or ``"gnap"``.
        **align_kwargs: further :class:`faceaux.SpatialTransformerAlign` arguments
            (``crop_size`` for the identity baseline, ``loc_channels``/``loc_hidden`` — e.g.
            ``**LOCALIZATION_SETTINGS[5]`` —, ``loc_input_size``, ``padding_mode`` …).

    Shape:
        - images: (B, 3, H, W), any size (the localisation network resizes to 64×64 itself)
        - output: (B, D)
        - ``forward_aux``: ``{"embedding": (B, D), "aligned": (B, 3, h, w),
          "matrix": (B, 3, 3)}``
    """
    output_size = tuple(output_size)
    backbone = AlignmentResNet(
        units,
        widths=widths,
        embedding_size=embedding_size,
        dropout=dropout,
        input_size=output_size,
        pooling=pooling,
    )
    return _stnface(backbone, transform, output_size, align_kwargs)


@register_model(
    baseline="iresnet34",
    input_size=(3, 128, 128),
    paper=f"{_PAPER}, Table 3 projective, on IResNet-34 instead of Table 1's network",
    small={"widths": (8, 16, 32, 64)},
)
def stnface_iresnet34(
    *,
    transform: str = "projective",
    embedding_size: int = 512,
    dropout: float = 0.0,
    widths: Sequence[int] = (64, 128, 256, 512),
    output_size: Sequence[int] = (112, 112),
    pooling: str = "fc",
    **align_kwargs,
) -> FaceRecognizer:
    """SpatialTransformerAlign (projective) in front of IResNet-34 at 112×112.

    Not the paper's recognizer (that is ``stnface_resnet36``): ArcFace's IResNet-34, so that
    InsightFace checkpoints load into ``model.backbone`` and the overhead of the alignment stage
    is measured against a standard network. Its localisation network keeps faceaux 0.1's layout,
    Table 2's setting 5 (a 128-wide hidden FC before the regressor, ``loc_hidden=128``), so that
    checkpoints saved with faceaux 0.1 load: 1,143,208 parameters for the alignment stage,
    35,282,536 in all. ``loc_hidden=None`` gives the paper's setting 3 (159,016).

    Args:
        transform: ``"identity"``, ``"translation"``, ``"similarity"``, ``"affine"`` or
            ``"projective"`` (the paper's best, Table 3).
        embedding_size: D.
        dropout: IResNet's dropout before the FC.
        widths: IResNet stage widths.
        output_size: the aligned size the IResNet is built for (112×112).
        pooling: the IResNet output stage, ``"fc"``, ``"gap"`` or ``"gnap"``.
        **align_kwargs: further :class:`faceaux.SpatialTransformerAlign` arguments
            (``loc_hidden``, ``loc_input_size``, ``loc_channels``, ``padding_mode`` …).

    Shape:
        - images: (B, 3, H, W), any size (the localisation network resizes to 64×64 itself)
        - output: (B, D)
        - ``forward_aux``: ``{"embedding": (B, D), "aligned": (B, 3, h, w),
          "matrix": (B, 3, 3)}``
    """
    align_kwargs.setdefault("loc_hidden", 128)  # Table 2's setting 5, faceaux 0.1's layout
    output_size = tuple(output_size)
    backbone = IResNet(
        (3, 4, 6, 3),
        widths=widths,
        embedding_size=embedding_size,
        dropout=dropout,
        input_size=output_size,
        pooling=pooling,
    )
    return _stnface(backbone, transform, output_size, align_kwargs)
