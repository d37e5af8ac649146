"""FaceRecognizer: every layer at once on a faceaux backbone, equivalences, re-entrancy, export.

The same composition on timm's and torchvision's ResNet-18 is in test_foreign_backbones.py.
"""

from __future__ import annotations

import copy
import io
import json
import pathlib
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from checks import assert_cuda_parity
from model_configs import small_fan, small_kwargs
from recognizer_cases import check_gradients, compose_everything, train_steps
from torch import nn

import faceaux
from faceaux import (
    AttributeHead,
    FaceRecognizer,
    HeatmapStacker,
    PartMaskPooling,
    SpatialTransformerAlign,
    StructureCorrelation,
)
from faceaux.conventions import FSENET_PARTS, INTERNAL_51
from faceaux.models import create_model, load_checkpoint
from faceaux.models.iresnet import IResNet

NARROW = (8, 16, 32, 64)


def nano(**kwargs) -> IResNet:
    torch.manual_seed(0)
    return IResNet((1, 1, 1, 1), widths=NARROW, embedding_size=32, **kwargs)


def settled(model: nn.Module, size: int = 120) -> nn.Module:
    """Eval mode after one training batch, so BatchNorm statistics are O(1)."""
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, size, size) * 2 - 1)
    return model.eval()


@pytest.fixture(scope="module")
def everything() -> FaceRecognizer:
    return settled(compose_everything(nano(pooling="gnap")))


def test_everything_at_once_trains_on_iresnet() -> None:
    for connectivity in ("1-1", "1-many"):
        model = compose_everything(nano(pooling="gnap"), connectivity)
        check_gradients(model)
        losses = train_steps(model)
        assert all(torch.isfinite(torch.tensor(losses)))
    # 1-many: one layer per block, each with its own learnable γ
    assert len(model.integration) == 4
    assert all(layer.learnable_gamma for layer in model.integration.values())


def test_everything_at_once_outputs(everything: FaceRecognizer) -> None:
    with torch.no_grad():
        out = everything.forward_aux(torch.rand(2, 3, 120, 120) * 2 - 1)
    k = len(FSENET_PARTS)
    assert out["aligned"].shape == (2, 3, 112, 112)
    assert out["matrix"].shape == (2, 3, 3)
    assert out["heatmaps"].shape == (2, 68, 16, 16)
    assert out["masks"].shape == (2, 11, 64, 64)
    assert out["parts"].shape == (2, k, 16)  # the reduction-4 stage (layer2) of the nano net
    assert out["local"].shape == (2, k * (16 + 2 * (k - 1)))
    assert out["global"].shape == (2, 32)
    assert out["embedding"].shape == (2, everything.embedding_size)
    assert out["attributes"].shape == (2, 7)
    for value in out.values():
        assert torch.isfinite(value).all()


def test_all_parts_off_is_the_backbone() -> None:
    backbone = settled(nano(), 112)
    model = FaceRecognizer(backbone).eval()
    images = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(images), backbone(images))
        assert torch.equal(model.forward_features(images), backbone.forward_features(images))


def test_gamma_zero_is_the_backbone() -> None:
    """FAN integration with γ = 0 and heatmap stacking (zero filters): exactly the backbone."""
    backbone = settled(nano(), 112)
    reference = copy.deepcopy(backbone)
    model = FaceRecognizer(
        backbone,
        heatmaps=HeatmapStacker(INTERNAL_51),
        fan=small_fan(),
        integration={"layer1": "h2l.2.16", "layer2": "h2l.2.8", "layer3": "h2l.2.4"},
        gamma=0.0,
        fan_input_size=64,
    ).eval()
    assert model.backbone.conv1.in_channels == 3 + 51
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=0)
        model.integration["layer2"].gamma = 1.0
        assert not torch.allclose(model(images), reference(images))


def test_side_inputs_replace_the_side_networks() -> None:
    backbone = nano()
    model = FaceRecognizer(
        backbone,
        heatmaps=HeatmapStacker(INTERNAL_51),
        parts=PartMaskPooling(parts=FSENET_PARTS),
        structure=StructureCorrelation(),
    ).eval()
    images = torch.rand(2, 3, 112, 112)
    landmarks = torch.rand(2, 68, 2) * 100 + 6
    labels = torch.randint(0, 11, (2, 112, 112))
    with torch.no_grad():
        from_landmarks = model.forward_aux(images, landmarks=landmarks, masks=labels)
        rendered = faceaux.render_heatmaps(landmarks, (112, 112), sigma=2.0)
        one_hot = F.one_hot(labels, 11).permute(0, 3, 1, 2).float()
        given = model.forward_aux(images, heatmaps=rendered, masks=one_hot)
    torch.testing.assert_close(from_landmarks["embedding"], given["embedding"])
    with pytest.raises(ValueError, match="heatmaps=, landmarks= or a fan"):
        model(images, masks=labels)
    with pytest.raises(ValueError, match="masks= or a parser"):
        model(images, landmarks=landmarks)


def test_side_inputs_follow_the_alignment() -> None:
    """Heatmaps given in input coordinates are warped with the image."""
    align = SpatialTransformerAlign("affine", output_size=(112, 112))
    with torch.no_grad():
        align.reset_transform(torch.tensor([[0.8, 0.1, 0.05], [-0.1, 0.8, 0.0], [0.0, 0.0, 1.0]]))
    model = FaceRecognizer(nano(), align=align, heatmaps=HeatmapStacker((0,))).eval()
    images = torch.rand(1, 3, 128, 128)
    point = torch.tensor([[[70.0, 50.0]]])
    with torch.no_grad():
        out = model.forward_aux(images, landmarks=point)
    peak = out["heatmaps"][0, 0].argmax()
    y, x = divmod(int(peak), 112)
    # the aligned frame sees the point where the warp sends it (input → output pixels)
    forward = faceaux.to_pixel_matrix(out["matrix"], (128, 128), (112, 112))[0]
    target = forward @ torch.tensor([70.0, 50.0, 1.0])
    assert torch.allclose(target[:2] / target[2], torch.tensor([x, y]).float(), atol=1.0)


def test_deepcopy_threads_and_state_dict_round_trip(everything: FaceRecognizer) -> None:
    images = [torch.rand(2, 3, 120, 120) * 2 - 1 for _ in range(4)]
    with torch.no_grad():
        expected = [everything(x) for x in images]
        twin = copy.deepcopy(everything)
        for x, y in zip(images, expected, strict=True):
            torch.testing.assert_close(twin(x), y)
        results: dict[int, torch.Tensor] = {}

        def run(index: int) -> None:
            with torch.no_grad():
                for _ in range(3):
                    results[index] = (everything if index % 2 else twin)(images[index])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for index, y in enumerate(expected):
        torch.testing.assert_close(results[index], y)
    fresh = compose_everything(nano(pooling="gnap"))
    fresh.load_state_dict(everything.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images[0]), expected[0])


def test_compile_and_export(everything: FaceRecognizer) -> None:
    x = torch.rand(2, 3, 120, 120) * 2 - 1
    with torch.no_grad():
        expected = everything(x)
        torch._dynamo.reset()
        compiled = torch.compile(everything, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)
        program = torch.export.export(everything, (x,))
        torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-5)


def test_onnx_export_without_parts() -> None:
    """ONNX (TorchScript exporter): STN + stacking + FAN integration + GNAP + attributes.

    Part pooling is left out: its 64 → 28 adaptive max-pool of the masks has no ONNX form
    (see test_export.py).
    """
    ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: faceaux[onnx]")
    pytest.importorskip("onnx", reason="needs the onnx extra: faceaux[onnx]")
    model = FaceRecognizer(
        nano(pooling="gnap"),
        align=SpatialTransformerAlign("projective", loc_input_size=(32, 32)),
        heatmaps=HeatmapStacker(INTERNAL_51, normalize=None),
        fan=small_fan(),
        integration={"layer1": "h2l.2.16", "layer4": "h2l.2.2"},
        fan_input_size=64,
        attributes=AttributeHead(32, 7, 16),
    )
    model = settled(model)
    x = torch.rand(2, 3, 120, 120) * 2 - 1
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buffer,
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        images = torch.rand(batch, 3, 120, 120) * 2 - 1
        with torch.no_grad():
            expected = model(images)
        got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


def test_configuration_errors() -> None:
    backbone = nano()
    with pytest.raises(TypeError, match="stage contract"):
        FaceRecognizer(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="not a backbone stage"):
        FaceRecognizer(backbone, fan=small_fan(), integration={"layer9": "h2l.2.16"})
    with pytest.raises(ValueError, match="no fan= network"):
        FaceRecognizer(backbone, integration={"layer1": "h2l.2.16"})
    with pytest.raises(ValueError, match="unknown FAN feature keys"):
        FaceRecognizer(backbone, fan=small_fan(), integration={"layer1": "h2l.3.16"})
    with pytest.raises(ValueError, match="mask_activation=None"):
        FaceRecognizer(backbone, parts=PartMaskPooling(mask_activation="softmax"))
    with pytest.raises(ValueError, match="structure"):
        FaceRecognizer(backbone, structure=StructureCorrelation())
    with pytest.raises(TypeError, match="align"):
        FaceRecognizer(backbone, align=nn.Identity())
    with pytest.raises(ValueError, match="part_stage"):
        FaceRecognizer(backbone, parts=PartMaskPooling(), part_stage="layer7")
    with pytest.raises(ValueError, match="first convolution takes 5"):
        FaceRecognizer(nano(in_channels=5), heatmaps=HeatmapStacker(INTERNAL_51))
    model = FaceRecognizer(backbone)
    with pytest.raises(ValueError, match=r"images: .*size 3 at dim 1"):
        model(torch.rand(2, 4, 112, 112))


def test_no_forward_hooks_outside_the_adapter() -> None:
    package = pathlib.Path(faceaux.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "adapter.py"
        and any(
            word in path.read_text()
            for word in ("register_forward_hook(", "register_forward_pre_hook(")
        )
    ]
    assert offenders == []


def test_legacy_state_dicts_load(tmp_path) -> None:
    """State dicts of faceaux 0.1's FANFace / FSENet / STNFace / MultiTaskFaceNet load.

    ``legacy_state_keys.json`` lists every key and shape of those models' state dicts at the
    small widths (saved from faceaux 0.1). Tensors of those shapes load with ``strict=True``
    through ``load_checkpoint`` (which renames the keys) and land on the renamed keys.
    """
    legacy = json.loads((pathlib.Path(__file__).parent / "legacy_state_keys.json").read_text())
    for name, shapes in legacy.items():
        kwargs = small_kwargs(name)
        if name.startswith("mtl"):
            kwargs["embedding_size"] = 64
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = create_model(name, **kwargs)
        generator = torch.Generator().manual_seed(0)
        state = {
            k: (
                torch.randint(0, 5, v, generator=generator)
                if k.endswith("num_batches_tracked")
                else torch.randn(v, generator=generator)
            )
            for k, v in shapes.items()
        }
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        load_checkpoint(model, path)
        renamed = model.convert_state_dict(state)
        own = model.state_dict()
        assert set(renamed) == set(own), name
        for key, value in renamed.items():
            assert torch.equal(own[key].to(value.dtype), value), (name, key)


@pytest.mark.cuda
def test_recognizer_cuda_parity() -> None:
    assert_cuda_parity(compose_everything(nano(pooling="gnap")).train(), torch.rand(4, 3, 120, 120))
