"""SyntheticFaces: layout, determinism, reproducible identities, ground truth, pairs, arguments."""

import math

import pytest
import torch

from faceaux.conventions import PARSING_CLASSES
from faceaux.data import NUISANCE_ATTRIBUTES
from faceaux.data._counter_random import counter_hash, counter_normal, counter_uniform
from faceaux.data.synthetic import (
    SYNTHETIC_ATTRIBUTES,
    SyntheticFaces,
    make_pairs,
    split_identities,
)


@pytest.fixture(scope="module")
def faces():
    return SyntheticFaces(num_identities=12, images_per_identity=6, size=(64, 64), seed=3)


def test_sample_layout(faces):
    sample = faces[7]
    assert sample["image"].shape == (3, 64, 64)
    assert sample["image"].dtype == torch.float32
    assert sample["image"].min() >= 0.0
    assert sample["image"].max() <= 1.0
    assert sample["label"].item() == 1
    assert sample["landmarks"].shape == (68, 2)
    assert sample["visibility"].shape == (68,)
    assert sample["visibility"].dtype == torch.bool
    assert sample["pose"].shape == (3,)
    assert sample["parsing"].shape == (64, 64)
    assert sample["parsing"].dtype == torch.int64
    assert sample["attributes"].shape == (len(SYNTHETIC_ATTRIBUTES),)
    assert sample["nuisance"].shape == (len(NUISANCE_ATTRIBUTES),)
    assert sample["warp"].shape == (3, 3)
    assert len(faces) == 72
    assert int(faces.parsing.max()) < len(PARSING_CLASSES)
    cached = {
        "images": ((72, 3, 64, 64), torch.uint8),
        "labels": ((72,), torch.int64),
        "landmarks": ((72, 68, 2), torch.float32),
        "visibility": ((72, 68), torch.bool),
        "poses": ((72, 3), torch.float32),
        "parsing": ((72, 64, 64), torch.uint8),
        "attributes": ((72, 7), torch.float32),
        "nuisance": ((72, 4), torch.float32),
        "warps": ((72, 3, 3), torch.float32),
        "identity_attributes": ((12, 7), torch.float32),
    }
    for name, (shape, dtype) in cached.items():
        tensor = getattr(faces, name)
        assert tensor.shape == shape, name
        assert tensor.dtype == dtype, name
    for name in ("landmarks", "poses", "warps"):
        assert torch.isfinite(getattr(faces, name)).all(), name


def test_deterministic_per_seed():
    a = SyntheticFaces(3, 4, size=(32, 32), seed=5)
    b = SyntheticFaces(3, 4, size=(32, 32), seed=5)
    c = SyntheticFaces(3, 4, size=(32, 32), seed=6)
    for name in ("images", "parsing", "landmarks", "visibility", "poses", "nuisance", "warps"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.poses, c.poses)


def test_identities_reproducible_from_seed_and_index():
    """Identity i (and image j of it) is the same whatever the set's size; image_seed only
    changes the images, not the identities."""
    small = SyntheticFaces(3, 2, size=(32, 32), seed=4)
    big = SyntheticFaces(7, 2, size=(32, 32), seed=4)
    assert torch.equal(small.identity_attributes, big.identity_attributes[:3])
    assert torch.equal(small.images, big.images[:6])
    assert torch.equal(small.landmarks, big.landmarks[:6])
    other = SyntheticFaces(3, 2, size=(32, 32), seed=4, image_seed=9)
    assert torch.equal(other.identity_attributes, small.identity_attributes)
    assert not torch.equal(other.poses, small.poses)
    # Large seeds (above 2**32) are distinct seeds, not aliases of their low word.
    assert not torch.equal(
        SyntheticFaces(2, 1, size=(16, 16), seed=2**32 + 4).images,
        SyntheticFaces(2, 1, size=(16, 16), seed=4).images,
    )


def test_counter_random_is_a_pure_function():
    keys = torch.arange(10_000)
    assert torch.equal(counter_hash(3, keys), counter_hash(3, keys))
    assert (counter_hash(3, keys) != counter_hash(4, keys)).float().mean() > 0.99
    u = counter_uniform(1, keys)
    assert u.min() > 0
    assert u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.005
    # Draw k of a batch does not depend on the rest of the batch.
    assert torch.equal(counter_uniform(1, keys[:7]), u[:7])
    z = counter_normal(2, keys)
    assert abs(float(z.mean())) < 0.05
    assert abs(float(z.std()) - 1) < 0.05


def test_yaw_ranges_per_slot():
    bins = [(0, 10), (0, 10), (40, 50), (80, 90)]
    data = SyntheticFaces(10, 4, size=(16, 16), seed=0, yaw_range=bins)
    yaw = data.poses[:, 0].abs().view(10, 4)
    for slot, (low, high) in enumerate(bins):
        assert (yaw[:, slot] >= low - 1e-4).all()
        assert (yaw[:, slot] <= high + 1e-4).all()
    signs = data.poses[:, 0].sign()
    assert (signs > 0).any()
    assert (signs < 0).any()
    same = SyntheticFaces(10, 4, size=(16, 16), seed=0, yaw_range=(30, 30))
    assert torch.allclose(same.poses[:, 0].abs(), torch.full((40,), 30.0))
    default = SyntheticFaces(50, 2, size=(16, 16), seed=0, pose=2.0)
    assert default.poses[:, 0].abs().max() <= math.degrees(1.2) + 1e-4
    assert default.poses[:, 0].abs().max() > 50


def test_attributes_identity_stable_and_varied(faces):
    per_id = faces.attributes.view(12, 6, -1)
    assert torch.equal(per_id, per_id[:, :1].expand_as(per_id))
    big = SyntheticFaces(200, 1, size=(16, 16), seed=0)
    rate = big.identity_attributes.mean(0)
    assert ((rate > 0.15) & (rate < 0.85)).all(), rate  # every attribute balanced-ish


def test_nuisance_attributes_vary_within_identities():
    data = SyntheticFaces(40, 10, size=(16, 16), seed=1)
    rate = data.nuisance.mean(0)
    assert ((rate > 0.01) & (rate < 0.8)).all(), rate
    per_id = data.nuisance.view(40, 10, -1)
    # Image-dependent: most identities show both values of the common nuisances.
    varies = (per_id.max(1).values != per_id.min(1).values).float().mean(0)
    for name in ("Mouth_Slightly_Open", "Smiling", "Harsh_Light"):
        assert varies[NUISANCE_ATTRIBUTES.index(name)] > 0.5, name
    neutral = SyntheticFaces(40, 2, size=(16, 16), seed=1, expression=0.0)
    assert neutral.nuisance[:, :3].sum() == 0  # no open mouth, smile or closed eyes


def test_landmarks_fall_on_their_parsing_regions():
    """Visible eye centres are eye pixels of the right side, the visible nose tip is nose, the
    chin is skin or its border."""
    data = SyntheticFaces(20, 6, size=(64, 64), seed=3, expression=0.0)
    n = len(data)
    for points, label in ((slice(36, 42), 4), (slice(42, 48), 5)):
        shown = data.visibility[:, points].all(1)
        centre = data.landmarks[:, points].mean(1).round().long().clamp(0, 63)
        got = data.parsing[torch.arange(n), centre[:, 1], centre[:, 0]]
        assert shown.float().mean() > 0.8
        assert (got[shown] == label).float().mean() > 0.9
    tip = data.landmarks[:, 30].round().long().clamp(0, 63)
    got = data.parsing[torch.arange(n), tip[:, 1], tip[:, 0]]
    assert (got[data.visibility[:, 30]] == 6).float().mean() > 0.9
    chin = data.landmarks[:, 8].round().long().clamp(0, 63)
    got = data.parsing[torch.arange(n), chin[:, 1], chin[:, 0]]
    assert torch.isin(got, torch.tensor([0, 1, 9, 10], dtype=torch.uint8)).all()


def test_warp_is_roll_and_misalignment():
    """With pose and warp off the warp is the constant zoom about the centre; misalignment
    (and roll) act on the image exactly through the warp."""
    flat = SyntheticFaces(3, 2, size=(32, 32), seed=0, pose=0.0, warp=0.0)
    first = flat.warps[0]
    assert torch.allclose(flat.warps, first.expand_as(flat.warps))
    assert torch.allclose(first, torch.tensor([[1.3, 0.0, -4.65], [0.0, 1.3, -4.65], [0, 0, 1.0]]))
    shifted = SyntheticFaces(3, 2, size=(32, 32), seed=0, pose=0.0, warp=1.5)
    assert not torch.allclose(shifted.warps, flat.warps)
    assert (shifted.warps[:, 2, :2].abs() > 0).any()  # perspective jitter
    # The same faces, expressions and pose, so landmarks map through W_shifted · W_flat⁻¹.
    move = shifted.warps @ torch.linalg.inv(flat.warps)
    points = torch.cat([flat.landmarks, torch.ones(6, 68, 1)], -1) @ move.transpose(1, 2)
    mapped = points[..., :2] / points[..., 2:]
    assert (mapped - shifted.landmarks).abs().max() < 1e-3


def test_identities_differ_more_than_images(faces):
    images = faces.images.float().view(12, 6, -1)
    mean = images.mean(1)
    within = (images - mean[:, None]).pow(2).mean()
    between = (mean - mean.mean(0)).pow(2).mean()
    assert between > 0.2 * within


def test_make_pairs_identity_disjoint(faces):
    train_ids, test_ids = split_identities(12, 0.5, seed=0)
    assert not set(train_ids.tolist()) & set(test_ids.tolist())
    pairs, issame = make_pairs(faces, 200, seed=1, identities=test_ids)
    labels = faces.labels[pairs]
    assert torch.equal(labels[:, 0] == labels[:, 1], issame)
    assert issame.sum() == 100
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert torch.isin(labels, test_ids).all()
    again, _ = make_pairs(faces, 200, seed=1, identities=test_ids)
    assert torch.equal(pairs, again)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_identities": 0}, "num_identities"),
        ({"num_identities": 2.5}, "num_identities"),
        ({"num_identities": True}, "num_identities"),
        ({"num_identities": -3}, "num_identities"),
        ({"images_per_identity": 1.0}, "images_per_identity"),
        ({"images_per_identity": 0}, "images_per_identity"),
        ({"size": (4, 4)}, "size"),
        ({"size": (32.0, 32)}, "size"),
        ({"size": 32}, "size"),
        ({"size": (32, 32, 3)}, "size"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"image_seed": -2}, "image_seed"),
        ({"pose": -0.1}, "pose"),
        ({"pose": float("nan")}, "pose"),
        ({"pose": True}, "pose"),
        ({"pose": 3.0}, "pose"),  # ±103° of yaw
        ({"warp": -1.0}, "warp"),
        ({"warp": "1"}, "warp"),
        ({"expression": float("inf")}, "expression"),
        ({"yaw_range": (10, 5)}, "yaw_range"),
        ({"yaw_range": (0, 95)}, "yaw_range"),
        ({"yaw_range": [(0, 10)] * 3}, "yaw_range"),  # images_per_identity is 2
        ({"yaw_range": 30}, "yaw_range"),
    ],
)
def test_bad_constructor_arguments(kwargs, name):
    args = {"num_identities": 2, "images_per_identity": 2, "size": (16, 16), **kwargs}
    with pytest.raises(ValueError, match=name):
        SyntheticFaces(**args)


def test_bad_pair_and_split_arguments():
    labels = torch.tensor([0, 0, 1, 1])
    for n_pairs in (-3, 0, 2.5, True):
        with pytest.raises(ValueError, match="n_pairs"):
            make_pairs(labels, n_pairs)
    with pytest.raises(ValueError, match="seed"):
        make_pairs(labels, 4, seed=-1)
    with pytest.raises(ValueError, match="dataset"):
        make_pairs(labels.float(), 4)
    with pytest.raises(ValueError, match="dataset"):
        make_pairs([0, 0, 1, 1], 4)
    with pytest.raises(ValueError, match="two identities"):
        make_pairs(torch.tensor([0, 0, 0]), 4)
    for num in (1, 2.5, True):
        with pytest.raises(ValueError, match="num_identities"):
            split_identities(num)
    for fraction in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="test_fraction"):
            split_identities(10, fraction)
    with pytest.raises(ValueError, match="seed"):
        split_identities(10, 0.5, seed=0.5)
