"""``faceaux train``: train a registered model on a RecordIO set or an image folder.

One entry point for one process and for several::

    faceaux train --config run.toml
    python -m faceaux train --data faces_emore --model iresnet50 --batch-size 512
    torchrun --nproc_per_node=8 -m faceaux train --config run.toml

Every key of :class:`faceaux.train.TrainConfig` is a flag (``batch_size`` → ``--batch-size``);
flags override the TOML file given with ``--config``.
"""

from __future__ import annotations

import argparse
import json

from faceaux.train.config import add_config_arguments, config_from_args

__all__ = ["add_parser"]

DESCRIPTION = """\
Train a registered model (faceaux.list_models()) with Partial FC or a dense margin head on an
MXNet RecordIO set (train.rec + train.idx, no mxnet needed) or an image folder.

Runs the same in one process (python -m faceaux train ...) and under
torchrun --nproc_per_node=N -m faceaux train ... (DDP; gloo on CPU, NCCL on GPU).
batch_size is the global batch of one optimiser step: each process reads
batch_size / (processes x grad_accum) images per micro-batch, so a run can resume on a
different number of processes. Settings come from a TOML file (--config) and the flags below;
a flag overrides the file. Outputs go to --output: checkpoints/step_NNNNNNNN/ (model.pt loads
with faceaux.create_model(name, checkpoint_path=...)), log.jsonl and TensorBoard scalars.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a model with Partial FC on a RecordIO set (one process or torchrun)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Parse the configuration, train, print the summary (rank 0); returns the exit status."""
    import os

    from faceaux.train.loop import train

    config = config_from_args(args)
    summary = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0
