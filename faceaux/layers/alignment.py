"""SpatialTransformerAlign: learned face alignment in front of any recognizer.

Tang et al., "An End-to-End Face Recognition Method with Alignment Learning" (Optik 2020): a
spatial transformer (Jaderberg et al. 2015) whose localisation network regresses the parameters
of an identity, similarity, affine or projective transform from the face crop, trained from the
identity loss alone (§3). The geometry (matrices, warp, pixel conversions, the classical
landmark similarity) lives in :mod:`faceaux.layers.geometry`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import (
    check_finite,
    check_module_input,
    check_tensor,
)
from faceaux.layers.geometry import (
    _MODES,
    _PADDING_MODES,
    MATRIX_BOUND,
    TRANSFORM_PARAMETERS,
    _check_size,
    _warp,
    params_from_matrix,
    transform_matrix,
)

__all__ = [
    "LOCALIZATION_SETTINGS",
    "SpatialTransformerAlign",
    "param_groups",
    "theta_regularization",
]

LOCALIZATION_SETTINGS: Mapping[int, Mapping[str, object]] = MappingProxyType(
    {
        1: MappingProxyType({"loc_channels": (32,), "loc_hidden": None}),
        2: MappingProxyType({"loc_channels": (32, 64), "loc_hidden": None}),
        3: MappingProxyType({"loc_channels": (32, 64, 128), "loc_hidden": None}),
        4: MappingProxyType({"loc_channels": (32, 64), "loc_hidden": 128}),
        5: MappingProxyType({"loc_channels": (32, 64, 128), "loc_hidden": 128}),
    }
)
"""Tang et al. 2020, Table 2: the five localisation networks, as ``SpatialTransformerAlign``
arguments (``SpatialTransformerAlign("affine", **LOCALIZATION_SETTINGS[5])``).

Setting ``n`` is its conv blocks (3×3 conv → BN → ReLU → 2×2 max-pool, §3.1) and its fully
connected layers, the regressor of the transform's parameters counted as one of them ("1 FC":
the regressor alone; "2 FC": a 128-wide hidden layer, then the regressor): 1 = 1 conv + 1 FC,
2 = 2 conv + 1 FC, 3 = 3 conv + 1 FC (the paper's choice, and the default), 4 = 2 conv + 2 FC,
5 = 3 conv + 2 FC. The paper gives no widths; ours are 32, 64, 128 channels and 128 hidden
units. Parameters of a projective localisation network at 64×64 (``loc_input_size``): setting
1 263,080; 2 150,568; 3 159,016; 4 2,117,800; 5 1,143,208 — setting 5 needs more parameters
than 3, as §3.2 says.

Shape:
    A read-only ``dict`` ``setting → {"loc_channels": tuple, "loc_hidden": int | None}``; no
    tensors.
"""


_PIXEL_FRAME_KINDS = ("similarity", "translation")


def _half_extent(steps: int, align_corners: bool) -> float:
    """Pixels from an axis' centre to its normalised coordinate 1 (``warp``'s convention)."""
    if align_corners:
        return 1.0 if steps == 1 else (steps - 1) / 2
    return steps / 2


def _similarity_frame(
    in_size: tuple[int, int], out_size: tuple[int, int], align_corners: bool = False
) -> torch.Tensor:
    """Elementwise factors taking a pixel-frame similarity to a normalised ``warp`` matrix.

    ``"similarity"`` and ``"translation"`` are parameterised in frames with the *same* unit on
    both axes (centred pixel coordinates divided by one length per image), so that every
    parameter value is a similarity (a translation) in pixels, whatever the aspect ratios. The
    output frame's unit is ``u_out = min(h', w')`` and the input frame's
    ``u_in = u_out · min(H' / h', W' / w')``, where ``H'`` … are half-extents (``H / 2``, or
    ``(H − 1) / 2`` with ``align_corners=True``). The identity parameters are then the
    largest centred region of the output's aspect ratio inside the input, resampled — the plain
    resize when input and output have the same aspect ratio (the paper's square crops), a
    centred crop of the input otherwise. With ``a = (u_in / W', u_in / H', 1)`` and
    ``b = (w' / u_out, h' / u_out, 1)`` the normalised matrix is
    ``diag(a) · M_frame · diag(b)``, i.e. ``M_frame * outer(a, b)``: this function returns
    ``outer(a, b)``.

    Args:
        in_size: ``(H, W)`` of the input images.
        out_size: ``(h, w)`` of the output.
        align_corners: the ``warp`` convention.

    Shape:
        output: ``(3, 3)`` float64 factors (exactly 1 where the sizes are square).
    """
    (in_h, in_w), (out_h, out_w) = (
        tuple(_half_extent(s, align_corners) for s in size) for size in (in_size, out_size)
    )
    unit_out = min(out_h, out_w)
    unit_in = min(in_h * unit_out / out_h, in_w * unit_out / out_w)
    a = torch.tensor([unit_in / in_w, unit_in / in_h, 1.0], dtype=torch.float64)
    b = torch.tensor([out_w / unit_out, out_h / unit_out, 1.0], dtype=torch.float64)
    return torch.outer(a, b)


class SpatialTransformerAlign(nn.Module):
    """Warp each face with a transform regressed from the face itself (a spatial transformer).

    Tang et al. 2020, §3.1–§3.3. The localisation network is by default the paper's setting 3
    (§3.2, Table 2): the input resized to ``loc_input_size`` (64×64 in the paper), three blocks
    of 3×3 conv → BatchNorm → ReLU → 2×2 max-pool, then one fully-connected layer that
    regresses the transform's parameters (8 projective, 6 affine, 4 similarity — §3.1: "the
    fully connected layer is connected before the geometric parameter transformation layer").
    Table 2 counts that regressor as its "1 FC"; ``loc_hidden=128`` adds a hidden FC in front of
    it (a "2 FC" setting). :data:`LOCALIZATION_SETTINGS` lists all five settings as arguments.
    The warp is :func:`~faceaux.layers.geometry.warp` (eqs. 1–2).

    Parameterisation: the regressor outputs the paper's own quantities — similarity
    ``(λ, α, t1, t2)`` with the scale ``λ`` itself (eq. 6), affine ``θ11…θ23``, projective
    ``θ11…θ32`` with ``θ33 = 1`` (eq. 1). Affine and projective parameters live in normalised
    coordinates (a family closed under per-axis scaling). The similarity and the translation
    live in frames with one unit on both axes (centred pixels divided by one length per image,
    see ``_similarity_frame``), so they are a similarity and a translation *in pixels* for any
    input and output aspect ratio — e.g. a classical 5-point similarity onto a 112×96 template
    is represented exactly (eq. 6 is a pixel similarity; in normalised coordinates of a
    non-square image it would be a skewed affine map).

    Initialisation: the regressor's weight starts at zero and its bias at the identity's
    parameters. For ``"affine"``/``"projective"`` the output is then exactly the plain resize of
    the input to ``output_size`` (``F.interpolate``, bilinear, same ``align_corners``). For
    ``"similarity"``/``"translation"`` it is the largest centred region of the output's aspect
    ratio inside the input, resampled — the same plain resize whenever input and output have
    the same aspect ratio (e.g. square crops). Either holds for any output size with
    ``padding_mode="border"``, and with any padding when no sample falls outside the input
    (upsampling with ``"zeros"`` fades the outermost half pixel toward 0).
    ``transform="identity"`` has no localisation network: the output is always that resize,
    or with ``crop_size`` a fixed centre crop resized to ``output_size`` — the paper's unaligned
    baseline (§3.3: "the detected face region is directly cropped at the center"). Train the
    localisation network with a 10–100× smaller learning rate (§4); :func:`param_groups` builds
    the optimiser groups.

    Bad input: a NaN/inf pixel raises ``ValueError`` (one device→host read) before the
    localisation network sees it, so its BatchNorm running statistics never absorb it (the read
    is skipped under ``torch.compile``, like every data check). An empty batch returns an empty
    output without running the localisation network (its statistics stay as they were).
    Outside autocast, ``x`` must have the dtype of the module's parameters.

    Args:
        transform: ``"identity"``, ``"translation"``, ``"similarity"``, ``"affine"`` or
            ``"projective"``.
        output_size: ``(h, w)`` of the aligned output (112×112 for ArcFace-style recognizers).
        in_channels: channels of the input images.
        loc_input_size: ``(h, w)`` the localisation network sees; each side must be divisible
            down to at least 1 by ``2 ** len(loc_channels)``.
        loc_channels: output channels of the conv blocks (three in the paper's setting 3).
        loc_hidden: width of a hidden fully-connected layer (+ ReLU) before the regressor
            (Table 2's "2 FC" settings 4 and 5); ``None`` (setting 3, the default) regresses
            directly from the flattened conv features.
        align_corners: the ``F.grid_sample`` convention (``False``: ``±1`` on pixel edges).
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"`` outside the input.
        mode: ``"bilinear"`` (eq. 2), ``"nearest"`` or ``"bicubic"``.
        crop_size: ``(h, w)`` in input pixels, ``transform="identity"`` only: a fixed centre
            crop of that size (resampled to ``output_size``) instead of the whole image — the
            paper's unaligned baseline (§3.3: "the detected face region is directly cropped at
            the center").

    Shape:
        - x: ``(B, C, H, W)`` with ``C = in_channels``
        - output: ``(B, C, h, w)``; with ``return_matrix=True`` also the ``(B, 3, 3)`` matrix
          (output-normalised → input-normalised coordinates)

    Examples:
        >>> stn = SpatialTransformerAlign("projective", output_size=(112, 112)).eval()
        >>> x = torch.rand(2, 3, 128, 128)
        >>> aligned, matrix = stn(x, return_matrix=True)
        >>> aligned.shape, matrix.shape
        (torch.Size([2, 3, 112, 112]), torch.Size([2, 3, 3]))
        >>> resized = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
        >>> torch.allclose(aligned, resized, atol=1e-4)
        True
    """

    def __init__(
        self,
        transform: str = "similarity",
        output_size: tuple[int, int] = (112, 112),
        in_channels: int = 3,
        loc_input_size: tuple[int, int] = (64, 64),
        loc_channels: Sequence[int] = (32, 64, 128),
        loc_hidden: int | None = None,
        align_corners: bool = False,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        crop_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if transform not in TRANSFORM_PARAMETERS:
            raise ValueError(
                f"transform: expected one of {sorted(TRANSFORM_PARAMETERS)}, received {transform!r}"
            )
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, received {mode!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"padding_mode: expected one of {_PADDING_MODES}, received {padding_mode!r}"
            )
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels: expected a positive int, received {in_channels!r}")
        self.transform = transform
        self.output_size = _check_size(output_size, "output_size")
        self.in_channels = in_channels
        self.loc_input_size = _check_size(loc_input_size, "loc_input_size")
        self.align_corners = bool(align_corners)
        self.padding_mode = padding_mode
        self.mode = mode
        if crop_size is not None and transform != "identity":
            raise ValueError(
                f"crop_size: a fixed centre crop is the 'identity' transform's, received "
                f"transform={transform!r}"
            )
        self.crop_size = None if crop_size is None else _check_size(crop_size, "crop_size")
        self.localization: nn.Sequential | None = None
        self.regressor: nn.Linear | None = None
        if transform == "identity":
            return

        loc_channels = tuple(loc_channels)
        if not loc_channels or not all(isinstance(c, int) and c > 0 for c in loc_channels):
            raise ValueError(f"loc_channels: expected positive ints, received {loc_channels!r}")
        reduction = 2 ** len(loc_channels)
        height, width = (s // reduction for s in self.loc_input_size)
        if height < 1 or width < 1:
            raise ValueError(
                f"loc_input_size: expected each side ≥ {reduction} (2 ** len(loc_channels)), "
                f"received {self.loc_input_size}"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in loc_channels:
            layers += [
                nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out_channels
        layers.append(nn.Flatten())
        features = channels * height * width
        if loc_hidden is not None:
            if not isinstance(loc_hidden, int) or loc_hidden < 1:
                raise ValueError(
                    f"loc_hidden: expected a positive int or None, received {loc_hidden!r}"
                )
            layers += [nn.Linear(features, loc_hidden), nn.ReLU(inplace=True)]
            features = loc_hidden
        self.localization = nn.Sequential(*layers)
        self.regressor = nn.Linear(features, TRANSFORM_PARAMETERS[transform])
        self.reset_transform()

    @torch.no_grad()
    def reset_transform(
        self, matrix: torch.Tensor | None = None, in_size: tuple[int, int] | None = None
    ) -> None:
        """Make the localisation network output one fixed matrix: regressor weight 0, bias = it.

        Args:
            matrix: ``(3, 3)`` or ``(1, 3, 3)`` normalised output → input matrix (e.g. from
                :func:`~faceaux.layers.geometry.from_pixel_matrix` of a classical 5-point
                alignment); ``None`` is the identity parameters. It is projected onto this
                module's transform kind (:func:`~faceaux.layers.geometry.params_from_matrix`);
                a ``UserWarning`` says when that changes it (e.g. a similarity matrix given for
                another input size than ``in_size``).
            in_size: ``(H, W)`` of the images the matrix was made for. Only ``"similarity"``
                and ``"translation"`` need it (their pixel frames depend on the input's aspect
                ratio); ``None`` assumes an input of ``output_size``'s aspect ratio.

        Shape:
            matrix: ``(3, 3)`` or ``(1, 3, 3)``; returns nothing.
        """
        if self.regressor is None:
            raise ValueError("reset_transform: transform='identity' has no localisation network")
        if matrix is None:  # the identity parameters (in the pixel frame for a similarity)
            self.regressor.weight.zero_()
            self.regressor.bias.copy_(params_from_matrix(torch.eye(3)[None], self.transform)[0])
            return
        if not isinstance(matrix, torch.Tensor) or tuple(matrix.shape) not in ((3, 3), (1, 3, 3)):
            shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix)
            raise ValueError(f"matrix: expected shape (3, 3) or (1, 3, 3), received {shape}")
        matrix = matrix.detach().cpu().reshape(1, 3, 3).to(torch.float64)
        if self.transform in _PIXEL_FRAME_KINDS:
            size = self.output_size if in_size is None else _check_size(in_size, "in_size")
            matrix = matrix / _similarity_frame(size, self.output_size, self.align_corners)
        params = params_from_matrix(matrix, self.transform)
        kept = transform_matrix(params, self.transform)
        if self.transform == "projective":
            matrix = matrix / matrix[:, 2:, 2:]
        change = (kept - matrix).abs().max().item()
        if change > 1e-6 * max(1.0, matrix.abs().max().item()):
            warnings.warn(
                f"reset_transform: the matrix is not a {self.transform!r} transform"
                + (" in the pixel frame of the given in_size" if in_size is not None else "")
                + f"; it was projected onto the nearest one (entries moved by up to {change:.3g})"
                + (
                    "; pass in_size=(H, W) of the images it was made for"
                    if in_size is None and self.transform in _PIXEL_FRAME_KINDS
                    else ""
                ),
                UserWarning,
                stacklevel=2,
            )
        self.regressor.weight.zero_()
        self.regressor.bias.copy_(params[0].to(self.regressor.bias))

    def predict_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """Regress the ``(B, 3, 3)`` output → input matrices for ``x`` ``(B, C, H, W)``.

        The parameters are computed by the localisation network in its dtype (e.g. bf16 under
        autocast) and turned into a matrix in ``float32`` or wider.
        """
        self._check_input(x)
        return self._predict_matrix(x)

    def _check_input(self, x: object) -> None:
        check_tensor(
            x, "x", "(B, C, H, W)", sizes=(None, self.in_channels, None, None), floating=True
        )
        check_module_input(x, "x", self)
        check_finite(x, "x")

    def _predict_matrix(self, x: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(3, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        if self.crop_size is not None:
            eye = self._crop_scale(x).to(eye.dtype)
        if self.regressor is None or self.localization is None or x.shape[0] == 0:
            return eye.expand(x.shape[0], 3, 3)  # (an empty batch never reaches BatchNorm)
        small = x
        if tuple(x.shape[-2:]) != self.loc_input_size:
            small = F.interpolate(x, size=self.loc_input_size, mode="bilinear", align_corners=False)
        params = self.regressor(self.localization(small))
        params = params.to(torch.promote_types(params.dtype, torch.float32))
        matrix = transform_matrix(params, self.transform)
        if self.transform in _PIXEL_FRAME_KINDS:  # pixel-frame similarity → normalised matrix
            frame = _similarity_frame(tuple(x.shape[-2:]), self.output_size, self.align_corners)
            matrix = matrix * frame.to(device=matrix.device, dtype=matrix.dtype)
        return matrix

    def _crop_scale(self, x: torch.Tensor) -> torch.Tensor:
        """diag(sx, sy, 1): the normalised output → input map of a centred crop_size crop."""
        (ch, cw), (h, w) = self.crop_size, tuple(x.shape[-2:])
        if ch > h or cw > w:
            raise ValueError(
                f"x: crop_size {self.crop_size} is larger than the input, shape {tuple(x.shape)}"
            )
        if self.align_corners:  # ±1 on the centres of the first and last pixels
            sx, sy = (cw - 1) / max(w - 1, 1), (ch - 1) / max(h - 1, 1)
        else:  # ±1 on the outer edges of the first and last pixels
            sx, sy = cw / w, ch / h
        return torch.tensor([sx, sy, 1.0], device=x.device, dtype=torch.float64).diag()

    def forward(
        self, x: torch.Tensor, return_matrix: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Align ``x`` ``(B, C, H, W)`` → ``(B, C, h, w)``; also return the matrix if asked."""
        self._check_input(x)
        matrix = self._predict_matrix(x)
        aligned = _warp(
            x, matrix, self.output_size, self.mode, self.padding_mode, self.align_corners
        )
        return (aligned, matrix) if return_matrix else aligned

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform!r}, output_size={self.output_size}, "
            f"loc_input_size={self.loc_input_size}, align_corners={self.align_corners}, "
            f"padding_mode={self.padding_mode!r}, mode={self.mode!r}"
        )


def param_groups(model: nn.Module, lr: float, loc_lr_scale: float = 0.01) -> list[dict]:
    """Optimiser parameter groups giving every localisation network a smaller learning rate.

    Tang et al. 2020, §4: the best results came with the alignment (localisation) network's
    learning rate 10–100× smaller than the recognition network's. Every parameter of every
    :class:`SpatialTransformerAlign` inside ``model`` goes into a group with
    ``lr * loc_lr_scale``; all other parameters into a group with ``lr``. Empty groups are left
    out; shared parameters appear once.

    Args:
        model: any module containing one or more ``SpatialTransformerAlign``.
        lr: the recognizer's learning rate.
        loc_lr_scale: factor for the localisation networks, in ``(0, 1]``; 0.01 (100× smaller)
            by default, 0.1 is the other end of the paper's range.

    Returns:
        A list of ``{"params": [...], "lr": ...}`` dicts for any ``torch.optim`` optimiser.

    Shape:
        No tensors in or out: one or two parameter groups (recognizer first, localisation nets
        second), every parameter of ``model`` exactly once.

    Raises:
        ValueError: if ``model`` holds no ``SpatialTransformerAlign`` or a rate is out of range.

    Examples:
        >>> stn = SpatialTransformerAlign(output_size=(32, 32))
        >>> model = nn.Sequential(stn, nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        >>> groups = param_groups(model, lr=0.1)
        >>> [g["lr"] for g in groups]
        [0.1, 0.001]
        >>> optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr: expected a positive learning rate (finite), received {lr!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, received {type(model).__name__}")
    if not 0 < loc_lr_scale <= 1:
        raise ValueError(f"loc_lr_scale: expected a value in (0, 1], received {loc_lr_scale!r}")
    aligners = [m for m in model.modules() if isinstance(m, SpatialTransformerAlign)]
    if not aligners:
        raise ValueError(
            "model: expected a module containing a SpatialTransformerAlign, found none"
        )
    loc_ids = {id(p) for m in aligners for p in m.parameters()}
    loc, rest, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (loc if id(p) in loc_ids else rest).append(p)
    groups = [{"params": rest, "lr": lr}, {"params": loc, "lr": lr * loc_lr_scale}]
    return [g for g in groups if g["params"]]


def theta_regularization(matrix: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared Frobenius distance of each matrix to the identity: a pull toward "no warp".

    Not in Tang et al. 2020; an optional aid for STNs that collapse (shrink to a point, fly off
    the face) early in training: add ``weight * theta_regularization(matrix)`` to the loss, with
    ``matrix`` from ``SpatialTransformerAlign(..., return_matrix=True)``, and anneal ``weight``
    to 0. "No warp" is the plain resize (the identity matrix); for a ``"similarity"`` between
    input and output of different aspect ratios that is not a similarity, and the pull is then
    toward the nearest one.

    Args:
        matrix: ``(B, 3, 3)`` output → input matrices.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for ``(B,)``.

    An empty batch gives an exact 0 for ``"mean"`` (as for ``"sum"``) that still
    back-propagates; a NaN/inf matrix raises ``ValueError`` (one device→host read). Entries are
    clamped to ``±MATRIX_BOUND`` (1e6) first, as :func:`~faceaux.layers.geometry.warp` clamps
    them: a runaway matrix gets a large, finite penalty (and no gradient beyond the bound).

    Returns:
        A scalar, or ``(B,)`` for ``reduction="none"``.

    Shape:
        - matrix: ``(B, 3, 3)``
        - output: ``()`` or ``(B,)``

    Examples:
        >>> m = torch.eye(3).repeat(2, 1, 1)
        >>> m[1, 0, 2] = 0.5
        >>> theta_regularization(m, reduction="none")
        tensor([0.0000, 0.2500])
    """
    check_tensor(matrix, "matrix", "(B, 3, 3)", sizes=(None, 3, 3), floating=True)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', received {reduction!r}")
    check_finite(matrix, "matrix")
    eye = torch.eye(3, device=matrix.device, dtype=matrix.dtype)
    bounded = matrix.clamp(-MATRIX_BOUND, MATRIX_BOUND)  # as warp does: no overflow when squared
    penalty = (bounded - eye).square().sum(dim=(-2, -1))
    if reduction == "mean" and matrix.shape[0] > 0:
        return penalty.mean()
    if reduction == "none":
        return penalty
    return penalty.sum()  # (also "mean" of an empty batch: 0, not NaN)
