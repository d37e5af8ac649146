"""MXNet RecordIO image records (InsightFace's ``train.rec`` + ``train.idx``) without mxnet.

The field's training sets (MS1MV2, MS1MV3, Glint360K, WebFace) are distributed in this format.
Everything here follows the format as mxnet and its ``dmlc-core`` I/O layer write it:

**Framing** (``dmlc::RecordIOWriter``). A file is a sequence of *parts*, each the little-endian
``uint32`` magic ``0xced7230a``, a ``uint32`` length word ``lrec = cflag << 29 | length``, then
``length`` bytes of data, zero-padded to a multiple of 4. ``cflag`` is 0 for a whole record,
1/2/3 for the first/middle/last part of a record that was split. The writer splits a record
wherever its data holds the magic at a 4-byte-aligned offset: that magic is dropped and the
reader puts it back between the parts (so the magic never appears aligned inside a part, and
a reader that lost its place can resynchronise on it). Records are limited to ``2**29`` bytes.

**Index** (``mxnet.recordio.MXIndexedRecordIO``). A text file with one line per record,
``"<key>\\t<byte offset of the record's first part>\\n"``.

**Image record** (``mxnet.recordio.pack``). The 24-byte header ``struct.pack("<IfQQ", flag,
label, id, id2)``; when ``flag > 0`` it is followed by ``flag`` float32 labels (and the header's
``label`` field is 0); then the encoded image (JPEG or PNG).

**InsightFace's layout.** Record 0, when its ``flag > 0``, is a header-only record whose labels
``(a, b)`` say that keys ``1 … a − 1`` are the images and keys ``a … b − 1`` are one
header-only record per identity holding that identity's image-key range ``[start, stop)``. An
image's label is a scalar (the identity) or an array whose first value is the identity. Sets
without that record 0 use every key of the index as an image.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "HEADER_FORMAT",
    "HEADER_SIZE",
    "MAGIC",
    "RecordFaces",
    "RecordWriter",
    "frame_record",
    "pack_folder",
    "pack_image_record",
    "unpack_image_record",
]

MAGIC = 0xCED7230A
"""The ``uint32`` that opens every part of a RecordIO record (little-endian on disk).

Shape:
    A Python ``int``; no tensors.
"""

HEADER_FORMAT = "<IfQQ"
"""``struct`` format of the image-record header: flag (uint32), label (float32), id, id2 (uint64).

Shape:
    A ``str``; the header is :data:`HEADER_SIZE` = 24 bytes.
"""

HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
"""Size in bytes of the image-record header (24).

Shape:
    A Python ``int``; no tensors.
"""

_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_MAX_RECORD = 1 << _LENGTH_BITS
_DECODERS = ("auto", "pillow", "torchvision")


def _frame_part(cflag: int, data: bytes | memoryview) -> bytes:
    return _MAGIC_BYTES + struct.pack("<I", (cflag << _LENGTH_BITS) | len(data)) + bytes(data)


def frame_record(payload: bytes) -> bytes:
    """Frame one record as ``dmlc::RecordIOWriter`` writes it: split on aligned magics, padded.

    Args:
        payload: the record's bytes (an image record from :func:`pack_image_record`, or any).

    Returns:
        The bytes to append to a ``.rec`` file; their length is a multiple of 4.

    Raises:
        ValueError: ``payload`` is ``2**29`` bytes or longer (the format's limit).

    Shape:
        No tensors: ``bytes`` in, ``bytes`` out.

    Examples:
        >>> frame_record(b"abc").hex(" ")  # magic, length 3 with cflag 0, data, one pad byte
        '0a 23 d7 ce 03 00 00 00 61 62 63 00'
        >>> len(frame_record(b"1234" + MAGIC.to_bytes(4, "little") + b"5678"))  # two parts
        24
    """
    if len(payload) >= _MAX_RECORD:
        raise ValueError(
            f"payload: RecordIO records must be shorter than 2**29 bytes, received {len(payload)}"
        )
    view = memoryview(payload)
    aligned = len(payload) - len(payload) % 4
    words = np.frombuffer(view[:aligned], dtype="<u4")
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    parts, start = [], 0
    for cut in cuts:
        parts.append(_frame_part(1 if start == 0 else 2, view[start:cut]))
        start = cut + 4
    parts.append(_frame_part(3 if cuts else 0, view[start:]))
    padding = b"\0" * (-len(payload) % 4)
    return b"".join(parts) + padding


def pack_image_record(
    label: float | Sequence[float] | np.ndarray, image: bytes, id: int = 0, id2: int = 0
) -> bytes:
    """An image record as ``mxnet.recordio.pack``: the 24-byte header, extra labels, the image.

    A scalar ``label`` goes in the header with ``flag = 0``; a sequence of labels is written as
    ``flag = len(label)`` float32 values after the header (whose label field is then 0).

    Args:
        label: the identity (a number) or an array of float labels (first = identity).
        image: the encoded image (JPEG/PNG bytes), or ``b""`` for a header-only record.
        id: the record's id (InsightFace uses the record's key).
        id2: the id's high word (0).

    Shape:
        No tensors: returns ``bytes``, ``24 + 4·flag + len(image)`` long.

    Examples:
        >>> record = pack_image_record(7, b"jpeg-bytes", id=3)
        >>> unpack_image_record(record)
        (0, 7.0, 3, 0, b'jpeg-bytes')
        >>> unpack_image_record(pack_image_record([5, 9], b""))[:2]
        (2, (5.0, 9.0))
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        header = struct.pack(HEADER_FORMAT, 0, float(label), id, id2)
        return header + bytes(image)
    labels = np.asarray(label, dtype="<f4").reshape(-1)
    header = struct.pack(HEADER_FORMAT, labels.size, 0.0, id, id2)
    return header + labels.tobytes() + bytes(image)


def unpack_image_record(
    record: bytes,
) -> tuple[int, float | tuple[float, ...], int, int, bytes]:
    """Split an image record into ``(flag, label, id, id2, image)`` as ``mxnet.recordio.unpack``.

    ``label`` is the header's float when ``flag == 0``, else the tuple of the ``flag`` float32
    labels that follow the header.

    Raises:
        ValueError: the record is shorter than its header says.

    Shape:
        No tensors: ``bytes`` in; the image is returned as ``bytes``.
    """
    if len(record) < HEADER_SIZE:
        raise ValueError(
            f"record: expected at least the {HEADER_SIZE}-byte header, received {len(record)} bytes"
        )
    flag, label, record_id, record_id2 = struct.unpack_from(HEADER_FORMAT, record)
    body = record[HEADER_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise ValueError(
                f"record: the header announces {flag} float32 labels ({4 * flag} bytes), but only "
                f"{len(body)} bytes follow it"
            )
        labels = tuple(float(v) for v in np.frombuffer(body, dtype="<f4", count=flag))
        return flag, labels, record_id, record_id2, bytes(body[4 * flag :])
    return flag, float(label), record_id, record_id2, bytes(body)


class RecordWriter:
    """Writes an indexed RecordIO pair ``<prefix>.rec`` + ``<prefix>.idx``, as mxnet does.

    Each :meth:`write` appends one framed record (:func:`frame_record`) and the index line
    ``"<key>\\t<offset>\\n"``. Use it as a context manager, or call :meth:`close`.

    Args:
        prefix: output path without extension (``"data/train"`` writes ``data/train.rec`` and
            ``data/train.idx``); a path ending in ``.rec`` is accepted too.

    Shape:
        No tensors: writes bytes.

    Examples:
        >>> import tempfile
        >>> prefix = os.path.join(tempfile.mkdtemp(), "tiny")
        >>> with RecordWriter(prefix) as writer:
        ...     writer.write(0, b"first")
        ...     writer.write(1, b"second")
        >>> open(prefix + ".idx").read()
        '0\\t0\\n1\\t16\\n'
    """

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.rec_path, self.idx_path = _paths(prefix)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 - closed in close()
        self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")  # noqa: SIM115
        self._offset = 0

    def write(self, key: int, payload: bytes) -> None:
        """Append one record under ``key`` (its index line holds its byte offset)."""
        framed = frame_record(payload)
        self._rec.write(framed)
        self._idx.write(f"{int(key)}\t{self._offset}\n")
        self._offset += len(framed)

    def close(self) -> None:
        """Flush and close both files."""
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(rec, idx)`` paths for a prefix, a ``.rec`` file or a folder holding ``train.rec``."""
    path = Path(path)
    if path.is_dir():
        path = path / "train.rec"
    if path.suffix in (".rec", ".idx"):
        return path.with_suffix(".rec"), path.with_suffix(".idx")
    return Path(f"{path}.rec"), Path(f"{path}.idx")


def pack_folder(
    src_dir: str | os.PathLike,
    out_prefix: str | os.PathLike,
    min_images: int = 1,
    progress: bool = False,
) -> dict[str, int]:
    """Pack an image folder (one sub-folder per identity) into InsightFace's RecordIO layout.

    Identities and images are listed exactly as :class:`~faceaux.ImageFolderFaces` lists them
    (sorted folders labelled ``0 … K − 1``, sorted files), so both datasets give the same samples
    in the same order. The image files' bytes are stored unchanged (no re-encoding: the round
    trip is byte-exact). Written records: key 0, the header-only record with labels
    ``(N + 1, N + 1 + K)``; keys ``1 … N``, the images with their identity as a scalar label and
    their key as ``id``; keys ``N + 1 … N + K``, one header-only record per identity with labels
    ``(first key, last key + 1)`` of its images.

    Args:
        src_dir: the image folder.
        out_prefix: output path without extension (``out/train`` → ``out/train.rec``/``.idx``).
        min_images: identities with fewer images are skipped.
        progress: show a tqdm bar (the ``train`` extra).

    Returns:
        ``{"images": N, "identities": K, "bytes": size of the .rec file}``.

    Shape:
        No tensors: reads and writes files.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for person in ("ann", "bob"):
        ...     (root / person).mkdir()
        ...     Image.new("RGB", (8, 8)).save(root / person / "0.png")
        >>> pack_folder(root, root / "packed" / "train")["images"]
        2
        >>> RecordFaces(root / "packed" / "train").labels.tolist()
        [0, 1]
    """
    from faceaux.data.folders import ImageFolderFaces

    folder = ImageFolderFaces(src_dir, min_images=min_images)
    samples, num_images = folder.samples, len(folder.samples)
    num_identities = len(folder.classes)
    first_identity_key = num_images + 1
    ranges = np.zeros((num_identities, 2), dtype=np.int64)
    items: Iterable = enumerate(samples, start=1)
    if progress:
        items = _tqdm(items, total=num_images, desc="pack")
    with RecordWriter(out_prefix) as writer:
        writer.write(
            0, pack_image_record([first_identity_key, first_identity_key + num_identities], b"")
        )
        for key, (path, label) in items:
            writer.write(key, pack_image_record(label, Path(path).read_bytes(), id=key))
            if ranges[label, 0] == 0:
                ranges[label, 0] = key
            ranges[label, 1] = key + 1
        for identity, (start, stop) in enumerate(ranges.tolist()):
            key = first_identity_key + identity
            writer.write(key, pack_image_record([start, stop], b"", id=key))
    return {
        "images": num_images,
        "identities": num_identities,
        "bytes": writer.rec_path.stat().st_size,
    }


def _tqdm(iterable: Iterable, **kwargs) -> Iterable:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("progress bars need tqdm: pip install 'faceaux[train]'") from error
    return tqdm(iterable, **kwargs)


class RecordFaces(Dataset):
    """Face crops stored in an MXNet RecordIO pair (``train.rec`` + ``train.idx``), no mxnet.

    Random access through the ``.idx`` index; records are read with the framing, header and
    InsightFace layout described in the module docstring (multi-part records are re-joined; a
    record 0 with ``flag > 0`` selects the image keys; an array label's first value is the
    identity). Images are decoded when a sample is read, with ``torchvision.io`` when it is
    installed (``decoder="auto"``) or Pillow (the ``train`` extra), converted to RGB and, if
    ``size`` is given, resized bilinearly.

    Safe with ``DataLoader`` workers: the index is held in NumPy arrays (shared copy-on-write
    after ``fork``) and every process opens its own file handle on first use. A record that is
    truncated, lacks the magic, has an impossible header or does not decode raises
    ``ValueError`` naming the sample index, its key and its byte offset.

    Args:
        path: ``<prefix>.rec`` (the ``.idx`` beside it), the prefix itself, or a folder holding
            ``train.rec`` and ``train.idx`` (InsightFace's layout).
        size: optional ``(H, W)`` to resize every image to.
        decoder: ``"auto"``, ``"pillow"`` or ``"torchvision"``.

    Attributes:
        keys: ``(N,)`` int64 NumPy array, the record key of every sample.
        num_classes: number of identities: from record 0 when present, else 1 + the largest
            label (which reads every header once).

    Shape:
        ``dataset[i]`` is a dict: ``image (3, H, W)`` float in [0, 1] and ``label ()`` int64 —
        the same as :class:`~faceaux.ImageFolderFaces`. ``labels (N,)`` (read from every
        header on first access, then cached) holds every sample's label.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> buffer = io.BytesIO(); Image.new("RGB", (6, 4), (255, 0, 0)).save(buffer, "PNG")
        >>> prefix = os.path.join(tempfile.mkdtemp(), "train")
        >>> with RecordWriter(prefix) as writer:
        ...     writer.write(0, pack_image_record([3, 5], b""))  # images are keys 1, 2
        ...     writer.write(1, pack_image_record(0, buffer.getvalue(), id=1))
        ...     writer.write(2, pack_image_record([1, 0.5], buffer.getvalue(), id=2))
        ...     writer.write(3, pack_image_record([1, 2], b"", id=3))  # identity 0: key 1
        ...     writer.write(4, pack_image_record([2, 3], b"", id=4))  # identity 1: key 2
        >>> data = RecordFaces(prefix + ".rec", decoder="pillow")
        >>> len(data), data.num_classes, data[1]["label"].item(), data[1]["image"].shape
        (2, 2, 1, torch.Size([3, 4, 6]))
        >>> data[0]["image"][:, 0, 0].tolist()
        [1.0, 0.0, 0.0]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        size: Sequence[int] | None = None,
        decoder: str = "auto",
    ) -> None:
        if decoder not in _DECODERS:
            raise ValueError(f"decoder: expected one of {_DECODERS}, received {decoder!r}")
        self.rec_path, self.idx_path = _paths(path)
        for file in (self.rec_path, self.idx_path):
            if not file.is_file():
                raise ValueError(
                    f"path: expected a RecordIO pair <prefix>.rec + <prefix>.idx (or a folder "
                    f"holding train.rec and train.idx), but {os.fspath(file)!r} does not exist"
                )
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.decoder = _resolve_decoder(decoder)
        self._file: io.BufferedReader | None = None
        self._pid: int | None = None
        all_keys, all_offsets = _read_index(self.idx_path)
        order = np.argsort(all_keys, kind="stable")
        self._sorted_keys, self._sorted_offsets = all_keys[order], all_offsets[order]
        self.header0: tuple[int, int] | None = None
        if self._has_key(0):
            flag, label, *_ = unpack_image_record(self._read_record(self._offset_of(0), "key 0"))
            if flag > 0 and len(label) >= 2:
                self.header0 = (int(label[0]), int(label[1]))
        if self.header0 is not None:
            keys = np.arange(1, self.header0[0], dtype=np.int64)
        else:
            keys = all_keys
        self.keys = keys
        self.offsets = self._offsets_for(keys)
        if keys.size == 0:
            raise ValueError(f"path: {os.fspath(self.rec_path)!r} holds no image records")
        self._labels: torch.Tensor | None = None

    # -- index -----------------------------------------------------------------------------
    def _has_key(self, key: int) -> bool:
        position = int(np.searchsorted(self._sorted_keys, key))
        return position < self._sorted_keys.size and int(self._sorted_keys[position]) == key

    def _offsets_for(self, keys: np.ndarray) -> np.ndarray:
        position = np.searchsorted(self._sorted_keys, keys)
        position = np.minimum(position, self._sorted_keys.size - 1)
        missing = self._sorted_keys[position] != keys
        if missing.any():
            absent = keys[missing][:5].tolist()
            raise ValueError(
                f"path: {os.fspath(self.idx_path)!r} has no entry for image keys {absent} "
                f"({int(missing.sum())} missing in all; record 0 says the images are keys "
                f"1 … {self.header0[0] - 1 if self.header0 else '?'})"
            )
        return self._sorted_offsets[position]

    def _offset_of(self, key: int) -> int:
        return int(self._offsets_for(np.array([key], dtype=np.int64))[0])

    # -- reading ---------------------------------------------------------------------------
    def _handle(self) -> io.BufferedReader:
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.rec_path, "rb")  # noqa: SIM115 - one handle per process
            self._pid = os.getpid()
        return self._file

    def _read_record(self, offset: int, where: str) -> bytes:
        """Read and re-join the (possibly multi-part) record at ``offset``."""
        file = self._handle()
        file.seek(offset)
        chunks: list[bytes] = []
        position, first = offset, True
        while True:
            head = file.read(8)
            if len(head) < 8:
                raise ValueError(
                    f"{where}: truncated record in {os.fspath(self.rec_path)!r}: expected an "
                    f"8-byte part header at byte {position}, found {len(head)} bytes"
                )
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise ValueError(
                    f"{where}: corrupt record in {os.fspath(self.rec_path)!r}: expected the magic "
                    f"0x{MAGIC:08x} at byte {position}, found 0x{magic:08x}"
                )
            cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
            if cflag > 3 or (cflag in (0, 1)) != first:
                raise ValueError(
                    f"{where}: corrupt record in {os.fspath(self.rec_path)!r}: part at byte "
                    f"{position} has continuation flag {cflag}, expected "
                    f"{'0 or 1' if first else '2 or 3'}"
                )
            padded = length + (-length % 4)
            data = file.read(padded)
            if len(data) < padded:
                raise ValueError(
                    f"{where}: truncated record in {os.fspath(self.rec_path)!r}: the part at byte "
                    f"{position} announces {length} bytes, the file ends after {len(data)}"
                )
            chunks.append(data[:length])
            position += 8 + padded
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(chunks)
            first = False

    def _sample_record(self, index: int) -> tuple[float | tuple[float, ...], bytes]:
        key, offset = int(self.keys[index]), int(self.offsets[index])
        where = f"sample {index} (key {key}, offset {offset})"
        record = self._read_record(offset, where)
        try:
            _, label, *_, image = unpack_image_record(record)
        except ValueError as error:
            raise ValueError(f"{where}: corrupt image record: {error}") from None
        if isinstance(label, tuple) and not label:
            raise ValueError(f"{where}: corrupt image record: empty label array")
        return label, image

    def raw(self, index: int) -> tuple[int, bytes]:
        """``(label, encoded image bytes)`` of sample ``index``, without decoding."""
        label, image = self._sample_record(self._check_index(index))
        return _identity(label), image

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: expected −{n} ≤ index < {n}, received {index}")
        return index % n

    def __len__(self) -> int:
        return int(self.keys.size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self._check_index(int(index))
        label, data = self._sample_record(index)
        try:
            image = _decode(data, self.decoder, self.size)
        except Exception as error:  # every decoder failure names the record
            key, offset = int(self.keys[index]), int(self.offsets[index])
            raise ValueError(
                f"sample {index} (key {key}, offset {offset}): the image does not decode "
                f"({type(error).__name__}: {error})"
            ) from error
        return {"image": image, "label": torch.tensor(_identity(label), dtype=torch.long)}

    # -- labels ----------------------------------------------------------------------------
    @property
    def labels(self) -> torch.Tensor:
        """``(N,)`` int64 labels of every sample (reads each header once, then cached)."""
        if self._labels is None:
            values = np.empty(len(self), dtype=np.int64)
            file = self._handle()
            needed = HEADER_SIZE + 4  # the header and a first extra label
            for index, offset in enumerate(self.offsets.tolist()):
                file.seek(offset)
                head = file.read(8 + needed)
                lrec = struct.unpack_from("<I", head, 4)[0] if len(head) >= 8 else 0
                length = lrec & _LENGTH_MASK
                if len(head) < 8 + min(length, needed) or length < HEADER_SIZE:
                    label = self._sample_record(index)[0]  # short or split: the full read
                else:
                    flag, label = struct.unpack_from("<If", head, 8)
                    if flag > 0:
                        if length < needed:
                            label = self._sample_record(index)[0]
                        else:
                            label = struct.unpack_from("<f", head, 8 + HEADER_SIZE)[0]
                values[index] = _identity(label)
            self._labels = torch.from_numpy(values)
        return self._labels

    @property
    def num_classes(self) -> int:
        """Number of identities (from record 0 when present, else 1 + the largest label)."""
        if self.header0 is not None:
            return self.header0[1] - self.header0[0]
        return int(self.labels.max()) + 1

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None  # each process opens its own handle
        return state

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and self._pid == os.getpid():
            file.close()


def _identity(label: float | tuple[float, ...]) -> int:
    return int(label[0] if isinstance(label, tuple) else label)


def _read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys and offsets of an ``.idx`` file, as int64 arrays."""
    text = path.read_bytes()
    fields = text.split()
    if len(fields) % 2:
        raise ValueError(
            f"path: {os.fspath(path)!r} is not a RecordIO index: expected '<key>\\t<offset>' lines"
        )
    try:
        table = np.array(fields, dtype=np.int64).reshape(-1, 2)
    except ValueError as error:
        raise ValueError(
            f"path: {os.fspath(path)!r} is not a RecordIO index of integer keys and offsets: "
            f"{error}"
        ) from None
    if table.shape[0] == 0:
        raise ValueError(f"path: the index {os.fspath(path)!r} is empty")
    return table[:, 0].copy(), table[:, 1].copy()


def _resolve_decoder(decoder: str) -> str:
    if decoder in ("auto", "torchvision"):
        try:
            import torchvision.io  # noqa: F401
        except Exception as error:  # a torchvision built for another torch fails at import
            if decoder == "torchvision":
                raise ImportError(
                    f"decoder='torchvision' needs a working torchvision ({error}); use "
                    "decoder='pillow'"
                ) from error
        else:
            return "torchvision"
    try:
        import PIL  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("RecordFaces needs Pillow: pip install 'faceaux[train]'") from error
    return "pillow"


def _decode(data: bytes, decoder: str, size: tuple[int, int] | None) -> torch.Tensor:
    if decoder == "torchvision":
        from torchvision.io import ImageReadMode, decode_image

        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = decode_image(encoded, mode=ImageReadMode.RGB).float() / 255
        if size is not None and tuple(image.shape[1:]) != size:
            image = torch.nn.functional.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        return image
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        rgb = opened.convert("RGB")
        if size is not None and rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
