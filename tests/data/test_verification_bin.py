"""load_verification_bin: round trip of a .bin the test writes, and refusal of unsafe pickles."""

import io
import os
import pickle
import struct
import subprocess
import sys
import zlib

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


# --- robustness (issue 13): bad files and allocations bounded by the file size ------------------


def _write(tmp_path, data: bytes):
    path = tmp_path / "set.bin"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"", r"empty, truncated or not a pickle"),
        (pickle.dumps(([b"a", b"b"], [True]), protocol=4)[:-6], r"empty, truncated"),
        (pickle.dumps(None), r"expected a pickled \(bins, issame_list\) pair"),
        (pickle.dumps(([], [])), r"expected at least one pair"),
        (pickle.dumps(([b"x", b"y"], ["False"])), r"issame must hold booleans, received a str"),
        (pickle.dumps(([b"x", b"y"], [2])), r"issame must be N booleans \(or 0/1\)"),
        (pickle.dumps((b"xy", [True])), r"bins must be a list of images"),
    ],
    ids=["empty", "truncated", "not_a_pair", "no_pairs", "string_issame", "int_issame", "bytes"],
)
def test_bad_files_raise_value_error_naming_the_file(tmp_path, data, pattern):
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=rf"^{tmp_path}.*{pattern}"):
        load_verification_bin(path)


def test_undecodable_image_is_named(tmp_path):
    path = _write(tmp_path, pickle.dumps(([_png(_images(1)[0]), b"\x89PNG broken"], [True])))
    with pytest.raises(ValueError, match=r"image 1: not a decodable image"):
        load_verification_bin(path)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and header claiming ``width × height`` RGB pixels, and no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    # 45 bytes claiming 75 MB of RGB (under Pillow's own 89-megapixel bomb warning)
    bomb = _png_header(5_000, 5_000)
    path = _write(tmp_path, pickle.dumps(([bomb, _png(_images(1)[0])], [True])))
    with pytest.raises(ValueError, match=r"image 0: a 45-byte image claims 5000×5000 pixels"):
        load_verification_bin(path)
    path = _write(tmp_path, pickle.dumps(([_png_header(60_000, 60_000), bomb], [True])))
    with pytest.raises(ValueError, match=r"image 0: not a decodable image .*decompression bomb"):
        load_verification_bin(path)  # (Pillow's own limit, also a ValueError naming the file)


def test_references_to_one_image_cannot_multiply_the_decoded_size(tmp_path):
    image = _png(_images(1, h=64, w=64)[0])  # ~12 KB of random pixels, decodes to 12 KB
    bins = [image] * 4000  # pickled once, then 3,999 two-byte memo references
    path = _write(tmp_path, pickle.dumps((bins, [True] * 2000), protocol=4))
    assert path.stat().st_size < 30_000
    images, _ = load_verification_bin(path)  # 4,000 × 12 KB = 49 MB: within 2048× the file
    assert images.shape == (4000, 3, 64, 64)
    path = _write(tmp_path, pickle.dumps(([image] * 40_000, [True] * 20_000), protocol=4))
    with pytest.raises(ValueError, match=r"decoded images would take more than 2048×"):
        load_verification_bin(path)


ATTACKS = {
    # LONG_BINPUT with index 2**26: CPython sizes its memo table by it (1 GiB of pointers)
    "memo_index": b"\x80\x04N" + b"r" + struct.pack("<I", 2**26) + b".",
    # bytearray(2**30) through the allowed global: 1 GiB of zeros from 39 bytes
    "bytearray_size": b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00@\x85R.",
    # a 1 GiB bytes object announced, 3 bytes present
    "bytes_length": b"\x80\x04\x8e" + struct.pack("<Q", 2**30) + b"abc.",
    # a 1 GiB frame announced
    "frame_length": b"\x80\x04\x95" + struct.pack("<Q", 2**30) + b"N.",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_tiny_files_cannot_make_the_reader_allocate_much(tmp_path, name):
    """In a fresh process, so that the peak memory is this load's alone."""
    path = _write(tmp_path, ATTACKS[name])
    code = (
        "import resource, sys\n"
        "from faceaux.data.verification_bin import load_verification_bin\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    load_verification_bin({str(path)!r})\n"
        "except Exception as error:\n"
        "    print(type(error).__name__)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    error, grown_kib = result.stdout.split()
    assert error in ("ValueError", "UnpicklingError"), result.stdout
    assert int(grown_kib) < 64 * 1024, f"{name}: peak memory grew by {grown_kib} KiB"
