"""The outbox on disk: private modes (plates are stored in clear) and one gateway per outbox."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import OutboxError
from gateway.outbox import Outbox, lock_path
from tests.test_outbox import make_event

ROOT = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_new_data_folder_0700_and_database_files_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "site" / "outbox.db"
    old = os.umask(0o022)  # the usual umask; the modes must not depend on it
    try:
        async with Outbox(path, sinks=["mqtt"]) as ob:
            await ob.append([make_event(1)])
            files = [path, path.with_name("outbox.db-wal"), path.with_name("outbox.db-shm"), lock_path(path)]
            assert all(f.exists() for f in files)
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        os.umask(old)
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "site") == 0o700


async def test_existing_database_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with Outbox(path, sinks=["mqtt"]) as ob:
        await ob.append([make_event(1)])
    os.chmod(path, 0o644)
    async with Outbox(path, sinks=["mqtt"]) as ob:
        await ob.append([make_event(2)])
        assert mode(path) == 0o600
        assert mode(path.with_name("outbox.db-wal")) == 0o600
        assert ob.count == 2


async def test_second_outbox_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = Outbox(path, sinks=["mqtt"])
    await first.open()
    try:
        second = Outbox(path, sinks=["mqtt"])
        with pytest.raises(OutboxError, match="in use by another gateway") as refused:
            await second.open()
        assert str(path) in str(refused.value) and "\n" not in str(refused.value)
        await first.append([make_event(1)])  # the first is undisturbed
    finally:
        await first.close()
    again = Outbox(path, sinks=["mqtt"])  # released on close
    await again.open()
    assert again.count == 1
    await again.close()


def test_second_courtyard_run_exits_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"site: lock-test\noutbox:\n  path: {db}\nmqtt:\n  enabled: false\n")
    first = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):  # until the first holds the lock
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            if db.exists() and lock_path(db).exists():
                break
            time.sleep(0.05)
        time.sleep(0.5)
        second = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert lines == [f"courtyard run: outbox {db} is in use by another gateway (lock held on {lock_path(db)})"]
        assert first.poll() is None  # the running one is undisturbed
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    assert first.returncode == 0


async def test_plate_media_folders_0700_and_images_0600(tmp_path: Path) -> None:
    from drivers.http_plate_reader.media import MediaStore, image_name

    root = tmp_path / "data" / "lpr-media"
    store = MediaStore(root, 1_000_000)
    store.scan()
    name = image_name("cam-1", b"\xff\xd8jpeg")
    await store.store(name, b"\xff\xd8jpeg")
    image = root / name
    assert (mode(tmp_path / "data"), mode(root), mode(image.parent), mode(image)) == (0o700, 0o700, 0o700, 0o600)
    os.chmod(image, 0o644)  # written by an older version
    MediaStore(root, 1_000_000).scan()
    assert mode(image) == 0o600
