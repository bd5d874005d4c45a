"""The vehicle side of edge-deploy: A/B slots, verified install, health check, switch, rollback.

Layout under the vehicle root (``--root``, e.g. /opt/edge_runtime)::

    vehicle.json      VehicleConfig: interpreter, service commands, watch time, free-space margin
    keys/*.pub        the Ed25519 public keys this vehicle trusts (only these, never the bundle's)
    staging/          uploads in progress (<sha256>.part, resumable)
    slots/a, slots/b  one install each: bundle/ (verified files), venv/ (from the bundled wheels),
                      state.json (installing | ready | failed, written last)
    current           symlink to the slot the service runs (slots/a or slots/b)
    lock              flock: one deploy at a time; the holder's pid and job inside
    deploy.log        one JSON line per event (install, switch, rollback, refusal)
    telemetry/        one directory per service start, the oldest removed beyond telemetry_keep

An install only ever writes into the *inactive* slot, and ``current`` moves by renaming a fresh
symlink over it (atomic on POSIX), after the bundle's signature, every file's sha256, the target
platform, the free space, the offline venv install and ``edge-run --selftest`` all passed. After
the switch the service is restarted and watched for ``watch_s`` seconds; if it does not stay up,
``current`` goes back to the previous slot and the service is restarted on it. An install killed at
any point leaves ``current`` untouched (the slot's state stays ``installing`` and is never used).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from .bundle import BundleReader, RUN_CONFIG
from .errors import DeployError
from .manifest import normalise_arch, sha256_file
from .signing import load_public_key

SLOTS = ("a", "b")
CONFIG = "vehicle.json"
SAFETY_FACTOR = 4  # free space needed: the bundle unpacked plus the venv it becomes (~3x the wheels)


@dataclass(frozen=True)
class VehicleConfig:
    """``vehicle.json``; every field has a default that fits a systemd vehicle."""

    python: str = "/usr/bin/python3"
    restart_command: tuple[str, ...] = ("systemctl", "restart", "edge-runtime.service")
    is_active_command: tuple[str, ...] = ("systemctl", "is-active", "--quiet", "edge-runtime.service")
    watch_s: float = 30.0
    poll_s: float = 0.5
    selftest_timeout_s: float = 600.0
    install_timeout_s: float = 1800.0
    lock_timeout_s: float = 3600.0
    min_free_mb: int = 200
    telemetry_dir: str = "telemetry"
    telemetry_keep: int = 20
    system_site_packages: bool = False  # JetPack: let the slot venv see NVIDIA's onnxruntime-gpu

    def __post_init__(self) -> None:
        for name in ("restart_command", "is_active_command"):
            value = getattr(self, name)
            if not value or not all(isinstance(x, str) and x for x in value):
                raise DeployError(f"{CONFIG}: {name} must be a non-empty list of strings", 2)
            object.__setattr__(self, name, tuple(value))
        for name in ("watch_s", "poll_s", "selftest_timeout_s", "install_timeout_s", "lock_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e7:
                raise DeployError(f"{CONFIG}: {name} must be a number of seconds >= 0, got {value!r}", 2)
        if self.poll_s <= 0:
            raise DeployError(f"{CONFIG}: poll_s must be > 0", 2)
        for name in ("min_free_mb", "telemetry_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "telemetry_keep" else 0):
                raise DeployError(f"{CONFIG}: {name} must be a non-negative integer (telemetry_keep >= 1)", 2)
        if not isinstance(self.python, str) or not self.python:
            raise DeployError(f"{CONFIG}: python must be the path of an interpreter", 2)

    @classmethod
    def load(cls, root: Path) -> "VehicleConfig":
        path = root / CONFIG
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DeployError(f"{path}: not a vehicle root (no {CONFIG}); set it up with edge-deploy init", 2)
        except (OSError, ValueError) as exc:
            raise DeployError(f"{path}: unreadable ({exc}); fix or re-create it with edge-deploy init", 2)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known) if isinstance(raw, dict) else ["<not an object>"]
        if unknown:
            raise DeployError(f"{path}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}", 2)
        return cls(**raw)


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Vehicle:
    root: Path

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    def slot_dir(self, slot: str) -> Path:
        return self.root / "slots" / slot

    def current_slot(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DeployError(f"{self.current_link}: not a symlink ({exc.strerror}); repair the vehicle root")
        name = Path(target).name
        return name if name in SLOTS else None

    def state(self, slot: str) -> dict[str, Any]:
        path = self.slot_dir(slot) / "state.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"status": "empty"} if not self.slot_dir(slot).exists() else {"status": "incomplete"}
        except (OSError, ValueError):
            return {"status": "incomplete"}

    def write_state(self, slot: str, state: dict[str, Any]) -> None:
        path = self.slot_dir(slot) / "state.json"
        tmp = path.with_name("state.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, sort_keys=True, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def switch(self, slot: str | None) -> None:
        """Point ``current`` at ``slot`` (None: remove it) by renaming a new link over the old one."""
        link = self.current_link
        if slot is None:
            link.unlink(missing_ok=True)
        else:
            tmp = self.root / f".current.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(f"slots/{slot}", tmp)
            os.replace(tmp, link)
        _fsync_dir(self.root)

    def log(self, event: str, **data: Any) -> None:
        record = {"t": time.time(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event,
                  "pid": os.getpid(), **data}
        with open(self.root / "deploy.log", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def trusted_keys(self) -> list[Any]:
        keys = [load_public_key(p) for p in sorted((self.root / "keys").glob("*.pub"))]
        if not keys:
            raise DeployError(f"{self.root / 'keys'}: no trusted public key (*.pub); add one with edge-deploy init --trust", 2)
        return keys


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def deploy_lock(vehicle: Vehicle, timeout: float, job: str, echo: Callable[[str], None]) -> Iterator[None]:
    """One deploy at a time (flock on ROOT/lock; the kernel drops it when the holder dies)."""
    path = vehicle.root / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not told:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "unknown"
                echo(f"waiting: another deploy holds {path} ({holder})")
                told = True
            if time.monotonic() > deadline:
                raise DeployError(f"another deploy held {path} for over {timeout:g} s; nothing was changed")
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {job}\n".encode(), 0)
        vehicle.log("lock_acquired", job=job)
        try:
            yield
        finally:
            vehicle.log("lock_released", job=job)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def lock_held(vehicle: Vehicle) -> bool:
    """Whether a deploy holds the lock now (a probe: taken and released at once when free)."""
    path = vehicle.root / "lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ helpers
def _die_with_parent() -> None:
    """preexec: the child gets SIGKILL when the agent dies (Linux prctl PR_SET_PDEATHSIG), so that a
    killed install leaves no pip still writing into the slot the next install rebuilds."""
    import ctypes
    import signal

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _run(cmd: list[str], timeout: float, what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or None, env=env,
                              preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    except subprocess.TimeoutExpired:
        raise DeployError(f"{what} took over {timeout:g} s and was stopped")
    except OSError as exc:
        raise DeployError(f"{what}: cannot run {cmd[0]} ({exc.strerror or exc})")


def _tail(proc: subprocess.CompletedProcess, n: int = 2) -> str:
    return " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-n:])[:300]


def _python_version(python: str) -> str:
    proc = _run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], 60, "checking the vehicle's Python")
    if proc.returncode != 0:
        raise DeployError(f"vehicle python {python} does not run: {_tail(proc)}; fix 'python' in {CONFIG}", 2)
    return proc.stdout.strip()


def _offline_env() -> dict[str, str]:
    """pip on the vehicle: no configuration files, no index, no cache -- the bundle's wheels only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def service_env(vehicle: Vehicle) -> dict[str, str]:
    return {**os.environ, "EDGE_DEPLOY_ROOT": str(vehicle.root)}


def restart_and_watch(vehicle: Vehicle, config: VehicleConfig, echo: Callable[[str], None]) -> str | None:
    """Restart the service and watch it; None when it stayed up for watch_s seconds, else why not."""
    proc = _run(list(config.restart_command), 120, "restarting the service", service_env(vehicle))
    if proc.returncode != 0:
        return f"restart command failed (exit {proc.returncode}: {_tail(proc)})"
    echo(f"service restarted; watching it for {config.watch_s:g} s")
    end = time.monotonic() + config.watch_s
    while True:
        check = _run(list(config.is_active_command), 60, "checking the service", service_env(vehicle))
        if check.returncode != 0:
            return f"the service stopped running within {config.watch_s:g} s of the restart"
        if time.monotonic() >= end:
            return None
        time.sleep(min(config.poll_s, max(0.0, end - time.monotonic())))


# ------------------------------------------------------------------------------------------ install
def prepare_upload(root: Path, sha256: str, size: int) -> dict[str, Any]:
    """Where the host uploads (``staging/<sha256>.part``) and from which byte it resumes; refuses a
    disk that cannot hold the upload plus its install."""
    import re

    vehicle = Vehicle(root)
    config = VehicleConfig.load(root)
    if not re.fullmatch(r"[0-9a-f]{64}", sha256) or size <= 0:
        raise DeployError("prepare: --sha256 must be 64 hex digits and --size positive", 2)
    staging = root / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    part = staging / f"{sha256}.part"
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    need = (size - offset) + SAFETY_FACTOR * size + config.min_free_mb * 2**20
    have = free_bytes(staging)
    if have < need:
        raise DeployError(f"not enough free space on the vehicle ({have / 2**20:.0f} MiB free under {staging}, "
                          f"{need / 2**20:.0f} MiB needed); nothing was uploaded, the current version keeps running")
    return {"staged": str(part), "offset": offset, "size": size}


def install(root: Path, staged: Path, expect_sha256: str | None = None,
            echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Install ``staged`` into the inactive slot and switch to it (module docstring); DeployError
    (one line) when refused, with the previous version still current and running."""
    vehicle = Vehicle(root)
    config = VehicleConfig.load(root)
    keys = vehicle.trusted_keys()
    if not staged.is_file():
        raise DeployError(f"{staged}: no such staged bundle; upload it first (edge-deploy push)", 2)
    with deploy_lock(vehicle, config.lock_timeout_s, f"install {staged.name}", echo):
        previous = vehicle.current_slot()
        slot = "b" if previous == "a" else "a"
        try:
            result = _install_locked(vehicle, config, keys, staged, expect_sha256, slot, previous, echo)
        except DeployError as exc:
            vehicle.log("refused", slot=slot, bundle=staged.name, reason=str(exc))
            with contextlib.suppress(OSError):
                staged.unlink()  # a refused bundle would be refused again: no point keeping the upload
            raise
        with contextlib.suppress(OSError):
            staged.unlink()
        return result


def _install_locked(vehicle: Vehicle, config: VehicleConfig, keys: list[Any], staged: Path,
                    expect_sha256: str | None, slot: str, previous: str | None,
                    echo: Callable[[str], None]) -> dict[str, Any]:
    if expect_sha256 is not None and sha256_file(staged) != expect_sha256:
        staged.unlink(missing_ok=True)
        raise DeployError(f"{staged.name}: the uploaded file's sha256 differs from the host's (damaged upload); "
                          "it was removed, push again")
    slot_dir = vehicle.slot_dir(slot)
    state: dict[str, Any] = {"status": "installing", "slot": slot, "started": time.time()}
    # the inactive slot is rebuilt from nothing; `current` never points at it during this
    shutil.rmtree(slot_dir, ignore_errors=True)
    slot_dir.mkdir(parents=True)
    vehicle.write_state(slot, state)

    def fail(reason: str) -> DeployError:
        state.update(status="failed", reason=reason, finished=time.time())
        with contextlib.suppress(OSError):
            vehicle.write_state(slot, state)
        keep = f"slot {previous} stays current" if previous else "no version was installed before"
        return DeployError(f"{reason}; {keep}")

    try:
        with BundleReader(staged, keys) as reader:
            manifest = reader.read_manifest()
            state.update(name=manifest.name, created=manifest.raw["created"], signer=reader.signer,
                         runtime=manifest.raw["runtime"]["version"])
            machine = normalise_arch(platform.machine())
            if manifest.arch != machine:
                raise fail(f"refused: {manifest.name} is built for {manifest.arch}, this vehicle is {machine}")
            python = _python_version(config.python)
            if manifest.python != python:
                raise fail(f"refused: {manifest.name} carries wheels for Python {manifest.python}, the vehicle's "
                           f"{config.python} is {python}")
            need = SAFETY_FACTOR * manifest.total_size + config.min_free_mb * 2**20
            have = free_bytes(slot_dir)
            if have < need:
                raise fail(f"refused: not enough free space ({have / 2**20:.0f} MiB free, {need / 2**20:.0f} MiB "
                           f"needed for {manifest.name})")
            echo(f"signature ok (key {reader.signer}); verifying and unpacking {len(manifest.files)} files into slot {slot}")
            reader.extract(slot_dir / "bundle")
    except DeployError as exc:
        if state["status"] == "failed":
            raise
        raise fail(str(exc)) from None
    venv = slot_dir / "venv"
    cmd = [config.python, "-m", "venv"] + (["--system-site-packages"] if config.system_site_packages else []) + [str(venv)]
    proc = _run(cmd, config.install_timeout_s, "creating the slot venv")
    if proc.returncode != 0:
        raise fail(f"creating the venv failed: {_tail(proc)}")
    echo(f"installing {manifest.raw['runtime']['requirement']} from the bundled wheels (offline)")
    proc = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                 str(slot_dir / "bundle" / "wheels"), manifest.raw["runtime"]["requirement"]],
                config.install_timeout_s, "the offline pip install", _offline_env())
    if proc.returncode != 0:
        reason = "no space left on the device" if "No space left" in (proc.stderr or "") else _tail(proc)
        raise fail(f"offline install failed: {reason}")
    st = manifest.raw["selftest"]
    cmd = [str(venv / "bin" / "edge-run"), "--selftest", "--model", str(slot_dir / "bundle" / manifest.raw["model"]["path"]),
           "--instruction", st["instruction"], "--selftest-budget", str(st["latency_budget_s"])]
    if st.get("threads"):
        cmd += ["--threads", str(st["threads"])]
    if st.get("rate_hz"):
        cmd += ["--rate", f"{st['rate_hz']:g}"]
    echo("health check: edge-run --selftest")
    proc = _run(cmd, config.selftest_timeout_s, "the health check (edge-run --selftest)")
    report = _last_json(proc.stdout)
    state["selftest"] = report
    if proc.returncode != 0 or not report or report.get("selftest") != "pass":
        why = "; ".join(report.get("reasons", [])) if report else _tail(proc)
        raise fail(f"health check failed: {why or f'exit {proc.returncode}'}")
    echo(f"health check passed: {_selftest_line(report)}")
    state.update(status="ready", installed=time.time())
    vehicle.write_state(slot, state)
    vehicle.switch(slot)
    vehicle.log("switch", slot=slot, previous=previous, name=manifest.name)
    echo(f"switched current -> slots/{slot}")
    problem = restart_and_watch(vehicle, config, echo)
    if problem is not None:
        return _roll_back(vehicle, config, slot, previous, problem, state, echo)
    state["watched_s"] = config.watch_s
    vehicle.write_state(slot, state)
    vehicle.log("installed", slot=slot, name=manifest.name)
    return {"installed": manifest.name, "slot": slot, "previous": previous, "selftest": report}


def _roll_back(vehicle: Vehicle, config: VehicleConfig, slot: str, previous: str | None, problem: str,
               state: dict[str, Any], echo: Callable[[str], None]) -> dict[str, Any]:
    state.update(status="failed", reason=problem, finished=time.time())
    vehicle.write_state(slot, state)
    vehicle.switch(previous)
    vehicle.log("rollback", slot=slot, to=previous, reason=problem)
    if previous is None:
        _run(list(config.restart_command), 120, "restarting the service", service_env(vehicle))
        raise DeployError(f"{problem}; no previous version to roll back to, current removed")
    echo(f"{problem}: rolling back to slots/{previous}")
    again = restart_and_watch(vehicle, config, echo)
    if again is not None:
        raise DeployError(f"{problem}; rolled back to slot {previous}, but it does not stay up either: {again}")
    raise DeployError(f"{problem}; rolled back to slot {previous} ({vehicle.state(previous).get('name')}), running")


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed((stdout or "").strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return None


def _selftest_line(report: dict[str, Any]) -> str:
    answer, loop = report.get("answer") or {}, report.get("loop") or {}
    return (f"answer {answer.get('latency_s', float('nan')):.3f} s (budget {answer.get('budget_s')} s), "
            f"{loop.get('steps')} control steps, {loop.get('overruns')} overruns")


# ------------------------------------------------------------------------------------------ operate
def rollback(root: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Switch to the other slot if it holds a good install; restart and watch; back again if it fails."""
    vehicle = Vehicle(root)
    config = VehicleConfig.load(root)
    with deploy_lock(vehicle, config.lock_timeout_s, "rollback", echo):
        current = vehicle.current_slot()
        if current is None:
            raise DeployError("nothing is installed; nothing to roll back")
        other = "b" if current == "a" else "a"
        state = vehicle.state(other)
        if state.get("status") != "ready":
            raise DeployError(f"slot {other} holds no good install (state {state.get('status')}); "
                              f"slot {current} stays current")
        vehicle.switch(other)
        vehicle.log("switch", slot=other, previous=current, name=state.get("name"), manual_rollback=True)
        echo(f"switched current -> slots/{other} ({state.get('name')})")
        problem = restart_and_watch(vehicle, config, echo)
        if problem is not None:
            vehicle.switch(current)
            vehicle.log("rollback", slot=other, to=current, reason=problem)
            restart_and_watch(vehicle, config, echo)
            raise DeployError(f"{problem}; back on slot {current}")
        return {"current": other, "name": state.get("name"), "previous": current}


def status(root: Path) -> dict[str, Any]:
    vehicle = Vehicle(root)
    config = VehicleConfig.load(root)
    current = vehicle.current_slot()
    slots = {s: {k: v for k, v in vehicle.state(s).items() if k != "selftest"} for s in SLOTS}
    if any(s.get("status") == "installing" for s in slots.values()) and not lock_held(vehicle):
        for s in slots.values():  # nobody installs: that install was killed; the slot is never used
            if s.get("status") == "installing":
                s["status"] = "interrupted"
    try:
        active = _run(list(config.is_active_command), 30, "checking the service", service_env(vehicle)).returncode == 0
    except DeployError:
        active = None
    staging = sorted(p.name for p in (root / "staging").glob("*.part")) if (root / "staging").is_dir() else []
    return {"root": str(root), "current": current, "current_name": slots.get(current, {}).get("name"),
            "service_active": active, "slots": slots, "staging": staging}


# ------------------------------------------------------------------------------------------ service
def exec_current(root: Path) -> None:
    """The service's entry point: edge-run of the current slot with the bundle's run configuration,
    into a new telemetry directory (the oldest removed beyond telemetry_keep). Replaces this process."""
    vehicle = Vehicle(root)
    config = VehicleConfig.load(root)
    slot = vehicle.current_slot()
    if slot is None:
        raise DeployError(f"{root}: nothing installed (no current slot); deploy a bundle first")
    slot_dir = vehicle.slot_dir(slot)
    try:
        run = json.loads((slot_dir / "bundle" / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeployError(f"slot {slot}: run configuration unreadable ({exc})")
    telemetry = Path(config.telemetry_dir)
    telemetry = telemetry if telemetry.is_absolute() else root / telemetry
    telemetry.mkdir(parents=True, exist_ok=True)
    runs = sorted(p for p in telemetry.iterdir() if p.is_dir())
    for old in runs[: max(0, len(runs) - (config.telemetry_keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    out = telemetry / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{slot}-{os.getpid()}"
    args = [a.replace("{bundle}", str(slot_dir / "bundle")).replace("{out}", str(out)) for a in run["args"]]
    program = str(slot_dir / "venv" / "bin" / "edge-run")
    sys.stdout.flush()
    try:
        os.execv(program, [program, *args])
    except OSError as exc:
        raise DeployError(f"slot {slot}: cannot start {program} ({exc.strerror or exc}); roll back with "
                          "edge-deploy rollback")


def init_root(root: Path, trust: list[Path], overrides: dict[str, Any]) -> Path:
    """Create a vehicle root: directories, trusted keys (copied into keys/), vehicle.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "keys").mkdir(exist_ok=True)
    (root / "slots").mkdir(exist_ok=True)
    (root / "staging").mkdir(exist_ok=True)
    for key in trust:
        load_public_key(key)  # refuse a bad key before copying it
        shutil.copyfile(key, root / "keys" / Path(key).name)
    path = root / CONFIG
    config = VehicleConfig.load(root) if path.exists() else VehicleConfig()
    merged = {**asdict(config), **overrides}
    VehicleConfig(**merged)  # validated
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path
