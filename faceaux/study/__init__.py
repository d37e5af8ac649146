"""``faceaux study``: does each layer help where its paper says it does? Seeds and intervals.

For each paper, its headline comparison under the condition it targets, on synthetic faces
(:mod:`faceaux.study.experiments`): the arms train with the same data, schedule and head, with
several seeds paired across arms, and are compared on a protocol with enough pairs to resolve
TAR at FAR = 1e-3 (all cross pairs of the test set; CFP-style frontal–profile for GNAP). The
report gives per arm the mean metric over seeds and per arm the mean paired difference to the
baseline with a 95 % Student-t interval (:mod:`faceaux.study.stats`). Every number comes from
the run that writes the report.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from faceaux.study.experiments import CONDITIONS, EXPERIMENTS, Experiment, build_arm

__all__ = ["FAST", "StudyConfig", "add_parser", "estimate_seconds", "main", "run_study"]

FARS = (1e-2, 1e-3, 1e-4)
_ROC_GRID = np.logspace(-4, 0, 41)


@dataclass
class StudyConfig:
    """Settings of one study run (the command-line flags).

    Attributes:
        experiments: names from :data:`faceaux.study.experiments.EXPERIMENTS`.
        seeds: seeds per arm (paired across arms).
        seed: the first seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        threads: CPU threads (default: :func:`faceaux.demo.default_threads`).
        train_identities: training identities per seed.
        images_per_identity: training images per identity.
        test_identities: test identities per seed (8 images each).
        epochs: training epochs per arm.
        batch_size: images per step.
        lr: peak learning rate.
        clip_grad_norm: the largest global gradient norm of a training step, for every arm
            (InsightFace's value, 5). Without it the STN arms' localisation network (the paper's
            setting 3: three conv blocks, then the regressor) moved the warp off the face within
            two steps and the training batch turned constant.
        loc_lr_scale: the STN localisation network's learning rate over ``lr``. Tang et al. §4
            train at 0.01 with the localisation network 10–100× slower, i.e. at 1e-4 to 1e-3;
            the default keeps the paper's absolute 1e-4 (0.1 × 0.001). At this study's ``lr``
            over 100 (1e-3) the warp left the face within 20 steps even with clipping.
        side_identities: identities (8 images each) the side networks train on.
        side_steps: optimisation steps of each side network.
        out: folder for the report (``None``: write nothing).
        quiet: no progress bars or messages.
    """

    experiments: Sequence[str] = tuple(EXPERIMENTS)
    seeds: int = 5
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    train_identities: int = 120
    images_per_identity: int = 7
    test_identities: int = 50
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    clip_grad_norm: float | None = 5.0
    loc_lr_scale: float = 0.001
    side_identities: int = 120
    side_steps: int = 300
    out: str | None = "faceaux-study"
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


FAST: dict[str, Any] = {
    "seeds": 2,
    "train_identities": 16,
    "images_per_identity": 4,
    "test_identities": 12,
    "epochs": 1,
    "batch_size": 16,
    "side_identities": 8,
    "side_steps": 4,
}
"""The ``--fast`` settings: every experiment, arm and report section in about 2 minutes on 2 CPU
cores (for CI: it checks the machinery, its numbers mean nothing).

Shape:
    A ``dict`` of :class:`StudyConfig` fields.
"""


def _render(cfg: StudyConfig, condition: str, seed: int, part: str) -> Any:
    from faceaux.data.synthetic import SyntheticFaces

    spec = CONDITIONS[condition]
    # Identities: a different seed per (study seed, part), so train, test and side-network
    # identities never coincide and every study seed sees new faces.
    identity_seed = 1000 * seed + {"train": 1, "test": 2, "side": 3}[part]
    if part == "test":
        yaw_slots = spec.test.get("yaw_range")
        per_identity = len(yaw_slots) if isinstance(yaw_slots, list) else spec.test_images
        n, kwargs = cfg.test_identities, spec.test
    elif part == "train":
        n, per_identity, kwargs = cfg.train_identities, cfg.images_per_identity, spec.train
    else:
        n, per_identity, kwargs = cfg.side_identities, 8, spec.train
    return SyntheticFaces(
        n, per_identity, size=(spec.size, spec.size), seed=identity_seed, **kwargs
    )


def _split(data: Any) -> Any:
    from faceaux.demo.data import Split

    tensors = {
        "image": data.images,
        "label": data.labels,
        "landmarks": data.landmarks,
        "parsing": data.parsing,
        "attributes": data.attributes,
        "pose": data.poses,
    }
    return Split(tensors, data.num_identities)


def _evaluate(experiment: Experiment, embeddings: torch.Tensor, test: Any) -> dict[str, Any]:
    from faceaux.eval.protocols import all_pairs_metrics, pose_protocols, ten_fold_metrics

    labels = test.tensors["label"]
    if experiment.protocol == "frontal_profile":
        yaw = test.tensors["pose"][:, 0].float()
        both = pose_protocols(embeddings, labels, yaw, fars=FARS, n_pairs=7000)
        metrics = both["frontal_profile"]
        extra = {
            "ff_tar@1e-3": both["frontal_frontal"]["tar_at_far"][1e-3],
            "ff_accuracy": both["frontal_frontal"]["accuracy"],
        }
    else:
        metrics = all_pairs_metrics(embeddings, labels, fars=FARS)
        metrics["accuracy"] = ten_fold_metrics(embeddings, labels, n_pairs=6000)["accuracy"]
        extra = {}
    fpr, tpr, _ = metrics["roc"]
    order = np.argsort(fpr, kind="stable")
    return {
        "tar@1e-2": float(metrics["tar_at_far"][1e-2]),
        "tar@1e-3": float(metrics["tar_at_far"][1e-3]),
        "tar@1e-4": float(metrics["tar_at_far"][1e-4]),
        "eer": float(metrics["eer"]),
        "accuracy": float(metrics["accuracy"]),
        "n_genuine": int(metrics["n_genuine"]),
        "n_impostor": int(metrics["n_impostor"]),
        "roc_tpr": np.interp(_ROC_GRID, fpr[order], tpr[order]).round(5).tolist(),
        **extra,
    }


def _side_networks(cfg: StudyConfig, needs: set[str], device: torch.device, bar) -> dict:
    from faceaux.study.side_networks import train_fan, train_parser

    side: dict[str, Any] = {}
    quality: dict[str, Any] = {}
    if not needs:
        return {"networks": side, "quality": quality}
    data = _render(cfg, "pose_expression", cfg.seed, "side")
    if "fan" in needs:
        side["fan"], quality["fan"] = train_fan(
            data.images, data.landmarks, steps=cfg.side_steps, seed=cfg.seed, device=device
        )
        bar(1)
    if "parser" in needs:
        side["parser"], quality["parser"] = train_parser(
            data.images, data.parsing, steps=cfg.side_steps, seed=cfg.seed, device=device
        )
        bar(1)
    quality["images"] = len(data)
    return {"networks": side, "quality": quality}


def _summaries(experiment: Experiment, runs: dict[str, list[dict]]) -> dict[str, Any]:
    from faceaux.study.stats import paired_difference

    metric = "tar@1e-3"
    baseline = [r[metric] for r in runs[experiment.arms[0].name]]
    out = {}
    for arm in experiment.arms:
        values = [r[metric] for r in runs[arm.name]]
        summary: dict[str, Any] = {
            "label": arm.label,
            "upper_bound": arm.upper_bound,
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
            "accuracy": float(np.mean([r["accuracy"] for r in runs[arm.name]])),
            "eer": float(np.mean([r["eer"] for r in runs[arm.name]])),
            "tar@1e-4": float(np.nanmean([r["tar@1e-4"] for r in runs[arm.name]]))
            if any(math.isfinite(r["tar@1e-4"]) for r in runs[arm.name])
            else math.nan,
        }
        if arm is not experiment.arms[0]:
            summary["difference"] = paired_difference(values, baseline)
        out[arm.name] = summary
    return out


def _arm_flops(experiment: Experiment, side: dict) -> list[float]:
    """Training cost per image of each arm, in "trainable forward FLOPs": the forward FLOPs
    (counted on the meta device: nothing is computed) with a frozen side network's counted at
    a third, as it runs forward only while the rest also runs backward (about twice a forward).
    """
    from torch.utils.flop_counter import FlopCounterMode

    def forward_flops(network, *args, **kwargs) -> float:
        network.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(*args, **kwargs)
        return float(counter.get_total_flops())

    side_flops = {}
    for name, network in side.items():
        with torch.device("meta"):
            probe = torch.zeros(1, 3, network.input_size, network.input_size)
        side_flops[name] = forward_flops(network, probe)

    size = CONDITIONS[experiment.condition].size
    flops = []
    for arm in experiment.arms:
        with torch.device("meta"):
            model, _ = build_arm(arm, 8, side)
            images = torch.zeros(1, 3, size, size)
            kwargs = {}
            if arm.options.get("heatmaps") == "ground_truth":
                kwargs["landmarks"] = torch.zeros(1, 68, 2)
            if arm.options.get("parts") == "ground_truth":
                kwargs["masks"] = torch.zeros(1, 11, size, size)
        total = forward_flops(model, images, **kwargs)
        frozen = sum(
            side_flops[n] for n in ("fan", "parser") if getattr(model, n, None) is not None
        )
        flops.append(total - frozen * 2 / 3)
    return flops


def estimate_seconds(cfg: StudyConfig, device: torch.device) -> float:
    """A rough wall-time estimate made before the study starts (printed as its ETA).

    Times three training steps of the cheapest arm (the GNAP experiment's FC baseline: the plain
    network) and the rendering of a few faces, then scales the step time by each arm's forward
    FLOPs (counted on the meta device) and the planned numbers of steps and images. Side
    networks and evaluation are counted the same way (a side-network step as three forwards).
    """
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from faceaux.data.synthetic import SyntheticFaces
    from faceaux.demo.train import to_model_range
    from faceaux.models.hourglass import FAN, StackedHourGlass
    from faceaux.study.side_networks import INPUT_SIZE

    experiments = [EXPERIMENTS[name] for name in cfg.experiments]
    with torch.device("meta"):
        side = {
            "fan": FAN(2, 68, num_features=32, input_size=INPUT_SIZE).freeze(),
            "parser": StackedHourGlass(
                2, 11, num_features=32, depth=3, input_size=INPUT_SIZE
            ).freeze(),
        }
    reference = EXPERIMENTS["gnap"]
    model, head = build_arm(reference.arms[0], 8, {})
    model.to(device).train()
    head.to(device)
    images = torch.rand(cfg.batch_size, 3, 56, 56, device=device) * 2 - 1
    labels = torch.arange(cfg.batch_size, device=device) % 8
    times = []
    for _ in range(3):  # the first step pays one-time costs; the fastest of the others
        start = time.perf_counter()
        F.cross_entropy(head(model(to_model_range(images)), labels), labels).backward()
        times.append(time.perf_counter() - start)
    step = min(times[1:])
    base_flops = _arm_flops(reference, side)[0]
    steps = max(1, cfg.train_identities * cfg.images_per_identity // cfg.batch_size) * cfg.epochs
    test_images = cfg.test_identities * 8
    total = 0.0
    for experiment in experiments:
        for flops in _arm_flops(experiment, side):
            scale = flops / base_flops
            # training steps, plus embedding the test set with flips (two forwards, ~2/3 step)
            total += cfg.seeds * step * scale * (steps + test_images / cfg.batch_size)
    start = time.perf_counter()
    SyntheticFaces(1, 8, size=(64, 64), seed=0)
    per_image = (time.perf_counter() - start) / 8
    images_rendered = sum(
        cfg.seeds * (cfg.train_identities * cfg.images_per_identity + test_images)
        for name in {e.condition for e in experiments}
    )
    total += per_image * images_rendered
    for name in {n for e in experiments for n in e.needs}:
        with torch.device("meta"):
            probe = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
            network = side[name]
        network.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(probe)
        ratio = counter.get_total_flops() / base_flops
        total += cfg.side_steps * step * ratio * 32 / cfg.batch_size  # 32 images per step
    return total


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run the study; returns the results (what ``results.json`` holds).

    Keys: ``settings``, ``environment`` (machine, threads, torch, device), ``wall_seconds``,
    ``side_networks`` (their quality), and per experiment ``experiments[name]`` = ``{"runs":
    {arm: [per-seed metrics]}, "summary": {arm: mean, std, difference …}, "metric"}``.
    """
    from faceaux.demo import default_device, default_threads
    from faceaux.demo.train import Schedule, embed, fit

    unknown = [e for e in cfg.experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"experiments: unknown {unknown}; choose from {tuple(EXPERIMENTS)}")
    if isinstance(cfg.seeds, bool) or not isinstance(cfg.seeds, int) or cfg.seeds < 2:
        raise ValueError(f"seeds: expected an int ≥ 2 (paired intervals), received {cfg.seeds!r}")
    device = torch.device(default_device() if cfg.device == "auto" else cfg.device)
    torch.set_num_threads(cfg.threads or default_threads())
    experiments = [EXPERIMENTS[name] for name in cfg.experiments]
    needs = {n for e in experiments for n in e.needs}
    total_runs = cfg.seeds * sum(len(e.arms) for e in experiments)
    start = time.perf_counter()
    if not cfg.quiet:
        eta = estimate_seconds(cfg, device)
        print(
            f"faceaux study: {len(experiments)} experiments, {total_runs} training runs "
            f"({cfg.seeds} seeds), {cfg.threads or default_threads()} threads on {device}; "
            f"estimated {eta / 60:.0f} min (about {eta:.0f} s) before evaluation",
            flush=True,
        )
    bar = _Progress(total_runs + len(needs), cfg.quiet)
    side = _side_networks(cfg, needs, device, bar.update)
    runs: dict[str, dict[str, list[dict]]] = {
        e.name: {a.name: [] for a in e.arms} for e in experiments
    }
    for index in range(cfg.seeds):
        seed = cfg.seed + index
        splits: dict[str, tuple[Any, Any]] = {}
        for experiment in experiments:
            if experiment.condition not in splits:
                splits[experiment.condition] = (
                    _split(_render(cfg, experiment.condition, seed, "train")),
                    _split(_render(cfg, experiment.condition, seed, "test")),
                )
            train, test = splits[experiment.condition]
            schedule = Schedule(
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                attribute_weight=experiment.attribute_weight,
                clip_grad_norm=cfg.clip_grad_norm,
                loc_lr_scale=cfg.loc_lr_scale,
            )
            for arm in experiment.arms:
                torch.manual_seed(seed)  # the same initialisation stream for every arm
                model, head = build_arm(arm, train.num_classes, side["networks"])
                history = fit(model, head, train, schedule, device=device, seed=seed)
                embeddings = embed(model, test, device=device)
                result = _evaluate(experiment, embeddings, test)
                result["seed"] = seed
                result["train_seconds"] = history["seconds"]
                result["final_loss"] = float(np.mean(history["losses"][-10:]))
                runs[experiment.name][arm.name].append(result)
                bar.update(
                    1,
                    f"{experiment.name}/{arm.name} seed {seed}: TAR@1e-3 {result['tar@1e-3']:.3f}",
                )
    bar.close()
    results: dict[str, Any] = {
        "settings": {**asdict(cfg), "experiments": list(cfg.experiments)},
        "environment": _environment(device, cfg),
        "side_networks": side["quality"],
        "experiments": {},
    }
    for experiment in experiments:
        results["experiments"][experiment.name] = {
            "metric": "frontal-profile TAR@FAR=1e-3"
            if experiment.protocol == "frontal_profile"
            else "TAR@FAR=1e-3 (all pairs)",
            "condition": CONDITIONS[experiment.condition].description,
            "runs": runs[experiment.name],
            "summary": _summaries(experiment, runs[experiment.name]),
        }
    results["wall_seconds"] = time.perf_counter() - start
    return results


def _environment(device: torch.device, cfg: StudyConfig) -> dict[str, Any]:
    import os

    from faceaux import __version__
    from faceaux.demo import default_threads

    name = platform.processor() or platform.machine()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    return {
        "device": str(device),
        "machine": name,
        "cpu_count": os.cpu_count(),
        "threads": cfg.threads or default_threads(),
        "torch": torch.__version__,
        "faceaux": __version__,
        "python": platform.python_version(),
    }


class _Progress:
    """A tqdm bar over the training runs (with tqdm's ETA), or nothing when quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        if quiet:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the study's progress bar needs tqdm: pip install 'faceaux[demo]', or --quiet"
            ) from error
        self.bar = tqdm(total=total, desc="study", unit="run")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def update(self, n: int, text: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if text:
                self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux study`` on the CLI's sub-parsers."""
    from faceaux.demo import add_run_arguments

    parser = subparsers.add_parser(
        "study",
        help="test each paper's claim on synthetic faces, with seeds and confidence intervals",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    defaults = StudyConfig()
    parser.add_argument(
        "--experiments",
        default=",".join(EXPERIMENTS),
        help=f"comma-separated subset (default: {','.join(EXPERIMENTS)})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds per arm, at least 2 (default: {defaults.seeds}; {FAST['seeds']} with --fast)",
    )
    add_run_arguments(parser, "faceaux-study", "the first seed")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a tiny run of every experiment (about 2 minutes on 2 CPU cores) for CI; its "
        "numbers mean nothing",
    )
    parser.set_defaults(handler=main)
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run ``faceaux study``; ``args`` is the parsed namespace or an argument list."""
    from faceaux.study.report import write_report

    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="faceaux")
        add_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["study", *(args or [])])
    cfg = StudyConfig(**FAST) if args.fast else StudyConfig()
    cfg.experiments = tuple(e.strip() for e in args.experiments.split(",") if e.strip())
    if args.seeds is not None:
        cfg.seeds = args.seeds
    cfg.seed, cfg.device, cfg.threads = args.seed, args.device, args.threads
    cfg.out, cfg.quiet = args.out, args.quiet
    results = run_study(cfg)
    if cfg.out is not None:
        written = write_report(results, cfg.out)
        if not cfg.quiet:
            print("wrote " + ", ".join(str(p) for p in written))
    if not cfg.quiet:
        print(f"total {results['wall_seconds']:.0f} s")
    return 0
