"""The stage contract every faceaux backbone speaks, with timm's names.

A backbone is a stem, then N **stages** (each a sequence of **blocks**), then an **output stage**
(the "head": FC, GAP or GNAP) that maps the last stage's feature map to the embedding:

- ``feature_info``: one dict per stage, ``{"module": name, "num_chs": C, "reduction": r,
  "blocks": (block names …)}`` — ``module`` is the module whose output is the stage's feature
  (timm's meaning), ``reduction`` the nominal stride against the input, ``blocks`` the names of
  the stage's blocks in order (faceaux's addition, for per-block taps).
- ``forward_stem(x)``, then every stage; ``forward_head(features)`` is the output stage.
- ``forward_stages(x, tap=None)``: stem and every stage; after every block and at the end of
  every stage, ``x = tap(name, x)`` (module names as in ``named_modules``, a stage's end is
  reported once more under the stage's name unless it is its last block's name). A tap may
  *change* the feature the next block sees — what FAN-Face's integration needs. Returns the last
  stage's output. Without a tap a stage that is a container of its blocks (IResNet's ``layer1``)
  is called as a whole; with a tap its blocks are called one by one, so forward hooks on the
  container itself do not fire then (hooks on blocks do).
- ``forward_features(x)`` = ``forward_stages(x)``; ``forward(x)`` =
  ``forward_head(forward_features(x))`` (timm's split); ``forward_intermediates(x, indices)``
  returns the final map and the requested stage outputs (timm's signature).

Faceaux backbones implement the contract without hooks; any other network joins through
:class:`faceaux.models.BackboneAdapter`, the one place forward hooks are used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from faceaux._checks import (
    check_batch_for_training,
    check_module_input,
    check_tensor,
    finite_check,
    raise_bad_data,
)

__all__ = ["MAX_PIXEL", "StagedBackbone", "Tap", "check_images", "resolve_indices"]

MAX_PIXEL = 1e6
"""The largest ``|value|`` :func:`check_images` accepts in images (any normalisation of 8-bit
images, even raw 0–255, stays far below it).

Shape:
    A ``float``.
"""


def check_images(
    module: nn.Module,
    images: object,
    name: str = "images",
    sizes: Sequence[int | None] | None = None,
    one_sample_ok: bool = False,
) -> None:
    """The checks every recognizer runs on its images; ``ValueError`` naming ``name``.

    - a floating ``(B, C, H, W)`` tensor (``sizes`` as :func:`faceaux._checks.check_tensor`),
      on the module's device and, outside ``torch.autocast``, of its dtype;
    - in training mode, ``B ≥ 2`` (the output stage's BatchNorm1d estimates statistics over the
      batch), unless ``one_sample_ok`` (networks whose BatchNorms all see spatial maps);
    - data (one device→host read, skipped under compile/export and for meta tensors): no
      NaN/inf, ``|value| ≤`` :data:`MAX_PIXEL`, and in training mode not one constant value
      over the whole batch. Such a batch (all-black images, or values so large that the first
      BatchNorm's variance overflows) gives every BatchNorm a zero batch variance, and the
      backward pass multiplies the gradient by 1/√eps ≈ 316 at each of them until it overflows:
      PyTorch's BatchNorm behaviour, which no finite gradient can come out of.

    Shape:
        images: ``(B, C, H, W)``; returns nothing.
    """
    check_tensor(images, name, "(B, C, H, W)", sizes=sizes, floating=True)
    check_module_input(images, name, module)
    if images.shape[0] == 0:
        return
    if module.training and not one_sample_ok:
        check_batch_for_training(module, images, name)
    shape = tuple(images.shape)
    flat = images.detach()
    low, high = extremes = torch.stack(torch.aminmax(flat))  # one pass serves every check below

    def too_large(_: int) -> str:
        count = int((flat.abs() > MAX_PIXEL).sum())
        return (
            f"{name}: expected image values with |x| ≤ {MAX_PIXEL:g} (a normalised "
            f"image), received {count} larger entries in shape {shape}"
        )

    # a NaN extreme fails the finite check first, so it need not be caught here too
    checks = [finite_check(images, name, extremes), (extremes.abs().amax() > MAX_PIXEL, too_large)]
    if module.training:
        checks.append(
            (
                low == high,
                lambda n: (
                    f"{name}: a training batch of shape {shape} holds one constant value: "
                    "every BatchNorm then sees zero variance and the gradients overflow; drop such "
                    "batches (or call .eval())"
                ),
            )
        )
    raise_bad_data(checks)


def no_classifier_message(num_classes: object) -> str:
    """The error for timm's ``num_classes=N``: faceaux models end in the embedding."""
    return (
        f"num_classes: faceaux models end in the embedding, with no classifier (timm's "
        f"num_classes=0); received {num_classes!r}: train the identities with a margin head on "
        f"the embedding instead, e.g. faceaux.ArcFace(embedding_size, {num_classes}) or "
        f"faceaux.PartialFC"
    )


Tap = Callable[[str, torch.Tensor], torch.Tensor]
"""A stage tap: ``tap(module_name, feature) -> feature`` (return the feature to leave it)."""


def resolve_indices(indices: int | Sequence[int] | None, num_stages: int) -> list[int]:
    """timm's ``indices`` convention: ``None`` all stages, an int n the last n, else the listed.

    Negative indices count from the end.

    Examples:
        >>> resolve_indices(None, 4), resolve_indices(2, 4), resolve_indices([0, -1], 4)
        ([0, 1, 2, 3], [2, 3], [0, 3])
    """
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)):
        raise TypeError(
            f"indices: expected None, an int or a sequence of ints, received {indices!r}"
        )
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices: expected 1 … {num_stages} last stages, received {indices}")
        return list(range(num_stages - indices, num_stages))
    out = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"indices: expected ints, received {indices!r}")
        if not -num_stages <= index < num_stages:
            raise ValueError(
                f"indices: stage index {index} is out of range for {num_stages} stages"
            )
        out.append(index % num_stages)
    return out


class StagedBackbone(nn.Module):
    """Base class giving a backbone the stage contract (see the module docstring).

    A subclass sets ``self.feature_info`` (a list of dicts with ``module``, ``num_chs``,
    ``reduction`` and ``blocks``) and ``first_conv`` (the first convolution's name), and
    defines ``forward_stem(x)`` and ``forward_head(x)``; the stages are run block by block from
    ``feature_info``, so no stage code is written twice.

    Shape:
        - ``forward_stages`` / ``forward_features``: (B, C_in, H, W) → (B, C_N, h_N, w_N), the
          last stage's map
        - ``forward_intermediates``: the final map and a list of (B, C_i, h_i, w_i) stage maps
        - ``forward``: (B, C_in, H, W) → (B, D)

    Examples:
        >>> from faceaux.models import create_model
        >>> model = create_model("iresnet_nano").eval()
        >>> [(f["module"], f["num_chs"], f["reduction"]) for f in model.feature_info]
        [('layer1', 16, 2), ('layer2', 32, 4), ('layer3', 64, 8), ('layer4', 128, 16)]
        >>> final, maps = model.forward_intermediates(torch.randn(1, 3, 112, 112), indices=2)
        >>> final.shape, [m.shape[-1] for m in maps]
        (torch.Size([1, 128, 7, 7]), [14, 7])
    """

    feature_info: list[dict]
    first_conv: str = "conv1"
    """Name of the first convolution (grown when heatmaps are stacked with the image)."""
    grad_checkpointing: bool = False
    """Whether blocks are recomputed in the backward pass (:meth:`set_grad_checkpointing`)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: recompute every block in the backward pass instead of storing it.

        With ``enable``, each block of every stage runs under ``torch.utils.checkpoint``
        (non-reentrant) whenever the model is in training mode with gradients enabled, so only
        the blocks' inputs are kept for the backward pass; outputs, gradients and state-dict
        keys do not change. In eval mode or under ``torch.no_grad`` nothing changes. A stage
        then always runs block by block (as with a tap), so forward hooks on a stage container
        do not fire (hooks on its blocks do). ``faceaux train --grad-checkpointing true`` calls
        it.
        """
        self.grad_checkpointing = bool(enable)

    def reset_classifier(self, num_classes: int = 0) -> None:
        """timm's ``reset_classifier``: faceaux backbones have no classifier to reset.

        Their output is the embedding — what a timm model gives with ``num_classes=0`` — so
        ``reset_classifier(0)`` leaves the model as it is; identities are trained with a
        margin head on the embedding (``faceaux.ArcFace(model.embedding_size, N)``,
        ``PartialFC``), which needs the labels and so is not part of the model.

        Raises:
            ValueError: for ``num_classes`` other than 0.
        """
        if num_classes != 0:
            raise ValueError(no_classifier_message(num_classes))

    def first_conv_module(self) -> nn.Conv2d:
        """The first convolution, e.g. to grow it with :func:`faceaux.expand_input_channels`."""
        return self.get_submodule(self.first_conv)

    @property
    def in_channels(self) -> int:
        """Input channels: the first convolution's, so growing it updates them."""
        return self.first_conv_module().in_channels

    @property
    def num_stages(self) -> int:
        """N, the number of stages in ``feature_info``."""
        return len(self.feature_info)

    def stage_blocks(self, index: int) -> tuple[str, ...]:
        """Names of the blocks of stage ``index``, in order (the points of 1-many taps)."""
        return tuple(self.feature_info[index]["blocks"])

    def _run_stage(self, index: int, x: torch.Tensor, tap: Tap | None) -> torch.Tensor:
        info = self.feature_info[index]
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if tap is None and not recompute and info["module"] not in info["blocks"]:
            return self.get_submodule(info["module"])(x)  # the stage container itself
        for name in info["blocks"]:
            block = self.get_submodule(name)
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if tap is not None:
                x = tap(name, x)
        if tap is not None and info["module"] != info["blocks"][-1]:
            x = tap(info["module"], x)
        return x

    def forward_stages(self, images: torch.Tensor, tap: Tap | None = None) -> torch.Tensor:
        """Stem and every stage, calling ``tap(name, feature)`` after each block and stage."""
        x = self.forward_stem(images)
        for index in range(self.num_stages):
            x = self._run_stage(index, x, tap)
        return x

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (the output stage's input)."""
        return self.forward_stages(images)

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        stop_early: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NCHW",
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """timm's ``forward_intermediates``: the final map and the outputs of stages ``indices``.

        Args:
            images: input images.
            indices: ``None`` (all stages), an int n (the last n) or a list of stage indices.
            stop_early: stop after the last requested stage (the returned final map is then
                that stage's output).
            intermediates_only: return only the list of stage outputs.
            output_fmt: ``"NCHW"`` (the only layout faceaux backbones produce).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: expected 'NCHW', received {output_fmt!r}")
        wanted = resolve_indices(indices, self.num_stages)
        last = max(wanted) if (stop_early or intermediates_only) else self.num_stages - 1
        outputs: dict[int, torch.Tensor] = {}
        x = self.forward_stem(images)
        for index in range(last + 1):
            x = self._run_stage(index, x, None)
            if index in wanted:
                outputs[index] = x
        ordered = [outputs[i] for i in wanted]
        return ordered if intermediates_only else (x, ordered)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding (B, D) of ``images`` (B, C, H, W)."""
        return self.forward_head(self.forward_features(images))
