"""ImageFolderFaces: discovery order, labels, pixels, resizing, bad roots."""

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image", reason="decoding needs Pillow (the demo extra)")

from faceaux.data.folders import ImageFolderFaces  # noqa: E402


def test_folder_layout_labels_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for person, n in (("zoe", 2), ("adam", 3), ("solo", 1)):
        (tmp_path / person).mkdir()
        for i in range(n):
            a = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
            PIL.fromarray(a).save(tmp_path / person / f"{i}.png")
            arrays[(person, i)] = a
    (tmp_path / "adam" / "notes.txt").write_text("not an image")
    (tmp_path / "stray.png").write_bytes(b"")  # files at the top level are ignored
    data = ImageFolderFaces(tmp_path)
    assert data.classes == ["adam", "solo", "zoe"]
    assert data.labels.tolist() == [0, 0, 0, 1, 2, 2]
    sample = data[4]
    assert sample["label"].item() == 2
    expected = torch.from_numpy(arrays[("zoe", 0)]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(sample["image"], expected)
    resized = ImageFolderFaces(tmp_path, size=(8, 6), min_images=2)
    assert resized.classes == ["adam", "zoe"]
    assert resized[0]["image"].shape == (3, 8, 6)


def test_bad_root(tmp_path):
    with pytest.raises(ValueError, match="root"):
        ImageFolderFaces(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderFaces(tmp_path)


def test_undecodable_file_and_bad_arguments_are_named(tmp_path):
    (tmp_path / "ann").mkdir()
    PIL.new("RGB", (4, 4)).save(tmp_path / "ann" / "0.png")
    (tmp_path / "ann" / "1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = ImageFolderFaces(tmp_path)
    assert data[0]["image"].shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"1\.jpg: not a decodable image"):
        data[1]
    with pytest.raises(ValueError, match=r"^size: expected \(H, W\), two positive ints"):
        ImageFolderFaces(tmp_path, size=(0, 4))
    with pytest.raises(ValueError, match=r"^size: expected"):
        ImageFolderFaces(tmp_path, size=(4.5, 4))
    with pytest.raises(ValueError, match=r"^min_images: expected a positive int"):
        ImageFolderFaces(tmp_path, min_images=0)
    with pytest.raises(ValueError, match=r"^root: expected a path"):
        ImageFolderFaces(123)
