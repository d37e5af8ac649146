"""The train / pack / eval / export sub-commands through ``faceaux.cli.main``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from eval.ijb_miniature import make_ijbc_folder, make_verification_bin

import faceaux
from faceaux.cli import main
from faceaux.train import TrainConfig

MODEL = [
    "--model",
    "iresnet_nano",
    "--model-kwargs",
    '{"input_size": [56, 56], "embedding_size": 16}',
]


def test_train_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    defaults = TrainConfig()
    # argparse wraps help lines: compare with whitespace collapsed
    flat = " ".join(text.split())
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        value = getattr(defaults, field.name)
        shown = (
            {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
        )
        if shown in ("", [], {}):
            shown = {"": "(none)", "[]": "(none)"}.get(str(shown), "{}")
        assert f"(default: {shown})" in flat, (field.name, shown)
    assert ":class:" not in text
    assert "``" not in text


def test_eval_prints_ijb_and_bin_tables(tmp_path, capsys):
    root = make_ijbc_folder(tmp_path)
    bin_path = make_verification_bin(tmp_path / "tiny.bin")
    out = tmp_path / "report.json"
    status = main(
        ["eval", *MODEL, "--ijb", str(root), "--bin", str(bin_path), "--num-workers", "0",
         "--batch-size", "32", "--json", str(out)]
    )  # fmt: skip
    assert status == 0
    text = capsys.readouterr().out
    assert "IJBC 1:1 verification: 400 template pairs, 40 templates, 120 images" in text
    assert "1e-01" in text
    assert "rank-1" in text
    assert "tiny" in text
    report = json.loads(out.read_text())
    assert set(report["ijb"]["tar_at_far"]) == {"1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"}
    assert 0.0 <= report["bin"]["tiny"]["accuracy"] <= 1.0


def test_export_writes_insightface_style_onnx(tmp_path, capsys):
    onnx = pytest.importorskip("onnx", reason="export needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="export check needs the onnx extra")
    path = tmp_path / "model.onnx"
    assert main(["export", *MODEL, str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["max_abs_diff"] < 1e-3
    proto = onnx.load(path)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["mean"] == metadata["std"] == "127.5,127.5,127.5"
    assert metadata["input_size"] == "56,56"
    assert metadata["embedding_size"] == "16"
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 56, 56]
    assert len(proto.graph.output) == 1


def test_export_then_load_checkpoint_roundtrip(tmp_path):
    import torch

    pytest.importorskip("onnx", reason="export needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="export check needs the onnx extra")

    model = faceaux.create_model("iresnet_nano", input_size=(56, 56), embedding_size=16)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    path = tmp_path / "again.onnx"
    assert main(["export", *MODEL, "--checkpoint", str(tmp_path / "model.pt"), str(path)]) == 0
    assert Path(path).stat().st_size > 10_000
