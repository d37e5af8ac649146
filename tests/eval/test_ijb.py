"""evaluate_ijb against a straightforward loop implementation of the IJB protocol.

The reference follows InsightFace's ``eval_ijbc.py`` step by step, one image / template / pair /
probe at a time: a least-squares similarity solved with ``numpy.linalg.lstsq`` and an explicit
bilinear sampler with zero padding (what ``cv2.warpAffine`` does), the model run per image,
media means and template sums in Python loops, scikit-learn's ``roc_curve`` with the
nearest-FPR reading of the TAR, and a per-probe loop for 1:N.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from eval.ijb_miniature import make_ijbc_folder
from PIL import Image
from torch import nn

from faceaux import ARCFACE_TEMPLATE_112
from faceaux.eval import evaluate_ijb, read_ijb_meta
from faceaux.eval.ijb import IJB_FAR_LEVELS, tar_at_far_insightface, template_features

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="reference ROC: scikit-learn")


@pytest.fixture(scope="module")
def ijbc(tmp_path_factory) -> Path:
    return make_ijbc_folder(tmp_path_factory.mktemp("ijb"))


class TinyEmbedder(nn.Module):
    """A fixed random network, enough to give every face its own embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(128, 16),
        )
        self.pretrained_cfg = {"input_size": (3, 112, 112), "mean": (0.5,) * 3, "std": (0.5,) * 3}

    def forward(self, x):
        return self.net(x)


def reference_align(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] → (112, 112, 3): lstsq similarity, bilinear, zeros outside."""
    rows, targets = [], []
    for (x, y), (u, v) in zip(points, ARCFACE_TEMPLATE_112.numpy(), strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        targets += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]
    inverse = np.linalg.inv(np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]]))
    oy, ox = np.mgrid[0:112, 0:112]
    sx, sy, _ = np.einsum("ij,jhw->ihw", inverse, np.stack([ox, oy, np.ones_like(ox)]))
    height, width = image.shape[:2]
    out = np.zeros((112, 112, 3))
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    for dy in (0, 1):  # the four bilinear taps; a tap outside the image reads 0
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            weight = (1 - np.abs(sx - xi)) * (1 - np.abs(sy - yi)) * inside
            out += weight[..., None] * image[yi.clip(0, height - 1), xi.clip(0, width - 1)]
    return out


def reference_protocol(model, root: Path, flip=True, detector=True, keep_norm=True) -> dict:
    meta_dir = root / "meta"
    lines = (meta_dir / "ijbc_name_5pts_score.txt").read_text().split("\n")
    records = [line.split(" ") for line in lines if line]
    features = []
    for record in records:
        image = np.asarray(Image.open(root / "loose_crop" / record[0]).convert("RGB")) / 255
        points = np.array([float(v) for v in record[1:11]]).reshape(5, 2)
        aligned = torch.tensor(reference_align(image, points), dtype=torch.float32)
        x = ((aligned.permute(2, 0, 1) - 0.5) / 0.5)[None]
        with torch.no_grad():
            feature = model(x)[0].double()
            if flip:
                feature = feature + model(x.flip(-1))[0].double()
        feature = feature.numpy()
        if not keep_norm:
            feature = feature / np.linalg.norm(feature)
        if detector:
            feature = feature * float(record[11])
        features.append(feature)
    tid = [line.split() for line in (meta_dir / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    templates = np.array([int(r[1]) for r in tid])
    medias = np.array([int(r[2]) for r in tid])
    pooled = {}
    for template in sorted(set(templates.tolist())):
        total = 0
        for media in sorted(set(medias[templates == template].tolist())):
            members = [
                i for i in range(len(features)) if templates[i] == template and medias[i] == media
            ]
            total = total + np.mean([features[i] for i in members], axis=0)
        pooled[template] = total / np.linalg.norm(total)
    pairs = [
        line.split()
        for line in (meta_dir / "ijbc_template_pair_label.txt").read_text().splitlines()
    ]
    scores = np.array([pooled[int(p[0])] @ pooled[int(p[1])] for p in pairs])
    labels = np.array([int(p[2]) for p in pairs])
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    negatives = int((labels == 0).sum())
    tar = {
        far: math.nan if far * negatives < 1 else float(tpr[np.argmin(abs(fpr - far))])
        for far in IJB_FAR_LEVELS
    }
    ranks = {1: 0, 5: 0, 10: 0}
    mated_total, tpirs = 0, {0.01: [], 0.1: []}
    probes = reference_csv(meta_dir / "ijbc_1N_probe_mixed.csv")
    for gallery_name in ("G1", "G2"):
        gallery = reference_csv(meta_dir / f"ijbc_1N_gallery_{gallery_name}.csv")
        gallery_ids = sorted(gallery)
        mated_scores, mated_rank1, non_mated_best = [], [], []
        for probe, subject in sorted(probes.items()):
            similarity = np.array([pooled[probe] @ pooled[g] for g in gallery_ids])
            subjects = [gallery[g] for g in gallery_ids]
            if subject in subjects:
                order = np.argsort(-similarity, kind="stable")
                position = [subjects[i] for i in order].index(subject) + 1
                mated_total += 1
                for k in ranks:
                    ranks[k] += position <= k
                mated_scores.append(similarity[subjects.index(subject)])
                mated_rank1.append(position == 1)
            else:
                non_mated_best.append(similarity.max())
        non_mated_best = sorted(non_mated_best, reverse=True)
        for fpir in tpirs:
            allowed = math.floor(fpir * len(non_mated_best))
            if allowed < 1:
                tpirs[fpir].append(math.nan)
                continue
            threshold = non_mated_best[allowed] if allowed < len(non_mated_best) else -np.inf
            found = [r and s > threshold for r, s in zip(mated_rank1, mated_scores, strict=True)]
            tpirs[fpir].append(sum(found) / len(found))
    return {
        "scores": scores,
        "tar_at_far": tar,
        "rank": {k: v / mated_total for k, v in ranks.items()},
        "tpir_at_fpir": {f: float(np.mean(v)) for f, v in tpirs.items()},
    }


def reference_csv(path: Path) -> dict[int, int]:
    rows = path.read_text().splitlines()[1:]
    return {int(r.split(",")[0]): int(r.split(",")[1]) for r in rows}


def assert_same(result: dict, reference: dict) -> None:
    np.testing.assert_allclose(result["scores"], reference["scores"], atol=2e-4)
    assert result["tar_at_far"].keys() == reference["tar_at_far"].keys()
    for far, tar in reference["tar_at_far"].items():
        np.testing.assert_equal(result["tar_at_far"][far], tar)


def test_evaluate_ijb_matches_the_reference_protocol(ijbc):
    model = TinyEmbedder().eval()
    result = evaluate_ijb(model, ijbc.parent, "IJBC", batch_size=16, num_workers=0)
    reference = reference_protocol(model, ijbc)
    assert_same(result, reference)
    assert result["num_images"] == 120
    assert result["num_templates"] == 40
    assert result["num_pairs"] == 20 * 20
    assert not math.isnan(result["tar_at_far"][1e-2])  # 380 impostors resolve 1e-2
    ident = result["identification"]
    assert ident["rank"] == reference["rank"]
    assert ident["tpir_at_fpir"] == pytest.approx(reference["tpir_at_fpir"], nan_ok=True)
    assert not math.isnan(ident["tpir_at_fpir"][0.1])
    fpr, tpr, _ = result["roc"]
    assert fpr[0] == tpr[0] == 0
    assert 0.0 <= result["auc"] <= 1.0


def test_evaluate_ijb_options_match_the_reference(ijbc):
    model = TinyEmbedder().eval()
    result = evaluate_ijb(
        model, ijbc, flip=False, use_detector_score=False, use_norm_score=False,
        batch_size=32, num_workers=0,
    )  # fmt: skip
    reference = reference_protocol(model, ijbc, flip=False, detector=False, keep_norm=False)
    assert_same(result, reference)


def test_tar_reading_matches_scikit_learn_roc_and_nearest_point():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 120))
        scores = np.round(rng.random(n), int(rng.integers(1, 3)))  # many ties
        issame = rng.random(n) < 0.4
        if issame.all() or not issame.any():
            continue
        fpr, tpr, _ = sklearn_metrics.roc_curve(issame, scores)
        fpr, tpr = np.flipud(fpr), np.flipud(tpr)
        got = tar_at_far_insightface(scores, issame, fars=(0.05, 0.1, 0.3))
        for far, tar in got.items():
            if far * (~issame).sum() >= 1:
                assert tar == tpr[np.argmin(abs(fpr - far))]
            else:
                assert math.isnan(tar)


def test_template_features_weighting_and_media_pooling():
    features = np.array([[2.0, 0.0], [0.0, 4.0], [0.0, 1.0]])
    # one media of two frames averages them; a second media adds on top
    _, pooled = template_features(features, np.array([1, 1, 1]), np.array([5, 5, 6]))
    expected = np.array([1.0, 2.0]) + np.array([0.0, 1.0])
    np.testing.assert_allclose(pooled[0], expected / np.linalg.norm(expected))


def test_meta_errors_name_the_file(ijbc, tmp_path):
    with pytest.raises(ValueError, match="root: expected a folder holding meta/"):
        read_ijb_meta(tmp_path)
    (tmp_path / "meta").mkdir()
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score\.txt' is missing"):
        read_ijb_meta(tmp_path)
    with pytest.raises(ValueError, match="dataset: expected 'IJBC' or 'IJBB'"):
        read_ijb_meta(ijbc, "IJBA")
    meta = read_ijb_meta(ijbc)
    assert meta["landmarks"].shape == (120, 5, 2)
    assert [g[0] for g in meta["galleries"]] == ["G1", "G2"]
