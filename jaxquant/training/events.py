"""TensorBoard event files of scalars, written and read without TensorFlow.

An event file is a sequence of TFRecords, ``length (u64) | masked crc32c(length) (u32) | data |
masked crc32c(data) (u32)``, each ``data`` a serialized ``tensorflow.Event`` protobuf. A scalar
needs four of its fields, so they are encoded here by hand (protobuf wire format):

  Event    { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary  { repeated Value value = 1; }
  Value    { string tag = 1; float simple_value = 2; }

TensorBoard's scalar dashboard reads ``simple_value``; `read_events` decodes what `EventWriter`
writes (it is how a resumed run drops the records past its checkpoint).
"""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import time

_CRC32C_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ (0x82F63B78 if _crc & 1 else 0)
    _CRC32C_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf encodes it (two's complement)
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars=None, file_version: str | None = None):
    """The serialized ``Event``: a file-version header, or ``{tag: value}`` scalars at ``step``."""
    event = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        event += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(
                1,
                _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v),
            )
            for tag, v in scalars.items()
        )
        event += _length_delimited(5, values)
    return event


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(data: bytes):
    """``(field number, wire type, value)`` of a protobuf message (the wire types used here)."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        elif wire == 2:
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(data: bytes) -> dict:
    """``{'wall_time', 'step', 'file_version' (or None), 'scalars': {tag: value}}``."""
    event = {"wall_time": 0.0, "step": 0, "file_version": None, "scalars": {}}
    for field, _, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for _, _, entry in _fields(value):
                parts = {f: v for f, _, v in _fields(entry)}
                if 1 in parts and 2 in parts:
                    event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    return event


def frame(data: bytes) -> bytes:
    """One TFRecord."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def read_records(path: str | os.PathLike) -> list[bytes]:
    """The records of a TFRecord file, checksums verified; a torn last record (a process killed
    while writing it) is dropped."""
    data = pathlib.Path(path).read_bytes()
    records, i = [], 0
    while i + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        end = i + 12 + length + 4
        if end > len(data):
            break
        payload = data[i + 12 : i + 12 + length]
        if struct.unpack("<I", data[end - 4 : end])[0] != masked_crc32c(payload):
            break
        records.append(payload)
        i = end
    return records


def read_events(path: str | os.PathLike) -> list[dict]:
    """Every event of one event file (`decode_event`), in order."""
    return [decode_event(record) for record in read_records(path)]


class EventWriter:
    """Appends scalar events to a new ``events.out.tfevents.<time>.<host>`` file in ``logdir``
    (each write is flushed, so TensorBoard sees a running job's curves)."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.jaxquant"
        self.path = self.logdir / name
        self._file = open(self.path, "ab")
        self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._file.write(frame(event))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._write(encode_event(time.time(), int(step), {k: float(v) for k, v in values.items()}))

    def close(self) -> None:
        self._file.close()


def truncate_event_files(logdir: str | os.PathLike, last_step: int) -> None:
    """Rewrite every event file in ``logdir`` without the scalar events after ``last_step`` (a
    run resumed from the checkpoint at ``last_step`` writes those steps again)."""
    for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
        records = read_records(path)
        kept = [
            r
            for r in records
            if (e := decode_event(r))["file_version"] is not None or e["step"] <= last_step
        ]
        if len(kept) != len(records) or path.stat().st_size != sum(len(frame(r)) for r in kept):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(b"".join(frame(r) for r in kept))
            os.replace(tmp, path)
