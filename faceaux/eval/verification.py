"""Face verification metrics (the LFW 10-fold protocol, ROC, EER, TAR@FAR) and embedding extraction.

The metrics take one similarity score per pair (higher means "same person", e.g. the cosine of
two L2-normalised embeddings) and the pair's ground truth, and compute everything in float64
NumPy. The ROC is the full one (every distinct score is a threshold), identical to
scikit-learn's ``roc_curve(..., drop_intermediate=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from faceaux._checks import (
    check_module_input,
    check_tensor,
    finite_check,
    label_check,
    raise_bad_data,
)

__all__ = [
    "FAR_LEVELS",
    "extract_embeddings",
    "pair_scores",
    "roc_curve",
    "verification_metrics",
]

#: The false-accept rates at which :func:`verification_metrics` reports the true-accept rate.
FAR_LEVELS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)


def _as_numpy(x: Any, name: str, dtype: type) -> np.ndarray:
    """A 1-D float64 (scores) or bool (issame) array; any tensor dtype (bf16 too) is accepted."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_complex():
            raise ValueError(f"{name}: expected real values, received dtype {x.dtype}")
        # NumPy has no bfloat16: widen floating tensors (exactly) before converting
        x = (x.double() if x.is_floating_point() else x).numpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected a 1-D array (N,), received {type(x).__name__}") from (
            error
        )
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array (N,), received shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: expected at least one pair (N ≥ 1), received N = 0")
    if dtype is bool:
        # "False" (a string) or 2 must not silently read as True
        if array.dtype.kind not in "biu" or not np.isin(array, (0, 1)).all():
            raise ValueError(
                f"{name}: expected booleans (or 0/1) per pair, received dtype {array.dtype}"
            )
    elif array.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected real numbers per pair, received dtype {array.dtype}")
    return array.astype(dtype)


def roc_curve(scores: Any, issame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC curve: false-positive rate, true-positive rate and the thresholds.

    A pair is accepted when ``score >= threshold``. Thresholds are the distinct scores in
    decreasing order, preceded by ``+inf`` (nothing accepted), as scikit-learn's
    ``roc_curve(issame, scores, drop_intermediate=False)``.

    Args:
        scores: similarity per pair ``(N,)``, higher = more likely the same identity.
        issame: ground truth per pair ``(N,)``, bool.

    Returns:
        ``fpr``, ``tpr``, ``thresholds``, each ``(T + 1,)`` for T distinct scores.

    Examples:
        >>> fpr, tpr, thr = roc_curve([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    s = _as_numpy(scores, "scores", np.float64)
    y = _as_numpy(issame, "issame", bool)
    if s.shape != y.shape:
        raise ValueError(f"issame: expected shape {s.shape} (that of scores), received {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores: expected finite values, received NaN or inf")
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_value].astype(np.float64)
    fps = (last_of_value + 1) - tps
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"issame: expected both genuine and impostor pairs, received {int(n_pos)} genuine "
            f"and {int(n_neg)} impostor"
        )
    return fps / n_neg, tps / n_pos, np.r_[np.inf, s[last_of_value]]


def _best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """Threshold maximising the accuracy of ``score >= threshold`` on these pairs.

    Candidates: midway between consecutive distinct scores, and just below the lowest / above the
    highest. Ties in accuracy go to the lowest threshold.
    """
    order = np.argsort(scores, kind="mergesort")
    s, y = scores[order], issame[order]
    # Threshold k sits below s[k] (k = 0 … n): pairs 0 … k-1 rejected, k … n-1 accepted.
    negatives_below = np.r_[0, np.cumsum(~y)]
    positives_above = np.r_[np.cumsum(y[::-1])[::-1], 0]
    correct = negatives_below + positives_above
    valid = np.r_[True, s[1:] != s[:-1], True]
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        return float(np.nextafter(s[0], -np.inf))
    if k == s.size:
        return float(np.nextafter(s[-1], np.inf))
    return float((s[k - 1] + s[k]) / 2)


def verification_metrics(scores: Any, issame: Any, n_folds: int = 10) -> dict[str, Any]:
    """Verification accuracy by the LFW 10-fold protocol, plus EER, AUC, TAR@FAR and the ROC.

    Accuracy: the pairs are split, in their given order, into ``n_folds`` contiguous folds
    (``numpy.array_split``: the first ``N mod n_folds`` folds get one pair more, as scikit-learn's
    ``KFold(shuffle=False)``); for each fold the threshold that maximises accuracy on the other
    folds (:func:`_best_threshold`) is applied to it. This is the protocol of LFW and InsightFace's
    ``verification.py`` (which searches a fixed grid of thresholds; we search all distinct ones).
    Keep pairs in their benchmark order (LFW's folds are its 10 sets of 600 pairs).

    EER: the equal-error rate, where the ROC (linearly interpolated between its points) crosses
    ``fpr = 1 − tpr``. AUC: trapezoidal area under the ROC.

    TAR@FAR: for each FAR in :data:`FAR_LEVELS`, the highest true-accept rate among thresholds
    whose false-accept rate is at most FAR. With ``N_neg`` impostor pairs the smallest non-zero
    FAR that can be measured is ``1 / N_neg``; for ``FAR < 1 / N_neg`` the only admissible
    threshold accepts no impostor at all, which says nothing about that FAR, so the entry is
    ``nan`` (e.g. LFW's 3,000 impostor pairs resolve 1e-3 but not 1e-4).

    Bad input raises ``ValueError`` naming the argument: no pairs (``N = 0``: there is no
    accuracy to report), NaN/inf scores, ground truth that is not boolean (or 0/1), only one
    kind of pair. Scores may be a tensor of any floating dtype (bf16 included) or an array.

    Args:
        scores: similarity per pair ``(N,)`` (tensor or array), higher = same identity.
        issame: ground truth per pair ``(N,)``, bool.
        n_folds: number of folds (2 ≤ n_folds ≤ N).

    Returns:
        dict with exactly the keys ``"accuracy"`` (mean over folds), ``"accuracy_std"``
        (population standard deviation over folds, as InsightFace), ``"threshold"`` (mean of the
        folds' thresholds), ``"eer"``, ``"auc"``, ``"tar_at_far"`` (dict FAR → TAR) and ``"roc"``
        (the tuple ``(fpr, tpr, thresholds)`` of :func:`roc_curve`).

    Shape:
        - scores: ``(N,)`` float; issame: ``(N,)`` bool
        - roc: three ``(R,)`` numpy arrays, R ≤ N + 1 points; the rest are Python floats

    Examples:
        >>> scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.0]
        >>> issame = [True, True, True, False, False, False]
        >>> m = verification_metrics(scores, issame, n_folds=2)
        >>> m["accuracy"], m["eer"], m["auc"]
        (1.0, 0.0, 1.0)
    """
    fpr, tpr, thresholds = roc_curve(scores, issame)
    s = _as_numpy(scores, "scores", np.float64)
    y = _as_numpy(issame, "issame", bool)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= s.size:
        raise ValueError(
            f"n_folds: expected an int, 2 ≤ n_folds ≤ N = {s.size}, received {n_folds!r}"
        )

    fold_accuracy, fold_threshold = [], []
    for test in np.array_split(np.arange(s.size), n_folds):
        train = np.ones(s.size, dtype=bool)
        train[test] = False
        threshold = _best_threshold(s[train], y[train])
        fold_threshold.append(threshold)
        fold_accuracy.append(float(np.mean((s[test] >= threshold) == y[test])))

    # EER: first ROC point with fnr <= fpr, interpolated with the previous one.
    fnr = 1.0 - tpr
    i = int(np.argmax(fnr <= fpr))
    gap_prev, gap_here = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = gap_prev / (gap_prev - gap_here) if gap_prev != gap_here else 0.0
    eer = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))

    n_neg = int((~y).sum())
    tar_at_far = {}
    for far in FAR_LEVELS:
        if far * n_neg < 1:
            tar_at_far[far] = math.nan
        else:
            tar_at_far[far] = float(tpr[fpr <= far * (1 + 1e-9)].max())

    return {
        "accuracy": float(np.mean(fold_accuracy)),
        "accuracy_std": float(np.std(fold_accuracy)),
        "threshold": float(np.mean(fold_threshold)),
        "eer": eer,
        "auc": float(_trapezoid(tpr, fpr)),
        "tar_at_far": tar_at_far,
        "roc": (fpr, tpr, thresholds),
    }


# numpy ≥ 2 renamed trapz to trapezoid.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # noqa: NPY201


def pair_scores(embeddings: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each pair of (L2-normalised) embeddings.

    Args:
        embeddings: ``(N, D)``, normalised (as :func:`extract_embeddings` returns them).
        pairs: ``(P, 2)`` row indices into ``embeddings``.

    Shape:
        returns ``(P,)``.

    Examples:
        >>> e = torch.eye(3)
        >>> pair_scores(e, torch.tensor([[0, 0], [0, 1]])).tolist()
        [1.0, 0.0]
    """
    check_tensor(embeddings, "embeddings", "(N, D)", floating=True)
    check_tensor(pairs, "pairs", "(P, 2)", sizes=(None, 2))
    if pairs.is_floating_point() or pairs.is_complex() or pairs.dtype == torch.bool:
        raise ValueError(f"pairs: expected integer row indices, received dtype {pairs.dtype}")
    rows = label_check(pairs.flatten(), embeddings.shape[0], name="pairs", what="row indices")
    raise_bad_data([finite_check(embeddings, "embeddings"), rows])
    return (embeddings[pairs[:, 0]] * embeddings[pairs[:, 1]]).sum(1)


def _progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "progress bars need tqdm: pip install 'faceaux[demo]', or pass progress=False"
        ) from error
    return tqdm(iterable, **kwargs)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, Sequence):
        return batch[0]
    raise ValueError(f"loader: expected batches of tensors, dicts or tuples, got {type(batch)}")


def _checked_images(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The batch's images, checked: floating ``(B, C, H, W)`` of the model's dtype, finite."""
    images = _images_of(batch)
    check_tensor(images, "loader", "(B, C, H, W)", floating=True)
    check_module_input(images, "loader", model)
    raise_bad_data([finite_check(images, "loader")])
    return images


def _flip_images(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.flip(-1)
    if isinstance(batch, dict):
        return {**batch, "image": batch["image"].flip(-1)}
    return (batch[0].flip(-1), *batch[1:])


def _embeddings_of(output: Any) -> torch.Tensor:
    """The model's output as float32 ``(B, D)``, finite (else ``ValueError`` naming ``model``)."""
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or not output.is_floating_point():
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"model: expected floating embeddings (B, D) per batch, received {got}")
    raise_bad_data([finite_check(output, "model")])
    return output.float()


def extract_embeddings(
    model: torch.nn.Module,
    loader: Iterable,
    flip: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    forward: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    flip_fn: Callable[[Any], Any] | None = None,
    fusion: str = "sum",
) -> torch.Tensor:
    """Embed every image of a loader: optional flip-test fusion, then L2 normalisation.

    With ``flip=True`` the embedding of each image is fused with that of its horizontal mirror,
    then L2-normalised: ``fusion="sum"`` (default, keeps the dimension ``D``; InsightFace's
    evaluation) or ``fusion="concat"`` (``[e, e_flip]``, dimension ``2D``: what FSENet §3.7 does).
    The model runs in eval mode under ``torch.inference_mode()``; its training mode is restored
    afterwards.

    Args:
        model: maps images ``(B, 3, H, W)`` to embeddings ``(B, D)``.
        loader: iterable of batches: image tensors, dicts with an ``"image"`` entry, or tuples
            whose first entry is the images (a ``DataLoader`` over any of our datasets).
        flip: add the embedding of the horizontally flipped batch.
        device: where to run; default: the device of the model's first parameter (CPU if none).
        progress: show a ``tqdm`` progress bar (needs the ``demo`` extra).
        forward: optional ``(model, batch) -> embeddings`` for models that need more than the
            images (e.g. ground-truth heatmaps in a dict batch); default ``model(images)``.
        flip_fn: optional ``batch -> flipped batch``; default mirrors the images only. Give one
            when the batch carries left/right-sensitive side inputs (landmarks, parsing).
        fusion: ``"sum"`` or ``"concat"``: how the flipped embedding joins the original.

    Without ``forward``, each batch's images must be a floating ``(B, C, H, W)`` tensor of the
    model's dtype (convert uint8 images with ``.float() / 255``) and finite; a model output that
    is not a finite ``(B, D)`` tensor is refused too (``ValueError`` naming ``loader`` or
    ``model``).

    Returns:
        ``(N, D)`` (``(N, 2D)`` for ``fusion="concat"`` with ``flip``) float32 embeddings on
        the CPU, unit L2 norm, in loader order.

    Shape:
        - loader batches: ``(B, 3, H, W)`` images (bare, in a dict or first in a tuple)
        - output: ``(N, D)``, or ``(N, 2D)`` with ``fusion="concat"``; N = total images

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8))
        >>> batches = [torch.rand(2, 3, 4, 4), torch.rand(3, 3, 4, 4)]
        >>> extract_embeddings(model, batches, progress=False).shape
        torch.Size([5, 8])
    """
    if fusion not in ("sum", "concat"):
        raise ValueError(f"fusion: expected 'sum' or 'concat', received {fusion!r}")
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    run = forward if forward is not None else (lambda m, b: m(_checked_images(m, b)))
    mirror = flip_fn if flip_fn is not None else _flip_images
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.inference_mode():
            for batch in _progress(loader, progress, desc="embeddings", leave=False):
                batch = _to_device(batch, device)
                embedding = _embeddings_of(run(model, batch))
                if flip:
                    flipped = _embeddings_of(run(model, mirror(batch)))
                    embedding = (
                        embedding + flipped
                        if fusion == "sum"
                        else torch.cat([embedding, flipped], dim=1)
                    )
                outputs.append(F.normalize(embedding, dim=1).cpu())
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("loader: expected at least one batch, received none")
    return torch.cat(outputs)
