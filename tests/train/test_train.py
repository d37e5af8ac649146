"""faceaux train: configuration, sampler, schedule, checkpoints and resume (2 processes → 1).

The distributed runs use ``torchrun`` with gloo on the CPU, exactly as a user would; the
one-process runs call :func:`faceaux.train.train` in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train.tiny_data import pack_tiny

import faceaux
from faceaux import PartialFC
from faceaux.train import TrainConfig, load_config, train
from faceaux.train.checkpoint import reshard_optimizer_state
from faceaux.train.loop import (
    StepBatchSampler,
    enable_gradient_checkpointing,
    polynomial_warmup,
    raise_together,
)

MODEL_KWARGS = {"input_size": [56, 56], "embedding_size": 32}


def tiny_config(data: Path, output: Path, **overrides) -> TrainConfig:
    values = {
        "data": str(data),
        "model": "iresnet_nano",
        "model_kwargs": MODEL_KWARGS,
        "batch_size": 16,
        "steps": 6,
        "lr": 0.05,
        "scale": 16.0,
        "m2": 0.2,
        "sample_rate": 0.5,
        "num_workers": 0,
        "log_every": 1,
        "checkpoint_every": 3,
        "keep_checkpoints": 3,
        "progress": False,
        "tensorboard": False,
        "output": str(output),
    }
    values.update(overrides)
    return TrainConfig(**values)


def as_flags(config: TrainConfig) -> list[str]:
    flags = []
    for key, value in config.to_dict().items():
        if value in ("", [], {}) and key != "model_kwargs":
            continue
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, list):
            value = ",".join(value)
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def read_log(output: Path) -> list[dict]:
    lines = (output / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "loss" in json.loads(line)]


def torchrun(config: TrainConfig, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    command += ["--standalone", "-m", "faceaux", "train", *as_flags(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# -- configuration -----------------------------------------------------------------------------


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="head: expected one of"):
        TrainConfig(head="softmax")
    with pytest.raises(ValueError, match="batch_size: expected int"):
        TrainConfig(batch_size=1.5)
    with pytest.raises(ValueError, match=r"sample_rate: expected a value in \(0, 1\]"):
        TrainConfig(sample_rate=0.0)
    with pytest.raises(ValueError, match="batch_size: expected a multiple of"):
        TrainConfig(batch_size=30, grad_accum=4).per_process_batch(2)
    assert TrainConfig(lr=1).lr == 1.0  # an int where a float is expected is fine


def test_load_config_toml_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "iresnet_nano"\nbatch_size = 64\nval = ["a.bin"]\n[model_kwargs]\n'
                    "embedding_size = 32\n")  # fmt: skip
    config = load_config(path, {"batch_size": 32})
    assert (config.model, config.batch_size, config.val) == ("iresnet_nano", 32, ["a.bin"])
    assert config.model_kwargs == {"embedding_size": 32}
    path.write_text("batch_sise = 3\n")
    with pytest.raises(ValueError, match="did you mean batch_size"):
        load_config(path)


# -- pieces of the loop ---------------------------------------------------------------------------


def test_sampler_is_world_size_independent_and_resumable():
    def run(world, start, accum=2):
        samplers = [
            StepBatchSampler(40, 8, accum, world, r, 5, True, start, 9) for r in range(world)
        ]
        batches = [list(s) for s in samplers]
        return [[item for part in parts for item in part] for parts in zip(*batches, strict=True)]

    full = run(1, 0)
    assert run(2, 0) == run(4, 0) == full  # 9 steps × 2 micro-batches, across 2 epochs
    assert run(2, 4) == full[8:]  # resuming at step 4 continues with micro-batch 8
    epoch = [index for batch in full[:10] for index, _ in batch]
    assert sorted(epoch) == list(range(40))  # one epoch visits every sample once …
    assert epoch != list(range(40))  # … in a shuffled order
    flips = [flip for batch in full for _, flip in batch]
    assert 0 < sum(flips) < len(flips)


def test_polynomial_warmup_schedule():
    values = [polynomial_warmup(s, 4, 10, 2.0) for s in range(10)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0
    assert values[9] == pytest.approx((1 - 5 / 6) ** 2)


@pytest.mark.parametrize("native", [True, False], ids=["set_grad_checkpointing", "wrapped"])
def test_gradient_checkpointing_gives_the_same_gradients(native):
    torch.manual_seed(0)
    model = faceaux.create_model("iresnet_nano", **MODEL_KWARGS).double().train()
    if not native:  # a model without timm's switch: its feature_info blocks get wrapped
        model.set_grad_checkpointing = None
    x = torch.randn(2, 3, 56, 56, dtype=torch.float64)

    def grads():
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    before = grads()
    count = enable_gradient_checkpointing(model)
    if native:
        assert count == -1
        assert model.grad_checkpointing
    else:
        assert count == sum(len(stage["blocks"]) for stage in model.feature_info) > 0
    after = grads()
    assert len(before) == len(after) > 10
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_reshard_optimizer_state_follows_the_centres():
    momentum = torch.randn(10, 4)
    shards = [PartialFC.reshard_state_dict(momentum, r, 3) for r in range(3)]
    states = [{"momentum_buffer": s["weight"], "step": torch.tensor(7.0)} for s in shards]
    extras = [s["_extra_state"] for s in shards]
    for world in (1, 2):
        for rank in range(world):
            out = reshard_optimizer_state(states, extras, rank, world)
            expected = PartialFC.reshard_state_dict(momentum, rank, world)["weight"]
            assert torch.equal(out["momentum_buffer"], expected)
            assert out["step"] == 7.0


def test_raise_together_without_distributed_reraises():
    from faceaux.train.loop import _Processes

    alone = _Processes(0, 1, torch.device("cpu"), distributed=False, initialized_here=False)
    raise_together(None, "nothing", alone)
    with pytest.raises(KeyError):
        raise_together(KeyError("x"), "reading", alone)


# -- runs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    return pack_tiny(tmp_path_factory.mktemp("tiny"))


def test_one_process_dense_head_accumulation_bf16(packed, tmp_path):
    config = tiny_config(
        packed, tmp_path, head="dense", grad_accum=2, precision="bf16", steps=2, optimizer="adamw",
        lr=1e-3, checkpoint_every=10,
    )  # fmt: skip
    summary = train(config)
    assert summary["step"] == 2
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    model = faceaux.create_model(
        "iresnet_nano", checkpoint_path=Path(summary["checkpoint"]) / "model.pt", **MODEL_KWARGS
    )
    assert model.eval()(torch.rand(1, 3, 56, 56)).shape == (1, 32)


def test_fp16_gradient_scaler_state_is_checkpointed(packed, tmp_path):
    config = tiny_config(packed, tmp_path, precision="fp16", steps=2, checkpoint_every=10)
    summary = train(config)
    common = torch.load(Path(summary["checkpoint"]) / "common.pt", weights_only=True)
    assert common["scaler"]["scale"] > 0


def state_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("model.pt", "rank0.pt", "rank1.pt"):
        state = torch.load(folder / name, weights_only=True)
        if name != "model.pt":
            state = {"pfc": state["partial_fc"]["weight"], "momentum": state["optimizer"]}
            state = {"pfc": state["pfc"], **{f"m{k}": v["momentum_buffer"]
                                             for k, v in state["momentum"].items()}}  # fmt: skip
        out.update({f"{name}/{k}": v for k, v in state.items()})
    return out


def test_two_processes_resume_exactly_and_on_one_process(packed, tmp_path):
    # A: 2 processes, 6 steps, checkpoints at 3 and 6
    run_a = tiny_config(packed, tmp_path / "a")
    torchrun(run_a)
    log_a = read_log(tmp_path / "a")
    assert [r["step"] for r in log_a] == [1, 2, 3, 4, 5, 6]
    assert all(r["world_size"] == 2 for r in log_a)
    step3 = tmp_path / "a" / "checkpoints" / "step_00000003"
    shards = [torch.load(step3 / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [s["partial_fc"]["weight"].shape[0] for s in shards] == [10, 10]

    # B: 2 processes resumed from step 3 end bit-exactly where A ended
    torchrun(tiny_config(packed, tmp_path / "b", resume=str(step3)))
    log_b = read_log(tmp_path / "b")
    assert [r["step"] for r in log_b] == [4, 5, 6]
    assert [r["loss"] for r in log_b] == [r["loss"] for r in log_a[3:]]
    a6 = state_tensors(tmp_path / "a" / "checkpoints" / "step_00000006")
    b6 = state_tensors(tmp_path / "b" / "checkpoints" / "step_00000006")
    assert a6.keys() == b6.keys()
    for key in a6:
        assert torch.equal(a6[key], b6[key]), key

    # C: 1 process resumed from the 2-process checkpoint: Partial FC re-sharded, steps continue
    summary = train(tiny_config(packed, tmp_path / "c", resume=str(step3)))
    assert summary["world_size"] == 1
    log_c = read_log(tmp_path / "c")
    assert [r["step"] for r in log_c] == [4, 5, 6]
    assert [r["lr"] for r in log_c] == [r["lr"] for r in log_a[3:]]
    losses_a = torch.tensor([r["loss"] for r in log_a])
    losses_c = torch.tensor([r["loss"] for r in log_c])
    noise = losses_a.std()
    assert (losses_c.mean() - losses_a[3:].mean()).abs() < 2 * noise, (losses_a, losses_c)
    c_state = torch.load(tmp_path / "c" / "checkpoints" / "step_00000006" / "rank0.pt",
                         weights_only=True)  # fmt: skip
    assert c_state["partial_fc"]["weight"].shape == (20, 32)
    assert c_state["partial_fc"]["_extra_state"]["world_size"] == 1


def test_docs_page_documents_every_key():
    page = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    for key in TrainConfig().to_dict():
        assert f"| `{key}` |" in page, key


def test_verification_sets_are_logged(packed, tmp_path):
    from eval.ijb_miniature import make_verification_bin

    bin_path = make_verification_bin(tmp_path / "tiny.bin")
    config = tiny_config(packed, tmp_path, steps=2, val=[str(bin_path)], val_every=2)
    train(config)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    (val,) = [line for line in lines if "val" in line]
    assert val["step"] == 2
    assert 0.0 <= val["val"]["tiny"]["accuracy"] <= 1.0


def test_a_corrupt_record_on_one_rank_stops_every_rank(packed, tmp_path):
    import shutil

    from faceaux.data import RecordFaces

    prefix = tmp_path / "train"
    for suffix in (".rec", ".idx"):
        shutil.copy(f"{packed}{suffix}", f"{prefix}{suffix}")
    data = RecordFaces(prefix, decoder="pillow")
    sampler = StepBatchSampler(len(data), 16, 1, 2, 1, 0, True, 0, 1)  # rank 1's first batch
    victim = next(iter(sampler))[0][0]
    raw = bytearray(Path(f"{prefix}.rec").read_bytes())
    raw[int(data.offsets[victim])] ^= 0xFF  # rank 1's first record loses its magic
    Path(f"{prefix}.rec").write_bytes(bytes(raw))
    config = tiny_config(prefix, tmp_path / "run", dist_timeout=60)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    command += ["-m", "faceaux", "train", *as_flags(config)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert f"sample {victim} (key {victim + 1}" in done.stderr  # rank 1's own error
    assert "reading the data at step 1 failed on rank 1" in done.stderr  # rank 0 did not hang
