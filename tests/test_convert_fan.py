"""faceaux convert-fan: face-alignment's TorchScript FAN archive → a state dict that
load_face_alignment_checkpoint reads, on archives the tests make themselves with torch.jit."""

from __future__ import annotations

import warnings

import pytest
import torch

from faceaux.cli import main
from faceaux.convert_fan import convert_fan_torchscript
from faceaux.models import FAN, load_face_alignment_checkpoint

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:torch.jit", "ignore::torch.jit.TracerWarning"
)

SMALL = {"num_features": 16, "depth": 2, "input_size": 64}


class ListFAN(FAN):
    """face-alignment's older releases: forward returns every stack's heatmaps."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.forward_features(x)
        return [features[f"heatmaps.{i + 1}"] for i in range(self.num_stacks)]


class WrongFAN(FAN):
    """A FAN's weights behind a forward that computes something else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flip(-1)


def archive(tmp_path, fan: FAN, name: str = "2DFAN4.zip"):
    """Trace a FAN into a TorchScript archive, as face-alignment ships its models (faceaux's FAN
    picks its stacks' modules by name at run time, which torch.jit.script cannot compile)."""
    torch.manual_seed(1)
    for module in fan.modules():  # non-trivial BatchNorm statistics, as in a trained FAN
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    fan = fan.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fan, torch.rand(1, 3, 64, 64), check_trace=False)
        path = tmp_path / name
        torch.jit.save(traced, str(path))
    return path


def test_traced_fan_converts_to_its_state_dict(tmp_path) -> None:
    fan = FAN(num_stacks=4, num_landmarks=68, **SMALL)
    path = archive(tmp_path, fan)
    found = convert_fan_torchscript(path, tmp_path / "2DFAN4.pth")
    assert (found.num_stacks, found.num_landmarks, found.num_features, found.depth) == (
        4,
        68,
        16,
        2,
    )
    assert found.pool == "avg"
    assert found.max_difference < 1e-5
    saved = torch.load(tmp_path / "2DFAN4.pth", weights_only=True)
    assert saved.keys() == fan.state_dict().keys()
    for key, value in fan.state_dict().items():
        assert torch.equal(saved[key], value), key
    # the file loads, and the loaded FAN computes what the original does (all 4 stacks, or the
    # paper's first 2)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        loaded = load_face_alignment_checkpoint(tmp_path / "2DFAN4.pth", num_stacks=4, **SMALL)
        torch.testing.assert_close(loaded(images), fan(images), atol=0, rtol=0)
        two = load_face_alignment_checkpoint(tmp_path / "2DFAN4.pth", num_stacks=2, **SMALL)
        torch.testing.assert_close(two(images), fan.forward_features(images)["heatmaps.2"])


def test_max_pooling_and_list_outputs_are_recognised(tmp_path) -> None:
    path = archive(tmp_path, ListFAN(num_stacks=2, num_landmarks=5, pool="max", **SMALL))
    found = convert_fan_torchscript(path)
    assert found.pool == "max"
    assert found.num_landmarks == 5


def test_a_network_that_computes_something_else_is_refused(tmp_path) -> None:
    path = archive(tmp_path, WrongFAN(num_stacks=2, num_landmarks=5, **SMALL))
    with pytest.raises(ValueError, match=r"^archive: .* does not compute the FAN"):
        convert_fan_torchscript(path, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
    assert convert_fan_torchscript(path, check=False).pool is None  # its weights are a FAN


def test_files_that_are_not_fan_archives_are_named(tmp_path) -> None:
    plain = tmp_path / "state.pth"
    torch.save(FAN(num_stacks=1, num_landmarks=5, **SMALL).state_dict(), plain)
    with pytest.raises(ValueError, match=r"^archive: could not read .* TorchScript"):
        convert_fan_torchscript(plain)
    linear = tmp_path / "linear.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(linear))
    with pytest.raises(ValueError, match=r"^archive: .* holds no face-alignment FAN"):
        convert_fan_torchscript(linear)
    with pytest.raises(FileNotFoundError):
        convert_fan_torchscript(tmp_path / "missing.zip")


def test_command_line(tmp_path, capsys) -> None:
    path = archive(tmp_path, FAN(num_stacks=2, num_landmarks=68, **SMALL))
    out = tmp_path / "fan.pth"
    assert main(["convert-fan", str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 stacks, 68 landmarks" in printed
    assert "same heatmaps as the archive" in printed
    assert f'load_face_alignment_checkpoint("{out}", num_stacks=2)' in printed
    assert load_face_alignment_checkpoint(out, num_stacks=2, **SMALL).num_landmarks == 68
    assert main(["convert-fan", str(path), str(out), "--no-check"]) == 0
    assert "not compared" in capsys.readouterr().out
