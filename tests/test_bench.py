"""faceaux bench: counting, overhead ratios, table/JSON output (tiny models, one repeat)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from faceaux import bench
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
        bench, "baseline_of", lambda name: "iresnet_nano" if name == "iresnet18_gnap" else None
    )

    def nano(name: str, device: torch.device) -> nn.Module:
        kwargs = {"widths": (8, 8, 16, 16)} if name == "iresnet18_gnap" else {}
        return create_model(name, **kwargs).to(device)

    monkeypatch.setattr(bench, "_build", nano)
    seen = []
    rows = bench.benchmark_models(
        ["iresnet18_gnap"], "cpu", batch=2, repeats=1, warmup=0, progress=seen.append
    )
    assert seen == ["iresnet_nano", "iresnet18_gnap"]
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


def test_cli_json_and_errors(monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        bench, "benchmark_models", lambda *a, **k: [{"model": "iresnet_nano", "params": 1}]
    )
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--models", "iresnet_nano", "--batch", "2", "--json"])
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch"] == 2
    assert out["models"] == [{"model": "iresnet_nano", "params": 1}]
    args = parser.parse_args(["bench", "--models", "not_a_model"])
    assert args.handler(args) == 2
    assert "unknown models" in capsys.readouterr().out


def test_layer_rows_quick() -> None:
    rows = bench.layer_rows("cpu", quick=True)
    layers = [row.get("layer") for row in rows if row["benchmark"] == "parts"]
    assert layers == ["PartMaskPooling", "StructureCorrelation"]
    assert all(row["speedup"] > 0 for row in rows if row["benchmark"] == "parts")
    assert any(row["benchmark"].startswith("margin") for row in rows)
