"""FAN-Face feature integration: add a frozen landmark network's features into any recognizer.

Yang, Bulat & Tzimiropoulos, "FAN-Face: a simple orthogonal improvement to deep face
recognition" (usually cited as AAAI 2020) §3.3–3.4:
features x_l of the landmark network FAN are merged into features y_k of the face recognition
network (FRN) as ỹ_k = y_k + γ·f(x_l, y_k) (eq. 2), where f is the integration layer of Fig. 3
(:class:`FANIntegrationLayer`, built around :func:`adain`); :func:`expand_input_channels` grows a
first convolution for the stacked image-heatmap input (eq. 1). The models that wire them in —
:class:`faceaux.models.FaceRecognizer` and, for networks you do not edit,
:class:`faceaux.FANFeatureIntegrator` — live in :mod:`faceaux.models`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import (
    check_module_input,
    check_same_batch,
    check_tensor,
    finite_check,
    raise_bad_data,
)

__all__ = ["FANIntegrationLayer", "adain", "expand_input_channels"]

_VARIANTS = ("basic", "simple", "advanced")


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation: give ``content`` the per-channel statistics of ``style``.

    Huang & Belongie, ICCV 2017, as used in FAN-Face's integration layer (§3.4 (b), Fig. 3):
    AdaIN(c, s) = σ(s)·(c − μ(c))/σ(c) + μ(s), with per-sample, per-channel mean μ and standard
    deviation σ = sqrt(var + eps) over the spatial positions (biased variance, as
    ``nn.InstanceNorm2d``). NaN/inf in either input raises ``ValueError`` naming it (one
    device→host read). The statistics are computed in at least float32 and the result is
    cast back to ``content``'s dtype. A constant content channel maps to μ(s) (finite values and
    gradients). Channels with values beyond 2**60 are rescaled by a power of two before the
    statistics (exact, and no overflow in the variance: features of magnitude 1e20 give finite
    results in float32).

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
    raise_bad_data([finite_check(content, "content"), finite_check(style, "style")])
    if content.shape[0] == 0:
        return content * 1  # an empty batch: an empty result, still in the graph
    compute = torch.promote_types(content.dtype, torch.float32)
    c, s = content.to(compute), style.to(compute)
    c_scale, s_scale = _overflow_scale(c), _overflow_scale(s)
    c, s = c / c_scale, s / s_scale
    c_var, c_mean = torch.var_mean(c, dim=(-2, -1), keepdim=True, correction=0)
    s_var, s_mean = torch.var_mean(s, dim=(-2, -1), keepdim=True, correction=0)
    out = (c - c_mean) * torch.rsqrt(c_var + eps) * torch.sqrt(s_var + eps) + s_mean
    return (out * s_scale).to(content.dtype)


def _overflow_scale(x: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) power of two bringing huge values (> 2**60) down to ≤ 1, else 1.

    The variance squares the values: without this, float32 features of magnitude 1e20 give an
    infinite variance. Values up to 2**60 are untouched (the scale is exactly 1), so ordinary
    inputs are computed exactly as the formula says; a power of two rescales without rounding.
    """
    peak = x.detach().abs().amax(dim=(-2, -1), keepdim=True)
    peak = torch.nan_to_num(peak, nan=1.0, posinf=torch.finfo(x.dtype).max)
    exponent = torch.ceil(torch.log2(peak.clamp(min=1.0)))
    return torch.where(peak > 2.0**60, torch.pow(2.0, exponent), torch.ones_like(peak))


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
        check_tensor(
            y, "y", "(B, Ck, H, W)", sizes=(None, self.frn_channels, None, None), floating=True
        )
        check_tensor(
            x, "x", "(B, Cl, h, w)", sizes=(None, self.fan_channels, None, None), floating=True
        )
        check_same_batch(y, "y", x, "x")
        check_module_input(y, "y", self)
        check_module_input(x, "x", self)
        raise_bad_data([finite_check(y, "y"), finite_check(x, "x")])
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
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise ValueError(
            f"extra: expected a non-negative int number of channels, received {extra!r}"
        )
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
