"""STN-Face: a recognizer that learns its own face alignment (spatial transformer in front).

Tang et al., "An End-to-End Face Recognition Method with Alignment Learning" (Optik 2020), §3,
Tables 1 and 3: a localisation network regresses a 2D transform from the loosely cropped face,
the face is warped to 112×112 and passed to an ArcFace-style ResNet (3×3 stem, dropout → FC → BN
output), the whole trained from identity labels alone. The paper's best transform is the
projective one (Table 3), our default.

The model is a :class:`faceaux.models.FaceRecognizer` configuration: a
:class:`faceaux.SpatialTransformerAlign` input stage in front of an IResNet. Give the
localisation network a 10–100× smaller learning rate with :func:`faceaux.param_groups`.

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

from faceaux.layers.alignment import SpatialTransformerAlign
from faceaux.models.iresnet import IResNet
from faceaux.models.recognizer import FaceRecognizer
from faceaux.models.registry import register_model

__all__: list[str] = []


@register_model(
    baseline="iresnet34",
    input_size=(3, 128, 128),
    paper="STN alignment learning (Optik 2020), Table 3 projective",
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
    """SpatialTransformerAlign (projective by default) in front of IResNet-34 at 112×112.

    The paper's recognizer (Table 1) is a ResNet with a 3×3 stem and a dropout → FC → BN
    output, i.e. the IResNet family. The paper gives no parameter count for its localisation
    network (the 0.46M of its Table 3 is the number of training images, CASIA-WebFace's); ours,
    with :class:`faceaux.SpatialTransformerAlign`'s defaults, adds 1,143,208 parameters.

    Args:
        transform: ``"identity"``, ``"translation"``, ``"similarity"``, ``"affine"`` or
            ``"projective"`` (the paper's best, Table 3).
        embedding_size: D.
        dropout: IResNet's dropout before the FC.
        widths: IResNet stage widths.
        output_size: the aligned size the IResNet is built for (112×112).
        pooling: the IResNet output stage, ``"fc"``, ``"gap"`` or ``"gnap"``.
        **align_kwargs: further :class:`faceaux.SpatialTransformerAlign` arguments
            (``loc_input_size``, ``loc_channels``, ``padding_mode`` …).

    Shape:
        - images: (B, 3, H, W), any size (the localisation network resizes to 64×64 itself)
        - output: (B, D)
        - ``forward_aux``: ``{"embedding": (B, D), "aligned": (B, 3, h, w),
          "matrix": (B, 3, 3)}``
    """
    output_size = tuple(output_size)
    backbone = IResNet(
        (3, 4, 6, 3),
        widths=widths,
        embedding_size=embedding_size,
        dropout=dropout,
        input_size=output_size,
        pooling=pooling,
    )
    align = SpatialTransformerAlign(transform, output_size=output_size, **align_kwargs)
    return FaceRecognizer(backbone, align=align)
