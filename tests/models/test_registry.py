"""Registry: names, close-match errors, custom registration, checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faceaux.models import create_model, list_models, load_checkpoint, register_model
from faceaux.models import registry as registry_module

BACKBONES = [
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet_nano",
    "mobilefacenet",
    "lresnet18e",
    "iresnet18_gnap",
    "mobilefacenet_gnap",
]


def test_list_models_contains_backbones() -> None:
    names = list_models()
    assert names == sorted(names)
    assert set(BACKBONES) <= set(names)


def test_list_models_pattern() -> None:
    assert list_models("iresnet1*") == ["iresnet100", "iresnet18", "iresnet18_gnap"]
    assert list_models("*gnap") == ["iresnet18_gnap", "mobilefacenet_gnap"]
    assert list_models("no_such_*") == []


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'iresnet5'.*iresnet50"):
        create_model("iresnet5")
    with pytest.raises(ValueError, match="unknown model 'zzzz'") as info:
        create_model("zzzz")
    assert "did you mean" not in str(info.value)


def test_register_custom_model_and_duplicate() -> None:
    @register_model(name="_test_tiny_linear")
    def tiny(width: int = 4) -> nn.Module:
        return nn.Linear(width, 2)

    try:
        assert "_test_tiny_linear" in list_models()
        model = create_model("_test_tiny_linear", width=7)
        assert model.in_features == 7

        def other() -> nn.Module:
            return nn.Identity()

        with pytest.raises(ValueError, match="already registered"):
            register_model(other, name="_test_tiny_linear")
    finally:
        registry_module._MODELS.pop("_test_tiny_linear")


def test_checkpoint_round_trip(tmp_path) -> None:
    source = create_model("iresnet_nano", embedding_size=32).eval()
    with torch.no_grad():  # non-default statistics so that a skipped load would show
        for module in source.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "nano.pt"
    torch.save(source.state_dict(), path)
    loaded = create_model("iresnet_nano", embedding_size=32, checkpoint_path=path).eval()
    images = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)

    # DistributedDataParallel prefix is stripped
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    again = create_model("iresnet_nano", embedding_size=32, checkpoint_path=path).eval()
    torch.testing.assert_close(again(images), source(images), rtol=0, atol=0)


def test_checkpoint_mismatch_and_bad_file(tmp_path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save(create_model("iresnet_nano", embedding_size=32).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys"):
        create_model("mobilefacenet", checkpoint_path=path)
    with pytest.raises(
        ValueError,
        match=r"shape mismatches.*fc.weight: checkpoint \(32, 6272\) vs model \(16, 6272\)",
    ):
        create_model("iresnet_nano", embedding_size=16, checkpoint_path=path)
    # non-strict loading of a partial state dict works
    state = create_model("iresnet_nano", embedding_size=32).state_dict()
    state.pop("fc.weight")
    torch.save(state, path)
    model = create_model("iresnet_nano", embedding_size=32)
    load_checkpoint(model, path, strict=False)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        load_checkpoint(model, path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        create_model("iresnet_nano", checkpoint_path=path)
