"""Procedurally rendered synthetic faces with full ground truth, for offline experiments.

``SyntheticFaces`` renders faces of a 3-D head model in pure torch (``faceaux.data._head``):
every identity has its own global shape and colouring (face width, height and depth, jaw taper,
skin tone, hair colour and style, sex) and its own part detail (eye shape, tilt, iris colour and
texture, brows, nose length, width, protrusion and nostrils, mouth width, lip thickness, cupid's
bow, lip colour and texture, a mole); every image its own head pose (yaw up to ±90°, pitch, roll)
with self-occlusion, expression (mouth opening, smile, brow raise, frown, blinks, gaze),
misalignment of the crop (scale, rotation, shift, perspective), illumination, blur and noise.
Each sample carries the ground truth the library's layers can use: 68-point landmarks and their
visibility, an 11-class parsing map (Helen's classes), the seven identity-stable attributes of
Table 1 of the multi-task attributes paper (Wang et al., ICMR 2017), image-dependent nuisance
attributes, the pose and the applied warp.

Random quantities are counter-based (a hash of what they belong to, see
``faceaux.data._counter_random``): identity ``i`` of a ``seed`` is the same face in every set,
whatever its size, and image ``j`` of identity ``i`` depends only on ``image_seed`` and the
arguments that shape images. Rendering is vectorised over a chunk of images and their pixels.

The set is a controlled world for checking that each layer's mechanism does what its paper
claims under its condition, not a benchmark of real-world accuracy: see the README section
"What the synthetic set can and cannot tell".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from faceaux._checks import check_positive_int
from faceaux.data import _head
from faceaux.data._counter_random import counter_normal, counter_uniform

__all__ = [
    "NUISANCE_ATTRIBUTES",
    "SYNTHETIC_ATTRIBUTES",
    "SyntheticFaces",
    "make_pairs",
    "split_identities",
]

#: The attributes of Table 1 of the multi-task paper (Wang et al., ICMR 2017), in its order (the
#: CelebA column names). Identity-stable: thresholds of identity parameters.
SYNTHETIC_ATTRIBUTES: tuple[str, ...] = (
    "Narrow_Eyes",
    "Big_Nose",
    "Pointy_Nose",
    "Chubby",
    "Double_Chin",
    "High_Cheekbones",
    "Male",
)

#: Image-dependent nuisance attributes (``SyntheticFaces.nuisance``), 0/1, in this order:
#: mouth opening above 0.02 head units (CelebA's ``Mouth_Slightly_Open``), smile (mouth corners
#: raised) above 0.015 (CelebA's ``Smiling``), eye opening below 40 % (``Eyes_Closed``), and a
#: light more than 31° off the camera axis with ambient light below 0.6 (``Harsh_Light``).
NUISANCE_ATTRIBUTES: tuple[str, ...] = (
    "Mouth_Slightly_Open",
    "Smiling",
    "Eyes_Closed",
    "Harsh_Light",
)

# Counter-random streams: identity parameters, image parameters, pixel noise.
_IDENTITY_STREAM, _IMAGE_STREAM, _NOISE_STREAM = 1, 2, 3
# Chunks hold about this many pixels (images × H × W), so temporaries stay in cache.
_CHUNK_PIXELS = 1 << 19
# |yaw| range (degrees) at pose = 1, as the planar renderer before (0.6 rad).
_YAW_AT_POSE_1 = math.degrees(0.6)


class _Draws:
    """Successive counter-random parameters for a batch of keys (one stream per draw)."""

    def __init__(self, *keys: int | torch.Tensor) -> None:
        self.keys = keys
        self.count = 0

    def uniform(self, low: float = 0.0, high: float = 1.0, k: int | None = None) -> torch.Tensor:
        self.count += 1
        keys = (
            self.keys
            if k is None
            else (
                *[t[:, None] if isinstance(t, torch.Tensor) else t for t in self.keys],
                torch.arange(k),
            )
        )
        return low + (high - low) * counter_uniform(*keys, self.count)

    def normal(self, k: int) -> torch.Tensor:
        self.count += 1
        keys = [t[:, None] if isinstance(t, torch.Tensor) else t for t in self.keys]
        return counter_normal(*keys, torch.arange(k), self.count)


def _identity_params(identities: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Per-identity parameters ``(I,)`` / ``(I, 3)`` in head units, from ``(seed, identity)``.

    Global (the whole face): ``male``, ``face_a``/``face_b`` (outline half-width/-height),
    ``face_depth`` (depth/width), ``jaw_taper``, ``face_cy``, ``skin``, ``hair``,
    ``hair_volume``, ``hairline``, ``long_hair``, ``double_chin``, ``cheekbones``.
    Local (one part each): eyes ``eye_sp``, ``eye_y``, ``eye_w``, ``eye_ratio``, ``eye_tilt``,
    ``iris``, ``iris_size``, ``iris_texture``, ``iris_phase``; brows ``brow_gap``,
    ``brow_thick``, ``brow_arch``, ``brow_len``, ``brow_texture``; nose ``nose_len``,
    ``nose_w``, ``nose_tip``, ``nose_tilt``, ``nostril``; mouth ``mouth_gap``, ``mouth_w``,
    ``lip_up``, ``lip_low``, ``lip_bow``, ``lip``, ``lip_texture``; a mole ``mole``,
    ``mole_x``, ``mole_y``, ``mole_r``.
    """
    d = _Draws(seed, _IDENTITY_STREAM, identities)
    male = (d.uniform() < 0.5).float()
    p: dict[str, torch.Tensor] = {"male": male}
    p["face_a"] = d.uniform(0.44, 0.58) + 0.03 * male
    p["face_b"] = d.uniform(0.62, 0.74)
    p["jaw_taper"] = d.uniform(0.10, 0.45) - 0.08 * male
    p["face_cy"] = d.uniform(0.04, 0.10)
    p["face_depth"] = d.uniform(0.80, 1.00)
    p["eye_sp"] = d.uniform(0.18, 0.27)
    p["eye_y"] = d.uniform(-0.13, -0.03)
    p["eye_w"] = d.uniform(0.075, 0.11)
    p["eye_ratio"] = d.uniform(0.28, 0.62)
    p["eye_tilt"] = d.uniform(-0.15, 0.20)
    p["iris_size"] = d.uniform(0.45, 0.65)
    p["iris_texture"] = d.uniform(15.0, 45.0)
    p["iris_phase"] = d.uniform(0.0, 2 * math.pi)
    p["brow_gap"] = d.uniform(0.07, 0.13)
    p["brow_thick"] = d.uniform(0.016, 0.034) + 0.012 * male
    p["brow_arch"] = d.uniform(0.0, 0.045)
    p["brow_len"] = d.uniform(1.1, 1.5)
    p["brow_texture"] = d.uniform(60.0, 160.0)
    p["nose_len"] = d.uniform(0.17, 0.29)
    p["nose_w"] = d.uniform(0.055, 0.115)
    p["nose_tip"] = d.uniform(0.0, 0.05)
    p["nose_tilt"] = d.uniform(0.20, 0.50)
    p["nostril"] = d.uniform(0.15, 0.30)
    p["mouth_gap"] = d.uniform(0.09, 0.15)
    p["mouth_w"] = d.uniform(0.13, 0.22)
    p["lip_up"] = d.uniform(0.02, 0.045)
    p["lip_low"] = d.uniform(0.03, 0.06)
    p["lip_bow"] = d.uniform(0.0, 0.6)
    p["lip_texture"] = d.uniform(10.0, 40.0)
    p["hairline"] = d.uniform(-0.62, -0.40)
    p["hair_volume"] = d.uniform(0.04, 0.14)
    p["long_hair"] = ((d.uniform() < 0.8) & (male == 0)).float()
    p["double_chin"] = d.uniform(0.0, 1.0)
    p["cheekbones"] = d.uniform(0.0, 1.0)
    p["mole"] = (d.uniform() < 0.6).float()
    p["mole_x"] = d.uniform(-0.35, 0.35)
    p["mole_y"] = d.uniform(-0.25, 0.45)
    p["mole_r"] = d.uniform(0.012, 0.025)
    # Colours: skin along a light-to-dark continuum with a small hue jitter; hair and iris from
    # anchors with a jitter; lips from the skin.
    tone = d.uniform()[:, None]
    light = torch.tensor([0.96, 0.80, 0.69])
    dark = torch.tensor([0.38, 0.24, 0.16])
    p["skin"] = (light + tone * (dark - light) + 0.03 * d.normal(3)).clamp(0.05, 1.0)
    hair_anchors = torch.tensor(
        [
            [0.08, 0.06, 0.05],  # black
            [0.30, 0.18, 0.10],  # brown
            [0.78, 0.64, 0.38],  # blond
            [0.60, 0.26, 0.12],  # red
            [0.62, 0.62, 0.62],  # grey
        ]
    )
    choice = (d.uniform() * len(hair_anchors)).long().clamp(max=len(hair_anchors) - 1)
    p["hair"] = (hair_anchors[choice] + 0.05 * d.normal(3)).clamp(0.02, 1.0)
    iris_anchors = torch.tensor([[0.25, 0.15, 0.08], [0.20, 0.35, 0.55], [0.25, 0.40, 0.25]])
    choice = (d.uniform() * 3).long().clamp(max=2)
    p["iris"] = (iris_anchors[choice] + 0.04 * d.normal(3)).clamp(0.02, 1.0)
    lip_red = d.uniform(0.0, 0.12)[:, None]
    p["lip"] = (p["skin"] * torch.tensor([0.95, 0.55, 0.55]) + lip_red).clamp(0, 1)
    return p


def _attributes(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Table-1 attributes (0/1) from the identity parameters; thresholds near each median."""
    narrow = p["eye_ratio"] < 0.40
    big_nose = p["nose_w"] * p["nose_len"] > 0.0195
    pointy = p["nose_tip"] > 0.028
    chubby = p["face_a"] / p["face_b"] - 0.35 * p["jaw_taper"] > 0.66
    double_chin = p["double_chin"] > 0.6
    cheek = p["cheekbones"] > 0.5
    male = p["male"] > 0.5
    return torch.stack([narrow, big_nose, pointy, chubby, double_chin, cheek, male], 1).float()


def _image_params(
    identity: torch.Tensor,
    slot: torch.Tensor,
    image_seed: int,
    yaw_low: torch.Tensor,
    yaw_high: torch.Tensor,
    pose: float,
    warp: float,
    expression: float,
) -> dict[str, torch.Tensor]:
    """Per-image parameters ``(B,)`` from ``(image_seed, identity, slot)``; angles in radians."""
    d = _Draws(image_seed, _IMAGE_STREAM, identity, slot)
    q: dict[str, torch.Tensor] = {}
    magnitude = d.uniform(0.0, 1.0)
    sign = torch.where(d.uniform() < 0.5, -1.0, 1.0)
    q["yaw"] = sign * torch.deg2rad(yaw_low + (yaw_high - yaw_low) * magnitude)
    q["pitch"] = d.uniform(-0.20, 0.20) * pose
    q["roll"] = d.uniform(-0.25, 0.25) * pose
    q["scale"] = 1.0 + d.uniform(-0.10, 0.10) * warp
    q["rot"] = d.uniform(-0.08, 0.08) * warp
    q["tx"] = d.uniform(-0.07, 0.07) * warp
    q["ty"] = d.uniform(-0.07, 0.07) * warp
    q["px"] = d.uniform(-0.04, 0.04) * warp
    q["py"] = d.uniform(-0.04, 0.04) * warp
    opened = (d.uniform() < 0.4).float()
    q["mouth_open"] = opened * d.uniform(0.005, 0.07) * expression
    q["smile"] = d.uniform(-0.012, 0.035) * expression
    q["brow_raise"] = d.uniform(-0.01, 0.03) * expression
    q["frown"] = (d.uniform() < 0.3).float() * d.uniform(0.0, 0.025) * expression
    blink = (d.uniform() < 0.05).float()
    eye_open = (1 - blink) * d.uniform(0.75, 1.1) + blink * 0.15
    q["eye_open"] = (1 + expression * (eye_open - 1)).clamp(min=0.05)
    q["gaze_x"] = d.uniform(-0.15, 0.15) * expression
    q["gaze_y"] = d.uniform(-0.08, 0.08) * expression
    q["light"] = torch.stack([d.uniform(-0.8, 0.8), d.uniform(-0.8, 0.4)], 1)
    q["ambient"] = d.uniform(0.45, 0.70)
    q["gain"] = d.uniform(0.75, 1.15)[:, None] * (1 + 0.08 * (d.uniform(k=3) - 0.5))
    q["background"] = d.uniform(k=3) * 0.8 + 0.1
    q["bg_grad"] = d.uniform(k=2) - 0.5
    q["blur"] = d.uniform(0.0, 1.1)
    q["noise"] = d.uniform(0.0, 0.035)
    q["noise_a"] = d.uniform(257.0, 1025.0)
    q["noise_b"] = d.uniform()
    return q


def _nuisance(q: dict[str, torch.Tensor]) -> torch.Tensor:
    """:data:`NUISANCE_ATTRIBUTES` (0/1) from the image parameters."""
    harsh = (q["light"].norm(dim=1) > 0.6) & (q["ambient"] < 0.6)
    return torch.stack(
        [q["mouth_open"] > 0.02, q["smile"] > 0.015, q["eye_open"] < 0.4, harsh], 1
    ).float()


def _check_int(value: object, name: str, minimum: int) -> int:
    """An ``int`` (``bool`` refused) ≥ ``minimum``, or ``ValueError`` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an int ≥ {minimum}, received {value!r}")
    return int(value)


def _check_real(value: object, name: str, minimum: float, maximum: float = math.inf) -> float:
    """A finite real number in ``[minimum, maximum]`` (``bool`` refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not minimum <= float(value) <= maximum
    ):
        raise ValueError(f"{name}: expected a number in [{minimum}, {maximum}], received {value!r}")
    return float(value)


def _yaw_ranges(
    yaw_range: object, images_per_identity: int, pose: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image slot ``|yaw|`` bounds in degrees, ``(images_per_identity,)`` each."""
    if yaw_range is None:
        high = _YAW_AT_POSE_1 * pose
        if high > 90:
            raise ValueError(
                f"pose: expected ≤ {90 / _YAW_AT_POSE_1:.3f} (|yaw| ≤ 90°) when yaw_range is "
                f"None, received {pose!r}; give yaw_range for profile faces"
            )
        pairs = [(0.0, high)] * images_per_identity
    else:
        is_pair = (
            isinstance(yaw_range, Sequence)
            and len(yaw_range) == 2
            and all(isinstance(v, numbers.Real) for v in yaw_range)
        )
        pairs = [yaw_range] * images_per_identity if is_pair else yaw_range
        if not isinstance(pairs, Sequence) or len(pairs) != images_per_identity:
            raise ValueError(
                "yaw_range: expected (low, high) in degrees or a sequence of images_per_identity "
                f"= {images_per_identity} such pairs, received {yaw_range!r}"
            )
        for pair in pairs:
            ok = isinstance(pair, Sequence) and len(pair) == 2
            ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair)
            if not ok or not 0 <= pair[0] <= pair[1] <= 90:
                raise ValueError(
                    f"yaw_range: expected pairs (low, high) with 0 ≤ low ≤ high ≤ 90 degrees, "
                    f"received {pair!r}"
                )
    bounds = torch.tensor([[float(lo), float(hi)] for lo, hi in pairs])
    return bounds[:, 0], bounds[:, 1]


class SyntheticFaces(Dataset):
    """Rendered 3-D faces with pose, landmarks, visibility, parsing, attributes and warp.

    Each of ``num_identities`` identities is drawn from ``(seed, identity index)`` alone, so it
    is the same face in every set with that ``seed``, whatever the set's size: a train set, a
    test set or a frontal and a profile set built from one seed line up. An identity has
    **global** parameters (face width, height and depth, jaw taper, skin tone, hair colour,
    volume, hairline and length, sex, double chin, cheekbones) and **local**, per-part ones
    (eyes: spacing, height, width, aspect, tilt, iris colour, size and stripe texture; brows:
    gap, thickness, arch, length, strand texture; nose: length, width, protrusion, tilt, nostril
    size; mouth: height, width, lip thicknesses, cupid's bow, lip colour and line texture; a
    mole's presence, place and size): a part-aware model can read the local ones from a few
    pixels that a global pooling dilutes (FSENet's premise).

    Each image draws, from ``(image_seed, identity, image index)``: the head pose (|yaw| uniform
    in its range with a random sign; pitch ±11.5° and roll ±14.3° times ``pose``), rendered in
    3-D with self-occlusion; an expression (mouth opening, smile, brow raise, frown, blinks,
    gaze; times ``expression``); a misalignment of the crop (scale ±10 %, rotation ±4.6°, shift
    ±3.5 % of the image side, perspective terms ±0.04 in [-1, 1] image coordinates, times
    ``warp``); illumination (light direction, ambient level, colour gain, background); Gaussian
    blur and noise.

    The head is three ellipsoids (face, nose, hair) ray-cast per pixel, orthographically; see
    ``faceaux.data._head``. The whole set is rendered at construction, vectorised over chunks
    of images, and cached (``images`` as ``uint8``); the output depends only on the arguments.

    Ground truth per sample:

    - ``landmarks``: the 68 iBUG points, pixel coordinates ``(x, y)`` of the returned image
      (pixel centres on integers), where the point of the 3-D surface projects, hidden or not.
    - ``visibility``: ``(68,)`` bool; a point is visible when its surface faces the camera and
      the first surface on its camera ray is its own (not the nose, hair, or the face turning
      away). A profile face loses the far eye, brow and jaw and half the mouth.
    - ``pose``: ``(yaw, pitch, roll)`` in degrees. Positive yaw turns the nose to the image
      right, positive pitch turns it up, positive roll rotates the face clockwise on screen.
    - ``parsing``: labels of :data:`faceaux.conventions.PARSING_CLASSES` (Helen's order) of the
      first surface each pixel's ray meets; a hidden eye has no eye pixels. "left" is the
      image-left part of the upright frontal face and stays with that part when the head turns.
    - ``attributes``: the seven Table-1 attributes of the multi-task paper (Wang et al. 2017)
      (:data:`SYNTHETIC_ATTRIBUTES`), 0/1, thresholds of identity parameters (e.g. Narrow_Eyes:
      eye height/width < 0.40), so identity-stable by construction, as §3.2's majority vote
      assumes.
    - ``nuisance``: the image-dependent :data:`NUISANCE_ATTRIBUTES`, 0/1 (mouth open, smiling,
      eyes closed, harsh light).
    - ``warp``: the ``(3, 3)`` matrix mapping pixel coordinates of the *upright view* (this
      head at this yaw and pitch, without roll and misalignment, centred, one head unit = half
      the image side) to pixel coordinates of the returned image. It holds the roll, the
      misalignment and a fixed zoom of 1.3; ``inv(warp)`` undoes exactly what a 2-D alignment
      can undo. Yaw and pitch turn the head out of the image plane, which no 2-D warp undoes.
      With ``pose=0, warp=0`` it is the zoom about the image centre.

    A CFP-style set (the same identities seen frontal and in profile): give one ``|yaw|`` range
    per image slot, e.g. ``yaw_range=[(0, 10)] * 10 + [(75, 90)] * 4`` (CFP's 10 frontal and 4
    profile images per subject), then score frontal–profile pairs with
    :func:`faceaux.eval.protocols.pose_protocols`. Two sets built with the same ``seed`` (e.g.
    a frontal one and a profile one) share identities; give them different ``image_seed`` so
    their images' expressions and lighting are independent too.

    Args:
        num_identities: number of identities; labels are ``0 … num_identities − 1``.
        images_per_identity: images per identity; samples are ordered identity-major.
        size: ``(H, W)`` of the images, each ≥ 8.
        seed: identity seed (int ≥ 0): the identities follow from it and their index.
        pose: scale of the pitch and roll ranges, and of the yaw range (±34.4° at 1; at most
            2.618, i.e. ±90°) when ``yaw_range`` is None. 0 gives frontal faces.
        warp: scale of the misalignment ranges (0 gives centred faces).
        yaw_range: ``|yaw|`` bounds in degrees, ``(low, high)`` with ``0 ≤ low ≤ high ≤ 90``
            for every image, or a sequence of ``images_per_identity`` such pairs, one per image
            slot (image ``j`` of every identity uses pair ``j``). Overrides ``pose`` for yaw.
        expression: scale of the expression ranges (0 gives a neutral face looking ahead).
        image_seed: seed of the image variations and noise (int ≥ 0); default ``seed``.

    Shape:
        ``dataset[i]`` is a dict: ``image (3, H, W)`` float in [0, 1], ``label ()`` int64,
        ``landmarks (68, 2)``, ``visibility (68,)`` bool, ``pose (3,)`` degrees,
        ``parsing (H, W)`` int64, ``attributes (7,)``, ``nuisance (4,)``, ``warp (3, 3)``.
        The cached tensors are the attributes ``images (N, 3, H, W)`` uint8, ``labels (N,)``,
        ``landmarks (N, 68, 2)``, ``visibility (N, 68)`` bool, ``poses (N, 3)``,
        ``parsing (N, H, W)`` uint8, ``attributes (N, 7)``, ``nuisance (N, 4)``,
        ``warps (N, 3, 3)``, ``identity_attributes (num_identities, 7)``.

    Examples:
        >>> data = SyntheticFaces(num_identities=3, images_per_identity=2, size=(56, 56))
        >>> sample = data[0]
        >>> sample["image"].shape, sample["landmarks"].shape, sample["parsing"].shape
        (torch.Size([3, 56, 56]), torch.Size([68, 2]), torch.Size([56, 56]))
        >>> sample["visibility"].shape, sample["pose"].shape, sample["nuisance"].shape
        (torch.Size([68]), torch.Size([3]), torch.Size([4]))

        A CFP-style set: per identity two frontal and two profile images.

        >>> cfp = SyntheticFaces(4, 4, size=(32, 32), yaw_range=[(0, 10)] * 2 + [(75, 90)] * 2)
        >>> (cfp.poses[:4, 0].abs() >= 75).tolist()  # identity 0: 2 frontal, then 2 profile
        [False, False, True, True]
        >>> bool(cfp.visibility[:2].all()), int(cfp.visibility[2:4].sum(1).max()) < 60
        (True, True)
    """

    def __init__(
        self,
        num_identities: int = 100,
        images_per_identity: int = 20,
        size: Sequence[int] = (112, 112),
        seed: int = 0,
        pose: float = 1.0,
        warp: float = 1.0,
        yaw_range: Sequence[float] | Sequence[Sequence[float]] | None = None,
        expression: float = 1.0,
        image_seed: int | None = None,
    ) -> None:
        check_positive_int(num_identities, "num_identities")
        check_positive_int(images_per_identity, "images_per_identity")
        if (
            not isinstance(size, Sequence)
            or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
            or min(size) < 8
        ):
            raise ValueError(f"size: expected (H, W), two ints ≥ 8, received {size!r}")
        seed = _check_int(seed, "seed", 0)
        image_seed = seed if image_seed is None else _check_int(image_seed, "image_seed", 0)
        pose = _check_real(pose, "pose", 0.0)
        warp = _check_real(warp, "warp", 0.0)
        expression = _check_real(expression, "expression", 0.0)
        yaw_low, yaw_high = _yaw_ranges(yaw_range, images_per_identity, pose)

        self.num_identities = num_identities
        self.images_per_identity = images_per_identity
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        self.image_seed = image_seed
        n = num_identities * images_per_identity
        h, w = self.size
        identity_params = _identity_params(torch.arange(num_identities), seed)
        self.identity_attributes = _attributes(identity_params)
        self.labels = torch.arange(num_identities).repeat_interleave(images_per_identity)
        slots = torch.arange(images_per_identity).repeat(num_identities)
        self.images = torch.empty(n, 3, h, w, dtype=torch.uint8)
        self.parsing = torch.empty(n, h, w, dtype=torch.uint8)
        self.landmarks = torch.empty(n, 68, 2)
        self.visibility = torch.empty(n, 68, dtype=torch.bool)
        self.warps = torch.empty(n, 3, 3)
        per_image = _image_params(
            self.labels, slots, image_seed, yaw_low[slots], yaw_high[slots], pose, warp, expression
        )
        self.poses = torch.rad2deg(torch.stack([per_image[k] for k in ("yaw", "pitch", "roll")], 1))
        self.nuisance = _nuisance(per_image)
        # Sensor noise: one uniform pattern per set, remapped per image by frac(u · a + b) with
        # the image's own a ∈ [257, 1025) and b: cheap, and a pure function of the arguments.
        pattern = counter_uniform(image_seed, _NOISE_STREAM, torch.arange(3 * h * w)).view(3, h, w)
        chunk = max(1, _CHUNK_PIXELS // (h * w))
        with torch.no_grad():
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(n, start + chunk))
                p = {k: v[self.labels[idx]] for k, v in identity_params.items()}
                q = {k: v[idx] for k, v in per_image.items()}
                noise = torch.frac(
                    pattern * q["noise_a"].view(-1, 1, 1, 1) + q["noise_b"].view(-1, 1, 1, 1)
                )
                out = _head.render(p, q, self.size, noise)
                self.images[idx] = (out["image"] * 255).round().to(torch.uint8)
                self.parsing[idx] = out["parsing"]
                self.landmarks[idx] = out["landmarks"]
                self.visibility[idx] = out["visibility"]
                self.warps[idx] = out["warp"]
        self.attributes = self.identity_attributes[self.labels]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[index].float() / 255,
            "label": self.labels[index],
            "landmarks": self.landmarks[index],
            "visibility": self.visibility[index],
            "pose": self.poses[index],
            "parsing": self.parsing[index].long(),
            "attributes": self.attributes[index],
            "nuisance": self.nuisance[index],
            "warp": self.warps[index],
        }


def split_identities(
    num_identities: int, test_fraction: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split identity labels into disjoint (train, test) sets, each sorted.

    Args:
        num_identities: identities are ``0 … num_identities − 1`` (an int ≥ 2).
        test_fraction: fraction of identities held out for testing, in [0, 1]; rounded, and
            kept to at least one identity on each side.
        seed: seed of the random permutation (int ≥ 0).

    Shape:
        returns two sorted int64 tensors ``(num_identities − T,)`` and ``(T,)``.

    Examples:
        >>> train, test = split_identities(10, 0.3, seed=0)
        >>> len(train), len(test), bool(set(train.tolist()) & set(test.tolist()))
        (7, 3, False)
    """
    num_identities = _check_int(num_identities, "num_identities", 2)
    test_fraction = _check_real(test_fraction, "test_fraction", 0.0, 1.0)
    seed = _check_int(seed, "seed", 0)
    n_test = min(num_identities - 1, max(1, round(num_identities * test_fraction)))
    perm = torch.randperm(num_identities, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def make_pairs(
    dataset: SyntheticFaces | torch.Tensor,
    n_pairs: int,
    seed: int = 0,
    identities: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw balanced verification pairs (half genuine, half impostor) from a labelled set.

    Pairs use only samples whose identity is in ``identities`` (all when ``None``), so pairs for
    a test split never touch training identities; use :func:`split_identities` for the split.
    Genuine pairs join two different images of one identity, impostor pairs images of two
    different identities. The result alternates genuine/impostor so that the sequential 10-fold
    split of :func:`faceaux.eval.verification_metrics` gets balanced folds (the LFW layout).

    Args:
        dataset: a :class:`SyntheticFaces` (or anything with a ``labels`` tensor), or a labels
            tensor ``(N,)``.
        n_pairs: number of pairs, an int ≥ 1 (even numbers give exactly half of each kind).
        seed: random seed (int ≥ 0).
        identities: identity labels allowed in the pairs.

    Returns:
        ``pairs (n_pairs, 2)`` sample indices into ``dataset`` and ``issame (n_pairs,)`` bool.

    Shape:
        - dataset labels: ``(N,)`` int
        - pairs: ``(n_pairs, 2)`` int64; issame: ``(n_pairs,)`` bool

    Examples:
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> pairs, issame = make_pairs(labels, 4, seed=0)
        >>> bool(((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == issame).all())
        True
    """
    labels = dataset if isinstance(dataset, torch.Tensor) else getattr(dataset, "labels", None)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(
            "dataset: expected a labels tensor (N,) of ints or a dataset with one in .labels, "
            f"received {type(dataset).__name__}"
            + (
                f" with labels of shape {tuple(labels.shape)}, dtype {labels.dtype}"
                if isinstance(labels, torch.Tensor)
                else ""
            )
        )
    n_pairs = check_positive_int(n_pairs, "n_pairs")
    seed = _check_int(seed, "seed", 0)
    labels = labels.long()
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.ones_like(labels, dtype=torch.bool)
    if identities is not None:
        allowed = torch.isin(labels, torch.as_tensor(identities).long())
    pool = allowed.nonzero().squeeze(1)
    pool_labels = labels[pool]
    uniq, counts = torch.unique(pool_labels, return_counts=True)
    if uniq.numel() < 2:
        raise ValueError("dataset: need at least two identities to draw impostor pairs")
    multi = uniq[counts >= 2]
    if multi.numel() == 0:
        raise ValueError("dataset: need an identity with ≥ 2 images to draw genuine pairs")
    n_pos = (n_pairs + 1) // 2
    n_neg = n_pairs - n_pos
    # Samples of each identity, in a (identities, max_count) table padded with -1.
    order = torch.argsort(pool_labels, stable=True)
    sorted_pool = pool[order]
    starts = torch.cumsum(counts, 0) - counts
    lookup = {int(k): i for i, k in enumerate(uniq.tolist())}
    multi_rows = torch.tensor([lookup[int(k)] for k in multi.tolist()])
    # Genuine: pick an identity with ≥ 2 images, then two distinct positions within it.
    row = multi_rows[torch.randint(0, multi_rows.numel(), (n_pos,), generator=gen)]
    cnt = counts[row]
    a = (torch.rand(n_pos, generator=gen) * cnt).long()
    b = (a + 1 + (torch.rand(n_pos, generator=gen) * (cnt - 1)).long()) % cnt
    pos = torch.stack([sorted_pool[starts[row] + a], sorted_pool[starts[row] + b]], 1)
    # Impostor: two distinct identities, a random image of each.
    k = uniq.numel()
    ra = torch.randint(0, k, (n_neg,), generator=gen)
    rb = (ra + 1 + torch.randint(0, k - 1, (n_neg,), generator=gen)) % k
    ia = (torch.rand(n_neg, generator=gen) * counts[ra]).long()
    ib = (torch.rand(n_neg, generator=gen) * counts[rb]).long()
    neg = torch.stack([sorted_pool[starts[ra] + ia], sorted_pool[starts[rb] + ib]], 1)
    pairs = torch.empty(n_pairs, 2, dtype=torch.long)
    issame = torch.zeros(n_pairs, dtype=torch.bool)
    pairs[0::2] = pos
    pairs[1::2] = neg
    issame[0::2] = True
    return pairs, issame
