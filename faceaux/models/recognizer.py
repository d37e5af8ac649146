"""FaceRecognizer: every faceaux layer bolted onto one backbone by configuration.

How a face-aware recognizer flows (``../DESIGN.md``)::

    images ─► input stage: SpatialTransformerAlign (warp) ─► HeatmapStacker (image + heatmaps)
           ─► backbone stem ─► stage 1 … N, each optionally tapped:
                 FANIntegrationLayer (ỹ = y + γ·f(x, y), FAN-Face eq. 2; 1-1 or 1-many),
                 HeatmapStacker + 1×1 projection (FAN-Face's H2+),
                 the part tap feeding PartMaskPooling (FSENet eq. 6)
           ─► output stage (FC / GAP / GNAP) = g ─► [g/‖g‖, w·l/‖l‖] with l from
              StructureCorrelation (FSENet eqs. 3, 7) ─► embedding ─► AttributeHead

The side networks — a frozen FAN (heatmaps and per-resolution features) and a frozen face parser
(part masks) — are submodules whose outputs are passed along as arguments within one call;
nothing is parked on ``self``, so the recognizer is re-entrant, deep-copyable, compilable and
exportable. Side inputs can also be given to a call (ground-truth heatmaps or landmarks, masks, a
user's own FAN features); given in input-image coordinates, they are warped with the same
alignment as the image.

The backbone is any module speaking the stage contract of :mod:`faceaux.models.features` — every
faceaux backbone, or any other network wrapped in :class:`faceaux.models.BackboneAdapter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import check_positive_int, check_same_batch, check_tensor
from faceaux.layers.alignment import SpatialTransformerAlign
from faceaux.layers.attributes import AttributeHead
from faceaux.layers.geometry import warp
from faceaux.layers.heatmaps import HeatmapStacker, render_heatmaps
from faceaux.layers.integration import FANIntegrationLayer, expand_input_channels
from faceaux.layers.parts import PartMaskPooling, StructureCorrelation
from faceaux.models.features import check_images

__all__ = ["FaceRecognizer"]

_VARIANTS = ("basic", "simple", "advanced")


def _slot(name: str) -> str:
    """A ModuleDict key for a module name (dots are not allowed in keys)."""
    return name.replace(".", "__")


def _freeze(network: nn.Module) -> nn.Module:
    if hasattr(network, "freeze"):
        return network.freeze()
    return network.requires_grad_(False).eval()


class FaceRecognizer(nn.Module):
    """A recognizer composed of faceaux's layers on any staged backbone; every part optional.

    See the module docstring for the data flow. With every optional part off the recognizer
    computes exactly its backbone; with the FAN integration's γ = 0 (and no heatmaps stacked) it
    computes exactly its backbone too.

    Input stage:
        align: a :class:`faceaux.SpatialTransformerAlign` applied first (Tang et al. 2020).
        heatmaps: a :class:`faceaux.HeatmapStacker` stacking landmark heatmaps with the image
            (FAN-Face eq. 1, "H2"). The backbone's first convolution is grown for the K extra
            channels with zero filters (:func:`faceaux.expand_input_channels`) unless it already
            takes them. Heatmaps come from ``fan`` or from the call (``heatmaps=``,
            ``landmarks=``).

    Side networks (frozen: no gradients, eval mode even when the recognizer trains):
        fan: a landmark network with ``forward_features(x) -> dict`` (:class:`faceaux.FAN`),
            run under ``torch.no_grad()`` on the (aligned) image mapped from ``image_range`` to
            [0, 1] and resized to ``fan_input_size``.
        parser: a face-parsing network mapping (B, 3, s, s) images (``s = parser_input_size``,
            the recognizer's own value range) to (B, P, h, w) class scores; masks are their
            softmax over P, up-sampled to s × s.

    Stage taps:
        integration: backbone stage name → FAN feature key (e.g. ``{"layer1": "h2l.2.64"}``)
            or ``None`` (a heatmap-only point for ``stage_heatmaps``): a
            :class:`faceaux.FANIntegrationLayer` each (FAN-Face eq. 2, Fig. 3).
        integration_variant: ``"basic"`` (BL), ``"simple"`` (SL) or ``"advanced"`` (AL).
        connectivity: ``"1-1"`` (after each named stage, fixed γ) or ``"1-many"`` (after every
            block of each named stage, each with a learnable γ_k initialised to ``gamma``).
        gamma: γ of eq. 2.
        stage_heatmaps: also stack the heatmaps at every integration point, followed by a 1×1
            convolution back to the stage's channels initialised to [I | 0] (FAN-Face "H2+").
        heatmap_key: FAN output with the heatmaps (default ``"heatmaps.{num_stacks}"``).
        parts: a :class:`faceaux.PartMaskPooling` (its ``mask_activation`` must be ``None``:
            the recognizer gives it probabilities) pooling the features of ``part_stage``.
        part_stage: the stage (name or index) whose output is pooled; default the stage with
            reduction 4 (28×28 for 112×112 faces, FSENet §3.3).
        structure: a :class:`faceaux.StructureCorrelation` appended to the part features (eq. 7);
            without it the local representation is the flattened part features.
        local_weight: w in ``[ĝ, w·l̂]`` (Table 8's 1 : 0.6).
        normalize_global: L2-normalise g before the concatenation (§4.7.2); ``False`` keeps g.
        normalize_local: L2-normalise l too (default). The paper says how g is normalised, not
            l; its Table 8 implies l is on g's scale: global alone 81.19, local alone 70.35,
            and 1 : 1 gives 82.32 — with the longer half dominating the cosine, 1 : 1 would
            score near the local half alone. Un-normalised, l is several times longer than ĝ
            (5.6 vs 1 for the study's network at initialisation). ``False`` keeps l as it is
            (faceaux 0.1's ``[ĝ, w·l]``).

    Output:
        attributes: a :class:`faceaux.AttributeHead` on the embedding (multi-task eq. 2), or
            the number of attributes M: then ``AttributeHead(D, M, hidden_features=D)`` is
            built for this recognizer's embedding size D. A given head must take D inputs.

    Other args:
        image_range: value range (low, high) of the images the recognizer receives (default
            (−1, 1), InsightFace's normalisation); FAN receives them mapped to [0, 1].
        fan_input_size: FAN's square input side (default ``fan.input_size`` or 256).
        parser_input_size: the parser's square input side and mask size (128, FSENet Fig. 4).
        landmark_sigma: σ in pixels of the heatmaps rendered from ``landmarks=`` at call time.
        num_parsing_classes: P for integer label maps given as ``masks=`` (11, Helen).
        input_size: (H, W) the backbone receives, for the construction-time dry run; default
            ``align.output_size`` or ``backbone.input_size``.
        in_channels: C, channels of the images (default ``align.in_channels`` or 3).

    Shape:
        - images: (B, C, H, W) in ``image_range``
        - heatmaps (optional): (B, N, h, w); landmarks (optional): (B, N, 2) pixels (x, y)
        - masks (optional): (B, P, h, w) probabilities or one-hot, or (B, h, w) integer labels
        - output: (B, D) — D = the backbone's, plus K·(C + 2(K − 1)) with parts and structure
        - ``forward_aux``: ``{"embedding": (B, D)}`` plus, where on, ``"aligned"`` (B, C, h, w),
          ``"matrix"`` (B, 3, 3), ``"heatmaps"`` (B, N, h, w), ``"masks"`` (B, P, h, w),
          ``"global"`` (B, D_g), ``"local"`` (B, D_l), ``"parts"`` (B, K, C_part),
          ``"attributes"`` (B, M)

    Examples:
        >>> from faceaux.models import create_model
        >>> from faceaux import AttributeHead, GNAP
        >>> backbone = create_model("iresnet_nano", pooling="gnap")
        >>> model = FaceRecognizer(backbone, attributes=AttributeHead(128, 7, 32)).eval()
        >>> out = model.forward_aux(torch.rand(2, 3, 112, 112) * 2 - 1)
        >>> out["embedding"].shape, out["attributes"].shape
        (torch.Size([2, 128]), torch.Size([2, 7]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        align: SpatialTransformerAlign | None = None,
        heatmaps: HeatmapStacker | None = None,
        fan: nn.Module | None = None,
        integration: Mapping[str, str | None] | None = None,
        integration_variant: str = "basic",
        connectivity: str = "1-1",
        gamma: float = 1.0,
        stage_heatmaps: bool = False,
        heatmap_key: str | None = None,
        parser: nn.Module | None = None,
        parts: PartMaskPooling | None = None,
        part_stage: str | int | None = None,
        structure: StructureCorrelation | None = None,
        local_weight: float = 0.6,
        normalize_global: bool = True,
        normalize_local: bool = True,
        attributes: AttributeHead | int | None = None,
        image_range: tuple[float, float] = (-1.0, 1.0),
        fan_input_size: int | None = None,
        parser_input_size: int = 128,
        landmark_sigma: float = 2.0,
        num_parsing_classes: int = 11,
        input_size: Sequence[int] | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        for method in ("forward_stages", "forward_head", "feature_info"):
            if not hasattr(backbone, method):
                raise TypeError(
                    f"backbone: expected a module with the stage contract ({method} is missing); "
                    "wrap other networks in faceaux.models.BackboneAdapter"
                )
        self._check_types(align, heatmaps, parts, structure, attributes)
        if integration_variant not in _VARIANTS:
            raise ValueError(
                f"integration_variant: expected one of {_VARIANTS}, received "
                f"{integration_variant!r}"
            )
        if connectivity not in ("1-1", "1-many"):
            raise ValueError(f"connectivity: expected '1-1' or '1-many', received {connectivity!r}")
        if len(tuple(image_range)) != 2 or not image_range[1] > image_range[0]:
            raise ValueError(
                f"image_range: expected (low, high) with low < high, received {image_range!r}"
            )
        self.backbone = backbone
        self.align = align
        self.stacker = heatmaps
        self.image_range = (float(image_range[0]), float(image_range[1]))
        self.landmark_sigma = float(landmark_sigma)
        self.num_parsing_classes = int(num_parsing_classes)
        self.parser_input_size = int(parser_input_size)
        self.local_weight = float(local_weight)
        self.normalize_global = bool(normalize_global)
        self.normalize_local = bool(normalize_local)
        self.connectivity = connectivity
        self.fan = _freeze(fan) if fan is not None else None
        self.parser = _freeze(parser) if parser is not None else None
        if fan is not None and not hasattr(fan, "forward_features"):
            raise TypeError(
                "fan: expected a network with forward_features(x) -> dict, received "
                f"{type(fan).__name__}"
            )
        self.fan_input_size = int(fan_input_size or getattr(fan, "input_size", 256))
        self.heatmap_key = heatmap_key or (
            f"heatmaps.{getattr(fan, 'num_stacks', 1)}" if fan is not None else None
        )
        if in_channels is None:
            in_channels = align.in_channels if align is not None else 3
        self.image_channels = check_positive_int(in_channels, "in_channels")
        names = [info["module"] for info in backbone.feature_info]
        self.input_size = self._input_size(input_size)

        # Input stacking (H2): grow the first convolution for the K heatmaps.
        self.num_heatmaps = 0
        if heatmaps is not None:
            self.num_heatmaps = self._count_heatmaps(heatmaps)
            self._grow_first_conv(self.num_heatmaps)

        # Stage taps: integration points (1-1: stages; 1-many: their blocks) → FAN keys.
        self.integration_points: dict[str, str | None] = {}
        for name, key in dict(integration or {}).items():
            if name not in names:
                raise ValueError(f"integration: {name!r} is not a backbone stage; stages: {names}")
            if connectivity == "1-1":
                self.integration_points[name] = key
            else:
                blocks = backbone.stage_blocks(names.index(name))
                self.integration_points.update(dict.fromkeys(blocks, key))
        if self.integration_points and fan is None:
            raise ValueError("integration: FAN features are needed, but no fan= network is given")
        if stage_heatmaps and not self.integration_points:
            raise ValueError("stage_heatmaps: needs integration points to stack the heatmaps at")
        if stage_heatmaps and heatmaps is None:
            raise ValueError("stage_heatmaps: needs the heatmaps= stacker (H2+ extends H2)")
        self.stage_heatmaps = bool(stage_heatmaps)
        self.part_stage: str | None = None
        if parts is not None:
            self.part_stage = self._part_stage(part_stage, names)
        elif part_stage is not None:
            raise ValueError("part_stage: given without parts=")
        if structure is not None and parts is None:
            raise ValueError("structure: StructureCorrelation needs parts= (PartMaskPooling)")

        channels = self._point_channels()
        self.integration = nn.ModuleDict()
        self.projection = nn.ModuleDict()
        fan_channels = self._fan_channels()
        for point, key in self.integration_points.items():
            if key is not None:
                self.integration[_slot(point)] = FANIntegrationLayer(
                    fan_channels[key],
                    channels[point],
                    integration_variant,
                    gamma=gamma,
                    learnable_gamma=connectivity == "1-many",
                )
            if self.stage_heatmaps:
                projection = nn.Conv2d(
                    channels[point] + self.num_heatmaps, channels[point], 1, bias=False
                )
                with torch.no_grad():
                    projection.weight.zero_()
                    projection.weight[:, : channels[point], 0, 0] = torch.eye(channels[point])
                self.projection[_slot(point)] = projection
        reference = next(backbone.parameters(), None)
        if reference is not None:
            self.integration.to(device=reference.device, dtype=reference.dtype)
            self.projection.to(device=reference.device, dtype=reference.dtype)
        self.parts = parts
        self.structure = structure
        self.part_channels = channels.get(self.part_stage, 0) if self.part_stage else 0
        if isinstance(attributes, int):
            check_positive_int(attributes, "attributes")
            size = self.embedding_size
            attributes = AttributeHead(size, attributes, hidden_features=size)
        elif attributes is not None and attributes.in_features != self.embedding_size:
            raise ValueError(
                f"attributes: the AttributeHead takes {attributes.in_features} inputs; this "
                f"recognizer's embedding has D = {self.embedding_size}"
            )
        self.attributes = attributes

    # ------------------------------------------------------------------ construction helpers

    @staticmethod
    def _check_types(align, heatmaps, parts, structure, attributes) -> None:
        for name, value, kind in (
            ("align", align, SpatialTransformerAlign),
            ("heatmaps", heatmaps, HeatmapStacker),
            ("parts", parts, PartMaskPooling),
            ("structure", structure, StructureCorrelation),
            ("attributes", attributes, (AttributeHead, int)),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                names = " or ".join(
                    k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,))
                )
                raise TypeError(
                    f"{name}: expected {names} or None, received {type(value).__name__}"
                )
        if parts is not None and parts.mask_activation is not None:
            raise ValueError(
                "parts: expected PartMaskPooling(mask_activation=None) — the recognizer passes "
                f"mask probabilities — received mask_activation={parts.mask_activation!r}"
            )

    def _input_size(self, input_size: Sequence[int] | None) -> tuple[int, int]:
        if input_size is None:
            input_size = (
                self.align.output_size
                if self.align is not None
                else getattr(self.backbone, "input_size", None)
            )
        if input_size is None or len(tuple(input_size)) != 2:
            raise ValueError(
                f"input_size: expected (H, W) of the backbone's input, received {input_size!r}"
            )
        return (int(input_size[0]), int(input_size[1]))

    def _count_heatmaps(self, stacker: HeatmapStacker) -> int:
        if stacker.landmarks is not None:
            return len(stacker.landmarks)
        if self.fan is not None and hasattr(self.fan, "out_channels"):
            return int(self.fan.out_channels)
        raise ValueError(
            "heatmaps: with HeatmapStacker(landmarks=None) the number of heatmaps is known only "
            "from a fan= network; give the landmark indices, e.g. HeatmapStacker(INTERNAL_51)"
        )

    def _grow_first_conv(self, extra: int) -> None:
        backbone = self.backbone
        conv = backbone.first_conv_module()
        if conv.in_channels == self.image_channels:
            expand_input_channels(conv, extra)
        elif conv.in_channels != self.image_channels + extra:
            raise ValueError(
                f"heatmaps: the backbone's first convolution takes {conv.in_channels} channels; "
                f"expected {self.image_channels} (grown here) or {self.image_channels + extra} "
                f"(image + {extra} heatmaps)"
            )

    def _part_stage(self, part_stage: str | int | None, names: list[str]) -> str:
        info = self.backbone.feature_info
        if part_stage is None:
            matches = [f["module"] for f in info if f["reduction"] == 4]
            if not matches:
                raise ValueError(
                    "part_stage: no stage with reduction 4 (FSENet's 28×28 at 112×112); give "
                    f"one of {names}"
                )
            return matches[0]
        if isinstance(part_stage, int) and not isinstance(part_stage, bool):
            if not -len(names) <= part_stage < len(names):
                raise ValueError(
                    f"part_stage: index {part_stage} out of range for {len(names)} stages"
                )
            return names[part_stage]
        if part_stage not in names:
            raise ValueError(f"part_stage: {part_stage!r} is not a backbone stage; stages: {names}")
        return part_stage

    def _point_channels(self) -> dict[str, int]:
        """Channels at every tap point, from one dry run of the backbone (eval, no gradients)."""
        points = set(self.integration_points) | ({self.part_stage} if self.part_stage else set())
        if not points:
            return {}
        found: dict[str, int] = {}

        def record(name: str, feature: torch.Tensor) -> torch.Tensor:
            if name in points:
                found[name] = feature.shape[1]
            return feature

        reference = next(self.backbone.parameters(), None)
        in_channels = self.image_channels + self.num_heatmaps
        probe = torch.zeros(
            2,
            in_channels,
            *self.input_size,
            device=None if reference is None else reference.device,
            dtype=None if reference is None else reference.dtype,
        )
        was_training = self.backbone.training
        try:
            self.backbone.eval()
            with torch.no_grad():
                self.backbone.forward_stages(probe, record)
        finally:
            self.backbone.train(was_training)
        return found

    def _fan_channels(self) -> dict[str, int]:
        keys = {k for k in self.integration_points.values() if k is not None}
        if not keys:
            return {}
        fan = self.fan
        if hasattr(fan, "feature_keys") and hasattr(fan, "num_features"):
            unknown = sorted(keys - set(fan.feature_keys()))
            if unknown:
                raise ValueError(
                    f"integration: unknown FAN feature keys {unknown}; available: "
                    f"{sorted(fan.feature_keys())}"
                )
            return {
                k: fan.out_channels if k.startswith("heatmaps") else fan.num_features for k in keys
            }
        reference = next(fan.parameters())
        probe = torch.zeros(
            1,
            3,
            self.fan_input_size,
            self.fan_input_size,
            device=reference.device,
            dtype=reference.dtype,
        )
        with torch.no_grad():
            features = fan.forward_features(probe)
        unknown = sorted(keys - set(features))
        if unknown:
            raise ValueError(
                f"integration: unknown FAN feature keys {unknown}; available: {sorted(features)}"
            )
        return {k: features[k].shape[1] for k in keys}

    # ------------------------------------------------------------------ properties

    @property
    def embedding_size(self) -> int:
        """D of :meth:`forward`: the backbone's, plus the local representation's with parts."""
        size = int(self.backbone.embedding_size)
        if self.parts is not None:
            k = len(self.parts.parts) if self.parts.parts is not None else self.num_parsing_classes
            extra = 2 * (k - 1) if self.structure is not None else 0
            size += k * (self.part_channels + extra)
        return size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch, passed to the backbone: recompute its blocks in the backward pass.

        Raises:
            ValueError: the backbone has no ``set_grad_checkpointing`` (a
                :class:`~faceaux.models.BackboneAdapter`: its forward hooks would run again in
                the recomputation).
        """
        switch = getattr(self.backbone, "set_grad_checkpointing", None)
        if not callable(switch):
            raise ValueError(
                f"backbone: {type(self.backbone).__name__} has no set_grad_checkpointing; "
                "gradient checkpointing needs a faceaux backbone"
            )
        switch(enable)

    def train(self, mode: bool = True) -> FaceRecognizer:
        super().train(mode)
        for side in (self.fan, self.parser):
            if side is not None:
                side.eval()  # frozen: BatchNorm statistics never change
        return self

    # ------------------------------------------------------------------ side networks

    def fan_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the frozen FAN once (no gradients) on images in ``image_range``: its feature dict."""
        if self.fan is None:
            raise ValueError("fan_features: this recognizer has no fan= network")
        low, high = self.image_range
        x = (images[:, :3] - low) / (high - low)
        size = (self.fan_input_size, self.fan_input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        reference = next(self.fan.parameters())
        with torch.no_grad():
            return self.fan.forward_features(x.to(reference.dtype))

    def parse(self, images: torch.Tensor) -> torch.Tensor:
        """Part-mask probabilities (B, P, s, s) from the frozen parser (no gradients)."""
        if self.parser is None:
            raise ValueError("parse: this recognizer has no parser= network")
        size = (self.parser_input_size, self.parser_input_size)
        reference = next(self.parser.parameters())
        with torch.no_grad():
            x = images[:, :3]
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            scores = self.parser(x.to(reference.dtype))
            if tuple(scores.shape[-2:]) != size:
                scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
            return scores.float().softmax(dim=1).to(images.dtype)

    # ------------------------------------------------------------------ forward

    def _side_inputs(
        self,
        images: torch.Tensor,
        matrix: torch.Tensor | None,
        heatmaps: torch.Tensor | None,
        landmarks: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if landmarks is not None:
            if heatmaps is not None:
                raise ValueError("landmarks: give heatmaps= or landmarks=, not both")
            check_tensor(landmarks, "landmarks", "(B, N, 2)", sizes=(None, None, 2), floating=True)
            check_same_batch(images, "images", landmarks, "landmarks")
            heatmaps = render_heatmaps(
                landmarks.to(images.dtype), images.shape[-2:], self.landmark_sigma
            )
        if heatmaps is not None:
            check_tensor(heatmaps, "heatmaps", "(B, N, h, w)", floating=True)
            check_same_batch(images, "images", heatmaps, "heatmaps")
        if masks is not None:
            if masks.ndim == 3 and not masks.is_floating_point():
                masks = F.one_hot(masks.long(), self.num_parsing_classes).permute(0, 3, 1, 2)
                masks = masks.to(images.dtype)
            check_tensor(masks, "masks", "(B, P, h, w)", floating=True)
            check_same_batch(images, "images", masks, "masks")
        if matrix is not None:
            size = self.align.output_size
            scale = (size[0] / images.shape[-2], size[1] / images.shape[-1])

            def to_aligned(t: torch.Tensor) -> torch.Tensor:
                out = (round(t.shape[-2] * scale[0]), round(t.shape[-1] * scale[1]))
                return warp(t, matrix, out, align_corners=self.align.align_corners)

            heatmaps = None if heatmaps is None else to_aligned(heatmaps)
            masks = None if masks is None else to_aligned(masks)
        return heatmaps, masks

    def _run(
        self,
        images: torch.Tensor,
        heatmaps: torch.Tensor | None,
        landmarks: torch.Tensor | None,
        masks: torch.Tensor | None,
        fan_features: Mapping[str, torch.Tensor] | None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One pass: the output dict and the backbone's last stage map."""
        check_images(self, images, sizes=(None, self.image_channels, None, None))
        out: dict[str, Any] = {}
        x, matrix = images, None
        if self.align is not None:
            x, matrix = self.align(images, return_matrix=True)
            out["aligned"], out["matrix"] = x, matrix
        heatmaps, masks = self._side_inputs(images, matrix, heatmaps, landmarks, masks)
        needs_features = any(k is not None for k in self.integration_points.values())
        if fan_features is None and (
            needs_features or (self.stacker is not None and heatmaps is None)
        ):
            fan_features = self.fan_features(x) if self.fan is not None else None
        if self.stacker is not None and heatmaps is None:
            if fan_features is None or self.heatmap_key not in fan_features:
                raise ValueError("heatmaps: stacking needs heatmaps=, landmarks= or a fan= network")
            heatmaps = fan_features[self.heatmap_key]
        if needs_features and fan_features is None:
            raise ValueError("fan_features: FAN integration needs a fan= network or fan_features=")
        if heatmaps is not None:
            out["heatmaps"] = heatmaps
        if self.parts is not None:
            if masks is None:
                if self.parser is None:
                    raise ValueError("masks: part pooling needs masks= or a parser= network")
                masks = self.parse(x)
            out["masks"] = masks
        stacked = self.stacker(x, heatmaps) if self.stacker is not None else x
        captured: dict[str, torch.Tensor] = {}

        def tap(name: str, feature: torch.Tensor) -> torch.Tensor:
            slot = _slot(name)
            if name in self.integration_points:
                if self.stage_heatmaps:
                    feature = self.projection[slot](self.stacker(feature, heatmaps))
                key = self.integration_points[name]
                if key is not None:
                    feature = self.integration[slot](feature, fan_features[key])
            if name == self.part_stage:
                captured["parts"] = feature
            return feature

        use_tap = bool(self.integration_points) or self.part_stage is not None
        final = self.backbone.forward_stages(stacked, tap if use_tap else None)
        global_embedding = self.backbone.forward_head(final)
        embedding = global_embedding
        if self.parts is not None:
            part_features = self.parts(captured["parts"], masks)
            local = (
                self.structure(part_features)
                if self.structure is not None
                else part_features.flatten(1)
            )
            g = F.normalize(global_embedding, dim=1) if self.normalize_global else global_embedding
            l_hat = F.normalize(local, dim=1) if self.normalize_local else local
            embedding = torch.cat([g, self.local_weight * l_hat.to(g.dtype)], dim=1)
            out.update({"global": global_embedding, "local": local, "parts": part_features})
        out["embedding"] = embedding
        if self.attributes is not None:
            out["attributes"] = self.attributes(embedding)
        return out, final

    def forward_aux(
        self,
        images: torch.Tensor,
        *,
        heatmaps: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        fan_features: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The embedding and every auxiliary output (see the class docstring's Shape section).

        Args:
            images: the faces.
            heatmaps: landmark heatmaps to use instead of FAN's (ground truth, another detector).
            landmarks: landmarks in pixels of ``images``, rendered into heatmaps (σ =
                ``landmark_sigma``) instead of FAN's.
            masks: part masks to use instead of the parser's.
            fan_features: a precomputed ``FAN.forward_features`` dict (of the aligned faces).
        """
        return self._run(images, heatmaps, landmarks, masks, fan_features)[0]

    def forward(
        self,
        images: torch.Tensor,
        heatmaps: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        fan_features: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The embedding (B, D); side inputs as in :meth:`forward_aux`.

        The side inputs may be given by position too (ONNX's TorchScript exporter fills every
        default argument positionally).
        """
        return self._run(images, heatmaps, landmarks, masks, fan_features)[0]["embedding"]

    def forward_features(self, images: torch.Tensor, **side_inputs: Any) -> torch.Tensor:
        """The backbone's last stage map, with the input stage and every tap applied."""
        return self._run(
            images,
            side_inputs.get("heatmaps"),
            side_inputs.get("landmarks"),
            side_inputs.get("masks"),
            side_inputs.get("fan_features"),
        )[1]

    # ------------------------------------------------------------------ checkpoints

    def convert_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the keys of state dicts saved by faceaux 0.1's paper models to this layout.

        FAN-Face (``FANFace``): ``integrator.backbone.*`` → ``backbone.*``, ``integrator.fan.*``
        → ``fan.*``, ``integrator.integration.*`` → ``integration.*``; FSENet:
        ``parsing_net.*`` → ``parser.*``; the multi-task nets: trunk keys gain ``backbone.``.
        Keys this recognizer already has are kept as they are.

        Shape:
            A mapping of names to tensors → a new ``dict`` with the same tensors.
        """
        own = set(self.state_dict())
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            new = key
            if new not in own:
                for old, replacement in (("integrator.", ""), ("parsing_net.", "parser.")):
                    if new.startswith(old):
                        new = replacement + new[len(old) :]
                if new not in own and f"backbone.{new}" in own:
                    new = f"backbone.{new}"
            out[new] = value
        return out
