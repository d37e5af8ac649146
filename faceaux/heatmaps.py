"""Landmark heatmap utilities, importable as ``faceaux.heatmaps`` (they live in
:mod:`faceaux.layers.heatmaps`): render, decode, index sets, and :class:`HeatmapStacker`."""

from faceaux.layers.heatmaps import (
    FIVE_POINT,
    INTERNAL_51,
    LANDMARKS_68,
    HeatmapStacker,
    heatmaps_to_landmarks,
    render_heatmaps,
)

__all__ = [
    "FIVE_POINT",
    "INTERNAL_51",
    "LANDMARKS_68",
    "HeatmapStacker",
    "heatmaps_to_landmarks",
    "render_heatmaps",
]
