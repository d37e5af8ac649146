"""BackboneAdapter: give any network (timm, torchvision, InsightFace …) faceaux's stage contract.

The one place in faceaux where forward hooks are used. Given the names of a network's stage
modules, the adapter

- finds each stage's channels and reduction (the nominal stride: the power of two nearest to
  input / output size) with one dry run (eval mode, no gradients);
- registers a forward hook on every stage module and on every block of it (the items of an
  ``nn.Sequential`` stage; a stage of another type is one block), once;
  during :meth:`BackboneAdapter.forward_stages` the hooks pass each output through the caller's
  ``tap(name, feature)`` (which may change it) and record the last stage's output, then stop the
  network (``stop_early``) so its own classifier never runs;
- adds a face output stage (:class:`faceaux.models.EmbeddingHead`: FC, GAP or GNAP), or, with
  ``head=None``, keeps the network's own output as the output (then the whole network runs and
  ``forward_stages`` returns its output, ``forward_head`` is the identity: what
  :class:`faceaux.FANFeatureIntegrator` uses to integrate into a network that already makes
  embeddings).

The per-call state (the tap, the captured output) lives in a thread-local frame keyed by the
adapter, never on the module: the adapter is re-entrant and thread-safe, ``copy.deepcopy`` gives
an independent adapter, and outside ``forward_stages`` the hooks do nothing, so the wrapped
network still runs on its own exactly as before.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch
from torch import nn

from faceaux._checks import check_positive_int
from faceaux.models.embedding_head import POOLINGS, EmbeddingHead
from faceaux.models.features import Tap, check_images, resolve_indices

__all__ = ["BackboneAdapter"]

_FRAMES = threading.local()


def _frames() -> dict[int, dict]:
    frames = getattr(_FRAMES, "frames", None)
    if frames is None:
        frames = _FRAMES.frames = {}
    return frames


class _StopForward(Exception):
    """Raised by the last stage's hook to skip the rest of the network (``args[0]``: its key)."""


class _Context:
    """Identifies one adapter for its hooks (deep-copied along with it, so copies stay apart)."""


class _StageHook:
    """Forward hook on a stage or block: apply the active frame's tap, record, maybe stop."""

    def __init__(self, context: _Context, name: str, last: bool) -> None:
        self.context = context
        self.name = name
        self.last = last

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        frame = _frames().get(id(self.context))
        if frame is None:
            return None  # the network runs on its own: leave it alone
        if frame["tap"] is not None:
            output = frame["tap"](self.name, output)
        if self.last:
            frame["last"] = output
            # torch.export cannot trace an exception: there the rest of the network runs
            if frame["stop"] and not torch.compiler.is_exporting():
                raise _StopForward(id(self.context))
        return output


def _default_stages(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(
            f"stages: {type(model).__name__} has no timm-style feature_info; give the names of "
            "its stage modules, e.g. stages=('layer1', 'layer2', 'layer3', 'layer4')"
        )
    if hasattr(info, "module_name"):  # timm's FeatureInfo (features_only models)
        return list(info.module_name())
    return [entry["module"] for entry in info]


def _default_first_conv(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv") if isinstance(cfg, dict) else None
    modules = dict(model.named_modules())
    if isinstance(name, str) and isinstance(modules.get(name), nn.Conv2d):
        return name
    for module_name, module in modules.items():
        if isinstance(module, nn.Conv2d):
            return module_name
    return None


class BackboneAdapter(nn.Module):
    """Wrap any network so that it speaks faceaux's stage contract and has a face output stage.

    See the module docstring for how it works. Stage and block names are those of
    ``model.named_modules()`` (``"layer1"``, ``"layer1.0"`` …), in ``feature_info`` and in the
    names the taps receive.

    Args:
        model: the network (e.g. ``timm.create_model("resnet18")``, torchvision's
            ``resnet18()``, InsightFace's ``iresnet50()``, a timm ``features_only=True`` model).
        stages: names of its stage modules, in forward order; default: the model's timm
            ``feature_info`` modules.
        head: the output stage, ``"gap"`` (default), ``"gnap"`` or ``"fc"`` (see
            :class:`faceaux.models.EmbeddingHead`), or ``None``: the network's own output.
        embedding_size: D.
        input_size: (H, W) of the images, for the dry run (and the ``"fc"`` head's input size).
        in_channels: channels of the images; default the first convolution's.
        first_conv: name of the first convolution (grown when heatmaps are stacked on the
            input); default timm's ``pretrained_cfg["first_conv"]`` or the first ``Conv2d``.
        dropout: dropout before the output stage's FC.
        stop_early: stop the network after the last stage (its own pooling and classifier
            never run). Set ``False`` where raising inside forward is not wanted (the whole
            network then runs and its output is discarded).

    Shape:
        - images: (B, in_channels, H, W)
        - ``forward_stages`` / ``forward_features``: (B, C_N, h_N, w_N), the last stage's output
        - output: (B, D)

    Examples:
        >>> net = nn.Sequential()
        >>> net.add_module("stem", nn.Conv2d(3, 8, 3, padding=1))
        >>> net.add_module("stage1", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1)))
        >>> net.add_module("stage2", nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1)))
        >>> net.add_module("classifier", nn.Sequential(nn.Flatten(), nn.LazyLinear(10)))
        >>> backbone = BackboneAdapter(net, ["stage1", "stage2"], embedding_size=64,
        ...                            input_size=(32, 32)).eval()
        >>> [(f["module"], f["num_chs"], f["reduction"]) for f in backbone.feature_info]
        [('stage1', 16, 2), ('stage2', 32, 4)]
        >>> backbone(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        stages: Sequence[str] | None = None,
        *,
        head: str | None = "gap",
        embedding_size: int = 512,
        input_size: Sequence[int] = (112, 112),
        in_channels: int | None = None,
        first_conv: str | None = None,
        dropout: float = 0.0,
        stop_early: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, received {type(model).__name__}")
        if head is not None and head not in POOLINGS:
            raise ValueError(f"head: expected one of {POOLINGS} or None, received {head!r}")
        check_positive_int(embedding_size, "embedding_size")
        if len(tuple(input_size)) != 2:
            raise ValueError(f"input_size: expected (H, W), received {tuple(input_size)}")
        self.model = model
        self.input_size = tuple(int(s) for s in input_size)
        self.embedding_size = embedding_size
        self.stop_early = bool(stop_early) and head is not None
        stage_names = list(stages) if stages is not None else _default_stages(model)
        modules = dict(model.named_modules())
        missing = [n for n in stage_names if n not in modules]
        if not stage_names or missing:
            raise ValueError(
                f"stages: expected names of modules of the model, received {stage_names} "
                f"(not found: {missing})"
            )
        self.first_conv = first_conv if first_conv is not None else _default_first_conv(model)
        if self.first_conv is not None and not isinstance(modules.get(self.first_conv), nn.Conv2d):
            raise ValueError(f"first_conv: {self.first_conv!r} is not an nn.Conv2d of the model")
        if in_channels is None:
            first = modules.get(self.first_conv) if self.first_conv is not None else None
            in_channels = first.in_channels if first is not None else 3
        check_positive_int(in_channels, "in_channels")
        blocks = []
        for name in stage_names:  # a stage's blocks: the items of a Sequential, else itself
            stage = modules[name]
            children = [f"{name}.{child}" for child, _ in stage.named_children()]
            sequential = isinstance(stage, (nn.Sequential, nn.ModuleList)) and children
            blocks.append(tuple(children) if sequential else (name,))
        self._context = _Context()
        shapes = self._dry_run(stage_names, in_channels)
        self.feature_info = [
            {
                "module": name,
                "num_chs": shape[0],
                "reduction": 2 ** max(0, round(math.log2(self.input_size[0] / shape[1]))),
                "blocks": block_names,
            }
            for name, shape, block_names in zip(stage_names, shapes, blocks, strict=True)
        ]
        points = {n for block_names in blocks for n in block_names} | set(stage_names)
        order = list(modules)
        for name in sorted(points, key=order.index):
            hook = _StageHook(self._context, name, last=name == stage_names[-1])
            modules[name].register_forward_hook(hook)
        channels, height, width = shapes[-1]
        self.head = None
        if head is not None:
            self.head = EmbeddingHead(
                head, channels, embedding_size, feature_size=(height, width), dropout=dropout
            )

    def _dry_run(self, names: list[str], in_channels: int) -> list[tuple[int, int, int]]:
        modules = dict(self.model.named_modules())
        found: dict[str, tuple[int, int, int]] = {}

        def record(name: str):
            def hook(module: nn.Module, inputs: tuple, output: object) -> None:
                if not isinstance(output, torch.Tensor) or output.ndim != 4:
                    raise ValueError(
                        f"stages: module {name!r} must output a (B, C, H, W) tensor, received "
                        f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}"
                    )
                found[name] = tuple(output.shape[1:])

            return hook

        handles = [modules[n].register_forward_hook(record(n)) for n in names]
        reference = next(self.model.parameters(), None)
        probe = torch.zeros(
            2,
            in_channels,
            *self.input_size,
            device=None if reference is None else reference.device,
            dtype=None if reference is None else reference.dtype,
        )
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(probe)
        except RuntimeError as error:
            raise ValueError(
                f"model: a dry run on input shape {tuple(probe.shape)} failed ({error}); check "
                "input_size and in_channels"
            ) from error
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        unseen = [n for n in names if n not in found]
        if unseen:
            raise ValueError(f"stages: modules {unseen} never ran in the model's forward")
        return [found[n] for n in names]

    @property
    def num_stages(self) -> int:
        """N, the number of stages."""
        return len(self.feature_info)

    @property
    def in_channels(self) -> int:
        """Input channels of ``first_conv`` (grown by ``expand_input_channels``)."""
        if self.first_conv is None:
            raise ValueError("first_conv: this adapter's model has no first convolution")
        return self.model.get_submodule(self.first_conv).in_channels

    def first_conv_module(self) -> nn.Conv2d:
        """The first convolution (``first_conv``), e.g. to grow it for stacked heatmaps."""
        if self.first_conv is None:
            raise ValueError("first_conv: this adapter's model has no first convolution")
        return self.model.get_submodule(self.first_conv)

    def stage_blocks(self, index: int) -> tuple[str, ...]:
        """Names of the blocks of stage ``index``: the items of a ``Sequential`` stage, else the
        stage itself (a single residual block's branches are not blocks)."""
        return tuple(self.feature_info[index]["blocks"])

    def forward_stages(self, images: torch.Tensor, tap: Tap | None = None) -> torch.Tensor:
        """Run the network, calling ``tap(name, feature)`` after every block and stage.

        Returns the last stage's output (after its tap); with ``head=None`` the network's own
        output.
        """
        check_images(self, images)
        key = id(self._context)
        frames = _frames()
        if key in frames:
            raise RuntimeError("BackboneAdapter.forward_stages: re-entered on the same thread")
        frame = frames[key] = {"tap": tap, "last": None, "stop": self.stop_early}
        output = None
        try:
            output = self.model(images)
        except _StopForward as stop:
            if stop.args[0] != key:
                raise
        finally:
            del frames[key]
        if frame["last"] is None:
            raise ValueError(
                f"stages: the last stage {self.feature_info[-1]['module']!r} did not run"
            )
        return output if self.head is None else frame["last"]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last stage's output."""
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

        ``stop_early`` is accepted for timm compatibility; the adapter always stops after the
        last stage when built with ``stop_early=True``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: expected 'NCHW', received {output_fmt!r}")
        wanted = resolve_indices(indices, self.num_stages)
        names = {self.feature_info[i]["module"]: i for i in wanted}
        captured: dict[int, torch.Tensor] = {}

        def record(name: str, feature: torch.Tensor) -> torch.Tensor:
            if name in names:
                captured[names[name]] = feature
            return feature

        final = self.forward_stages(images, record)
        ordered = [captured[i] for i in wanted]
        return ordered if intermediates_only else (final, ordered)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The output stage: last stage's map → (B, D) (the identity with ``head=None``)."""
        return features if self.head is None else self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding (B, D) (with ``head=None``: the network's output) of ``images``."""
        return self.forward_head(self.forward_stages(images))

    def extra_repr(self) -> str:
        stages = [f["module"] for f in self.feature_info]
        return f"stages={stages}, stop_early={self.stop_early}"
