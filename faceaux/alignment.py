"""Face-alignment geometry and the learned aligner, under one short import path.

``from faceaux.alignment import warp, transform_matrix, SpatialTransformerAlign`` — the same
objects as in :mod:`faceaux.layers.geometry` and :mod:`faceaux.layers.alignment` (Tang et al.,
"An End-to-End Face Recognition Method with Alignment Learning", Optik 2020).
"""

from faceaux.layers.alignment import SpatialTransformerAlign, param_groups, theta_regularization
from faceaux.layers.geometry import (
    ARCFACE_TEMPLATE_112,
    TRANSFORM_PARAMETERS,
    from_pixel_matrix,
    params_from_matrix,
    similarity_from_landmarks,
    to_pixel_matrix,
    transform_matrix,
    warp,
)

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "TRANSFORM_PARAMETERS",
    "SpatialTransformerAlign",
    "from_pixel_matrix",
    "param_groups",
    "params_from_matrix",
    "similarity_from_landmarks",
    "theta_regularization",
    "to_pixel_matrix",
    "transform_matrix",
    "warp",
]
