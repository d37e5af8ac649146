"""``faceaux demo``: train a small recognizer with and without each layer, then verify faces.

On the embedded :class:`~faceaux.data.SyntheticFaces` set (or on your own aligned crops with
``--data``), the demo trains the same tiny IResNet with ArcFace several times — the plain
baseline, then with one of the library's layers bolted on — and evaluates each on pairs of
identities never seen in training with the LFW 10-fold protocol. Every figure it prints comes
from the training it just did, with one seed for all variants.

Variants (``--variants``):

- ``baseline``: ``iresnet_nano`` (BN → dropout → FC → BN output block) + :class:`ArcFace`.
- ``gnap``: the same backbone with :class:`GNAP` replacing the output block (GNAP §3.2).
- ``stn``: :class:`SpatialTransformerAlign` (projective) in front of the baseline, its
  localisation network on a 10× smaller learning rate (stn-alignment-learning §3–4).
- ``heatmaps``: ground-truth landmark heatmaps (:func:`render_heatmaps` of the set's 51 internal
  points) stacked with the image (:class:`HeatmapStacker`, FAN-Face eq. 1) and integrated after
  stage 2 with a :class:`FANIntegrationLayer` (basic layer, eq. 2). The heatmaps stand in for a
  FAN's: no landmark network is trained or needed, at test time too.
- ``parts``: :class:`PartMaskPooling` of the stage-2 features under the ground-truth parsing of
  six parts (skin, both eyes, nose, both lips) → :class:`StructureCorrelation` → concatenated with
  the global embedding as ``[g, 0.6·l]`` (FSENet §3.5–3.6, Table 8's 1 : 0.6).
- ``attributes``: :class:`AttributeHead` on the embedding, trained on the set's seven Table-1
  attributes with :class:`MultiTaskLoss` (λ1 = 0.1, λ2 = 1, multi-task paper eq. 2).

The ground-truth side inputs (heatmaps, parsing, attributes) exist only on the synthetic set, so
with ``--data`` only ``baseline``, ``gnap`` and ``stn`` run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceaux.data.synthetic import SyntheticFaces, make_pairs, split_identities
from faceaux.eval.verification import extract_embeddings, pair_scores, verification_metrics

__all__ = [
    "VARIANTS",
    "DemoConfig",
    "add_parser",
    "build_variant",
    "main",
    "run_demo",
]

VARIANTS: tuple[str, ...] = ("baseline", "gnap", "stn", "heatmaps", "parts", "attributes")
_NEEDS_GROUND_TRUTH = {"heatmaps": "landmarks", "parts": "parsing", "attributes": "attributes"}

# Mirror of the 68 iBUG points under a horizontal flip (point i of the flipped face is point
# _MIRROR_68[i] of the original): jaw, brows, nose base, eyes and mouth swap sides.
_MIRROR_68 = (
    list(range(16, -1, -1))
    + list(range(26, 16, -1))
    + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
    + [64, 63, 62, 61, 60, 67, 66, 65]
)
# Parsing labels under a horizontal flip: l/r brow (2, 3) and l/r eye (4, 5) swap.
_MIRROR_PARSING = (0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10)
# The 51 internal landmarks (no jaw), FAN-Face's choice.
_INTERNAL_51 = tuple(range(17, 68))


@dataclass
class DemoConfig:
    """Settings of one demo run (the command-line flags)."""

    variants: Sequence[str] = VARIANTS
    epochs: int = 5
    seed: int = 0
    device: str = "cpu"
    size: int = 48
    train_identities: int = 150
    test_identities: int = 100
    images_per_identity: int = 12
    n_pairs: int = 3000
    batch_size: int = 64
    lr: float = 0.1
    quiet: bool = False
    out: str | None = "faceaux-demo"
    data: str | None = None
    train_data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


FAST = {
    "epochs": 3,
    "size": 48,
    "train_identities": 40,
    "test_identities": 30,
    "images_per_identity": 8,
    "n_pairs": 600,
    "batch_size": 32,
}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """Images and ground truth of one side of the split, as tensors (first dim = samples)."""

    tensors: dict[str, torch.Tensor]
    num_classes: int

    def __len__(self) -> int:
        return self.tensors["image"].shape[0]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {k: v[index] for k, v in self.tensors.items()}
        out["image"] = out["image"].float() / 255
        return out


def _synthetic_splits(cfg: DemoConfig) -> tuple[Split, Split, torch.Tensor, torch.Tensor]:
    n_ids = cfg.train_identities + cfg.test_identities
    data = SyntheticFaces(n_ids, cfg.images_per_identity, size=(cfg.size, cfg.size), seed=cfg.seed)
    test_fraction = cfg.test_identities / n_ids
    train_ids, test_ids = split_identities(n_ids, test_fraction, seed=cfg.seed)
    everything = {
        "image": data.images,
        "label": data.labels,
        "landmarks": data.landmarks,
        "parsing": data.parsing,
        "attributes": data.attributes,
    }
    train_mask = torch.isin(data.labels, train_ids)
    test_index = torch.isin(data.labels, test_ids).nonzero().squeeze(1)
    train = {k: v[train_mask] for k, v in everything.items()}
    train["label"] = torch.searchsorted(train_ids, train["label"])
    test = {k: v[test_index] for k, v in everything.items()}
    pairs, issame = make_pairs(data, cfg.n_pairs, seed=cfg.seed + 1, identities=test_ids)
    # Pairs index the whole set; re-index into the test split.
    position = torch.full((len(data),), -1, dtype=torch.long)
    position[test_index] = torch.arange(test_index.numel())
    return Split(train, len(train_ids)), Split(test, len(test_ids)), position[pairs], issame


def _folder_tensor(dataset: Any, indices: torch.Tensor) -> torch.Tensor:
    return torch.stack([(dataset[int(i)]["image"] * 255).round().to(torch.uint8) for i in indices])


def _user_splits(cfg: DemoConfig) -> tuple[Split, Split, torch.Tensor, torch.Tensor]:
    from faceaux.data.folders import ImageFolderFaces
    from faceaux.data.verification_bin import load_verification_bin

    size = (cfg.size, cfg.size)
    path = Path(cfg.data)
    if path.is_dir():
        folder = ImageFolderFaces(path, size=size)
        n_ids = len(folder.classes)
        train_ids, test_ids = split_identities(
            n_ids, cfg.test_identities / (cfg.train_identities + cfg.test_identities), cfg.seed
        )
        train_index = torch.isin(folder.labels, train_ids).nonzero().squeeze(1)
        test_index = torch.isin(folder.labels, test_ids).nonzero().squeeze(1)
        train = {
            "image": _folder_tensor(folder, train_index),
            "label": torch.searchsorted(train_ids, folder.labels[train_index]),
        }
        test = {"image": _folder_tensor(folder, test_index), "label": folder.labels[test_index]}
        pairs, issame = make_pairs(folder.labels[test_index], cfg.n_pairs, seed=cfg.seed + 1)
        return Split(train, len(train_ids)), Split(test, len(test_ids)), pairs, issame
    if cfg.train_data is None:
        raise ValueError(
            "--data: a .bin verification file has pairs but no identity labels to train on; "
            "give --train-data FOLDER (aligned crops, one folder per identity)"
        )
    folder = ImageFolderFaces(cfg.train_data, size=size)
    train = {
        "image": _folder_tensor(folder, torch.arange(len(folder))),
        "label": folder.labels,
    }
    images, issame = load_verification_bin(path, image_size=size)
    pairs = torch.arange(images.shape[0]).view(-1, 2)
    test = {"image": images, "label": torch.zeros(images.shape[0], dtype=torch.long)}
    return Split(train, len(folder.classes)), Split(test, 0), pairs, issame


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _flip_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror a batch horizontally, ground truth included (landmark order, l/r labels)."""
    out = dict(batch)
    out["image"] = batch["image"].flip(-1)
    if "landmarks" in batch:
        width = batch["image"].shape[-1]
        mirror = torch.tensor(_MIRROR_68, device=batch["landmarks"].device)
        lm = batch["landmarks"][:, mirror]
        out["landmarks"] = torch.stack([width - 1 - lm[..., 0], lm[..., 1]], -1)
    if "parsing" in batch:
        table = torch.tensor(_MIRROR_PARSING, device=batch["parsing"].device)
        out["parsing"] = table[batch["parsing"].long()].flip(-1)
    return out


class DemoRecognizer(nn.Module):
    """A tiny IResNet recognizer with one of the library's layers bolted on.

    ``forward(batch)`` takes a dict batch (``"image"`` plus the ground truth the variant needs)
    and returns the embedding; the ``attributes`` variant's ``attribute_head`` predicts the
    attributes from it.
    """

    def __init__(self, variant: str, size: int, num_attributes: int = 7) -> None:
        super().__init__()
        from faceaux.models.registry import create_model

        self.variant = variant
        self.size = size
        in_channels = 3
        self.stacker = self.integration = self.stn = self.pool = self.correlate = None
        self.attribute_head = None
        if variant == "heatmaps":
            from faceaux.layers.heatmaps import HeatmapStacker
            from faceaux.layers.integration import FANIntegrationLayer

            self.stacker = HeatmapStacker(landmarks=None)
            in_channels = 3 + len(_INTERNAL_51)
        pooling = "gnap" if variant == "gnap" else "fc"
        self.backbone = create_model(
            "iresnet_nano", input_size=(size, size), in_channels=in_channels, pooling=pooling
        )
        stage2 = self.backbone.layer2[-1].bn3.num_features
        if variant == "heatmaps":
            self.integration = FANIntegrationLayer(len(_INTERNAL_51), stage2, variant="basic")
        if variant == "stn":
            from faceaux.layers.alignment import SpatialTransformerAlign

            self.stn = SpatialTransformerAlign(
                "projective",
                output_size=(size, size),
                loc_input_size=(32, 32),
                loc_channels=(16, 32, 64),
                loc_hidden=64,
                padding_mode="border",
            )
        if variant == "parts":
            from faceaux.layers.parts import PartMaskPooling, StructureCorrelation
            from faceaux.conventions import FSENET_PARTS

            self.pool = PartMaskPooling(parts=FSENET_PARTS, mask_resize="max")
            self.correlate = StructureCorrelation()
            k = len(FSENET_PARTS)
            # BatchNorm (no affine) brings the part descriptor to the embedding's scale.
            self.part_norm = nn.BatchNorm1d(k * (stage2 + 2 * (k - 1)), affine=False)
        if variant == "attributes":
            from faceaux.layers.attributes import AttributeHead

            self.attribute_head = AttributeHead(
                self.backbone.embedding_size, num_attributes, hidden_features=128
            )
        self._stage2: torch.Tensor | None = None
        self._side: torch.Tensor | None = None
        if variant in ("heatmaps", "parts"):
            self.backbone.layer2.register_forward_hook(self._stage2_hook)

    @property
    def embedding_size(self) -> int:
        extra = self.part_norm.num_features if self.variant == "parts" else 0
        return self.backbone.embedding_size + extra

    def _stage2_hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self.integration is not None:
            output = self.integration(output, self._side)
        self._stage2 = output
        return output

    def _heatmaps(self, landmarks: torch.Tensor, size: int) -> torch.Tensor:
        from faceaux.layers.heatmaps import render_heatmaps

        scale = size / self.size
        points = (landmarks[:, list(_INTERNAL_51)] + 0.5) * scale - 0.5
        return render_heatmaps(points, (size, size), sigma=max(1.0, size / 32))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch["image"]
        if self.stn is not None:
            images = self.stn(images)
        if self.stacker is not None:
            self._side = self._heatmaps(batch["landmarks"].to(images.dtype), self.size // 4)
            images = self.stacker(images, self._side)
        embedding = self.backbone(images)
        if self.pool is not None:
            masks = F.one_hot(batch["parsing"].long(), 11).permute(0, 3, 1, 2).to(images.dtype)
            parts = self.correlate(self.pool(self._stage2, masks))
            embedding = torch.cat([embedding, 0.6 * self.part_norm(parts)], 1)
        self._stage2 = self._side = None
        return embedding


def build_variant(variant: str, size: int, num_classes: int) -> tuple[DemoRecognizer, nn.Module]:
    """The recognizer of a variant and its ArcFace head (s = 32, m = 0.5).

    Examples:
        >>> model, head = build_variant("gnap", 48, num_classes=10)
        >>> model({"image": torch.rand(2, 3, 48, 48)}).shape
        torch.Size([2, 128])
    """
    from faceaux.heads.margin import ArcFace

    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, received {variant!r}")
    model = DemoRecognizer(variant, size)
    return model, ArcFace(model.embedding_size, num_classes, s=32.0, m=0.5)


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def _progress(total: int, cfg: DemoConfig, desc: str):
    if cfg.quiet:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the demo's progress bars need tqdm: pip install 'faceaux[demo]', or use --quiet"
        ) from error
    return tqdm(total=total, desc=desc, leave=False)


def _train(
    variant: str, train: Split, cfg: DemoConfig, device: torch.device
) -> tuple[DemoRecognizer, list[float], float]:
    torch.manual_seed(cfg.seed)
    model, head = build_variant(variant, cfg.size, train.num_classes)
    model.to(device)
    head.to(device)
    if variant == "stn":
        from faceaux.layers.alignment import param_groups

        groups = param_groups(model, cfg.lr)  # localisation net: lr / 100 (§4)
    else:
        groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
    groups.append({"params": list(head.parameters()), "lr": cfg.lr})
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, total // 10)
    gen = torch.Generator().manual_seed(cfg.seed)
    criterion = None
    if variant == "attributes":
        from faceaux.layers.attributes import MultiTaskLoss

        criterion = MultiTaskLoss(lambda_attr=0.1, lambda_id=1.0, attribute_loss="mse")
    losses: list[float] = []
    bar = _progress(total, cfg, f"train {variant}")
    start = time.perf_counter()
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen)
        for i in range(steps_per_epoch):
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            batch = train.batch(index)
            if torch.rand((), generator=gen) < 0.5:
                batch = _flip_batch(batch)
            batch = {k: v.to(device) for k, v in batch.items()}
            # Linear warm-up, then cosine decay.
            factor = (
                (step + 1) / warmup
                if step < warmup
                else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            )
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            embedding = model(batch)
            logits = head(embedding, batch["label"])
            if criterion is None:
                loss = F.cross_entropy(logits, batch["label"])
            else:
                prediction = model.attribute_head(embedding)
                loss = criterion(logits, batch["label"], prediction, batch["attributes"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.2f}")
    if bar is not None:
        bar.close()
    return model, losses, time.perf_counter() - start


def _evaluate(
    model: DemoRecognizer,
    test: Split,
    pairs: torch.Tensor,
    issame: torch.Tensor,
    cfg: DemoConfig,
    device: torch.device,
) -> dict[str, Any]:
    batch_size = 256
    batches = [
        test.batch(torch.arange(i, min(len(test), i + batch_size)))
        for i in range(0, len(test), batch_size)
    ]
    embeddings = extract_embeddings(
        model,
        batches,
        flip=True,
        device=device,
        progress=not cfg.quiet,
        forward=lambda m, b: m(b),
        flip_fn=_flip_batch,
    )
    return verification_metrics(pair_scores(embeddings, pairs), issame, n_folds=10)


def _loss_decreased(losses: Sequence[float]) -> bool:
    k = max(1, len(losses) // 10)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_demo(cfg: DemoConfig) -> list[dict[str, Any]]:
    """Train and evaluate every variant of ``cfg``; returns one result row per variant.

    Each row: ``variant``, ``params`` (recognizer, without the ArcFace head), ``extra_params``
    (vs the baseline's recognizer; negative when a layer replaces something bigger, as GNAP
    replaces the FC), ``train_seconds``, ``accuracy``, ``accuracy_std``, ``tar_at_far_1e-2``,
    ``eer``, ``auc``, ``first_loss``/``last_loss`` (mean of the first/last 10 % of steps),
    ``loss_decreased`` and the ROC arrays (``fpr``, ``tpr``).
    """
    device = torch.device(cfg.device)
    variants = list(cfg.variants)
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"--variants: unknown variant {v!r}; choose from {VARIANTS}")
    if cfg.data is not None:
        skipped = [v for v in variants if v in _NEEDS_GROUND_TRUTH]
        if skipped and not cfg.quiet:
            print(f"skipping {skipped}: they need synthetic ground truth (not in --data)")
        variants = [v for v in variants if v not in _NEEDS_GROUND_TRUTH]
        train, test, pairs, issame = _user_splits(cfg)
    else:
        start = time.perf_counter()
        train, test, pairs, issame = _synthetic_splits(cfg)
        if not cfg.quiet:
            n = len(train) + len(test)
            print(
                f"rendered {n} synthetic faces ({cfg.size}×{cfg.size}) in "
                f"{time.perf_counter() - start:.1f} s: {train.num_classes} training identities "
                f"({len(train)} images), {test.num_classes} test identities, {len(issame)} pairs"
            )
    baseline_params = _count(build_variant("baseline", cfg.size, 2)[0])
    rows = []
    for variant in variants:
        model, losses, seconds = _train(variant, train, cfg, device)
        metrics = _evaluate(model, test, pairs, issame, cfg, device)
        k = max(1, len(losses) // 10)
        fpr, tpr, _ = metrics["roc"]
        rows.append(
            {
                "variant": variant,
                "params": _count(model),
                "extra_params": _count(model) - baseline_params,
                "train_seconds": seconds,
                "accuracy": metrics["accuracy"],
                "accuracy_std": metrics["accuracy_std"],
                "tar_at_far_1e-2": metrics["tar_at_far"][1e-2],
                "eer": metrics["eer"],
                "auc": metrics["auc"],
                "first_loss": sum(losses[:k]) / k,
                "last_loss": sum(losses[-k:]) / k,
                "loss_decreased": _loss_decreased(losses),
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
            }
        )
        if not cfg.quiet:
            r = rows[-1]
            print(
                f"{variant}: accuracy {r['accuracy']:.4f}, TAR@FAR=1e-2 "
                f"{r['tar_at_far_1e-2']:.4f}, EER {r['eer']:.4f} ({seconds:.1f} s training)"
            )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (one row per variant).

    Examples:
        >>> row = {"variant": "baseline", "extra_params": 0, "train_seconds": 1.0,
        ...        "accuracy": 0.9, "accuracy_std": 0.01, "tar_at_far_1e-2": 0.5, "eer": 0.1}
        >>> print(format_table([row]).splitlines()[2])
        | baseline | +0 | 1.0 | 0.9000 ± 0.0100 | 0.5000 | 0.1000 |
    """
    lines = [
        "| variant | extra params | train time (s) | 10-fold accuracy | TAR@FAR=1e-2 | EER |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['extra_params']:+,} | {r['train_seconds']:.1f} | "
            f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f} | {r['tar_at_far_1e-2']:.4f} | "
            f"{r['eer']:.4f} |"
        )
    return "\n".join(lines)


def _save(rows: Sequence[dict[str, Any]], cfg: DemoConfig, table: str) -> list[Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(cfg).items() if k != "extra"}
    settings["variants"] = list(settings["variants"])
    (out / "results.json").write_text(
        json.dumps({"settings": settings, "results": list(rows)}, indent=1)
    )
    header = (
        f"# faceaux demo\n\nSettings: `{json.dumps(settings)}`\n\n"
        "Accuracy: LFW 10-fold protocol on pairs of held-out identities (mean ± std over folds). "
        "Train time: wall clock of this run.\n\n"
    )
    (out / "results.md").write_text(header + table + "\n")
    written = [out / "results.json", out / "results.md"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not cfg.quiet:
            print("matplotlib is not installed (pip install 'faceaux[demo]'): no ROC plot")
        return written
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in rows:
        ax.plot(r["fpr"], r["tpr"], label=f"{r['variant']} (AUC {r['auc']:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)
    written.append(out / "roc.png")
    return written


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux demo`` on the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "demo",
        help="train a small recognizer with and without each layer and compare them",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per variant")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and batches")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    parser.add_argument("--out", default="faceaux-demo", help="folder for results and ROC plot")
    parser.add_argument(
        "--data",
        default=None,
        help="your own set: a folder of aligned crops (one folder per identity), or an "
        "InsightFace .bin verification file (then also --train-data)",
    )
    parser.add_argument("--train-data", default=None, help="training folder when --data is .bin")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument(
        "--fast", action="store_true", help="a tiny run (about a minute on 2 CPU cores), for CI"
    )
    parser.set_defaults(handler=main)
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """A :class:`DemoConfig` from parsed ``faceaux demo`` arguments."""
    cfg = DemoConfig(**FAST) if args.fast else DemoConfig()
    cfg.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.size is not None:
        cfg.size = args.size
    cfg.seed, cfg.device, cfg.quiet = args.seed, args.device, args.quiet
    cfg.out, cfg.data, cfg.train_data = args.out, args.data, args.train_data
    if cfg.epochs < 1 or cfg.size < 32:
        raise ValueError(f"--epochs ≥ 1 and --size ≥ 32 expected, got {cfg.epochs}, {cfg.size}")
    return cfg


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run ``faceaux demo``; ``args`` is the parsed namespace or an argument list."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="faceaux")
        add_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["demo", *(args or [])])
    cfg = config_from_args(args)
    start = time.perf_counter()
    rows = run_demo(cfg)
    table = format_table(rows)
    print(table)
    if cfg.out is not None:
        written = _save(rows, cfg, table)
        if not cfg.quiet:
            print("wrote " + ", ".join(str(p) for p in written))
    if not cfg.quiet:
        print(f"total {time.perf_counter() - start:.1f} s")
    return 0
