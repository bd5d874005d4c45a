"""The bundle manifest: what a bundle holds and for which machine, as canonical, signed JSON.

``manifest.json`` names the bundle format, its creation time, the target (CPU architecture and
Python version the wheels were chosen for), the versions inside (runtime, every wheel), the model
and its metadata, the selftest budget, and the path, size and sha256 of every other file. It is
serialised canonically (sorted keys, fixed separators) so that the same inputs give the same bytes
-- and the same Ed25519 signature.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DeployError

FORMAT = "edge-runtime-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 1 << 20
#: Paths inside a bundle: relative, '/'-separated, plain names (no '..', no leading '/', no odd bytes).
_PATH = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._+-]*/)*[A-Za-z0-9][A-Za-z0-9._+-]*$")
TARGETS = ("aarch64", "x86_64")
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


def normalise_arch(machine: str) -> str:
    m = machine.lower()
    return _ARCH_ALIASES.get(m, m)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def check_path(path: str) -> str:
    if not isinstance(path, str) or not _PATH.match(path) or ".." in path.split("/"):
        raise DeployError(f"bundle path {path!r} is not a plain relative path; the bundle is malformed")
    return path


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The parsed, checked manifest (the signed JSON stays the source of truth: ``raw``)."""

    raw: dict[str, Any]

    def __post_init__(self) -> None:
        r = self.raw
        where = "manifest.json"
        if r.get("format") != FORMAT:
            raise DeployError(f"{where}: format {r.get('format')!r}, this edge-deploy reads {FORMAT}; "
                              "rebuild the bundle with this version")
        for key in ("name", "created", "target", "files", "runtime", "model", "selftest"):
            if key not in r:
                raise DeployError(f"{where}: field {key!r} missing; the bundle is malformed")
        target = r["target"]
        if not isinstance(target, dict) or target.get("arch") not in TARGETS or not isinstance(target.get("python"), str):
            raise DeployError(f"{where}: field 'target' must name arch ({'/'.join(TARGETS)}) and python")
        seen = set()
        for f in r["files"]:
            check_path(f.get("path"))
            if f["path"] in (MANIFEST, SIGNATURE) or f["path"] in seen:
                raise DeployError(f"{where}: file {f['path']!r} listed twice or reserved")
            if not (isinstance(f.get("size"), int) and f["size"] >= 0
                    and isinstance(f.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])):
                raise DeployError(f"{where}: file {f['path']!r} needs an integer size and a sha256 hex digest")
            seen.add(f["path"])
        for key, path in (("model", r["model"].get("path")), ("runtime", r["runtime"].get("wheel"))):
            if path not in seen:
                raise DeployError(f"{where}: {key} file {path!r} is not among the listed files")

    @property
    def files(self) -> list[FileEntry]:
        return [FileEntry(f["path"], f["size"], f["sha256"]) for f in self.raw["files"]]

    @property
    def arch(self) -> str:
        return self.raw["target"]["arch"]

    @property
    def python(self) -> str:
        return self.raw["target"]["python"]

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def parse(cls, data: bytes) -> "Manifest":
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DeployError(f"manifest.json does not parse ({exc}); the bundle is malformed")
        if not isinstance(raw, dict):
            raise DeployError("manifest.json is not a JSON object; the bundle is malformed")
        return cls(raw)
