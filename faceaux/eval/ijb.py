"""IJB-B / IJB-C template-based evaluation: 1:1 verification (TAR@FAR) and 1:N identification.

The protocol of InsightFace's ``eval_ijbc.py`` (the numbers every face-recognition paper
reports), on the standard folder layout::

    ROOT/meta/ijbc_face_tid_mid.txt          image_name template_id media_id      (one per image)
    ROOT/meta/ijbc_name_5pts_score.txt       image_name x1 y1 … x5 y5 detector_score
    ROOT/meta/ijbc_template_pair_label.txt   template_1 template_2 label(1 = same identity)
    ROOT/meta/ijbc_1N_gallery_G1.csv, …_G2.csv, ijbc_1N_probe_mixed.csv   (1:N, optional)
    ROOT/loose_crop/<image_name>

(``ijbb_…`` and galleries ``S1``/``S2`` for IJB-B; ``ROOT`` may also be the folder holding
``IJBC/``.) The steps:

1. each loose crop is aligned from its five points onto the ArcFace 112×112 template with a
   least-squares similarity (:func:`~faceaux.similarity_from_landmarks`, :func:`~faceaux.warp`;
   bilinear, zero padding, as ``cv2.warpAffine``) and embedded; with ``flip`` the embedding of
   the mirrored crop is added;
2. image embeddings keep their norm (InsightFace's ``use_norm_score=True``: the norm acts as a
   quality weight) or are L2-normalised; with ``use_detector_score`` they are multiplied by the
   detector's face score;
3. the embeddings of one media (the frames of one video, or one still) are averaged, a
   template's media averages are summed, and the template feature is L2-normalised;
4. each template pair is scored by the cosine of its two template features.

Images are streamed through a ``DataLoader``; memory holds one ``(N, D)`` float32 array of
embeddings and the per-template features, nothing per image beyond that.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from faceaux.eval.verification import _trapezoid, roc_curve
from faceaux.layers.geometry import (
    ARCFACE_TEMPLATE_112,
    from_pixel_matrix,
    similarity_from_landmarks,
    warp,
)

__all__ = [
    "IJB_FAR_LEVELS",
    "IJB_FPIR_LEVELS",
    "IJBFaces",
    "evaluate_ijb",
    "identification_metrics",
    "read_ijb_meta",
    "tar_at_far_insightface",
    "template_features",
]

IJB_FAR_LEVELS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""False-accept rates of the IJB 1:1 table (InsightFace's columns).

Shape:
    A tuple of floats; no tensors.
"""

IJB_FPIR_LEVELS: tuple[float, ...] = (1e-2, 1e-1)
"""False-positive identification rates at which the 1:N evaluation reports the TPIR.

Shape:
    A tuple of floats; no tensors.
"""

_GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


def _dataset_root(root: str | os.PathLike, dataset: str) -> Path:
    root = Path(root)
    if not (root / "meta").is_dir() and (root / dataset / "meta").is_dir():
        root = root / dataset
    if not (root / "meta").is_dir():
        raise ValueError(
            f"root: expected a folder holding meta/ and loose_crop/ (or {dataset}/meta), "
            f"received {os.fspath(root)!r}"
        )
    return root


def read_ijb_meta(root: str | os.PathLike, dataset: str = "IJBC") -> dict[str, Any]:
    """Read the IJB meta files of ``root`` (the layout in the module docstring).

    Args:
        root: the dataset folder (holding ``meta/`` and ``loose_crop/``) or its parent.
        dataset: ``"IJBC"`` or ``"IJBB"``.

    Returns:
        dict with ``root`` (Path), ``names`` (list of N image names), ``landmarks`` (N, 5, 2)
        float32, ``face_scores`` (N,) float32, ``templates`` (N,) and ``medias`` (N,) int64,
        ``pairs`` (P, 2) int64 template ids, ``issame`` (P,) bool, and ``galleries`` — a list
        of ``(name, templates (G,), subjects (G,))`` — plus ``probes`` ``(templates, subjects)``
        when the 1:N files are present (else both absent).

    Raises:
        ValueError: a missing file, or files that disagree (the message names them).

    Shape:
        As listed under Returns (NumPy arrays).
    """
    dataset = _check_dataset(dataset)
    root = _dataset_root(root, dataset)
    prefix = root / "meta" / dataset.lower()
    names_file = Path(f"{prefix}_name_5pts_score.txt")
    tid_file = Path(f"{prefix}_face_tid_mid.txt")
    pair_file = Path(f"{prefix}_template_pair_label.txt")
    for file in (names_file, tid_file, pair_file):
        if not file.is_file():
            raise ValueError(f"root: the IJB meta file {os.fspath(file)!r} is missing")
    rows = [line.split() for line in names_file.read_text().splitlines() if line.strip()]
    if any(len(row) != 12 for row in rows):
        bad = next(i for i, row in enumerate(rows) if len(row) != 12)
        raise ValueError(
            f"{os.fspath(names_file)}: line {bad + 1} has {len(rows[bad])} fields, expected 12 "
            "(name, 5 × (x, y), detector score)"
        )
    names = [row[0] for row in rows]
    numbers = np.array([row[1:] for row in rows], dtype=np.float32).reshape(-1, 11)
    tid_rows = [line.split() for line in tid_file.read_text().splitlines() if line.strip()]
    if len(tid_rows) != len(names):
        raise ValueError(
            f"{os.fspath(tid_file)}: has {len(tid_rows)} lines, expected {len(names)} (one per "
            f"line of {names_file.name})"
        )
    tid = np.array([row[1:3] for row in tid_rows], dtype=np.int64).reshape(-1, 2)
    pairs = np.loadtxt(pair_file, dtype=np.int64, usecols=(0, 1, 2), ndmin=2)
    meta: dict[str, Any] = {
        "root": root,
        "names": names,
        "landmarks": numbers[:, :10].reshape(-1, 5, 2),
        "face_scores": numbers[:, 10],
        "templates": tid[:, 0],
        "medias": tid[:, 1],
        "pairs": pairs[:, :2],
        "issame": pairs[:, 2] == 1,
    }
    galleries = [Path(f"{prefix}_1N_gallery_{g}.csv") for g in _GALLERIES[dataset]]
    probe_file = Path(f"{prefix}_1N_probe_mixed.csv")
    if probe_file.is_file() and all(g.is_file() for g in galleries):
        meta["galleries"] = [(g.stem.rsplit("_", 1)[-1], *_read_1n(g)) for g in galleries]
        meta["probes"] = _read_1n(probe_file)
    return meta


def _read_1n(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``(templates, subjects)`` of a 1:N CSV (columns TEMPLATE_ID, SUBJECT_ID)."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    header = [h.strip().upper() for h in rows[0]]
    columns = (header.index("TEMPLATE_ID"), header.index("SUBJECT_ID"))
    table = np.array([[int(r[columns[0]]), int(r[columns[1]])] for r in rows[1:] if r], np.int64)
    templates, first = np.unique(table[:, 0], return_index=True)
    return templates, table[first, 1]


def _check_dataset(dataset: str) -> str:
    if dataset not in _GALLERIES:
        raise ValueError(f"dataset: expected 'IJBC' or 'IJBB', received {dataset!r}")
    return dataset


class IJBFaces(Dataset):
    """The IJB loose crops, each aligned from its five points onto the ArcFace template.

    Reads ``loose_crop/<name>`` with Pillow, converts to RGB in [0, 1], fits the similarity
    that maps the five points onto :data:`~faceaux.ARCFACE_TEMPLATE_112` (scaled to ``size``)
    and samples the crop with :func:`~faceaux.warp` (bilinear, zero padding).

    Args:
        root: the dataset folder (holding ``loose_crop/``).
        names: image names, in meta order.
        landmarks: ``(N, 5, 2)`` pixel coordinates (x, y) in the loose crops.
        size: ``(H, W)`` of the aligned output (112×112 is the protocol's).

    Shape:
        ``dataset[i]`` is the aligned crop ``(3, H, W)`` float in [0, 1].
    """

    def __init__(
        self,
        root: str | os.PathLike,
        names: Sequence[str],
        landmarks: np.ndarray,
        size: tuple[int, int] = (112, 112),
    ) -> None:
        self.root = Path(root)
        self.names = list(names)
        self.landmarks = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
        if self.landmarks.shape != (len(self.names), 5, 2):
            raise ValueError(
                f"landmarks: expected shape ({len(self.names)}, 5, 2), received "
                f"{tuple(self.landmarks.shape)}"
            )
        self.size = (int(size[0]), int(size[1]))
        scale = torch.tensor([self.size[1] / 112.0, self.size[0] / 112.0])
        self.template = ARCFACE_TEMPLATE_112 * scale

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.root / "loose_crop" / self.names[index]
        try:
            with Image.open(path) as opened:
                array = np.asarray(opened.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"image {index} ({os.fspath(path)!r}) does not read: {error}"
            ) from None
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float()[None] / 255
        pixel = similarity_from_landmarks(self.landmarks[index][None], self.template)
        matrix = from_pixel_matrix(pixel, tuple(image.shape[-2:]), self.size)
        return warp(image, matrix, self.size)[0].clamp(0, 1)


def template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pool image features into L2-normalised template features (media mean, template sum).

    Images of one ``(template, media)`` are averaged; a template is the sum of its media
    averages, then L2-normalised — InsightFace's ``image2template_feature``, vectorised.

    Args:
        features: ``(N, D)`` image features (already flip-fused and weighted).
        templates: ``(N,)`` template id of each image.
        medias: ``(N,)`` media id of each image.

    Returns:
        ``(unique templates (T,), features (T, D) float64)``, templates sorted.

    Shape:
        - features: ``(N, D)``; templates, medias: ``(N,)``
        - output: ``(T,)`` and ``(T, D)``

    Examples:
        >>> f = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
        >>> ids, pooled = template_features(f, np.array([7, 7, 7]), np.array([1, 1, 2]))
        >>> ids.tolist(), pooled.round(4).tolist()  # media 1 → (2, 0); + media 2 → (2, 2)
        ([7], [[0.7071, 0.7071]])
    """
    features = np.asarray(features, dtype=np.float64)
    keys = np.stack([np.asarray(templates), np.asarray(medias)], axis=1)
    media_keys, media_of_image = np.unique(keys, axis=0, return_inverse=True)
    media_of_image = media_of_image.reshape(-1)
    media_sum = np.zeros((media_keys.shape[0], features.shape[1]))
    np.add.at(media_sum, media_of_image, features)
    media_mean = media_sum / np.bincount(media_of_image)[:, None]
    unique_templates, template_of_media = np.unique(media_keys[:, 0], return_inverse=True)
    template_sum = np.zeros((unique_templates.size, features.shape[1]))
    np.add.at(template_sum, template_of_media.reshape(-1), media_mean)
    norms = np.linalg.norm(template_sum, axis=1, keepdims=True)
    return unique_templates, template_sum / np.maximum(norms, 1e-12)


def tar_at_far_insightface(
    scores: np.ndarray, issame: np.ndarray, fars: Sequence[float] = IJB_FAR_LEVELS
) -> dict[float, float]:
    """TAR at each FAR the way InsightFace's IJB table reads it off the ROC.

    The ROC is scikit-learn's default one (``drop_intermediate=True``: only its corner points);
    for each FAR the point whose false-positive rate is nearest is taken (the highest TPR among
    equally near points). This differs from :func:`~faceaux.eval.verification_metrics`'s rule
    (highest TAR at FAR ≤ target) by at most one ROC step; it is what published IJB numbers
    use. FARs below ``1 / N_impostor`` cannot be measured and give ``nan``.

    Shape:
        - scores, issame: ``(P,)``
        - output: a dict FAR → TAR (floats)

    Examples:
        >>> scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
        >>> issame = np.array([True, True, False, True, False, False])
        >>> tar_at_far_insightface(scores, issame, fars=(0.1, 0.4))  # 3 impostors: 0.1 is < 1/3
        {0.1: nan, 0.4: 1.0}
    """
    fpr, tpr, _ = roc_curve(scores, issame)
    # scikit-learn's drop_intermediate, on the points after the leading (0, 0): keep the ends
    # and every point where the curve turns
    n_impostor = int((~np.asarray(issame, dtype=bool)).sum())
    n_genuine = np.asarray(issame, dtype=bool).size - n_impostor
    false_accepts, true_accepts = np.rint(fpr * n_impostor), np.rint(tpr * n_genuine)  # counts
    keep = np.ones(fpr.size, dtype=bool)
    if fpr.size > 3:
        turns = np.diff(false_accepts[1:], 2) != 0
        keep[2:-1] = turns | (np.diff(true_accepts[1:], 2) != 0)
    fpr, tpr = fpr[keep][::-1], tpr[keep][::-1]  # reversed: argmin's first hit = highest TPR
    out = {}
    for far in fars:
        if far * n_impostor < 1:
            out[far] = math.nan
        else:
            out[far] = float(tpr[np.argmin(np.abs(fpr - far))])
    return out


def identification_metrics(
    probe_features: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_features: np.ndarray,
    gallery_subjects: np.ndarray,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = IJB_FPIR_LEVELS,
) -> dict[str, Any]:
    """Closed-set rank-k rates and open-set TPIR at FPIR of probes against one gallery.

    Scores are cosines of the (normalised) template features. A probe is *mated* when its
    subject has a gallery template. Closed set: a mated probe is found at rank k when fewer than
    k non-mated gallery templates score above its best mated template (ties count in the
    probe's favour). Open set: the threshold for FPIR f is the ``⌊f·n⌋ + 1``-th highest of the
    ``n`` non-mated probes' best scores (so at most ``⌊f·n⌋`` of them — a fraction ≤ f —
    score above it); a mated probe is a true positive when it is at rank 1 and its mated score
    is above the threshold; TPIR = true positives / mated probes. FPIR below ``1 / n`` gives
    ``nan``.

    Returns:
        ``{"mated": number of mated probes, "hits": {k: mated probes found at rank ≤ k},
        "rank": {k: hits / mated}, "tpir_at_fpir": {f: TPIR}}``.

    Shape:
        - probe_features: ``(P, D)``; probe_subjects: ``(P,)``
        - gallery_features: ``(G, D)``; gallery_subjects: ``(G,)``

    Examples:
        >>> g = np.eye(3); subjects = np.array([0, 1, 2])
        >>> probes = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.9], [0.6, 0.8, 0.0]])
        >>> m = identification_metrics(probes, np.array([0, 2, 9]), g, subjects, ranks=(1,))
        >>> m["rank"], m["mated"]
        ({1: 1.0}, 2)
    """
    similarity = np.asarray(probe_features) @ np.asarray(gallery_features).T
    mated_mask = np.asarray(probe_subjects)[:, None] == np.asarray(gallery_subjects)[None, :]
    is_mated = mated_mask.any(axis=1)
    best_mated = np.where(mated_mask, similarity, -np.inf).max(axis=1)
    above = (np.where(mated_mask, -np.inf, similarity) > best_mated[:, None]).sum(axis=1)
    rank_of = above + 1
    mated = int(is_mated.sum())
    hits = {k: int((is_mated & (rank_of <= k)).sum()) for k in ranks}
    non_mated_best = np.sort(similarity[~is_mated].max(axis=1, initial=-np.inf))[::-1]
    tpir = {}
    for fpir in fpirs:
        allowed = math.floor(fpir * non_mated_best.size)
        if allowed < 1 or mated == 0:
            tpir[fpir] = math.nan
            continue
        threshold = non_mated_best[allowed] if allowed < non_mated_best.size else -np.inf
        found = is_mated & (rank_of == 1) & (best_mated > threshold)
        tpir[fpir] = float(found.sum() / mated)
    return {
        "mated": mated,
        "hits": hits,
        "rank": {k: hits[k] / mated if mated else math.nan for k in ranks},
        "tpir_at_fpir": tpir,
    }


def _model_io(model: nn.Module) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(int(v) for v in cfg.get("input_size", (3, 112, 112))[1:])
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32)
    return size, mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


@torch.inference_mode()
def embed_images(
    model: nn.Module,
    dataset: Dataset,
    flip: bool = True,
    batch_size: int = 128,
    num_workers: int = 2,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Raw (un-normalised) embeddings of a dataset of images in [0, 1], flip-fused by a sum.

    Images are normalised with the model's ``pretrained_cfg`` mean/std (InsightFace's
    ``(x − 127.5) / 127.5`` when it has none) and written into one preallocated array.

    Shape:
        returns ``(N, D)`` float32.
    """
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    _, mean, std = _model_io(model)
    mean, std = mean.to(device), std.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    if progress:
        from faceaux.eval.verification import _progress

        loader = _progress(loader, True, desc="IJB embeddings")
    was_training = model.training
    model.eval()
    features: np.ndarray | None = None
    start = 0
    try:
        for images in loader:
            images = (images.to(device) - mean) / std
            embedding = model(images).float()
            if flip:
                embedding = embedding + model(images.flip(-1)).float()
            if features is None:
                features = np.empty((len(dataset), embedding.shape[1]), dtype=np.float32)
            features[start : start + embedding.shape[0]] = embedding.cpu().numpy()
            start += embedding.shape[0]
    finally:
        model.train(was_training)
    if features is None:
        raise ValueError("dataset: expected at least one image, received none")
    return features


def evaluate_ijb(
    model: nn.Module,
    root: str | os.PathLike,
    dataset: str = "IJBC",
    flip: bool = True,
    use_detector_score: bool = True,
    use_norm_score: bool = True,
    batch_size: int = 128,
    num_workers: int = 2,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on IJB-B or IJB-C: 1:1 TAR@FAR and ROC, and 1:N when its files exist.

    The protocol is described in the module docstring (alignment, flip fusion, detector-score
    weighting, media then template pooling, cosine pair scores). TAR@FAR is read off the ROC as
    InsightFace does (:func:`tar_at_far_insightface`); the 1:N evaluation
    (:func:`identification_metrics`) runs the probes against each of the two galleries and
    reports rank-1/5/10 (mated probes found, over all mated probes of both galleries) and the
    TPIR at FPIR 1e-2 and 1e-1 (the mean of the two galleries).

    Args:
        model: maps normalised images ``(B, 3, H, W)`` to embeddings ``(B, D)``; its
            ``pretrained_cfg`` gives ``input_size``, ``mean`` and ``std`` (defaults: 112×112,
            0.5, 0.5).
        root: the IJB folder (holding ``meta/`` and ``loose_crop/``) or its parent.
        dataset: ``"IJBC"`` or ``"IJBB"``.
        flip: add the embedding of the mirrored crop.
        use_detector_score: weight each image by its detector score.
        use_norm_score: keep the image embeddings' norms (InsightFace's default); ``False``
            L2-normalises them before weighting and pooling.
        batch_size: images per forward pass.
        num_workers: DataLoader workers that read and align the crops.
        device: where the model runs (default: where its parameters are).
        progress: show a tqdm bar.

    Returns:
        dict with ``dataset``, ``num_images``, ``num_templates``, ``num_pairs``,
        ``tar_at_far`` (dict FAR → TAR for :data:`IJB_FAR_LEVELS`), ``auc``, ``roc``
        (``(fpr, tpr, thresholds)``), ``scores`` (``(P,)`` pair scores, meta order) and, with
        the 1:N files, ``identification`` (``{"rank": {1, 5, 10 → rate}, "tpir_at_fpir":
        {1e-2, 1e-1 → TPIR}, "galleries": {name: identification_metrics(...)}}``).

    Shape:
        No tensors in or out: reads ``root``; arrays in the result are NumPy.
    """
    dataset = _check_dataset(dataset)
    meta = read_ijb_meta(root, dataset)
    size, _, _ = _model_io(model)
    images = IJBFaces(meta["root"], meta["names"], meta["landmarks"], size)
    features = embed_images(model, images, flip, batch_size, num_workers, device, progress)
    features = features.astype(np.float64)
    if not use_norm_score:
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if use_detector_score:
        features *= meta["face_scores"][:, None]
    templates, pooled = template_features(features, meta["templates"], meta["medias"])
    pairs = meta["pairs"]

    def lookup(ids: np.ndarray) -> np.ndarray:  # row of each template id in `pooled`
        rows = np.searchsorted(templates, ids).clip(0, templates.size - 1)
        missing = templates[rows] != ids
        if missing.any():
            raise ValueError(
                f"root: the protocol names templates without images in the face/tid/mid file: "
                f"{np.unique(ids[missing])[:5].tolist()}"
            )
        return rows

    first, second = lookup(pairs[:, 0]), lookup(pairs[:, 1])
    scores = np.empty(pairs.shape[0])
    chunk = 100_000
    for start in range(0, pairs.shape[0], chunk):
        a, b = first[start : start + chunk], second[start : start + chunk]
        scores[start : start + chunk] = np.einsum("pd,pd->p", pooled[a], pooled[b])
    fpr, tpr, thresholds = roc_curve(scores, meta["issame"])
    result: dict[str, Any] = {
        "dataset": dataset,
        "num_images": len(meta["names"]),
        "num_templates": int(templates.size),
        "num_pairs": int(pairs.shape[0]),
        "tar_at_far": tar_at_far_insightface(scores, meta["issame"]),
        "auc": float(_trapezoid(tpr, fpr)),
        "roc": (fpr, tpr, thresholds),
        "scores": scores,
    }
    if "galleries" in meta:
        probe_templates, probe_subjects = meta["probes"]
        per_gallery = {}
        for name, gallery_templates, gallery_subjects in meta["galleries"]:
            per_gallery[name] = identification_metrics(
                pooled[lookup(probe_templates)],
                probe_subjects,
                pooled[lookup(gallery_templates)],
                gallery_subjects,
            )
        mated = sum(g["mated"] for g in per_gallery.values())
        result["identification"] = {
            "rank": {
                k: sum(g["hits"][k] for g in per_gallery.values()) / mated if mated else math.nan
                for k in (1, 5, 10)
            },
            "tpir_at_fpir": {
                f: float(np.mean([g["tpir_at_fpir"][f] for g in per_gallery.values()]))
                for f in IJB_FPIR_LEVELS
            },
            "galleries": per_gallery,
        }
    return result
