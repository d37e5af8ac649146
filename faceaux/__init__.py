"""faceaux: drop-in face-recognition layers for PyTorch.

Each layer carries one kind of face knowledge (landmarks, alignment, parts, attributes,
norm-aware pooling) into any recognition network, next to the margin heads they train with.
"""

from faceaux.conventions import FIVE_POINT, INTERNAL_51, LANDMARKS_68
from faceaux.data import (
    ImageFolderFaces,
    RecordFaces,
    SyntheticFaces,
    load_verification_bin,
    make_pairs,
)
from faceaux.eval import evaluate_ijb, extract_embeddings, verification_metrics
from faceaux.heads import (
    AdaFace,
    AdaFaceMargin,
    ArcFace,
    CombinedMargin,
    CosFace,
    NormSoftmax,
    PartialFC,
    SphereFace,
    SubCenterArcFace,
    adaface_logits,
    margin_cross_entropy,
    margin_logits,
    sharded_cross_entropy,
    sphereface_logits,
)
from faceaux.layers.alignment import SpatialTransformerAlign, param_groups, theta_regularization
from faceaux.layers.attributes import (
    CELEBA_ATTRIBUTE_NAMES,
    CELEBA_FACE_ATTRIBUTES,
    AttributeHead,
    MultiTaskLoss,
    attribute_loss,
    majority_vote,
)
from faceaux.layers.geometry import (
    ARCFACE_TEMPLATE_112,
    TRANSFORM_PARAMETERS,
    align_faces,
    from_pixel_matrix,
    params_from_matrix,
    similarity_from_landmarks,
    to_pixel_matrix,
    transform_matrix,
    warp,
)
from faceaux.layers.gnap import GNAP, norm_aware_reweight
from faceaux.layers.heatmaps import HeatmapStacker, heatmaps_to_landmarks, render_heatmaps
from faceaux.layers.integration import FANIntegrationLayer, adain, expand_input_channels
from faceaux.layers.parts import (
    PartMaskPooling,
    StructureCorrelation,
    part_mask_pooling,
    structure_correlation,
)
from faceaux.models.adapter import BackboneAdapter
from faceaux.models.fanface import FANFeatureIntegrator
from faceaux.models.hourglass import FAN, load_face_alignment_checkpoint
from faceaux.models.recognizer import FaceRecognizer
from faceaux.models.registry import create_model, get_model_cfg, list_models

__version__ = "0.1.0"
"""The installed faceaux version (PEP 440), also printed by ``faceaux --version``.

Shape:
    A ``str`` such as ``"0.1.0"``; no tensors.
"""

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "CELEBA_ATTRIBUTE_NAMES",
    "CELEBA_FACE_ATTRIBUTES",
    "FAN",
    "FIVE_POINT",
    "GNAP",
    "INTERNAL_51",
    "LANDMARKS_68",
    "TRANSFORM_PARAMETERS",
    "AdaFace",
    "AdaFaceMargin",
    "ArcFace",
    "AttributeHead",
    "BackboneAdapter",
    "CombinedMargin",
    "CosFace",
    "FANFeatureIntegrator",
    "FANIntegrationLayer",
    "FaceRecognizer",
    "HeatmapStacker",
    "ImageFolderFaces",
    "MultiTaskLoss",
    "NormSoftmax",
    "PartMaskPooling",
    "PartialFC",
    "RecordFaces",
    "SpatialTransformerAlign",
    "SphereFace",
    "StructureCorrelation",
    "SubCenterArcFace",
    "SyntheticFaces",
    "__version__",
    "adaface_logits",
    "adain",
    "align_faces",
    "attribute_loss",
    "create_model",
    "evaluate_ijb",
    "expand_input_channels",
    "extract_embeddings",
    "from_pixel_matrix",
    "get_model_cfg",
    "heatmaps_to_landmarks",
    "list_models",
    "load_face_alignment_checkpoint",
    "load_verification_bin",
    "majority_vote",
    "make_pairs",
    "margin_cross_entropy",
    "margin_logits",
    "norm_aware_reweight",
    "param_groups",
    "params_from_matrix",
    "part_mask_pooling",
    "render_heatmaps",
    "sharded_cross_entropy",
    "similarity_from_landmarks",
    "sphereface_logits",
    "structure_correlation",
    "theta_regularization",
    "to_pixel_matrix",
    "transform_matrix",
    "verification_metrics",
    "warp",
]
