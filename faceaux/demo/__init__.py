"""``faceaux demo``: train a small recognizer with and without each layer, then verify faces.

On the embedded :class:`~faceaux.data.SyntheticFaces` set (or on your own aligned crops with
``--data``), the demo trains the same tiny IResNet with ArcFace several times — the plain
baseline, then with one of the library's layers bolted on — and evaluates each on pairs of
identities never seen in training with the LFW 10-fold protocol. Every variant is a
:class:`faceaux.FaceRecognizer` configuration; every figure comes from the training it just did,
with one seed for all variants. It is the quick tour; ``faceaux study`` tests each paper's claim
with several seeds and confidence intervals.

The network is ``iresnet_nano`` at 56×56 with a stride-8 body (``strides=(2, 2, 2, 1)``), so
its last map is 7×7 — the spatial scale of the papers' 112×112 / stride-16 networks, where
GNAP's pooling is meaningful.

Variants (``--variants``):

- ``baseline``: the network with its BN → dropout → FC → BN output block + :class:`ArcFace`.
- ``gnap``: :class:`GNAP` replaces the output block (GNAP §3.2).
- ``stn``: :class:`SpatialTransformerAlign` (projective) in front, its localisation network at
  1/100 of the learning rate (:func:`faceaux.param_groups`' default; stn-alignment-learning §4
  gives 10–100×).
- ``heatmaps``: ground-truth heatmaps of the set's 51 internal landmarks stacked with the image
  (:class:`HeatmapStacker`, FAN-Face eq. 1, "H2"); they stand in for a FAN's, so no landmark
  network is needed, at test time either.
- ``parts``: :class:`PartMaskPooling` of the stage-2 features under the ground-truth parsing of
  FSENet's six parts → :class:`StructureCorrelation` → ``[g/‖g‖, 0.6·l/‖l‖]`` (FSENet eqs. 3, 6, 7,
  Table 8's 1 : 0.6).
- ``attributes``: :class:`AttributeHead` on the embedding, trained on the set's seven Table-1
  attributes with MSE and λ1 = 0.1 (multi-task paper eq. 2). Like every variant it trains with
  ArcFace, not the paper's softmax, so that the rows differ only by the layer.

The ground-truth side inputs (landmarks, parsing, attributes) exist only on the synthetic set,
so with ``--data`` only ``baseline``, ``gnap`` and ``stn`` run.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from faceaux.conventions import FSENET_PARTS, INTERNAL_51
from faceaux.demo.data import Split, folder_splits, synthetic_splits
from faceaux.demo.report import format_table, save_report
from faceaux.demo.train import Schedule, embed, fit

__all__ = [
    "FAST",
    "VARIANTS",
    "DemoConfig",
    "add_parser",
    "add_run_arguments",
    "build_variant",
    "default_device",
    "default_threads",
    "main",
    "run_demo",
]

VARIANTS: tuple[str, ...] = ("baseline", "gnap", "stn", "heatmaps", "parts", "attributes")
"""The demo's variants, in the order they run.

Shape:
    A tuple of ``str``.
"""

_NEEDS_GROUND_TRUTH = {"heatmaps": "landmarks", "parts": "parsing", "attributes": "attributes"}


def default_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_threads() -> int:
    """CPU threads for the demo: the cores this process may use, at most 8.

    PyTorch's own default is every physical core; on a machine shared with other work that
    oversubscribes the cores (the demo ran 10× slower on a busy 2-core machine), so the demo
    uses the cores it is allowed to (``os.sched_getaffinity``) and never more than 8, beyond
    which these small networks gain nothing.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))


@dataclass
class DemoConfig:
    """Settings of one demo run (the command-line flags)."""

    variants: Sequence[str] = VARIANTS
    epochs: int = 5
    seed: int = 0
    device: str = "auto"
    size: int = 56
    train_identities: int = 150
    test_identities: int = 100
    images_per_identity: int = 12
    n_pairs: int = 3000
    batch_size: int = 64
    lr: float = 0.1
    threads: int | None = None
    quiet: bool = False
    out: str | None = "faceaux-demo"
    data: str | None = None
    train_data: str | None = None


FAST: dict[str, Any] = {
    "epochs": 3,
    "train_identities": 40,
    "test_identities": 30,
    "images_per_identity": 8,
    "n_pairs": 600,
    "batch_size": 32,
}
"""The ``--fast`` settings (about a minute on 2 CPU cores), for CI.

Shape:
    A ``dict`` of :class:`DemoConfig` fields.
"""


def build_variant(variant: str, size: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """The recognizer of a variant (a :class:`faceaux.FaceRecognizer`) and its ArcFace head.

    Args:
        variant: one of :data:`VARIANTS`.
        size: image side; the stride-8 network's last map is ``size / 8``.
        num_classes: training identities.

    Shape:
        The recognizer maps ``(B, 3, size, size)`` in [−1, 1] (plus ground-truth side inputs for
        ``heatmaps`` and ``parts``) to ``(B, D)``; the head maps ``(B, D)`` to ``(B, num_classes)``.

    Examples:
        >>> model, head = build_variant("gnap", 56, num_classes=10)
        >>> model(torch.rand(2, 3, 56, 56) * 2 - 1).shape
        torch.Size([2, 128])
    """
    from faceaux.heads.margin import ArcFace
    from faceaux.layers.alignment import SpatialTransformerAlign
    from faceaux.layers.attributes import AttributeHead
    from faceaux.layers.heatmaps import HeatmapStacker
    from faceaux.layers.parts import PartMaskPooling, StructureCorrelation
    from faceaux.models.recognizer import FaceRecognizer
    from faceaux.models.registry import create_model

    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, received {variant!r}")
    backbone = create_model(
        "iresnet_nano",
        input_size=(size, size),
        strides=(2, 2, 2, 1),
        pooling="gnap" if variant == "gnap" else "fc",
    )
    parts = {}
    if variant == "parts":
        parts = {
            "parts": PartMaskPooling(parts=FSENET_PARTS, mask_resize="max"),
            "structure": StructureCorrelation(),
            "part_stage": "layer2",
        }
    model = FaceRecognizer(
        backbone,
        align=(
            SpatialTransformerAlign(
                "projective",
                output_size=(size, size),
                loc_input_size=(32, 32),
                loc_channels=(16, 32, 64),
                loc_hidden=64,
                padding_mode="border",
            )
            if variant == "stn"
            else None
        ),
        heatmaps=HeatmapStacker(INTERNAL_51, normalize=None) if variant == "heatmaps" else None,
        landmark_sigma=max(1.0, size / 32),
        attributes=(
            AttributeHead(backbone.embedding_size, 7, hidden_features=128)
            if variant == "attributes"
            else None
        ),
        **parts,
    )
    return model, ArcFace(model.embedding_size, num_classes, s=32.0, m=0.5)


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


def _loss_decreased(losses: Sequence[float]) -> bool:
    k = max(1, len(losses) // 10)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _splits(cfg: DemoConfig) -> tuple[Split, Split, torch.Tensor, torch.Tensor]:
    test_fraction = cfg.test_identities / (cfg.train_identities + cfg.test_identities)
    if cfg.data is not None:
        size = (cfg.size, cfg.size)
        return folder_splits(cfg.data, cfg.train_data, size, test_fraction, cfg.seed, cfg.n_pairs)
    from faceaux.data.synthetic import SyntheticFaces

    start = time.perf_counter()
    n_ids = cfg.train_identities + cfg.test_identities
    data = SyntheticFaces(n_ids, cfg.images_per_identity, size=(cfg.size, cfg.size), seed=cfg.seed)
    splits = synthetic_splits(data, test_fraction, cfg.seed, cfg.n_pairs)
    if not cfg.quiet:
        print(
            f"rendered {len(data)} synthetic faces ({cfg.size}×{cfg.size}) in "
            f"{time.perf_counter() - start:.1f} s: {splits[0].num_classes} training identities "
            f"({len(splits[0])} images), {splits[1].num_classes} test identities, "
            f"{len(splits[3])} pairs"
        )
    return splits


def run_demo(cfg: DemoConfig) -> list[dict[str, Any]]:
    """Train and evaluate every variant of ``cfg``; returns one result row per variant.

    Each row: ``variant``, ``final_map`` (the last feature map's size), ``params`` (trainable
    parameters of the recognizer, without the ArcFace head), ``extra_params`` (vs the
    baseline's; negative when a layer replaces something bigger, as GNAP replaces the FC),
    ``train_seconds``, ``accuracy``, ``accuracy_std``, ``tar_at_far_1e-2``, ``eer``, ``auc``,
    ``first_loss``/``last_loss`` (mean of the first/last 10 % of steps), ``loss_decreased``
    and the ROC arrays (``fpr``, ``tpr``).
    """
    from faceaux.eval.verification import pair_scores, verification_metrics

    device = torch.device(default_device() if cfg.device == "auto" else cfg.device)
    torch.set_num_threads(cfg.threads or default_threads())
    variants = list(cfg.variants)
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"--variants: unknown variant {v!r}; choose from {VARIANTS}")
    if cfg.data is not None:
        skipped = [v for v in variants if v in _NEEDS_GROUND_TRUTH]
        if skipped and not cfg.quiet:
            print(f"skipping {skipped}: they need synthetic ground truth (not in --data)")
        variants = [v for v in variants if v not in _NEEDS_GROUND_TRUTH]
    train, test, pairs, issame = _splits(cfg)
    schedule = Schedule(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
    baseline_params = _count(build_variant("baseline", cfg.size, 2)[0])
    steps = max(1, len(train) // cfg.batch_size) * cfg.epochs
    rows = []
    start = time.perf_counter()
    for number, variant in enumerate(variants):
        torch.manual_seed(cfg.seed)
        model, head = build_variant(variant, cfg.size, train.num_classes)
        bar = _progress(steps, cfg, f"train {variant} ({number + 1}/{len(variants)})")

        def progress(step: int, loss: float, bar=bar) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.2f}")

        history = fit(model, head, train, schedule, device=device, seed=cfg.seed, progress=progress)
        if bar is not None:
            bar.close()
        embeddings = embed(model, test, device=device)
        metrics = verification_metrics(pair_scores(embeddings, pairs), issame, n_folds=10)
        losses = history["losses"]
        k = max(1, len(losses) // 10)
        fpr, tpr, _ = metrics["roc"]
        final = model.backbone.feature_size
        rows.append(
            {
                "variant": variant,
                "final_map": f"{final[0]}×{final[1]}",
                "params": _count(model),
                "extra_params": _count(model) - baseline_params,
                "train_seconds": history["seconds"],
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
            elapsed = time.perf_counter() - start
            left = elapsed / (number + 1) * (len(variants) - number - 1)
            print(
                f"{variant}: accuracy {r['accuracy']:.4f}, TAR@FAR=1e-2 "
                f"{r['tar_at_far_1e-2']:.4f}, EER {r['eer']:.4f} ({r['train_seconds']:.1f} s "
                f"training; about {left:.0f} s left)"
            )
    return rows


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux demo`` on the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "demo",
        help="train a small recognizer with and without each layer and compare them",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    defaults = DemoConfig()
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of the variants (default: {','.join(VARIANTS)})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs per variant (default: {defaults.epochs}; {FAST['epochs']} with "
        "--fast)",
    )
    add_run_arguments(parser, "faceaux-demo", "seed for data, init and batches")
    parser.add_argument(
        "--data",
        default=None,
        help="your own set: a folder of aligned crops (one folder per identity), or an "
        "InsightFace .bin verification file (then also --train-data) (default: none, the "
        "synthetic faces)",
    )
    parser.add_argument(
        "--train-data",
        default=None,
        help="training folder when --data is a .bin file (default: none)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=defaults.size,
        help=f"image side in pixels, at least 32 (default: {defaults.size})",
    )
    parser.add_argument(
        "--fast", action="store_true", help="a tiny run (about a minute on 2 CPU cores), for CI"
    )
    parser.set_defaults(handler=main)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, out: str, seed_help: str) -> None:
    """The options ``faceaux demo`` and ``faceaux study`` share: ``--seed``, ``--device``,
    ``--threads``, ``--quiet`` and ``--out`` (default ``out``)."""
    parser.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default: 0)")
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: cpu, cuda, or auto (default: auto, cuda when available)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: the cores this process may use, at most 8)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    parser.add_argument("--out", default=out, help=f"folder for the results (default: {out})")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """A :class:`DemoConfig` from parsed ``faceaux demo`` arguments."""
    cfg = DemoConfig(**FAST) if args.fast else DemoConfig()
    cfg.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if args.epochs is not None:
        cfg.epochs = args.epochs
    cfg.size = args.size
    cfg.seed, cfg.device, cfg.quiet = args.seed, args.device, args.quiet
    cfg.out, cfg.data, cfg.train_data = args.out, args.data, args.train_data
    cfg.threads = args.threads
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
        settings = {**asdict(cfg), "variants": list(cfg.variants)}
        written = save_report(rows, settings, table, cfg.out)
        if not cfg.quiet:
            print("wrote " + ", ".join(str(p) for p in written))
    if not cfg.quiet:
        print(f"total {time.perf_counter() - start:.1f} s")
    return 0
