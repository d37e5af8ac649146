"""``faceaux eval``: a model on IJB-B/C (1:1 and 1:N) and on InsightFace ``.bin`` sets.

Prints tables like InsightFace's (TAR at FAR 1e-6 … 1e-1 for IJB; accuracy ± std for each
``.bin``) and optionally writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from faceaux.export import add_model_arguments, build_model

__all__ = ["add_parser", "format_ijb_table"]


def _percent(value: float) -> str:
    return "   -  " if math.isnan(value) else f"{100 * value:6.2f}"


def format_ijb_table(name: str, result: dict[str, Any]) -> str:
    """The IJB result as text tables (TAR@FAR in %; rank-k and TPIR@FPIR when 1:N ran).

    Shape:
        No tensors: a multi-line ``str``.
    """
    fars = list(result["tar_at_far"])
    lines = [
        f"{result['dataset']} 1:1 verification: {result['num_pairs']} template pairs, "
        f"{result['num_templates']} templates, {result['num_images']} images (TAR % at FAR)",
        f"{'model':<24}" + "".join(f"{far:>8.0e}" for far in fars) + f"{'AUC':>8}",
        f"{name:<24}"
        + "".join(f"{_percent(result['tar_at_far'][far]):>8}" for far in fars)
        + f"{_percent(result['auc']):>8}",
    ]
    ident = result.get("identification")
    if ident is not None:
        fpirs = list(ident["tpir_at_fpir"])
        lines += [
            f"{result['dataset']} 1:N identification (mixed probes, mean of both galleries, %)",
            f"{'model':<24}{'rank-1':>8}{'rank-5':>8}{'rank-10':>8}"
            + "".join(f"{'TPIR@' + format(f, '.0e'):>14}" for f in fpirs),
            f"{name:<24}"
            + "".join(f"{_percent(ident['rank'][k]):>8}" for k in (1, 5, 10))
            + "".join(f"{_percent(ident['tpir_at_fpir'][f]):>14}" for f in fpirs),
        ]
    return "\n".join(lines)


def evaluate_bins(
    model: torch.nn.Module, paths: list[str], batch_size: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Accuracy (LFW 10-fold protocol) and TAR@FAR of the model on each ``.bin`` set."""
    from faceaux.data.verification_bin import load_verification_bin
    from faceaux.eval.ijb import _model_io
    from faceaux.eval.verification import extract_embeddings, pair_scores, verification_metrics

    size, mean, std = _model_io(model)
    mean, std = mean.to(device), std.to(device)
    results = {}
    for path in paths:
        images, issame = load_verification_bin(path, image_size=size)
        batches = (
            ((images[i : i + batch_size].to(device).float() / 255) - mean) / std
            for i in range(0, images.shape[0], batch_size)
        )
        embeddings = extract_embeddings(model, batches, device=device, progress=False)
        pairs = torch.arange(embeddings.shape[0]).view(-1, 2)
        metrics = verification_metrics(pair_scores(embeddings, pairs), issame)
        results[Path(path).stem] = {
            "accuracy": metrics["accuracy"],
            "accuracy_std": metrics["accuracy_std"],
            "eer": metrics["eer"],
            "tar_at_far": {str(k): v for k, v in metrics["tar_at_far"].items()},
        }
    return results


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on IJB-B/C and InsightFace .bin verification sets",
        description=(
            "Evaluate a registered model (optionally with a checkpoint) on an IJB-B/C folder "
            "(meta/ + loose_crop/: 1:1 TAR@FAR, and 1:N when the gallery/probe files are there) "
            "and/or InsightFace .bin verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin)."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--ijb", metavar="ROOT", default=None, help="IJB folder (default: none)")
    parser.add_argument(
        "--dataset", choices=("IJBC", "IJBB"), default="IJBC", help="IJB set (default: IJBC)"
    )
    parser.add_argument(
        "--bin",
        default="",
        metavar="A.bin,B.bin",
        help="comma-separated .bin verification sets (default: none)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="images per batch (default: 128)"
    )
    parser.add_argument(
        "--num-workers", type=int, default=2, help="IJB image-reading workers (default: 2)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda when available), cpu or cuda (default: auto)"
    )
    parser.add_argument("--no-flip", action="store_true", help="no flip fusion (default: flip)")
    parser.add_argument(
        "--no-detector-score",
        action="store_true",
        help="do not weight IJB images by the detector score (default: weight)",
    )
    parser.add_argument(
        "--normalize-images",
        action="store_true",
        help="L2-normalise IJB image embeddings before pooling (default: keep the norms, as "
        "InsightFace)",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also write the figures to this JSON file (default: none, print only)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the tables, optionally write JSON; returns the exit status."""
    from faceaux.eval.ijb import evaluate_ijb

    paths = [p.strip() for p in args.bin.split(",") if p.strip()]
    if args.ijb is None and not paths:
        raise SystemExit("faceaux eval: give --ijb ROOT and/or --bin A.bin,B.bin")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    model = build_model(args.model, args.checkpoint, args.model_kwargs).to(device).eval()
    name = Path(args.checkpoint).parent.name if args.checkpoint else args.model
    report: dict[str, Any] = {"model": args.model, "checkpoint": args.checkpoint}
    if args.ijb is not None:
        result = evaluate_ijb(
            model,
            args.ijb,
            dataset=args.dataset,
            flip=not args.no_flip,
            use_detector_score=not args.no_detector_score,
            use_norm_score=not args.normalize_images,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
        )
        print(format_ijb_table(name, result))
        report["ijb"] = {
            "dataset": result["dataset"],
            "tar_at_far": {str(k): v for k, v in result["tar_at_far"].items()},
            "auc": result["auc"],
        }
        if "identification" in result:
            ident = result["identification"]
            report["ijb"]["rank"] = {str(k): v for k, v in ident["rank"].items()}
            report["ijb"]["tpir_at_fpir"] = {str(k): v for k, v in ident["tpir_at_fpir"].items()}
    if paths:
        bins = evaluate_bins(model, paths, args.batch_size, device)
        print(f"{'set':<16}{'accuracy %':>12}{'± std':>8}")
        for set_name, metrics in bins.items():
            print(
                f"{set_name:<16}{100 * metrics['accuracy']:>12.2f}"
                f"{100 * metrics['accuracy_std']:>8.2f}"
            )
        report["bin"] = bins
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
