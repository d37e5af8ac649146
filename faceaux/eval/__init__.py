"""Verification metrics and embedding extraction."""

from faceaux.eval.ijb import (
    IJB_FAR_LEVELS,
    IJB_FPIR_LEVELS,
    evaluate_ijb,
    identification_metrics,
    read_ijb_meta,
    tar_at_far_insightface,
)
from faceaux.eval.protocols import (
    CFP_FRONTAL_MAX_YAW,
    CFP_PROFILE_MIN_YAW,
    all_pairs_metrics,
    all_pairs_scores,
    pose_groups,
    pose_protocols,
    ten_fold_metrics,
)
from faceaux.eval.verification import (
    FAR_LEVELS,
    extract_embeddings,
    pair_scores,
    roc_curve,
    verification_metrics,
)

__all__ = [
    "CFP_FRONTAL_MAX_YAW",
    "CFP_PROFILE_MIN_YAW",
    "FAR_LEVELS",
    "IJB_FAR_LEVELS",
    "IJB_FPIR_LEVELS",
    "all_pairs_metrics",
    "all_pairs_scores",
    "evaluate_ijb",
    "extract_embeddings",
    "identification_metrics",
    "pair_scores",
    "pose_groups",
    "pose_protocols",
    "read_ijb_meta",
    "roc_curve",
    "tar_at_far_insightface",
    "ten_fold_metrics",
    "verification_metrics",
]
