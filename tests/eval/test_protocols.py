"""All-pairs, pose (CFP-style) and 10-fold protocols against slow loop references."""

import math

import numpy as np
import pytest
import torch

from faceaux.eval.protocols import (
    all_pairs_metrics,
    all_pairs_scores,
    pose_groups,
    pose_protocols,
    ten_fold_metrics,
)
from faceaux.eval.verification import FAR_LEVELS, verification_metrics


def clustered(n_ids, per_id, dim=16, noise=0.6, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    centres = torch.randn(n_ids, dim, generator=gen)
    embeddings = centres[labels] + noise * torch.randn(len(labels), dim, generator=gen)
    return embeddings.to(dtype), labels


def reference_pairs(embeddings, labels, rows=None, cols=None):
    """Every unordered pair {i, j}, i != j, with i in rows and j in cols (or vice versa)."""
    n = len(labels)
    rows = set(range(n)) if rows is None else {int(i) for i in rows}
    cols = set(range(n)) if cols is None else {int(i) for i in cols}
    unit = embeddings.double() / embeddings.double().norm(dim=1, keepdim=True)
    seen, out = set(), []
    for i in sorted(rows):
        for j in sorted(cols):
            key = (min(i, j), max(i, j))
            if i == j or key in seen:
                continue
            seen.add(key)
            out.append((i, j, float(unit[i] @ unit[j]), bool(labels[i] == labels[j])))
    return out


def reference_tar(scores, issame, far):
    """Slow TAR@FAR: try every threshold, keep the best TAR whose FAR is at most far."""
    scores, issame = np.asarray(scores), np.asarray(issame)
    n_neg = int((~issame).sum())
    if far * n_neg < 1:
        return math.nan
    best = 0.0
    for threshold in np.r_[np.unique(scores), np.inf]:
        accepted = scores >= threshold
        if (accepted & ~issame).sum() <= far * n_neg * (1 + 1e-9):
            best = max(best, float((accepted & issame).sum() / issame.sum()))
    return best


@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_all_pairs_scores_whole_set_matches_loop(device, dtype, chunk_size):
    embeddings, labels = clustered(5, 3, dtype=dtype)
    scores, issame, pairs = all_pairs_scores(
        embeddings.to(device), labels.to(device), chunk_size=chunk_size, return_pairs=True
    )
    ref = reference_pairs(embeddings, labels)
    assert scores.dtype == dtype
    assert scores.device.type == device.type
    assert pairs.tolist() == [[i, j] for i, j, _, _ in ref]
    assert issame.cpu().tolist() == [same for *_, same in ref]
    expected = torch.tensor([s for _, _, s, _ in ref], dtype=torch.float64)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(scores.cpu().double(), expected, atol=tol)
    assert len(ref) == 15 * 14 // 2


@pytest.mark.parametrize(
    ("rows", "cols"),
    [
        ([0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11]),  # disjoint groups
        ([0, 1, 2, 5, 6], [2, 3, 5, 9]),  # overlapping groups: each pair once
        ([3, 3, 1], None),  # repeated indices, one side the whole set
    ],
)
def test_all_pairs_scores_between_groups_matches_loop(rows, cols):
    embeddings, labels = clustered(4, 3)
    scores, issame, pairs = all_pairs_scores(
        embeddings,
        labels,
        torch.tensor(rows),
        None if cols is None else torch.tensor(cols),
        chunk_size=2,
        return_pairs=True,
    )
    ref = reference_pairs(embeddings, labels, rows, cols)
    got = {(min(i, j), max(i, j)) for i, j in pairs.tolist()}
    want = {(min(i, j), max(i, j)) for i, j, _, _ in ref}
    assert got == want
    assert len(got) == len(pairs)  # no pair twice
    lookup = {(min(i, j), max(i, j)): (s, t) for i, j, s, t in ref}
    for (i, j), score, same in zip(pairs.tolist(), scores.tolist(), issame.tolist(), strict=True):
        ref_score, ref_same = lookup[(min(i, j), max(i, j))]
        assert abs(score - ref_score) < 1e-5
        assert same == ref_same


def test_bool_masks_equal_indices():
    embeddings, labels = clustered(4, 3)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    a = all_pairs_scores(embeddings, labels, mask, ~mask)
    b = all_pairs_scores(embeddings, labels, torch.tensor([1, 4, 7]), (~mask).nonzero()[:, 0])
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_all_pairs_metrics_match_verification_and_loop_reference():
    embeddings, labels = clustered(30, 5, noise=0.9, seed=2)
    fars = (0.3, 0.1, 1e-2, 1e-3, 1e-4)
    metrics = all_pairs_metrics(embeddings, labels, fars=fars, chunk_size=7)
    ref = reference_pairs(embeddings, labels)
    scores = np.array([s for _, _, s, _ in ref], dtype=np.float32)
    issame = np.array([t for *_, t in ref])
    assert metrics["n_genuine"] == int(issame.sum()) == 30 * 10
    assert metrics["n_impostor"] == int((~issame).sum()) == 150 * 149 // 2 - 300
    for far in fars:
        got, want = metrics["tar_at_far"][far], reference_tar(scores, issame, far)
        assert (math.isnan(got) and math.isnan(want)) or abs(got - want) < 1e-12, far
    assert not math.isnan(metrics["tar_at_far"][1e-4])  # 10,875 impostors resolve 1e-4
    # The same rules as the LFW metrics on the same pairs (EER, AUC, TAR at FAR_LEVELS).
    lfw = verification_metrics(scores, issame)
    assert metrics["eer"] == pytest.approx(lfw["eer"], abs=1e-7)
    assert metrics["auc"] == pytest.approx(lfw["auc"], abs=1e-7)
    default = all_pairs_metrics(embeddings, labels)
    for far in FAR_LEVELS:
        a, b = default["tar_at_far"][far], lfw["tar_at_far"][far]
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-7
    fpr, tpr, thresholds = metrics["roc"]
    assert fpr[0] == 0
    assert tpr[-1] == 1
    assert thresholds[0] == np.inf


def test_far_is_resolved_only_with_enough_impostors():
    embeddings, labels = clustered(40, 4, noise=0.5)  # 160 images: 12,480 impostor pairs
    metrics = all_pairs_metrics(embeddings, labels, fars=(1e-3, 1e-4))
    assert metrics["n_impostor"] == 160 * 159 // 2 - 40 * 6
    assert not math.isnan(metrics["tar_at_far"][1e-4])
    assert metrics["tar_at_far"][1e-4] <= metrics["tar_at_far"][1e-3]
    fewer = all_pairs_metrics(embeddings[:100], labels[:100], fars=(1e-3, 1e-4))
    assert fewer["n_impostor"] == 4950 - 25 * 6  # below 10,000: 1e-4 is not measurable
    assert math.isnan(fewer["tar_at_far"][1e-4])
    assert not math.isnan(fewer["tar_at_far"][1e-3])


def test_pose_groups_thresholds():
    yaw = torch.tensor([0.0, 15.0, -15.0, 15.01, 59.9, 60.0, -90.0, 45.0])
    frontal, profile = pose_groups(yaw)
    assert frontal.tolist() == [0, 1, 2]
    assert profile.tolist() == [5, 6]
    frontal, profile = pose_groups(yaw, frontal_max=20.0, profile_min=40.0)
    assert frontal.tolist() == [0, 1, 2, 3]
    assert profile.tolist() == [4, 5, 6, 7]


def test_pose_protocols_pairs_and_difficulty():
    gen = torch.Generator().manual_seed(0)
    n_ids, per_id = 25, 6
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    yaw = torch.tensor([0.0, 8.0, -12.0, 30.0, 80.0, -85.0]).repeat(n_ids)
    centres = torch.randn(n_ids, 32, generator=gen)
    spread = torch.where(yaw.abs() > 60, 1.2, 0.5)[:, None]
    embeddings = centres[labels] + spread * torch.randn(len(labels), 32, generator=gen)
    result = pose_protocols(embeddings, labels, yaw, fars=(1e-1, 1e-2), n_pairs=400, seed=3)
    ff, fp = result["frontal_frontal"], result["frontal_profile"]
    frontal, profile = pose_groups(yaw)
    ref_ff = reference_pairs(embeddings, labels, frontal, frontal)
    ref_fp = reference_pairs(embeddings, labels, frontal, profile)
    assert ff["n_genuine"] == sum(t for *_, t in ref_ff) == n_ids * 3
    assert ff["n_impostor"] == len(ref_ff) - n_ids * 3
    assert fp["n_genuine"] == sum(t for *_, t in ref_fp) == n_ids * 3 * 2
    assert fp["n_impostor"] == len(ref_fp) - n_ids * 6
    assert ff["n_images"] == 75
    assert fp["n_images"] == 125
    assert fp["eer"] > ff["eer"]
    assert fp["accuracy"] < ff["accuracy"]
    assert 0 <= fp["accuracy_std"] < 0.2
    again = pose_protocols(embeddings, labels, yaw, fars=(1e-1, 1e-2), n_pairs=400, seed=3)
    assert again["frontal_profile"]["accuracy"] == fp["accuracy"]
    skipped = pose_protocols(embeddings, labels, yaw, n_pairs=None)
    assert "accuracy" not in skipped["frontal_profile"]


def test_ten_fold_draws_balanced_alternating_cross_pairs():
    embeddings, labels = clustered(10, 4, noise=0.8)
    rows, cols = torch.arange(0, 40, 2), torch.arange(1, 40, 2)
    result = ten_fold_metrics(embeddings, labels, n_pairs=60, seed=1, rows=rows, cols=cols)
    pairs = result["pairs"]
    assert result["n_pairs"] == 60 == len(pairs)
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    assert same[0::2].all()
    assert not same[1::2].any()
    assert (pairs[:, 0] % 2 == 0).all()
    assert (pairs[:, 1] % 2 == 1).all()
    assert len({tuple(p) for p in pairs.tolist()}) == 60  # without replacement
    scores = (embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]]).sum(1)
    scores = scores / (embeddings[pairs[:, 0]].norm(dim=1) * embeddings[pairs[:, 1]].norm(dim=1))
    assert result["accuracy"] == pytest.approx(verification_metrics(scores, same)["accuracy"])
    # Only 40 genuine cross pairs exist: fewer, still balanced.
    few = ten_fold_metrics(embeddings, labels, n_pairs=1000, rows=rows, cols=cols)
    assert few["n_pairs"] == 80


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda e, y: all_pairs_scores(e[0], y), "embeddings"),
        (lambda e, y: all_pairs_scores(e.long(), y), "embeddings"),
        (lambda e, y: all_pairs_scores(e, y.float()), "labels"),
        (lambda e, y: all_pairs_scores(e, y[:-1]), "labels"),
        (lambda e, y: all_pairs_scores(e * math.nan, y), "embeddings"),
        (lambda e, y: all_pairs_scores(e, y, rows=torch.tensor([0, 99])), "rows"),
        (lambda e, y: all_pairs_scores(e, y, cols=torch.ones(3, dtype=torch.bool)), "cols"),
        (lambda e, y: all_pairs_scores(e, y, chunk_size=0), "chunk_size"),
        (lambda e, y: all_pairs_metrics(e, y, fars=()), "fars"),
        (lambda e, y: all_pairs_metrics(e, y, fars=(2.0,)), "fars"),
        (lambda e, y: all_pairs_metrics(e, torch.zeros_like(y)), "labels"),  # no impostors
        (lambda e, y: all_pairs_metrics(e, y, rows=torch.tensor([0]), cols=[0]), "rows"),
        (lambda e, y: ten_fold_metrics(e, y, n_pairs=1), "n_pairs"),
        (lambda e, y: ten_fold_metrics(e, y, seed=-1), "seed"),
        (lambda e, y: pose_groups(torch.zeros(3), 30.0, 20.0), "profile_min"),
        (lambda e, y: pose_groups(torch.zeros(3), -1.0), "frontal_max"),
        (lambda e, y: pose_groups(torch.zeros(3, dtype=torch.long)), "yaw"),
        (lambda e, y: pose_protocols(e, y, torch.zeros(5)), "yaw"),
    ],
)
def test_bad_input(call, name):
    embeddings, labels = clustered(3, 4)
    with pytest.raises(ValueError, match=name):
        call(embeddings, labels)
