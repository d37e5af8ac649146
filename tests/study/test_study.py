"""faceaux study: a tiny run is deterministic, its report has every arm with finite intervals,
and the arms are the configurations the experiments describe."""

from __future__ import annotations

import json
import math

import pytest
import torch

from faceaux.study import StudyConfig, run_study
from faceaux.study.experiments import EXPERIMENTS, build_arm
from faceaux.study.report import markdown, verdict, write_report

TINY = {
    "seeds": 2,
    "train_identities": 8,
    "images_per_identity": 4,
    "test_identities": 12,
    "epochs": 1,
    "batch_size": 16,
    "side_identities": 4,
    "side_steps": 2,
    "quiet": True,
    "threads": 1,
    "out": None,
}


@pytest.fixture(scope="module")
def tiny() -> dict:
    return run_study(StudyConfig(experiments=("multitask", "gnap"), **TINY))


def _strip_times(results: dict) -> dict:
    text = json.dumps(results["experiments"], default=float, sort_keys=True)
    parsed = json.loads(text)
    for experiment in parsed.values():
        for runs in experiment["runs"].values():
            for run in runs:
                run.pop("train_seconds")
    return parsed


def test_same_seed_same_results(tiny: dict) -> None:
    again = run_study(StudyConfig(experiments=("multitask", "gnap"), **TINY))
    assert _strip_times(again) == _strip_times(tiny)


def test_report_structure(tiny: dict, tmp_path) -> None:
    for name in ("multitask", "gnap"):
        result = tiny["experiments"][name]
        arms = [a.name for a in EXPERIMENTS[name].arms]
        assert list(result["runs"]) == arms
        assert all(len(runs) == 2 for runs in result["runs"].values())
        for arm in arms[1:]:
            d = result["summary"][arm]["difference"]
            assert d["n"] == 2
            assert all(math.isfinite(d[k]) for k in ("mean", "low", "high"))
            assert d["low"] <= d["mean"] <= d["high"]
        for runs in result["runs"].values():
            for run in runs:
                assert 0.0 <= run["tar@1e-3"] <= 1.0
                assert 0.0 <= run["eer"] <= 1.0
    assert tiny["experiments"]["gnap"]["runs"]["gnap"][0]["ff_tar@1e-3"] >= 0.0
    written = write_report(tiny, tmp_path)
    names = {p.name for p in written}
    assert {"results.json", "report.md"} <= names
    text = (tmp_path / "report.md").read_text()
    for experiment in ("multitask", "gnap"):
        assert EXPERIMENTS[experiment].title in text
        for arm in EXPERIMENTS[experiment].arms:
            assert f"| {arm.label} |" in text
    assert "95 % CI" in text
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["seeds"] == 2
    assert markdown(tiny).startswith("# faceaux study")


def test_verdict() -> None:
    assert verdict({"low": -0.1, "high": 0.2, "excludes_zero": False}) == (
        "no detectable difference"
    )
    assert verdict({"low": -0.3, "high": -0.1, "excludes_zero": True}) == "lower"


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_arm_builds_and_runs(name: str) -> None:
    from faceaux.models import FAN, StackedHourGlass

    side = {
        "fan": FAN(2, 68, num_features=16, input_size=64).freeze(),
        "parser": StackedHourGlass(2, 11, num_features=16, depth=3, input_size=64).freeze(),
    }
    experiment = EXPERIMENTS[name]
    size = 64 if experiment.condition == "misaligned" else 56
    for arm in experiment.arms:
        model, head = build_arm(arm, 5, side)
        model.eval()
        kwargs = {}
        if arm.options.get("heatmaps") == "ground_truth":
            kwargs["landmarks"] = torch.rand(2, 68, 2) * 50
        if arm.options.get("parts") == "ground_truth":
            kwargs["masks"] = torch.randint(0, 11, (2, size, size))
        with torch.no_grad():
            out = model.forward_aux(torch.rand(2, 3, size, size) * 2 - 1, **kwargs)
        assert out["embedding"].shape == (2, model.embedding_size)
        assert head(out["embedding"], torch.tensor([0, 1])).shape == (2, 5)
        if arm.options.get("pooling"):
            assert model.backbone.pooling == arm.options["pooling"]
        if arm.options.get("align"):
            assert model.align.transform == arm.options["align"]
        if arm.options.get("integration"):
            assert len(model.integration) == 4
        if arm.options.get("attributes"):
            assert out["attributes"].shape == (2, 7)


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="unknown"):
        run_study(StudyConfig(experiments=("nope",), **TINY))
    with pytest.raises(ValueError, match="seeds"):
        run_study(StudyConfig(experiments=("gnap",), **{**TINY, "seeds": 1}))


@pytest.mark.parametrize("clip", [1e-3, None])
def test_clip_grad_norm_bounds_every_step(clip: float | None) -> None:
    from faceaux.demo.train import Schedule, fit
    from faceaux.study import _render, _split

    cfg = StudyConfig(**TINY)
    train = _split(_render(cfg, "profile", 0, "train"))
    torch.manual_seed(0)
    model, head = build_arm(EXPERIMENTS["gnap"].arms[0], train.num_classes, {})
    params = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    before = torch.cat([p.detach().flatten().clone() for p in params])
    schedule = Schedule(
        epochs=1, batch_size=16, lr=1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=clip
    )
    history = fit(model, head, train, schedule, device=torch.device("cpu"), seed=0)
    moved = (torch.cat([p.detach().flatten() for p in params]) - before).norm()
    bound = len(history["losses"]) * 1e-3  # steps × lr × clip: the learning rate is at most 1
    if clip is None:
        assert moved > 10 * bound  # the bound is not met by chance
    else:
        assert moved <= bound * (1 + 1e-5)
