"""The multi-task network of Wang et al., ICMR 2017 (Full and Fast models).

Wang, He, Fu, Feng, Jiang & Xue, "Multi-task Deep Neural Network for Joint Face Recognition and
Facial Attribute Prediction", ICMR 2017, doi:10.1145/3078971.3078973.

Fig. 1 / §3.3 of the paper: 112×96 input; convolutional layers (3×3, stride 1, padding 0) and
2×2 stride-2 max-pooling layers; four groups of building blocks (3, 4, 6, 3 blocks with 64, 128,
256, 512 filters; a Full block has three 3×3 convs on its main road, a Fast block two — Figs. 2
and 3 — with padding 1, stride 1 and an identity bypass summed to the output); a 1024-d fully
connected layer (the face representation, trained with the identity loss) and, for attributes
only, a second 1024-d fully connected layer then ``W_a`` (:class:`faceaux.AttributeHead`,
configuration 1 of Fig. 9) — the registered models are :class:`faceaux.models.FaceRecognizer`
configurations of the trunk and that head. BatchNorm follows every conv / FC layer and PReLU
follows the BN; dropout 0.5 on the FC layers (§4.1).

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
- Table 5's "variants-block" ("two convolutional layer on the main road, and one convolutional
  layer on the bypass", Fig. 8) is ``bypass_conv=True`` on the Fast block: the bypass conv is
  3×3, padding 1, → BN → PReLU like every other conv of the network (§3.3), since Fig. 8 is not
  in the text.
- Fig. 9's configurations of the last layers (Table 6): 1 (the paper's) is the attribute-only
  FC ``g`` in :class:`faceaux.AttributeHead`; 2 ("a shared structure of both tasks") is
  ``attribute_hidden=None`` (``W_a`` and ``W_p`` both straight on ``f``); 3 ("another
  independent fully connected layer for each individual task") adds :func:`identity_branch`, an
  identity-only FC between ``f`` and ``W_p``, to configuration 1. In all three the face
  representation is the shared ``f`` ("all the other settings and structures are the same
  except the last layer").

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

from faceaux.layers.attributes import CELEBA_FACE_ATTRIBUTES, AttributeHead
from faceaux.models.features import StagedBackbone, check_images
from faceaux.models.registry import register_model

__all__ = ["MultiTaskBlock", "MultiTaskFaceNet", "identity_branch"]


def _conv_bn_prelu(in_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    )


class MultiTaskBlock(nn.Module):
    """The paper's building block: ``convs`` × (3×3 conv → BN → PReLU) + identity bypass.

    Fig. 2 (Full block, ``convs=3``) and Fig. 3 (Fast block, ``convs=2``); padding 1, stride 1.
    ``bypass_conv=True`` is Table 5's variants-block: one 3×3 conv → BN → PReLU on the bypass
    instead of the identity (with ``convs=2``, "two convolutional layer on the main road").

    Shape:
        (B, C, H, W) → (B, C, H, W).

    Examples:
        >>> MultiTaskBlock(16, convs=3)(torch.randn(2, 16, 6, 5)).shape
        torch.Size([2, 16, 6, 5])
        >>> MultiTaskBlock(16, convs=2, bypass_conv=True).bypass[0].kernel_size
        (3, 3)
    """

    def __init__(self, channels: int, convs: int, bypass_conv: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(*[_conv_bn_prelu(channels, channels, 1) for _ in range(convs)])
        self.bypass = _conv_bn_prelu(channels, channels, 1) if bypass_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.bypass is None else self.bypass(x)
        return shortcut + self.body(x)


class MultiTaskFaceNet(StagedBackbone):
    """The multi-task network's shared trunk and identity embedding, with the stage contract.

    The stem (two plain convs + max-pool), the four groups ``groups.0`` … ``groups.3`` (the
    stages; each child — a transition conv, a max-pool or a block — is a block of the contract)
    and the identity output stage (dropout → FC → BN → PReLU, the 1024-d representation ``f``).
    The attribute branch of eq. 2 (``g`` then ``W_a``) is an :class:`faceaux.AttributeHead` on
    ``f``: the registered ``mtl_attr_full`` / ``mtl_attr_fast`` are
    :class:`faceaux.models.FaceRecognizer` configurations holding both.

    Args:
        block_convs: 3 (Full-Model) or 2 (Fast-Model).
        blocks: building blocks per group (3, 4, 6, 3).
        widths: filters per group (64, 128, 256, 512).
        stem_widths: the two stem convs (32, 64).
        embedding_size: D, the first FC (1024).
        dropout: on the FC (0.5 in the paper's training).
        input_size: (H, W) = (112, 96).
        bypass_conv: a conv on every block's bypass (Table 5's variants-block).

    Shape:
        - images: (B, 3, 112, 96)
        - output: (B, D) embedding
        - ``forward_features``: (B, 512, 5, 4), the last group's map
    """

    def __init__(
        self,
        block_convs: int = 3,
        *,
        blocks: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_widths: Sequence[int] = (32, 64),
        embedding_size: int = 1024,
        dropout: float = 0.5,
        input_size: tuple[int, int] = (112, 96),
        bypass_conv: bool = False,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(
                f"blocks, widths: expected equal lengths, received {tuple(blocks)}, {tuple(widths)}"
            )
        self.input_size = tuple(input_size)
        self.embedding_size = embedding_size
        self.first_conv = "stem.0.0"
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
            layers += [MultiTaskBlock(group_width, block_convs, bypass_conv) for _ in range(count)]
            groups.append(nn.Sequential(*layers))
            channels = group_width
        self.groups = nn.Sequential(*groups)
        self.feature_info = [
            {
                "module": f"groups.{index}",
                "num_chs": widths[index],
                "reduction": 2 ** (index + 1),
                "blocks": tuple(f"groups.{index}.{i}" for i in range(len(group))),
            }
            for index, group in enumerate(groups)
        ]
        if height < 1 or width < 1:
            raise ValueError(f"input_size: {self.input_size} is too small for this network")
        self.feature_size = (height, width)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * height * width, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)
        self.prelu = nn.PReLU(embedding_size)

    def forward_stem(self, images: torch.Tensor) -> torch.Tensor:
        """Two plain 3×3 convs and a max-pool: (B, 3, 112, 96) → (B, 64, 54, 46)."""
        check_images(self, images, sizes=(None, self.in_channels, *self.input_size))
        return self.stem(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The identity branch's FC → BN → PReLU: (B, 512, 5, 4) → the 1024-d ``f``."""
        return self.prelu(self.bn(self.fc(self.dropout(torch.flatten(features, 1)))))


def identity_branch(
    in_features: int = 1024, hidden_features: int = 1024, dropout: float = 0.5
) -> nn.Sequential:
    """Fig. 9 configuration 3's identity-only FC: put it between the embedding and ``W_p``.

    Multi-task paper, §4.8 (Table 6): configuration 3 "enforces another independent fully
    connected layer for each individual task" — the attribute-only FC of
    :class:`faceaux.AttributeHead`, and this one for identity: ``Linear(bias=False) →
    BatchNorm1d → PReLU`` (BN and PReLU after every FC, §3.3) → dropout (§4.4), the identity
    classifier (``W_p``, a soft-max linear layer or a margin head) on its output. The face
    representation stays the shared embedding ``f``. Train it with the model:
    ``logits = classifier(branch(model(images)))``.

    Args:
        in_features: D of the shared embedding (1024).
        hidden_features: the branch's width (1024, as the attribute-only FC).
        dropout: dropout after the branch (0.5, §4.4).

    Shape:
        (B, in_features) → (B, hidden_features)

    Examples:
        >>> branch = identity_branch(64, 32).eval()
        >>> branch(torch.randn(2, 64)).shape
        torch.Size([2, 32])
    """
    return nn.Sequential(
        nn.Linear(in_features, hidden_features, bias=False),
        nn.BatchNorm1d(hidden_features),
        nn.PReLU(hidden_features),
        nn.Dropout(dropout),
    )


def _multitask(block_convs: int, **kwargs) -> nn.Module:
    from faceaux.models.recognizer import FaceRecognizer

    num_attributes = kwargs.pop("num_attributes", len(CELEBA_FACE_ATTRIBUTES))
    attribute_hidden = kwargs.pop("attribute_hidden", 1024)
    backbone = MultiTaskFaceNet(block_convs, **kwargs)
    head = AttributeHead(
        backbone.embedding_size,
        num_attributes,
        hidden_features=attribute_hidden,
        dropout=backbone.dropout.p,
    )
    return FaceRecognizer(backbone, attributes=head)


_MTL_CFG = {
    "input_size": (3, 112, 96),
    "embedding_size": 1024,
    "paper": "multitask-face-attributes (Fig. 1, Table 4)",
    "small": {"widths": (8, 16, 32, 64), "embedding_size": 64, "attribute_hidden": 32},
}


@register_model(baseline="mtl_attr_fast", **_MTL_CFG)
def mtl_attr_full(**kwargs) -> nn.Module:
    """Full-Model (three-conv blocks, Fig. 2) + the attribute head (Fig. 9 configuration 1).

    A :class:`faceaux.models.FaceRecognizer` with a :class:`MultiTaskFaceNet` backbone and an
    :class:`faceaux.AttributeHead` (``num_attributes`` = 7, ``attribute_hidden`` = 1024 —
    ``None`` for configuration 2 —, the backbone's ``dropout``). kwargs →
    :class:`MultiTaskFaceNet` (e.g. ``bypass_conv=True``) plus those two.
    """
    return _multitask(3, **kwargs)


@register_model(**_MTL_CFG)
def mtl_attr_fast(**kwargs) -> nn.Module:
    """Fast-Model (two-conv blocks, Fig. 3) + the attribute head; see :func:`mtl_attr_full`.

    ``bypass_conv=True`` builds Table 5's variants-block model.
    """
    return _multitask(2, **kwargs)
