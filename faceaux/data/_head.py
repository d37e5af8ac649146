"""The 3-D head behind :class:`faceaux.data.SyntheticFaces`: geometry, ray casting, landmarks.

The head is three ellipsoids, all in *head coordinates* (x to the image right of a frontal face,
y down, z towards the camera; the unit is the one of the old planar canvas, about half a face
width):

- the **face** ``F``: an ellipsoid whose frontal silhouette is a little larger than the face
  outline; the face's texture (skin, brows, eyes, lips, moles) is painted on it at the point's
  frontal coordinates ``(x, y)``; it is transparent below its centre outside the tapered face
  outline (the jaw);
- the **nose** ``N``: a smaller ellipsoid tilted so that its lower end juts out of the face;
- the **hair** ``H``: a larger ellipsoid enclosing the face, set back, visible only where hair
  grows (above the hairline, and behind a cut that leaves the face free down to the nape, or
  past the chin for long hair), and as an ear below short hair.

Every image pixel becomes an orthographic camera ray, which is intersected with the three
ellipsoids in closed form (a quadratic each), so self-occlusion is exact: a turned face loses the
far eye behind the nose and the curve of the face, and the parsing map shows only what the ray
meets first. Silhouettes are anti-aliased with the ray's closest approach to each ellipsoid.
Landmarks are points of the same surfaces; a landmark is *visible* when its surface faces the
camera and the first surface on its camera ray is its own.

Everything is vectorised over a batch of images and their pixels (no Python loops over images,
pixels or parts).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Image normalised coordinates ([-1, 1] across the image) per head unit, before misalignment.
ZOOM = 1.3
# The face outline lies at this relative radius of the face ellipsoid (so its border still
# faces the camera in a frontal view).
_OUTLINE_RADIUS = 0.92
# Depth test tolerance (head units) for "the first surface on the ray is the landmark's own".
_DEPTH_TOLERANCE = 1e-3

Params = dict[str, torch.Tensor]


def ramp(signed: torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """Soft inside-mask from a signed distance-like value (positive inside), ``width`` wide."""
    return (signed / width + 0.5).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def head_rotation(yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` rotation from head to camera coordinates (pitch after yaw, no roll).

    Positive yaw turns the nose towards the image right, positive pitch turns it up. Roll is an
    in-plane rotation of the image and lives in the warp (:func:`image_warp`).
    """
    cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    rot_yaw = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rot_pitch = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).view(-1, 3, 3)
    return rot_pitch @ rot_yaw


def image_warp(q: Params) -> torch.Tensor:
    """``(B, 3, 3)`` map from the upright view (head units) to image normalised coordinates.

    ``perspective @ similarity``: the similarity scales by ``ZOOM * scale``, rotates by
    ``roll + rot`` and shifts by ``(tx, ty)``; the perspective jitter then has the last row
    ``(px, py, 1)`` in image normalised coordinates.
    """
    n = q["roll"].shape[0]
    angle = q["roll"] + q["rot"]
    scale = q["scale"] * ZOOM
    sim = torch.eye(3).repeat(n, 1, 1)
    sim[:, 0, 0] = scale * angle.cos()
    sim[:, 0, 1] = -scale * angle.sin()
    sim[:, 1, 0] = scale * angle.sin()
    sim[:, 1, 1] = scale * angle.cos()
    sim[:, 0, 2] = q["tx"]
    sim[:, 1, 2] = q["ty"]
    persp = torch.eye(3).repeat(n, 1, 1)
    persp[:, 2, 0] = q["px"]
    persp[:, 2, 1] = q["py"]
    return persp @ sim


def pixel_matrix(size: tuple[int, int]) -> torch.Tensor:
    """``(3, 3)`` map from pixel coordinates (pixel centres on integers) to [-1, 1] coordinates."""
    h, w = size
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]]
    )


class Ellipsoid:
    """An ellipsoid per image: centre ``(B, 3)``, semi-axes ``(B, 3)``, optional tilt about x."""

    def __init__(self, centre: torch.Tensor, axes: torch.Tensor, tilt: torch.Tensor | None = None):
        self.centre, self.axes, self.tilt = centre, axes, tilt
        self._inverse = [(1 / axes[:, i : i + 1]) for i in range(3)]  # (B, 1) each
        self._c = [centre[:, i : i + 1] for i in range(3)]
        if tilt is not None:
            self._cos, self._sin = tilt.cos()[:, None], tilt.sin()[:, None]

    def select(self, index: torch.Tensor) -> Ellipsoid:
        """The ellipsoids of the images ``index`` ``(K,)`` (a batch of K)."""
        tilt = None if self.tilt is None else self.tilt[index]
        return Ellipsoid(self.centre[index], self.axes[index], tilt)

    def _rotate_in(self, x, y, z):
        """Head-frame vectors into the ellipsoid's (untilted) frame."""
        if self.tilt is None:
            return x, y, z
        return x, self._cos * y + self._sin * z, self._cos * z - self._sin * y

    def _local(self, x, y, z):
        """Head coordinates (each ``(B, K)`` or ``(B, 1)``) to the ellipsoid's unit-sphere frame."""
        c = self._c
        x, y, z = self._rotate_in(x - c[0], y - c[1], z - c[2])
        inv = self._inverse
        return x * inv[0], y * inv[1], z * inv[2]

    def intersect(self, origin, direction):
        """Ray ``origin + t * direction`` against the ellipsoid.

        Args:
            origin: three ``(B, K)`` tensors (x, y, z) in head coordinates.
            direction: ``(B, 3)`` unit direction, the same for all K rays of an image.

        Returns:
            ``t_near``, ``t_far`` ``(B, K)`` (for a ray that misses, both are its closest
            approach) and ``radius`` ``(B, K)``: the ray's closest approach to the centre in
            unit-sphere units (< 1 for a hit).
        """
        ox, oy, oz = self._local(*origin)
        inv = self._inverse
        dx, dy, dz = self._rotate_in(direction[:, 0:1], direction[:, 1:2], direction[:, 2:3])
        dx, dy, dz = dx * inv[0], dy * inv[1], dz * inv[2]  # (B, 1) each
        a = dx * dx + dy * dy + dz * dz
        inv_a = 1 / a
        b = ox * dx + oy * dy + oz * dz
        c = ox * ox + oy * oy + oz * oz - 1
        disc = b * b - a * c
        root = disc.clamp(min=0).sqrt()
        radius = (1 - disc * inv_a).clamp(min=0).sqrt()
        return (b + root) * -inv_a, (root - b) * inv_a, radius

    def normal(self, x, y, z):
        """Outward unit normal (three ``(B, K)`` tensors in head coordinates) at points."""
        ux, uy, uz = self._local(x, y, z)
        inv = self._inverse
        nx, ny, nz = ux * inv[0], uy * inv[1], uz * inv[2]
        if self.tilt is not None:
            ny, nz = self._cos * ny - self._sin * nz, self._cos * nz + self._sin * ny
        norm = (nx * nx + ny * ny + nz * nz).clamp(min=1e-12).rsqrt()
        return nx * norm, ny * norm, nz * norm

    def unit_coordinates(self, x, y, z):
        """The points in the ellipsoid's unit-sphere frame (for textures fixed to it)."""
        return self._local(x, y, z)


def face_ellipsoid(p: Params) -> Ellipsoid:
    """The face: silhouette ``1 / 0.92`` times the outline, depth ``face_depth`` times width."""
    a = p["face_a"] / _OUTLINE_RADIUS
    b = p["face_b"] / _OUTLINE_RADIUS
    centre = torch.stack([torch.zeros_like(a), p["face_cy"], torch.zeros_like(a)], 1)
    return Ellipsoid(centre, torch.stack([a, b, a * p["face_depth"]], 1))


def hair_ellipsoid(p: Params) -> Ellipsoid:
    """The hair: encloses the face ellipsoid (axes ×1.06 in x, y and ×1.4 in z, set back)."""
    face = face_ellipsoid(p).axes
    hv = p["hair_volume"]
    centre = torch.stack([torch.zeros_like(hv), p["face_cy"] - 0.5 * hv, -0.25 * face[:, 2]], 1)
    axes = torch.stack(
        [1.06 * face[:, 0] + 0.6 * hv, 1.06 * face[:, 1] + 0.4 * hv, 1.4 * face[:, 2] + 0.5 * hv],
        1,
    )
    return Ellipsoid(centre, axes)


def _face_front_z(p: Params, y: torch.Tensor) -> torch.Tensor:
    """z of the face ellipsoid's front on the mid-line at height ``y`` (``(B,)``)."""
    face = face_ellipsoid(p)
    rel = (y - face.centre[:, 1]) / face.axes[:, 1]
    return face.axes[:, 2] * (1 - rel**2).clamp(min=0).sqrt()


def nose_geometry(p: Params) -> tuple[Ellipsoid, torch.Tensor, torch.Tensor]:
    """The nose ellipsoid, its root ``y`` and its tip (the frontmost point) ``(B, 3)``.

    The nose spans ``eye_y − 0.02`` (root) to ``eye_y + nose_len`` (base); it is tilted by
    ``nose_tilt`` about the x axis (base forward), is ``0.8 · nose_w`` wide (half-width) and
    protrudes ``0.07 + 1.6 · nose_tip`` out of the face at its tip.
    """
    root = p["eye_y"] - 0.02
    base = p["eye_y"] + p["nose_len"]
    half = 0.55 * (base - root)
    protrusion = 0.07 + 1.6 * p["nose_tip"]
    depth = 0.6 * protrusion + 0.05
    width = 0.8 * p["nose_w"]
    tilt = p["nose_tilt"]
    cos, sin = tilt.cos(), tilt.sin()
    # Frontmost point of a tilted ellipsoid, relative to its centre: (0, dy, k).
    k = (sin**2 * half**2 + cos**2 * depth**2).sqrt()
    dy = cos * sin * (half**2 - depth**2) / k
    centre_y = 0.5 * (root + base) + 0.01
    tip_y = centre_y + dy
    centre_z = _face_front_z(p, tip_y) + protrusion - k
    zero = torch.zeros_like(root)
    nose = Ellipsoid(
        torch.stack([zero, centre_y, centre_z], 1), torch.stack([width, half, depth], 1), tilt
    )
    tip = torch.stack([zero, tip_y, centre_z + k], 1)
    return nose, root, tip


# --------------------------------------------------------------------------------------------
# Landmarks
# --------------------------------------------------------------------------------------------


def _mouth_curves(my, smile, opening):
    """Inner upper/lower lip lines y(t), t = x / mouth half-width in [-1, 1]."""

    def inner_upper(t):
        return my - smile * t**2 - 0.5 * opening * (1 - t**2)

    def inner_lower(t):
        return my - smile * t**2 + 0.5 * opening * (1 - t**2)

    return inner_upper, inner_lower


def _outer_lips(curves, lip_up, lip_low, bow, t):
    """Outer upper/lower lip lines at t; the upper one dips by the cupid's bow at the centre."""
    bulge = (1 - t**2).clamp(min=0).sqrt()
    up = curves[0](t) - lip_up * bulge * (1 - bow * torch.exp(-((t / 0.22) ** 2)))
    low = curves[1](t) + lip_low * bulge
    return up, low


def _eye_offsets(p: Params, q: Params, side: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eye contour points (6 per eye, iBUG order) relative to the eye centre, tilted."""
    ang = torch.tensor(
        [math.pi, 4 * math.pi / 3, 5 * math.pi / 3, 0.0, math.pi / 3, 2 * math.pi / 3]
    )
    ew = p["eye_w"][:, None]
    eh = (p["eye_w"] * p["eye_ratio"] * q["eye_open"])[:, None]
    ex, ey = ew * ang.cos(), eh * ang.sin()
    # side = -1 for the image-left eye: its outer corner is at -x; tilt raises outer corners.
    phi = (-side * p["eye_tilt"])[:, None]
    return ex * phi.cos() - ey * phi.sin(), ex * phi.sin() + ey * phi.cos()


def frontal_landmarks(p: Params, q: Params) -> torch.Tensor:
    """``(B, 68, 2)`` landmark ``(x, y)`` in head coordinates, iBUG 68-point order.

    These are the points' frontal coordinates; :func:`lift` puts them on the head's surface.
    """
    col = lambda v: v[:, None]  # noqa: E731
    cy, fa, fb, taper = p["face_cy"], p["face_a"], p["face_b"], p["jaw_taper"]
    # Jaw 0-16: along the face outline from the left temple over the chin to the right one.
    theta = torch.linspace(math.pi + 0.25, -0.25, 17)
    jy = col(cy) + col(fb) * torch.sin(theta)
    rel = ((jy - col(cy)) / col(fb)).clamp(min=0)
    jx = col(fa) * (1 - col(taper) * rel**2) * torch.cos(theta)
    jaw = torch.stack([jx, jy], -1)
    # Brows 17-21 (image left), 22-26: arch, raise (both), frown (inner ends down).
    bx = torch.linspace(-1, 1, 5)
    blen = col(p["eye_w"] * p["brow_len"])
    by = col(p["eye_y"] - p["brow_gap"] - q["brow_raise"])
    arch = col(p["brow_arch"]) * (1 - bx**2)
    frown = col(q["frown"])
    left_brow = torch.stack([col(-p["eye_sp"]) + blen * bx, by - arch + frown * (1 + bx) / 2], -1)
    right_brow = torch.stack([col(p["eye_sp"]) + blen * bx, by - arch + frown * (1 - bx) / 2], -1)
    # Nose 27-30 (bridge, root to tip) and 31-35 (base).
    _, root, tip = nose_geometry(p)
    t = torch.linspace(0, 1, 4)
    bridge_y = col(root) + t * col(tip[:, 1] - root)
    bridge = torch.stack([torch.zeros_like(bridge_y), bridge_y], -1)
    s = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    bottom = p["eye_y"] + p["nose_len"]
    base_x = col(p["nose_w"] * 0.75) * s
    base_y = col(bottom) - 0.01 + col(p["nose_tip"]) * (1 - s.abs()) * 0.5
    base = torch.stack([base_x, base_y], -1)
    # Eyes 36-41 and 42-47: corners, two upper, two lower points on a tilted ellipse.
    eyes = []
    for side in (-1.0, 1.0):
        ox, oy = _eye_offsets(p, q, side)
        eyes.append(torch.stack([col(side * p["eye_sp"]) + ox, col(p["eye_y"]) + oy], -1))
    # Mouth 48-59 (outer) and 60-67 (inner).
    my = col(bottom + p["mouth_gap"])
    mw = col(p["mouth_w"])
    outer_t = torch.tensor(
        [-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3]
    )
    upper = torch.tensor([True] * 7 + [False] * 5)
    inner_t = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 0.5, 0.0, -0.5])
    inner_upper = torch.tensor([True] * 5 + [False] * 3)
    curves = _mouth_curves(my, col(q["smile"]), col(q["mouth_open"]))
    up, low = _outer_lips(curves, col(p["lip_up"]), col(p["lip_low"]), col(p["lip_bow"]), outer_t)
    outer = torch.stack([mw * outer_t, torch.where(upper, up, low)], -1)
    iu = torch.where(inner_upper, curves[0](inner_t), curves[1](inner_t))
    inner = torch.stack([mw * inner_t, iu.expand(mw.shape[0], -1)], -1)
    return torch.cat([jaw, left_brow, right_brow, bridge, base, *eyes, outer, inner], 1)


def lift(p: Params, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(B, K, 2)`` of frontal coordinates onto the front of the face or nose.

    Returns the 3-D points ``(B, K, 3)`` (the frontmost of the two surfaces along z) and their
    outward unit normals ``(B, K, 3)``, both in head coordinates.
    """
    face = face_ellipsoid(p)
    nose, _, _ = nose_geometry(p)
    x, y = xy[..., 0], xy[..., 1]
    origin = (x, y, torch.zeros_like(x))
    toward = torch.tensor([0.0, 0.0, -1.0]).expand(x.shape[0], 3)
    t_face, _, r_face = face.intersect(origin, toward)
    t_nose, _, r_nose = nose.intersect(origin, toward)
    on_nose = (r_nose < 1) & ((t_nose < t_face) | (r_face >= 1))
    z = -torch.where(on_nose, t_nose, t_face)
    n_face = face.normal(x, y, z)
    n_nose = nose.normal(x, y, z)
    normal = torch.stack(
        [torch.where(on_nose, a, b) for a, b in zip(n_nose, n_face, strict=True)], -1
    )
    return torch.stack([x, y, z], -1), normal


# --------------------------------------------------------------------------------------------
# Textures (channel-last: colours are (..., 3))
# --------------------------------------------------------------------------------------------


class Lookup:
    """Per-image parameters broadcast against points: all pixels ``(B, K)``, or a compacted
    subset ``(K,)`` of them whose image indices are ``index``."""

    def __init__(self, p: Params, q: Params, index: torch.Tensor | None = None) -> None:
        self.params, self.index = {**p, **q}, index

    def __call__(self, key: str) -> torch.Tensor:
        value = self.params[key]
        if self.index is not None:
            return value[self.index]
        return value[:, None] if value.ndim == 1 else value[:, None, :]


def _paint(colour, label, parts, target):
    """Paint parts: labels where a mask exceeds 0.5, colour lerped under the largest mask."""
    cover = parts[0][0]
    for mask, value in parts:
        label = torch.where(mask > 0.5, torch.tensor(value, dtype=torch.uint8), label)
        cover = torch.maximum(cover, mask)
    return torch.lerp(colour, target, cover[..., None]), label


def face_alpha(p: Params, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, px: float):
    """Opacity ``(B, K)`` of the face ellipsoid at points ``(x, y, z)`` ``(B, K)`` on it.

    Opaque on the upper half (forehead, temples, the sides and back of the head under the hair)
    and, on the front half, inside the tapered face outline; transparent at the corners the jaw
    taper cuts off and below the back of the head (where a neck would be).
    """
    cy, fa, fb = p["face_cy"][:, None], p["face_a"][:, None], p["face_b"][:, None]
    rel_y = (y - cy) / fb
    fu = x / (fa * (1 - p["jaw_taper"][:, None] * rel_y.clamp(min=0) ** 2))
    inside = torch.minimum((1 - fu**2 - rel_y**2) * fa / 2, z)
    return ramp(torch.maximum(inside, cy - y), px)


def _bump(d: torch.Tensor) -> torch.Tensor:
    """``(1 − d/4)⁴`` for ``d < 4``, else 0: a cheap stand-in for ``exp(−d)``, ``d ≥ 0``."""
    b = (1 - d / 4).clamp(min=0).square()
    return b.square()


def skin_albedo(v: Lookup, x: torch.Tensor, y: torch.Tensor, px: float) -> torch.Tensor:
    """Skin colour ``(..., 3)``: cheek highlights (high cheekbones), a chin fold (double chin),
    stubble (male) and a mole."""
    cy, fa, fb = v("face_cy"), v("face_a"), v("face_b")
    cheek_d = ((x.abs() - 1.1 * v("eye_sp")) / 0.09) ** 2 + ((y - v("eye_y") - 0.14) / 0.05) ** 2
    fold = (v("double_chin") - 0.6).clamp(min=0) * 2.5
    fold_d = ((y - cy - 0.93 * fb) / 0.015) ** 2 + (x / (0.5 * fa)) ** 4
    bumps = 0.25 * v("cheekbones") * _bump(cheek_d) - 0.45 * fold * _bump(fold_d)
    stubble = v("male") * 0.12 * ((y - cy - 0.3 * fb) / 0.1).clamp(0, 1)
    mole_r = ((x - v("mole_x")) ** 2 + (y - v("mole_y")) ** 2).sqrt()
    mole = v("mole") * ramp(v("mole_r") - mole_r, px)
    tone = (1 + bumps) * (1 - stubble) * (1 - 0.55 * mole)
    return v("skin") * tone[..., None]


def eyes_window(v: Lookup, px: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frontal-coordinate bounds ``(y_min, y_max, |x|_max)`` that hold both eyes and brows."""
    ey, ew = v("eye_y"), v("eye_w")
    brow_y = ey - v("brow_gap") - v("brow_raise")
    y_min = brow_y - v("brow_arch") - v("brow_thick") - px
    y_max = torch.maximum(ey + ew, brow_y + v("frown") + v("brow_thick")) + px
    x_max = v("eye_sp") + ew * torch.maximum(v("brow_len"), torch.ones_like(ew)) + px
    return y_min, y_max, x_max


def paint_eyes(v: Lookup, x, y, colour, label, px: float):
    """Brows (arched bands with strands; raise and frown move them) and eyes (tilted ellipses;
    iris of the identity's colour, size and stripe texture; pupil; gaze)."""
    ey, esp = v("eye_y"), v("eye_sp")
    blen = v("eye_w") * v("brow_len")
    by = ey - v("brow_gap") - v("brow_raise")

    def brow(side):
        t = (x - side * esp) / blen
        inner = (1 - side * t) / 2  # 1 at the inner end, 0 at the outer end
        centre = by - v("brow_arch") * (1 - t**2) + v("frown") * inner
        half = v("brow_thick") * 0.5 * (1 - 0.5 * t.abs().clamp(max=1))
        return ramp(torch.minimum(half - (y - centre).abs(), (1 - t.abs()) * blen), px)

    strands = 0.8 + 0.2 * torch.cos(v("brow_texture") * (x + 0.3 * y))
    brow_colour = v("hair") * (0.6 * strands)[..., None]
    colour, label = _paint(colour, label, [(brow(-1.0), 2), (brow(1.0), 3)], brow_colour)

    ew = v("eye_w")
    eh = v("eye_w") * v("eye_ratio") * v("eye_open")
    cos, sin = v("eye_tilt").cos(), v("eye_tilt").sin()

    def eye(side):
        dx, dy = x - side * esp, y - ey
        lx = dx * cos - side * dy * sin  # rotated by -side * tilt: outer corners up
        ly = side * dx * sin + dy * cos
        inside = ramp((1 - (lx / ew) ** 2 - (ly / eh) ** 2) * eh / 2, px)
        r = ((lx - v("gaze_x") * ew) ** 2 + (ly - v("gaze_y") * ew) ** 2).sqrt()
        return inside, r

    (l_eye, l_r), (r_eye, r_r) = eye(-1.0), eye(1.0)
    iris_r = v("iris_size") * ew
    r = torch.minimum(l_r, r_r)
    iris = ramp(iris_r - r, px)
    pupil = ramp(0.4 * iris_r - r, px)
    stripes = 0.75 + 0.25 * torch.cos(v("iris_texture") * r / ew + v("iris_phase"))
    iris_colour = v("iris") * (stripes * (1 - 0.85 * pupil))[..., None]
    eye_colour = 0.92 + iris[..., None] * (iris_colour - 0.92)
    return _paint(colour, label, [(l_eye, 4), (r_eye, 5)], eye_colour)


def mouth_window(v: Lookup, px: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frontal-coordinate bounds ``(y_min, y_max, |x|_max)`` that hold the lips."""
    my = v("eye_y") + v("nose_len") + v("mouth_gap")
    smile, opening = v("smile"), v("mouth_open")
    y_min = my - smile.clamp(min=0) - 0.5 * opening - v("lip_up") - px
    y_max = my + (-smile).clamp(min=0) + 0.5 * opening + v("lip_low") + px
    return y_min, y_max, v("mouth_w") + px


def paint_mouth(v: Lookup, x, y, colour, label, px: float):
    """Lips (identity colour, cupid's bow, line texture) and the inner mouth with teeth."""
    my = v("eye_y") + v("nose_len") + v("mouth_gap")
    mw = v("mouth_w")
    t = x / mw
    xin = (1 - t.abs()) * mw
    curves = _mouth_curves(my, v("smile"), v("mouth_open"))
    iu, il = curves[0](t), curves[1](t)
    ou, ol = _outer_lips(curves, v("lip_up"), v("lip_low"), v("lip_bow"), t)
    upper_lip = ramp(torch.minimum(torch.minimum(y - ou, iu - y), xin), px)
    inner_mouth = ramp(torch.minimum(torch.minimum(y - iu, il - y), xin), px)
    lower_lip = ramp(torch.minimum(torch.minimum(y - il, ol - y), xin), px)
    lines = 0.9 + 0.1 * torch.cos(v("lip_texture") * t)
    lips = [(upper_lip, 7), (lower_lip, 9)]
    colour, label = _paint(colour, label, lips, v("lip") * lines[..., None])
    teeth = ramp(iu + 0.4 * (il - iu) - y, px)[..., None]
    dark, white = torch.tensor([0.30, 0.06, 0.08]), torch.tensor([0.88, 0.86, 0.78])
    return _paint(colour, label, [(inner_mouth, 8)], dark + teeth * (white - dark))


def _paint_region(p, q, x, y, where, window, painter, colour, label, px):
    """Paint one part region on the pixels inside its per-image window only (compacted)."""
    y_min, y_max, x_max = window(Lookup(p, q), px)
    inside = where & (y >= y_min) & (y <= y_max) & (x.abs() <= x_max)
    image, pixel = inside.nonzero(as_tuple=True)
    v = Lookup(p, q, image)
    part_colour, part_label = painter(
        v, x[image, pixel], y[image, pixel], colour[image, pixel], label[image, pixel], px
    )
    colour[image, pixel] = part_colour
    label[image, pixel] = part_label


def face_texture(p: Params, q: Params, x, y, z, visible, px: float):
    """Albedo ``(B, K, 3)`` and parsing label ``(B, K)`` of the face ellipsoid at points on it.

    ``x, y, z`` ``(B, K)`` are head coordinates. The texture is a function of the frontal
    coordinates ``(x, y)`` on the front half (``z > 0``), plain skin behind it. Eyes, brows and
    lips are painted only on the ``visible`` points inside their windows.
    """
    colour = skin_albedo(Lookup(p, q), x, y, px)
    label = torch.ones(x.shape, dtype=torch.uint8)
    front = visible & (z > 0)
    _paint_region(p, q, x, y, front, eyes_window, paint_eyes, colour, label, px)
    _paint_region(p, q, x, y, front, mouth_window, paint_mouth, colour, label, px)
    behind = z <= 0
    colour = torch.where(behind[..., None], p["skin"][:, None, :], colour)
    return colour, label.masked_fill_(behind, 1)


def nose_texture(skin, nostril_size, nose: Ellipsoid, x, y, z, px: float) -> torch.Tensor:
    """Albedo ``(B, K, 3)`` of the nose: skin ``(B, 3)``, a little redder, with dark nostrils
    of size ``nostril_size`` ``(B,)`` (unit-sphere units)."""
    ux, uy, uz = nose.unit_coordinates(x, y, z)
    dist = ((ux.abs() - 0.45) ** 2 + (uy - 0.8) ** 2 + (uz - 0.3) ** 2).sqrt()
    nostril = ramp(nostril_size[:, None] - dist, 4 * px / nose.axes[:, 0:1])
    colour = skin[:, None, :] * torch.tensor([1.02, 0.96, 0.94])
    return colour * (1 - 0.8 * nostril)[..., None]


def hair_masks(
    p: Params, x, y, z, px: float, inner: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the hair ellipsoid shows hair, and where (its outer side) it shows an ear.

    Hair grows above the hairline, and behind a cut ``z < 0.15 · depth`` that leaves the face
    free, down to a line that runs from just above the eyes at the temples to the nape for short
    hair (seen from inside, ``inner``, short hair stops just above the eyes everywhere), and
    past the chin for long hair. Below short hair, an ear: an ellipse on the side of the head
    behind the cut.
    """
    face_depth = (p["face_a"] * p["face_depth"] / _OUTLINE_RADIUS)[:, None]
    cy = p["face_cy"][:, None]
    long_hair = p["long_hair"][:, None]
    cut = 0.15 * face_depth
    back = cut - z
    short_bottom = cy - 0.1 + (0.0 if inner else 0.6) * back.clamp(min=0)
    bottom = torch.where(long_hair > 0.5, cy + 2.0, short_bottom)
    hairline = p["hairline"][:, None] + 0.03 * torch.cos(x * 9)
    hair = ramp(torch.minimum(bottom - y, torch.maximum(hairline - y, back)), px)
    ear_y = p["eye_y"][:, None] + 0.12
    ear = 1 - ((y - ear_y) / 0.14) ** 2 - ((z - cut + 0.12) / 0.08) ** 2
    ear = ramp(ear * 0.04, px) * (1 - long_hair)
    return hair, ear * (1 - hair)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


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


def _shade(normal, light, ambient):
    """Lambert shading ``ambient + (1.1 − ambient) · max(0, n·l)`` (all ``(B, K)``)."""
    diffuse = normal[0] * light[:, 0:1] + normal[1] * light[:, 1:2] + normal[2] * light[:, 2:3]
    return ambient + (1.1 - ambient) * diffuse.clamp(min=0)


def _hair_albedo(hair: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hair colour ``(B, K, 3)`` (``hair`` ``(B, 3)``) with a strand pattern."""
    return hair[:, None, :] * (0.85 + 0.15 * torch.sin(40 * x + 6 * y))[..., None]


def _point(origin, direction, t):
    return tuple(o + t * direction[:, i : i + 1] for i, o in enumerate(origin))


def render(
    p: Params, q: Params, size: tuple[int, int], noise: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Render a batch of heads: images, parsing, landmarks, visibility and warps.

    Args:
        p: identity parameters gathered per image (each ``(B,)`` or ``(B, 3)``).
        q: image parameters (pose in radians, misalignment, expression, light, ...).
        size: ``(H, W)``.
        noise: ``(B, 3, H, W)`` uniform numbers in (0, 1) for the sensor noise.

    Returns:
        dict with ``image (B, 3, H, W)`` in [0, 1], ``parsing (B, H, W)`` uint8,
        ``landmarks (B, 68, 2)`` pixels, ``visibility (B, 68)`` bool, ``warp (B, 3, 3)``
        (upright-view pixels to image pixels).
    """
    h, w = size
    n = q["yaw"].shape[0]
    px = 2.0 / (min(h, w) * ZOOM)  # one pixel in head units (before misalignment scaling)
    rotation = head_rotation(q["yaw"], q["pitch"])  # (n, 3, 3) head -> camera
    warp = image_warp(q)  # upright view -> image, normalised

    # Camera rays of the pixel centres, in head coordinates.
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * 2 / h - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * 2 / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pix = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.ones(h * w)], 0)
    upright = torch.linalg.inv(warp) @ pix  # (n, 3, P)
    sx, sy = upright[:, 0] / upright[:, 2], upright[:, 1] / upright[:, 2]
    origin = tuple(
        sx * rotation[:, 0, i : i + 1] + sy * rotation[:, 1, i : i + 1] for i in range(3)
    )
    direction = -rotation[:, 2]  # (n, 3): away from the camera
    light = torch.cat([q["light"], torch.ones(n, 1)], 1)
    light = (light / light.norm(dim=1, keepdim=True))[:, None] @ rotation  # (n, 1, 3) in head
    light = light[:, 0]
    ambient = q["ambient"][:, None]

    face = face_ellipsoid(p)
    nose, _, _ = nose_geometry(p)
    hair = hair_ellipsoid(p)
    t_face, _, r_face = face.intersect(origin, direction)
    t_nose, _, r_nose = nose.intersect(origin, direction)
    t_hair, t_hair_back, r_hair = hair.intersect(origin, direction)
    mean_ab = lambda e: e.axes[:, :2].mean(1, keepdim=True)  # noqa: E731
    cover_hair = ramp((1 - r_hair) * mean_ab(hair), px)
    face_point = _point(origin, direction, t_face)
    nose_point = _point(origin, direction, t_nose)
    hair_point = _point(origin, direction, t_hair)
    back_point = _point(origin, direction, t_hair_back)

    # Opacity of the layers, back to front: hair seen from inside, face, nose, hair's outer side
    # (hair or an ear).
    back_alpha = hair_masks(p, *back_point, px, inner=True)[0] * cover_hair
    face_opacity = face_alpha(p, *face_point, px) * ramp((1 - r_face) * mean_ab(face), px)
    in_front = (t_nose < t_face) | (face_opacity < 0.5)
    nose_alpha = ramp((1 - r_nose) * nose.axes[:, 0:1], px) * in_front
    hair_front, ear = hair_masks(p, *hair_point, px)
    front_alpha = torch.maximum(hair_front, ear) * cover_hair

    # Colours: albedo times Lambert shading, each layer evaluated only where it shows.
    def shaded(show, ellipsoid, point, albedo, inward=False):
        image, pixel = show.nonzero(as_tuple=True)
        at = tuple(c[image, pixel][:, None] for c in point)  # K points as K one-pixel images
        normal = ellipsoid.select(image).normal(*at)
        if inward:
            normal = tuple(-c for c in normal)
        shade = _shade(normal, light[image], ambient[image])
        colour = torch.zeros(*show.shape, 3)
        colour[image, pixel] = (albedo(image, pixel, at) * shade[..., None])[:, 0]
        return colour

    uncovered = (front_alpha < 1) & (nose_alpha < 1)
    colour = shaded(
        (back_alpha > 0) & (face_opacity < 1) & uncovered,
        hair,
        back_point,
        lambda i, j, at: _hair_albedo(p["hair"][i], *at[:2]),
        inward=True,
    )
    layers = [(back_alpha, colour, 10)]
    albedo, face_label = face_texture(p, q, *face_point, (face_opacity > 0) & uncovered, px)
    shade = _shade(face.normal(*face_point), light, ambient)
    layers.append((face_opacity, albedo * shade[..., None], face_label))
    colour = shaded(
        (nose_alpha > 0) & (front_alpha < 1),
        nose,
        nose_point,
        lambda i, j, at: nose_texture(p["skin"][i], p["nostril"][i], nose.select(i), *at, px),
    )
    layers.append((nose_alpha, colour, 6))
    is_hair = hair_front >= ear
    colour = shaded(
        front_alpha > 0,
        hair,
        hair_point,
        lambda i, j, at: torch.where(
            is_hair[i, j][:, None, None],
            _hair_albedo(p["hair"][i], *at[:2]),
            p["skin"][i][:, None, :],
        ),
    )
    front_label = torch.where(is_hair, 10, 1).to(torch.uint8)
    layers.append((front_alpha, colour, front_label))

    # Background in image space, then the layers over it.
    grad = q["bg_grad"]
    slope = grad[:, 0:1] * gx.reshape(1, -1) + grad[:, 1:2] * gy.reshape(1, -1)
    image = (q["background"][:, None, :] * (1 + 0.3 * slope)[..., None]).clamp(0, 1)
    parsing = torch.zeros(n, h * w, dtype=torch.uint8)
    for alpha, colour, label in layers:
        image = torch.lerp(image, colour, alpha[..., None])
        parsing = torch.where(alpha > 0.5, torch.as_tensor(label, dtype=torch.uint8), parsing)
    image = image.transpose(1, 2).reshape(n, 3, h, w) * q["gain"].view(n, 3, 1, 1)
    image = _blur(image, q["blur"])
    image = image + (q["noise"] * math.sqrt(12)).view(n, 1, 1, 1) * (noise - 0.5)
    image = image.clamp(0, 1)

    # Landmarks: on the surface, through the rotation and the warp; visible when facing the
    # camera and first on their camera ray.
    points, normals = lift(p, frontal_landmarks(p, q))
    camera = points @ rotation.transpose(1, 2)  # (n, 68, 3)
    facing = (normals @ rotation.transpose(1, 2))[..., 2] > 0
    origin = tuple(
        camera[..., 0] * rotation[:, 0, i : i + 1] + camera[..., 1] * rotation[:, 1, i : i + 1]
        for i in range(3)
    )
    depth = -camera[..., 2]  # ray parameter of the landmark itself
    t_face, _, r_face = face.intersect(origin, direction)
    t_nose, _, r_nose = nose.intersect(origin, direction)
    t_hair, _, r_hair = hair.intersect(origin, direction)
    outline = face_alpha(p, *_point(origin, direction, t_face), px)
    hair_front, ear = hair_masks(p, *_point(origin, direction, t_hair), px)
    inf = torch.full_like(depth, math.inf)
    first = torch.minimum(
        torch.where((r_face < 1) & (outline >= 0.5), t_face, inf),
        torch.minimum(
            torch.where(r_nose < 1, t_nose, inf),
            torch.where((r_hair < 1) & (torch.maximum(hair_front, ear) > 0.5), t_hair, inf),
        ),
    )
    visibility = facing & (depth <= first + _DEPTH_TOLERANCE)
    homog = torch.cat([camera[..., :2], torch.ones(n, 68, 1)], -1) @ warp.transpose(1, 2)
    landmarks = (homog[..., :2] / homog[..., 2:] + 1) * torch.tensor([w / 2.0, h / 2.0]) - 0.5
    to_norm = pixel_matrix(size)
    warp_px = torch.linalg.inv(to_norm) @ warp @ to_norm
    return {
        "image": image,
        "parsing": parsing.view(n, h, w),
        "landmarks": landmarks,
        "visibility": visibility,
        "warp": warp_px,
    }
