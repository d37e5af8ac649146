"""Verification protocols on a labelled test set: all cross pairs, pose (CFP-style), 10-fold.

Sampling a few thousand pairs (LFW's 6,000, CFP's 7,000) leaves TAR at FAR = 1e-3 resting on a
handful of impostor pairs and 1e-4 unmeasurable. :func:`all_pairs_metrics` instead scores
*every* unordered pair of a set of embeddings (or every pair between two groups), chunked so
the ``N × N`` score matrix is never held at once: ``N`` test images give ``N (N − 1) / 2``
pairs, e.g. 2,000 images of 200 identities give 1,999,000 pairs, 18,000 of them genuine, which
resolves FAR = 1e-4 with 198 impostor pairs above the threshold.

:func:`pose_protocols` follows CFP (Sengupta et al., "Frontal to Profile Face Verification in
the Wild", WACV 2016): *frontal–frontal* (both images frontal) and *frontal–profile* (one image
frontal, the other in profile), with frontal and profile defined from each image's yaw
(:func:`pose_groups`). :func:`ten_fold_metrics` keeps the LFW-style 10-fold accuracy on
balanced pairs drawn from the same cross pairs.

Scores are cosine similarities; ROC, EER, AUC and TAR@FAR come from
:func:`faceaux.eval.verification.roc_curve` with :func:`~faceaux.eval.verification_metrics`'s
rules (TAR at FAR: the highest TAR among thresholds whose FAR is at most the target; ``nan``
where fewer than one impostor pair is allowed).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from faceaux._checks import check_positive_int, check_tensor
from faceaux.eval.verification import FAR_LEVELS, _trapezoid, roc_curve, verification_metrics

__all__ = [
    "CFP_FRONTAL_MAX_YAW",
    "CFP_PROFILE_MIN_YAW",
    "all_pairs_metrics",
    "all_pairs_scores",
    "pose_groups",
    "pose_protocols",
    "ten_fold_metrics",
]

#: Images with ``|yaw| ≤ 15°`` are *frontal* in :func:`pose_groups` (CFP's frontal images are
#: near-frontal, hand-picked; 15° is the usual bound of "frontal" in pose-binned evaluations).
CFP_FRONTAL_MAX_YAW: float = 15.0
#: Images with ``|yaw| ≥ 60°`` are *profile* in :func:`pose_groups` (CFP's profiles are
#: roughly 70–90°; 60° keeps half-profiles out of both groups).
CFP_PROFILE_MIN_YAW: float = 60.0

# Score blocks hold about this many floats (rows × columns), 64 MB in float32.
_BLOCK = 1 << 24


def _check_set(embeddings: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor(embeddings, "embeddings", "(N, D)", floating=True)
    check_tensor(labels, "labels", "(N,)")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor (N,), received dtype {labels.dtype}")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels: expected shape ({embeddings.shape[0]},) (one per embedding), received "
            f"{tuple(labels.shape)}"
        )
    if embeddings.shape[0] < 2:
        raise ValueError(f"embeddings: expected at least 2 rows, received {embeddings.shape[0]}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings: expected finite values, received NaN or inf")
    return embeddings, labels.to(device=embeddings.device)


def _as_members(group: Any, name: str, n: int, device: torch.device) -> torch.Tensor:
    """A group given as indices ``(K,)`` or a bool mask ``(N,)`` → sorted unique indices."""
    if group is None:
        return torch.arange(n, device=device)
    group = torch.as_tensor(group, device=device)
    if group.ndim != 1:
        raise ValueError(f"{name}: expected indices (K,) or a bool mask (N,), shape {group.shape}")
    if group.dtype == torch.bool:
        if group.shape[0] != n:
            raise ValueError(
                f"{name}: expected a bool mask of shape ({n},), received {tuple(group.shape)}"
            )
        return group.nonzero().squeeze(1)
    if group.is_floating_point():
        raise ValueError(f"{name}: expected integer indices or a bool mask, dtype {group.dtype}")
    if group.numel() and (int(group.min()) < 0 or int(group.max()) >= n):
        raise ValueError(
            f"{name}: expected indices in [0, {n}), received [{int(group.min())}, "
            f"{int(group.max())}]"
        )
    return torch.unique(group.long())


def all_pairs_scores(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    chunk_size: int | None = None,
    return_pairs: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Cosine score and ground truth of every unordered pair, within a set or between groups.

    With ``rows`` and ``cols`` both ``None``: every pair ``{i, j}``, ``i < j``, of the set (the
    upper triangle of the score matrix). Otherwise: every pair with one image in ``rows`` and
    the other in ``cols`` (all of the set where ``None``), each unordered pair once and no image
    with itself, so overlapping groups are handled. Pairs come in row-major order of (row
    image, column image), rows and columns sorted. The score matrix is computed in blocks of
    ``chunk_size`` rows (default: as many as fit 2²⁴ scores), so memory stays at one block plus
    the output.

    Args:
        embeddings: ``(N, D)`` float; L2-normalised here, so scores are cosines.
        labels: ``(N,)`` integer identity labels; a pair is genuine when its labels agree.
        rows: first group, indices ``(K,)`` or a bool mask ``(N,)``; ``None`` for all.
        cols: second group, the same forms.
        chunk_size: rows of the score matrix per block (an int ≥ 1), or ``None`` for automatic.
        return_pairs: also return the pairs' indices.

    Returns:
        ``scores (P,)`` in the embeddings' dtype, ``issame (P,)`` bool, and with
        ``return_pairs`` the ``pairs (P, 2)`` int64 (row image, column image).

    Shape:
        - embeddings: ``(N, D)``; labels: ``(N,)``
        - scores, issame: ``(P,)``, ``P = N (N − 1) / 2`` for the whole set; pairs ``(P, 2)``

    Examples:
        >>> e = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
        >>> scores, issame, pairs = all_pairs_scores(e, torch.tensor([0, 0, 1]), return_pairs=True)
        >>> pairs.tolist(), issame.tolist()
        ([[0, 1], [0, 2], [1, 2]], [True, False, False])
        >>> [round(s, 3) for s in scores.tolist()]
        [0.995, 0.0, 0.1]
    """
    embeddings, labels = _check_set(embeddings, labels)
    n = embeddings.shape[0]
    device = embeddings.device
    row_idx = _as_members(rows, "rows", n, device)
    col_idx = _as_members(cols, "cols", n, device)
    if chunk_size is None:
        chunk_size = max(1, _BLOCK // max(1, col_idx.numel()))
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    unit = F.normalize(embeddings, dim=1)
    in_rows = torch.zeros(n, dtype=torch.bool, device=device)
    in_cols = torch.zeros(n, dtype=torch.bool, device=device)
    in_rows[row_idx] = True
    in_cols[col_idx] = True
    col_unit, col_labels, col_in_rows = unit[col_idx], labels[col_idx], in_rows[col_idx]
    scores, issame, pairs = [], [], []
    for start in range(0, row_idx.numel(), chunk_size):
        r = row_idx[start : start + chunk_size]
        block = unit[r] @ col_unit.T  # (b, M)
        # Keep (r, c) unless r == c, or its mirror (c, r) is also a (row, col) pair and c < r.
        mirror = in_cols[r][:, None] & col_in_rows[None, :]
        keep = (r[:, None] != col_idx[None, :]) & ~(mirror & (col_idx[None, :] < r[:, None]))
        scores.append(block[keep])
        issame.append((labels[r][:, None] == col_labels[None, :])[keep])
        if return_pairs:
            i, j = keep.nonzero(as_tuple=True)
            pairs.append(torch.stack([r[i], col_idx[j]], 1))
    out = (
        torch.cat(scores) if scores else unit.new_zeros(0),
        torch.cat(issame) if issame else torch.zeros(0, dtype=torch.bool, device=device),
    )
    if return_pairs:
        pairs_out = torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.long)
        return (*out, pairs_out)
    return out


def _check_fars(fars: Any) -> tuple[float, ...]:
    if not isinstance(fars, Sequence) or not fars:
        raise ValueError(f"fars: expected a non-empty sequence of rates in (0, 1], got {fars!r}")
    for far in fars:
        if isinstance(far, bool) or not isinstance(far, numbers.Real) or not 0 < far <= 1:
            raise ValueError(f"fars: expected rates in (0, 1], received {far!r}")
    return tuple(float(f) for f in fars)


def _tar_at_far(
    fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float], n_impostor: int
) -> dict[float, float]:
    """Highest TAR with FAR ≤ target; ``nan`` below one impostor (verification_metrics' rule)."""
    out = {}
    for far in fars:
        if far * n_impostor < 1:
            out[far] = math.nan
        else:
            out[far] = float(tpr[fpr <= far * (1 + 1e-9)].max())
    return out


def _equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where the linearly interpolated ROC crosses ``fpr = 1 − tpr`` (verification_metrics')."""
    fnr = 1.0 - tpr
    i = int(np.argmax(fnr <= fpr))
    gap_prev, gap_here = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = gap_prev / (gap_prev - gap_here) if gap_prev != gap_here else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def all_pairs_metrics(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    fars: Sequence[float] = FAR_LEVELS,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Verification on all cross pairs: TAR at each FAR, the ROC, EER, AUC and the pair counts.

    The pairs are those of :func:`all_pairs_scores` (the whole set, or one image in ``rows`` and
    the other in ``cols``). TAR at FAR is the highest true-accept rate among thresholds whose
    false-accept rate is at most FAR, ``nan`` where ``FAR · n_impostor < 1`` (not measurable);
    EER and AUC as :func:`~faceaux.eval.verification_metrics`. The ROC holds every distinct
    score as a threshold, so memory and time grow with the number of pairs: measured on one CPU
    thread, 4,000 images (8 M pairs) peak at about 0.85 GB and take about 10 s, most of it
    sorting the scores for the ROC.

    Args:
        embeddings: ``(N, D)`` float.
        labels: ``(N,)`` integer identity labels.
        fars: the false-accept rates to report, each in (0, 1].
        rows: first group, indices ``(K,)`` or a bool mask ``(N,)``; ``None`` for all.
        cols: second group, the same forms.
        chunk_size: rows of the score matrix per block, or ``None`` for automatic.

    Returns:
        dict with ``"tar_at_far"`` (dict FAR → TAR), ``"roc"`` (``fpr``, ``tpr``,
        ``thresholds`` numpy arrays, :func:`~faceaux.eval.verification.roc_curve`), ``"eer"``,
        ``"auc"``, ``"n_genuine"`` and ``"n_impostor"`` (ints).

    Shape:
        - embeddings: ``(N, D)``; labels: ``(N,)``
        - roc: three ``(R,)`` arrays; the rest are Python numbers

    Examples:
        >>> labels = torch.arange(50).repeat_interleave(4)  # 50 identities, 4 images each
        >>> embeddings = torch.nn.functional.one_hot(labels).float() + 0.1 * torch.randn(200, 50)
        >>> m = all_pairs_metrics(embeddings, labels, fars=(1e-2, 1e-3, 1e-4))
        >>> m["n_genuine"], m["n_impostor"]
        (300, 19600)
        >>> m["tar_at_far"][1e-3] > 0.9, m["eer"] < 0.05
        (True, True)
    """
    fars = _check_fars(fars)
    scores, issame = all_pairs_scores(embeddings, labels, rows, cols, chunk_size)
    if scores.numel() == 0:
        raise ValueError(
            "rows, cols: the groups form no pair (each needs an image the other lacks)"
        )
    n_genuine = int(issame.sum())
    n_impostor = int(issame.numel() - n_genuine)
    if n_genuine == 0 or n_impostor == 0:
        raise ValueError(
            f"labels: expected genuine and impostor pairs, received {n_genuine} genuine and "
            f"{n_impostor} impostor"
        )
    fpr, tpr, thresholds = roc_curve(scores.cpu(), issame.cpu())
    return {
        "tar_at_far": _tar_at_far(fpr, tpr, fars, n_impostor),
        "roc": (fpr, tpr, thresholds),
        "eer": _equal_error_rate(fpr, tpr),
        "auc": float(_trapezoid(tpr, fpr)),
        "n_genuine": n_genuine,
        "n_impostor": n_impostor,
    }


def ten_fold_metrics(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    n_pairs: int = 6000,
    seed: int = 0,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    n_folds: int = 10,
) -> dict[str, Any]:
    """LFW-style accuracy: balanced pairs drawn from the cross pairs, ``n_folds``-fold.

    Draws ``n_pairs / 2`` genuine and ``n_pairs / 2`` impostor pairs at random, without
    replacement, from the pairs of :func:`all_pairs_scores` (fewer, balanced, if a kind has
    fewer pairs), alternates them genuine/impostor so every fold is balanced, and runs
    :func:`~faceaux.eval.verification_metrics` (the LFW 10-fold protocol). Unlike LFW's folds,
    these are not identity-disjoint.

    Args:
        embeddings: ``(N, D)`` float.
        labels: ``(N,)`` integer identity labels.
        n_pairs: pairs to draw (an int ≥ 2; LFW: 6000, CFP: 7000).
        seed: seed of the draw (int ≥ 0).
        rows: first group, indices ``(K,)`` or a bool mask ``(N,)``; ``None`` for all.
        cols: second group, the same forms.
        n_folds: folds (2 ≤ n_folds ≤ pairs drawn).

    Returns:
        :func:`~faceaux.eval.verification_metrics`'s dict, plus ``"pairs"`` ``(P, 2)`` int64
        (the pairs used, in fold order) and ``"n_pairs"`` (their number).

    Shape:
        - embeddings: ``(N, D)``; labels: ``(N,)``; pairs: ``(P, 2)``

    Examples:
        >>> labels = torch.arange(20).repeat_interleave(5)
        >>> embeddings = torch.nn.functional.one_hot(labels).float() + 0.1 * torch.randn(100, 20)
        >>> m = ten_fold_metrics(embeddings, labels, n_pairs=200)
        >>> m["n_pairs"], m["accuracy"] > 0.95
        (200, True)
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 2:
        raise ValueError(f"n_pairs: expected an int ≥ 2, received {n_pairs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int ≥ 0, received {seed!r}")
    scores, issame, pairs = all_pairs_scores(embeddings, labels, rows, cols, return_pairs=True)
    genuine, impostor = issame.nonzero().squeeze(1), (~issame).nonzero().squeeze(1)
    per_kind = min(n_pairs // 2, genuine.numel(), impostor.numel())
    if per_kind == 0:
        raise ValueError(
            f"labels: expected genuine and impostor pairs, received {genuine.numel()} genuine "
            f"and {impostor.numel()} impostor"
        )
    gen = torch.Generator().manual_seed(seed)
    pick_g = genuine.cpu()[torch.randperm(genuine.numel(), generator=gen)[:per_kind]]
    pick_i = impostor.cpu()[torch.randperm(impostor.numel(), generator=gen)[:per_kind]]
    chosen = torch.stack([pick_g, pick_i], 1).reshape(-1)  # genuine, impostor, genuine, ...
    result = verification_metrics(scores.cpu()[chosen], issame.cpu()[chosen], n_folds=n_folds)
    result["pairs"] = pairs.cpu()[chosen]
    result["n_pairs"] = int(chosen.numel())
    return result


def pose_groups(
    yaw: torch.Tensor,
    frontal_max: float = CFP_FRONTAL_MAX_YAW,
    profile_min: float = CFP_PROFILE_MIN_YAW,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the frontal (``|yaw| ≤ frontal_max``) and profile (``|yaw| ≥ profile_min``)
    images; images in between belong to neither.

    Args:
        yaw: ``(N,)`` yaw per image in degrees (e.g. ``SyntheticFaces.poses[:, 0]``).
        frontal_max: largest ``|yaw|`` of a frontal image, degrees (default 15).
        profile_min: smallest ``|yaw|`` of a profile image, degrees (default 60), above
            ``frontal_max``.

    Returns:
        ``frontal (F,)`` and ``profile (Q,)`` int64 indices, sorted.

    Shape:
        - yaw: ``(N,)``; outputs ``(F,)`` and ``(Q,)``

    Examples:
        >>> pose_groups(torch.tensor([0.0, -10.0, 30.0, 75.0, -88.0]))
        (tensor([0, 1]), tensor([3, 4]))
    """
    check_tensor(yaw, "yaw", "(N,)", floating=True)
    for name, value in (("frontal_max", frontal_max), ("profile_min", profile_min)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 90:
            raise ValueError(f"{name}: expected degrees in [0, 90], received {value!r}")
    if frontal_max >= profile_min:
        raise ValueError(
            f"profile_min: expected > frontal_max = {frontal_max}, received {profile_min}"
        )
    if not torch.isfinite(yaw).all():
        raise ValueError("yaw: expected finite values, received NaN or inf")
    size = yaw.abs()
    return (size <= frontal_max).nonzero().squeeze(1), (size >= profile_min).nonzero().squeeze(1)


def pose_protocols(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    yaw: torch.Tensor,
    fars: Sequence[float] = FAR_LEVELS,
    frontal_max: float = CFP_FRONTAL_MAX_YAW,
    profile_min: float = CFP_PROFILE_MIN_YAW,
    n_pairs: int | None = 7000,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, dict[str, Any]]:
    """CFP-style frontal–frontal and frontal–profile verification on all cross pairs.

    Images are split by yaw with :func:`pose_groups`. *Frontal–frontal* scores every pair of
    two frontal images; *frontal–profile* every pair of one frontal and one profile image (CFP's
    FF and FP protocols, with all pairs instead of 7,000). Each gets :func:`all_pairs_metrics`
    and, unless ``n_pairs`` is ``None``, the 10-fold accuracy of :func:`ten_fold_metrics` on
    ``n_pairs`` balanced pairs drawn from the same pairs (CFP: 7,000).

    Args:
        embeddings: ``(N, D)`` float.
        labels: ``(N,)`` integer identity labels.
        yaw: ``(N,)`` yaw per image, degrees.
        fars: the false-accept rates to report.
        frontal_max: largest ``|yaw|`` of a frontal image (default 15°).
        profile_min: smallest ``|yaw|`` of a profile image (default 60°).
        n_pairs: balanced pairs for the 10-fold accuracy, or ``None`` to skip it.
        seed: seed of that draw.
        chunk_size: rows of the score matrix per block, or ``None`` for automatic.

    Returns:
        ``{"frontal_frontal": m, "frontal_profile": m}``, each ``m`` the dict of
        :func:`all_pairs_metrics` plus, with ``n_pairs``, ``"accuracy"`` and
        ``"accuracy_std"`` (10-fold mean and standard deviation), and ``"n_images"`` (images in
        the protocol's groups).

    Shape:
        - embeddings: ``(N, D)``; labels, yaw: ``(N,)``

    Examples:
        >>> labels = torch.arange(30).repeat_interleave(4)
        >>> yaw = torch.tensor([0.0, 5.0, 80.0, -85.0]).repeat(30)
        >>> embeddings = torch.nn.functional.one_hot(labels).float() + 0.2 * torch.randn(120, 30)
        >>> embeddings[yaw.abs() > 60] += 0.3 * torch.randn(60, 30)  # profiles are harder
        >>> r = pose_protocols(embeddings, labels, yaw, fars=(1e-2,), n_pairs=100)
        >>> r["frontal_frontal"]["n_genuine"], r["frontal_profile"]["n_genuine"]
        (30, 120)
        >>> r["frontal_profile"]["eer"] >= r["frontal_frontal"]["eer"]
        True
    """
    embeddings, labels = _check_set(embeddings, labels)
    check_tensor(yaw, "yaw", "(N,)", sizes=(embeddings.shape[0],), floating=True)
    frontal, profile = pose_groups(yaw, frontal_max, profile_min)
    out = {}
    for name, rows, cols in (
        ("frontal_frontal", frontal, frontal),
        ("frontal_profile", frontal, profile),
    ):
        metrics = all_pairs_metrics(embeddings, labels, fars, rows, cols, chunk_size)
        metrics["n_images"] = int(torch.unique(torch.cat([rows, cols])).numel())
        if n_pairs is not None:
            folds = ten_fold_metrics(embeddings, labels, n_pairs, seed, rows, cols)
            metrics["accuracy"] = folds["accuracy"]
            metrics["accuracy_std"] = folds["accuracy_std"]
        out[name] = metrics
    return out
