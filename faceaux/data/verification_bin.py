"""InsightFace verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin) read without unsafe pickles.

InsightFace ships its verification benchmarks as a pickle of the tuple ``(bins, issame_list)``:
``bins`` a list of 2N encoded JPEG/PNG images (pair i is images 2i and 2i+1), ``issame_list`` N
booleans. ``pickle.load`` on such a file would run any callable the file names, so we read it
with a restricted unpickler that builds only bytes, strings, lists, tuples, bools, numbers and
NumPy *boolean* arrays/scalars, and refuses every other global with ``pickle.UnpicklingError``.

A small file must not make the reader allocate a lot either. Before unpickling, the opcode
stream is walked (``pickletools.genops``): every length it declares must fit in the bytes that
remain, and every memo index must be below the number of opcodes (CPython's unpickler sizes its
memo table by the largest index it sees: a 12-byte file could otherwise claim a gigabyte).
``bytearray`` is only built from bytes, never from a size. So what the unpickler allocates is
bounded by a small multiple of the file's size; so are the decoded images (each image's pixel
count is checked against its encoded size before decoding, an image listed several times is
decoded once, and the decoded total is bounded by the file's size).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
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


def _bytearray(*args: Any) -> bytearray:
    # bytearray(bytes) at protocols 3–4, bytearray(str, 'latin-1') at 0–2 (protocol 5 has its own
    # opcode); never bytearray(n), which would allocate n bytes that the file does not contain.
    if len(args) == 0:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin-1")
    raise pickle.UnpicklingError("bytearray: only bytearray(bytes) is allowed")


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
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
}
for _module in _NUMPY_MODULES:
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _scalar
    _ALLOWED[(_module, "_frombuffer")] = _frombuffer


_MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT")


def _check_stream(data: bytes) -> None:
    """Walk the opcodes: declared lengths fit the data, memo indices stay below the op count.

    ``pickletools.genops`` reads every counted argument from the data itself, so a length that
    runs past the end raises ``ValueError`` instead of allocating; a truncated or empty stream
    raises ``ValueError`` too.
    """
    ops = list(pickletools.genops(data))
    for opcode, arg, position in ops:
        if opcode.name in _MEMO_OPCODES and not 0 <= arg < len(ops):
            raise ValueError(
                f"memo index {arg} at byte {position} exceeds the stream's {len(ops)} opcodes"
            )
        if opcode.name == "FRAME" and arg > len(data):
            raise ValueError(f"frame of {arg} bytes at byte {position} exceeds the data")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers, bytes and NumPy boolean data.

    Opcodes for ``bytes``/``str``/``list``/``tuple``/``dict``/``bool``/numbers need no global and
    load as usual. The only globals resolved are wrappers that validate their arguments:
    ``numpy.dtype`` (boolean kinds only), ``numpy.ndarray`` (only as the argument of numpy's
    ``_reconstruct``), ``_reconstruct``/``scalar``/``_frombuffer`` from ``numpy.core`` or
    ``numpy._core`` (boolean dtypes only), ``_codecs.encode(str, 'latin1')`` and
    ``bytearray(bytes)``. Anything else raises
    ``pickle.UnpicklingError("<module>.<name> is not allowed")``.

    The whole stream is read at construction and its opcodes checked (see the module
    docstring): a declared length past the end, a memo index beyond the opcode count, or a
    truncated stream raise ``pickle.UnpicklingError`` before anything is built.

    Examples:
        >>> import io, pickle
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(([b"a"], [True])))).load()
        ([b'a'], [True])
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(print))).load()
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: builtins.print is not allowed
    """

    def __init__(self, file: Any, **kwargs: Any) -> None:
        data = file.read()
        try:
            _check_stream(data)
        except ValueError as error:
            raise pickle.UnpicklingError(f"malformed pickle: {error}") from None
        super().__init__(io.BytesIO(data), **kwargs)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed") from None


#: An image may decode to at most this many bytes of RGB per encoded byte (plus 16 MiB): far
#: above real JPEG/PNG face crops (ratios of 10–400), far below a decompression bomb's.
_MAX_EXPANSION = 2048


def _decode(data: bytes, image_size: tuple[int, int] | None, where: str) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "decoding .bin images needs Pillow: pip install 'faceaux[demo]'"
        ) from error
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if 3 * width * height > _MAX_EXPANSION * len(data) + 2**24:
                raise ValueError(
                    f"{where}: a {len(data)}-byte image claims {width}×{height} pixels; refused "
                    "(decompression bomb)"
                )
            image = image.convert("RGB")
            if image_size is not None and image.size != (image_size[1], image_size[0]):
                image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: not a decodable image ({error})") from None


def _issame(issame_list: Any, where: str) -> torch.Tensor:
    """N booleans (Python/NumPy bools, or the ints 0 and 1), never strings or other values."""
    if isinstance(issame_list, np.ndarray):
        array = issame_list
    elif isinstance(issame_list, (list, tuple)):
        kinds = (bool, np.bool_, int, np.integer)
        if not all(isinstance(v, kinds) for v in issame_list):
            bad = next(v for v in issame_list if not isinstance(v, kinds))
            raise ValueError(
                f"{where}: issame must hold booleans, received a {type(bad).__name__} ({bad!r:.40})"
            )
        array = np.asarray(issame_list, dtype=np.int64 if issame_list else bool)
    else:
        raise ValueError(
            f"{where}: issame must be a list of booleans, received {type(issame_list).__name__}"
        )
    if array.ndim != 1 or array.dtype.kind not in "biu" or not np.isin(array, (0, 1)).all():
        raise ValueError(
            f"{where}: issame must be N booleans (or 0/1), received dtype {array.dtype}, shape "
            f"{array.shape}"
        )
    return torch.as_tensor(array.astype(bool))


def load_verification_bin(
    path: str | os.PathLike, image_size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an InsightFace verification ``.bin`` file safely and decode its images.

    The file is a pickle of ``(bins, issame_list)`` (written by Python 2 or 3, any protocol);
    it is read with :class:`RestrictedUnpickler`, so a file that tries to run code raises
    ``pickle.UnpicklingError`` naming the refused global instead. Images are decoded with Pillow
    (the ``demo`` extra) and, when ``image_size`` is given and differs, resized bilinearly.

    Bad files raise ``ValueError`` naming the file: empty or truncated, not a ``(bins,
    issame_list)`` pair, no pairs, an image that does not decode, images (or references to one
    image) whose decoded pixels would exceed 2048× the file's size, ``issame`` entries that are
    not booleans (a string ``"False"`` would otherwise read as true). A file that names a
    refused global raises ``pickle.UnpicklingError``.

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
    where = os.fspath(path)
    if image_size is not None:
        valid = isinstance(image_size, (tuple, list)) and len(image_size) == 2
        if not valid or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size
        ):
            raise ValueError(
                f"image_size: expected (H, W), two positive ints, received {image_size!r}"
            )
    with open(path, "rb") as file:
        try:
            loaded = RestrictedUnpickler(file, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            if str(error).startswith("malformed pickle"):
                raise ValueError(f"{where}: empty, truncated or not a pickle ({error})") from None
            raise
        except (EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise ValueError(f"{where}: not a readable pickle ({error})") from None
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise ValueError(f"{where}: expected a pickled (bins, issame_list) pair")
    bins, issame_list = loaded
    if not isinstance(bins, (list, tuple)):
        raise ValueError(f"{where}: bins must be a list of images, received {type(bins).__name__}")
    issame = _issame(issame_list, where)
    if len(bins) != 2 * issame.numel():
        raise ValueError(
            f"{where}: expected 2N images for N pairs, received {len(bins)} images "
            f"and {issame.numel()} issame entries"
        )
    if issame.numel() == 0:
        raise ValueError(f"{where}: expected at least one pair, received none")
    # An image listed several times (by memo reference) is decoded once, and the decoded total
    # is bounded by the file's size, so references cannot multiply a small file into a huge one.
    budget = _MAX_EXPANSION * os.path.getsize(path) + 2**24
    decoded, cache = [], {}
    for index, item in enumerate(bins):
        if id(item) not in cache:
            data = item.tobytes() if isinstance(item, np.ndarray) else item
            if not isinstance(data, (bytes, bytearray)):
                raise ValueError(f"{where}: image {index} is {type(item).__name__}, expected bytes")
            cache[id(item)] = _decode(bytes(data), image_size, f"{where}: image {index}")
        decoded.append(cache[id(item)])
        budget -= decoded[-1].nbytes
        if budget < 0:
            raise ValueError(
                f"{where}: the decoded images would take more than {_MAX_EXPANSION}× the file's "
                f"size (image {index} of {len(bins)}); refused"
            )
    shapes = {array.shape for array in decoded}
    if len(shapes) != 1:
        raise ValueError(f"{where}: images have different sizes {sorted(shapes)}; pass image_size")
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
