"""The training loop behind ``faceaux train``: one code path for one process and for torchrun.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is PyTorch's own
(``torch.distributed``: NCCL on GPUs, gloo on CPUs), the recognizer is wrapped in
``DistributedDataParallel`` and the classifier is a :class:`~faceaux.PartialFC` sharded over the
ranks (or, with ``head = "dense"``, a margin head replicated inside the DDP module). One
optimiser step:

1. every rank reads its share of ``grad_accum`` micro-batches (the global order comes from
   ``(seed, epoch)`` alone, see :class:`StepBatchSampler`), normalises them with the model's
   ``mean``/``std`` and runs forward/backward under autocast (bf16, or fp16 with a gradient
   scaler whose inf check is all-reduced over the ranks);
2. the backbone's gradient norm is clipped (it is the same on every rank after DDP's all-reduce;
   the sharded centres are not clipped — each rank would see a different norm);
3. the optimiser and the polynomial-decay-with-warm-up schedule step.

Failures that could strike one rank only (a missing file, a corrupt record) are agreed on with
an all-reduce before the next collective, so every rank raises instead of waiting for a peer
that has already died (see :func:`raise_together`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import os
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from faceaux.heads.margin import CombinedMargin, margin_logits
from faceaux.heads.partial_fc import PartialFC
from faceaux.train import checkpoint as ckpt
from faceaux.train.config import TrainConfig

__all__ = [
    "StepBatchSampler",
    "enable_gradient_checkpointing",
    "polynomial_warmup",
    "raise_together",
    "train",
]

#: With fp16, the run stops after this many consecutive steps whose loss is not finite (the
#: scaler skips such steps and lowers its scale; this many in a row means the weights diverged).
MAX_NONFINITE_STEPS = 20


# -- processes --------------------------------------------------------------------------------


@dataclass
class _Processes:
    rank: int
    world_size: int
    device: torch.device
    distributed: bool
    initialized_here: bool

    @property
    def comm_device(self) -> torch.device:
        backend = dist.get_backend() if self.distributed else "gloo"
        return self.device if backend == "nccl" else torch.device("cpu")


def _start_processes(config: TrainConfig) -> _Processes:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for, but torch.cuda.is_available() is False")
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = config.backend if config.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise ValueError("backend: 'nccl' needs device 'cuda'; use gloo on the CPU")
    initialized_here = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.dist_timeout))
        initialized_here = True
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    return _Processes(rank, world_size, device, distributed, initialized_here)


def raise_together(failure: BaseException | None, what: str, processes: _Processes) -> None:
    """Make every rank raise when any rank failed at ``what`` (one all-reduce of a flag).

    A rank that failed re-raises its own exception; the others raise ``RuntimeError`` naming
    the failed rank. Without torch.distributed it just re-raises ``failure``.
    """
    failed_rank = -1 if failure is None else processes.rank
    if processes.distributed:
        flag = torch.tensor([failed_rank + 1], device=processes.comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        failed_rank = int(flag.item()) - 1
    if failure is not None:
        raise failure
    if failed_rank >= 0:
        raise RuntimeError(f"{what} failed on rank {failed_rank} (its error is in its log)")


@contextlib.contextmanager
def _together(what: str, processes: _Processes) -> Iterator[None]:
    failure = None
    try:
        yield
    except Exception as error:
        failure = error
    raise_together(failure, what, processes)


# -- data -------------------------------------------------------------------------------------


class _FlippedSamples(Dataset):
    """Reads ``(index, flip)`` items: the sample's image (mirrored if asked) and label."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        index, flip = item
        sample = self.dataset[index]
        image = sample["image"].flip(-1) if flip else sample["image"]
        return image, torch.as_tensor(sample["label"], dtype=torch.long)


class StepBatchSampler(Sampler):
    """This rank's micro-batches for optimiser steps ``start_step … total_steps − 1``.

    Epoch ``e`` visits the samples in the order ``randperm(N)`` drawn from ``(seed, e)``, and
    each sample's flip is drawn from the same generator; step ``s`` of the epoch takes the
    ``batch_size`` samples at ``s · batch_size`` of that order (the last incomplete batch of an
    epoch is dropped), split into ``grad_accum`` micro-batches, each split into ``world_size``
    equal parts, of which rank ``r`` reads part ``r``. The global order thus depends on
    ``(seed, batch_size, grad_accum)`` only — not on the world size — and a resumed run starts
    exactly where the step count says.

    Args:
        num_samples: N.
        batch_size: global samples per optimiser step.
        grad_accum: micro-batches per step.
        world_size: processes.
        rank: this process.
        seed: the run's seed.
        flip: draw random horizontal flips (else none).
        start_step: first step to yield.
        total_steps: one past the last step.

    Shape:
        Yields lists of ``(sample index, flip)`` of length ``batch_size / (world_size ·
        grad_accum)``.

    Examples:
        >>> two = [StepBatchSampler(8, 4, 1, 2, r, seed=0, flip=False, start_step=0,
        ...                         total_steps=2) for r in range(2)]
        >>> one = StepBatchSampler(8, 4, 1, 1, 0, seed=0, flip=False, start_step=0,
        ...                        total_steps=2)
        >>> [a + b for a, b in zip(*two)] == list(one)
        True
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        grad_accum: int,
        world_size: int,
        rank: int,
        seed: int,
        flip: bool,
        start_step: int,
        total_steps: int,
    ) -> None:
        self.num_samples, self.batch_size, self.grad_accum = num_samples, batch_size, grad_accum
        self.world_size, self.rank, self.seed, self.flip = world_size, rank, seed, flip
        self.start_step, self.total_steps = start_step, total_steps
        self.steps_per_epoch = num_samples // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size: expected at most the {num_samples} samples of the data, received "
                f"{batch_size}"
            )
        if batch_size % (grad_accum * world_size):
            raise ValueError(
                f"batch_size: expected a multiple of grad_accum × world_size = "
                f"{grad_accum * world_size}, received {batch_size}"
            )
        self.micro = batch_size // grad_accum
        self.per_rank = self.micro // world_size

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order (N,), flips (N,) bool by sample index)`` of ``epoch``."""
        generator = torch.Generator().manual_seed(ckpt.derived_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=generator)
        flips = torch.rand(self.num_samples, generator=generator) < 0.5
        return order, flips & self.flip

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        epoch_cached, order, flips = -1, None, None
        for step in range(self.start_step, self.total_steps):
            epoch, within = divmod(step, self.steps_per_epoch)
            if epoch != epoch_cached:
                order, flips = self.epoch_order(epoch)
                epoch_cached = epoch
            for micro in range(self.grad_accum):
                start = within * self.batch_size + micro * self.micro + self.rank * self.per_rank
                indices = order[start : start + self.per_rank]
                yield list(zip(indices.tolist(), flips[indices].tolist(), strict=True))


def _open_data(config: TrainConfig, size: tuple[int, int]) -> tuple[Dataset, int]:
    from faceaux.data.folders import ImageFolderFaces
    from faceaux.data.recordio import RecordFaces, _paths

    if not config.data:
        raise ValueError("data: expected the training set (a .rec file, prefix or folder)")
    kind = config.data_format
    if kind == "auto":
        rec, idx = _paths(config.data)
        kind = "record" if rec.is_file() and idx.is_file() else "folder"
    if kind == "record":
        dataset = RecordFaces(config.data, size=size)
        num_classes = config.num_classes or dataset.num_classes
    else:
        dataset = ImageFolderFaces(config.data, size=size)
        num_classes = config.num_classes or len(dataset.classes)
    return dataset, num_classes


# -- model ------------------------------------------------------------------------------------


class _Replicated(nn.Module):
    """What DDP replicates: the backbone and, with ``head = "dense"``, the margin head + loss."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = self.backbone(images)
        if self.head is None:
            return embeddings
        return F.cross_entropy(self.head(embeddings, labels).float(), labels)


def _checkpointed_forward(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute every block of ``model`` in the backward pass instead of storing activations.

    Uses the model's own ``set_grad_checkpointing(True)`` when it has one (timm's convention);
    otherwise the blocks named in its stage contract (``feature_info[i]["blocks"]``, or the
    stages themselves) get a forward wrapped in ``torch.utils.checkpoint.checkpoint``
    (non-reentrant). State-dict keys do not change.

    Returns:
        The number of modules that are now recomputed (``-1`` when the model did it itself).

    Raises:
        ValueError: the model has neither.

    Shape:
        No tensors: changes ``model`` in place.

    Examples:
        >>> import faceaux
        >>> model = faceaux.create_model("iresnet_nano", embedding_size=8)
        >>> enable_gradient_checkpointing(model), model.grad_checkpointing  # timm's switch
        (-1, True)
    """
    if callable(getattr(model, "set_grad_checkpointing", None)):
        model.set_grad_checkpointing(True)
        return -1
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(
            f"grad_checkpointing: {type(model).__name__} has neither set_grad_checkpointing() "
            "nor a feature_info stage list to find its blocks"
        )
    names = [name for stage in info for name in stage.get("blocks", ())]
    names = names or [stage["module"] for stage in info]
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        module.forward = functools.partial(
            _checkpointed_forward, type(module).forward.__get__(module)
        )
    return len(names)


def polynomial_warmup(step: int, warmup_steps: int, total_steps: int, power: float) -> float:
    """The learning-rate factor at ``step``: linear warm-up, then polynomial decay to 0.

    ``(step + 1) / warmup_steps`` during the warm-up, then ``(1 − (step − warmup_steps) /
    (total_steps − warmup_steps)) ** power`` (InsightFace's ``PolyScheduler``).

    Shape:
        No tensors: a float in [0, 1].

    Examples:
        >>> [round(polynomial_warmup(s, 2, 6, 2.0), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.562, 0.25, 0.062]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(total_steps - warmup_steps, 1)
    return max(0.0, 1.0 - (step - warmup_steps) / remaining) ** power


# -- logging ----------------------------------------------------------------------------------


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


class _Log:
    """Rank 0's outputs: log.jsonl, an optional tqdm bar, optional TensorBoard scalars."""

    def __init__(self, config: TrainConfig, start: int, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = self.writer = None
        if not enabled:
            return
        output = Path(config.output)
        output.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if config.progress:
            from faceaux.data.recordio import _tqdm

            self.bar = _tqdm(None, total=total, initial=start, desc="train", dynamic_ncols=True)
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: log.jsonl still has every record
                warnings.warn(
                    "tensorboard: expected the tensorboard package for tensorboard=True, "
                    "received an ImportError; logging to log.jsonl only "
                    "(pip install tensorboard)",
                    stacklevel=2,
                )
            else:
                self.writer = SummaryWriter(os.fspath(output / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
        if self.bar is None and "loss" in record:
            print(
                f"step {record['step']}: loss {record['loss']:.4f}, lr {record['lr']:.3g}, "
                f"{record['samples_per_s']:.1f} samples/s",
                flush=True,
            )

    def advance(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# -- validation -------------------------------------------------------------------------------


class _Normalized(nn.Module):
    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def _verify(model: nn.Module, sets: dict, batch_size: int, device: torch.device) -> dict:
    from faceaux.eval.verification import extract_embeddings, pair_scores, verification_metrics

    results = {}
    for name, (images, issame) in sets.items():
        batches = (
            images[i : i + batch_size].float() / 255 for i in range(0, images.shape[0], batch_size)
        )
        embeddings = extract_embeddings(model, batches, device=device, progress=False)
        pairs = torch.arange(embeddings.shape[0]).view(-1, 2)
        metrics = verification_metrics(pair_scores(embeddings, pairs), issame)
        results[name] = {"accuracy": metrics["accuracy"], "accuracy_std": metrics["accuracy_std"]}
    return results


# -- the loop ---------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict[str, Any]:
    """Train as ``config`` says; the function behind ``faceaux train``.

    Runs the same in one process and under ``torchrun`` (it joins the process group that the
    ``torchrun`` environment describes, or uses one already initialised). See the "Training"
    docs page for every key and for the checkpoint layout (:mod:`faceaux.train.checkpoint`).

    Returns:
        ``{"step": last step, "loss": last step's loss, "checkpoint": folder of the last
        checkpoint, "world_size": W}`` (the same on every rank).

    Shape:
        No tensors: reads the data and writes checkpoints and logs under ``config.output``.
    """
    processes = _start_processes(config)
    try:
        return _run(config, processes)
    finally:
        if processes.initialized_here:
            dist.destroy_process_group()


def _run(config: TrainConfig, processes: _Processes) -> dict[str, Any]:
    from faceaux.models.registry import create_model

    rank, world, device = processes.rank, processes.world_size, processes.device
    output = Path(config.output)
    ckpt.seed_everything(config.seed)  # the same initial backbone on every rank
    with _together("building the model", processes):
        backbone = create_model(config.model, **config.model_kwargs)
        cfg = getattr(backbone, "pretrained_cfg", {})
        size = tuple(int(v) for v in cfg.get("input_size", (3, 112, 112))[1:])
        embedding_size = int(cfg.get("embedding_size", 512))
        if config.grad_checkpointing:
            enable_gradient_checkpointing(backbone)
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), device=device).view(1, -1, 1, 1)
    with _together("opening the training data", processes):
        dataset, num_classes = _open_data(config, size)
        config.per_process_batch(world)  # checks the division
        steps_per_epoch = len(dataset) // config.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"batch_size: expected at most the {len(dataset)} samples of {config.data!r}, "
                f"received {config.batch_size}"
            )
    total_steps = config.steps or config.epochs * steps_per_epoch

    margin = {"s": config.scale, "m1": config.m1, "m2": config.m2, "m3": config.m3}
    dense = (
        CombinedMargin(embedding_size, num_classes, **margin) if config.head == "dense" else None
    )
    replicated = _Replicated(backbone, dense).to(device)
    ckpt.seed_everything(ckpt.derived_seed(config.seed, 0, rank))  # per-rank streams from here
    partial_fc = None
    if config.head == "partial_fc":
        with _together("building Partial FC", processes):
            partial_fc = PartialFC(
                embedding_size,
                num_classes,
                margin_fn=functools.partial(margin_logits, **margin),
                sample_rate=config.sample_rate,
            ).to(device)
    module: nn.Module = replicated
    if processes.distributed:
        module = nn.parallel.DistributedDataParallel(
            replicated, device_ids=[device.index] if device.type == "cuda" else None
        )

    replicated_params = [p for p in replicated.parameters() if p.requires_grad]
    groups = [{"params": replicated_params}]
    if partial_fc is not None:
        groups.append({"params": list(partial_fc.parameters())})
    sharded_ids = list(range(len(replicated_params), sum(len(g["params"]) for g in groups)))
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    schedule = functools.partial(
        polynomial_warmup,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        power=config.lr_power,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = None
    if config.precision == "fp16":
        if processes.distributed:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device.type)  # all-reduces the inf check over ranks
        else:
            scaler = torch.amp.GradScaler(device.type)

    start_step = 0
    if config.resume:
        with _together("resuming", processes):
            start_step = _resume(
                config, processes, replicated, partial_fc, optimizer, scheduler, scaler,
                sharded_ids, num_classes, total_steps,
            )  # fmt: skip

    val_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with _together("loading the verification sets", processes):
        if rank == 0:
            from faceaux.data.verification_bin import load_verification_bin

            for path in config.val:
                val_sets[Path(path).stem] = load_verification_bin(path, image_size=size)

    end_step = min(total_steps, config.stop_after or total_steps)
    sampler = StepBatchSampler(
        len(dataset), config.batch_size, config.grad_accum, world, rank, config.seed,
        config.flip, start_step, end_step,
    )  # fmt: skip
    loader = DataLoader(
        _FlippedSamples(dataset),
        batch_sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),  # leaves the global RNG alone
    )
    log = _Log(config, start_step, end_step, enabled=rank == 0)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    amp = functools.partial(
        torch.autocast, device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
    )
    comm = processes.comm_device

    def save(step: int) -> Path:
        return _save_checkpoint(
            output, step, config, processes, replicated, partial_fc, optimizer, scheduler,
            scaler, sharded_ids, num_classes, total_steps, steps_per_epoch,
        )  # fmt: skip

    step, loss_value, last_checkpoint, nonfinite = start_step, math.nan, None, 0
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    batches = iter(loader)
    module.train()
    try:
        while step < end_step:
            step_loss = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                failure = None
                try:
                    images, labels = next(batches)
                except Exception as error:  # a corrupt record on this rank: all ranks stop
                    failure = error
                raise_together(failure, f"reading the data at step {step + 1}", processes)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                images = (images - mean) / std
                last_micro = micro == config.grad_accum - 1
                no_sync = processes.distributed and not last_micro
                with module.no_sync() if no_sync else contextlib.nullcontext(), amp():
                    if partial_fc is None:
                        loss = module(images, labels)
                    else:
                        loss = partial_fc(module(images, labels), labels)
                    scaled = loss / config.grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_loss += loss.detach().float()
            step_loss = (step_loss / config.grad_accum).to(comm)
            if processes.distributed and partial_fc is None:  # each rank's own local mean
                dist.all_reduce(step_loss)
                step_loss /= world
            loss_value = float(step_loss)
            finite = math.isfinite(loss_value)
            if not finite and scaler is None:
                raise FloatingPointError(
                    f"loss: not finite ({loss_value}) at step {step + 1}; lower lr or "
                    "clip_grad_norm, or train in bf16 (fp16 needs its gradient scaler)"
                )
            nonfinite = 0 if finite else nonfinite + 1
            if nonfinite > MAX_NONFINITE_STEPS:
                raise FloatingPointError(
                    f"loss: not finite for {nonfinite} steps in a row up to step {step + 1}, "
                    "although the fp16 gradient scaler skipped them: the weights diverged"
                )
            if scaler is not None:
                scaler.unscale_(optimizer)
            if config.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(replicated_params, config.clip_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():  # a step the fp16 scaler skipped still counts
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
            step += 1
            log.advance(loss_value, lr)
            if finite:
                window_loss, window_steps = window_loss + loss_value, window_steps + 1

            if step % config.log_every == 0 or step == end_step:
                elapsed = time.perf_counter() - window_start
                steps_in_window = (step - 1) % config.log_every + 1
                record = {
                    "step": step,
                    "epoch": (step - 1) // steps_per_epoch,
                    "loss": window_loss / max(window_steps, 1),
                    "lr": lr,
                    "samples_per_s": steps_in_window * config.batch_size / max(elapsed, 1e-9),
                    "memory_mb": _memory_mb(device),
                    "world_size": world,
                }
                if scaler is not None:
                    record["loss_scale"] = float(scaler.get_scale())
                log.write(record)
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if val_sets and (step % config.val_every == 0 or step == end_step):
                if rank == 0:
                    evaluated = _Normalized(backbone, mean.flatten(), std.flatten())
                    log.write(
                        {
                            "step": step,
                            "val": _verify(evaluated, val_sets, config.val_batch_size, device),
                        }
                    )
                if processes.distributed:
                    dist.barrier()
                module.train()
            if step % config.checkpoint_every == 0 or step == end_step:
                last_checkpoint = save(step)
    finally:
        log.close()
        del batches
    return {
        "step": step,
        "loss": loss_value,
        "checkpoint": None if last_checkpoint is None else os.fspath(last_checkpoint),
        "world_size": world,
    }


def _save_checkpoint(
    output: Path,
    step: int,
    config: TrainConfig,
    processes: _Processes,
    replicated: _Replicated,
    partial_fc: PartialFC | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    sharded_ids: list[int],
    num_classes: int,
    total_steps: int,
    steps_per_epoch: int,
) -> Path:
    rank = processes.rank
    folder = output / "checkpoints"
    final = folder / ckpt.checkpoint_name(step)
    temporary = folder / (final.name + ".tmp")

    def barrier() -> None:
        if processes.distributed:
            dist.barrier()

    if rank == 0:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    barrier()
    common_optimizer, sharded_optimizer = ckpt.split_optimizer_state(
        optimizer.state_dict(), sharded_ids
    )
    torch.save(
        {
            "partial_fc": None if partial_fc is None else partial_fc.state_dict(),
            "optimizer": sharded_optimizer,
            "rng": ckpt.gather_rng_state(),
        },
        temporary / f"rank{rank}.pt",
    )
    if rank == 0:
        torch.save(replicated.backbone.state_dict(), temporary / "model.pt")
        torch.save(
            {
                "format": ckpt.FORMAT,
                "step": step,
                "total_steps": total_steps,
                "world_size": processes.world_size,
                "num_classes": num_classes,
                "data_position": {  # where the sample order resumes (StepBatchSampler)
                    "epoch": step // steps_per_epoch,
                    "step_in_epoch": step % steps_per_epoch,
                    "samples_seen": step * config.batch_size,
                },
                "config": config.to_dict(),
                "model": replicated.state_dict(),
                "optimizer": common_optimizer,
                "scheduler": scheduler.state_dict(),
                "scaler": None if scaler is None else scaler.state_dict(),
            },
            temporary / "common.pt",
        )
    barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        temporary.rename(final)
        pointer = folder / "latest.tmp"
        pointer.write_text(final.name + "\n")
        pointer.replace(folder / "latest")
        ckpt.prune(folder, config.keep_checkpoints)
    barrier()
    return final


_STRUCTURAL_KEYS = ("model", "model_kwargs", "head")
_TRAJECTORY_KEYS = ("batch_size", "grad_accum", "seed", "optimizer", "lr", "flip", "sample_rate")


def _resume(
    config: TrainConfig,
    processes: _Processes,
    replicated: _Replicated,
    partial_fc: PartialFC | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    sharded_ids: list[int],
    num_classes: int,
    total_steps: int,
) -> int:
    rank, world = processes.rank, processes.world_size
    folder = ckpt.find_checkpoint(config.resume, config.output)
    common = ckpt.load_file(folder / "common.pt")
    if common.get("format") != ckpt.FORMAT:
        raise ValueError(
            f"resume: {os.fspath(folder)!r} is not a {ckpt.FORMAT} checkpoint "
            f"(format {common.get('format')!r})"
        )
    saved = common["config"]
    for key in _STRUCTURAL_KEYS:
        if saved.get(key) != getattr(config, key):
            raise ValueError(
                f"{key}: the checkpoint was trained with {saved.get(key)!r}, the config now says "
                f"{getattr(config, key)!r}"
            )
    if common["num_classes"] != num_classes:
        raise ValueError(
            f"num_classes: the checkpoint has {common['num_classes']} classes, the data "
            f"{num_classes}"
        )
    changed = [k for k in _TRAJECTORY_KEYS if saved.get(k) != getattr(config, k)]
    if common["total_steps"] != total_steps:
        changed.append("steps")
    if changed and rank == 0:
        print(
            f"faceaux train: resuming with changed {changed}: the run continues, but not "
            "exactly as the original would have",
            file=sys.stderr,
        )
    old_world = int(common["world_size"])
    same_world = old_world == world
    rank_files = [
        ckpt.load_file(folder / f"rank{r}.pt") for r in ([rank] if same_world else range(old_world))
    ]
    replicated.load_state_dict(common["model"])
    sharded_state: dict[int, dict] = {}
    if partial_fc is not None:
        shards = [f["partial_fc"] for f in rank_files]
        if any(s is None for s in shards):
            raise ValueError("head: the checkpoint has no Partial FC state (head = 'dense'?)")
        if same_world:
            partial_fc.load_state_dict(shards[0])
            sharded_state = dict(rank_files[0]["optimizer"])
        else:
            partial_fc.load_state_dict(PartialFC.reshard_state_dict(shards, rank, world))
            extras = [s["_extra_state"] for s in shards]
            for param_id in sharded_ids:
                states = [f["optimizer"].get(param_id) for f in rank_files]
                if all(s is not None for s in states):
                    sharded_state[param_id] = ckpt.reshard_optimizer_state(
                        states, extras, rank, world
                    )
    optimizer.load_state_dict(
        {
            "state": {**common["optimizer"]["state"], **sharded_state},
            "param_groups": common["optimizer"]["param_groups"],
        }
    )
    scheduler.load_state_dict(common["scheduler"])
    if scaler is not None and common["scaler"] is not None:
        scaler.load_state_dict(common["scaler"])
    step = int(common["step"])
    if same_world:
        ckpt.restore_rng_state(rank_files[0]["rng"])
    else:
        ckpt.seed_everything(ckpt.derived_seed(config.seed, step, rank))
    if rank == 0:
        print(
            f"faceaux train: resumed from {os.fspath(folder)} at step {step} (saved on "
            f"{old_world} process{'es' if old_world > 1 else ''}, now {world})",
            file=sys.stderr,
        )
    return step
