"""Output stages: map a backbone's last feature map to the face embedding (FC, GAP or GNAP).

The three global operators the GNAP paper compares (Table 1, on LResNet18E):

- ``"fc"``: ArcFace's "E" output block (Deng et al., CVPR 2019, §3.2): BN2d → dropout → flatten
  → FC → BN1d. Not spatially symmetric: every position has its own weights.
- ``"gap"``: global average pooling "replacing the penultimate FC" (GNAP paper §4,
  LResNet18E(GAP)). The paper gives no layer list; we follow InsightFace's ``fc_type="GAP"``
  output of the same authors' code base: BN2d → PReLU → global average pool → dropout → FC
  (C → D) → BN1d.
- ``"gnap"``: :class:`faceaux.GNAP` (eqs. 1–3), with its own 1×1 projection when D ≠ C.

In every kind the final BatchNorm1d has its scale fixed to 1 (InsightFace's ``fix_gamma`` /
``features.weight.requires_grad = False``), so only its shift is learned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from faceaux._checks import check_positive_int, check_tensor
from faceaux.layers.gnap import GNAP

__all__ = ["POOLINGS", "EmbeddingHead"]

POOLINGS: tuple[str, ...] = ("fc", "gap", "gnap")
"""The output-stage kinds: ``"fc"`` (ArcFace E block), ``"gap"``, ``"gnap"``.

Shape:
    A tuple of ``str``; no tensors.
"""


def _fixed_scale_bn1d(features: int) -> nn.BatchNorm1d:
    norm = nn.BatchNorm1d(features, eps=1e-5)
    nn.init.ones_(norm.weight)
    norm.weight.requires_grad_(False)
    return norm


class EmbeddingHead(nn.Module):
    """An output stage (FC, GAP or GNAP) from a ``(B, C, H, W)`` map to a ``(B, D)`` embedding.

    See the module docstring for the layers of each kind. Used by
    :class:`faceaux.models.BackboneAdapter` to give any network a face output stage, and by the
    faceaux backbones for ``pooling="gap"``.

    Args:
        kind: ``"fc"``, ``"gap"`` or ``"gnap"``.
        channels: C of the input map.
        embedding_size: D.
        feature_size: (H, W) of the input map; required by ``"fc"`` (its FC has C·H·W inputs).
        dropout: dropout probability before the FC (``"fc"``, ``"gap"``).

    Shape:
        - features: (B, C, H, W), with (H, W) = ``feature_size`` for ``"fc"``
        - output: (B, D)

    Examples:
        >>> head = EmbeddingHead("gap", channels=64, embedding_size=32).eval()
        >>> head(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 32])
        >>> EmbeddingHead("fc", 64, 32, feature_size=(7, 7)).fc.in_features
        3136
    """

    def __init__(
        self,
        kind: str,
        channels: int,
        embedding_size: int,
        *,
        feature_size: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"kind: expected one of {POOLINGS}, received {kind!r}")
        check_positive_int(channels, "channels")
        check_positive_int(embedding_size, "embedding_size")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), received {dropout!r}")
        self.kind = kind
        self.channels = channels
        self.embedding_size = embedding_size
        self.feature_size = None if feature_size is None else tuple(int(s) for s in feature_size)
        if kind == "gnap":
            self.gnap = GNAP(channels, out_features=embedding_size)
            return
        self.bn = nn.BatchNorm2d(channels, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        if kind == "fc":
            if self.feature_size is None or len(self.feature_size) != 2:
                raise ValueError(
                    f"feature_size: kind='fc' needs the (H, W) of the input map, received "
                    f"{feature_size!r}"
                )
            self.fc = nn.Linear(
                channels * self.feature_size[0] * self.feature_size[1], embedding_size
            )
        else:
            self.act = nn.PReLU(channels)
            self.fc = nn.Linear(channels, embedding_size)
        self.features = _fixed_scale_bn1d(embedding_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        sizes = (None, self.channels, *self.feature_size) if self.kind == "fc" else None
        check_tensor(
            features,
            "features",
            "(B, C, H, W)",
            sizes=sizes or (None, self.channels, None, None),
            floating=True,
        )
        if self.kind == "gnap":
            return self.gnap(features)
        x = self.bn(features)
        x = torch.flatten(x, 1) if self.kind == "fc" else self.act(x).mean(dim=(2, 3))
        return self.features(self.fc(self.dropout(x)))

    def extra_repr(self) -> str:
        size = f", feature_size={self.feature_size}" if self.kind == "fc" else ""
        return (
            f"kind={self.kind!r}, channels={self.channels}, "
            f"embedding_size={self.embedding_size}{size}"
        )
