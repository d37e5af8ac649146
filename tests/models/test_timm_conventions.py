"""timm's conventions where faceaux keeps them: create_model's pretrained / num_classes /
features_only / out_indices / checkpoint_path, list_models(pretrained=), pretrained_cfg,
reset_classifier, set_grad_checkpointing (and the training loop's use of it)."""

from __future__ import annotations

import pytest
import torch

from faceaux.models import create_model, list_models
from faceaux.models.registry import StageFeatures
from faceaux.train.loop import enable_gradient_checkpointing


def test_pretrained_is_refused_without_a_download() -> None:
    assert create_model("iresnet_nano", False).pretrained_cfg["name"] == "iresnet_nano"
    with pytest.raises(ValueError, match=r"^pretrained: faceaux never downloads"):
        create_model("iresnet_nano", pretrained=True)
    assert list_models(pretrained=True) == []
    assert list_models("*nano", pretrained=False) == ["iresnet_nano"]


def test_num_classes_zero_is_the_embedding_model() -> None:
    torch.manual_seed(0)
    plain = create_model("iresnet_nano", embedding_size=32).eval()
    torch.manual_seed(0)
    zero = create_model("iresnet_nano", num_classes=0, embedding_size=32).eval()
    images = torch.rand(2, 3, 112, 112)
    torch.testing.assert_close(zero(images), plain(images))
    with pytest.raises(ValueError, match=r"^num_classes: .*ArcFace\(embedding_size, 10\)"):
        create_model("iresnet_nano", num_classes=10)
    zero.reset_classifier(0)
    torch.testing.assert_close(zero(images), plain(images))
    with pytest.raises(ValueError, match=r"^num_classes: "):
        zero.reset_classifier(5)


@pytest.mark.parametrize("name", ["iresnet_nano", "mobilefacenet"])
def test_features_only_returns_the_stage_maps(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    torch.manual_seed(0)
    features = create_model(name, features_only=True).eval()
    assert isinstance(features, StageFeatures)
    images = torch.rand(2, 3, 112, 112)
    maps = features(images)
    expected = model.forward_intermediates(images, intermediates_only=True)
    assert len(maps) == len(model.feature_info) == len(expected)
    for got, want, info in zip(maps, expected, model.feature_info, strict=True):
        torch.testing.assert_close(got, want)
        assert got.shape[1] == info["num_chs"]
        assert got.shape[-1] == 112 // info["reduction"]
    assert features.feature_info.channels() == [f["num_chs"] for f in model.feature_info]
    assert features.feature_info.reduction() == [f["reduction"] for f in model.feature_info]
    assert features.feature_info.module_name() == [f["module"] for f in model.feature_info]
    assert features.pretrained_cfg == model.pretrained_cfg


def test_out_indices_and_checkpoint(tmp_path) -> None:
    torch.manual_seed(3)
    source = create_model("iresnet_nano").eval()
    torch.save(source.state_dict(), tmp_path / "nano.pth")
    features = create_model(
        "iresnet_nano",
        features_only=True,
        out_indices=(0, -1),
        checkpoint_path=tmp_path / "nano.pth",
    ).eval()
    images = torch.rand(2, 3, 112, 112)
    first, last = features(images)
    want = source.forward_intermediates(images, indices=[0, 3], intermediates_only=True)
    torch.testing.assert_close(first, want[0])
    torch.testing.assert_close(last, want[1])
    assert features.feature_info.reduction() == [2, 16]
    assert len(create_model("iresnet_nano", features_only=True, out_indices=2)(images)) == 2
    with pytest.raises(ValueError, match=r"^indices: "):
        create_model("iresnet_nano", features_only=True, out_indices=(7,))
    with pytest.raises(ValueError, match=r"^out_indices: "):
        create_model("iresnet_nano", out_indices=(0,))


def test_features_only_needs_the_stage_contract() -> None:
    with pytest.raises(ValueError, match=r"^features_only: FaceRecognizer"):
        create_model("stnface_iresnet34", features_only=True, widths=(8, 16, 32, 64))


def _forward_calls(model, images, *, train: bool, grad: bool) -> tuple[int, torch.Tensor]:
    calls = []
    block = model.get_submodule(model.feature_info[1]["blocks"][0])
    # a hook inside the block: the recomputation runs the block's forward again, though PyTorch
    # does not fire the hooks of the checkpointed module itself then
    conv = next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda *_: calls.append(1))
    model.train(train)
    with torch.set_grad_enabled(grad):
        out = model(images)
        if grad:
            out.square().sum().backward()
    handle.remove()
    return len(calls), out


def test_grad_checkpointing_recomputes_each_block_in_training() -> None:
    torch.manual_seed(0)
    plain = create_model("iresnet_nano", embedding_size=16)
    checkpointed = create_model("iresnet_nano", embedding_size=16)
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_gradient_checkpointing(checkpointed) == -1  # the loop uses the model's own
    assert checkpointed.grad_checkpointing
    images = torch.rand(4, 3, 112, 112)
    calls_plain, out_plain = _forward_calls(plain, images, train=True, grad=True)
    calls_ckpt, out_ckpt = _forward_calls(checkpointed, images, train=True, grad=True)
    assert (calls_plain, calls_ckpt) == (1, 2)  # run again in the backward pass
    torch.testing.assert_close(out_ckpt, out_plain)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    assert _forward_calls(checkpointed, images, train=False, grad=False)[0] == 1
    assert _forward_calls(checkpointed, images, train=True, grad=False)[0] == 1
    checkpointed.set_grad_checkpointing(False)
    assert _forward_calls(checkpointed, images, train=True, grad=True)[0] == 1
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
