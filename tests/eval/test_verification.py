"""verification_metrics vs scikit-learn and a brute-force reference; extract_embeddings."""

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from faceaux.eval.verification import (
    FAR_LEVELS,
    extract_embeddings,
    pair_scores,
    roc_curve,
    verification_metrics,
)


def _random_pairs(seed, n=600, ties=False):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    scores = rng.normal(size=n) + 1.2 * issame
    if ties:
        scores = np.round(scores, 1)
    return scores, issame


def _reference_accuracy(scores, issame, n_folds):
    """Loop over folds and over every candidate threshold, obviously correct."""
    folds = np.array_split(np.arange(len(scores)), n_folds)
    accs, thrs = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(len(scores)), test)
        uniq = np.unique(scores[train])
        candidates = [uniq[0] - 1.0] + [(a + b) / 2 for a, b in itertools.pairwise(uniq)]
        candidates.append(uniq[-1] + 1.0)
        best, best_acc = None, -1.0
        for thr in candidates:
            acc = np.mean((scores[train] >= thr) == issame[train])
            if acc > best_acc:
                best, best_acc = thr, acc
        accs.append(np.mean((scores[test] >= best) == issame[test]))
        thrs.append(best)
    return np.mean(accs), np.std(accs)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_auc_match_sklearn(seed, ties):
    scores, issame = _random_pairs(seed, ties=ties)
    fpr, tpr, thr = roc_curve(scores, issame)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-6)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-6)
    np.testing.assert_allclose(thr[1:], sk_thr[1:], atol=1e-6)
    assert thr[0] == np.inf
    m = verification_metrics(torch.from_numpy(scores), torch.from_numpy(issame))
    assert abs(m["auc"] - roc_auc_score(issame, scores)) < 1e-6
    assert set(m) == {"accuracy", "accuracy_std", "threshold", "eer", "auc", "tar_at_far", "roc"}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 3])
def test_tenfold_accuracy_matches_brute_force(seed, ties):
    scores, issame = _random_pairs(seed, n=203, ties=ties)
    m = verification_metrics(scores, issame, n_folds=10)
    acc, std = _reference_accuracy(scores, issame, 10)
    assert abs(m["accuracy"] - acc) < 1e-12
    assert abs(m["accuracy_std"] - std) < 1e-12
    assert 0.5 < m["accuracy"] < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_and_eer_match_sklearn_roc(seed):
    scores, issame = _random_pairs(seed, n=4000)
    m = verification_metrics(scores, issame)
    sk_fpr, sk_tpr, _ = sk_roc_curve(issame, scores)
    n_neg = int((~issame).sum())
    for far in FAR_LEVELS:
        if far * n_neg < 1:
            assert math.isnan(m["tar_at_far"][far])
        else:
            assert abs(m["tar_at_far"][far] - sk_tpr[sk_fpr <= far].max()) < 1e-6
    assert math.isnan(m["tar_at_far"][1e-4])  # ~2000 impostors cannot resolve 1e-4
    # EER by brute force: walk every ROC segment, find where fpr + tpr = 1.
    ref = None
    for i in range(1, len(sk_fpr)):
        f0, f1, t0, t1 = sk_fpr[i - 1], sk_fpr[i], sk_tpr[i - 1], sk_tpr[i]
        g0, g1 = (1 - t0) - f0, (1 - t1) - f1
        if g0 > 0 >= g1:
            ref = f0 + g0 / (g0 - g1) * (f1 - f0)
            break
    assert abs(m["eer"] - ref) < 1e-6


def test_perfect_separation_and_bad_input():
    m = verification_metrics([0.9, 0.8, 0.1, 0.0], [1, 1, 0, 0], n_folds=2)
    assert m["accuracy"] == 1.0
    assert m["eer"] == 0.0
    assert m["auc"] == 1.0
    assert 0.1 < m["threshold"] < 0.8
    with pytest.raises(ValueError, match="issame"):
        verification_metrics([0.1, 0.2], [True, True], n_folds=2)
    with pytest.raises(ValueError, match="issame"):
        verification_metrics([0.1, 0.2, 0.3], [True, False], n_folds=2)
    with pytest.raises(ValueError, match="n_folds"):
        verification_metrics([0.1, 0.2], [True, False], n_folds=10)
    with pytest.raises(ValueError, match="scores"):
        verification_metrics([0.1, float("nan")], [True, False], n_folds=2)


def test_extract_embeddings_flip_fusion_and_normalisation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 6))
    model.train()
    images = torch.rand(7, 3, 4, 5)
    batches = [{"image": images[:4], "label": torch.zeros(4)}, {"image": images[4:]}]
    out = extract_embeddings(model, batches, flip=True, progress=False)
    with torch.no_grad():
        ref = model(images) + model(images.flip(-1))
    torch.testing.assert_close(out, ref / ref.norm(dim=1, keepdim=True))
    assert model.training  # mode restored
    plain = extract_embeddings(model, [images], flip=False, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(plain, torch.nn.functional.normalize(model(images), dim=1))
    # A custom forward sees the whole batch.
    calls = extract_embeddings(
        model, batches, flip=False, progress=False, forward=lambda m, b: m(b["image"]) * 2
    )
    torch.testing.assert_close(calls, torch.nn.functional.normalize(model(images), dim=1))


def test_extract_embeddings_concat_fusion():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 6))
    images = torch.rand(5, 3, 4, 5)
    out = extract_embeddings(model, [images], flip=True, progress=False, fusion="concat")
    with torch.no_grad():
        ref = torch.cat([model(images), model(images.flip(-1))], dim=1)
    assert out.shape == (5, 12)
    torch.testing.assert_close(out, torch.nn.functional.normalize(ref, dim=1))
    with pytest.raises(ValueError, match="fusion: expected 'sum' or 'concat'"):
        extract_embeddings(model, [images], progress=False, fusion="mean")


def test_pair_scores():
    e = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    pairs = torch.tensor([[0, 1], [2, 2], [3, 4]])
    ref = torch.stack([e[a] @ e[b] for a, b in pairs.tolist()])
    torch.testing.assert_close(pair_scores(e, pairs), ref)


# --- robustness (issue 13) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "issame", "pattern"),
    [
        ([], [], r"^scores: expected at least one pair \(N ≥ 1\), received N = 0"),
        ([0.1, 0.9], ["False", "True"], r"^issame: expected booleans \(or 0/1\) per pair"),
        ([0.1, 0.9], [0, 2], r"^issame: expected booleans \(or 0/1\) per pair"),
        ([0.1, 0.9], [0.0, 1.0], r"^issame: expected booleans"),
        (["a", "b"], [False, True], r"^scores: expected real numbers per pair"),
        ([0.1, math.nan], [False, True], r"^scores: expected finite values"),
    ],
)
def test_bad_pairs_raise_value_error_naming_the_argument(scores, issame, pattern):
    with pytest.raises(ValueError, match=pattern):
        verification_metrics(scores, issame, n_folds=2)
    with pytest.raises(ValueError, match=pattern):
        roc_curve(scores, issame)


def test_low_precision_scores_are_accepted():
    rng = np.random.default_rng(0)
    issame = rng.random(200) < 0.5
    scores = torch.from_numpy(rng.random(200) + issame).bfloat16()
    got = verification_metrics(scores, torch.from_numpy(issame))
    expected = verification_metrics(scores.double().numpy(), issame)
    assert got["accuracy"] == expected["accuracy"]
    assert got["auc"] == expected["auc"]
    assert verification_metrics(scores.half(), issame.astype(int))["auc"] > 0.5


def test_n_folds_must_be_an_int():
    for n_folds in (2.5, True, 1):
        with pytest.raises(ValueError, match=r"^n_folds: expected an int"):
            verification_metrics([0.1, 0.2, 0.8, 0.9], [False, False, True, True], n_folds)


def test_pair_scores_checks_indices_and_values():
    embeddings = torch.eye(3)
    with pytest.raises(ValueError, match=r"^pairs: expected row indices in \[0, 3\)"):
        pair_scores(embeddings, torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match=r"^pairs: expected integer row indices"):
        pair_scores(embeddings, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"^embeddings: expected finite values"):
        pair_scores(torch.full((2, 2), math.nan), torch.tensor([[0, 1]]))


def test_extract_embeddings_names_a_model_with_bad_output():
    batches = [torch.rand(2, 3, 4, 4)]
    with pytest.raises(ValueError, match=r"^model: expected floating embeddings \(B, D\)"):
        extract_embeddings(torch.nn.Flatten(0), batches, progress=False)
    nan_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    with torch.no_grad():
        nan_model[1].bias.fill_(math.nan)
    with pytest.raises(ValueError, match=r"^model: expected finite values"):
        extract_embeddings(nan_model, batches, progress=False)
