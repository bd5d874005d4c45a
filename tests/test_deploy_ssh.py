"""edge-deploy push against a real OpenSSH sshd on loopback serving a temporary vehicle root.

The tests start ``/usr/sbin/sshd`` (Debian ``openssh-server``; .ci/run installs it) as the current
user on a free 127.0.0.1 port with a throwaway host key and one authorised client key; the
"vehicle" is a directory initialised with ``edge-deploy init`` whose service manager is a small
script standing in for systemctl (it runs ``edge-deploy run`` -- the unit's ExecStart -- in the
background). Installs are real: the offline venv from the bundle's wheels and ``edge-run
--selftest`` in it. Every failure case ends with the previous version current and its service
process still the same one, running.

Dependency wheels: from ``$EDGE_DEPLOY_TEST_WHEELS`` (a directory) when set, else fetched once per
session with ``pip download`` from pip's configured index into a temporary directory (skipped with
the reason when that fails).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from edge_runtime.deploy.bundle import BundleSpec, build_bundle, build_runtime_wheel
from edge_runtime.deploy.signing import generate_keypair

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny" / "dense.onnx"
SSHD = Path("/usr/sbin/sshd")
AGENT = str(Path(sys.executable).with_name("edge-deploy"))
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
CREATED = 1_700_000_000
DEPENDENCIES = ["numpy>=1.24", "scipy>=1.10", "osqp>=1.0", "psutil>=5.9", "onnxruntime>=1.17", "tokenizers>=0.15"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SSHD.exists() or not shutil.which("ssh") or not shutil.which("sftp"),
                       reason="needs OpenSSH: /usr/sbin/sshd (apt-get install openssh-server) and ssh/sftp"),
    pytest.mark.skipif(not Path(AGENT).exists(), reason="edge-deploy console script not installed (pip install -e .)"),
]

FAKE_SVC = r"""#!/bin/bash
# Stands in for systemctl: restart runs `edge-deploy run` (the unit's ExecStart) in the background.
ROOT="${EDGE_DEPLOY_ROOT:?}"; PIDF="$ROOT/service.pid"
alive() { [ -f "$PIDF" ] && p=$(cat "$PIDF") && [ -r /proc/$p/stat ] && [ "$(awk '{print $3}' /proc/$p/stat)" != Z ]; }
case "$1" in
  restart)
    if alive; then kill "$(cat "$PIDF")"; for i in $(seq 100); do alive || break; sleep 0.1; done; fi
    setsid "@AGENT@" run --root "$ROOT" >>"$ROOT/service.log" 2>&1 </dev/null &
    echo $! >"$PIDF" ;;
  is-active) alive ;;
  stop) alive && kill "$(cat "$PIDF")"; rm -f "$PIDF"; true ;;
  *) exit 2 ;;
esac
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


class Sshd:
    """A throwaway sshd on 127.0.0.1 for the current user."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir, self.port = d, free_port()
        keygen(d / "host_key")
        keygen(d / "other_host_key")
        keygen(d / "client_key")
        shutil.copy(d / "client_key.pub", d / "authorized_keys")
        self.known_hosts = d / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {(d / 'host_key.pub').read_text().split(' ', 2)[0]} "
                                    f"{(d / 'host_key.pub').read_text().split()[1]}\n")
        self.wrong_known_hosts = d / "wrong_known_hosts"
        self.wrong_known_hosts.write_text(f"[127.0.0.1]:{self.port} "
                                          + " ".join((d / "other_host_key.pub").read_text().split()[:2]) + "\n")
        config = d / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}", "StrictModes no", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "PermitRootLogin yes",
            f"AllowUsers {getpass.getuser()}", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=open(d / "sshd.log", "w"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("sshd did not listen within 20 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    given = os.environ.get("EDGE_DEPLOY_TEST_WHEELS")
    if given:
        return Path(given)
    d = tmp_path_factory.mktemp("wheelhouse")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(d),
                           *DEPENDENCIES], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"no dependency wheels (pip download failed: {proc.stderr.strip()[-200:]}); "
                    "set EDGE_DEPLOY_TEST_WHEELS to a wheel directory")
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory, wheelhouse):
    """Keys, bundles, an sshd and a vehicle root with bundle v1 installed and its service running."""
    d = tmp_path_factory.mktemp("deploy")
    (fleet_key, fleet_pub), (other_key, _) = generate_keypair(d / "fleet"), generate_keypair(d / "other")
    runtime = build_runtime_wheel(d / "rt", CREATED)

    def bundle(name: str, key: Path = fleet_key, target: str = "x86_64", deps: bool = True, **kw) -> Path:
        spec = BundleSpec(model=TINY, output=d / f"{name}.bundle", key=key, target=target, python=PY, glibc="2.35",
                          name=name, runtime_wheel=runtime, wheels_from=wheelhouse, dependency_wheels=deps,
                          created=CREATED, threads=1, **kw)
        return build_bundle(spec)[0]

    b = {"v1": bundle("v1", instruction="Drive on the centre line."),
         "v2": bundle("v2", instruction="Drive at 2.5 m/s."),
         "v3": bundle("v3", instruction="Drive smoothly."),
         "slow": bundle("slow", latency_budget_s=1e-9),
         "dies": bundle("dies", run_args=("--track", "/nonexistent/track.csv")),
         "foreign": bundle("foreign", key=other_key, deps=False),
         "arm": bundle("arm", target="aarch64", deps=False)}
    tampered = d / "tampered.bundle"  # v2 with one byte of the model changed inside the tar
    shutil.copy(b["v2"], tampered)
    with tarfile.open(tampered) as tar:
        offset = tar.getmember("model/model.onnx").offset_data + 1000
    with open(tampered, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    b["tampered"] = tampered

    sshd = Sshd(d / "sshd")
    root = d / "vehicle"
    svc = d / "fake-svc"
    svc.write_text(FAKE_SVC.replace("@AGENT@", AGENT))
    svc.chmod(0o755)
    subprocess.run([AGENT, "init", "--root", str(root), "--trust", str(fleet_pub), "--python", sys.executable,
                    "--restart-command", f"{svc} restart", "--is-active-command", f"{svc} is-active",
                    "--watch", "3"], check=True, capture_output=True)
    w = {"dir": d, "bundles": b, "sshd": sshd, "root": root, "svc": svc}
    first = push(w, b["v1"])
    assert first.returncode == 0, first.stderr
    yield w
    subprocess.run([str(svc), "stop"], env={**os.environ, "EDGE_DEPLOY_ROOT": str(root)})
    sshd.stop()


def push(w, bundle: Path, known_hosts: Path | None = None, extra=(), wait=True):
    cmd = [AGENT, "push", str(bundle), "--target", f"{getpass.getuser()}@127.0.0.1",
           "--port", str(w["sshd"].port), "--known-hosts", str(known_hosts or w["sshd"].known_hosts),
           "--identity", str(w["sshd"].dir / "client_key"), "--root", str(w["root"]),
           "--remote-edge-deploy", AGENT, *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def status(w) -> dict:
    proc = subprocess.run([AGENT, "status", "--root", str(w["root"])], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def service_pid(w) -> int:
    return int((w["root"] / "service.pid").read_text())


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def snapshot(w) -> tuple[str, str, int]:
    st = status(w)
    pid = service_pid(w)
    assert st["service_active"] and running(pid)
    return st["current"], st["current_name"], pid


def assert_unchanged(w, before) -> None:
    current, name, pid = before
    st = status(w)
    assert (st["current"], st["current_name"]) == (current, name)
    assert service_pid(w) == pid and running(pid), "the previous version's service must keep running"


def one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("edge-deploy: error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------- tests
def test_happy_path_installs_switches_runs_and_rolls_back(world):
    w = world
    before = snapshot(w)
    proc = push(w, w["bundles"]["v2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "health check passed" in proc.stdout and "installed on" in proc.stdout
    st = status(w)
    assert st["current_name"] == "v2" and st["current"] != before[0] and st["service_active"]
    pid = service_pid(w)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    slot_venv = str(w["root"] / "slots" / st["current"] / "venv" / "bin").encode()
    assert cmdline[0].startswith(slot_venv) and cmdline[1] == slot_venv + b"/edge-run"  # the new slot's own runtime
    assert b"Drive at 2.5 m/s." in cmdline
    assert os.readlink(w["root"] / "current") == f"slots/{st['current']}"
    assert not list((w["root"] / "staging").glob("*.part"))  # the upload is gone once installed
    # the rollback command, from the host over ssh, goes back to v1
    rb = subprocess.run([AGENT, "rollback", "--target", f"{getpass.getuser()}@127.0.0.1", "--port",
                         str(w["sshd"].port), "--known-hosts", str(w["sshd"].known_hosts), "--identity",
                         str(w["sshd"].dir / "client_key"), "--root", str(w["root"]), "--remote-edge-deploy", AGENT],
                        capture_output=True, text=True, timeout=300)
    assert rb.returncode == 0, rb.stderr
    assert status(w)["current_name"] == "v1" and running(service_pid(w))


@pytest.mark.parametrize("which, words", [
    ("tampered", "sha256 does not match the signed manifest"),
    ("foreign", "not signed by a key this vehicle trusts"),
    ("arm", "built for aarch64, this vehicle is x86_64"),
])
def test_refused_bundles_leave_the_running_version(world, which, words):
    before = snapshot(world)
    line = one_line_error(push(world, world["bundles"][which]))
    assert words in line and f"slot {before[0]} stays current" in line
    assert_unchanged(world, before)
    assert not list((world["root"] / "staging").glob("*.part"))  # a refused upload is not kept


def test_failing_health_check_never_switches(world):
    before = snapshot(world)
    line = one_line_error(push(world, world["bundles"]["slow"]))
    assert "health check failed" in line and "over the budget" in line
    assert_unchanged(world, before)
    other = "b" if before[0] == "a" else "a"
    assert status(world)["slots"][other]["status"] == "failed"


def test_service_failing_after_the_switch_is_rolled_back(world):
    current, name, _ = snapshot(world)
    line = one_line_error(push(world, world["bundles"]["dies"]))
    assert "stopped running within" in line and f"rolled back to slot {current}" in line
    st = status(world)
    assert (st["current"], st["current_name"]) == (current, name) and st["service_active"]
    events = [json.loads(x)["event"] for x in (world["root"] / "deploy.log").read_text().splitlines()]
    assert "rollback" in events


def test_unknown_host_key_is_refused_before_anything_is_sent(world):
    before = snapshot(world)
    staged = sorted((world["root"] / "staging").iterdir())
    line = one_line_error(push(world, world["bundles"]["v2"], known_hosts=world["sshd"].wrong_known_hosts))
    assert "host key" in line
    empty = world["dir"] / "empty_known_hosts"
    empty.write_text("")
    line = one_line_error(push(world, world["bundles"]["v2"], known_hosts=empty))
    assert "host key" in line
    assert sorted((world["root"] / "staging").iterdir()) == staged
    assert_unchanged(world, before)


def test_full_disk_is_refused_before_the_upload(world):
    before = snapshot(world)
    staged = sorted((world["root"] / "staging").iterdir())
    config_path = world["root"] / "vehicle.json"
    saved = config_path.read_text()
    config_path.write_text(json.dumps({**json.loads(saved), "min_free_mb": 1 << 40}))
    try:
        line = one_line_error(push(world, world["bundles"]["v2"]))
    finally:
        config_path.write_text(saved)
    assert "not enough free space" in line
    assert sorted((world["root"] / "staging").iterdir()) == staged  # nothing was uploaded
    assert_unchanged(world, before)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_cut_upload_resumes(world):
    w = world
    before = snapshot(w)
    bundle = w["bundles"]["v3"]
    size = bundle.stat().st_size
    proc = push(w, bundle, extra=("--limit-kbps", "40000"), wait=False)  # ~5 MB/s: time to cut it

    def part_size() -> int:
        parts = list((w["root"] / "staging").glob("*.part"))
        return parts[0].stat().st_size if parts else 0

    wait_for(lambda: part_size() > 4 << 20, 120, "the upload to start")
    os.killpg(proc.pid, signal.SIGKILL)  # push, ssh and sftp: the connection drops mid-file
    proc.wait()
    time.sleep(0.5)
    cut = part_size()
    assert 0 < cut < size
    assert_unchanged(w, before)
    again = push(w, bundle)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = [ln for ln in again.stdout.splitlines() if "resuming at byte" in ln]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1]) > 0
    assert status(w)["current_name"] == "v3"


def test_install_killed_midway_keeps_the_previous_slot(world):
    w = world
    before = snapshot(w)
    proc = push(w, w["bundles"]["v2"], wait=False)
    inactive = "b" if before[0] == "a" else "a"
    slot = w["root"] / "slots" / inactive

    def installing() -> bool:  # the new install's venv, not the old one still in the slot during the upload
        try:
            state = json.loads((slot / "state.json").read_text())
        except (OSError, ValueError):
            return False
        return state.get("status") == "installing" and (slot / "venv" / "bin" / "python").exists()

    wait_for(installing, 300, "the install to reach the slot venv")
    holder = (w["root"] / "lock").read_text()
    agent_pid = int(holder.split()[1].rstrip(":"))
    os.kill(agent_pid, signal.SIGKILL)  # the vehicle agent dies in the middle of the install
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert_unchanged(w, before)
    assert status(w)["slots"][inactive]["status"] == "interrupted"
    # the vehicle is not wedged: the next deploy takes the lock and installs
    again = push(w, w["bundles"]["v2"])
    assert again.returncode == 0, again.stderr
    assert status(w)["current_name"] == "v2"


def test_concurrent_deploys_are_serialised_by_the_vehicle_lock(world):
    w = world
    log = w["root"] / "deploy.log"
    earlier = len(log.read_text().splitlines())  # (an agent killed earlier never logged its release)
    first = push(w, w["bundles"]["v1"], wait=False)
    second = push(w, w["bundles"]["v3"], wait=False)
    outs = [p.communicate(timeout=900) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    assert any("waiting: another deploy holds" in out for out, _ in outs)
    events = [json.loads(x) for x in log.read_text().splitlines()[earlier:]]
    assert sum(e["event"] == "lock_acquired" for e in events) == 2
    held = None
    for e in events:  # every lock_acquired is followed by its own lock_released before the next acquire
        if e["event"] == "lock_acquired":
            assert held is None, "two deploys held the vehicle lock at once"
            held = e["pid"]
        elif e["event"] == "lock_released":
            assert held == e["pid"]
            held = None
    assert status(w)["current_name"] in ("v1", "v3") and running(service_pid(w))
