"""The multi-task face recognition network of multitask-face-attributes.txt (Full and Fast models).

Fig. 1 / §3.3 of the paper: 112×96 input; convolutional layers (3×3, stride 1, padding 0) and
2×2 stride-2 max-pooling layers; four groups of building blocks (3, 4, 6, 3 blocks with 64, 128,
256, 512 filters; a Full block has three 3×3 convs on its main road, a Fast block two — Figs. 2
and 3 — with padding 1, stride 1 and an identity bypass summed to the output); a 1024-d fully
connected layer (the face representation, trained with the identity loss) and, for attributes
only, a second 1024-d fully connected layer then ``W_a`` (:class:`faceaux.AttributeHead`,
configuration 1 of Fig. 9). BatchNorm follows every conv / FC layer and PReLU follows the BN;
dropout 0.5 on the FC layers (§4.1).

What the text leaves open, and what we chose (Fig. 1 itself is not in the text):

- The text says "the four convolutional layers … have 32, 64, 64, 64 and 64 filters" — five
  numbers for four layers — and "all four [max-pooling] layers". We read the stem as conv 32 →
  conv 64 → max-pool, followed by one transition conv + max-pool in front of each of groups
  2–4: five plain convs and four max-pools. Since a block's bypass is the identity (the paper
  contrasts it with the "variants-block" that has a conv on the bypass, Fig. 8), each
  transition conv must output its group's width (128, 256, 512), not 64.
- In a block, each of the convs is conv → BN → PReLU and the bypass is added after the last
  PReLU (no activation after the sum).
- The 1024-d embedding is FC → BN1d → PReLU (BN and PReLU after every FC, §3.3).

With padding 0, the maps are 112×96 → 108×92 → (pool) 54×46 (group 1) → 26×22 (group 2) →
12×10 (group 3) → 5×4 (group 4), so the FC sees 512·5·4 = 10240 inputs.

Examples:
    >>> import torch
    >>> from faceaux.models import create_model
    >>> model = create_model("mtl_attr_fast").eval()
    >>> out = model.forward_aux(torch.randn(1, 3, 112, 96))
    >>> out["embedding"].shape, out["attributes"].shape
    (torch.Size([1, 1024]), torch.Size([1, 7]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from faceaux._checks import check_tensor
from faceaux.layers.attributes import CELEBA_FACE_ATTRIBUTES, AttributeHead
from faceaux.models.registry import register_model

__all__ = ["MultiTaskBlock", "MultiTaskFaceNet"]


def _conv_bn_prelu(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    )


class MultiTaskBlock(nn.Module):
    """The paper's building block: ``convs`` × (3×3 conv → BN → PReLU) + identity bypass.

    Fig. 2 (Full block, ``convs=3``) and Fig. 3 (Fast block, ``convs=2``); padding 1, stride 1.

    Shape:
        (B, C, H, W) → (B, C, H, W).

    Examples:
        >>> MultiTaskBlock(16, convs=3)(torch.randn(2, 16, 6, 5)).shape
        torch.Size([2, 16, 6, 5])
    """

    def __init__(self, channels: int, convs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*[_conv_bn_prelu(channels, channels, 1) for _ in range(convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MultiTaskFaceNet(nn.Module):
    """The multi-task network: shared trunk → 1024-d embedding, plus an attribute head.

    Args:
        block_convs: 3 (Full-Model) or 2 (Fast-Model).
        blocks: building blocks per group (3, 4, 6, 3).
        widths: filters per group (64, 128, 256, 512).
        stem_widths: the two stem convs (32, 64).
        embedding_size: D, the first FC (1024).
        num_attributes: M (7: :data:`faceaux.CELEBA_FACE_ATTRIBUTES`).
        attribute_hidden: width of the attribute-only FC g (1024).
        dropout: on the FC layers (0.5 in the paper's training).
        input_size: (H, W) = (112, 96).

    Shape:
        - images: (B, 3, 112, 96)
        - output: (B, D) embedding
        - ``forward_features``: (B, 512, 5, 4), the last group's map
        - ``forward_aux``: ``{"embedding": (B, D), "attributes": (B, M)}``
    """

    def __init__(
        self,
        block_convs: int = 3,
        *,
        blocks: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_widths: Sequence[int] = (32, 64),
        embedding_size: int = 1024,
        num_attributes: int = len(CELEBA_FACE_ATTRIBUTES),
        attribute_hidden: int = 1024,
        dropout: float = 0.5,
        input_size: tuple[int, int] = (112, 96),
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(
                f"blocks, widths: expected equal lengths, received {tuple(blocks)}, {tuple(widths)}"
            )
        self.input_size = tuple(input_size)
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(
            _conv_bn_prelu(3, stem_widths[0], 0),
            _conv_bn_prelu(stem_widths[0], stem_widths[1], 0),
            nn.MaxPool2d(2, 2),
        )
        height, width = self.input_size[0] - 4, self.input_size[1] - 4
        height, width = height // 2, width // 2
        channels = stem_widths[1]
        groups: list[nn.Module] = []
        for index, (count, group_width) in enumerate(zip(blocks, widths, strict=True)):
            layers: list[nn.Module] = []
            if index > 0 or channels != group_width:
                layers += [_conv_bn_prelu(channels, group_width, 0), nn.MaxPool2d(2, 2)]
                height, width = (height - 2) // 2, (width - 2) // 2
            layers += [MultiTaskBlock(group_width, block_convs) for _ in range(count)]
            groups.append(nn.Sequential(*layers))
            channels = group_width
        self.groups = nn.Sequential(*groups)
        if height < 1 or width < 1:
            raise ValueError(f"input_size: {self.input_size} is too small for this network")
        self.feature_size = (height, width)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * height * width, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)
        self.prelu = nn.PReLU(embedding_size)
        self.attributes = AttributeHead(
            embedding_size, num_attributes, hidden_features=attribute_hidden, dropout=dropout
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last group's feature map, (B, 512, 5, 4) at 112×96."""
        check_tensor(
            images, "images", "(B, 3, H, W)", sizes=(None, 3, *self.input_size), floating=True
        )
        return self.groups(self.stem(images))

    def _embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.fc(self.dropout(torch.flatten(feature_map, 1)))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The 1024-d face representation (the identity branch), (B, D)."""
        return self._embed(self.forward_features(images))

    def forward_aux(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"embedding": (B, D), "attributes": (B, M)}`` — the two heads of eq. 2."""
        embedding = self.forward(images)
        return {"embedding": embedding, "attributes": self.attributes(embedding)}


@register_model
def mtl_attr_full(**kwargs) -> MultiTaskFaceNet:
    """Full-Model: three-conv building blocks (Fig. 2). kwargs → :class:`MultiTaskFaceNet`."""
    return MultiTaskFaceNet(3, **kwargs)


@register_model
def mtl_attr_fast(**kwargs) -> MultiTaskFaceNet:
    """Fast-Model: two-conv building blocks (Fig. 3). kwargs → :class:`MultiTaskFaceNet`."""
    return MultiTaskFaceNet(2, **kwargs)
