"""Training on the field's datasets: ``faceaux train`` (one process or ``torchrun``).

- :mod:`faceaux.train.config`: every setting (:class:`TrainConfig`), from TOML and/or flags;
- :mod:`faceaux.train.loop`: the loop (DDP, Partial FC, mixed precision, accumulation);
- :mod:`faceaux.train.checkpoint`: checkpoints that resume on any number of processes;
- :mod:`faceaux.train.command`: the ``faceaux train`` sub-command.
"""

from faceaux.train.config import TrainConfig, load_config
from faceaux.train.loop import train

__all__ = ["TrainConfig", "load_config", "train"]
