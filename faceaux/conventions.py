"""Landmark and face-parsing conventions shared by every layer, model and dataset.

One module for the index sets and mirror maps of the 68-point iBUG / 300-W landmark layout
(FAN's output order) and of the 11-class Helen face parsing (Smith et al., CVPR 2013), so that a
layer, a model, the synthetic set and the demo cannot disagree. "Left" and "right" are
*image*-left and image-right of an upright frontal face (the subject's right and left), as in
the 68-point layout: points 36–41 are the image-left eye.
"""

from __future__ import annotations

__all__ = [
    "FIVE_POINT",
    "FSENET_PARTS",
    "INTERNAL_51",
    "LANDMARKS_68",
    "MIRROR_68",
    "MIRROR_PARSING",
    "PARSING_CLASSES",
]

LANDMARKS_68: tuple[int, ...] = tuple(range(68))
"""All 68 points of the iBUG/300-W 68-point layout (0-based), FAN's output order.

Shape:
    A tuple of 68 indices: ``landmarks[:, LANDMARKS_68]`` keeps ``(B, 68, 2)``.
"""

INTERNAL_51: tuple[int, ...] = tuple(range(17, 68))
"""The 51 internal points of the 68-point layout: without the 17 jaw-line points 0–16, which the
paper ignores as noisy (FAN-Face §3.1).

Shape:
    A tuple of 51 indices: ``heatmaps[:, INTERNAL_51]`` maps ``(B, 68, H, W)`` to
    ``(B, 51, H, W)``.
"""

FIVE_POINT: tuple[int, ...] = (36, 45, 30, 48, 54)
"""The 68-point landmarks nearest to the usual 5-point layout, in its order (image-left first):
outer corner of the left eye (36), outer corner of the right eye (45), nose tip (30), left and
right mouth corners (48, 54). Eye centres are not points of the 68 layout, so the eye corners
stand in for them.

Shape:
    A tuple of 5 indices: ``landmarks[:, FIVE_POINT]`` maps ``(B, 68, 2)`` to ``(B, 5, 2)``, the
    layout of [`ARCFACE_TEMPLATE_112`][faceaux.ARCFACE_TEMPLATE_112].
"""

MIRROR_68: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw
    *range(26, 16, -1),  # brows
    *(27, 28, 29, 30, 35, 34, 33, 32, 31),  # nose bridge, nose base
    *(45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40),  # the eyes swap
    *(54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55),  # outer lips
    *(64, 63, 62, 61, 60, 67, 66, 65),  # inner lips
)
"""The 68-point layout under a horizontal flip: point i of the mirrored face is point
``MIRROR_68[i]`` of the original (jaw, brows, nose base, eyes and mouth swap sides).

Shape:
    A tuple of 68 indices: ``flipped_landmarks = landmarks[:, MIRROR_68]`` with x ↦ W − 1 − x.
"""

PARSING_CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "left_eyebrow",
    "right_eyebrow",
    "left_eye",
    "right_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    "hair",
)
"""The 11 Helen face-parsing classes in Helen's label order (label i is ``PARSING_CLASSES[i]``).

Shape:
    A tuple of 11 names; a parsing map holds labels ``0 … 10``.
"""

MIRROR_PARSING: tuple[int, ...] = (0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10)
"""Parsing labels under a horizontal flip: the left/right eyebrows (2, 3) and eyes (4, 5) swap.

Shape:
    A tuple of 11 labels: ``flipped = MIRROR_PARSING[parsing].flip(-1)``.
"""

FSENET_PARTS: tuple[int, ...] = tuple(
    PARSING_CLASSES.index(name)
    for name in ("skin", "left_eye", "right_eye", "nose", "upper_lip", "lower_lip")
)
"""FSENet's six parts (§3.4): skin, left eye, right eye, nose, upper lip, lower lip — labels
(1, 4, 5, 6, 7, 9) of :data:`PARSING_CLASSES`.

Shape:
    A tuple of 6 labels: ``masks[:, FSENET_PARTS]`` maps ``(B, 11, H, W)`` to ``(B, 6, H, W)``.
"""
