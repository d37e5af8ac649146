"""Verification metrics and embedding extraction."""

from faceaux.eval.verification import (
    FAR_LEVELS,
    extract_embeddings,
    pair_scores,
    roc_curve,
    verification_metrics,
)

__all__ = [
    "FAR_LEVELS",
    "extract_embeddings",
    "pair_scores",
    "roc_curve",
    "verification_metrics",
]
