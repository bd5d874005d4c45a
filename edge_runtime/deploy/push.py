"""Host side of an install: upload a bundle over SSH (resumable) and run the vehicle agent on it.

Only the system OpenSSH client is used (``ssh`` for commands, ``sftp`` for the upload), always with
``BatchMode=yes`` and ``StrictHostKeyChecking=yes``: a vehicle whose host key is not in the
known_hosts file (``--known-hosts``, else ssh's own files) is refused, never trusted on first use.

1. ``edge-deploy prepare`` on the vehicle: free space checked, and how many bytes of
   ``staging/<sha256>.part`` are already there (an earlier, cut upload);
2. ``sftp`` ``put`` (from byte 0) or ``reput`` (resume at the remote file's size);
3. ``edge-deploy install --expect-sha256`` on the vehicle: the agent checks the upload against the
   host's sha256, then verifies signature and files with *its own* trusted keys and installs.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import DeployError
from .manifest import sha256_file

SSH_FAILED = 255
DEFAULT_ROOT = "/opt/edge_runtime"


@dataclass(frozen=True)
class SshTarget:
    """``user@host`` plus how to reach and authenticate it."""

    destination: str
    port: int = 22
    known_hosts: Path | None = None
    identity: Path | None = None
    root: str = DEFAULT_ROOT
    agent: str = "edge-deploy"  # the edge-deploy command on the vehicle
    connect_timeout: int = 15

    def __post_init__(self) -> None:
        if not re.fullmatch(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9._:\[\]-]+", self.destination):
            raise DeployError(f"--target {self.destination!r}: expected user@host", 2)
        if not 0 < self.port < 65536:
            raise DeployError(f"--port must be 1..65535, got {self.port}", 2)
        for flag, path in (("--known-hosts", self.known_hosts), ("--identity", self.identity)):
            if path is not None and not Path(path).is_file():
                raise DeployError(f"{flag} {path}: file not found", 2)

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no",
                "-o", f"ConnectTimeout={self.connect_timeout}", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3"]
        if self.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity is not None:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh(self, *remote: str) -> list[str]:
        return ["ssh", *self.options(), "-p", str(self.port), self.destination, "--", shlex.join(remote)]

    def sftp(self, batch: Path, limit_kbps: int | None) -> list[str]:
        cmd = ["sftp", *self.options(), "-P", str(self.port), "-b", str(batch)]
        if limit_kbps:
            cmd += ["-l", str(limit_kbps)]
        return cmd + [self.destination]

    def agent_cmd(self, *args: str) -> list[str]:
        return [*shlex.split(self.agent), *args, "--root", self.root]


def _ssh_error(target: SshTarget, proc: subprocess.CompletedProcess, what: str) -> DeployError:
    err = (proc.stderr or "").strip()
    if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
        where = target.known_hosts or "ssh's known_hosts files"
        return DeployError(f"refused: the host key of {target.destination} is not in {where} (or has changed); "
                           "check its fingerprint out of band and add it; nothing was uploaded")
    if "Permission denied" in err:
        return DeployError(f"{what}: {target.destination} refused the login (key not authorised); nothing changed")
    last = err.splitlines()[-1] if err else f"exit {proc.returncode}"
    return DeployError(f"{what}: ssh to {target.destination} failed ({last[:300]})")


def _agent_line(proc: subprocess.CompletedProcess) -> str:
    err = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
    return err[-1].removeprefix("edge-deploy: error: ") if err else f"exit {proc.returncode}"


def push(bundle: Path, target: SshTarget, limit_kbps: int | None = None,
         echo: Callable[[str], None] = print) -> int:
    """Upload and install; returns the agent's exit status (0 installed). DeployError for transport failures."""
    if not bundle.is_file():
        raise DeployError(f"{bundle}: bundle not found", 2)
    size = bundle.stat().st_size
    digest = sha256_file(bundle)
    proc = subprocess.run(target.ssh(*target.agent_cmd("prepare", "--sha256", digest, "--size", str(size))),
                          capture_output=True, text=True)
    if proc.returncode == SSH_FAILED:
        raise _ssh_error(target, proc, "prepare")
    if proc.returncode != 0:
        raise DeployError(f"vehicle refused the upload: {_agent_line(proc)}", proc.returncode if proc.returncode in (1, 2) else 1)
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        staged, offset = str(info["staged"]), int(info["offset"])
    except (ValueError, KeyError, IndexError):
        raise DeployError(f"the vehicle's edge-deploy prepare answered {proc.stdout.strip()[:200]!r}; is its "
                          "edge-deploy the same version?")
    if offset < size:
        echo(f"uploading {bundle.name} ({size / 2**20:.1f} MiB) to {target.destination}:{staged}"
             + (f", resuming at byte {offset}" if offset else ""))
        with tempfile.NamedTemporaryFile("w", suffix=".sftp", delete=False) as batch:
            verb = "reput" if offset else "put"
            batch.write(f"{verb} {_sftp_quote(str(bundle))} {_sftp_quote(staged)}\n")
        try:
            up = subprocess.run(target.sftp(Path(batch.name), limit_kbps), capture_output=True, text=True)
        finally:
            Path(batch.name).unlink(missing_ok=True)
        if up.returncode != 0:
            if "Host key verification failed" in (up.stderr or ""):
                raise _ssh_error(target, up, "upload")
            raise DeployError(f"upload cut at some byte ({(up.stderr or '').strip().splitlines()[-1:] or up.returncode}); "
                              "run the same push again to resume; the vehicle is unchanged")
    else:
        echo(f"{bundle.name} is already staged on {target.destination}")
    inst = subprocess.Popen(target.ssh(*target.agent_cmd("install", staged, "--expect-sha256", digest)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in inst.stdout:  # the agent's progress, as it happens
        echo(f"[vehicle] {line.rstrip()}")
    err = inst.stderr.read()
    code = inst.wait()
    if code == SSH_FAILED:
        raise _ssh_error(target, subprocess.CompletedProcess([], code, "", err), "install")
    if code != 0:
        line = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
        raise DeployError(f"vehicle: {line.removeprefix('edge-deploy: error: ')}", code if code in (1, 2) else 1)
    return 0


def _sftp_quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def remote(target: SshTarget, *args: str) -> int:
    """``edge-deploy status|list|rollback`` run on the vehicle, output passed through."""
    proc = subprocess.run(target.ssh(*target.agent_cmd(*args)), capture_output=True, text=True)
    if proc.returncode == SSH_FAILED:
        raise _ssh_error(target, proc, args[0])
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode
