"""Verification metrics and embedding extraction."""

from faceaux.eval.ijb import (
    IJB_FAR_LEVELS,
    IJB_FPIR_LEVELS,
    evaluate_ijb,
    identification_metrics,
    read_ijb_meta,
    tar_at_far_insightface,
)
from faceaux.eval.verification import (
    FAR_LEVELS,
    extract_embeddings,
    pair_scores,
    roc_curve,
    verification_metrics,
)

__all__ = [
    "FAR_LEVELS",
    "IJB_FAR_LEVELS",
    "IJB_FPIR_LEVELS",
    "evaluate_ijb",
    "extract_embeddings",
    "identification_metrics",
    "pair_scores",
    "read_ijb_meta",
    "roc_curve",
    "tar_at_far_insightface",
    "verification_metrics",
]
