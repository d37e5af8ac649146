"""SyntheticFaces: determinism, ground-truth consistency, identity structure, pairs."""

import pytest
import torch

from faceaux.data.synthetic import (
    PARSING_CLASSES,
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
    assert sample["parsing"].shape == (64, 64)
    assert sample["attributes"].shape == (len(SYNTHETIC_ATTRIBUTES),)
    assert sample["warp"].shape == (3, 3)
    assert len(faces) == 72
    assert int(faces.parsing.max()) < len(PARSING_CLASSES)


def test_deterministic_per_seed():
    a = SyntheticFaces(3, 4, size=(32, 32), seed=5)
    b = SyntheticFaces(3, 4, size=(32, 32), seed=5)
    c = SyntheticFaces(3, 4, size=(32, 32), seed=6)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.parsing, b.parsing)
    assert torch.equal(a.landmarks, b.landmarks)
    assert not torch.equal(a.images, c.images)


def test_attributes_are_identity_stable_and_varied(faces):
    per_id = faces.attributes.view(12, 6, -1)
    assert torch.equal(per_id, per_id[:, :1].expand_as(per_id))
    big = SyntheticFaces(200, 1, size=(16, 16), seed=0).identity_attributes
    rate = big.mean(0)
    assert ((rate > 0.15) & (rate < 0.85)).all(), rate  # every attribute balanced-ish


def test_landmarks_fall_on_their_parsing_regions(faces):
    """Eye landmarks lie in/near eye pixels, mouth corners near lips, nose tip on the nose."""
    n = len(faces)
    lm = faces.landmarks.round().long().clamp(0, 63)
    labels = faces.parsing[torch.arange(n)[:, None], lm[..., 1], lm[..., 0]]
    # Eye centres (mean of the 6 points) are eye pixels of the right side.
    for points, label in ((range(36, 42), 4), (range(42, 48), 5)):
        centre = faces.landmarks[:, list(points)].mean(1).round().long().clamp(0, 63)
        got = faces.parsing[torch.arange(n), centre[:, 1], centre[:, 0]]
        assert (got == label).float().mean() > 0.8
    # The nose tip (30) is on the nose for most images; jaw points are at the skin border.
    assert (labels[:, 30] == 6).float().mean() > 0.8
    chin = labels[:, 8]
    assert ((chin == 1) | (chin == 0) | (chin == 10)).all()


def test_warp_maps_canonical_face_to_image():
    """With pose and warp off the matrix is the constant zoom about the centre."""
    flat = SyntheticFaces(2, 2, size=(32, 32), seed=0, pose=0.0, warp=0.0)
    first = flat.warps[0]
    assert torch.allclose(flat.warps, first.expand_as(flat.warps))
    assert torch.allclose(first[2], torch.tensor([0.0, 0.0, 1.0]))
    posed = SyntheticFaces(2, 2, size=(32, 32), seed=0)
    # Landmarks of posed and frontal faces of one identity relate through the warps (up to
    # nose parallax and expression): check the eye corners, which have neither.
    idx = [36, 39, 42, 45]
    frontal = flat.landmarks[0, idx]
    canonical = torch.cat([frontal, torch.ones(4, 1)], 1) @ torch.linalg.inv(first).T
    mapped = canonical @ posed.warps[0].T
    mapped = mapped[:, :2] / mapped[:, 2:]
    # Eye openness differs per image, so compare the corners (on the eye's horizontal axis).
    assert (mapped - posed.landmarks[0, idx]).abs().max() < 0.05


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_identities"):
        SyntheticFaces(0, 2)
    with pytest.raises(ValueError, match="size"):
        SyntheticFaces(2, 2, size=(4, 4))
    with pytest.raises(ValueError, match="two identities"):
        make_pairs(torch.tensor([0, 0, 0]), 4)
