"""The camera simulator as other tools see it: `courtyard simulate camera`, curl --digest, urllib Digest."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from drivers.camera.multipart import MultipartSplitter, Part
from simulators.net import free_port
from tests.servers import wait_port


@pytest.fixture(scope="module")
def sim_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "camera", "--port", str(port),
                             "--rate", "0", "--heartbeat", "0.2", "--password", "pw-123"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_port(port, 15)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _opener(port: int, password: str = "pw-123") -> urllib.request.OpenerDirector:
    mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    mgr.add_password(None, f"http://127.0.0.1:{port}/", "admin", password)
    return urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(mgr))


def test_urllib_digest_snapshot_and_dahua_attach(sim_port: int) -> None:
    opener = _opener(sim_port)
    with opener.open(f"http://127.0.0.1:{sim_port}/dahua-garage/cgi-bin/snapshot.cgi?channel=2", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg" and resp.read()[:2] == b"\xff\xd8"
    url = f"http://127.0.0.1:{sim_port}/cgi-bin/eventManager.cgi?action=attach&codes=[All]"
    with opener.open(url, timeout=5) as resp:
        ctype = resp.headers["Content-Type"]
        assert ctype == "multipart/x-mixed-replace; boundary=myboundary"
        splitter = MultipartSplitter("myboundary")
        parts: list[Part] = []
        while not parts:
            parts += [p for p in splitter.feed(resp.read1(4096)) if isinstance(p, Part)]
        assert parts[0].body == b"Heartbeat"


def test_urllib_wrong_password_is_refused(sim_port: int) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        _opener(sim_port, "wrong").open(f"http://127.0.0.1:{sim_port}/ISAPI/Streaming/channels/101/picture",
                                        timeout=5)
    assert err.value.code == 401


def test_curl_digest_alert_stream(sim_port: int) -> None:
    out = subprocess.run(["curl", "-sS", "-N", "--digest", "-u", "admin:pw-123", "--max-time", "1.5",
                          f"http://127.0.0.1:{sim_port}/hik-lobby/ISAPI/Event/notification/alertStream"],
                         check=False, capture_output=True, timeout=10)
    assert out.returncode in (0, 28), out.stderr  # 28: our --max-time on an endless stream
    assert b"--boundary\r\n" in out.stdout and b"<eventType>videoloss</eventType>" in out.stdout
    assert b"<eventState>inactive</eventState>" in out.stdout
    denied = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--digest", "-u", "admin:bad",
                             f"http://127.0.0.1:{sim_port}/ISAPI/Streaming/channels/101/picture"],
                            check=False, capture_output=True, timeout=10)
    assert denied.stdout == b"401"
