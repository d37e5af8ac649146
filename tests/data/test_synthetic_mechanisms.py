"""The mechanisms the papers address exist in SyntheticFaces (issue 16 §1).

Pose self-occludes landmarks and parts; pose and misalignment make verification harder for a
fixed baseline; expression moves landmarks without changing identity; local identity
parameters change only their part's pixels. The fixed baseline is *normalised down-sampled
pixels*: grey levels average-pooled to 16 × 16, minus their mean, L2-normalised; nothing is
trained, so any difference comes from the data.
"""

import pytest
import torch
import torch.nn.functional as F

from faceaux.data import _head
from faceaux.data.synthetic import SyntheticFaces, _identity_params, _image_params
from faceaux.eval.protocols import all_pairs_metrics, pose_protocols

L_EYE, R_EYE = slice(36, 42), slice(42, 48)
MOUTH = slice(48, 68)


def pixel_baseline(images: torch.Tensor) -> torch.Tensor:
    """Normalised down-sampled pixels: (N, 3, H, W) uint8 -> (N, 256) unit vectors."""
    grey = images.float().mean(1, keepdim=True) / 255
    x = F.adaptive_avg_pool2d(grey, 16).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True)


def test_visible_fraction_falls_with_yaw():
    bins = [(0, 5), (20, 25), (40, 45), (60, 65), (80, 90)]
    data = SyntheticFaces(30, len(bins), size=(32, 32), seed=2, yaw_range=bins)
    visible = data.visibility.view(30, len(bins), 68).float().mean((0, 2))
    assert (visible[1:] < visible[:-1]).all(), visible
    assert visible[0] > 0.98
    assert visible[-1] < 0.7


def test_profile_hides_far_eye_and_half_the_mouth():
    data = SyntheticFaces(30, 2, size=(32, 32), seed=4, yaw_range=(80, 90))
    yaw = data.poses[:, 0]
    # Positive yaw turns the nose to the image right: the image-right eye (42-47) turns away.
    far = torch.where(yaw[:, None] > 0, data.visibility[:, R_EYE], data.visibility[:, L_EYE])
    near = torch.where(yaw[:, None] > 0, data.visibility[:, L_EYE], data.visibility[:, R_EYE])
    assert not far.any()
    assert near.float().mean() > 0.8
    mouth = data.visibility[:, MOUTH].float().mean(1)
    assert 0.4 < mouth.mean() < 0.85, mouth
    assert (mouth < 1).all()
    far_corner = torch.where(yaw > 0, data.visibility[:, 54], data.visibility[:, 48])
    assert not far_corner.any()
    assert data.visibility[:, 30].float().mean() > 0.9  # the nose tip stays in view


def test_parsing_respects_occlusion():
    """A hidden eye has no eye pixels; an eye whose landmarks are all visible has some."""
    bins = [(0, 10), (40, 50), (60, 70), (75, 90)]
    data = SyntheticFaces(25, len(bins), size=(64, 64), seed=5, yaw_range=bins, expression=0.0)
    counted = 0
    for points, label in ((L_EYE, 4), (R_EYE, 5)):
        pixels = (data.parsing == label).flatten(1).sum(1)
        hidden = ~data.visibility[:, points].any(1)
        shown = data.visibility[:, points].all(1)
        assert hidden.any()
        assert shown.any()
        assert (pixels[hidden] == 0).all(), pixels[hidden]
        assert (pixels[shown] > 0).all(), pixels[shown]
        counted += int(hidden.sum())
    assert counted >= 20  # about one eye per profile image


def test_pose_hurts_a_fixed_baseline():
    """CFP-style set (same identities frontal and in profile): frontal-profile verification is
    worse than frontal-frontal for the fixed pixel baseline."""
    data = SyntheticFaces(40, 8, size=(48, 48), seed=0, yaw_range=[(0, 10)] * 4 + [(75, 90)] * 4)
    result = pose_protocols(
        pixel_baseline(data.images), data.labels, data.poses[:, 0], fars=(1e-1, 1e-2), n_pairs=600
    )
    ff, fp = result["frontal_frontal"], result["frontal_profile"]
    assert ff["n_genuine"] == 40 * 6
    assert fp["n_genuine"] == 40 * 16
    assert fp["eer"] > ff["eer"] + 0.05, (ff["eer"], fp["eer"])
    assert fp["tar_at_far"][1e-1] < ff["tar_at_far"][1e-1]
    assert fp["accuracy"] < ff["accuracy"]


def test_misalignment_hurts_a_fixed_baseline():
    """The same frontal faces, centred or with twice the default crop jitter."""
    eer = {}
    for warp in (0.0, 2.0):
        data = SyntheticFaces(40, 4, size=(48, 48), seed=0, pose=0.0, warp=warp)
        eer[warp] = all_pairs_metrics(pixel_baseline(data.images), data.labels)["eer"]
    assert eer[2.0] > eer[0.0] + 0.05, eer


def test_expression_moves_landmarks_not_identity():
    still = SyntheticFaces(10, 4, size=(32, 32), seed=1, pose=0.0, warp=0.0, expression=0.0)
    moving = SyntheticFaces(10, 4, size=(32, 32), seed=1, pose=0.0, warp=0.0)
    assert torch.equal(still.identity_attributes, moving.identity_attributes)
    # Without pose, misalignment and expression, every image of an identity has the same points.
    per_id = still.landmarks.view(10, 4, 68, 2)
    assert torch.allclose(per_id, per_id[:, :1].expand_as(per_id), atol=1e-4)
    spread = moving.landmarks.view(10, 4, 68, 2).std(1).mean((0, 2))  # per landmark
    assert spread[MOUTH].mean() > 0.1
    assert spread[17:27].mean() > 0.1
    assert spread[0:17].max() < 1e-4  # the jaw outline does not
    # Mouth opening: the inner lips part exactly when the nuisance attribute says so.
    gap = moving.landmarks[:, 66, 1] - moving.landmarks[:, 62, 1]
    opened = moving.nuisance[:, 0].bool()
    assert opened.any()
    assert (gap[opened] > 0.02 * 32 * 1.3 / 2 - 1e-3).all()
    assert (still.landmarks[:, 66, 1] - still.landmarks[:, 62, 1]).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("key", "value", "labels"),
    [
        ("iris_texture", 60.0, (4, 5)),
        ("eye_tilt", -0.3, (4, 5)),
        ("brow_texture", 30.0, (2, 3)),
        ("lip_bow", 0.9, (7, 8, 9)),
        ("lip_texture", 80.0, (7, 8, 9)),
        ("nostril", 0.45, (6,)),
    ],
)
def test_local_identity_parameters_change_only_their_part(key, value, labels):
    """FSENet's premise: part detail lives in the part's pixels. Changes of more than 2 % stay
    within 2 pixels of the part's parsing region (anti-aliased edges of parts thinner than a
    pixel may leave faint changes just outside it)."""
    ids = torch.arange(6)
    p = _identity_params(ids, seed=0)
    q = _image_params(
        ids, torch.zeros(6, dtype=torch.long), 0, torch.zeros(6), torch.zeros(6), 0.0, 0.0, 0.0
    )
    q["blur"] = torch.zeros(6)
    q["noise"] = torch.zeros(6)
    noise = torch.zeros(6, 3, 64, 64)
    before = _head.render(p, q, (64, 64), noise)
    changed = {**p, key: torch.full((6,), value)}
    after = _head.render(changed, q, (64, 64), noise)
    moved = (after["image"] - before["image"]).abs().amax(1) > 0.02  # (6, 64, 64)
    part = torch.zeros_like(moved)
    for label in labels:
        part |= (before["parsing"] == label) | (after["parsing"] == label)
    near_part = F.max_pool2d(part[:, None].float(), 5, stride=1, padding=2)[:, 0].bool()
    assert moved.any()
    assert not (moved & ~near_part).any()


def test_global_identity_parameters_change_the_whole_face():
    ids = torch.arange(4)
    p = _identity_params(ids, seed=0)
    q = _image_params(
        ids, torch.zeros(4, dtype=torch.long), 0, torch.zeros(4), torch.zeros(4), 0.0, 0.0, 0.0
    )
    noise = torch.zeros(4, 3, 48, 48)
    before = _head.render(p, q, (48, 48), noise)
    after = _head.render({**p, "skin": p["skin"] * 0.8}, q, (48, 48), noise)
    moved = (after["image"] - before["image"]).abs().amax(1) > 1 / 255
    skin = before["parsing"] == 1
    assert moved[skin].float().mean() > 0.95
