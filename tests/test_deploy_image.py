"""What the container image runs, without a container registry: the wheel the Dockerfile installs, in a
clean venv, as a throwaway non-root user, with the image's config path and data volume (bind-mounted in a
private mount namespace), through `validate` and a short headless demo.

Third-party packages come from this checkout's venv through a `.pth` line (nothing is downloaded at
test time); `courtyard` itself comes only from the wheel: the editable install's hook is not loaded.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR, DATA_DIR = "/etc/courtyard", "/var/lib/courtyard"  # as in the Dockerfile

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("runuser") is None,
    reason="needs root, unshare and runuser (util-linux) to run as a throwaway user in a private mount namespace")


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="courtyard-image-"))
    d.chmod(0o755)  # the throwaway user must reach the venv
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    name = f"cy-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", DATA_DIR, "--shell", "/usr/sbin/nologin",
                    name], check=True)
    yield name
    subprocess.run(["userdel", name], check=False)


def base_python() -> str:
    """An interpreter of this minor version that any user may run (the image's is /usr/local/bin/python3;
    a pyenv build under /root is not reachable for the service user)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}", os.path.realpath(sys.executable)):
        path = Path(candidate)
        if path.exists() and all(p.stat().st_mode & 0o001 for p in [*path.parents, path] if p != Path("/")):
            return candidate
    pytest.skip(f"no {version} that a non-root user may execute")


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def test_wheel_runs_as_in_the_image(workdir: Path, throwaway_user: str) -> None:
    wheels, src = workdir / "wheels", workdir / "src"
    # Built from a copy: setuptools leaves build/ behind, which must not land in the checkout.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "courtyard-data", "__pycache__", ".*_cache"))
    built = run([sys.executable, "-m", "pip", "wheel", str(src), "--no-build-isolation", "--no-deps", "-q",
                 "-w", str(wheels)], cwd=src)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("courtyard-*.whl")

    venv = workdir / "venv"
    made = run([base_python(), "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    installed = run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    assert installed.returncode == 0, installed.stderr
    site = Path(run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                    ).stdout.strip())
    (site / "_courtyard_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    etc, data = workdir / "etc-courtyard", workdir / "var-lib-courtyard"
    etc.mkdir()
    data.mkdir()
    shutil.copy(ROOT / "deploy" / "courtyard.yaml", etc / "config.yaml")
    shutil.chown(data, throwaway_user, throwaway_user)
    data.chmod(0o700)

    courtyard = venv / "bin" / "courtyard"
    script = f"""
set -e
for d in {CONFIG_DIR} {DATA_DIR}; do [ -d $d ] || {{ mkdir -p $d; echo $d >> {workdir}/created; }}; done
mount --bind {etc} {CONFIG_DIR}
mount --bind {data} {DATA_DIR}
cd {DATA_DIR}
as_user() {{ runuser -u {throwaway_user} -- env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME={DATA_DIR} \
    COURTYARD_DATA={DATA_DIR} "$@"; }}
as_user id -u
as_user {venv}/bin/python -c 'import gateway, drivers; print("from", gateway.__file__)'
as_user {courtyard} validate -c {CONFIG_DIR}/config.yaml
as_user {courtyard} demo --headless --duration 8 --data {DATA_DIR}/demo --speed 4
"""
    try:
        result = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=workdir)
    finally:
        created = workdir / "created"
        for line in created.read_text().split() if created.exists() else ():
            Path(line).rmdir()  # mount points this test had to make on the host, empty again
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    uid = int(result.stdout.splitlines()[0])
    assert uid != 0
    assert f"from {venv}" in out  # the wheel's code, not this checkout's
    assert f"{CONFIG_DIR}/config.yaml: OK (0 devices" in out
    outbox = data / "demo" / "outbox.db"
    assert outbox.exists() and outbox.stat().st_uid == uid  # written by the service user on the volume
    with sqlite3.connect(outbox) as db:
        n = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert n > 0
    print(f"\nimage layout: validate OK, headless demo as uid {uid} committed {n} events to {DATA_DIR}/demo")
