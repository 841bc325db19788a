"""What simulated cameras send: plates, pictures and each vendor's push and keep-alive bodies."""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape

PROVINCES = "京沪粤浙苏川鄂湘鲁豫"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, no O
#: Zhenshi colorType / type codes of each simulated plate class (type codes of the documented table, v2).
ZHENSHI_CODES = {"blue": (1, 1), "yellow": (2, 3), "green": (5, 19), "yellow_green": (6, 20)}
#: Dahua ITSAPI PlateColor / PlateType of each simulated plate class.
DAHUA_CODES = {
    "blue": ("Blue", "Normal"),
    "yellow": ("Yellow", "Yellow"),
    "green": ("Green", "NewEnergy"),
    "yellow_green": ("YellowGreen", "LargeNewEnergy"),
}
HIK_CODES = {
    "blue": ("blue", "92TypeCivil"),
    "yellow": ("yellow", "yellow1778"),
    "green": ("green", "newEnergy"),
    "yellow_green": ("yellowGreen", "yellow2050"),
}


# ------------------------------------------------------------------ plates and pictures


def make_plate(rng: random.Random, color: str) -> str:
    """A plate valid under GA 36 for the given colour class."""
    head = rng.choice(PROVINCES) + rng.choice(LETTERS[:12])
    digits = "0123456789"
    if color == "green":
        return head + rng.choice("DF") + rng.choice(LETTERS + digits) + "".join(rng.choices(digits, k=4))
    if color == "yellow_green":
        return head + "".join(rng.choices(digits, k=5)) + rng.choice("DF")
    serial = [rng.choice(digits) for _ in range(5)]
    for pos in rng.sample(range(5), rng.choice((0, 0, 1, 2))):
        serial[pos] = rng.choice(LETTERS)
    if color == "yellow" and rng.random() < 0.1:
        serial[-1] = "学"
    return head + "".join(serial)


def invalid_plate(rng: random.Random) -> str:
    """A plate that breaks one GA 36 rule (letter O in the serial, bad province, wrong length)."""
    return rng.choice(["京AO1234", "X" + "A12345", "粤B123", "沪A12345678", "浙I12345"])


def fake_jpeg(size: int, seed: int = 0) -> bytes:
    """Bytes that start and end like a JPEG; enough for storage and multipart tests."""
    body = random.Random(seed).randbytes(max(0, size - 4))
    return b"\xff\xd8" + body + b"\xff\xd9"


# ------------------------------------------------------------------ wire formats


def zhenshi_plate_body(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    plateid: int = 1,
    channel: int = 0,
    serial: str = "sim-0001",
    image: bytes | None = None,
    when: float | None = None,
    license_encoding: str = "utf8",
    offline: bool = False,
) -> bytes:
    """A Zhenshi-style `AlarmInfoPlate` push body."""
    color_code, type_code = ZHENSHI_CODES.get(color, (0, 0))
    license_field = plate
    if license_encoding == "base64":
        license_field = base64.b64encode(plate.encode("gbk")).decode()
    stamp = time.time() if when is None else when
    result: dict[str, Any] = {
        "license": license_field,
        "colorType": color_code,
        "type": type_code,
        "confidence": confidence,
        "direction": 4,
        "triggerType": 8,
        "plateid": plateid,
        "isoffline": int(offline),
        "is_fake_plate": 0,
        "timeStamp": {"Timeval": {"sec": int(stamp), "usec": int(stamp % 1 * 1e6)}},
        "location": {"RECT": {"left": 100, "top": 200, "right": 300, "bottom": 260}},
    }
    if image is not None:
        result["imageFile"] = base64.b64encode(image).decode()
        result["imageFileLen"] = len(image)
    doc = {
        "AlarmInfoPlate": {
            "channel": channel,
            "deviceName": "IVS",
            "ipaddr": "192.168.1.64",
            "serialno": serial,
            "result": {"PlateResult": result},
        }
    }
    text = json.dumps(doc, ensure_ascii=False)
    return text.encode("gbk") if license_encoding == "gbk" else text.encode()


def zhenshi_heartbeat_body(serial: str = "sim-0001") -> bytes:
    """A JSON keep-alive (some integrations' shape; cameras send `zhenshi_heartbeat_form`)."""
    return json.dumps({"heartbeat": {"countid": 1}, "serialno": serial}).encode()


def zhenshi_heartbeat_fields(serial: str = "sim-0001") -> list[tuple[str, str]]:
    """The fields of the documented Zhenshi heartbeat (device registration) form, in its order."""
    return [
        ("device_name", "IVS"),
        ("ipaddr", "192.168.1.100"),
        ("port", "80"),
        ("user_name", "admin"),
        ("pass_wd", "admin"),
        ("serialno", serial),
        ("channel_num", "1"),
    ]


def zhenshi_heartbeat_form(serial: str = "sim-0001", *, urlencoded: bool = False) -> tuple[bytes, str]:
    """The Zhenshi heartbeat as cameras send it: multipart/form-data (urlencoded on some firmware)."""
    fields = zhenshi_heartbeat_fields(serial)
    if urlencoded:
        return urlencode(fields).encode(), "application/x-www-form-urlencoded"
    out = bytearray()
    boundary = "------------------------caa771fe4a61f3d9"
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def zhenshi_gpio_body(source: int, value: int, serial: str = "sim-0001") -> bytes:
    """A Zhenshi-style `AlarmGioIn` (e.g. the barrier's up/down contact)."""
    return json.dumps(
        {"AlarmGioIn": {"serialno": serial, "result": {"TriggerResult": {"source": source, "value": value}}}}
    ).encode()


def hikvision_plate_body(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    seq: int = 1,
    lane: int = 1,
    images: Sequence[tuple[str, bytes]] = (),
    direction: str = "forward",
    when: float | None = None,
) -> tuple[bytes, str]:
    """A Hikvision-style ANPR multipart push: `anpr.xml` then JPEG parts. Returns (body, content type)."""
    color_token, type_token = HIK_CODES.get(color, ("unknown", "unknown"))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when))
    plate = escape(plate)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
        "<ipAddress>192.168.1.65</ipAddress><macAddress>44:19:b6:00:00:01</macAddress>"
        f"<channelID>1</channelID><dateTime>{stamp}</dateTime>"
        f"<activePostCount>{seq}</activePostCount><eventType>ANPR</eventType><eventState>active</eventState>"
        "<eventDescription>ANPR</eventDescription><ANPR><country>CHN</country>"
        f"<licensePlate>{plate}</licensePlate><line>{lane}</line><direction>{direction}</direction>"
        f"<confidenceLevel>{confidence}</confidenceLevel><plateType>{type_token}</plateType>"
        f"<plateColor>{color_token}</plateColor><vehicleType>vehicle</vehicleType></ANPR>"
        "</EventNotificationAlert>"
    ).encode()
    return multipart([("anpr.xml", "application/xml", xml), *((n, "image/jpeg", d) for n, d in images)])


def hikvision_plate_json(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    seq: int = 1,
    lane: int = 1,
    images: Sequence[tuple[str, bytes]] = (),
    direction: str = "forward",
    when: float | None = None,
    bare: bool = False,
) -> tuple[bytes, str]:
    """The JSON `EventNotificationAlert` variant: bare, or as the first part of a multipart with JPEGs."""
    color_token, type_token = HIK_CODES.get(color, ("unknown", "unknown"))
    doc = {
        "ipAddress": "192.168.1.65",
        "portNo": 80,
        "protocol": "HTTP",
        "macAddress": "44:19:b6:00:00:01",
        "channelID": 1,
        "dateTime": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when)),
        "activePostCount": seq,
        "eventType": "ANPR",
        "eventState": "active",
        "eventDescription": "ANPR",
        "ANPR": {
            "country": "CHN",
            "licensePlate": plate,
            "line": lane,
            "direction": direction,
            "confidenceLevel": confidence,
            "plateType": type_token,
            "plateColor": color_token,
            "vehicleType": "vehicle",
        },
    }
    data = json.dumps(doc, ensure_ascii=False).encode()
    if bare:
        return data, "application/json"
    return multipart([("anpr.json", "application/json", data), *((n, "image/jpeg", d) for n, d in images)])


def hikvision_heartbeat_body() -> tuple[bytes, str]:
    """Hikvision's keep-alive: a `videoloss` alert in state `inactive`."""
    xml = (
        b'<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
        b"<macAddress>44:19:b6:00:00:01</macAddress><eventType>videoloss</eventType>"
        b"<eventState>inactive</eventState></EventNotificationAlert>"
    )
    return xml, "application/xml"


def dahua_plate_body(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    seq: int = 1,
    lane: int = 1,
    image: bytes | None = None,
    direction: str = "Obverse",
    device_id: str = "sim-dahua-0001",
    when: float | None = None,
) -> tuple[bytes, str]:
    """A Dahua ITSAPI TollgateInfo push (`Picture.Plate`, `Picture.SnapInfo`, base64 pictures)."""
    color_token, type_token = DAHUA_CODES.get(color, ("Unknown", "Unknown"))
    stamp = time.time() if when is None else when
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))
    picture: dict[str, Any] = {
        "Plate": {
            "PlateNumber": plate,
            "PlateColor": color_token,
            "PlateType": type_token,
            "Confidence": confidence,
            "BoundingBox": [3520, 4540, 4250, 4790],
            "UploadNum": seq,
        },
        "SnapInfo": {
            "DeviceID": device_id,
            "AccurateTime": f"{local}.{int(stamp % 1 * 1000):03d}",
            "SnapTime": local,
            "Direction": direction,
            "LaneNo": lane,
            "DefenceCode": "0",
            "OpenStrobe": False,
        },
        "Vehicle": {"VehicleColor": "White", "VehicleType": "Motor"},
    }
    if image is not None:
        encoded = base64.b64encode(image).decode()
        picture["NormalPic"] = {"Content": encoded, "PicName": f"{local}_{seq}.jpg"}
    return json.dumps({"Picture": picture, "PicName": f"{seq}.jpg"}, ensure_ascii=False).encode(), "application/json"


def dahua_keepalive_body(device_id: str = "sim-dahua-0001") -> tuple[bytes, str]:
    """A Dahua ITSAPI KeepAlive."""
    return json.dumps({"DeviceID": device_id, "Active": "keepAlive"}).encode(), "application/json"


def multipart(parts: Sequence[tuple[str, str, bytes]], boundary: str = "courtyard-sim-boundary") -> tuple[bytes, str]:
    """Build a multipart/form-data body from (name, content type, data) triples."""
    out = bytearray()
    for name, ctype, data in parts:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"

