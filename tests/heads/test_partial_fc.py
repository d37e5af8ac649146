"""PartialFC and the sharded cross-entropy against single-process ArcFace + F.cross_entropy."""

from __future__ import annotations

import functools
import itertools
import math
import re

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from checks import assert_cuda_parity

from faceaux import (
    AdaFace,
    AdaFaceMargin,
    ArcFace,
    CombinedMargin,
    PartialFC,
    SphereFace,
    margin_logits,
    sharded_cross_entropy,
    sphereface_logits,
)
from faceaux.heads import shard_range

WORLD_SIZE = 2


# ---------------------------------------------------------------------------------------------
# sharding


def test_shard_range_covers_classes_contiguously_and_evenly():
    for num_classes in range(1, 40):
        for world_size in range(1, min(num_classes, 8) + 1):
            ranges = [shard_range(num_classes, r, world_size) for r in range(world_size)]
            assert ranges[0][0] == 0
            assert ranges[-1][1] == num_classes
            for (_, stop), (start, _) in itertools.pairwise(ranges):
                assert stop == start
            sizes = [stop - start for start, stop in ranges]
            assert max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)


def test_shard_range_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"^rank"):
        shard_range(10, 2, 2)
    with pytest.raises(ValueError, match=r"^num_classes"):
        shard_range(3, 0, 4)


def test_memory_per_rank_centres_scale_with_num_classes_over_world_size():
    num_classes, embedding_size = 10_000, 4
    full = torch.zeros(num_classes, embedding_size)
    for world_size in (1, 2, 4, 8, 3):
        shapes = [
            PartialFC.reshard_state_dict(full, r, world_size)["weight"].shape
            for r in range(world_size)
        ]
        for rows, columns in shapes:
            assert columns == embedding_size
            assert rows in (num_classes // world_size, math.ceil(num_classes / world_size))
        assert sum(rows for rows, _ in shapes) == num_classes


def test_sample_rate_cuts_the_logits_tensor_tenfold():
    x, y = torch.randn(16, 8), torch.randint(0, 1000, (16,))
    full_logits, _, full_ids = PartialFC(8, 1000).local_logits(x, y)
    sampled_logits, _, sampled_ids = PartialFC(8, 1000, sample_rate=0.1).local_logits(x, y)
    assert full_logits.shape == (16, 1000)
    assert sampled_logits.shape == (16, 100)
    assert full_logits.numel() == 10 * sampled_logits.numel()
    assert torch.equal(full_ids, torch.arange(1000))
    assert set(y.tolist()) <= set(sampled_ids.tolist())


# ---------------------------------------------------------------------------------------------
# one process


def _arcface_reference(weight, x, y, **margin):
    head = (ArcFace if not margin else CombinedMargin)(x.shape[1], weight.shape[0], **margin)
    head = head.double()
    with torch.no_grad():
        head.weight.copy_(weight)
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(head(x, y), y)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


def test_single_process_equals_arcface_cross_entropy():
    weight = torch.randn(11, 6, dtype=torch.float64)
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 11, (9,))
    head = PartialFC(6, 11).double()
    head.load_state_dict(PartialFC.reshard_state_dict(weight, 0, 1))
    xs = x.clone().requires_grad_(True)
    loss = head(xs, y)
    loss.backward()
    ref_loss, ref_x_grad, ref_w_grad = _arcface_reference(weight, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs.grad, ref_x_grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.weight.grad, ref_w_grad, rtol=1e-5, atol=1e-5)


def test_sharded_cross_entropy_is_cross_entropy_on_one_process():
    logits = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    loss = sharded_cross_entropy(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = F.cross_entropy(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    torch.autograd.gradcheck(lambda z: sharded_cross_entropy(z, labels), (logits,))


def test_sharded_cross_entropy_half_precision_is_finite_and_close():
    logits = (64 * (torch.rand(6, 50) * 2 - 1)).half().requires_grad_(True)
    labels = torch.randint(0, 50, (6,))
    loss = sharded_cross_entropy(logits, labels)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(
        loss.float(), F.cross_entropy(logits.detach().float(), labels), rtol=1e-3, atol=1e-2
    )


def test_sharded_cross_entropy_rejects_rows_without_a_target():
    with pytest.raises(ValueError, match=r"^labels"):
        sharded_cross_entropy(torch.randn(2, 3), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"^labels"):
        PartialFC(4, 3)(torch.randn(2, 4), torch.tensor([0, 3]))


def test_sampling_keeps_positives_and_remaps_labels():
    head = PartialFC(4, 200, sample_rate=0.1)
    local = torch.tensor([5, 17, 5, -1, 199, 0])
    index, remapped = head.sample_classes(local)
    assert index.numel() == 20
    assert torch.equal(index, index.sort().values)
    assert len(set(index.tolist())) == 20
    assert {0, 5, 17, 199} <= set(index.tolist())
    assert remapped[3] == -1
    for original, column in zip(local.tolist(), remapped.tolist(), strict=True):
        if original >= 0:
            assert index[column] == original
    many = torch.arange(30)  # more positives than num_sample: all of them, nothing else
    index, remapped = head.sample_classes(many)
    assert torch.equal(index, many)
    assert torch.equal(remapped, many)


def test_sampled_loss_is_cross_entropy_over_the_sampled_classes():
    weight = torch.randn(60, 5, dtype=torch.float64)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 60, (8,))
    head = PartialFC(5, 60, sample_rate=0.2).double()
    head.load_state_dict(PartialFC.reshard_state_dict(weight, 0, 1))
    torch.manual_seed(3)
    xs = x.clone().requires_grad_(True)
    loss = head(xs, y)
    loss.backward()
    torch.manual_seed(3)
    _, local_labels, class_ids = head.local_logits(x, y)
    assert class_ids.numel() == 12
    ref_x = x.clone().requires_grad_(True)
    cosine = F.normalize(ref_x) @ F.normalize(weight[class_ids]).T
    expected = F.cross_entropy(margin_logits(cosine, local_labels), local_labels)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(xs.grad, ref_x.grad)
    unsampled = torch.ones(60, dtype=torch.bool)
    unsampled[class_ids] = False
    assert (head.weight.grad[unsampled] == 0).all()
    assert (head.weight.grad[class_ids].abs().sum(dim=1) > 0).all()


def test_adaface_margin_inside_partial_fc_equals_adaface_head():
    torch.manual_seed(1)
    x = (
        torch.randn(6, 5, dtype=torch.float64)
        * torch.linspace(1, 30, 6, dtype=torch.float64)[:, None]
    )
    y = torch.randint(0, 7, (6,))
    ada = AdaFace(5, 7, s=16.0).double()
    head = PartialFC(5, 7, margin_fn=AdaFaceMargin(s=16.0)).double()
    with torch.no_grad():
        head.weight.copy_(ada.weight)
    xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loss = head(xs, y)
    loss.backward()
    expected = F.cross_entropy(ada(xr, y), y)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(xs.grad, xr.grad)
    torch.testing.assert_close(head.weight.grad, ada.weight.grad)
    torch.testing.assert_close(head.margin_fn.batch_mean, ada.margin.batch_mean)
    assert "margin_fn.batch_mean" in head.state_dict()


def test_sphereface_logits_inside_partial_fc_equals_sphereface_head():
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 6, (5,))
    sphere = SphereFace(4, 6, m=4, anneal=False).double()
    head = PartialFC(4, 6, margin_fn=functools.partial(sphereface_logits, m=4)).double()
    with torch.no_grad():
        head.weight.copy_(sphere.weight)
    torch.testing.assert_close(head(x, y), F.cross_entropy(sphere(x, y), y))


# ---------------------------------------------------------------------------------------------
# state dicts


def test_state_dict_round_trips_through_torch_save(tmp_path):
    head = PartialFC(6, 13)
    torch.save(head.state_dict(), tmp_path / "shard.pt")
    restored = PartialFC(6, 13)
    restored.load_state_dict(torch.load(tmp_path / "shard.pt", weights_only=True))
    assert torch.equal(restored.weight, head.weight)
    extra = head.state_dict()["_extra_state"]
    assert extra == {
        "format": "faceaux.PartialFC/1",
        "num_classes": 13,
        "embedding_size": 6,
        "rank": 0,
        "world_size": 1,
        "class_start": 0,
        "class_stop": 13,
    }


def test_reshard_between_world_sizes_round_trips():
    full = torch.randn(13, 3)
    three = [PartialFC.reshard_state_dict(full, r, 3) for r in range(3)]
    assert [sd["weight"].shape[0] for sd in three] == [5, 4, 4]
    two = [PartialFC.reshard_state_dict(list(reversed(three)), r, 2) for r in range(2)]
    assert [sd["_extra_state"]["class_start"] for sd in two] == [0, 7]
    merged = PartialFC.merge_shards(two)
    assert torch.equal(merged["weight"], full)
    one = PartialFC(3, 13)
    one.load_state_dict(merged)
    assert torch.equal(one.weight.detach(), full)


def test_loading_a_shard_of_another_slice_or_size_is_refused():
    head = PartialFC(3, 8)
    shard = PartialFC.reshard_state_dict(torch.randn(8, 3), 0, 1)
    shard["_extra_state"] = {**shard["_extra_state"], "class_start": 1, "class_stop": 9}
    with pytest.raises(ValueError, match="reshard_state_dict"):
        head.load_state_dict(shard)
    halves = [PartialFC.reshard_state_dict(torch.randn(8, 3), r, 2) for r in range(2)]
    with pytest.raises(ValueError, match=r"^shards"):
        PartialFC.merge_shards(halves[1:])
    with pytest.raises(ValueError, match=r"^shards"):
        PartialFC.merge_shards([{"weight": torch.randn(8, 3)}])


# ---------------------------------------------------------------------------------------------
# validation, devices


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: PartialFC(4, 10, sample_rate=0.0), "sample_rate"),
        (lambda: PartialFC(4, 10, sample_rate=1.5), "sample_rate"),
        (lambda: PartialFC(0, 10), "embedding_size"),
        (lambda: PartialFC(4, 10, margin_fn=3), "margin_fn"),
        (lambda: PartialFC(4, 10)(torch.randn(2, 5), torch.tensor([0, 1])), "embeddings"),
        (lambda: PartialFC(4, 10)(torch.randn(2, 4), torch.tensor([0, 1, 2])), "labels"),
        (lambda: PartialFC(4, 10)(torch.randn(2, 4), torch.tensor([0.0, 1.0])), "labels"),
        (lambda: sharded_cross_entropy(torch.randn(2), torch.tensor([0, 1])), "logits"),
        (lambda: PartialFC.reshard_state_dict(torch.randn(4, 2), 2, 2), "rank"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


def test_runs_on_device_and_dtype(device, dtype):
    head = PartialFC(6, 9).to(device=device, dtype=dtype)
    x = torch.randn(4, 6, device=device, dtype=dtype, requires_grad=True)
    loss = head(x, torch.tensor([0, 3, 8, 8], device=device))
    loss.backward()
    assert loss.dtype == dtype
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()


@pytest.mark.dtypes("float16", "bfloat16")
def test_autocast_partial_fc_is_finite_with_cosines_at_one(dtype):
    head = PartialFC(8, 12, sample_rate=0.5)
    y = torch.randint(0, 12, (16,))
    x = (F.normalize(head.weight.detach())[y] * 20).requires_grad_(True)  # target cosines = 1
    with torch.autocast("cpu", dtype=dtype):
        loss = head(x, y)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.filterwarnings("ignore:AdaFaceMargin. an empty batch")
def test_empty_batch_gives_a_zero_loss_that_back_propagates():
    for margin_fn in (None, AdaFaceMargin()):
        head = PartialFC(6, 9, margin_fn=margin_fn)
        x = torch.randn(0, 6, requires_grad=True)
        loss = head(x, torch.zeros(0, dtype=torch.long))
        loss.backward()
        assert loss.item() == 0.0
        assert x.grad.shape == (0, 6)
        assert torch.equal(head.weight.grad, torch.zeros_like(head.weight))
    logits = torch.randn(0, 4, requires_grad=True)
    loss = sharded_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda: PartialFC(4, 10)(torch.randn(2, 4), torch.tensor([0, 10])),
            r"^labels: .*\[0, 10\)",
        ),
        (
            lambda: PartialFC(4, 10)(torch.randn(2, 4), torch.tensor([-1, 3])),
            r"^labels: .*\[0, 10\)",
        ),
        (
            lambda: PartialFC(4, 10)(
                torch.tensor([[0.0, math.nan, 0, 0], [1, 1, 1, 1]]), torch.tensor([0, 1])
            ),
            r"^embeddings: expected finite",
        ),
        (
            lambda: PartialFC(4, 10)(torch.randn(2, 4).bfloat16(), torch.tensor([0, 1])),
            r"^embeddings: expected dtype torch.float32",
        ),
        (
            lambda: sharded_cross_entropy(torch.randn(2, 3), torch.tensor([0, 3])),
            r"^labels: expected each row's target column in \[0, C_local\) or -1",
        ),
        (
            lambda: sharded_cross_entropy(torch.tensor([[0.0, math.inf]]), torch.tensor([1])),
            r"^logits: expected finite values",
        ),
        (lambda: sharded_cross_entropy(torch.randn(2, 0), torch.tensor([0, 0])), r"^logits: "),
    ],
)
def test_bad_data_raises_value_error_naming_the_argument(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.cuda
def test_cuda_parity():
    assert_cuda_parity(PartialFC(8, 10), (torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 9, 9])))


# ---------------------------------------------------------------------------------------------
# two processes (gloo, CPU)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run ``partial_fc_worker.run`` on 2 gloo processes; return the data and both outputs."""
    from heads import partial_fc_worker

    workdir = tmp_path_factory.mktemp("partial_fc")
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([3, 5])  # uneven batches per rank
    data = {
        "sizes": sizes,
        "x": torch.randn(8, 6, dtype=torch.float64, generator=generator),
        "y": torch.tensor([0, 6, 3, 3, 5, 1, 6, 4]),
        "y_many": torch.tensor([0, 66, 33, 33, 55, 11, 66, 44]),  # on both halves of 80
        "weight": torch.randn(7, 6, dtype=torch.float64, generator=generator),  # 4 + 3 classes
        "weight_many": torch.randn(80, 6, dtype=torch.float64, generator=generator),
        "weight_even": torch.randn(8, 6, dtype=torch.float64, generator=generator),
    }
    torch.save(data, workdir / "data.pt")
    mp.spawn(partial_fc_worker.run, args=(WORLD_SIZE, str(workdir)), nprocs=WORLD_SIZE)
    outputs = [torch.load(workdir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    return data, outputs


def _gathered(outputs, case, key):
    return torch.cat([out[case][key] for out in outputs])


def test_two_ranks_shard_classes_contiguously(two_ranks):
    _, outputs = two_ranks
    assert [out["class_range"] for out in outputs] == [(0, 4), (4, 7)]
    assert [out["weight_shape"] for out in outputs] == [(4, 6), (3, 6)]


@pytest.mark.parametrize("scale", [False, True])
def test_two_ranks_equal_single_process_arcface(two_ranks, scale):
    data, outputs = two_ranks
    ref_loss, ref_x_grad, ref_w_grad = _arcface_reference(data["weight"], data["x"], data["y"])
    case = f"arcface_scale_{scale}"
    for out in outputs:  # every rank returns the loss of the whole global batch
        torch.testing.assert_close(out[case]["loss"], ref_loss, rtol=1e-5, atol=1e-5)
    factor = WORLD_SIZE if scale else 1  # InsightFace's convention, cancels DDP's averaging
    torch.testing.assert_close(
        _gathered(outputs, case, "x_grad"), factor * ref_x_grad, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(_gathered(outputs, case, "w_grad"), ref_w_grad, rtol=1e-5, atol=1e-5)


def test_two_ranks_combined_margin_straight_through(two_ranks):
    data, outputs = two_ranks
    margin = {"s": 16.0, "m1": 1.2, "m2": 0.3, "m3": 0.1, "margin_grad": "straight_through"}
    ref_loss, ref_x_grad, ref_w_grad = _arcface_reference(
        data["weight"], data["x"], data["y"], **margin
    )
    for out in outputs:
        torch.testing.assert_close(out["combined"]["loss"], ref_loss, rtol=1e-5, atol=1e-5)
    x_grad = _gathered(outputs, "combined", "x_grad")
    torch.testing.assert_close(x_grad, WORLD_SIZE * ref_x_grad, rtol=1e-5, atol=1e-5)
    w_grad = _gathered(outputs, "combined", "w_grad")
    torch.testing.assert_close(w_grad, ref_w_grad, rtol=1e-5, atol=1e-5)


def test_two_ranks_adaface_equals_single_process_adaface(two_ranks):
    data, outputs = two_ranks
    head = AdaFace(6, 7, s=16.0).double()
    with torch.no_grad():
        head.weight.copy_(data["weight"])
    x = data["x"].clone().requires_grad_(True)
    loss = F.cross_entropy(head(x, data["y"]), data["y"])
    loss.backward()
    for out in outputs:
        torch.testing.assert_close(out["adaface"]["loss"], loss.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["adaface"]["batch_mean"], head.margin.batch_mean)
        torch.testing.assert_close(out["adaface"]["batch_std"], head.margin.batch_std)
    x_grad = _gathered(outputs, "adaface", "x_grad")
    torch.testing.assert_close(x_grad, WORLD_SIZE * x.grad, rtol=1e-5, atol=1e-5)
    w_grad = _gathered(outputs, "adaface", "w_grad")
    torch.testing.assert_close(w_grad, head.weight.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("streamed", "dense"),
    [("arcface", "arcface_scale_True"), ("combined", "combined"), ("adaface", "adaface")],
)
def test_two_ranks_streaming_equals_dense(two_ranks, streamed, dense):
    """Each rank streams its shard in chunks of 3 (shards of 4 and 3 classes): the loss, the
    embedding gradients and the centre gradients of the dense sharded head, in float64."""
    _, outputs = two_ranks
    for out in outputs:
        for key in ("loss", "x_grad", "w_grad"):
            torch.testing.assert_close(
                out[f"streamed_{streamed}"][key], out[dense][key], rtol=0, atol=1e-10
            )
    if streamed == "adaface":  # the running statistics moved once, as in the dense step
        for out in outputs:
            assert torch.equal(out["streamed_adaface"]["batch_mean"], out["adaface"]["batch_mean"])


def test_two_ranks_sampled_loss_is_exact_over_the_union_of_sampled_classes(two_ranks):
    data, outputs = two_ranks
    class_ids = torch.cat([out["sampled"]["class_ids"] for out in outputs])
    assert set(data["y_many"].tolist()) <= set(class_ids.tolist())
    for out in outputs:  # 40 classes per rank, 10 kept (all positives of the batch included)
        assert out["sampled"]["num_sample"] == 10
        assert out["sampled"]["class_ids"].numel() == 10
    weight = data["weight_many"]
    x = data["x"].clone().requires_grad_(True)
    labels = torch.searchsorted(class_ids, data["y_many"])
    cosine = F.normalize(x) @ F.normalize(weight[class_ids]).T
    loss = F.cross_entropy(margin_logits(cosine, labels), labels)
    loss.backward()
    for out in outputs:
        torch.testing.assert_close(out["sampled"]["loss"], loss.detach(), rtol=1e-5, atol=1e-5)
    x_grad = _gathered(outputs, "sampled", "x_grad")
    torch.testing.assert_close(x_grad, WORLD_SIZE * x.grad, rtol=1e-5, atol=1e-5)


def test_two_ranks_state_dicts_merge_and_gather_to_the_full_centres(two_ranks):
    data, outputs = two_ranks
    merged = PartialFC.merge_shards([out["state_dict"] for out in reversed(outputs)])
    assert torch.equal(merged["weight"], data["weight"])
    for out in outputs:
        assert torch.equal(out["full_weight"], data["weight"])
        assert "reshard_state_dict" in out["wrong_shard_error"]
    three = PartialFC.reshard_state_dict([out["state_dict"] for out in outputs], 2, 3)
    assert torch.equal(three["weight"], data["weight"][5:7])


# ---------------------------------------------------------------------------------------------
# one rank's bad input (issue 13): every rank raises the same ValueError, promptly


@pytest.fixture(scope="module")
def two_ranks_bad_inputs(tmp_path_factory):
    """Run ``partial_fc_worker.run_bad_inputs`` on 2 gloo processes; return both ranks' records."""
    import json

    from heads import partial_fc_worker

    workdir = tmp_path_factory.mktemp("partial_fc_bad")
    mp.spawn(partial_fc_worker.run_bad_inputs, args=(WORLD_SIZE, str(workdir)), nprocs=WORLD_SIZE)
    return [json.loads((workdir / f"bad_rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize(
    ("case", "bad_rank", "pattern"),
    [
        ("float_labels", 1, r"^labels: expected an integer tensor"),
        ("label_out_of_range", 1, r"^labels: expected class indices in \[0, 10\)"),
        ("nan_embeddings", 0, r"^embeddings: expected finite values"),
        ("wrong_embedding_size", 1, r"^embeddings: expected shape \(B, D\) with size 4"),
        ("not_a_tensor", 0, r"^embeddings: expected a tensor"),
        ("nan_embeddings_streamed", 0, r"^embeddings: expected finite values"),
    ],
)
def test_two_ranks_one_bad_input_every_rank_raises_the_same_error_fast(
    two_ranks_bad_inputs, case, bad_rank, pattern
):
    records = [ranks[case] for ranks in two_ranks_bad_inputs]
    for record in records:
        assert record["error"] == "ValueError", record
        assert re.match(pattern, record["message"]), record["message"]
        assert (
            f"[rank {bad_rank} of 2; PartialFC raises this error on every rank]"
            in (record["message"])
        )
        assert record["seconds"] < 5.0, record  # not the 20 s process-group timeout
    assert records[0]["message"] == records[1]["message"]


def test_two_ranks_sharded_cross_entropy_with_different_row_counts_raises_on_both(
    two_ranks_bad_inputs,
):
    records = [ranks["sharded_ce_rows_differ"] for ranks in two_ranks_bad_inputs]
    for record in records:
        assert record["error"] == "ValueError", record
        assert record["message"].startswith("logits: expected the same number of rows N")
        assert record["seconds"] < 5.0


def test_two_ranks_empty_batches(two_ranks_bad_inputs):
    """One rank with B = 0 trains normally; N = 0 on every rank is a zero loss, no NaN."""
    one_empty = [ranks["one_rank_empty"] for ranks in two_ranks_bad_inputs]
    assert [r["error"] for r in one_empty] == [None, None]
    assert one_empty[0]["value"] == one_empty[1]["value"] > 0  # the same global loss
    streamed = [ranks["one_rank_empty_streamed"] for ranks in two_ranks_bad_inputs]
    assert [r["error"] for r in streamed] == [None, None]
    assert streamed[0]["value"] == pytest.approx(one_empty[0]["value"], rel=1e-12, abs=0)
    for case in ("all_ranks_empty", "all_ranks_empty_adaface", "all_ranks_empty_streamed"):
        records = [ranks[case] for ranks in two_ranks_bad_inputs]
        assert [(r["error"], r["value"]) for r in records] == [(None, 0.0), (None, 0.0)]
