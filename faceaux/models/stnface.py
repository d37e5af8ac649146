"""STN-Face: a recognizer that learns its own face alignment (spatial transformer in front).

``papers/stn-alignment-learning.txt`` (§3, Table 1 and Table 3): a localisation network regresses
a 2D transform from the loosely cropped face, the face is warped to 112×112 and passed to an
ArcFace-style ResNet (3×3 stem, dropout → FC → BN output), the whole trained from identity
labels alone. The paper's best transform is the projective one (Table 3), our default.

This is the worked example of bolting :class:`faceaux.SpatialTransformerAlign` onto a backbone:
the two modules are simply composed; give the localisation network a 10–100× smaller learning
rate with :func:`faceaux.layers.alignment.param_groups`.

Examples:
    >>> import torch
    >>> from faceaux.models import create_model
    >>> model = create_model("stnface_iresnet34", transform="similarity").eval()
    >>> out = model.forward_aux(torch.randn(1, 3, 128, 128))
    >>> out["embedding"].shape, out["aligned"].shape, out["matrix"].shape
    (torch.Size([1, 512]), torch.Size([1, 3, 112, 112]), torch.Size([1, 3, 3]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from faceaux.layers.alignment import SpatialTransformerAlign
from faceaux.models.iresnet import IResNet
from faceaux.models.registry import register_model

__all__ = ["STNFace"]


class STNFace(nn.Module):
    """SpatialTransformerAlign → recognizer.

    Args:
        backbone: a recognizer taking ``(B, 3, *output_size)`` images (an :class:`IResNet`).
        transform: ``"identity"``, ``"translation"``, ``"similarity"``, ``"affine"`` or
            ``"projective"`` (the paper's best, Table 3).
        output_size: the aligned size the backbone expects (112×112).
        **align_kwargs: further :class:`faceaux.SpatialTransformerAlign` arguments
            (``loc_input_size``, ``loc_channels``, ``padding_mode`` …).

    Shape:
        - images: (B, 3, H, W), any size (the localisation network resizes to 64×64 itself).
        - output: (B, D) embedding.
        - ``forward_features``: the backbone's pre-pooling map of the aligned faces.
        - ``forward_aux``: ``{"embedding": (B, D), "aligned": (B, 3, h, w), "matrix": (B, 3, 3)}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        transform: str = "projective",
        output_size: tuple[int, int] = (112, 112),
        **align_kwargs,
    ) -> None:
        super().__init__()
        self.align = SpatialTransformerAlign(transform, output_size=output_size, **align_kwargs)
        self.backbone = backbone

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pre-pooling feature map of the aligned faces."""
        return self.backbone.forward_features(self.align(images))

    def forward_aux(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embedding plus the aligned faces and the (B, 3, 3) output → input warp matrices."""
        aligned, matrix = self.align(images, return_matrix=True)
        return {"embedding": self.backbone(aligned), "aligned": aligned, "matrix": matrix}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embedding (B, D) of the faces after learned alignment."""
        return self.backbone(self.align(images))


@register_model
def stnface_iresnet34(
    *,
    transform: str = "projective",
    embedding_size: int = 512,
    dropout: float = 0.0,
    widths: Sequence[int] = (64, 128, 256, 512),
    **kwargs,
) -> STNFace:
    """SpatialTransformerAlign (projective by default) in front of IResNet-34 at 112×112.

    The paper's recognizer (Table 1) is a ResNet with a 3×3 stem and a dropout → FC → BN
    output, i.e. the IResNet family. The paper gives no parameter count for its localisation
    network (the 0.46M of its Table 3 is the number of training images, CASIA-WebFace's); ours,
    with :class:`faceaux.SpatialTransformerAlign`'s defaults, adds 1,143,208 parameters.
    ``widths``: IResNet stage widths. kwargs → :class:`STNFace`
    (``output_size`` and the SpatialTransformerAlign options).
    """
    output_size = tuple(kwargs.pop("output_size", (112, 112)))
    backbone = IResNet(
        (3, 4, 6, 3),
        widths=widths,
        embedding_size=embedding_size,
        dropout=dropout,
        input_size=output_size,
    )
    return STNFace(backbone, transform=transform, output_size=output_size, **kwargs)
