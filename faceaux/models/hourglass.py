"""Stacked hourglass networks built from Bulat's hierarchical ConvBlock: FAN and friends.

FAN (Bulat & Tzimiropoulos, "How far are we from solving the 2D & 3D face alignment problem?",
ICCV 2017) is the landmark network that FAN-Face (Yang, Bulat & Tzimiropoulos, usually cited as
AAAI 2020, §3.1) freezes and integrates into a face recognizer. The module and parameter names
here are those of the public ``face-alignment`` package, so its 2D-FAN state dicts load without
renaming (:func:`load_face_alignment_checkpoint`).

The pieces are general, so other hourglass networks can be built from them: :class:`ConvBlock`
(any in/out widths), :class:`HourGlass` (any depth and width) and :class:`StackedHourGlass`
(any number of stacks, output channels, input channels and native input size). A face-parsing
network with 11 classes, 2 stacks, at 128×128 is
``StackedHourGlass(num_stacks=2, out_channels=11, input_size=128)``: it maps (B, 3, 128, 128)
to per-stack logits (B, 11, 32, 32), to be up-sampled by 4 for full-resolution masks.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from faceaux.models.features import check_images

__all__ = [
    "FAN",
    "ConvBlock",
    "HourGlass",
    "StackedHourGlass",
    "load_face_alignment_checkpoint",
]

_POOLS = ("avg", "max")


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "avg":
        return F.avg_pool2d(x, 2, stride=2)
    return F.max_pool2d(x, 2, stride=2)


class ConvBlock(nn.Module):
    """Bulat's hierarchical, parallel, multi-scale residual block (pre-activation).

    Bulat & Tzimiropoulos, "Binarized convolutional landmark localizers ...", ICCV 2017 (the
    block FAN is built from, FAN-Face §3.1). Three BN → ReLU → 3×3 conv steps in sequence with
    widths out/2, out/4, out/4; their outputs are concatenated (out channels in total) and added
    to the input, which passes through BN → ReLU → 1×1 conv (``downsample``) when the widths
    differ. Convolutions have no bias. Parameter names: ``bn1/conv1``, ``bn2/conv2``,
    ``bn3/conv3``, ``downsample.0`` (BN), ``downsample.2`` (1×1 conv) — face-alignment's.

    Args:
        in_channels: Cin, channels of the input.
        out_channels: Cout, channels of the output; must be divisible by 4.

    Shape:
        - x: (B, Cin, H, W)
        - output: (B, Cout, H, W)

    Examples:
        >>> block = ConvBlock(64, 128)
        >>> block(torch.randn(2, 64, 16, 16)).shape
        torch.Size([2, 128, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 4 != 0:
            raise ValueError(f"out_channels: expected a multiple of 4, received {out_channels}")
        half, quarter = out_channels // 2, out_channels // 4
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, quarter, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = nn.Conv2d(quarter, quarter, 3, padding=1, bias=False)
        self.downsample: nn.Module | None = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_channels),
                nn.ReLU(),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat((out1, out2, out3), dim=1) + residual


class HourGlass(nn.Module):
    """One hourglass of depth D: a high-to-low (h2l) pooling path and a low-to-high (l2h) path.

    Newell et al., "Stacked hourglass networks", ECCV 2016, with Bulat's :class:`ConvBlock` as in
    FAN (FAN-Face §3.1). Level L (D…1) holds ``b1_L`` (the skip branch at the level's input
    resolution), ``b2_L`` (after 2× down-sampling), ``b3_L`` (after the lower levels, before 2×
    nearest up-sampling); level 1 also holds ``b2_plus_1`` at the bottom. Down-sampling is 2×2
    average pooling (the current face-alignment models; ``pool="max"`` for the older ones).

    :meth:`forward_features` also returns the integration points of FAN-Face §3.3, indexed by
    scale j = 0…D (resolution = input resolution / 2**j):

    - ``h2l[j]``: the end of the high-to-low stage at scale j, before it is down-sampled — the
      hourglass input for j = 0, the output of ``b2_{D-j+1}`` for 0 < j < D, and the bottom of the
      hourglass (output of ``b2_plus_1``) for j = D.
    - ``l2h[j]``: the end of the low-to-high stage at scale j, before it is up-sampled — the output
      of ``b3_{D-j+1}`` for j > 0, and the hourglass output for j = 0.

    Args:
        depth: D, the number of down-sampling steps (FAN: 4).
        num_features: C, the width of every block (FAN: 256).
        pool: ``"avg"`` or ``"max"`` 2×2 down-sampling.

    Shape:
        - x: (B, C, H, W), H and W divisible by 2**D
        - output: (B, C, H, W)

    Examples:
        >>> hourglass = HourGlass(depth=2, num_features=16)
        >>> out, h2l, l2h = hourglass.forward_features(torch.randn(1, 16, 8, 8))
        >>> out.shape, [t.shape[-1] for t in h2l], [t.shape[-1] for t in l2h]
        (torch.Size([1, 16, 8, 8]), [8, 4, 2], [8, 4, 2])
    """

    def __init__(self, depth: int = 4, num_features: int = 256, pool: str = "avg") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth: expected at least 1, received {depth}")
        if pool not in _POOLS:
            raise ValueError(f"pool: expected one of {_POOLS}, received {pool!r}")
        self.depth = depth
        self.num_features = num_features
        self.pool = pool
        # Registration order follows face-alignment's recursive construction (b1, b2 going down,
        # b2_plus at the bottom, b3 coming up), so state dicts list keys in the same order.
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(num_features, num_features))
            self.add_module(f"b2_{level}", ConvBlock(num_features, num_features))
        self.add_module("b2_plus_1", ConvBlock(num_features, num_features))
        for level in range(1, depth + 1):
            self.add_module(f"b3_{level}", ConvBlock(num_features, num_features))

    def forward_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run the hourglass; return (output, h2l features, l2h features), both listed by scale."""
        h2l: list[torch.Tensor] = []
        skips: list[torch.Tensor] = []
        low = x
        for level in range(self.depth, 0, -1):
            h2l.append(low)
            skips.append(self._modules[f"b1_{level}"](low))
            low = self._modules[f"b2_{level}"](_pool(low, self.pool))
        low = self._modules["b2_plus_1"](low)
        h2l.append(low)
        l2h: list[torch.Tensor] = []
        for level in range(1, self.depth + 1):
            low = self._modules[f"b3_{level}"](low)
            l2h.append(low)
            skip = skips[-level]
            low = skip + F.interpolate(low, size=skip.shape[-2:], mode="nearest")
        l2h.append(low)
        return low, h2l, l2h[::-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class StackedHourGlass(nn.Module):
    """A stack of hourglasses with FAN's stem and intermediate supervision (any output head).

    The architecture of FAN (Bulat & Tzimiropoulos 2017; FAN-Face §3.1) with the number of
    stacks, output channels, input channels, width and depth as arguments. Stem: ``conv1`` (7×7,
    stride 2, bias) → ``bn1`` → ReLU → ``conv2`` (ConvBlock 64→128) → 2×2 pool → ``conv3``
    (128→128) → ``conv4`` (128→C): the hourglasses run at 1/4 of the input resolution. Stack i
    (0-based in parameter names): ``m{i}`` (:class:`HourGlass`) → ``top_m_{i}`` (ConvBlock) →
    ``conv_last{i}`` (1×1) → ``bn_end{i}`` → ReLU → ``l{i}`` (1×1 → output maps); all but the last
    stack feed back ``bl{i}`` (1×1 on the features) + ``al{i}`` (1×1 on the output maps) into the
    next stack's input.

    :meth:`forward_features` returns a dict (stacks numbered **from 1**, as the paper's
    "hourglass 2"/"h2l-2"; resolutions are **nominal**, i.e. those at the native ``input_size``:
    64, 32, 16, 8, 4 for FAN at 256×256, and the tensors scale with other input sizes):

    - ``"heatmaps.{s}"``: stack s's output maps, (B, out_channels, H/4, W/4);
    - ``"h2l.{s}.{r}"``: hourglass s's high-to-low feature at resolution r, (B, C, r, r);
    - ``"l2h.{s}.{r}"``: hourglass s's low-to-high feature at resolution r, (B, C, r, r);

    see :class:`HourGlass` for which tensor each is. :meth:`feature_keys` lists them.

    Args:
        num_stacks: number of hourglasses.
        out_channels: N, output maps per stack (landmarks for FAN, classes for a parsing net).
        in_channels: channels of the input image.
        num_features: C, width of the hourglasses (FAN: 256).
        depth: down-sampling steps per hourglass (FAN: 4).
        input_size: native input resolution, used to name the resolutions in feature keys.
        pool: ``"avg"`` (current face-alignment models) or ``"max"`` (its pre-1.1 models).

    Shape:
        - x: (B, in_channels, H, W), H and W divisible by 4·2**depth (64 for FAN)
        - output: (B, N, H/4, W/4), the last stack's maps

    Examples:
        >>> net = StackedHourGlass(num_stacks=2, out_channels=11, num_features=32, depth=2,
        ...                        input_size=64).eval()
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 11, 16, 16])
        >>> sorted(net.forward_features(torch.randn(1, 3, 64, 64)))[:4]
        ['h2l.1.16', 'h2l.1.4', 'h2l.1.8', 'h2l.2.16']
    """

    def __init__(
        self,
        num_stacks: int = 2,
        out_channels: int = 68,
        *,
        in_channels: int = 3,
        num_features: int = 256,
        depth: int = 4,
        input_size: int = 256,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        if num_stacks < 1:
            raise ValueError(f"num_stacks: expected at least 1, received {num_stacks}")
        if pool not in _POOLS:
            raise ValueError(f"pool: expected one of {_POOLS}, received {pool!r}")
        if input_size % (4 * 2**depth) != 0:
            raise ValueError(
                f"input_size: expected a multiple of {4 * 2**depth} (4·2**depth), "
                f"received {input_size}"
            )
        self.num_stacks = num_stacks
        self.out_channels = out_channels
        self.in_channels = in_channels
        self.num_features = num_features
        self.depth = depth
        self.input_size = input_size
        self.pool = pool
        self.frozen = False

        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, num_features)
        for i in range(num_stacks):
            self.add_module(f"m{i}", HourGlass(depth, num_features, pool))
            self.add_module(f"top_m_{i}", ConvBlock(num_features, num_features))
            self.add_module(f"conv_last{i}", nn.Conv2d(num_features, num_features, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(num_features))
            self.add_module(f"l{i}", nn.Conv2d(num_features, out_channels, 1))
            if i < num_stacks - 1:
                self.add_module(f"bl{i}", nn.Conv2d(num_features, num_features, 1))
                self.add_module(f"al{i}", nn.Conv2d(out_channels, num_features, 1))

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Nominal resolutions of the hourglass levels, largest first (FAN: 64, 32, 16, 8, 4)."""
        base = self.input_size // 4
        return tuple(base // 2**j for j in range(self.depth + 1))

    def feature_keys(self) -> list[str]:
        """Every key :meth:`forward_features` returns, e.g. ``"h2l.2.64"``."""
        keys = []
        for s in range(1, self.num_stacks + 1):
            keys.append(f"heatmaps.{s}")
            keys += [f"h2l.{s}.{r}" for r in self.resolutions]
            keys += [f"l2h.{s}.{r}" for r in self.resolutions]
        return keys

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(self, x, "x", sizes=(None, self.in_channels, None, None), one_sample_ok=True)
        multiple = 4 * 2**self.depth
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"x: expected H and W divisible by {multiple} (4·2**depth), "
                f"received shape {tuple(x.shape)}"
            )

    def _run(self, x: torch.Tensor, collect: bool) -> dict[str, torch.Tensor]:
        self._check_input(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = _pool(self.conv2(x), self.pool)
        previous = self.conv4(self.conv3(x))
        out: dict[str, torch.Tensor] = {}
        for i in range(self.num_stacks):
            hourglass, h2l, l2h = self._modules[f"m{i}"].forward_features(previous)
            features = self._modules[f"top_m_{i}"](hourglass)
            features = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](features)))
            heatmaps = self._modules[f"l{i}"](features)
            out[f"heatmaps.{i + 1}"] = heatmaps
            if collect:
                for r, down, up in zip(self.resolutions, h2l, l2h, strict=True):
                    out[f"h2l.{i + 1}.{r}"] = down
                    out[f"l2h.{i + 1}.{r}"] = up
            if i < self.num_stacks - 1:
                previous = (
                    previous + self._modules[f"bl{i}"](features) + self._modules[f"al{i}"](heatmaps)
                )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last stack's output maps, (B, N, H/4, W/4)."""
        return self._run(x, collect=False)[f"heatmaps.{self.num_stacks}"]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stack's output maps and h2l/l2h features, keyed as in the class docstring."""
        return self._run(x, collect=True)

    def freeze(self) -> StackedHourGlass:
        """Freeze for use inside a recognizer: no gradients, and eval mode kept for good.

        Sets ``requires_grad_(False)`` and eval mode; afterwards ``.train()`` (called directly
        or by a parent module) leaves this network in eval mode, so its BatchNorm statistics
        never change (FAN-Face §4: "FAN remained fixed for the whole training procedure").
        :meth:`unfreeze` undoes it.

        Examples:
            >>> net = StackedHourGlass(1, 5, num_features=16, depth=1, input_size=8).freeze()
            >>> parent = nn.Sequential(net).train()
            >>> net.training, any(p.requires_grad for p in net.parameters())
            (False, False)
        """
        self.frozen = True
        self.requires_grad_(False)
        return self.eval()

    def unfreeze(self) -> StackedHourGlass:
        """Undo :meth:`freeze`: parameters require gradients and ``.train()`` works again."""
        self.frozen = False
        self.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> StackedHourGlass:
        return super().train(mode and not self.frozen)


class FAN(StackedHourGlass):
    """FAN, the 2D face-alignment network: stacked hourglasses that regress landmark heatmaps.

    Bulat & Tzimiropoulos, ICCV 2017, as used by FAN-Face (§3.1: "We used 2 stacks as they
    suffice"). 256×256 RGB input in [0, 1] (face-alignment's convention), 64×64 heatmaps, depth-4
    hourglasses of width 256; the state-dict layout is the public face-alignment package's. See
    :class:`StackedHourGlass` for the layers and the keys of :meth:`forward_features`
    (``"h2l.2.64"`` is the paper's h2l-2 feature at 64×64), and
    :func:`load_face_alignment_checkpoint` for weights.

    Args:
        num_stacks: number of hourglasses (the paper: 2; face-alignment's 2DFAN-4: 4).
        num_landmarks: N, heatmaps per stack (68 for the 68-point layout).
        **kwargs: passed to :class:`StackedHourGlass` (``in_channels``, ``num_features``,
            ``depth``, ``input_size``, ``pool``); the defaults are FAN's.

    Shape:
        - x: (B, 3, H, W), H and W divisible by 64 (native: 256)
        - output: (B, N, H/4, W/4), the last stack's heatmaps

    Examples:
        >>> fan = FAN(num_stacks=2, num_landmarks=68).eval()
        >>> with torch.no_grad():
        ...     features = fan.forward_features(torch.rand(1, 3, 256, 256))
        >>> features["heatmaps.2"].shape, features["h2l.2.64"].shape, features["l2h.1.4"].shape
        (torch.Size([1, 68, 64, 64]), torch.Size([1, 256, 64, 64]), torch.Size([1, 256, 4, 4]))
    """

    def __init__(self, num_stacks: int = 2, num_landmarks: int = 68, **kwargs) -> None:
        super().__init__(num_stacks, num_landmarks, **kwargs)

    @property
    def num_landmarks(self) -> int:
        return self.out_channels

    def load_face_alignment_checkpoint(
        self, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]
    ) -> FAN:
        """Load a face-alignment FAN state dict into this network; see the module function."""
        state = _read_state_dict(checkpoint)
        _load_into(self, state)
        return self


_STACK_KEY = re.compile(r"^(m|top_m_|conv_last|bn_end|l|bl|al)(\d+)\.")


def _read_state_dict(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
            raise ValueError(
                f"checkpoint: could not read {os.fspath(checkpoint)!r} as a plain PyTorch state "
                f"dict with torch.load(weights_only=True) ({error}). face-alignment's current "
                "models are TorchScript archives: convert one with "
                "`torch.save(torch.jit.load(path).state_dict(), new_path)`."
            ) from error
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"checkpoint: expected a state dict (a mapping from names to tensors), received "
            f"{type(state).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _head(items: list[str], limit: int = 8) -> str:
    more = f" … ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _load_into(model: StackedHourGlass, state: dict[str, torch.Tensor]) -> None:
    # Stacks beyond the model's, and the last kept stack's feedback convolutions (bl/al), are
    # dropped: a 4-stack 2DFAN-4 gives a 2-stack FAN whose heatmaps are its second stack's.
    def kept(key: str) -> bool:
        match = _STACK_KEY.match(key)
        if match is None:
            return True
        index = int(match.group(2))
        if match.group(1) in ("bl", "al"):
            return index < model.num_stacks - 1
        return index < model.num_stacks

    state = {k: v for k, v in state.items() if kept(k)}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label}: {_head(items)}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise ValueError(
            f"checkpoint: not a face-alignment FAN state dict for {model.num_stacks} stack(s) and "
            f"{model.out_channels} output maps; " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)


def load_face_alignment_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    num_stacks: int = 2,
    **kwargs,
) -> FAN:
    """Build a FAN and load a face-alignment checkpoint the user downloaded (no network access).

    The file must be a plain state dict in the layout of the public face-alignment package's FAN
    (e.g. 2DFAN-4's), read with ``torch.load(path, map_location="cpu", weights_only=True)``; a
    ``{"state_dict": ...}`` wrapper and DataParallel ``module.`` prefixes are accepted, and
    BatchNorm ``num_batches_tracked`` entries may be absent (old checkpoints). The number of
    landmarks is read from the checkpoint's ``l0.weight``.

    A checkpoint with more stacks than ``num_stacks`` loads by keeping its first ``num_stacks``
    stacks (and dropping the feedback convolutions ``bl``/``al`` of the last kept one): FAN is
    trained with intermediate supervision on every stack, so each stack's heatmaps are valid
    predictions — a 4-stack 2DFAN-4 gives the paper's 2-stack FAN (FAN-Face §3.1).

    Args:
        checkpoint: path to the state-dict file, or the state dict itself.
        num_stacks: stacks of the returned FAN (the paper: 2).
        **kwargs: other :class:`FAN` arguments, e.g. ``pool="max"`` for pre-1.1 face-alignment
            models trained with max pooling.

    Returns:
        The FAN, in eval mode.

    Shape:
        - checkpoint ``l0.weight``: ``(K, 256, 1, 1)``; K (68 for 2DFAN-4) sets ``num_landmarks``
        - the returned FAN: ``(B, 3, 256, 256)`` → heatmaps ``(B, K, 64, 64)`` (see :class:`FAN`)

    Raises:
        ValueError: the file is not a readable state dict, or its keys/shapes do not match
            (the message lists the missing and unexpected keys and the shape mismatches).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "fan.pth")
        >>> torch.save(FAN(num_stacks=4, num_landmarks=68).state_dict(), path)
        >>> fan = load_face_alignment_checkpoint(path, num_stacks=2)
        >>> fan.num_stacks, fan.num_landmarks, fan.training
        (2, 68, False)
    """
    state = _read_state_dict(checkpoint)
    if "l0.weight" not in state:
        raise ValueError("checkpoint: not a face-alignment FAN state dict; missing keys: l0.weight")
    model = FAN(num_stacks, int(state["l0.weight"].shape[0]), **kwargs)
    _load_into(model, state)
    return model.eval()
