"""FAN-Face feature integration: add a frozen landmark network's features into any recognizer.

Yang, Bulat & Tzimiropoulos, "FAN-Face: a simple orthogonal improvement to deep face
recognition", AAAI 2020 (``papers/fanface-landmark-feature-integration.txt``) §3.3–3.4:
features x_l of the landmark network FAN are merged into features y_k of the face recognition
network (FRN) as ỹ_k = y_k + γ·f(x_l, y_k) (eq. 2), where f is the integration layer of Fig. 3
(:class:`FANIntegrationLayer`, built around :func:`adain`). :class:`FANFeatureIntegrator` bolts
FAN onto an unmodified backbone with forward hooks; :func:`expand_input_channels` grows a first
convolution for the stacked image-heatmap input (eq. 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import check_same_batch, check_tensor
from faceaux.layers.heatmaps import INTERNAL_51, HeatmapStacker

__all__ = [
    "FANFeatureIntegrator",
    "FANIntegrationLayer",
    "adain",
    "expand_input_channels",
]

_VARIANTS = ("basic", "simple", "advanced")


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation: give ``content`` the per-channel statistics of ``style``.

    Huang & Belongie, ICCV 2017, as used in FAN-Face's integration layer (§3.4 (b), Fig. 3):
    AdaIN(c, s) = σ(s)·(c − μ(c))/σ(c) + μ(s), with per-sample, per-channel mean μ and standard
    deviation σ = sqrt(var + eps) over the spatial positions (biased variance, as
    ``nn.InstanceNorm2d``). The statistics are computed in at least float32 and the result is
    cast back to ``content``'s dtype. A constant content channel maps to μ(s) (finite values and
    gradients).

    Args:
        content: the tensor to re-normalise (the FRN feature y_k in FAN-Face).
        style: the tensor whose statistics are imposed (the aligned FAN feature x_l').
        eps: added to the variances.

    Shape:
        - content: (B, C, H, W)
        - style: (B, C, h, w), any spatial size
        - output: (B, C, H, W)

    Examples:
        >>> out = adain(torch.randn(2, 4, 8, 8), 3 + 2 * torch.randn(2, 4, 8, 8))
        >>> out.shape
        torch.Size([2, 4, 8, 8])
    """
    check_tensor(content, "content", "(B, C, H, W)", floating=True)
    check_tensor(style, "style", "(B, C, h, w)", sizes=(None, content.shape[1], None, None))
    check_same_batch(content, "content", style, "style")
    compute = torch.promote_types(content.dtype, torch.float32)
    c, s = content.to(compute), style.to(compute)
    c_var, c_mean = torch.var_mean(c, dim=(-2, -1), keepdim=True, correction=0)
    s_var, s_mean = torch.var_mean(s, dim=(-2, -1), keepdim=True, correction=0)
    out = (c - c_mean) * torch.rsqrt(c_var + eps) * torch.sqrt(s_var + eps) + s_mean
    return out.to(content.dtype)


class FANIntegrationLayer(nn.Module):
    """FAN-Face's integration layer: ỹ = y + γ·f(x, y), merging a FAN feature into an FRN feature.

    FAN-Face §3.3 eq. 2 and §3.4, Fig. 3. With x resized (bilinear) to y's (H, W) when they
    differ, x' = Conv1×1(BN(x)) (BatchNorm adjusts the scale of the FAN feature, the 1×1 conv
    maps Cl → Ck channels) and y' = AdaIN(y; statistics of x') (:func:`adain`), f is

    - ``"basic"`` (BL): PReLU(BN(Conv1×1([y', x']))), the 1×1 conv mapping 2Ck → Ck;
    - ``"simple"`` (SL): y' + x';
    - ``"advanced"`` (AL): BL with the 1×1 conv replaced by a bottleneck 1×1 (2Ck → Cb) →
      BN → PReLU → 3×3 (Cb → Cb) → BN → PReLU → 1×1 (Cb → Ck), Cb = ``bottleneck_channels``.

    Choices where the paper is not explicit: AdaIN re-normalises y to x''s statistics (§3.4 (b)
    "makes the distribution of y_k similar to that of x_l"; Fig. 3's caption is symmetric); the
    BatchNorm of BL/AL sits after the fusing convolution and before PReLU (Fig. 3); the aligning
    1×1 conv has a bias, the convolutions followed by BatchNorm do not; PReLU is per channel;
    SL has no BatchNorm/PReLU after the sum; AL's Cb defaults to Ck/4 (ResNet's bottleneck
    ratio). With a fixed γ = 0 the layer returns y itself without computing f.

    Parameter count (learnable γ adds 1), Cl FAN channels, Ck FRN channels:

    - BL: 2Ck² + Cl·Ck + 2Cl + 4Ck
    - SL: Cl·Ck + 2Cl + Ck
    - AL: Cl·Ck + 2Cl + 4Ck + 3Ck·Cb + 9Cb² + 6Cb
      (with Cb = Ck/4: 1.3125Ck² + Cl·Ck + 2Cl + 5.5Ck)

    For IResNet-34's widths Ck = 64, 128, 256, 512 and FAN's Cl = 256, one layer per resolution
    (1-1 connectivity) adds BL: 25,344 + 66,560 + 198,144 + 657,920 = **947,968**; SL: 16,960 +
    33,408 + 66,304 + 132,096 = 248,768; AL: 22,624 + 55,488 + 153,472 + 478,464 = 710,048
    (counted with the real modules in ``tests/layers/test_integration.py``); 1-many multiplies
    each stage's count by its number of blocks (3, 4, 6, 3 for IResNet-34: BL 3,504,912 with
    the γ_k). The paper's "40K to 110K" extra parameters (§3.5) is not reproduced by the layer
    as the paper describes it: the fusing 2Ck → Ck convolution alone at the 512-channel stage
    has 524,288 weights. The claim is met only by the two highest-resolution layers (BL: 91,904;
    SL: 50,368; AL: 78,112) or by a much narrower layer; we implement the layer as described and
    report the discrepancy rather than shrink it.

    Args:
        fan_channels: Cl, channels of the FAN feature x.
        frn_channels: Ck, channels of the FRN feature y.
        variant: ``"basic"`` (BL, the paper's best), ``"simple"`` (SL) or ``"advanced"`` (AL).
        gamma: γ of eq. 2 (its initial value when learnable).
        learnable_gamma: make γ a parameter (the γ_k of the 1-many scheme, §3.3).
        bottleneck_channels: Cb for ``"advanced"``; default max(Ck // 4, 1).
        eps: AdaIN's variance epsilon.

    Shape:
        - y: (B, Ck, H, W)
        - x: (B, Cl, h, w)
        - output: (B, Ck, H, W)

    Examples:
        >>> layer = FANIntegrationLayer(256, 64)
        >>> layer(torch.randn(2, 64, 56, 56), torch.randn(2, 256, 64, 64)).shape
        torch.Size([2, 64, 56, 56])
        >>> sum(p.numel() for p in layer.parameters())
        25344
    """

    def __init__(
        self,
        fan_channels: int,
        frn_channels: int,
        variant: str = "basic",
        gamma: float = 1.0,
        learnable_gamma: bool = False,
        bottleneck_channels: int | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant: expected one of {_VARIANTS}, received {variant!r}")
        self.fan_channels = fan_channels
        self.frn_channels = frn_channels
        self.variant = variant
        self.learnable_gamma = learnable_gamma
        self.eps = eps
        if learnable_gamma:
            self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        else:
            self.gamma = float(gamma)
        self.norm = nn.BatchNorm2d(fan_channels)
        self.align = nn.Conv2d(fan_channels, frn_channels, 1)
        if variant == "basic":
            self.fuse = nn.Conv2d(2 * frn_channels, frn_channels, 1, bias=False)
        elif variant == "advanced":
            mid = bottleneck_channels or max(frn_channels // 4, 1)
            self.bottleneck_channels = mid
            self.fuse = nn.Sequential(
                nn.Conv2d(2 * frn_channels, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.PReLU(mid),
                nn.Conv2d(mid, mid, 3, padding=1, bias=False),
                nn.BatchNorm2d(mid),
                nn.PReLU(mid),
                nn.Conv2d(mid, frn_channels, 1, bias=False),
            )
        if variant != "simple":
            self.bn = nn.BatchNorm2d(frn_channels)
            self.act = nn.PReLU(frn_channels)

    def combine(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(x, y) of eq. 2 (x already at y's spatial size)."""
        x_aligned = self.align(self.norm(x))
        y_styled = adain(y, x_aligned, self.eps)
        if self.variant == "simple":
            return y_styled + x_aligned
        return self.act(self.bn(self.fuse(torch.cat((y_styled, x_aligned), dim=1))))

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_tensor(y, "y", "(B, Ck, H, W)", sizes=(None, self.frn_channels, None, None))
        check_tensor(x, "x", "(B, Cl, h, w)", sizes=(None, self.fan_channels, None, None))
        check_same_batch(y, "y", x, "x")
        if not self.learnable_gamma and self.gamma == 0:
            return y
        x = x.to(y.dtype)
        if x.shape[-2:] != y.shape[-2:]:
            x = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return y + self.gamma * self.combine(y, x)

    def extra_repr(self) -> str:
        kind = "learnable" if self.learnable_gamma else "fixed"
        gamma = "" if self.learnable_gamma else f"={self.gamma}"
        return (
            f"fan_channels={self.fan_channels}, frn_channels={self.frn_channels}, "
            f"variant={self.variant!r}, gamma{gamma} ({kind})"
        )


def expand_input_channels(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    """Grow a Conv2d in place to take ``extra`` more input channels, appended after the old ones.

    For the stacked image-heatmap input of FAN-Face eq. 1: the pretrained filters of the first
    C channels (RGB) are kept and the new filters are zero, so the grown convolution computes
    exactly what it did before until training moves the new weights. Call it before creating
    the optimizer (the weight becomes a new Parameter).

    Args:
        conv: the convolution to grow (``groups`` must be 1).
        extra: number of input channels to add (K heatmaps).

    Returns:
        ``conv`` itself, now with ``in_channels + extra`` input channels.

    Shape:
        - conv input before: ``(B, C, H, W)``; after: ``(B, C + extra, H, W)``
        - conv.weight: ``(O, C, kh, kw)`` → ``(O, C + extra, kh, kw)``

    Examples:
        >>> conv = expand_input_channels(nn.Conv2d(3, 8, 3), 51)
        >>> conv.in_channels, tuple(conv.weight.shape), conv.weight[:, 3:].abs().sum().item()
        (54, (8, 54, 3, 3), 0.0)
    """
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv: expected an nn.Conv2d, received {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"conv: expected groups=1, received groups={conv.groups}")
    if extra < 0:
        raise ValueError(f"extra: expected a non-negative number of channels, received {extra}")
    if extra == 0:
        return conv
    old = conv.weight
    new = torch.zeros(
        old.shape[0], old.shape[1] + extra, *old.shape[2:], device=old.device, dtype=old.dtype
    )
    new[:, : old.shape[1]] = old.detach()
    conv.weight = nn.Parameter(new, requires_grad=old.requires_grad)
    conv.in_channels += extra
    return conv


class _IntegrationHook:
    """Forward hook that replaces a backbone module's output by the integrated feature."""

    def __init__(self, integrator: FANFeatureIntegrator, point: str) -> None:
        self.integrator = integrator
        self.point = point

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.integrator._integrate(self.point, output)


def _slot(name: str) -> str:
    return name.replace(".", "__")


class FANFeatureIntegrator(nn.Module):
    """Bolt a frozen FAN onto any backbone: heatmap stacking plus feature integration by hooks.

    FAN-Face (§3.1–3.3, Fig. 1–2). Each forward runs FAN once under ``torch.no_grad()`` on the
    input resized to ``fan_input_size`` (or on a separate ``fan_input``), then runs the backbone;
    forward hooks on the named backbone modules replace their outputs ỹ_k = y_k + γ·f(x_l, y_k)
    with a :class:`FANIntegrationLayer` each — the backbone's code is not edited. FAN stays frozen
    (no gradients, eval mode even when this module is ``.train()``-ed).

    ``connections`` maps backbone module names (as in ``backbone.named_modules()``) to FAN
    feature keys (``FAN.forward_features``: ``"h2l.2.64"`` is the paper's h2l-2 at 64×64), or to
    ``None`` for a heatmap-only connection. The paper's best model FAN-Face(H2, 1-1, BL, h2l-2)
    on an IResNet-34 (stages at 56, 28, 14, 7 for 112×112 faces; 51 heatmaps stacked, so build
    it with ``in_channels=54``) is::

        FANFeatureIntegrator(iresnet34(in_channels=54), FAN(), {"layer1": "h2l.2.64",
            "layer2": "h2l.2.32", "layer3": "h2l.2.16", "layer4": "h2l.2.8"})

    Connectivity: ``"1-1"`` integrates after each named module (the end of a stage) with fixed
    γ; ``"1-many"`` integrates after every direct child (block) of each named module (a stage),
    each with its own learnable γ_k initialised to ``gamma``.

    Heatmaps (of ``heatmap_key``, default the last stack; ``landmarks`` selects them, default
    the 51 internal points): ``"input"`` stacks them with the image (H2, eq. 1; the backbone's
    first convolution must take C + K channels — see :func:`expand_input_channels`); ``"none"``
    does not use them; ``"all"`` stacks them with the image and at every hook point (H2+). So that
    the backbone's next layer still receives Ck channels, each hook point's stacked (Ck + K)
    tensor passes through a 1×1 convolution back to Ck, initialised to [I | 0] (identity on the
    feature, zero on the heatmaps) — equivalent at initialisation to growing the next layer's input
    with zero filters, the way :func:`expand_input_channels` does for the image.

    Channels of the hooked outputs are found by one dry run of the backbone (eval mode, no
    gradients) at ``input_size`` when the integrator is built.

    FAN expects RGB in [0, 1] (face-alignment's convention); pass ``fan_preprocess`` (e.g.
    ``lambda x: (x + 1) / 2`` for [-1, 1] inputs) or a separate ``fan_input`` otherwise.

    Args:
        backbone: the recognizer (FRN); modified only by the hooks (see :meth:`remove_hooks`).
        fan: the landmark network: anything with ``forward_features(x) -> dict`` (e.g.
            :class:`~faceaux.models.FAN`); it is frozen here.
        connections: backbone module name → FAN feature key or ``None``.
        variant: integration layer variant, ``"basic"``, ``"simple"`` or ``"advanced"``.
        connectivity: ``"1-1"`` or ``"1-many"``.
        heatmaps: ``"input"``, ``"none"`` or ``"all"``.
        landmarks: heatmap indices to stack (``None``: all).
        gamma: γ of eq. 2 (initial γ_k for ``"1-many"``).
        heatmap_key: FAN output holding the heatmaps (default ``"heatmaps.{num_stacks}"``).
        fan_input_size: side of FAN's square input (256 for FAN).
        input_size: (H, W) of the backbone's input, for the dry run.
        in_channels: C, image channels of the input x.
        fan_preprocess: optional map applied to x before it is resized for FAN.

    Shape:
        - x: (B, C, H, W)
        - fan_input: optional (B, 3, H', W'), given to FAN as it is
        - output: whatever the backbone returns

    Examples:
        >>> from faceaux.models import FAN
        >>> backbone = nn.Sequential(nn.Conv2d(3 + 51, 8, 3, padding=1), nn.ReLU(),
        ...                          nn.Conv2d(8, 8, 3, stride=2, padding=1))
        >>> fan = FAN(num_stacks=2, num_landmarks=68, num_features=16, input_size=64)
        >>> model = FANFeatureIntegrator(backbone, fan, {"1": "h2l.2.16", "2": "h2l.2.8"},
        ...                              fan_input_size=64, input_size=(16, 16))
        >>> model(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        backbone: nn.Module,
        fan: nn.Module,
        connections: Mapping[str, str | None],
        *,
        variant: str = "basic",
        connectivity: str = "1-1",
        heatmaps: str = "input",
        landmarks: tuple[int, ...] | list[int] | None = INTERNAL_51,
        gamma: float = 1.0,
        heatmap_key: str | None = None,
        fan_input_size: int = 256,
        input_size: tuple[int, int] = (112, 112),
        in_channels: int = 3,
        fan_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant: expected one of {_VARIANTS}, received {variant!r}")
        if connectivity not in ("1-1", "1-many"):
            raise ValueError(f"connectivity: expected '1-1' or '1-many', received {connectivity!r}")
        if heatmaps not in ("input", "none", "all"):
            raise ValueError(f"heatmaps: expected 'input', 'none' or 'all', received {heatmaps!r}")
        if not hasattr(fan, "forward_features"):
            raise ValueError(
                f"fan: expected a network with forward_features(x) -> dict, received "
                f"{type(fan).__name__}"
            )
        self.backbone = backbone
        self.fan = fan.freeze() if hasattr(fan, "freeze") else fan.requires_grad_(False).eval()
        self.connectivity = connectivity
        self.heatmaps = heatmaps
        self.fan_input_size = int(fan_input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.in_channels = in_channels
        self.fan_preprocess = fan_preprocess
        self.heatmap_key = heatmap_key or f"heatmaps.{getattr(fan, 'num_stacks', 1)}"
        self._active: dict[str, torch.Tensor] | None = None

        fan_channels = self._fan_channels([*connections.values(), self.heatmap_key])
        self.stacker = HeatmapStacker(landmarks, normalize="max")
        num_maps = self.stacker.num_maps(fan_channels[self.heatmap_key])

        modules = dict(backbone.named_modules())
        self.points: dict[str, str | None] = {}
        for name, key in connections.items():
            if name not in modules:
                raise ValueError(f"connections: backbone has no module named {name!r}")
            if connectivity == "1-1":
                self.points[name] = key
                continue
            children = [
                f"{name}.{child}" if name else child for child, _ in modules[name].named_children()
            ]
            if not children:
                raise ValueError(
                    f"connections: '1-many' needs a container of blocks, but {name!r} "
                    f"({type(modules[name]).__name__}) has no children"
                )
            self.points.update(dict.fromkeys(children, key))
        if len({_slot(p) for p in self.points}) != len(self.points):
            raise ValueError(f"connections: ambiguous module names {sorted(self.points)}")

        frn_channels = self._dry_run(in_channels + (num_maps if heatmaps != "none" else 0))
        self.integration = nn.ModuleDict()
        self.projection = nn.ModuleDict()
        for point, key in self.points.items():
            channels = frn_channels[point]
            if key is not None:
                self.integration[_slot(point)] = FANIntegrationLayer(
                    fan_channels[key],
                    channels,
                    variant,
                    gamma=gamma,
                    learnable_gamma=connectivity == "1-many",
                )
            if heatmaps == "all":
                projection = nn.Conv2d(channels + num_maps, channels, 1, bias=False)
                with torch.no_grad():
                    projection.weight.zero_()
                    projection.weight[:, :channels, 0, 0] = torch.eye(channels)
                self.projection[_slot(point)] = projection
        reference = next(backbone.parameters())
        self.integration.to(device=reference.device, dtype=reference.dtype)
        self.projection.to(device=reference.device, dtype=reference.dtype)
        self._handles = [
            modules[point].register_forward_hook(_IntegrationHook(self, point))
            for point in self.points
        ]

    def _fan_channels(self, keys: list[str | None]) -> dict[str, int]:
        keys = [k for k in keys if k is not None]
        known = set(self.fan.feature_keys()) if hasattr(self.fan, "feature_keys") else None
        if known is not None and hasattr(self.fan, "num_features"):
            unknown = [k for k in keys if k not in known]
            if unknown:
                raise ValueError(
                    f"connections: unknown FAN feature keys {unknown}; available: {sorted(known)}"
                )
            return {
                k: self.fan.out_channels if k.startswith("heatmaps") else self.fan.num_features
                for k in keys
            }
        parameter = next(self.fan.parameters())
        probe = torch.zeros(
            1,
            3,
            self.fan_input_size,
            self.fan_input_size,
            device=parameter.device,
            dtype=parameter.dtype,
        )
        with torch.no_grad():
            features = self.fan.forward_features(probe)
        unknown = [k for k in keys if k not in features]
        if unknown:
            raise ValueError(
                f"connections: unknown FAN feature keys {unknown}; available: {sorted(features)}"
            )
        return {k: features[k].shape[1] for k in keys}

    def _dry_run(self, channels: int) -> dict[str, int]:
        modules = dict(self.backbone.named_modules())
        found: dict[str, int] = {}

        def record(point: str) -> Callable:
            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                if not isinstance(output, torch.Tensor) or output.ndim != 4:
                    raise ValueError(
                        f"connections: module {point!r} must output a (B, C, H, W) tensor, "
                        f"received {type(output).__name__} "
                        f"{tuple(getattr(output, 'shape', ()))}"
                    )
                found[point] = output.shape[1]

            return hook

        handles = [modules[p].register_forward_hook(record(p)) for p in self.points]
        parameter = next(self.backbone.parameters())
        probe = torch.zeros(
            1, channels, *self.input_size, device=parameter.device, dtype=parameter.dtype
        )
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            with torch.no_grad():
                self.backbone(probe)
        except RuntimeError as error:
            raise ValueError(
                f"backbone: a dry run on input shape {tuple(probe.shape)} failed ({error}); with "
                "heatmaps stacked on the input its first convolution must take C + K channels "
                "(see expand_input_channels)"
            ) from error
        finally:
            for handle in handles:
                handle.remove()
            self.backbone.train(was_training)
        return found

    def _integrate(self, point: str, output: torch.Tensor) -> torch.Tensor | None:
        features = self._active
        if features is None:
            return None  # the backbone is used on its own: leave its output alone
        slot = _slot(point)
        if self.heatmaps == "all":
            output = self.projection[slot](self.stacker(output, features[self.heatmap_key]))
        key = self.points[point]
        if key is not None:
            output = self.integration[slot](output, features[key])
        return output

    def fan_features(
        self, x: torch.Tensor, fan_input: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the frozen FAN once under ``torch.no_grad()``: its ``forward_features`` dict."""
        if fan_input is None:
            fan_input = x if self.fan_preprocess is None else self.fan_preprocess(x)
            size = (self.fan_input_size, self.fan_input_size)
            if tuple(fan_input.shape[-2:]) != size:
                fan_input = F.interpolate(
                    fan_input, size=size, mode="bilinear", align_corners=False
                )
        else:
            check_tensor(fan_input, "fan_input", "(B, 3, H, W)", floating=True)
            check_same_batch(x, "x", fan_input, "fan_input")
        parameter = next(self.fan.parameters())
        with torch.no_grad():
            return self.fan.forward_features(fan_input.to(parameter.dtype))

    def forward(self, x: torch.Tensor, fan_input: torch.Tensor | None = None):
        check_tensor(x, "x", "(B, C, H, W)", sizes=(None, self.in_channels, None, None))
        features = self.fan_features(x, fan_input)
        if self.heatmaps != "none":
            x = self.stacker(x, features[self.heatmap_key])
        self._active = features
        try:
            return self.backbone(x)
        finally:
            self._active = None

    def train(self, mode: bool = True) -> FANFeatureIntegrator:
        super().train(mode)
        self.fan.eval()
        return self

    def remove_hooks(self) -> None:
        """Detach the integration hooks from the backbone (it then runs as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
