"""From COGP frames to event drafts: interpretation, sequence tracking, alarms, hashing, clock trust.

No I/O: the decoder feeds it notifications (live and replayed alike); the transport acts on
`backfill_from()`. It never raises on device data: bad frames become `rejected` drafts.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Literal

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.tables import CodeTable, Enumerations, TableEntry, load_enumerations, load_table
from gateway.alarms import AlarmTracker
from gateway.driver import Counters, EventDraft
from schemas.access import AccessPayload
from schemas.common import Quality

Channel = Literal["event", "history", "status"]
REJECTED_TYPE = "device.record_rejected"
UNKNOWN_TYPE = "device.unknown_event"
STATUS_TYPE = "gate.status"


class SeqTracker:
    """Remembers the highest sequence number seen and the holes below it.

    A record above the high-water mark opens a gap (its missing numbers are remembered, at
    most `window` of them); a record filling a hole is accepted late; anything else at or below
    the mark is a duplicate. Memory is bounded by `window` whatever the device sends.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.high: int | None = None
        self.missing: set[int] = set()

    def observe(self, seq: int) -> tuple[Literal["new", "late", "duplicate"], int, int]:
        """Classify `seq`: (verdict, size of the gap it opened, gap numbers too many to remember)."""
        if self.high is None:
            self.high = seq
            return "new", 0, 0
        if seq > self.high:
            gap = seq - self.high - 1
            overflow = 0
            if gap:
                lo = max(self.high + 1, seq - self.window)
                overflow = (lo - self.high - 1) if lo > self.high + 1 else 0
                self.missing.update(range(lo, seq))
                self._trim()
            self.high = seq
            return "new", gap, overflow
        if seq in self.missing:
            self.missing.discard(seq)
            return "late", 0, 0
        return "duplicate", 0, 0

    def expect_up_to(self, last_seq: int) -> int:
        """The device says its last record is `last_seq`: remember what we have not seen yet."""
        if self.high is None:
            self.high = last_seq  # first contact: start from now, do not pull the whole history
            return 0
        if last_seq > self.high:
            lo = max(self.high + 1, last_seq - self.window + 1)
            self.missing.update(range(lo, last_seq + 1))
            overflow = lo - self.high - 1
            self.high = last_seq
            self._trim()
            return overflow
        return 0

    def give_up_below(self, seq: int) -> int:
        """Forget holes below `seq` (the device no longer holds them); returns how many were lost."""
        lost = {s for s in self.missing if s < seq}
        self.missing -= lost
        return len(lost)

    def reset(self, last_seq: int) -> None:
        """The device's counter went backwards (factory reset, new firmware): start again."""
        self.high = last_seq
        self.missing.clear()

    def _trim(self) -> None:
        if len(self.missing) > self.window:
            keep = sorted(self.missing)[-self.window :]
            self.missing = set(keep)


def credential_hash(key: bytes, credential_type: str, credential: bytes) -> str | None:
    """Keyed hash of a credential id; leading zero bytes are ignored so 0x00001234 == 0x1234."""
    ident = credential.lstrip(b"\x00")
    if not ident:
        return None
    mac = hmac.new(key, credential_type.encode() + b":" + ident, hashlib.sha256)
    return mac.hexdigest()[:32]


class Normalizer:
    """One device's interpretation state: sequence tracker, open alarms, last status, clock offset."""

    def __init__(
        self,
        config: BleAccessGateConfig,
        counters: Counters,
        *,
        table: CodeTable | None = None,
        enums: Enumerations | None = None,
    ) -> None:
        self.config = config
        self.counters = counters
        self.table = table or load_table(config.code_table)
        self.enums = enums or load_enumerations()
        self.seq = SeqTracker(config.dedupe_window)
        self._key = config.credential_key.get_secret_value().encode()
        self._skew = timedelta(seconds=config.max_clock_skew_s)
        self.alarms = AlarmTracker(config.id)  # keyed `<alarm>:<door>`; data: the raising TableEntry
        self._last_status: AccessPayload | None = None
        self.clock_offset: timedelta | None = None  # device clock minus gateway clock, from status
        self._batch_last: int | None = None
        self.history_pending = False

    # --- entry point --------------------------------------------------------------------------

    def feed(self, channel: Channel, data: bytes, now: datetime) -> list[EventDraft]:
        """Interpret one notification or read; never raises on device data."""
        try:
            if channel == "status":
                return self._status(codec.decode_status(data), now)
            frame = codec.decode_record_frame(data)
        except codec.FrameError as exc:
            return [self._rejected(exc.reason, str(exc), data)]
        if isinstance(frame, codec.HistoryEnd):
            self._history_end(frame)
            return []
        return self._record(frame, now)

    def forget(self) -> None:
        """The last drafts were not committed: report status again; open alarms become unconfirmed.

        Records already counted as seen are not asked for again: the gate's history is for
        holes the radio left, not for the gateway's own storage failures.
        """
        self._last_status = None
        self.alarms.forget()

    def backfill_from(self) -> int | None:
        """Where a history request should start, or None when nothing is missing."""
        return min(self.seq.missing) if self.seq.missing else None

    def backfill_span(self) -> int:
        """How many records from `backfill_from()` cover every hole (0 when nothing is missing)."""
        return max(self.seq.missing) - min(self.seq.missing) + 1 if self.seq.missing else 0

    def history_requested(self) -> None:
        """The driver sent a history request: a batch is now in flight."""
        self.history_pending = True
        self._batch_last = None

    def history_abandoned(self) -> None:
        """The batch never finished (timeout or link loss); a later request may retry."""
        self.history_pending = False

    # --- records ------------------------------------------------------------------------------

    def _record(self, rec: codec.Record, now: datetime) -> list[EventDraft]:
        verdict, gap, overflow = self.seq.observe(rec.seq)
        if gap:
            self.counters.inc("gaps")
        if overflow:
            self.counters.inc("lost", overflow)
        if rec.history:
            self._batch_last = rec.seq if self._batch_last is None else max(self._batch_last, rec.seq)
        if verdict == "duplicate":
            # A history batch is a contiguous range: records we already have are expected there.
            self.counters.inc("history_overlap" if rec.history else "duplicates")
            return []
        if verdict == "late":
            self.counters.inc("backfilled" if rec.history else "late")

        entry = self.table.lookup(rec.code)
        raw_code = self.table.format_code(rec.code)
        problems: list[str] = []
        cred_type = entry.credential_type if entry and entry.credential_type else None
        if cred_type is None:
            cred_type = self.enums.credential_types.get(rec.credential_type)
            if cred_type is None:
                problems.append("bad_credential_type")
        direction = self.enums.directions.get(rec.direction)
        if direction is None:
            problems.append("bad_direction")
        elif rec.direction == 0 and entry is not None and not entry.type.startswith(("access.", "gate.")):
            direction = None  # door and device events have no direction of passage
        if rec.reason not in self.enums.reasons:
            problems.append("bad_reason")
        reason = entry.reason if entry and entry.reason else self.enums.reasons.get(rec.reason)
        if rec.door > self.config.doors:
            problems.append("door_out_of_range")
        if rec.reader > self.config.readers:
            problems.append("reader_out_of_range")
        if problems:
            return [self._rejected(problems[0], ", ".join(problems), codec.encode_record(rec), seq=rec.seq)]

        time, reasons, device_time = self._trust_time(rec, now)
        payload = AccessPayload(
            door_no=rec.door,
            reader_no=rec.reader or None,
            direction=direction,
            credential_type=cred_type if cred_type != "none" else None,
            credential_hash=credential_hash(self._key, cred_type or "none", rec.credential),
            reason=reason if entry is None or entry.type == "access.denied" else None,
            mode=entry.mode if entry else None,
            device_time=device_time,
        )
        if entry is None:
            self.counters.inc("unknown_code")
            quality = Quality(status="suspect", reasons=("unknown_code", *reasons))
            return [
                EventDraft(
                    type=UNKNOWN_TYPE, cls="event", payload=payload, severity="minor",
                    raw_code=raw_code, seq=rec.seq, quality=quality, time=time,
                )
            ]
        quality = Quality(status="suspect", reasons=tuple(reasons)) if reasons else Quality()
        return self._alarm_drafts(
            entry, door=rec.door, payload=payload, raw_code=raw_code, seq=rec.seq, quality=quality, time=time,
            now=now,
        )

    def _alarm_drafts(
        self,
        entry: TableEntry,
        *,
        door: int,
        payload: AccessPayload,
        raw_code: str,
        seq: int,
        quality: Quality,
        time: datetime | None,
        now: datetime,
    ) -> list[EventDraft]:
        alarm_id: str | None = None
        when = time or now
        if entry.alarm is not None:
            key = f"{entry.alarm}:{door}"
            # Derived from the raising record, not drawn: a replay gives the alarm the same id.
            if entry.state == "raised":  # a repeated raise keeps the open alarm's id
                alarm_id = self.alarms.ensure(key, when, str(seq), data=entry).alarm_id
            elif entry.state == "cleared":
                active = self.alarms.clear(key)
                alarm_id = active.alarm_id if active else self.alarms.new_id(when, key, str(seq))
        drafts = [
            EventDraft(
                type=entry.type, cls=entry.cls, payload=payload, severity=entry.severity,
                state=entry.state, alarm_id=alarm_id, raw_code=raw_code, seq=seq, quality=quality, time=time,
            )
        ]
        for cleared in entry.clears:
            gone = self.alarms.clear(f"{cleared}:{door}")
            if gone is not None:
                raised: TableEntry = gone.data
                drafts.append(
                    EventDraft(
                        type=raised.type, cls=raised.cls, payload=payload,
                        severity=raised.severity, state="cleared", alarm_id=gone.alarm_id,
                        raw_code=raw_code, seq=seq, quality=quality, time=time,
                    )
                )
        return drafts

    def _trust_time(
        self, rec: codec.Record, now: datetime
    ) -> tuple[datetime | None, list[str], datetime | None]:
        """(event time or None for gateway time, quality reasons, device time as reported)."""
        if rec.device_time == 0:
            return None, ["clock_unset"], None
        device = datetime.fromtimestamp(rec.device_time, UTC)
        if rec.history:
            # Old by nature: judge the device clock by the offset seen in its status instead.
            if self.clock_offset is not None and abs(self.clock_offset) > self._skew:
                self.counters.inc("clock_skew")
                return device - self.clock_offset, ["clock_skew"], device
            if device - now > self._skew:
                self.counters.inc("clock_skew")
                return None, ["clock_skew"], device
            return device, [], device
        if abs(device - now) > self._skew:
            self.counters.inc("clock_skew")
            return None, ["clock_skew"], device
        return device, [], device

    def _rejected(self, reason: str, detail: str, data: bytes, *, seq: int | None = None) -> EventDraft:
        # `data` may hold a card number: only the fixed record head leaves the gateway (redact()).
        self.counters.inc("rejected")
        return EventDraft(
            type=REJECTED_TYPE,
            cls="event",
            payload=AccessPayload(raw_hex=redact(bytes(data[:64])).hex(), error=detail[:200]),
            severity="minor",
            seq=seq,
            quality=Quality(status="rejected", reasons=(reason,)),
        )

    # --- history ------------------------------------------------------------------------------

    def _history_end(self, end: codec.HistoryEnd) -> None:
        self.history_pending = False
        lost = self.seq.give_up_below(end.first_available)
        if end.more and self._batch_last is not None:
            # Records come in ascending order: a hole below the last one sent will not come.
            lost += self.seq.give_up_below(self._batch_last)
        elif not end.more:
            lost += self.seq.give_up_below(end.next_seq)
        if lost:
            self.counters.inc("lost", lost)

    # --- status -------------------------------------------------------------------------------

    def _status(self, st: codec.Status, now: datetime) -> list[EventDraft]:
        if st.device_time:
            self.clock_offset = datetime.fromtimestamp(st.device_time, UTC) - now
        if self.seq.high is not None and st.last_seq < self.seq.high:
            self.counters.inc("seq_reset")
            self.seq.reset(st.last_seq)
        else:
            lost = self.seq.expect_up_to(st.last_seq)
            if lost:
                self.counters.inc("lost", lost)
        full = (1 << st.doors) - 1
        payload = AccessPayload(
            door_open=st.open_mask & full != 0,
            locked=st.locked_mask & full == full,
            open_doors=tuple(d + 1 for d in range(st.doors) if st.open_mask >> d & 1),
            mode=self.enums.modes.get(st.mode, "normal"),
            tamper=st.tamper,
            mains_present=st.mains_present,
            on_battery=st.on_battery,
            battery_pct=st.battery_pct,
            firmware="{}.{}.{}".format(*st.firmware),
        )
        if payload == self._last_status:
            return []
        self._last_status = payload
        reasons: tuple[str, ...] = ()
        if st.mode not in self.enums.modes:
            reasons = ("bad_mode",)
        quality = Quality(status="suspect", reasons=reasons) if reasons else Quality()
        return [EventDraft(type=STATUS_TYPE, cls="status", payload=payload, quality=quality)]


def redact(frame: bytes) -> bytes:
    """A rejected frame as it may be published: the record head kept, everything after it
    (where the credential bytes sit) zeroed, so personal data never leaves in `raw_hex`."""
    head = codec.RECORD_HEAD_SIZE
    return frame[:head] + bytes(max(0, len(frame) - head))
