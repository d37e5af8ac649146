"""InsightFace verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin) read without unsafe pickles.

InsightFace ships its verification benchmarks as a pickle of the tuple ``(bins, issame_list)``:
``bins`` a list of 2N encoded JPEG/PNG images (pair i is images 2i and 2i+1), ``issame_list`` N
booleans. ``pickle.load`` on such a file would run any callable the file names, so we read it
with a restricted unpickler that builds only bytes, strings, lists, tuples, bools, numbers and
NumPy *boolean* arrays/scalars, and refuses every other global with ``pickle.UnpicklingError``.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np
import torch

__all__ = ["RestrictedUnpickler", "load_verification_bin", "save_verification_bin"]


def _check_bool_dtype(dtype: Any, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "b":
        raise pickle.UnpicklingError(
            f"{where}: only boolean NumPy data is allowed, the file asks for dtype {dtype}"
        )
    return dtype


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` inside the file: only ``_reconstruct`` may use it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError("numpy.ndarray may only appear as _reconstruct's argument")


def _dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    # numpy pickles a dtype as numpy.dtype('b1', False, True) followed by __setstate__.
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy.dtype: expected a type code string, got {spec!r}")
    return _check_bool_dtype(np.dtype(spec, align, copy), "numpy.dtype")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by __setstate__ with
    # (version, shape, dtype, fortran, raw bytes); the dtype there went through _dtype above.
    if subtype is not _NdarrayToken or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError("numpy _reconstruct: only plain ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, (0,), np.bool_)


def _scalar(dtype: Any, data: bytes = b"") -> np.generic:
    dtype = _check_bool_dtype(dtype, "numpy scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # numpy's protocol-5 pickles (numpy.core.numeric._frombuffer).
    dtype = _check_bool_dtype(dtype, "numpy _frombuffer")
    array = np.frombuffer(buffer, dtype=dtype).copy()
    return array.reshape(shape, order=order)


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes at protocol < 3 as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode: only encode(str, 'latin1') is allowed")
    return text.encode("latin1", errors)


_NUMPY_MODULES = (
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
)
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
}
for _module in _NUMPY_MODULES:
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _scalar
    _ALLOWED[(_module, "_frombuffer")] = _frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers, bytes and NumPy boolean data.

    Opcodes for ``bytes``/``str``/``list``/``tuple``/``dict``/``bool``/numbers need no global and
    load as usual. The only globals resolved are wrappers that validate their arguments:
    ``numpy.dtype`` (boolean kinds only), ``numpy.ndarray`` (only as the argument of numpy's
    ``_reconstruct``), ``_reconstruct``/``scalar``/``_frombuffer`` from ``numpy.core`` or
    ``numpy._core`` (boolean dtypes only), ``_codecs.encode(str, 'latin1')`` and ``bytearray``.
    Anything else raises ``pickle.UnpicklingError("<module>.<name> is not allowed")``.

    Examples:
        >>> import io, pickle
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(([b"a"], [True])))).load()
        ([b'a'], [True])
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(print))).load()
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: builtins.print is not allowed
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed") from None


def _decode(data: bytes, image_size: tuple[int, int] | None) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "decoding .bin images needs Pillow: pip install 'faceaux[demo]'"
        ) from error
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        if image_size is not None and image.size != (image_size[1], image_size[0]):
            image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def load_verification_bin(
    path: str | os.PathLike, image_size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an InsightFace verification ``.bin`` file safely and decode its images.

    The file is a pickle of ``(bins, issame_list)`` (written by Python 2 or 3, any protocol);
    it is read with :class:`RestrictedUnpickler`, so a file that tries to run code raises
    ``pickle.UnpicklingError`` naming the refused global instead. Images are decoded with Pillow
    (the ``demo`` extra) and, when ``image_size`` is given and differs, resized bilinearly.

    Args:
        path: the ``.bin`` file.
        image_size: optional ``(H, W)``; default keeps each file's size (all images must agree).

    Returns:
        ``images (2N, 3, H, W)`` uint8 (pair i is rows ``2i`` and ``2i + 1``) and
        ``issame (N,)`` bool.

    Shape:
        - images: ``(2N, 3, H, W)`` uint8
        - issame: ``(N,)`` bool

    Examples:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, "PNG")
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.bin")
        >>> save_verification_bin(path, [buf.getvalue()] * 2, [True])
        >>> images, issame = load_verification_bin(path)
        >>> images.shape, issame.tolist()
        (torch.Size([2, 3, 4, 4]), [True])
    """
    with open(path, "rb") as file:
        loaded = RestrictedUnpickler(file, encoding="bytes").load()
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise ValueError(f"{os.fspath(path)}: expected a pickled (bins, issame_list) pair")
    bins, issame_list = loaded
    issame = torch.as_tensor(np.asarray(issame_list, dtype=bool))
    if issame.ndim != 1 or len(bins) != 2 * issame.numel():
        raise ValueError(
            f"{os.fspath(path)}: expected 2N images for N pairs, received {len(bins)} images "
            f"and {issame.numel()} issame entries"
        )
    decoded = []
    for index, item in enumerate(bins):
        if isinstance(item, np.ndarray):
            item = item.tobytes()
        if not isinstance(item, (bytes, bytearray)):
            raise ValueError(
                f"{os.fspath(path)}: image {index} is {type(item).__name__}, expected bytes"
            )
        decoded.append(_decode(bytes(item), image_size))
    shapes = {array.shape for array in decoded}
    if len(shapes) != 1:
        raise ValueError(
            f"{os.fspath(path)}: images have different sizes {sorted(shapes)}; pass image_size"
        )
    images = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()
    return images, issame


def save_verification_bin(path: str | os.PathLike, bins: list[bytes], issame: Any) -> None:
    """Write ``(bins, issame_list)`` in InsightFace's ``.bin`` layout (encoded images, bools).

    Args:
        path: output file.
        bins: 2N encoded images (JPEG/PNG bytes); pair i is images 2i and 2i + 1.
        issame: N booleans.
    """
    issame_list = [bool(v) for v in issame]
    if len(bins) != 2 * len(issame_list):
        raise ValueError(f"bins: expected 2N = {2 * len(issame_list)} images, received {len(bins)}")
    with open(path, "wb") as file:
        pickle.dump(([bytes(b) for b in bins], issame_list), file, protocol=4)
