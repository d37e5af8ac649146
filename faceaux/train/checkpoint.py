"""Training checkpoints that resume exactly, also on a different number of processes.

A checkpoint is a folder ``<output>/checkpoints/step_<NNNNNNNN>/`` holding:

- ``model.pt`` — the backbone's state dict alone (tensors only: loads with
  ``faceaux.create_model(name, checkpoint_path=...)``, ``faceaux eval`` and ``faceaux export``);
- ``common.pt`` — written by rank 0: step, world size, config, the data position (epoch, step in
  the epoch, samples seen: the sample order is a function of these and the seed), the state of
  everything that is the same on every rank (the DDP-replicated recognizer, with a dense head
  when used; the optimiser state of its parameters; the scheduler; the gradient scaler);
- ``rank<r>.pt`` — one per rank: that rank's Partial FC shard (``PartialFC.state_dict()``), the
  optimiser state of the shard (momentum or Adam moments, each cut like the centres) and the
  rank's random-number-generator states.

Resuming on the same world size loads each rank's own file. On another world size every new
rank reads all old rank files and cuts its slice with :meth:`faceaux.PartialFC.reshard_state_dict`
— the centres and each row-wise optimiser state alike — and its RNG is re-seeded from
``(seed, step, rank)`` (the old streams belong to ranks that no longer exist).

Files are written under a ``.tmp`` name and renamed once every rank has finished, then
``checkpoints/latest`` names the newest complete checkpoint; everything loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceaux.heads.partial_fc import PartialFC

__all__ = [
    "FORMAT",
    "find_checkpoint",
    "gather_rng_state",
    "reshard_optimizer_state",
    "restore_rng_state",
]

FORMAT = "faceaux.train/1"
"""The ``format`` entry of ``common.pt``; checkpoints of another format are refused.

Shape:
    A ``str``; no tensors.
"""


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimiser steps."""
    return f"step_{step:08d}"


def find_checkpoint(resume: str, output: str | os.PathLike) -> Path:
    """The checkpoint folder ``resume`` names: a path, or ``"auto"`` for the newest in ``output``.

    Raises:
        ValueError: nothing to resume from, or the folder is not a complete checkpoint.
    """
    if resume == "auto":
        latest = Path(output) / "checkpoints" / "latest"
        if not latest.is_file():
            raise ValueError(
                f"resume: 'auto' found no checkpoint in {os.fspath(output)!r} (no "
                "checkpoints/latest file)"
            )
        folder = latest.parent / latest.read_text().strip()
    else:
        folder = Path(resume)
        if (folder / "checkpoints" / "latest").is_file():  # the run's output folder
            return find_checkpoint("auto", folder)
    if not (folder / "common.pt").is_file():
        raise ValueError(
            f"resume: expected a checkpoint folder holding common.pt and rank<r>.pt, received "
            f"{os.fspath(folder)!r}"
        )
    return folder


def load_file(path: Path) -> dict:
    """``torch.load(path, weights_only=True)`` with an error that names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"resume: cannot read {os.fspath(path)!r}: {error}") from None


def split_optimizer_state(
    state_dict: Mapping[str, Any], sharded_ids: Sequence[int]
) -> tuple[dict, dict[int, dict]]:
    """Split ``optimizer.state_dict()`` into the replicated part and the sharded parameters'."""
    state = state_dict["state"]
    common = {
        "state": {k: v for k, v in state.items() if k not in sharded_ids},
        "param_groups": state_dict["param_groups"],
    }
    sharded = {k: dict(state[k]) for k in sharded_ids if k in state}
    return common, sharded


def reshard_optimizer_state(
    shard_states: Sequence[Mapping[str, Any]],
    extras: Sequence[Mapping[str, Any]],
    rank: int,
    world_size: int,
) -> dict[str, Any]:
    """Cut the optimiser state of a Partial FC weight for ``rank`` of ``world_size``.

    Args:
        shard_states: the per-parameter optimiser state (``{"momentum_buffer": (C_r, D)}`` or
            ``{"step": (), "exp_avg": (C_r, D), "exp_avg_sq": (C_r, D)}``) of every old rank.
        extras: each old rank's ``PartialFC.get_extra_state()`` (its class range).
        rank: the new rank.
        world_size: the new world size.

    Returns:
        The new rank's state: every tensor with one row per class is joined in class order and
        cut like the centres (:meth:`PartialFC.reshard_state_dict`); the rest (a step count) is
        taken from the first shard.
    """
    if not shard_states:
        return {}
    first = shard_states[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        rows = extras[0]["class_stop"] - extras[0]["class_start"]
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == rows:
            shards = [
                {"weight": state[key], "_extra_state": dict(extra)}
                for state, extra in zip(shard_states, extras, strict=True)
            ]
            out[key] = PartialFC.reshard_state_dict(shards, rank, world_size)["weight"]
        else:
            out[key] = value
    return out


def gather_rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, NumPy, Python) as weights-only-safe data."""
    bit_generator, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - user code's global RNG
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`gather_rng_state` saved."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            numpy_state["bit_generator"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python's ``random`` with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (e.g. ``(seed, step, rank)``)."""
    generator = np.random.default_rng([int(p) for p in parts])
    return int(generator.integers(0, 2**63 - 1))


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (and stale ``.tmp`` folders)."""
    complete = sorted(
        p for p in checkpoints.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
    )
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
