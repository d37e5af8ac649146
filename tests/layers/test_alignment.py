"""SpatialTransformerAlign: exact identity initialisation, learning a similarity back, the
localisation network of §3.2, param_groups, theta_regularization, compile, CUDA, ONNX."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import warnings
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from alignment_images import smooth_shapes
from checks import assert_compiles, assert_cuda_parity
from torch import nn

from faceaux.layers.alignment import (
    LOCALIZATION_SETTINGS,
    SpatialTransformerAlign,
    _similarity_frame,
    param_groups,
    theta_regularization,
)
from faceaux.layers.geometry import (
    ARCFACE_TEMPLATE_112,
    from_pixel_matrix,
    similarity_from_landmarks,
    to_pixel_matrix,
    transform_matrix,
    warp,
)

LEARNED = ["translation", "similarity", "affine", "projective"]


def small_stn(transform: str, **kwargs) -> SpatialTransformerAlign:
    options = {
        "output_size": (20, 18),
        "loc_input_size": (16, 16),
        "loc_channels": (4, 8),
        "loc_hidden": 16,
    }
    options.update(kwargs)
    return SpatialTransformerAlign(transform, **options)


def randomise_regressor(stn: SpatialTransformerAlign, scale: float = 0.05) -> None:
    with torch.no_grad():
        stn.regressor.weight.normal_(0.0, scale)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny CPU training runs several times faster on one thread than on two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- architecture and initialisation ------------------------------------------------------------


def test_localisation_network_is_setting_3() -> None:
    """Table 2's setting 3 (the paper's choice): three conv blocks, then the regressor itself
    as the one FC (§3.1: the FC layer is connected before the parameter layer)."""
    stn = SpatialTransformerAlign("projective")  # the defaults: 64×64 input, three conv blocks
    layers = list(stn.localization)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (3, 3)),
        (32, 64, (3, 3)),
        (64, 128, (3, 3)),
    ]
    kinds = [type(m) for m in layers[:12]]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d] * 3
    assert all(m.kernel_size == 2 for m in layers if isinstance(m, nn.MaxPool2d))
    assert not [m for m in layers if isinstance(m, nn.Linear)]  # no hidden FC
    assert (stn.regressor.in_features, stn.regressor.out_features) == (128 * 8 * 8, 8)
    assert stn.localization(torch.rand(2, 3, 64, 64)).shape == (2, 128 * 8 * 8)
    assert sum(p.numel() for p in stn.parameters()) == 159_016
    hidden = SpatialTransformerAlign("affine", loc_hidden=128)
    linears = [m for m in hidden.localization if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128 * 8 * 8, 128)]
    assert (hidden.regressor.in_features, hidden.regressor.out_features) == (128, 6)


@pytest.mark.parametrize(
    ("setting", "convs", "fcs", "count"),
    [(1, 1, 1, 263_080), (2, 2, 1, 150_568), (3, 3, 1, 159_016), (4, 2, 2, 2_117_800),
     (5, 3, 2, 1_143_208)],
)  # fmt: skip
def test_table_2_settings(setting: int, convs: int, fcs: int, count: int) -> None:
    """Each setting of Table 2 by name: its conv blocks and FC layers (regressor included)."""
    with torch.device("meta"):
        stn = SpatialTransformerAlign("projective", **LOCALIZATION_SETTINGS[setting])
    layers = [*stn.localization, stn.regressor]
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == convs
    assert sum(isinstance(m, nn.Linear) for m in layers) == fcs
    assert sum(p.numel() for p in stn.parameters()) == count
    assert LOCALIZATION_SETTINGS[3] == {"loc_channels": (32, 64, 128), "loc_hidden": None}
    with pytest.raises(TypeError):
        LOCALIZATION_SETTINGS[3]["loc_hidden"] = 1  # read-only


@pytest.mark.parametrize("transform", LEARNED)
def test_initialisation_is_exactly_the_identity(transform: str) -> None:
    stn = SpatialTransformerAlign(transform)
    assert stn.regressor.weight.abs().max() == 0
    identity = transform_matrix(stn.regressor.bias[None].detach(), transform)
    assert torch.equal(identity[0], torch.eye(3))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("transform", ["identity", *LEARNED])
def test_identity_init_output_equals_plain_resize(
    transform: str, train: bool, dtype: torch.dtype
) -> None:
    """Input and output of one aspect ratio (40×35 → 24×21): every kind starts as the resize."""
    stn = small_stn(transform, output_size=(24, 21)).to(dtype).train(train)
    x = smooth_shapes(3, 3, 40, 35, seed=1, dtype=dtype)
    aligned, matrix = stn(x, return_matrix=True)
    resized = F.interpolate(x, size=(24, 21), mode="bilinear", align_corners=False)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(aligned, resized, atol=atol, rtol=0)
    assert torch.equal(matrix, torch.eye(3, dtype=dtype).expand(3, 3, 3))
    # upsampling matches F.interpolate's edge clamping with border padding, both conventions
    # (same aspect ratio of the half-extents: H/h = W/w, or (H−1)/(h−1) = (W−1)/(w−1))
    for align_corners, small, large in ((False, (40, 35), (80, 70)), (True, (41, 36), (81, 71))):
        up = (
            small_stn(
                transform, output_size=large, padding_mode="border", align_corners=align_corners
            )
            .to(dtype)
            .train(train)
        )
        x = smooth_shapes(3, 3, *small, seed=1, dtype=dtype)
        expected = F.interpolate(x, size=large, mode="bilinear", align_corners=align_corners)
        torch.testing.assert_close(up(x), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("transform", ["similarity", "translation"])
@pytest.mark.parametrize(("in_size", "out_size"), [((128, 96), (112, 96)), ((90, 120), (112, 112))])
def test_similarity_identity_is_the_centred_isotropic_fit(
    transform: str, in_size: tuple, out_size: tuple, align_corners: bool
) -> None:
    """Other aspect ratios: the identity parameters are a pixel similarity (one scale, no
    rotation) mapping centre to centre, the largest such region that fits in the input."""
    stn = small_stn(transform, output_size=out_size, align_corners=align_corners).eval()
    matrix = stn.predict_matrix(torch.rand(1, 3, *in_size))
    pixel = to_pixel_matrix(matrix.double(), in_size, out_size, align_corners)[0]  # in → out
    scale = pixel[0, 0]
    torch.testing.assert_close(pixel[1, 1], scale)
    assert pixel[0, 1] == pixel[1, 0] == 0
    centre_in = torch.tensor([(in_size[1] - 1) / 2, (in_size[0] - 1) / 2, 1.0], dtype=torch.float64)
    centre_out = torch.tensor([(out_size[1] - 1) / 2, (out_size[0] - 1) / 2], dtype=torch.float64)
    torch.testing.assert_close((pixel @ centre_in)[:2], centre_out)
    # out → in is the largest isotropic scale keeping the output's extent inside the input's
    # (extents: n pixels, or n − 1 between the outer centres with align_corners=True)
    pairs = zip(out_size, in_size, strict=True)
    assert scale.item() == pytest.approx(
        max((o - align_corners) / (i - align_corners) for o, i in pairs)
    )


def test_identity_transform_has_no_localisation_network() -> None:
    stn = SpatialTransformerAlign("identity", output_size=(16, 16))
    assert stn.localization is None
    assert stn.regressor is None
    assert list(stn.parameters()) == []
    with pytest.raises(ValueError, match="no localisation network"):
        stn.reset_transform()


@pytest.mark.parametrize("transform", LEARNED)
def test_forward_is_warp_of_the_predicted_matrix(transform: str) -> None:
    stn = small_stn(transform, padding_mode="border").eval()
    randomise_regressor(stn)
    x = smooth_shapes(3, 3, 30, 26, seed=2)
    aligned, matrix = stn(x, return_matrix=True)
    assert matrix.shape == (3, 3, 3)
    assert not torch.allclose(matrix, torch.eye(3).expand(3, 3, 3), atol=1e-3)  # really warps
    torch.testing.assert_close(aligned, warp(x, matrix, (20, 18), padding_mode="border"))
    torch.testing.assert_close(stn(x), aligned)
    # the localisation network sees the input resized to loc_input_size (64×64 in the paper)
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    params = stn.regressor(stn.localization(small))
    expected = transform_matrix(params, transform)
    if transform in ("similarity", "translation"):  # parameters of a pixel-frame similarity
        expected = expected * _similarity_frame((30, 26), (20, 18)).float()
    torch.testing.assert_close(matrix, expected)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("transform", ["similarity", "translation"])
def test_similarity_is_a_pixel_similarity_for_any_aspect_ratio(
    transform: str, align_corners: bool
) -> None:
    """Any predicted similarity (translation) is one in pixels: input pixel → output pixel is
    [[a, −b, tx], [b, a, ty]] ([[s, 0, tx], [0, s, ty]]) on non-square inputs and outputs."""
    stn = small_stn(transform, output_size=(20, 14), align_corners=align_corners).eval()
    randomise_regressor(stn, scale=0.2)
    x = smooth_shapes(4, 3, 30, 41, seed=2)
    matrix = stn.predict_matrix(x).double()
    pixel = to_pixel_matrix(matrix, (30, 41), (20, 14), align_corners)
    torch.testing.assert_close(pixel[:, 0, 0], pixel[:, 1, 1])
    torch.testing.assert_close(pixel[:, 0, 1], -pixel[:, 1, 0])
    assert pixel[:, 0, 1].abs().max() > 1e-3 if transform == "similarity" else True
    if transform == "translation":
        torch.testing.assert_close(pixel[:, 0, 1], torch.zeros(4, dtype=torch.float64))
        torch.testing.assert_close(pixel[:, 0, 0], pixel[:1, 0, 0].expand(4))  # fixed scale


@pytest.mark.parametrize("angle", [0.0, 8.0, -15.0])
def test_five_point_similarity_start_on_a_non_square_crop(angle: float) -> None:
    """The recipe of notebook 03 on a 128×96 crop and a 112×96 template: the module starts
    exactly at the classical 5-point alignment (it used to start up to 5.68 px off)."""
    template = ARCFACE_TEMPLATE_112 - torch.tensor([8.0, 0.0])  # the 112×96 template
    rad = torch.tensor(angle).deg2rad()
    cos, sin = rad.cos(), rad.sin()
    rotation = torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])
    landmarks = (template - template.mean(0)) @ rotation.T * 1.1 + torch.tensor([47.0, 63.0])
    to_template = similarity_from_landmarks(landmarks[None], template)
    start = from_pixel_matrix(to_template, (128, 96), (112, 96))
    stn = SpatialTransformerAlign("similarity", output_size=(112, 96)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact pixel similarity: nothing is projected away
        stn.reset_transform(start[0], in_size=(128, 96))
    matrix = stn.predict_matrix(torch.rand(2, 3, 128, 96))
    pixel = to_pixel_matrix(matrix.double(), (128, 96), (112, 96))[0]
    moved = torch.cat([landmarks, torch.ones(5, 1)], dim=1).double() @ pixel.T
    assert (moved[:, :2] - template).norm(dim=1).max() < 0.5
    # without in_size the module assumes a 112×96-shaped input and says it projected
    with pytest.warns(UserWarning, match="pass in_size"):
        SpatialTransformerAlign("similarity", output_size=(112, 96)).reset_transform(start[0])


def test_reset_transform_starts_from_a_given_matrix() -> None:
    stn = small_stn("similarity").eval()
    start = transform_matrix(torch.tensor([[0.8, 0.2, 0.1, -0.05]]), "similarity")
    start = start * _similarity_frame((30, 26), (20, 18)).float()  # a pixel similarity
    stn.reset_transform(start[0], in_size=(30, 26))
    x = smooth_shapes(2, 3, 30, 26, seed=3)
    aligned, matrix = stn(x, return_matrix=True)
    torch.testing.assert_close(matrix, start.expand(2, 3, 3))
    torch.testing.assert_close(aligned, warp(x, start.expand(2, 3, 3), (20, 18)))
    projective = small_stn("projective")
    projective.reset_transform(start)
    torch.testing.assert_close(projective.predict_matrix(x), start.expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"matrix: expected shape \(3, 3\) or \(1, 3, 3\)"):
        stn.reset_transform(torch.eye(2))


def test_bad_configuration_and_input_raise_value_error() -> None:
    with pytest.raises(ValueError, match="transform: expected one of"):
        SpatialTransformerAlign("perspective")
    with pytest.raises(ValueError, match="output_size: expected two positive ints"):
        SpatialTransformerAlign(output_size=(112,))
    with pytest.raises(ValueError, match=r"loc_input_size: expected each side ≥ 8"):
        SpatialTransformerAlign(loc_input_size=(4, 64))
    with pytest.raises(ValueError, match="loc_hidden: expected a positive int or None"):
        SpatialTransformerAlign(loc_hidden=0)
    with pytest.raises(ValueError, match="loc_channels: expected positive ints"):
        SpatialTransformerAlign(loc_channels=())
    stn = small_stn("affine")
    with pytest.raises(ValueError, match=r"x: expected shape \(B, C, H, W\) with size 3 at dim 1"):
        stn(torch.rand(2, 1, 20, 20))
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor"):
        stn(torch.rand(3, 20, 20))
    with pytest.raises(ValueError, match="padding_mode: expected one of"):
        small_stn("affine", padding_mode="wrap")
    with pytest.raises(ValueError, match="mode: expected one of"):
        small_stn("affine", mode="area")


# --- learning: gradients reach every parameter and recover a warp -------------------------------


@pytest.mark.parametrize("transform", ["similarity", "affine", "projective"])
def test_learns_to_undo_a_fixed_random_similarity(transform: str) -> None:
    """Images warped by one fixed random similarity T; the STN, trained to map them back onto
    the originals, must predict T⁻¹ (checked on the central region, where T⁻¹ is observable)."""
    generator = torch.Generator().manual_seed(0)
    low, high = torch.tensor([0.8, -0.4, -0.1, -0.1]), torch.tensor([0.9, 0.4, 0.1, 0.1])
    true_params = low + (high - low) * torch.rand(4, generator=generator)
    true = transform_matrix(true_params[None], "similarity")
    originals = smooth_shapes(64, 3, 32, 32, seed=5)
    warped = warp(originals, true.expand(64, 3, 3))
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1.0

    torch.manual_seed(0)
    stn = SpatialTransformerAlign(
        transform,
        output_size=(32, 32),
        loc_input_size=(16, 16),
        loc_channels=(4, 8),
        loc_hidden=16,
    )
    initial = copy.deepcopy(stn.state_dict())
    optimizer = torch.optim.Adam(stn.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[200], gamma=0.1)
    losses = []
    with one_thread():
        for _ in range(300):
            index = torch.randint(0, 64, (16,))
            aligned = stn(warped[index])
            loss = ((aligned - originals[index]).square() * mask).sum() / (16 * 3 * mask.sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < 0.05 * first
    stn.eval()
    with torch.no_grad():
        _, matrix = stn(warped[:16], return_matrix=True)
    expected = torch.linalg.inv(true)[0]
    assert (matrix - expected).abs().max() < 0.05
    # every parameter was reached by the gradient and moved away from its initial value
    for name, value in stn.named_parameters():
        assert not torch.equal(value.detach(), initial[name]), name


# --- param_groups and theta_regularization ------------------------------------------------------


class Recognizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.align = small_stn("projective", output_size=(16, 16))
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 8))
        self.shared_head = self.backbone[2]  # a shared module: its parameters appear once


def test_param_groups_split_localisation_from_recognizer() -> None:
    model = Recognizer()
    groups = param_groups(model, lr=0.1, loc_lr_scale=0.05)
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(0.005)]
    rest, loc = ({id(p) for p in g["params"]} for g in groups)
    assert loc == {id(p) for p in model.align.parameters()}
    assert rest == {id(p) for p in model.backbone.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # accepted as it is
    assert len(optimizer.param_groups) == 2
    assert param_groups(model, lr=1.0)[1]["lr"] == pytest.approx(0.01)  # default: 100× smaller


def test_param_groups_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="model: expected a module containing"):
        param_groups(nn.Linear(2, 2), lr=0.1)
    with pytest.raises(ValueError, match="loc_lr_scale: expected a value in"):
        param_groups(Recognizer(), lr=0.1, loc_lr_scale=0.0)
    with pytest.raises(ValueError, match="lr: expected a positive learning rate"):
        param_groups(Recognizer(), lr=-1.0)


def test_theta_regularization_values_and_gradient() -> None:
    matrix = torch.randn(4, 3, 3, dtype=torch.float64)
    expected = [
        sum((matrix[b, i, j].item() - float(i == j)) ** 2 for i in range(3) for j in range(3))
        for b in range(4)
    ]
    none = theta_regularization(matrix, reduction="none")
    torch.testing.assert_close(none, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(theta_regularization(matrix), none.mean())
    torch.testing.assert_close(theta_regularization(matrix, reduction="sum"), none.sum())
    leaf = matrix.clone().requires_grad_(True)
    theta_regularization(leaf, reduction="sum").backward()
    torch.testing.assert_close(leaf.grad, 2 * (matrix - torch.eye(3, dtype=torch.float64)))
    assert theta_regularization(torch.eye(3).expand(2, 3, 3)) == 0
    with pytest.raises(ValueError, match="reduction: expected"):
        theta_regularization(matrix, reduction="max")


# --- degenerate predictions, precision ----------------------------------------------------------


def test_nan_localisation_output_gives_finite_output_and_gradients() -> None:
    stn = small_stn("projective")
    x = smooth_shapes(2, 3, 24, 24, seed=6)
    with torch.no_grad():
        stn.regressor.bias[6] = float("nan")  # z = NaN everywhere
    x.requires_grad_(True)
    aligned = stn(x)
    aligned.sum().backward()
    assert torch.isfinite(aligned).all()
    assert aligned.abs().max() == 0  # documented: padding
    assert torch.isfinite(x.grad).all()


def test_autocast_bfloat16_keeps_matrix_in_float32() -> None:
    stn = small_stn("similarity").eval()
    randomise_regressor(stn)
    x = smooth_shapes(2, 3, 24, 24, seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        aligned, matrix = stn(x, return_matrix=True)
    assert matrix.dtype == torch.float32
    assert aligned.dtype == torch.float32
    # only the localisation network ran in bf16: the warp itself is float32
    torch.testing.assert_close(aligned, warp(x, matrix, (20, 18)))
    _, eager = stn(x, return_matrix=True)
    torch.testing.assert_close(matrix, eager, atol=2e-2, rtol=0)


# --- compile, devices, export -------------------------------------------------------------------


def test_module_compiles() -> None:
    stn = small_stn("projective", output_size=(10, 9)).eval()
    randomise_regressor(stn)
    assert_compiles(stn, smooth_shapes(2, 3, 16, 16, seed=8))


@pytest.mark.cuda
@pytest.mark.parametrize("transform", ["similarity", "projective"])
def test_cuda_parity(transform: str) -> None:
    stn = small_stn(transform).eval()
    randomise_regressor(stn)
    assert_cuda_parity(stn, smooth_shapes(2, 3, 24, 22, seed=9))


def test_runs_on_device(device: torch.device) -> None:
    stn = small_stn("affine").to(device)
    randomise_regressor(stn)
    aligned, matrix = stn(smooth_shapes(2, 3, 24, 22, seed=10).to(device), return_matrix=True)
    assert aligned.device.type == device.type
    assert matrix.device.type == device.type


def _onnx_missing() -> str | None:
    for name in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            return f"needs the `onnx` extra: {name} is not importable (pip install 'faceaux[onnx]')"
    return None


@pytest.mark.skipif(_onnx_missing() is not None, reason=str(_onnx_missing()))
@pytest.mark.parametrize("transform", ["identity", "similarity", "projective"])
def test_onnx_export_matches_eager(transform: str) -> None:
    import onnx
    import onnxruntime

    stn = small_stn(transform, output_size=(24, 20))
    if stn.regressor is not None:
        randomise_regressor(stn)
        stn.train()
        stn(smooth_shapes(8, 3, 40, 36, seed=11))  # give the BatchNorm layers running stats
    stn.eval()
    x = smooth_shapes(2, 3, 40, 36, seed=12)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter (no onnxscript needed) warns that it is legacy, and the
        # tracer that shape checks become constants: the export is for these sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            stn,
            (x,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["aligned"],
            dynamic_axes={"x": {0: "batch"}, "aligned": {0: "batch"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    assert "GridSample" in {node.op_type for node in model.graph.node}
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x3 = smooth_shapes(3, 3, 40, 36, seed=13)  # another batch size than the traced one
    (got,) = session.run(None, {"x": x3.numpy()})
    with torch.no_grad():
        expected = stn(x3)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


# --- robustness (issue 13) ----------------------------------------------------------------------


def _buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_stn_nan_pixel_in_training_is_refused_and_statistics_survive() -> None:
    """One NaN pixel used to turn the localisation BatchNorm statistics NaN for good (all-zero
    output ever after, in eval too)."""
    stn = SpatialTransformerAlign("affine", output_size=(16, 16), loc_input_size=(16, 16))
    stn(torch.rand(4, 3, 20, 20))
    before = _buffers(stn)
    x = torch.rand(4, 3, 20, 20)
    x[2, 1, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"^x: expected finite values, received 1 NaN/inf"):
        stn(x)
    for key, value in stn.state_dict().items():
        assert torch.equal(value, before[key]), key
    out = stn.eval()(torch.rand(2, 3, 20, 20))
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_stn_empty_batch_leaves_the_statistics_unchanged() -> None:
    stn = SpatialTransformerAlign("projective", output_size=(8, 8), loc_input_size=(16, 16))
    before = _buffers(stn)
    x = torch.rand(0, 3, 20, 20, requires_grad=True)
    aligned, matrix = stn(x, return_matrix=True)
    assert aligned.shape == (0, 3, 8, 8)
    assert matrix.shape == (0, 3, 3)
    aligned.sum().backward()
    for key, value in stn.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_stn_half_input_outside_autocast_is_a_clear_error() -> None:
    stn = SpatialTransformerAlign("similarity", output_size=(8, 8), loc_input_size=(16, 16))
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^x: expected dtype torch.float32 .*autocast"):
        stn(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, matrix = stn(x.bfloat16(), return_matrix=True)
    assert out.dtype == torch.bfloat16
    assert matrix.dtype == torch.float32
    assert torch.isfinite(out.float()).all()
    identity = SpatialTransformerAlign("identity", output_size=(8, 8))  # no parameters
    assert identity(x.half()).dtype == torch.float16


def test_theta_regularization_empty_batch_and_non_finite_matrices() -> None:
    matrix = torch.zeros(0, 3, 3, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = theta_regularization(matrix, reduction)
        assert loss.item() == 0.0  # "mean" was NaN
        loss.backward()
    assert theta_regularization(matrix, "none").shape == (0,)
    bad = torch.eye(3).repeat(2, 1, 1)
    bad[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^matrix: expected finite values"):
        theta_regularization(bad)
    with pytest.raises(ValueError, match=r"^lr: expected a positive learning rate"):
        param_groups(SpatialTransformerAlign(output_size=(8, 8)), lr=float("inf"))


@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_centre_crop_is_the_paper_baseline(align_corners: bool) -> None:
    """§3.3: the identity setting crops the detected face region at the centre."""
    x = torch.rand(2, 3, 64, 60)
    stn = SpatialTransformerAlign(
        "identity", output_size=(48, 40), crop_size=(48, 40), align_corners=align_corners
    )
    torch.testing.assert_close(stn(x), x[:, :, 8:56, 10:50], atol=1e-5, rtol=0)
    bigger = SpatialTransformerAlign("identity", output_size=(24, 20), crop_size=(48, 40))
    expected = F.interpolate(x[:, :, 8:56, 10:50], size=(24, 20), mode="bilinear")
    torch.testing.assert_close(bigger(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="crop_size"):
        SpatialTransformerAlign("affine", crop_size=(48, 40))
    with pytest.raises(ValueError, match="larger than the input"):
        stn(torch.rand(1, 3, 32, 32))
