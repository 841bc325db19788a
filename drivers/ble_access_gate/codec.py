"""Wire codec of the Courtyard Open Gate Profile (COGP) v1: bytes <-> frames, pure and total.

Every decoder either returns a frame or raises `FrameError` (a `DecodeError` carrying a short
machine-readable `reason`); no other exception can escape, whatever the bytes. Encoders live
here too so the simulator and the tests speak exactly the layouts the driver decodes. The byte
layouts are documented in this folder's README.md; the tables there and the structs here must agree.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

from gateway.errors import DecodeError

# --- GATT identity -------------------------------------------------------------------------------
SERVICE_UUID = "7c3e0001-8f5b-4c2a-9d1e-5a6b7c8d9e0f"
EVENT_UUID = "7c3e0002-8f5b-4c2a-9d1e-5a6b7c8d9e0f"
STATUS_UUID = "7c3e0003-8f5b-4c2a-9d1e-5a6b7c8d9e0f"
HISTORY_UUID = "7c3e0004-8f5b-4c2a-9d1e-5a6b7c8d9e0f"
COMMAND_UUID = "7c3e0005-8f5b-4c2a-9d1e-5a6b7c8d9e0f"

# --- frame types (first byte of event / history notifications) -----------------------------------
FRAME_LIVE = 0x01
FRAME_HISTORY = 0x02
FRAME_HISTORY_END = 0x03
STATUS_VERSION = 0x01

HISTORY_OP_FETCH = 0x01

CMD_OPEN_ONCE = 0x01
CMD_HOLD_OPEN = 0x02
CMD_LOCK = 0x03
CMD_NORMAL = 0x04

MAX_CREDENTIAL_LEN = 16
SEQ_MAX = 0xFFFF_FFFF

_RECORD_HEAD = struct.Struct("<BIIHBBBBBB")  # type seq time code cred door reader dir reason n
RECORD_HEAD_SIZE = _RECORD_HEAD.size  # bytes before the credential in a record frame
_STATUS = struct.Struct("<BBBBBBBIIBBB")  # ver doors open locked mode flags batt seq time fw*3
_HISTORY_END = struct.Struct("<BIIB")  # type first_available next_seq status
_HISTORY_REQ = struct.Struct("<BIH")  # op from_seq max_count
_COMMAND = struct.Struct("<BBBHH")  # op door reserved duration_s request_id
_CRC = struct.Struct("<H")

RECORD_MIN_LEN = _RECORD_HEAD.size + _CRC.size
RECORD_MAX_LEN = RECORD_MIN_LEN + MAX_CREDENTIAL_LEN
STATUS_LEN = _STATUS.size + _CRC.size
HISTORY_END_LEN = _HISTORY_END.size + _CRC.size

# status flags (byte 5)
FLAG_TAMPER = 0x01
FLAG_MAINS = 0x02
FLAG_ON_BATTERY = 0x04
FLAG_BATTERY_LOW = 0x08
FLAG_ARM_BLOCKED = 0x10
BATTERY_UNKNOWN = 0xFF


class FrameError(DecodeError):
    """A frame that cannot be decoded; `reason` is a stable token used in quality reasons."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): the profile's application-level check."""
    return binascii.crc_hqx(data, 0xFFFF)


def _seal(body: bytes) -> bytes:
    return body + _CRC.pack(crc16(body))


def _check_crc(data: bytes) -> bytes:
    body, (crc,) = data[:-2], _CRC.unpack(data[-2:])
    if crc16(body) != crc:
        raise FrameError("bad_crc", f"crc 0x{crc:04x} != 0x{crc16(body):04x}")
    return body


@dataclass(frozen=True, slots=True)
class Record:
    """One access-control event record, as the device sent it (codes not yet interpreted)."""

    history: bool
    seq: int
    device_time: int
    code: int
    credential_type: int
    door: int
    reader: int
    direction: int
    reason: int
    credential: bytes


@dataclass(frozen=True, slots=True)
class Status:
    """The status characteristic: door/lock bitmaps, mode, power, tamper, cursor and firmware."""

    doors: int
    open_mask: int
    locked_mask: int
    mode: int
    flags: int
    battery_pct: int | None
    last_seq: int
    device_time: int
    firmware: tuple[int, int, int]

    @property
    def tamper(self) -> bool:
        """Enclosure or reader tamper switch active."""
        return bool(self.flags & FLAG_TAMPER)

    @property
    def mains_present(self) -> bool:
        """Mains (AC) supply present."""
        return bool(self.flags & FLAG_MAINS)

    @property
    def on_battery(self) -> bool:
        """Running from the backup battery."""
        return bool(self.flags & FLAG_ON_BATTERY)

    @property
    def battery_low(self) -> bool:
        """Battery below the device's low threshold."""
        return bool(self.flags & FLAG_BATTERY_LOW)


@dataclass(frozen=True, slots=True)
class HistoryEnd:
    """Closes one history batch: what the device still holds and whether more is pending."""

    first_available: int
    next_seq: int
    more: bool


Frame = Record | HistoryEnd


def decode_record_frame(data: bytes) -> Frame:
    """Decode one notification of the event or history characteristic."""
    data = bytes(data)
    if not data:
        raise FrameError("empty")
    if data[0] == FRAME_HISTORY_END:
        return _decode_history_end(data)
    if data[0] not in (FRAME_LIVE, FRAME_HISTORY):
        raise FrameError("bad_frame_type", f"0x{data[0]:02x}")
    if len(data) < RECORD_MIN_LEN:
        raise FrameError("short", f"{len(data)} < {RECORD_MIN_LEN} bytes")
    head = data[: _RECORD_HEAD.size]
    ftype, seq, dtime, code, cred_type, door, reader, direction, reason, n = _RECORD_HEAD.unpack(head)
    if n > MAX_CREDENTIAL_LEN:
        raise FrameError("credential_too_long", f"{n} > {MAX_CREDENTIAL_LEN}")
    if len(data) != RECORD_MIN_LEN + n:
        raise FrameError("length_mismatch", f"{len(data)} bytes for credential length {n}")
    body = _check_crc(data)
    return Record(
        history=ftype == FRAME_HISTORY,
        seq=seq,
        device_time=dtime,
        code=code,
        credential_type=cred_type,
        door=door,
        reader=reader,
        direction=direction,
        reason=reason,
        credential=body[_RECORD_HEAD.size :],
    )


def _decode_history_end(data: bytes) -> HistoryEnd:
    if len(data) != HISTORY_END_LEN:
        raise FrameError("length_mismatch", f"history end is {len(data)} bytes, want {HISTORY_END_LEN}")
    body = _check_crc(data)
    _, first, nxt, status = _HISTORY_END.unpack(body)
    if status > 1:
        raise FrameError("bad_history_status", str(status))
    return HistoryEnd(first_available=first, next_seq=nxt, more=status == 1)


def decode_status(data: bytes) -> Status:
    """Decode a read or notification of the status characteristic."""
    data = bytes(data)
    if len(data) != STATUS_LEN:
        raise FrameError("length_mismatch", f"status is {len(data)} bytes, want {STATUS_LEN}")
    if data[0] != STATUS_VERSION:
        raise FrameError("bad_status_version", f"0x{data[0]:02x}")
    body = _check_crc(data)
    _, doors, open_mask, locked_mask, mode, flags, batt, seq, dtime, fw1, fw2, fw3 = _STATUS.unpack(body)
    if not 1 <= doors <= 8:
        raise FrameError("bad_door_count", str(doors))
    if batt != BATTERY_UNKNOWN and batt > 100:
        raise FrameError("bad_battery", str(batt))
    return Status(
        doors=doors,
        open_mask=open_mask,
        locked_mask=locked_mask,
        mode=mode,
        flags=flags,
        battery_pct=None if batt == BATTERY_UNKNOWN else batt,
        last_seq=seq,
        device_time=dtime,
        firmware=(fw1, fw2, fw3),
    )


# --- encoders (simulator, tests, and the driver's requests) ------------------------------------


def encode_record(rec: Record) -> bytes:
    """Encode a record as a live (or history) notification frame."""
    if len(rec.credential) > MAX_CREDENTIAL_LEN:
        raise ValueError(f"credential longer than {MAX_CREDENTIAL_LEN} bytes")
    head = _RECORD_HEAD.pack(
        FRAME_HISTORY if rec.history else FRAME_LIVE,
        rec.seq,
        rec.device_time,
        rec.code,
        rec.credential_type,
        rec.door,
        rec.reader,
        rec.direction,
        rec.reason,
        len(rec.credential),
    )
    return _seal(head + rec.credential)


def encode_history_end(end: HistoryEnd) -> bytes:
    """Encode the frame that closes a history batch."""
    return _seal(_HISTORY_END.pack(FRAME_HISTORY_END, end.first_available, end.next_seq, int(end.more)))


def encode_status(st: Status) -> bytes:
    """Encode the status characteristic value."""
    batt = BATTERY_UNKNOWN if st.battery_pct is None else st.battery_pct
    return _seal(
        _STATUS.pack(
            STATUS_VERSION,
            st.doors,
            st.open_mask,
            st.locked_mask,
            st.mode,
            st.flags,
            batt,
            st.last_seq,
            st.device_time,
            *st.firmware,
        )
    )


def encode_history_request(from_seq: int, max_count: int = 0) -> bytes:
    """History characteristic write: send records with seq >= from_seq (max_count 0 = device max)."""
    return _HISTORY_REQ.pack(HISTORY_OP_FETCH, from_seq & SEQ_MAX, max_count)


def decode_history_request(data: bytes) -> tuple[int, int]:
    """Peripheral side of `encode_history_request`: (from_seq, max_count)."""
    data = bytes(data)
    if len(data) != _HISTORY_REQ.size or data[0] != HISTORY_OP_FETCH:
        raise FrameError("bad_history_request", data.hex())
    _, from_seq, max_count = _HISTORY_REQ.unpack(data)
    return from_seq, max_count


@dataclass(frozen=True, slots=True)
class Command:
    """A command characteristic write (designed now, used by a later downlink)."""

    op: int
    door: int = 0
    duration_s: int = 0
    request_id: int = 0


def encode_command(cmd: Command) -> bytes:
    """Command characteristic write (write with response)."""
    return _COMMAND.pack(cmd.op, cmd.door, 0, cmd.duration_s, cmd.request_id)


def decode_command(data: bytes) -> Command:
    """Peripheral side of `encode_command`."""
    data = bytes(data)
    if len(data) != _COMMAND.size:
        raise FrameError("bad_command", data.hex())
    op, door, _, duration, req = _COMMAND.unpack(data)
    if op not in (CMD_OPEN_ONCE, CMD_HOLD_OPEN, CMD_LOCK, CMD_NORMAL):
        raise FrameError("bad_command_op", str(op))
    return Command(op=op, door=door, duration_s=duration, request_id=req)
