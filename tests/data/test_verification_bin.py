"""load_verification_bin: round trip of a .bin the test writes, and refusal of unsafe pickles."""

import io
import os
import pickle

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image", reason="decoding needs Pillow (the demo extra)")

from faceaux.data.verification_bin import (  # noqa: E402
    RestrictedUnpickler,
    load_verification_bin,
    save_verification_bin,
)


def _png(array):
    buf = io.BytesIO()
    PIL.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _images(n, h=6, w=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_round_trip_pixels_and_issame(tmp_path):
    arrays = _images(6)
    path = tmp_path / "set.bin"
    save_verification_bin(path, [_png(a) for a in arrays], [True, False, True])
    images, issame = load_verification_bin(path)
    assert images.dtype == torch.uint8
    assert images.shape == (6, 3, 6, 5)
    assert torch.equal(images, torch.from_numpy(arrays).permute(0, 3, 1, 2))
    assert issame.tolist() == [True, False, True]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_insightface_layouts_with_numpy_bools(tmp_path, protocol):
    """Files written by other tools: numpy bool array / numpy bool scalars, old protocols."""
    arrays = _images(4)
    bins = [_png(a) for a in arrays]
    for issame in (np.array([True, False]), [np.bool_(False), np.bool_(True)]):
        path = tmp_path / f"p{protocol}.bin"
        with open(path, "wb") as f:
            pickle.dump((bins, issame), f, protocol=protocol)
        images, got = load_verification_bin(path, image_size=(3, 4))
        assert images.shape == (4, 3, 3, 4)
        assert got.tolist() == [bool(v) for v in issame]


class _Evil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


class _SystemCall:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump(([b"x", b"y"], [_Evil()]), f)
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval is not allowed"):
        load_verification_bin(path)
    with open(path, "wb") as f:
        pickle.dump(_SystemCall(), f)
    with pytest.raises(pickle.UnpicklingError, match=r"(posix|os|nt)\.system is not allowed"):
        load_verification_bin(path)


def test_non_bool_numpy_and_ndarray_abuse_are_refused():
    for payload in (np.array([1.0, 2.0]), np.array([object()], dtype=object), np.float64(1.0)):
        with pytest.raises(pickle.UnpicklingError, match="only boolean"):
            RestrictedUnpickler(io.BytesIO(pickle.dumps(payload))).load()

    class _DirectNdarray:
        def __reduce__(self):
            return (np.ndarray, ((1,), "O"))

    with pytest.raises(pickle.UnpicklingError, match="ndarray"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(_DirectNdarray()))).load()


def test_bad_layout_gives_value_error(tmp_path):
    path = tmp_path / "bad.bin"
    with open(path, "wb") as f:
        pickle.dump(([b"a"], [True]), f)
    with pytest.raises(ValueError, match="2N images"):
        load_verification_bin(path)
