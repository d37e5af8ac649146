"""faceaux demo: the --fast run trains every variant and reports finite metrics; flip tables."""

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib", reason="the demo's ROC plot needs the demo extra")
pytest.importorskip("tqdm", reason="the demo's progress bars need the demo extra")

from faceaux import demo
from faceaux.data.synthetic import SyntheticFaces
from faceaux.demo.data import flip_batch


def test_fast_demo_trains_every_variant(tmp_path, capsys):
    assert demo.main(["--fast", "--quiet", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| variant | final map | extra params |" in printed
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    curves = json.loads((tmp_path / "roc.json").read_text())
    assert set(curves) == set(demo.VARIANTS)
    assert [r["variant"] for r in results] == list(demo.VARIANTS)
    for r in results:
        assert r["loss_decreased"], r["variant"]
        assert r["last_loss"] < r["first_loss"]
        for key in ("accuracy", "accuracy_std", "tar_at_far_1e-2", "eer", "auc"):
            assert math.isfinite(r[key]), (r["variant"], key)
        assert 0.0 <= r["eer"] <= 1.0
        assert r["train_seconds"] > 0
        assert r["variant"] in printed
        assert r["final_map"] == "7×7"  # GNAP pools a 7×7 map, the papers' scale
    baseline = results[0]
    assert baseline["extra_params"] == 0
    assert baseline["accuracy"] > 0.6  # far above chance even in the tiny run
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert "| baseline |" in (tmp_path / "results.md").read_text()


def test_flip_batch_mirrors_ground_truth():
    faces = SyntheticFaces(4, 3, size=(64, 64), seed=1)
    batch = {
        "image": faces.images.float() / 255,
        "landmarks": faces.landmarks,
        "parsing": faces.parsing.long(),
    }
    flipped = flip_batch(batch)
    twice = flip_batch(flipped)
    torch.testing.assert_close(twice["landmarks"], batch["landmarks"])
    assert torch.equal(twice["parsing"], batch["parsing"])
    n = len(faces)
    # After the flip, the image-left eye landmarks (36-41) sit on the image-left eye label (4).
    for points, label in ((range(36, 42), 4), (range(42, 48), 5)):
        centre = flipped["landmarks"][:, list(points)].mean(1).round().long().clamp(0, 63)
        got = flipped["parsing"][torch.arange(n), centre[:, 1], centre[:, 0]]
        assert (got == label).float().mean() > 0.8
    # Jaw point 0 is on the image-left side after the flip, as before it.
    assert (flipped["landmarks"][:, 0, 0] < flipped["landmarks"][:, 16, 0]).all()


def test_bad_variant_and_bin_without_training_folder(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        demo.build_variant("nope", 56, 3)
    cfg = demo.DemoConfig(**demo.FAST)
    cfg.variants = ("baseline",)
    cfg.data = str(tmp_path / "lfw.bin")
    cfg.quiet = True
    with pytest.raises(ValueError, match="--train-data"):
        demo.run_demo(cfg)


def test_demo_on_an_image_folder(tmp_path):
    """--data DIR: the same path on user crops; ground-truth variants are skipped."""
    from PIL import Image

    faces = SyntheticFaces(12, 4, size=(56, 56), seed=2)
    for i in range(len(faces)):
        folder = tmp_path / "crops" / f"id{int(faces.labels[i]):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(faces.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    cfg = demo.DemoConfig(**{**demo.FAST, "epochs": 1, "n_pairs": 40})
    cfg.variants = ("baseline", "parts")
    cfg.data = str(tmp_path / "crops")
    cfg.quiet = True
    rows = demo.run_demo(cfg)
    assert [r["variant"] for r in rows] == ["baseline"]
    assert math.isfinite(rows[0]["accuracy"])
