"""Margin heads (ArcFace and co.), the streaming margin loss and the sharded Partial FC."""

from faceaux.heads.adaptive import (
    AdaFace,
    AdaFaceMargin,
    SphereFace,
    adaface_logits,
    sphereface_logits,
    sphereface_psi,
)
from faceaux.heads.margin import (
    ArcFace,
    CombinedMargin,
    CosFace,
    NormSoftmax,
    SubCenterArcFace,
    margin_logits,
)
from faceaux.heads.partial_fc import PartialFC, shard_range, sharded_cross_entropy
from faceaux.heads.streaming import margin_cross_entropy

__all__ = [
    "AdaFace",
    "AdaFaceMargin",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "NormSoftmax",
    "PartialFC",
    "SphereFace",
    "SubCenterArcFace",
    "adaface_logits",
    "margin_cross_entropy",
    "margin_logits",
    "shard_range",
    "sharded_cross_entropy",
    "sphereface_logits",
    "sphereface_psi",
]
