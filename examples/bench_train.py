"""Training throughput (samples/s) of every registered model next to its plain baseline (a
benchmark, not a test). Run: ``python examples/bench_train.py [--batch 16] [--small]``.

One training step as ``faceaux train`` takes it, in one process, on random images already in
memory (so the figure is the model's compute, not data loading): images normalised, forward,
Partial FC (ArcFace margin, 1,000 classes, sample rate 1), backward, gradient clipping, SGD with
momentum. One untimed warm-up step per model, then ``--rounds`` rounds that time ``--steps``
steps of every model in turn (so a change of machine load hits all models alike); samples/s =
batch × steps / time, the median round. Frozen side networks (FAN, the parsing network) are
built with random weights (timing only).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import faceaux
from faceaux import PartialFC
from faceaux.models.registry import get_model_cfg


def build(name: str, small: bool):
    kwargs = get_model_cfg(name)["small"] if small else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "side network built with random weights"
        model = faceaux.create_model(name, **kwargs)
    cfg = model.pretrained_cfg
    head = PartialFC(cfg["embedding_size"], 1000)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model.train(), head, optimizer, cfg


def step(model, head, optimizer, cfg, images, labels) -> None:
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    loss = head(model((images - mean) / std), labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 5.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default: 3)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (default: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--small", action="store_true", help="the models' small configurations")
    parser.add_argument("--models", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = [n for n in args.models.split(",") if n] or faceaux.list_models()
    setups, data = {}, {}
    for name in names:
        setups[name] = build(name, args.small)
        cfg = setups[name][3]
        data[name] = (
            torch.rand(args.batch, *cfg["input_size"]),
            torch.randint(0, 1000, (args.batch,)),
        )
        step(*setups[name], *data[name])  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):  # interleaved: a change of machine load hits every model
        for name in names:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*setups[name], *data[name])
            rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
    print(
        f"batch {args.batch}, {args.steps} steps x {args.rounds} round(s), {args.threads} "
        f"threads, {'small' if args.small else 'full'} configurations, torch {torch.__version__}"
    )
    print("| model | baseline | samples/s | vs baseline |\n|---|---|---|---|")
    for name in names:
        rate = statistics.median(rates[name])
        baseline = get_model_cfg(name)["baseline"]
        ratio = ""
        if baseline in rates:
            ratio = f"{rate / statistics.median(rates[baseline]):.2f}"
        print(f"| {name} | {baseline or ''} | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
