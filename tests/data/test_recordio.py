"""RecordFaces and the RecordIO writer against the format as mxnet/dmlc-core define it.

The reference reader in this file is written straight from dmlc-core's ``RecordIOReader`` and
mxnet's ``recordio.unpack`` (a sequential scan, independent of RecordFaces' index-based
reader); golden bytes are worked out by hand from the format.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from train.tiny_data import synthetic

from faceaux.data import ImageFolderFaces, RecordFaces, RecordWriter, pack_folder
from faceaux.data.recordio import MAGIC, frame_record, pack_image_record, unpack_image_record

MAGIC_BYTES = struct.pack("<I", MAGIC)


def reference_records(rec_path: Path) -> list[bytes]:
    """Every record of a .rec file, read sequentially as dmlc::RecordIOReader::NextRecord."""
    data, position, records, current = rec_path.read_bytes(), 0, [], b""
    while position < len(data):
        magic, lrec = struct.unpack_from("<II", data, position)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        position += 8
        current += data[position : position + length]
        position += (length + 3) // 4 * 4
        if cflag in (0, 3):
            records.append(current)
            current = b""
        else:
            current += MAGIC_BYTES
    assert current == b""
    return records


def reference_unpack(record: bytes):
    """mxnet.recordio.unpack: (flag, label, id, id2), then flag float32 labels, then the data."""
    flag, label, id_, id2 = struct.unpack("<IfQQ", record[:24])
    body = record[24:]
    if flag > 0:
        label = np.frombuffer(body[: 4 * flag], dtype=np.float32).tolist()
        body = body[4 * flag :]
    return flag, label, id_, id2, body


def png_bytes(color=(10, 200, 30), size=(5, 7)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


# -- framing and headers ------------------------------------------------------------------------


def test_frame_record_golden_bytes_and_padding():
    assert frame_record(b"") == MAGIC_BYTES + b"\0\0\0\0"
    assert frame_record(b"abcd") == MAGIC_BYTES + b"\x04\0\0\0abcd"
    framed = frame_record(b"abcde")
    assert framed == MAGIC_BYTES + b"\x05\0\0\0abcde\0\0\0"
    assert len(framed) % 4 == 0


def test_frame_record_splits_on_aligned_magic_only():
    # magic at offsets 4 and 12 (aligned) and at 17 (not aligned, stays inside a part)
    payload = b"AAAA" + MAGIC_BYTES + b"BBBB" + MAGIC_BYTES + b"C" + MAGIC_BYTES + b"DD"
    framed = frame_record(payload)
    parts, position = [], 0
    while position < len(framed):
        magic, lrec = struct.unpack_from("<II", framed, position)
        assert magic == MAGIC
        length = lrec & ((1 << 29) - 1)
        parts.append((lrec >> 29, framed[position + 8 : position + 8 + length]))
        position += 8 + (length + 3) // 4 * 4
    assert parts == [(1, b"AAAA"), (2, b"BBBB"), (3, b"C" + MAGIC_BYTES + b"DD")]
    # a record that starts with the magic: an empty first part
    assert frame_record(MAGIC_BYTES)[:8] == MAGIC_BYTES + struct.pack("<I", 1 << 29)


def test_header_layout_is_mxnet_pack():
    scalar = pack_image_record(3, b"img", id=5, id2=0)
    assert scalar[:24] == struct.pack("<IfQQ", 0, 3.0, 5, 0)
    assert reference_unpack(scalar) == (0, 3.0, 5, 0, b"img")
    array = pack_image_record([7, 0.25, -1], b"xy", id=9)
    assert array[:24] == struct.pack("<IfQQ", 3, 0.0, 9, 0)
    assert reference_unpack(array) == (3, [7.0, 0.25, -1.0], 9, 0, b"xy")
    assert unpack_image_record(array) == (3, (7.0, 0.25, -1.0), 9, 0, b"xy")


def test_writer_matches_the_reference_reader_and_index(tmp_path):
    payloads = [b"x" * n for n in range(9)] + [b"AAAA" + MAGIC_BYTES + b"tail"]
    with RecordWriter(tmp_path / "set") as writer:
        for key, payload in enumerate(payloads):
            writer.write(key, payload)
    assert reference_records(tmp_path / "set.rec") == payloads
    lines = (tmp_path / "set.idx").read_text().splitlines()
    offsets = [int(line.split("\t")[1]) for line in lines]
    assert [line.split("\t")[0] for line in lines] == [str(k) for k in range(len(payloads))]
    assert offsets == list(np.cumsum([0] + [len(frame_record(p)) for p in payloads[:-1]]))


# -- RecordFaces ---------------------------------------------------------------------------------


def write_set(prefix: Path, records: dict[int, bytes]) -> Path:
    with RecordWriter(prefix) as writer:
        for key, payload in records.items():
            writer.write(key, payload)
    return prefix


def test_scalar_and_array_labels_and_record0_header(tmp_path):
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    prefix = write_set(
        tmp_path / "train",
        {
            0: pack_image_record([4, 6], b""),  # images 1..3, identities 4..5
            1: pack_image_record(1, red, id=1),
            2: pack_image_record([0, 0.5, 0.25], blue, id=2),
            3: pack_image_record(1.0, red, id=3),
            4: pack_image_record([2, 3], b"", id=4),
            5: pack_image_record([1, 2], b"", id=5),
        },
    )
    data = RecordFaces(prefix, decoder="pillow")
    assert len(data) == 3
    assert data.keys.tolist() == [1, 2, 3]
    assert data.header0 == (4, 6)
    assert data.num_classes == 2
    assert data.labels.tolist() == [1, 0, 1]
    sample = data[1]
    assert sample["label"].dtype == torch.long
    assert sample["label"].item() == 0
    assert sample["image"].shape == (3, 7, 5)
    assert sample["image"][:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert data.raw(0) == (1, red)


def test_without_record0_every_key_is_an_image(tmp_path):
    prefix = write_set(
        tmp_path / "plain",
        {10: pack_image_record(2, png_bytes(), id=10), 4: pack_image_record(0, png_bytes())},
    )
    data = RecordFaces(str(prefix) + ".rec", decoder="pillow")
    assert data.header0 is None
    assert data.keys.tolist() == [10, 4]  # index order
    assert data.labels.tolist() == [2, 0]
    assert data.num_classes == 3


def test_multi_part_records_are_rejoined(tmp_path):
    image = png_bytes()
    # an extra label whose float32 bytes are the magic forces an aligned magic into the record
    magic_float = np.frombuffer(MAGIC_BYTES, dtype="<f4")[0]
    record = pack_image_record([1.0, magic_float, 0.0], image, id=1)
    assert MAGIC_BYTES in record[24:]
    prefix = write_set(tmp_path / "multi", {0: pack_image_record(0, image), 1: record})
    raw = (tmp_path / "multi.rec").read_bytes()
    flags = []
    position = 0
    while position < len(raw):
        lrec = struct.unpack_from("<I", raw, position + 4)[0]
        flags.append(lrec >> 29)
        position += 8 + ((lrec & ((1 << 29) - 1)) + 3) // 4 * 4
    assert flags == [0, 1, 3]
    data = RecordFaces(prefix, decoder="pillow")
    assert data.labels.tolist() == [0, 1]
    assert data[1]["label"].item() == 1
    assert data.raw(1)[1] == image


def test_corrupt_and_truncated_records_name_the_sample(tmp_path):
    image = png_bytes()
    prefix = write_set(tmp_path / "bad", {k: pack_image_record(k, image, id=k) for k in range(3)})
    rec = tmp_path / "bad.rec"
    offsets = [int(x.split()[1]) for x in (tmp_path / "bad.idx").read_text().splitlines()]
    raw = bytearray(rec.read_bytes())
    raw[offsets[1]] ^= 0xFF  # break record 1's magic
    rec.write_bytes(bytes(raw))
    data = RecordFaces(prefix, decoder="pillow")
    assert data[0]["label"].item() == 0
    with pytest.raises(ValueError, match=r"sample 1 \(key 1, offset \d+\).*magic"):
        data[1]
    # an image that does not decode
    raw[offsets[1]] ^= 0xFF
    raw[offsets[1] + 8 + 24 : offsets[1] + 8 + 40] = b"\0" * 16
    rec.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"sample 1 .*does not decode"):
        RecordFaces(prefix, decoder="pillow")[1]
    # truncated file: the last record's data is cut off
    rec.write_bytes(bytes(raw[: offsets[2] + 20]))
    with pytest.raises(ValueError, match=r"sample 2 .*truncated"):
        RecordFaces(prefix, decoder="pillow")[2]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="path: expected a RecordIO pair"):
        RecordFaces(tmp_path / "missing")
    write_set(tmp_path / "x", {0: pack_image_record(0, png_bytes())})
    with pytest.raises(ValueError, match="decoder: expected one of"):
        RecordFaces(tmp_path / "x", decoder="cv2")
    (tmp_path / "x.idx").write_text("0\tnot-a-number\n")
    with pytest.raises(ValueError, match="not a RecordIO index"):
        RecordFaces(tmp_path / "x")
    with pytest.raises(ValueError, match="payload: RecordIO records must be shorter"):
        frame_record(bytes(1 << 29))


# -- pack round trip -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    data = synthetic()  # 20 identities × 6 images; the first 12 images: 2 identities
    for index in range(12):
        folder = root / f"person{int(data.labels[index])}{index % 2}"  # 4 folders of 3
        folder.mkdir(exist_ok=True)
        fmt, suffix = ("PNG", ".png") if index % 2 else ("JPEG", ".jpg")
        image = Image.fromarray(data.images[index].permute(1, 2, 0).numpy())
        image.save(folder / f"{index:03d}{suffix}", fmt)
    (root / "empty").mkdir()
    return root


def test_pack_round_trip_is_byte_exact(image_folder, tmp_path):
    summary = pack_folder(image_folder, tmp_path / "out" / "train")
    folder = ImageFolderFaces(image_folder)
    assert summary["images"] == len(folder) == 12
    assert summary["identities"] == 4
    records = RecordFaces(tmp_path / "out", decoder="pillow")  # the folder form finds train.rec
    assert len(records) == len(folder)
    assert torch.equal(records.labels, folder.labels)
    for index, (path, label) in enumerate(folder.samples):
        assert records.raw(index) == (label, path.read_bytes())
        torch.testing.assert_close(records[index]["image"], folder[index]["image"], rtol=0, atol=0)
    # InsightFace's record layout, read back with the independent reference reader
    parsed = [reference_unpack(r) for r in reference_records(tmp_path / "out" / "train.rec")]
    assert parsed[0][:2] == (2, [13.0, 17.0])
    assert [p[2] for p in parsed[1:13]] == list(range(1, 13))  # id = key
    ranges = [tuple(p[1]) for p in parsed[13:]]
    assert ranges == [(1.0, 4.0), (4.0, 7.0), (7.0, 10.0), (10.0, 13.0)]


def test_dataloader_workers_and_pickling(image_folder, tmp_path):
    pack_folder(image_folder, tmp_path / "train")
    data = RecordFaces(tmp_path / "train", size=(16, 16), decoder="pillow")
    data[0]  # opens this process's handle; pickling must not carry it
    clone = pickle.loads(pickle.dumps(data))
    assert clone._file is None
    loader = DataLoader(data, batch_size=5, num_workers=2)
    batches = list(loader)
    labels = torch.cat([b["label"] for b in batches])
    assert torch.equal(labels, data.labels)
    assert batches[0]["image"].shape == (5, 3, 16, 16)
    images = torch.cat([b["image"] for b in batches])
    assert torch.equal(images[7], data[7]["image"])


def test_pack_command(image_folder, tmp_path, capsys):
    from faceaux.cli import main

    assert main(["pack", str(image_folder), str(tmp_path / "cli"), "--no-progress"]) == 0
    assert "packed 12 images of 4 identities" in capsys.readouterr().out
    assert (tmp_path / "cli.rec").read_bytes() == _packed(image_folder, tmp_path / "api")


def _packed(folder: Path, prefix: Path) -> bytes:
    pack_folder(folder, prefix)
    return Path(f"{prefix}.rec").read_bytes()
