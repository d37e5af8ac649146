"""FAN and its parts: face-alignment state-dict layout, forward vs a functional reference,
integration-point features, checkpoint loading (incl. 4 → 2 stacks), freezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checks import assert_cuda_parity
from torch import nn

from faceaux.models import (
    FAN,
    ConvBlock,
    HourGlass,
    StackedHourGlass,
    load_face_alignment_checkpoint,
)

# ---------------------------------------------------------------------------------------------
# The public face-alignment FAN layout, written out from its description (not from our modules).


def _bn_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def _block_shapes(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        **_bn_shapes(f"{prefix}.bn1", cin),
        f"{prefix}.conv1.weight": (cout // 2, cin, 3, 3),
        **_bn_shapes(f"{prefix}.bn2", cout // 2),
        f"{prefix}.conv2.weight": (cout // 4, cout // 2, 3, 3),
        **_bn_shapes(f"{prefix}.bn3", cout // 4),
        f"{prefix}.conv3.weight": (cout // 4, cout // 4, 3, 3),
    }
    if cin != cout:
        shapes |= _bn_shapes(f"{prefix}.downsample.0", cin)
        shapes[f"{prefix}.downsample.2.weight"] = (cout, cin, 1, 1)
    return shapes


def official_fan_shapes(num_stacks: int, num_landmarks: int) -> dict[str, tuple[int, ...]]:
    shapes = {"conv1.weight": (64, 3, 7, 7), "conv1.bias": (64,), **_bn_shapes("bn1", 64)}
    shapes |= _block_shapes("conv2", 64, 128)
    shapes |= _block_shapes("conv3", 128, 128)
    shapes |= _block_shapes("conv4", 128, 256)
    for i in range(num_stacks):
        for level in (1, 2, 3, 4):
            for branch in ("b1", "b2", "b3"):
                shapes |= _block_shapes(f"m{i}.{branch}_{level}", 256, 256)
        shapes |= _block_shapes(f"m{i}.b2_plus_1", 256, 256)
        shapes |= _block_shapes(f"top_m_{i}", 256, 256)
        shapes |= {f"conv_last{i}.weight": (256, 256, 1, 1), f"conv_last{i}.bias": (256,)}
        shapes |= _bn_shapes(f"bn_end{i}", 256)
        shapes |= {f"l{i}.weight": (num_landmarks, 256, 1, 1), f"l{i}.bias": (num_landmarks,)}
        if i < num_stacks - 1:
            shapes |= {f"bl{i}.weight": (256, 256, 1, 1), f"bl{i}.bias": (256,)}
            shapes |= {f"al{i}.weight": (256, num_landmarks, 1, 1), f"al{i}.bias": (256,)}
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """A checkpoint in the given layout with random weights and BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith(("running_mean", ".bias")):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # BatchNorm weight
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) / fan_in**0.5
    return state


# ---------------------------------------------------------------------------------------------
# A functional reference forward pass that reads the state dict directly (face-alignment's FAN).


def ref_bn(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def ref_block(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    out1 = F.conv2d(
        F.relu(ref_bn(state, f"{prefix}.bn1", x)), state[f"{prefix}.conv1.weight"], padding=1
    )
    out2 = F.conv2d(
        F.relu(ref_bn(state, f"{prefix}.bn2", out1)), state[f"{prefix}.conv2.weight"], padding=1
    )
    out3 = F.conv2d(
        F.relu(ref_bn(state, f"{prefix}.bn3", out2)), state[f"{prefix}.conv3.weight"], padding=1
    )
    residual = x
    if f"{prefix}.downsample.2.weight" in state:
        residual = F.conv2d(
            F.relu(ref_bn(state, f"{prefix}.downsample.0", x)),
            state[f"{prefix}.downsample.2.weight"],
        )
    return torch.cat((out1, out2, out3), 1) + residual


def ref_hourglass(state: dict, prefix: str, level: int, x: torch.Tensor, pool=F.avg_pool2d):
    up1 = ref_block(state, f"{prefix}.b1_{level}", x)
    low = ref_block(state, f"{prefix}.b2_{level}", pool(x, 2, stride=2))
    if level > 1:
        low = ref_hourglass(state, prefix, level - 1, low, pool)
    else:
        low = ref_block(state, f"{prefix}.b2_plus_1", low)
    low = ref_block(state, f"{prefix}.b3_{level}", low)
    return up1 + F.interpolate(low, scale_factor=2, mode="nearest")


def ref_fan(state: dict, num_stacks: int, x: torch.Tensor) -> list[torch.Tensor]:
    x = F.conv2d(x, state["conv1.weight"], state["conv1.bias"], stride=2, padding=3)
    x = F.relu(ref_bn(state, "bn1", x))
    x = F.avg_pool2d(ref_block(state, "conv2", x), 2, stride=2)
    previous = ref_block(state, "conv4", ref_block(state, "conv3", x))
    outputs = []
    for i in range(num_stacks):
        hg = ref_hourglass(state, f"m{i}", 4, previous)
        ll = ref_block(state, f"top_m_{i}", hg)
        ll = F.conv2d(ll, state[f"conv_last{i}.weight"], state[f"conv_last{i}.bias"])
        ll = F.relu(ref_bn(state, f"bn_end{i}", ll))
        heatmaps = F.conv2d(ll, state[f"l{i}.weight"], state[f"l{i}.bias"])
        outputs.append(heatmaps)
        if i < num_stacks - 1:
            previous = (
                previous
                + F.conv2d(ll, state[f"bl{i}.weight"], state[f"bl{i}.bias"])
                + F.conv2d(heatmaps, state[f"al{i}.weight"], state[f"al{i}.bias"])
            )
    return outputs


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_4stack() -> dict[str, torch.Tensor]:
    return random_state(official_fan_shapes(4, 68), seed=4)


@pytest.fixture(scope="module")
def loaded_fan(official_4stack, tmp_path_factory) -> FAN:
    """A 2-stack FAN loaded from a 2-stack checkpoint file in the official layout."""
    two_stack_keys = official_fan_shapes(2, 68)
    path = tmp_path_factory.mktemp("ckpt") / "2dfan2.pth"
    torch.save({k: official_4stack[k] for k in two_stack_keys}, path)
    return load_face_alignment_checkpoint(path)


@pytest.fixture(scope="module")
def small_input() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))


def test_state_dict_layout_is_face_alignment_s() -> None:
    for stacks, landmarks in ((1, 68), (2, 68), (4, 98)):
        ours = {k: tuple(v.shape) for k, v in FAN(stacks, landmarks).state_dict().items()}
        assert ours == official_fan_shapes(stacks, landmarks)


def test_conv_block_matches_reference() -> None:
    for cin, cout in ((8, 16), (16, 16)):
        block = ConvBlock(cin, cout)
        state = random_state({k: tuple(v.shape) for k, v in block.state_dict().items()}, seed=cin)
        block.load_state_dict(state)
        x = torch.randn(2, cin, 5, 6)
        expected = ref_block({f"b.{k}": v for k, v in state.items()}, "b", x)
        torch.testing.assert_close(block.eval()(x), expected)
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvBlock(8, 10)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_hourglass_matches_reference(pool: str) -> None:
    hourglass = HourGlass(depth=3, num_features=16, pool=pool)
    state = random_state({k: tuple(v.shape) for k, v in hourglass.state_dict().items()}, seed=3)
    hourglass.load_state_dict(state)
    x = torch.randn(2, 16, 16, 8)
    expected = ref_hourglass(
        {f"h.{k}": v for k, v in state.items()},
        "h",
        3,
        x,
        F.avg_pool2d if pool == "avg" else F.max_pool2d,
    )
    torch.testing.assert_close(hourglass.eval()(x), expected)


def test_hourglass_features_are_the_documented_tensors() -> None:
    hourglass = HourGlass(depth=2, num_features=8).eval()
    x = torch.randn(1, 8, 8, 8)
    out, h2l, l2h = hourglass.forward_features(x)
    pool = lambda t: F.avg_pool2d(t, 2)  # noqa: E731
    assert torch.equal(h2l[0], x)
    torch.testing.assert_close(h2l[1], hourglass.b2_2(pool(x)))
    torch.testing.assert_close(h2l[2], hourglass.b2_plus_1(hourglass.b2_1(pool(h2l[1]))))
    torch.testing.assert_close(l2h[2], hourglass.b3_1(h2l[2]))
    level1 = hourglass.b1_1(h2l[1]) + F.interpolate(l2h[2], scale_factor=2)
    torch.testing.assert_close(l2h[1], hourglass.b3_2(level1))
    torch.testing.assert_close(l2h[0], out)
    torch.testing.assert_close(out, hourglass.b1_2(x) + F.interpolate(l2h[1], scale_factor=2))


def test_checkpoint_round_trip_matches_reference(loaded_fan, official_4stack, small_input) -> None:
    assert not loaded_fan.training
    expected = ref_fan(official_4stack, 2, small_input)
    with torch.no_grad():
        features = loaded_fan.forward_features(small_input)
        last = loaded_fan(small_input)
    torch.testing.assert_close(features["heatmaps.1"], expected[0])
    torch.testing.assert_close(features["heatmaps.2"], expected[1])
    assert torch.equal(last, features["heatmaps.2"])


def test_four_stack_checkpoint_loads_into_two_stacks(official_4stack, loaded_fan) -> None:
    # loaded_fan (checked against the reference above) holds the first two stacks of the same
    # weights, so equal state dicts mean the 2-stack FAN computes the 4-stack net's stacks 1-2.
    two = load_face_alignment_checkpoint(official_4stack, num_stacks=2)
    assert two.num_stacks == 2
    reference = loaded_fan.state_dict()
    assert two.state_dict().keys() == reference.keys()
    for key, value in two.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert not any(k.startswith(("m2.", "bl1.", "al1.", "l3.")) for k in reference)


def test_loader_accepts_wrappers_and_old_checkpoints(tmp_path) -> None:
    kwargs = {"num_features": 16, "depth": 2, "input_size": 16}
    source = FAN(2, 5, **kwargs)
    state = random_state({k: tuple(v.shape) for k, v in source.state_dict().items()}, seed=5)
    old_style = {f"module.{k}": v for k, v in state.items() if "num_batches_tracked" not in k}
    path = tmp_path / "wrapped.pth.tar"
    torch.save({"state_dict": old_style, "epoch": 3}, path)
    fan = load_face_alignment_checkpoint(path, **kwargs)
    assert fan.num_landmarks == 5
    for key, value in state.items():
        if "num_batches_tracked" not in key:
            assert torch.equal(fan.state_dict()[key], value), key
    same = FAN(2, 5, **kwargs).load_face_alignment_checkpoint(state)  # a dict works too
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(same.eval()(x), fan(x))


def test_loader_errors_name_the_keys(tmp_path) -> None:
    kwargs = {"num_features": 16, "depth": 2, "input_size": 16}
    state = FAN(2, 5, **kwargs).state_dict()
    broken = {k: v for k, v in state.items() if k != "m1.b3_2.conv1.weight"}
    broken["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(
        ValueError, match=r"missing keys: m1\.b3_2\.conv1\.weight.*unexpected keys: extra\.weight"
    ):
        load_face_alignment_checkpoint(path, **kwargs)
    with pytest.raises(
        ValueError,
        match=r"shape mismatches: l0\.weight: checkpoint \(5, 16, 1, 1\), model \(7, 16, 1, 1\)",
    ):
        FAN(2, 7, **kwargs).load_face_alignment_checkpoint(state)
    # A 1-stack checkpoint lacks the first stack's feedback convs and the whole second stack.
    with pytest.raises(ValueError, match=r"missing keys: bl0\.weight, .*\(\d+ in all\)"):
        load_face_alignment_checkpoint(FAN(1, 5, **kwargs).state_dict(), num_stacks=2, **kwargs)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_face_alignment_checkpoint(tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        load_face_alignment_checkpoint(tmp_path / "garbage.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"missing keys: l0\.weight"):
        load_face_alignment_checkpoint(tmp_path / "other.pth")


@pytest.mark.filterwarnings("ignore")
def test_loader_explains_torchscript_archives(tmp_path) -> None:
    kwargs = {"num_features": 16, "depth": 2, "input_size": 16}
    fan = FAN(1, 5, **kwargs).eval()
    torch.jit.save(torch.jit.trace(fan, torch.rand(1, 3, 16, 16)), tmp_path / "fan.zip")
    with pytest.raises(ValueError, match=r"TorchScript archives: convert one with"):
        load_face_alignment_checkpoint(tmp_path / "fan.zip", num_stacks=1, **kwargs)
    with pytest.raises(FileNotFoundError):
        load_face_alignment_checkpoint(tmp_path / "absent.pth")


def test_forward_features_at_native_resolution(loaded_fan) -> None:
    fan = loaded_fan
    with torch.no_grad():
        features = fan.forward_features(torch.rand(1, 3, 256, 256))
    assert sorted(features) == sorted(fan.feature_keys())
    for s in (1, 2):
        assert features[f"heatmaps.{s}"].shape == (1, 68, 64, 64)
        for r in (64, 32, 16, 8, 4):
            assert features[f"h2l.{s}.{r}"].shape == (1, 256, r, r)
            assert features[f"l2h.{s}.{r}"].shape == (1, 256, r, r)


def test_forward_features_are_the_documented_tensors(loaded_fan, small_input) -> None:
    fan = loaded_fan
    with torch.no_grad():
        features = fan.forward_features(small_input)
        stem = F.avg_pool2d(fan.conv2(F.relu(fan.bn1(fan.conv1(small_input)))), 2)
        stem = fan.conv4(fan.conv3(stem))
        torch.testing.assert_close(features["h2l.1.64"], stem)
        torch.testing.assert_close(features["l2h.1.64"], fan.m0(stem))
        torch.testing.assert_close(features["h2l.1.32"], fan.m0.b2_4(F.avg_pool2d(stem, 2)))
        ll = F.relu(fan.bn_end0(fan.conv_last0(fan.top_m_0(features["l2h.1.64"]))))
        second = stem + fan.bl0(ll) + fan.al0(features["heatmaps.1"])
        torch.testing.assert_close(features["h2l.2.64"], second)
        torch.testing.assert_close(features["l2h.2.4"], fan.m1.b3_1(features["h2l.2.4"]))


def test_input_checks() -> None:
    fan = FAN(1, 5, num_features=16, depth=2, input_size=16)
    with pytest.raises(ValueError, match=r"divisible by 16.*\(1, 3, 20, 16\)"):
        fan(torch.rand(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"x.*size 3 at dim 1"):
        fan(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="input_size"):
        FAN(1, 5, depth=4, input_size=100)
    with pytest.raises(ValueError, match="pool"):
        HourGlass(pool="min")


def test_freeze_keeps_eval_mode_under_a_training_parent() -> None:
    fan = FAN(1, 5, num_features=16, depth=1, input_size=8).freeze()
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), fan)
    parent.train()
    assert parent.training
    assert parent[0].training
    assert not fan.training
    assert not any(m.training for m in fan.modules())
    assert not any(p.requires_grad for p in fan.parameters())
    fan.unfreeze()
    parent.train()
    assert fan.training
    assert all(p.requires_grad for p in fan.parameters())


def test_parsing_network_configuration() -> None:
    """The 11-class, 2-stack parsing net at 128×128 that the reference models build."""
    net = StackedHourGlass(num_stacks=2, out_channels=11, input_size=128).eval()
    with torch.no_grad():
        features = net.forward_features(torch.rand(1, 3, 128, 128))
    assert features["heatmaps.2"].shape == (1, 11, 32, 32)
    assert features["h2l.2.32"].shape == (1, 256, 32, 32)
    assert features["h2l.2.2"].shape == (1, 256, 2, 2)


@pytest.mark.cuda
def test_cuda_parity() -> None:
    fan = FAN(2, 5, num_features=16, depth=2, input_size=16).eval()
    assert_cuda_parity(fan, torch.rand(2, 3, 32, 32))
