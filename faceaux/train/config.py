"""The training configuration: one flat table of keys, read from a TOML file and/or flags.

Every key is a field of :class:`TrainConfig` with a default and a one-line description; the same
table makes the ``faceaux train`` flags (``--batch-size 512`` sets ``batch_size``), their
``--help`` text and the docs page. A TOML file (``--config run.toml``) holds the same keys at
its top level; flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TrainConfig", "add_config_arguments", "config_from_args", "load_config"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "head": ("partial_fc", "dense"),
    "optimizer": ("sgd", "adamw"),
    "precision": ("fp32", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
    "backend": ("auto", "gloo", "nccl"),
    "data_format": ("auto", "record", "folder"),
}


def _key(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of ``faceaux train``, with its default (see the "Training" docs page).

    The batch size is the **global** batch of one optimiser step: each of the ``W`` processes
    reads ``batch_size / (W · grad_accum)`` images per micro-batch, so a run's sample order,
    learning-rate schedule and step count do not depend on the number of processes — which is
    what lets ``resume`` continue on a different number of GPUs.

    Shape:
        No tensors: a dataclass of plain values.

    Examples:
        >>> config = TrainConfig(data="train.rec", batch_size=64, steps=10)
        >>> config.per_process_batch(world_size=2)
        32
    """

    # -- data --------------------------------------------------------------------------------
    data: str = _key("", "training set: a RecordIO .rec/prefix/folder, or an image folder")
    data_format: str = _key("auto", "how to read data: auto, record (RecordIO) or folder")
    num_classes: int = _key(0, "identities in the training set; 0 reads it from the data")
    num_workers: int = _key(4, "DataLoader worker processes per training process")
    flip: bool = _key(True, "random horizontal flips (half of the images, fixed by seed)")
    # -- model -------------------------------------------------------------------------------
    model: str = _key("iresnet50", "registered model name (faceaux.list_models())")
    model_kwargs: dict = dataclasses.field(
        default_factory=dict,
        metadata={"help": "builder keyword arguments of the model, a table / JSON"},
    )
    grad_checkpointing: bool = _key(False, "recompute each block in backward to save memory")
    # -- head --------------------------------------------------------------------------------
    head: str = _key("partial_fc", "classifier: partial_fc (sharded PartialFC) or dense")
    sample_rate: float = _key(1.0, "PartialFC: fraction of class centres per step, (0, 1]")
    scale: float = _key(64.0, "margin softmax scale s")
    m1: float = _key(1.0, "multiplicative angular margin (SphereFace); 1 = none")
    m2: float = _key(0.5, "additive angular margin (ArcFace); 0 = none")
    m3: float = _key(0.0, "additive cosine margin (CosFace); 0 = none")
    # -- optimisation ------------------------------------------------------------------------
    optimizer: str = _key("sgd", "sgd (with momentum) or adamw")
    lr: float = _key(0.1, "peak learning rate, reached at the end of the warm-up")
    momentum: float = _key(0.9, "SGD momentum")
    weight_decay: float = _key(5e-4, "weight decay (decoupled for adamw)")
    batch_size: int = _key(128, "global batch of one optimiser step, over all processes")
    grad_accum: int = _key(1, "micro-batches accumulated per optimiser step")
    epochs: int = _key(20, "passes over the data (used when steps is 0)")
    steps: int = _key(0, "total optimiser steps; 0 = epochs x steps per epoch")
    warmup_steps: int = _key(0, "linear warm-up from 0 to lr over this many steps")
    lr_power: float = _key(2.0, "polynomial decay power after the warm-up (to 0 at the end)")
    clip_grad_norm: float = _key(5.0, "clip the backbone's gradient norm; 0 = no clipping")
    precision: str = _key("fp32", "fp32, bf16 (autocast) or fp16 (autocast + GradScaler)")
    seed: int = _key(0, "seed of the initial weights, sample order, flips and sampling")
    # -- devices and processes ---------------------------------------------------------------
    device: str = _key("auto", "auto (cuda when available), cpu or cuda")
    backend: str = _key("auto", "torch.distributed backend: auto (nccl on cuda, gloo on cpu)")
    dist_timeout: int = _key(600, "seconds a collective may wait before the run fails")
    # -- checkpoints -------------------------------------------------------------------------
    output: str = _key("runs/faceaux", "folder for checkpoints, log.jsonl and TensorBoard")
    checkpoint_every: int = _key(1000, "save a checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = _key(2, "how many of the newest checkpoints to keep")
    resume: str = _key("", "checkpoint folder to continue from, or auto (the newest in output)")
    stop_after: int = _key(0, "stop (with a checkpoint) once this step is reached; 0 = at the end")
    # -- validation and logging --------------------------------------------------------------
    val: list = dataclasses.field(
        default_factory=list,
        metadata={
            "help": "InsightFace .bin verification sets, comma-separated on the command line"
        },
    )
    val_every: int = _key(2000, "run the verification sets every this many steps (and at the end)")
    val_batch_size: int = _key(128, "batch size of the verification embeddings")
    log_every: int = _key(50, "write a log.jsonl line every this many steps")
    progress: bool = _key(True, "show a tqdm progress bar on rank 0")
    tensorboard: bool = _key(True, "write TensorBoard scalars to output/tensorboard if installed")

    def __post_init__(self) -> None:
        self.validate()

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every value; raises ``ValueError`` naming the key (expected vs received)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = _FIELD_TYPES[field.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, field.name, value)
            if expected is bool:
                ok = isinstance(value, bool)
            elif expected is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, expected)
            if not ok:
                raise ValueError(
                    f"{field.name}: expected {expected.__name__}, received {value!r} "
                    f"({type(value).__name__})"
                )
            choices = _CHOICES.get(field.name)
            if choices is not None and value not in choices:
                raise ValueError(f"{field.name}: expected one of {choices}, received {value!r}")
        positive = ("batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints")
        positive += ("val_every", "val_batch_size", "log_every", "dist_timeout", "epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected ≥ 1, received {getattr(self, name)}")
        for name in ("num_classes", "num_workers", "steps", "warmup_steps", "stop_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected ≥ 0, received {getattr(self, name)}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(
                f"sample_rate: expected a value in (0, 1], received {self.sample_rate}"
            )
        for name in ("lr", "scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, received {getattr(self, name)}")
        for name in ("weight_decay", "momentum", "clip_grad_norm", "lr_power"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected ≥ 0, received {getattr(self, name)}")
        if not all(isinstance(k, str) for k in self.model_kwargs):
            raise ValueError(f"model_kwargs: expected string keys, received {self.model_kwargs}")
        if not all(isinstance(v, str) and v for v in self.val):
            raise ValueError(f"val: expected a list of .bin paths, received {self.val!r}")

    def per_process_batch(self, world_size: int) -> int:
        """Images each process reads per micro-batch: ``batch_size / (world_size · grad_accum)``.

        Raises:
            ValueError: the division is not exact.
        """
        parts = world_size * self.grad_accum
        if self.batch_size % parts:
            raise ValueError(
                f"batch_size: expected a multiple of world_size × grad_accum = {world_size} × "
                f"{self.grad_accum} = {parts}, received {self.batch_size}"
            )
        return self.batch_size // parts

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (what checkpoints store)."""
        return dataclasses.asdict(self)


_TYPE_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}
_FIELD_TYPES: dict[str, type] = {
    f.name: _TYPE_NAMES[f.type] if isinstance(f.type, str) else f.type
    for f in dataclasses.fields(TrainConfig)
}


def _toml_loads(text: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as error:
            raise ImportError(
                "reading a TOML config on Python 3.10 needs tomli: pip install 'faceaux[train]'"
            ) from error
    return tomllib.loads(text)


def load_config(
    path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file (top-level keys) and/or a dict of overrides.

    Args:
        path: optional TOML file; its keys are :class:`TrainConfig` fields.
        overrides: values that replace the file's (e.g. from command-line flags).

    Raises:
        ValueError: an unknown key (with the closest known one), or a bad value.

    Shape:
        No tensors.

    Examples:
        >>> load_config(overrides={"model": "iresnet_nano", "steps": 5}).steps
        5
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            text = open(path, encoding="utf-8").read()  # noqa: SIM115
        except OSError as error:
            raise ValueError(f"config: cannot read {os.fspath(path)!r}: {error}") from None
        try:
            values.update(_toml_loads(text))
        except Exception as error:  # tomllib.TOMLDecodeError, without importing it here
            raise ValueError(f"config: {os.fspath(path)!r} is not valid TOML: {error}") from None
    values.update(overrides or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        hints = [
            f"{name} (did you mean {close[0]}?)" if close else name
            for name in unknown
            for close in [difflib.get_close_matches(name, known, n=1)]
        ]
        raise ValueError(f"config: unknown keys {hints}; see faceaux train --help")
    return TrainConfig(**values)


# -- command-line flags ----------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def _parse_list(text: str) -> list:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, received {text!r}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, received {text!r}")
    return value


_PARSERS = {bool: _parse_bool, list: _parse_list, dict: _parse_dict, int: int, float: float}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value) if value else "(none)"
    if isinstance(value, dict):
        return json.dumps(value)
    if value == "":
        return "(none)"
    return str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one ``--key-name VALUE`` flag per :class:`TrainConfig` field.

    Flags default to ``None`` (not given), so a TOML file's value survives unless the flag is
    on the command line; the help text shows the built-in default.
    """
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="TOML file of config keys (default: none)"
    )
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        kind = _FIELD_TYPES[field.name]
        flag = "--" + field.name.replace("_", "-")
        choices = _CHOICES.get(field.name)
        metavar = "{" + ",".join(choices) + "}" if choices else kind.__name__.upper()
        if kind is bool:
            metavar = "BOOL"
        elif kind is list:
            metavar = "A,B,..."
        elif kind is dict:
            metavar = "JSON"
        parser.add_argument(
            flag,
            dest=field.name,
            type=_PARSERS.get(kind, str),
            metavar=metavar,
            default=None,
            help=f"{field.metadata['help']} (default: {_show(getattr(defaults, field.name))})",
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``faceaux train`` arguments (flags over the file)."""
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainConfig)
        if getattr(args, field.name, None) is not None
    }
    return load_config(args.config, overrides)


def describe_keys(keys: Sequence[str] | None = None) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` rows of the configuration table (for the docs)."""
    defaults = TrainConfig()
    rows = []
    for field in dataclasses.fields(TrainConfig):
        if keys is not None and field.name not in keys:
            continue
        kind = _FIELD_TYPES[field.name]
        rows.append(
            (
                field.name,
                kind.__name__,
                _show(getattr(defaults, field.name)),
                field.metadata["help"],
            )
        )
    return rows
