"""``faceaux export``: a trained model to ONNX with InsightFace's conventions, checked.

InsightFace's recognition ONNX files take one input, ``(N, 3, H, W)`` float32 RGB already
normalised as ``(x − 127.5) / 127.5`` (for pixels ``x`` in 0 … 255), with a dynamic batch axis,
and give one ``(N, D)`` embedding. :func:`export_onnx` writes the same and records the
normalisation in the model's metadata (``mean``, ``std`` in 0 … 255 pixel units, plus
``input_size``, ``embedding_size``, ``color_order``, ``layout``, ``faceaux_model``), then runs
the file with onnxruntime and compares it with PyTorch. Needs the ``onnx`` extra.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["add_parser", "export_onnx"]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> dict[str, Any]:
    """Export ``model`` to ONNX (one input, dynamic batch, normalisation in the metadata).

    Args:
        model: maps normalised images ``(B, 3, H, W)`` to ``(B, D)``; its ``pretrained_cfg``
            gives ``input_size``, ``mean``, ``std`` (InsightFace's 0.5/0.5 if absent).
        path: the ``.onnx`` file to write.
        opset: ONNX opset version.
        check: run the file with onnxruntime on batches of 1 and 3 and compare with PyTorch.
        atol: absolute tolerance of the check.
        rtol: relative tolerance of the check.

    Returns:
        The metadata written, plus ``max_abs_diff`` when checked.

    Raises:
        ImportError: without the ``onnx`` extra.
        ValueError: onnxruntime and PyTorch disagree beyond the tolerances.

    Shape:
        - ONNX input ``input``: ``(N, 3, H, W)`` float32; output ``embedding``: ``(N, D)``
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the onnx extra: pip install 'faceaux[onnx]'"
        ) from error
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = (int(v) for v in cfg.get("input_size", (3, 112, 112)))
    mean = [255 * float(v) for v in cfg.get("mean", (0.5, 0.5, 0.5))]
    std = [255 * float(v) for v in cfg.get("std", (0.5, 0.5, 0.5))]
    was_training = model.training
    model = model.eval().cpu()
    example = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python values
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    with torch.no_grad():
        embedding_size = int(model(example[:1]).shape[1])
    metadata = {
        "mean": ",".join(f"{v:g}" for v in mean),
        "std": ",".join(f"{v:g}" for v in std),
        "normalization": "(x - mean) / std on RGB pixels x in 0..255",
        "input_size": f"{height},{width}",
        "embedding_size": str(embedding_size),
        "color_order": "RGB",
        "layout": "NCHW",
        "faceaux_model": str(cfg.get("name", type(model).__name__)),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, os.fspath(path))
    result: dict[str, Any] = dict(metadata)
    if check:
        session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in (1, 3):
            x = torch.randn(
                batch, channels, height, width, generator=torch.Generator().manual_seed(batch)
            )
            with torch.no_grad():
                expected = model(x).numpy()
            (got,) = session.run(None, {"input": x.numpy()})
            difference = abs(got - expected)
            worst = max(worst, float(difference.max()))
            if (difference > atol + rtol * abs(expected)).any():
                raise ValueError(
                    f"onnxruntime and PyTorch disagree on a batch of {batch}: max |difference| "
                    f"{difference.max():.3g} (atol {atol}, rtol {rtol})"
                )
        result["max_abs_diff"] = worst
    model.train(was_training)
    return result


def build_model(name: str, checkpoint: str | None, model_kwargs: dict) -> nn.Module:
    """``create_model(name, **model_kwargs)`` with an optional state-dict file."""
    from faceaux.models.registry import create_model

    return create_model(name, checkpoint_path=checkpoint, **model_kwargs)


def model_kwargs_type(text: str) -> dict:
    """argparse type: a JSON object of builder keyword arguments."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, received {text!r}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint`` and ``--model-kwargs`` (shared by eval and export)."""
    parser.add_argument("--model", required=True, help="registered model name (required)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="state dict to load, e.g. a training checkpoint's model.pt (default: none, random "
        "weights)",
    )
    parser.add_argument(
        "--model-kwargs",
        type=model_kwargs_type,
        default={},
        metavar="JSON",
        help="builder keyword arguments of the model, as in training (default: {})",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux export``."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (InsightFace's conventions), checked with onnxruntime",
        description=(
            "Export a registered model to ONNX: one input 'input' (N, 3, H, W) RGB normalised as "
            "(x - mean) / std (InsightFace: 127.5, 127.5), a dynamic batch axis, one output "
            "'embedding' (N, D); mean, std and the input size are recorded in the metadata. The "
            "file is then run with onnxruntime and compared with PyTorch."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument(
        "--no-check", action="store_true", help="skip the onnxruntime check (default: check)"
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Export and print the metadata; returns the exit status."""
    model = build_model(args.model, args.checkpoint, args.model_kwargs)
    result = export_onnx(model, args.output, opset=args.opset, check=not args.no_check)
    print(json.dumps({"output": os.fspath(args.output), **result}, indent=2))
    return 0
