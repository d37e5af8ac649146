"""Procedurally rendered synthetic faces with full ground truth, for offline sanity checks.

``SyntheticFaces`` draws cartoon faces in pure torch: every identity has its own geometry (face
shape, jaw, eye size and spacing, brows, nose, mouth, skin tone, hair) and every image its own
head pose (yaw, pitch, roll rendered as a perspective warp, with nose parallax), misalignment,
expression, illumination, blur and noise. Each sample carries the ground truth the library's
layers can use: 68-point landmarks in pixels, an 11-class parsing map, the seven identity-stable
attributes of Table 1 of multitask-face-attributes.txt derived from the identity's geometry, and
the warp matrix that was applied.

Rendering is vectorised over a batch of images (no per-pixel or per-image Python loops); the
whole set is rendered once at construction, in chunks, and cached as ``uint8`` tensors.

The set is a check of wiring and of each layer's signal, not a benchmark: see the README section
"What the synthetic set can and cannot tell".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "PARSING_CLASSES",
    "SYNTHETIC_ATTRIBUTES",
    "SyntheticFaces",
    "make_pairs",
    "split_identities",
]

#: Parsing labels, in label order: Helen's 11 classes in Helen's order (so FSENet's default parts,
#: ``faceaux.models.fsenet.FSENET_PARTS``, pick the same regions here). "l_" and "r_" are the
#: *image*-left and image-right parts of an upright frontal face (the subject's right and left),
#: matching landmark points 36-41 (l_eye) and 42-47 (r_eye) of the 68-point iBUG layout.
PARSING_CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    "hair",
)

#: The attributes of Table 1 of multitask-face-attributes.txt, in that table's order (the
#: CelebA column names).
SYNTHETIC_ATTRIBUTES: tuple[str, ...] = (
    "Narrow_Eyes",
    "Big_Nose",
    "Pointy_Nose",
    "Chubby",
    "Double_Chin",
    "High_Cheekbones",
    "Male",
)

# Images are rendered in chunks of this many; the per-chunk random streams are seeded from
# (seed, chunk index), so the output does not depend on anything but the constructor arguments.
_CHUNK = 128

# Perspective depth of the face plane (normalised image units) used for yaw/pitch.
_CAMERA_DISTANCE = 3.0
# The face is drawn on a canonical canvas of _CANVAS² pixels spanning [-_EXTENT, _EXTENT]
# (canonical units: the face is about 1.1 wide), then warped into the image with a base zoom.
_CANVAS = 128
_EXTENT = 1.2
_ZOOM = 1.3


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _identity_params(num_identities: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-identity geometry and colours, all in normalised units (the image spans [-1, 1])."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    n = num_identities
    u = lambda lo, hi: _uniform(gen, n, lo, hi)  # noqa: E731
    male = (torch.rand(n, generator=gen) < 0.5).float()
    p: dict[str, torch.Tensor] = {"male": male}
    p["face_a"] = u(0.44, 0.58) + 0.03 * male
    p["face_b"] = u(0.62, 0.74)
    p["jaw_taper"] = u(0.10, 0.45) - 0.08 * male
    p["face_cy"] = u(0.04, 0.10)
    p["eye_sp"] = u(0.18, 0.27)
    p["eye_y"] = u(-0.13, -0.03)
    p["eye_w"] = u(0.075, 0.11)
    p["eye_ratio"] = u(0.28, 0.62)
    p["brow_gap"] = u(0.07, 0.13)
    p["brow_thick"] = u(0.016, 0.034) + 0.012 * male
    p["brow_arch"] = u(0.0, 0.045)
    p["brow_len"] = u(1.1, 1.5)
    p["nose_len"] = u(0.17, 0.29)
    p["nose_w"] = u(0.055, 0.115)
    p["nose_tip"] = u(0.0, 0.05)
    p["mouth_gap"] = u(0.09, 0.15)
    p["mouth_w"] = u(0.13, 0.22)
    p["lip_up"] = u(0.02, 0.045)
    p["lip_low"] = u(0.03, 0.06)
    p["hairline"] = u(-0.62, -0.40)
    p["hair_volume"] = u(0.04, 0.14)
    p["long_hair"] = ((torch.rand(n, generator=gen) < 0.8) & (male == 0)).float()
    p["double_chin"] = u(0.0, 1.0)
    p["cheekbones"] = u(0.0, 1.0)
    # Colours: skin along a light-to-dark continuum with a small hue jitter; hair from anchors.
    tone = torch.rand(n, generator=gen)
    light = torch.tensor([0.96, 0.80, 0.69])
    dark = torch.tensor([0.38, 0.24, 0.16])
    skin = light + tone[:, None] * (dark - light) + 0.03 * torch.randn(n, 3, generator=gen)
    p["skin"] = skin.clamp(0.05, 1.0)
    anchors = torch.tensor(
        [
            [0.08, 0.06, 0.05],  # black
            [0.30, 0.18, 0.10],  # brown
            [0.78, 0.64, 0.38],  # blond
            [0.60, 0.26, 0.12],  # red
            [0.62, 0.62, 0.62],  # grey
        ]
    )
    choice = torch.randint(0, len(anchors), (n,), generator=gen)
    hair = anchors[choice] + 0.05 * torch.randn(n, 3, generator=gen)
    p["hair"] = hair.clamp(0.02, 1.0)
    iris = torch.tensor([[0.25, 0.15, 0.08], [0.20, 0.35, 0.55], [0.25, 0.40, 0.25]])
    p["iris"] = iris[torch.randint(0, 3, (n,), generator=gen)]
    p["lip"] = (p["skin"] * torch.tensor([0.95, 0.55, 0.55]) + u(0.0, 0.12)[:, None]).clamp(0, 1)
    return p


def _attributes(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Table-1 attributes (0/1) from the identity geometry; thresholds near each median."""
    eye_h = p["eye_w"] * p["eye_ratio"]
    narrow = p["eye_ratio"] < 0.40
    big_nose = p["nose_w"] * p["nose_len"] > 0.0195
    pointy = p["nose_tip"] > 0.028
    chubby = p["face_a"] / p["face_b"] - 0.35 * p["jaw_taper"] > 0.66
    double_chin = p["double_chin"] > 0.6
    cheek = p["cheekbones"] > 0.5
    male = p["male"] > 0.5
    del eye_h
    return torch.stack([narrow, big_nose, pointy, chubby, double_chin, cheek, male], 1).float()


def _image_params(n: int, seed: int, pose: float, warp: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 29)
    u = lambda lo, hi: _uniform(gen, n, lo, hi)  # noqa: E731
    q: dict[str, torch.Tensor] = {}
    q["yaw"] = u(-0.60, 0.60) * pose
    q["pitch"] = u(-0.20, 0.20) * pose
    q["roll"] = u(-0.25, 0.25) * pose
    q["scale"] = 1.0 + u(-0.10, 0.10) * warp
    q["rot"] = u(-0.08, 0.08) * warp
    q["tx"] = u(-0.07, 0.07) * warp
    q["ty"] = u(-0.07, 0.07) * warp
    opened = (torch.rand(n, generator=gen) < 0.4).float()
    q["mouth_open"] = opened * u(0.005, 0.07)
    q["smile"] = u(-0.012, 0.035)
    q["brow_raise"] = u(-0.01, 0.03)
    blink = (torch.rand(n, generator=gen) < 0.05).float()
    q["eye_open"] = (1 - blink) * u(0.75, 1.1) + blink * 0.15
    q["light"] = torch.stack([u(-0.8, 0.8), u(-0.8, 0.4)], 1)
    q["ambient"] = u(0.45, 0.70)
    q["gain"] = u(0.75, 1.15)[:, None] * (1 + 0.08 * (torch.rand(n, 3, generator=gen) - 0.5))
    q["background"] = torch.rand(n, 3, generator=gen) * 0.8 + 0.1
    q["bg_grad"] = torch.rand(n, 2, generator=gen) - 0.5
    q["blur"] = u(0.0, 1.1)
    q["noise"] = u(0.0, 0.035)
    return q


def _pose_matrix(q: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 3, 3) map from canonical (frontal, centred) to image normalised coordinates."""
    n = q["yaw"].shape[0]
    eye = torch.eye(3).expand(n, 3, 3)
    yaw = eye.clone()
    yaw[:, 0, 0] = torch.cos(q["yaw"])
    yaw[:, 2, 0] = torch.sin(q["yaw"]) / _CAMERA_DISTANCE
    pitch = eye.clone()
    pitch[:, 1, 1] = torch.cos(q["pitch"])
    pitch[:, 2, 1] = torch.sin(q["pitch"]) / _CAMERA_DISTANCE
    angle = q["roll"] + q["rot"]
    sim = eye.clone()
    scale = q["scale"] * _ZOOM
    sim[:, 0, 0] = scale * torch.cos(angle)
    sim[:, 0, 1] = -scale * torch.sin(angle)
    sim[:, 1, 0] = scale * torch.sin(angle)
    sim[:, 1, 1] = scale * torch.cos(angle)
    sim[:, 0, 2] = q["tx"]
    sim[:, 1, 2] = q["ty"]
    return sim @ pitch @ yaw


def _landmarks(p: dict[str, torch.Tensor], q: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 68, 2) landmarks in canonical normalised coordinates, iBUG 68-point order."""
    cy, fa, fb, taper = p["face_cy"], p["face_a"], p["face_b"], p["jaw_taper"]
    col = lambda v: v[:, None]  # noqa: E731
    # Jaw 0-16: along the face outline from the left temple over the chin to the right one.
    theta = torch.linspace(math.pi + 0.25, -0.25, 17)
    jy = col(cy) + col(fb) * torch.sin(theta)
    rel = ((jy - col(cy)) / col(fb)).clamp(min=0)
    jx = col(fa) * (1 - col(taper) * rel**2) * torch.cos(theta)
    jaw = torch.stack([jx, jy], -1)
    # Brows 17-21 (image left), 22-26.
    bx = torch.linspace(-1, 1, 5)
    blen = p["eye_w"] * p["brow_len"]
    by = p["eye_y"] - p["brow_gap"] - q["brow_raise"]
    arch_y = col(by) - col(p["brow_arch"]) * (1 - bx**2)
    left_brow = torch.stack([col(-p["eye_sp"]) + col(blen) * bx, arch_y], -1)
    right_brow = torch.stack([col(p["eye_sp"]) + col(blen) * bx, arch_y], -1)
    # Nose 27-30 (bridge) and 31-35 (base).
    top = p["eye_y"] - 0.02
    bottom = p["eye_y"] + p["nose_len"]
    t = torch.linspace(0, 1, 4)
    bridge_y = col(top) + t * col(bottom + 0.5 * p["nose_tip"] - 0.015 - top)
    bridge = torch.stack([torch.zeros_like(bridge_y), bridge_y], -1)
    s = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    base_x = col(p["nose_w"] * 0.8) * s
    base_y = col(bottom) + col(p["nose_tip"]) * (1 - s.abs()) * 0.5
    base = torch.stack([base_x, base_y], -1)
    # Eyes 36-41 and 42-47: corners, two upper, two lower points on an ellipse.
    ang = torch.tensor(
        [math.pi, 4 * math.pi / 3, 5 * math.pi / 3, 0.0, math.pi / 3, 2 * math.pi / 3]
    )
    ew = col(p["eye_w"])
    eh = col(p["eye_w"] * p["eye_ratio"] * q["eye_open"])
    ex = ew * torch.cos(ang)
    ey = col(p["eye_y"]) + eh * torch.sin(ang)
    left_eye = torch.stack([col(-p["eye_sp"]) + ex, ey], -1)
    right_eye = torch.stack([col(p["eye_sp"]) + ex, ey], -1)
    # Mouth 48-59 (outer) and 60-67 (inner).
    my = bottom + p["mouth_gap"]
    mw = col(p["mouth_w"])
    outer_t = torch.tensor(
        [-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3]
    )
    upper = torch.tensor([1.0] * 7 + [0.0] * 5).bool()
    inner_t = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 0.5, 0.0, -0.5])
    inner_upper = torch.tensor([1.0] * 5 + [0.0] * 3).bool()
    curves = _mouth_curves(col(my), col(q["smile"]), col(q["mouth_open"]))
    lips = (col(p["lip_up"]), col(p["lip_low"]))
    ou = _outer_lip(curves, lips, outer_t, upper)
    outer = torch.stack([mw * outer_t, ou], -1)
    iu = torch.where(inner_upper, curves[0](inner_t), curves[1](inner_t))
    inner = torch.stack([mw * inner_t, iu.expand(mw.shape[0], -1)], -1)
    return torch.cat(
        [jaw, left_brow, right_brow, bridge, base, left_eye, right_eye, outer, inner], 1
    )


def _mouth_curves(my, smile, opening):
    """Inner upper/lower lip lines y(t), t = x / mouth half-width in [-1, 1]."""

    def inner_upper(t):
        return my - smile * t**2 - 0.5 * opening * (1 - t**2)

    def inner_lower(t):
        return my - smile * t**2 + 0.5 * opening * (1 - t**2)

    return inner_upper, inner_lower


def _outer_lip(curves, lips, t, upper):
    bulge = (1 - t**2).clamp(min=0).sqrt()
    up = curves[0](t) - lips[0] * bulge
    low = curves[1](t) + lips[1] * bulge
    return torch.where(upper, up, low)


def _ramp(signed: torch.Tensor, width: float) -> torch.Tensor:
    """Soft inside-mask from a signed distance-like value (positive inside)."""
    return (signed / width + 0.5).clamp(0.0, 1.0)


def _window(lo: float, hi: float) -> slice:
    """Canvas rows/columns covering canonical coordinates [lo, hi]."""
    first = max(0, math.floor((lo / _EXTENT + 1) * _CANVAS / 2))
    last = min(_CANVAS, math.ceil((hi / _EXTENT + 1) * _CANVAS / 2))
    return slice(first, last)


# Canonical windows (rows = y, columns = x) that contain each part for every parameter draw:
# the bounds follow from the parameter ranges of _identity_params/_image_params.
_EYES_ROWS, _EYES_COLS = _window(-0.42, 0.10), _window(-0.48, 0.48)
_NOSE_ROWS, _NOSE_COLS = _window(-0.20, 0.32), _window(-0.32, 0.32)
_MOUTH_ROWS, _MOUTH_COLS = _window(0.0, 0.56), _window(-0.26, 0.26)


def _render(
    p: dict[str, torch.Tensor],
    q: dict[str, torch.Tensor],
    size: tuple[int, int],
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render a batch: images (B, 3, H, W), parsing (B, H, W), landmarks px, warp px.

    The face is drawn on a canonical canvas (frontal, centred; the small parts only inside fixed
    windows of it), then the colour, coverage and parsing maps are resampled through the pose
    matrix into the image, over a background drawn in image space.
    """
    h, w = size
    n = q["yaw"].shape[0]
    big = _CANVAS
    coords = ((torch.arange(big, dtype=torch.float32) + 0.5) * 2 / big - 1) * _EXTENT
    x, y = coords.view(1, 1, big), coords.view(1, big, 1)
    v = lambda t: t.view(n, 1, 1)  # noqa: E731
    c = lambda colour: colour.view(n, 3, 1, 1)  # noqa: E731
    px = 2 * _EXTENT / big  # one canvas pixel in canonical units
    # Nose parallax: the nose tip stands out of the face plane, so it moves further with yaw.
    parallax = 0.18 * torch.sin(q["yaw"])

    # Face outline: an ellipse whose lower half narrows towards the chin (jaw taper).
    cy, fa, fb = v(p["face_cy"]), v(p["face_a"]), v(p["face_b"])
    rel_y = (y - cy) / fb
    fu = x / (fa * (1 - v(p["jaw_taper"]) * rel_y.clamp(min=0) ** 2))
    face_d = fu**2 + rel_y**2
    face_soft = _ramp((1 - face_d) * fa / 2, px)
    # Hair: a head ellipse behind the face, long hair down the sides, fringe above the hairline.
    hv = v(p["hair_volume"])
    head_d = (x / (fa + hv)) ** 2 + ((y - cy + 0.5 * hv) / (fb + hv)) ** 2
    head = (1 - head_d) * (fa + hv) / 2
    long_hair = torch.minimum((fa + hv + 0.04) - x.abs(), y - (cy - 0.2)) - 10 * (
        1 - v(p["long_hair"])
    )
    hair_sd = torch.maximum(torch.minimum(head, cy - 0.1 - y), long_hair)
    hair_sd = torch.maximum(hair_sd, torch.where(face_d > 1, head, -1.0))
    fringe = (v(p["hairline"]) + 0.03 * torch.cos(x * 9)) - y
    hair_sd = torch.maximum(hair_sd, torch.minimum(fringe, head))
    hair_soft = _ramp(hair_sd, px)
    skin_alpha = face_soft * (1 - hair_soft * (fringe > 0))
    alpha = torch.maximum(hair_soft, face_soft)

    # Shading: an ellipsoid normal for the face, lit from the image's light direction; cheek
    # highlights (high cheekbones) and a chin fold (double chin), both separable in x and y.
    nz = (1 - face_d.clamp(max=1)) ** 0.25
    light = q["light"]
    lx, ly = v(light[:, 0]), v(light[:, 1])
    diffuse = ((lx * fu + ly * rel_y + nz) / (1 + lx**2 + ly**2).sqrt()).clamp(min=0)
    ambient = v(q["ambient"])
    ey, esp = v(p["eye_y"]), v(p["eye_sp"])
    cheek = (
        v(p["cheekbones"])
        * torch.exp(-(((x.abs() - esp * 1.1) / 0.09) ** 2))
        * torch.exp(-(((y - ey - 0.14) / 0.05) ** 2))
    )
    fold = (v(p["double_chin"]) - 0.6).clamp(min=0) * 2.5
    chin_fold = (
        fold
        * torch.exp(-(((y - cy - fb * 0.93) / 0.015) ** 2))
        * torch.exp(-((x / (0.5 * fa)) ** 4))
    )
    shade = (ambient + (1.1 - ambient) * diffuse) * (1 + 0.25 * cheek - 0.45 * chin_fold)
    stubble = v(p["male"]) * 0.12 * ((y - cy - 0.3 * fb) / 0.1).clamp(0, 1)
    skin = c(p["skin"]) * (shade * (1 - stubble))[:, None]
    hair_colour = c(p["hair"]) * (0.85 + 0.15 * torch.sin(40 * x + 6 * y))[:, None]
    colour = torch.lerp(hair_colour, skin, skin_alpha[:, None])
    parsing = torch.zeros(n, big, big, dtype=torch.uint8)
    parsing[hair_soft > 0.5] = 10
    parsing[skin_alpha > 0.5] = 1

    def paint(rows, cols, masks_labels, target):
        """Paint parts inside a window: colour (n, 3, h, w) under the max mask; labels."""
        sub_parse = parsing[:, rows, cols]
        for mask, label in masks_labels:
            sub_parse = torch.where(mask > 0.5, torch.tensor(label, dtype=torch.uint8), sub_parse)
        parsing[:, rows, cols] = sub_parse
        cover = masks_labels[0][0]
        for mask, _ in masks_labels[1:]:
            cover = torch.maximum(cover, mask)
        colour[:, :, rows, cols] = torch.lerp(colour[:, :, rows, cols], target, cover[:, None])

    # Eyes and brows, in their window.
    xw, yw = x[..., _EYES_COLS], y[:, _EYES_ROWS]
    shade_w = shade[:, _EYES_ROWS, _EYES_COLS]
    blen = v(p["eye_w"] * p["brow_len"])
    by = ey - v(p["brow_gap"]) - v(q["brow_raise"])

    def brow(cx):
        t = (xw - cx) / blen
        centre = by - v(p["brow_arch"]) * (1 - t**2)
        half = v(p["brow_thick"]) * 0.5 * (1 - 0.5 * t.abs().clamp(max=1))
        return _ramp(torch.minimum(half - (yw - centre).abs(), (1 - t.abs()) * blen), px)

    brows = [(brow(-esp), 2), (brow(esp), 3)]
    paint(_EYES_ROWS, _EYES_COLS, brows, c(p["hair"]) * 0.6 * shade_w[:, None])
    eye_w = v(p["eye_w"])
    eye_h = v(p["eye_w"] * p["eye_ratio"] * q["eye_open"])
    eye_y2 = ((yw - ey) / eye_h) ** 2
    gaze = 0.25 * eye_w * torch.sin(v(q["yaw"]))
    iris_r = 0.55 * eye_w

    def eye(cx):
        inside = _ramp((1 - ((xw - cx) / eye_w) ** 2 - eye_y2) * eye_h / 2, px)
        iris = _ramp(iris_r - ((xw - cx - gaze) ** 2 + (yw - ey) ** 2).sqrt(), px)
        return inside, iris * inside

    (l_eye, l_iris), (r_eye, r_iris) = eye(-esp), eye(esp)
    iris = torch.maximum(l_iris, r_iris)[:, None]
    eye_colour = torch.lerp(torch.full_like(iris, 0.92).expand(-1, 3, -1, -1), c(p["iris"]), iris)
    paint(_EYES_ROWS, _EYES_COLS, [(l_eye, 4), (r_eye, 5)], eye_colour * shade_w[:, None])

    # Nose: widening from the bridge to the base, with a V-shaped tip; shifted by parallax.
    xw, yw = x[..., _NOSE_COLS], y[:, _NOSE_ROWS]
    top = ey - 0.02
    bottom = ey + v(p["nose_len"])
    nw, tip = v(p["nose_w"]), v(p["nose_tip"])
    xn = xw - v(parallax)
    half_w = 0.25 * nw + 0.75 * nw * ((yw - top) / (bottom - top)).clamp(0, 1) ** 2
    tip_line = bottom + tip * (1 - (xn / nw).abs()).clamp(min=0)
    nose = _ramp(torch.minimum(torch.minimum(half_w - xn.abs(), tip_line - yw), yw - top), px)
    nostrils = _ramp(
        0.012 - (((xn.abs() - 0.55 * nw) / 0.5) ** 2 + (yw - bottom + 0.005) ** 2).sqrt(), px
    )
    side = torch.exp(-(((xn - 0.6 * half_w) / 0.012) ** 2))
    glint = torch.exp(-((xn / 0.03) ** 2 + ((yw - bottom) / 0.03) ** 2))
    shade_w = shade[:, _NOSE_ROWS, _NOSE_COLS] * (1 - 0.25 * side - 0.6 * nostrils) + 0.15 * glint
    paint(_NOSE_ROWS, _NOSE_COLS, [(nose, 6)], c(p["skin"]) * shade_w[:, None])

    # Mouth: lips and inner mouth between the lip curves.
    xw, yw = x[..., _MOUTH_COLS], y[:, _MOUTH_ROWS]
    my = bottom + v(p["mouth_gap"])
    mw = v(p["mouth_w"])
    t = xw / mw
    xin = (1 - t.abs()) * mw
    upper_inner, lower_inner = _mouth_curves(my, v(q["smile"]), v(q["mouth_open"]))
    iu, il = upper_inner(t), lower_inner(t)
    bulge = (1 - t**2).clamp(min=0).sqrt()
    ou = iu - v(p["lip_up"]) * bulge
    ol = il + v(p["lip_low"]) * bulge
    upper_lip = _ramp(torch.minimum(torch.minimum(yw - ou, iu - yw), xin), px)
    inner_mouth = _ramp(torch.minimum(torch.minimum(yw - iu, il - yw), xin), px)
    lower_lip = _ramp(torch.minimum(torch.minimum(yw - il, ol - yw), xin), px)
    shade_w = shade[:, _MOUTH_ROWS, _MOUTH_COLS][:, None]
    paint(_MOUTH_ROWS, _MOUTH_COLS, [(upper_lip, 7), (lower_lip, 9)], c(p["lip"]) * shade_w)
    dark = torch.tensor([0.30, 0.06, 0.08]).view(1, 3, 1, 1) * shade_w
    paint(_MOUTH_ROWS, _MOUTH_COLS, [(inner_mouth, 8)], dark)

    # Resample the canvas into the image through the pose matrix.
    matrix = _pose_matrix(q)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * 2 / h - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * 2 / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(h * w)], 0)
    can = torch.linalg.inv(matrix) @ pix
    grid = (can[:, :2] / can[:, 2:]).transpose(1, 2).reshape(n, h, w, 2) / _EXTENT
    rgba = torch.cat([colour * alpha[:, None], alpha[:, None]], 1)
    rgba = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(
        parsing[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    parsing_out = labels[:, 0].round().to(torch.uint8)

    # Background in image space, then the face over it (premultiplied alpha).
    bg = c(q["background"]) * (
        1
        + 0.3
        * (c(q["bg_grad"][:, :1].expand(-1, 3)) * gx + c(q["bg_grad"][:, 1:].expand(-1, 3)) * gy)
    )
    image = rgba[:, :3] + bg.clamp(0, 1) * (1 - rgba[:, 3:])
    image = image * q["gain"].view(n, 3, 1, 1)
    image = _blur(image, q["blur"])
    # Sensor noise: uniform with standard deviation q["noise"] (cheaper to draw than Gaussian).
    uniform = torch.rand(image.shape, generator=gen) - 0.5
    image = image + (q["noise"] * math.sqrt(12)).view(n, 1, 1, 1) * uniform
    image = image.clamp(0, 1)

    # Landmarks: canonical points (nose with parallax) through the same matrix, in pixels.
    canonical = _landmarks(p, q)
    canonical[:, 27:36, 0] += parallax[:, None] * torch.tensor(
        [0.2, 0.5, 0.8, 1.0, 0.7, 0.8, 1.0, 0.8, 0.7]
    )
    homog = torch.cat([canonical, torch.ones(n, 68, 1)], -1) @ matrix.transpose(1, 2)
    landmarks = (homog[..., :2] / homog[..., 2:] + 1) * torch.tensor([w / 2.0, h / 2.0]) - 0.5
    to_norm = torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]]
    )
    warp_px = torch.linalg.inv(to_norm) @ matrix @ to_norm
    return image, parsing_out, landmarks, warp_px


def _blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, as one grouped convolution."""
    n, ch, h, w = image.shape
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype)
    s = sigma.clamp(min=1e-3).view(n, 1)
    kernel = torch.exp(-0.5 * (offsets / s) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.repeat_interleave(ch, 0)  # (n * ch, K)
    flat = image.reshape(1, n * ch, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * ch, 1, 1, -1), groups=n * ch)
    flat = F.conv2d(flat, kernel.view(n * ch, 1, -1, 1), groups=n * ch)
    return flat.view(n, ch, h, w)


class SyntheticFaces(Dataset):
    """Procedurally rendered faces with landmarks, parsing, attributes and warp ground truth.

    Each of ``num_identities`` identities gets its own geometry (face width and height, jaw taper,
    eye size, aspect and spacing, brow shape, nose length, width and tip, mouth width and lip
    thickness, skin tone, hair colour and style, sex) drawn from ``seed``; each image varies the
    head pose (yaw ±34°, pitch ±11°, roll ±14° at ``pose=1``, rendered as a perspective warp of
    the face plane with nose parallax), a misalignment (scale ±10 %, rotation ±4.6°, shift ±7 %
    at ``warp=1``), expression (mouth opening, smile, brow raise, blinks), illumination (light
    direction, ambient level, colour gain, background), Gaussian blur and noise.

    The whole set is rendered at construction (vectorised over chunks of images, no per-pixel
    Python loops) and cached: ``images`` as ``uint8``. The output depends only on the
    constructor's arguments.

    Ground truth per sample:

    - ``landmarks``: the 68 iBUG points in pixel coordinates ``(x, y)`` of the returned image
      (pixel centres at integers).
    - ``parsing``: labels of :data:`PARSING_CLASSES` (background, skin, l/r brow, l/r eye, nose,
      upper lip, inner mouth, lower lip, hair: Helen's order); "l" means image-left.
    - ``attributes``: the seven Table-1 attributes of multitask-face-attributes.txt
      (:data:`SYNTHETIC_ATTRIBUTES`), 0/1, thresholds of the identity's geometry (e.g.
      Narrow_Eyes: eye height/width < 0.40; Chubby: wide face with a weak jaw taper), so they are
      identity-stable by construction, as §3.2's majority vote assumes.
    - ``warp``: the ``(3, 3)`` matrix mapping *canonical* pixel coordinates (the frontal, centred,
      unscaled face of the same identity and expression) to pixel coordinates of the image;
      ``inv(warp)`` undoes the pose and misalignment (up to nose parallax).

    Args:
        num_identities: number of identities; labels are ``0 … num_identities − 1``.
        images_per_identity: images per identity; samples are ordered identity-major.
        size: ``(H, W)`` of the images.
        seed: the random seed (identities, image variations and noise all follow from it).
        pose: scale of the head-rotation ranges (0 gives frontal faces).
        warp: scale of the misalignment ranges (0 gives centred faces).

    Shape:
        ``dataset[i]`` is a dict: ``image (3, H, W)`` float in [0, 1], ``label ()`` int64,
        ``landmarks (68, 2)``, ``parsing (H, W)`` int64, ``attributes (7,)``, ``warp (3, 3)``.
        The cached tensors are the attributes ``images (N, 3, H, W)`` uint8, ``labels (N,)``,
        ``landmarks (N, 68, 2)``, ``parsing (N, H, W)`` uint8, ``attributes (N, 7)``,
        ``warps (N, 3, 3)``, ``identity_attributes (num_identities, 7)``.

    Examples:
        >>> data = SyntheticFaces(num_identities=3, images_per_identity=2, size=(56, 56))
        >>> sample = data[0]
        >>> sample["image"].shape, sample["landmarks"].shape, sample["parsing"].shape
        (torch.Size([3, 56, 56]), torch.Size([68, 2]), torch.Size([56, 56]))
    """

    def __init__(
        self,
        num_identities: int = 100,
        images_per_identity: int = 20,
        size: Sequence[int] = (112, 112),
        seed: int = 0,
        pose: float = 1.0,
        warp: float = 1.0,
    ) -> None:
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError(
                "num_identities and images_per_identity: expected ≥ 1, received "
                f"{num_identities} and {images_per_identity}"
            )
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size: expected (H, W) with H, W ≥ 8, received {tuple(size)}")
        if pose < 0 or warp < 0:
            raise ValueError(f"pose and warp: expected ≥ 0, received {pose} and {warp}")
        self.num_identities = num_identities
        self.images_per_identity = images_per_identity
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        n = num_identities * images_per_identity
        ident = _identity_params(num_identities, seed)
        self.identity_attributes = _attributes(ident)
        self.labels = torch.arange(num_identities).repeat_interleave(images_per_identity)
        per_image = _image_params(n, seed, pose, warp)
        h, w = self.size
        self.images = torch.empty(n, 3, h, w, dtype=torch.uint8)
        self.parsing = torch.empty(n, h, w, dtype=torch.uint8)
        self.landmarks = torch.empty(n, 68, 2)
        self.warps = torch.empty(n, 3, 3)
        with torch.no_grad():
            for chunk, start in enumerate(range(0, n, _CHUNK)):
                idx = torch.arange(start, min(n, start + _CHUNK))
                p = {k: t[self.labels[idx]] for k, t in ident.items()}
                q = {k: t[idx] for k, t in per_image.items()}
                gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (chunk + 1))
                image, parsing, landmarks, warp_px = _render(p, q, self.size, gen)
                self.images[idx] = (image * 255).round().to(torch.uint8)
                self.parsing[idx] = parsing
                self.landmarks[idx] = landmarks
                self.warps[idx] = warp_px
        self.attributes = self.identity_attributes[self.labels]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[index].float() / 255,
            "label": self.labels[index],
            "landmarks": self.landmarks[index],
            "parsing": self.parsing[index].long(),
            "attributes": self.attributes[index],
            "warp": self.warps[index],
        }


def split_identities(
    num_identities: int, test_fraction: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split identity labels into disjoint (train, test) sets, each sorted.

    Args:
        num_identities: identities are ``0 … num_identities − 1``.
        test_fraction: fraction of identities held out for testing (at least one each side).
        seed: seed of the random permutation.

    Examples:
        >>> train, test = split_identities(10, 0.3, seed=0)
        >>> len(train), len(test), bool(set(train.tolist()) & set(test.tolist()))
        (7, 3, False)
    """
    if num_identities < 2:
        raise ValueError(f"num_identities: expected ≥ 2 to split, received {num_identities}")
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
        n_pairs: number of pairs (even numbers give exactly half of each kind).
        seed: random seed.
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
    labels = dataset if isinstance(dataset, torch.Tensor) else dataset.labels
    labels = torch.as_tensor(labels).long()
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
