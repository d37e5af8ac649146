"""faceaux bench: counting, overhead ratios, layer rows, memory tracking, table/JSON output.

Timings are never asserted (they depend on the machine and its load); what is asserted is the
structure, the arithmetic of the ratios and the memory accounting.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from faceaux import bench
from faceaux.bench import measure, memory
from faceaux.bench import models as bench_models
from faceaux.models import create_model


def test_count_parameters_and_flops_against_hand_counts() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model[2].weight.requires_grad_(False)
    assert bench.count_parameters(model) == 3 * 4 * 9 + 144 * 5 + 5
    assert bench.count_parameters(model, trainable_only=True) == 3 * 4 * 9 + 5
    # conv: 2 · (4 · 6 · 6 outputs) · (3 · 3 · 3 MACs); linear: 2 · 144 · 5, per image
    expected = 2 * 4 * 36 * 27 + 2 * 144 * 5
    assert bench.count_flops(model, torch.zeros(3, 3, 8, 8)) == 3 * expected
    assert model.training  # restored


def test_benchmark_models_adds_baseline_and_ratios(monkeypatch) -> None:
    monkeypatch.setattr(
        bench_models,
        "baseline_of",
        lambda name: "iresnet_nano" if name == "iresnet18_gnap" else None,
    )

    def nano(name: str, device: torch.device) -> nn.Module:
        kwargs = {"widths": (8, 8, 16, 16)} if name == "iresnet18_gnap" else {}
        return create_model(name, **kwargs).to(device)

    monkeypatch.setattr(bench_models, "_build", nano)
    seen = []
    rows = bench.benchmark_models(
        ["iresnet18_gnap"], "cpu", batch=2, repeats=2, warmup=0, progress=seen.append
    )
    assert seen[:2] == ["[1/2] building iresnet_nano", "[2/2] building iresnet18_gnap"]
    assert seen[-1].startswith("round 2/2 timed")  # progress with time left, every round
    by_name = {row["model"]: row for row in rows}
    gnap, base = by_name["iresnet18_gnap"], by_name["iresnet_nano"]
    assert gnap["baseline"] == "iresnet_nano"
    assert gnap["params_ratio"] == pytest.approx(
        gnap["trainable_params"] / base["trainable_params"]
    )
    assert gnap["flops_ratio"] == pytest.approx(gnap["gflops"] / base["gflops"])
    assert gnap["forward_ratio"] == pytest.approx(gnap["forward_ms"] / base["forward_ms"])
    assert base["params"] == 1_111_792
    assert "baseline" not in base
    table = bench.format_table(rows)
    assert table.splitlines()[0].startswith("| model |")
    assert "| iresnet18_gnap |" in table
    assert f"{gnap['params_ratio']:.3f}" in table


def test_cli_json_defaults_and_errors(monkeypatch, capsys) -> None:
    calls = []

    def fake(models, device, batch, repeats, warmup, progress):
        calls.append((list(models), batch, repeats, warmup))
        progress("building")
        return [{"model": "iresnet_nano", "params": 1}]

    monkeypatch.setattr(bench, "benchmark_models", fake)
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--models", "iresnet_nano", "--batch", "2", "--json"])
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # progress goes to stderr: stdout stays JSON
    assert "building" in captured.err
    assert out["batch"] == 2
    assert out["models"] == [{"model": "iresnet_nano", "params": 1}]
    # defaults: the quick set at batch 4, 5 rounds; --full: every model at batch 64
    for argv, expected in (
        (["bench", "--quiet", "--json"], (list(bench.DEFAULT_MODELS), 4, 5, 1)),
        (["bench", "--full", "--quiet", "--json"], (list(bench.FULL_MODELS), 64, 5, 2)),
    ):
        args = parser.parse_args(argv)
        assert args.handler(args) == 0
        assert calls[-1] == expected
    assert capsys.readouterr().err == ""  # --quiet
    args = parser.parse_args(["bench", "--models", "not_a_model"])
    assert args.handler(args) == 2
    assert "unknown models" in capsys.readouterr().out


def test_help_is_plain_text_with_defaults() -> None:
    parser = argparse.ArgumentParser()
    sub = bench.add_parser(parser.add_subparsers(dest="command"))
    text = sub.format_help()
    assert "``" not in text
    assert ":class:" not in text
    for option in ("--device", "--batch", "--repeats", "--rounds", "--classes", "--threads"):
        line = text[text.index(option) :]
        assert "default" in line[: line.index("\n  -") if "\n  -" in line else None], option


def test_layer_rows_quick() -> None:
    """Every micro-benchmark runs from the installed package (no examples/ files) and gives
    ratios that are the ratios of its own medians."""
    rows = bench.layer_rows("cpu", quick=True)
    items = [(row["benchmark"], row["item"]) for row in rows]
    assert items == [
        ("parts", "PartMaskPooling"),
        ("parts", "StructureCorrelation"),
        ("warp", "warp (affine)"),
        ("warp", "warp (affine)"),
        ("warp", "warp (projective)"),
        ("warp", "warp (projective)"),
        ("heads", "ArcFace + CE"),
        ("heads", "CosFace + CE"),
        ("heads", "CombinedMargin + CE"),
        ("heads", "margin_cross_entropy (streaming)"),
        ("heads", "SubCenterArcFace + CE"),
    ]
    for row in rows:
        assert row["ms"] > 0
        assert row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
        assert row["peak_mib"] >= 0
        if "peer_ms" in row:
            assert row["x_peer"] == pytest.approx(row["ms"] / row["peer_ms"])
        else:
            assert row["peer"]  # the reason the peer is missing
    assert {row["mode"] for row in rows if row["benchmark"] == "warp"} == {"fwd", "fwd+bwd"}
    table = bench.format_layer_rows(rows)
    assert table.count("\n") == len(rows) + 1


def test_live_bytes_counts_fresh_storages_once_and_releases_them() -> None:
    x = torch.randn(64, 32)  # existed before: not counted
    with measure.LiveBytes() as tracker:
        y = x @ x.t()  # 64·64 floats
        view = y[:10]  # a view: nothing new
        y.mul_(2)  # in place: nothing new
        z = torch.cat([y, y])  # 2·64·64 floats
        del y, view
        assert tracker.current == 2 * 64 * 64 * 4  # y freed
    assert tracker.peak == 3 * 64 * 64 * 4
    assert z.shape == (128, 64)


def test_peak_and_saved_bytes_of_a_training_step_on_cpu_and_meta_agree() -> None:
    results = []
    for device in ("cpu", "meta"):
        weight = torch.randn(500, 16, device=device, requires_grad=True)
        x = torch.randn(8, 16, device=device, requires_grad=True)

        def step(weight=weight, x=x) -> None:
            weight.grad = x.grad = None
            torch.nn.functional.cross_entropy(x @ weight.t(), x.new_zeros(8).long()).backward()

        saved = measure.saved_bytes(lambda w=weight, x=x: (x @ w.t()).log_softmax(1))
        results.append((measure.peak_bytes(step, device), saved))
    assert results[0] == results[1]
    peak, saved = results[0]
    assert saved == 8 * 500 * 4  # log_softmax keeps its (8, 500) output; W and x are inputs
    assert peak >= 500 * 16 * 4  # the centres' gradient at least


def test_head_memory_rows_streaming_is_flat_and_dense_is_not() -> None:
    rows = memory.head_memory_rows(
        classes=(2000, 20000), world_sizes=(1, 4), batch=64, dim=8, chunk_size=256
    )
    by = {(r["head"], r["world_size"], r["classes"]): r for r in rows}
    dense = by[("dense: ArcFace + F.cross_entropy", 1, 20000)]
    streamed = by[("streaming: margin_cross_entropy", 1, 20000)]
    assert streamed["peak_gib"] < dense["peak_gib"]
    assert streamed["saved_gib"] < dense["saved_gib"] / 10  # no (B, C) tensor kept
    sharded = by[("Partial FC, sample_rate=1.0", 4, 20000)]
    assert sharded["local_classes"] == 5000
    assert sharded["rows"] == 256
    assert sharded["centres_gib"] == pytest.approx(2 * 5000 * 8 * 4 / 2**30)
    table = memory.format_memory_rows(rows)
    assert "| C = 2k | C = 20k |" in table
