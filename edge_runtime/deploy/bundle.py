"""Build a bundle (host) and read one back, verifying as it goes (vehicle).

A bundle is an uncompressed tar whose first two members are ``manifest.json`` and ``manifest.sig``
(Ed25519 over the manifest's bytes), followed by every file the manifest lists, sorted by path:

    model/model.onnx           the exported decoder (self-describing: tokenizer, prompt, schema)
    model/NAME.onnx.data       the weights, when the model was exported with --external-data
    model/model.engine         optional TensorRT engine (deploy/build_trt_engine.py)
    config/run.json            the edge-run arguments the service runs with
    config/script.txt          optional instruction script
    wheels/*.whl               the runtime wheel and its dependencies for the target platform

Deterministic: members in a fixed order, every mtime the creation time (``SOURCE_DATE_EPOCH`` or
``--created``), owner 0/0 with no names, mode 0644, canonical manifest JSON, and Ed25519 signatures
are deterministic -- the same inputs give the same bytes.

Reading (:class:`BundleReader`) never trusts a byte before it is checked: the signature is
verified on the first two members before the manifest is parsed, and each further member is
refused unless it is a regular file the manifest lists, streamed to disk while hashed, and
deleted again when its size or sha256 differs; a listed file that never came is an error too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DeployError
from .manifest import (FORMAT, MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE, TARGETS, Manifest, canonical_json,
                       check_path, sha256_file)
from .signing import SIGNATURE_BYTES, load_private_key, public_key_id, sign, verify

MODEL_PATH = "model/model.onnx"
ENGINE_PATH = "model/model.engine"
RUN_CONFIG = "config/run.json"
SCRIPT_PATH = "config/script.txt"
DEFAULT_SERVICE_DURATION_S = 86400.0  # one edge-run per day at most; systemd restarts it
_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def manylinux_tags(arch: str, glibc: str) -> list[str]:
    """pip --platform tags a target with glibc ``glibc`` (e.g. 2.35 on JetPack 6) runs."""
    major, minor = (int(x) for x in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    tags += [f"manylinux2014_{arch}", "linux_" + arch]
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"] + [f"manylinux_2_{m}_x86_64" for m in (12, 5)]
    return tags


def _created(value: int | None) -> int:
    if value is not None:
        return int(value)
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        try:
            return int(env)
        except ValueError:
            raise DeployError(f"SOURCE_DATE_EPOCH={env!r} is not an integer number of seconds", 2)
    return int(time.time())


@dataclass(frozen=True)
class BundleSpec:
    """What ``edge-deploy bundle`` puts in; checked before anything runs."""

    model: Path
    output: Path
    key: Path
    target: str = "aarch64"
    python: str = "3.10"
    glibc: str = "2.35"  # JetPack 6 (Ubuntu 22.04, Python 3.10)
    name: str | None = None
    instruction: str | None = None
    script: Path | None = None
    engine: Path | None = None
    latency_budget_s: float = 5.0
    rate_hz: float = 20.0  # the service's control rate; the selftest checks overruns at this rate
    threads: int | None = None
    service_duration_s: float = DEFAULT_SERVICE_DURATION_S
    run_args: tuple[str, ...] = ()
    runtime_wheel: Path | None = None
    wheels_from: Path | None = None
    dependency_wheels: bool = True
    created: int | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise DeployError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}", 2)
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise DeployError(f"--python must look like 3.10, got {self.python!r}", 2)
        if not re.fullmatch(r"2\.\d{1,2}", self.glibc):
            raise DeployError(f"--glibc must look like 2.31, got {self.glibc!r}", 2)
        for flag, path in (("MODEL", self.model), ("--script", self.script), ("--engine", self.engine),
                           ("--runtime-wheel", self.runtime_wheel)):
            if path is not None and not Path(path).is_file():
                raise DeployError(f"{flag} {path}: file not found", 2)
        if self.wheels_from is not None and not Path(self.wheels_from).is_dir():
            raise DeployError(f"--wheels-from {self.wheels_from}: not a directory", 2)
        if self.script is not None and self.instruction is not None:
            raise DeployError("give --instruction or --script, not both", 2)
        if not (self.latency_budget_s > 0 and self.latency_budget_s < float("inf")):
            raise DeployError(f"--latency-budget must be a positive number of seconds, got {self.latency_budget_s}", 2)
        if not 1.0 <= self.rate_hz <= 1000.0:
            raise DeployError(f"--rate must be in [1, 1000] Hz, got {self.rate_hz}", 2)
        if self.threads is not None and self.threads < 1:
            raise DeployError(f"--threads must be a positive integer, got {self.threads}", 2)
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            raise DeployError(f"--name {self.name!r}: letters, digits, '.', '_', '-' only (64 at most)", 2)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DeployError(f"{what} failed (exit {proc.returncode}): {tail[:400]}")


def source_tree() -> Path | None:
    """The checkout this edge_runtime was installed from (editable install), or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "edge_runtime").is_dir() else None


def build_runtime_wheel(dest: Path, created: int) -> Path:
    root = source_tree()
    if root is None:
        raise DeployError("no source checkout found to build the runtime wheel from; pass --runtime-wheel FILE", 2)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(max(created, 315532800))}  # zip cannot hold dates before 1980
    with tempfile.TemporaryDirectory(prefix="edge-deploy-wheel-") as tmp:
        # build from a clean copy of the package: no stale build/ or egg-info of the checkout gets in
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        shutil.copytree(root / "edge_runtime", src / "edge_runtime",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest),
              str(src)], "building the runtime wheel (pip wheel)", env)
    wheels = sorted(dest.glob("edge_runtime-*.whl"))
    if len(wheels) != 1:
        raise DeployError(f"pip wheel made {len(wheels)} edge_runtime wheels in {dest}; expected one")
    return wheels[0]


def download_dependencies(runtime_wheel: Path, dest: Path, spec: BundleSpec) -> None:
    """The runtime's dependencies as binary wheels for the target (pip download --platform)."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(dest), "--only-binary=:all:",
           "--python-version", spec.python, "--implementation", "cp"]
    for tag in manylinux_tags(spec.target, spec.glibc):
        cmd += ["--platform", tag]
    if spec.wheels_from is not None:
        cmd += ["--no-index", "--find-links", str(spec.wheels_from)]
    cmd.append(str(runtime_wheel))
    _run(cmd, f"pip download of the runtime's dependencies for {spec.target} / Python {spec.python}")


def _model_metadata(model: Path) -> dict[str, Any]:
    from ..decoding.model_file import META, ModelLoadError, read_metadata

    try:
        meta = read_metadata(model)
    except ModelLoadError as exc:
        raise DeployError(f"MODEL {exc}", 2)
    keep = ("format_version", "prompt_version", "dtype", "source_sha256", "kv_cache", "answer_schema")
    return {k: meta[META + k] for k in keep if META + k in meta}


def _wheel_versions(wheels: list[Path]) -> dict[str, str]:
    out = {}
    for w in wheels:
        m = _WHEEL.match(w.name)
        if m:
            out[m["name"].lower().replace("_", "-")] = m["version"]
    return dict(sorted(out.items()))


def _run_config(spec: BundleSpec) -> dict[str, Any]:
    args = ["--model", "{bundle}/" + MODEL_PATH, "--sim", "track", "--duration", f"{spec.service_duration_s:g}",
            "--rate", f"{spec.rate_hz:g}", "--out", "{out}"]
    if spec.script is not None:
        args += ["--script", "{bundle}/" + SCRIPT_PATH]
    elif spec.instruction is not None:
        args += ["--instruction", spec.instruction]
    if spec.threads is not None:
        args += ["--threads", str(spec.threads)]
    args += list(spec.run_args)
    return {"program": "edge-run", "args": args,
            "placeholders": {"{bundle}": "the slot's unpacked bundle", "{out}": "a new telemetry directory"}}


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def build_bundle(spec: BundleSpec) -> tuple[Path, Manifest]:
    """Write ``spec.output`` atomically; returns it and its manifest."""
    key = load_private_key(spec.key)
    created = _created(spec.created)
    meta = _model_metadata(Path(spec.model))
    with tempfile.TemporaryDirectory(prefix="edge-deploy-bundle-") as tmp_s:
        tmp = Path(tmp_s)
        wheel_dir = tmp / "wheels"
        wheel_dir.mkdir()
        if spec.runtime_wheel is not None:
            runtime = Path(shutil.copy2(spec.runtime_wheel, wheel_dir))
        else:
            runtime = build_runtime_wheel(wheel_dir, created)
        if not _WHEEL.match(runtime.name) or not runtime.name.lower().startswith("edge_runtime-"):
            raise DeployError(f"--runtime-wheel {runtime.name}: not an edge_runtime wheel", 2)
        if spec.dependency_wheels:
            download_dependencies(runtime, wheel_dir, spec)
        wheels = sorted(wheel_dir.glob("*.whl"))
        config_dir = tmp / "config"
        config_dir.mkdir()
        (config_dir / "run.json").write_bytes(canonical_json(_run_config(spec)))
        sources: dict[str, Path] = {MODEL_PATH: Path(spec.model), RUN_CONFIG: config_dir / "run.json"}
        external = Path(spec.model).with_name(Path(spec.model).name + ".data")
        if external.is_file():  # edge-export --external-data: the graph names its weights file by that name
            sources["model/" + external.name] = external
        if spec.engine is not None:
            sources[ENGINE_PATH] = Path(spec.engine)
        if spec.script is not None:
            sources[SCRIPT_PATH] = Path(spec.script)
        for w in wheels:
            sources["wheels/" + w.name] = w
        for path in sources:
            check_path(path)
        files = [{"path": p, "size": sources[p].stat().st_size, "sha256": sha256_file(sources[p])}
                 for p in sorted(sources)]
        versions = _wheel_versions(wheels)
        runtime_version = _WHEEL.match(runtime.name)["version"]
        name = spec.name or f"{Path(spec.model).stem}-{runtime_version}-{spec.target}"
        raw = {
            "format": FORMAT, "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)), "created_epoch": created,
            "target": {"arch": spec.target, "python": spec.python, "glibc": spec.glibc,
                       "dependency_wheels": spec.dependency_wheels},
            "runtime": {"wheel": "wheels/" + runtime.name, "version": runtime_version,
                        "requirement": f"edge_runtime=={runtime_version}"},
            "versions": {"wheels": versions},
            "model": {"path": MODEL_PATH, "source_name": Path(spec.model).name, "metadata": meta,
                      "engine": ENGINE_PATH if spec.engine is not None else None},
            "run": RUN_CONFIG,
            "selftest": {"instruction": spec.instruction or "Drive on the centre line.",
                         "latency_budget_s": spec.latency_budget_s, "loop_seconds": 2.0, "rate_hz": spec.rate_hz,
                         "threads": spec.threads},
            "files": files,
        }
        manifest = Manifest(raw)
        data = canonical_json(raw)
        signature = sign(key, data)
        out = Path(spec.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".tmp")
        try:
            with open(part, "wb") as raw_f, tarfile.open(fileobj=raw_f, mode="w", format=tarfile.GNU_FORMAT) as tar:
                tar.addfile(_tarinfo(MANIFEST, len(data), created), io.BytesIO(data))
                tar.addfile(_tarinfo(SIGNATURE, len(signature), created), io.BytesIO(signature))
                for entry in files:
                    with open(sources[entry["path"]], "rb") as src:
                        tar.addfile(_tarinfo(entry["path"], entry["size"], created), src)
            os.replace(part, out)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return out, manifest


# ------------------------------------------------------------------------------------------ reading
@dataclass
class BundleReader:
    """Sequential, verifying reader of a bundle file (see the module docstring)."""

    path: Path
    trusted_keys: list[Any]
    manifest: Manifest | None = None
    signer: str | None = None
    _tar: tarfile.TarFile | None = field(default=None, repr=False)
    _file: BinaryIO | None = field(default=None, repr=False)

    def __enter__(self) -> "BundleReader":
        try:
            self._file = open(self.path, "rb")
            self._tar = tarfile.open(fileobj=self._file, mode="r|")
        except (OSError, tarfile.TarError) as exc:
            self.close()
            raise DeployError(f"{self.path}: not a readable bundle ({exc})")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._file is not None:
            self._file.close()

    def _next(self) -> tarfile.TarInfo | None:
        try:
            return self._tar.next()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DeployError(f"{self.path}: bundle ends early or is damaged ({exc}); upload it again")

    def _small(self, name: str, limit: int) -> bytes:
        member = self._next()
        if member is None or member.name != name or not member.isreg() or member.size > limit:
            raise DeployError(f"{self.path}: expected {name} as the next member; not an edge-deploy bundle")
        data = self._tar.extractfile(member).read()
        if len(data) != member.size:
            raise DeployError(f"{self.path}: {name} is cut short; upload the bundle again")
        return data

    def read_manifest(self) -> Manifest:
        """Verify the signature, then parse: DeployError when no trusted key signed it."""
        data = self._small(MANIFEST, MAX_MANIFEST_BYTES)
        signature = self._small(SIGNATURE, SIGNATURE_BYTES)
        key = verify(self.trusted_keys, data, signature)
        if key is None:
            raise DeployError(f"signature check failed: {self.path.name} is not signed by a key this vehicle "
                              f"trusts ({len(self.trusted_keys)} trusted); sign it with the fleet key")
        self.signer = public_key_id(key)
        self.manifest = Manifest.parse(data)
        return self.manifest

    def extract(self, dest: Path) -> None:
        """Every listed file into ``dest``, each hashed while written; DeployError on any mismatch."""
        assert self.manifest is not None, "read_manifest first"
        expected = {f.path: f for f in self.manifest.files}
        seen: set[str] = set()
        dest = Path(dest)
        while (member := self._next()) is not None:
            name = member.name
            entry = expected.get(name)
            if entry is None or name in seen:
                raise DeployError(f"bundle member {name!r} is not listed in the signed manifest (or repeated); "
                                  "the bundle was tampered with")
            if not member.isreg():
                raise DeployError(f"bundle member {name!r} is not a regular file; the bundle was tampered with")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            src = self._tar.extractfile(member)
            try:
                with open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            except (tarfile.TarError, EOFError) as exc:
                target.unlink(missing_ok=True)
                raise DeployError(f"{self.path}: bundle ends inside {name} ({exc}); upload it again")
            except OSError as exc:
                target.unlink(missing_ok=True)
                raise DeployError(f"cannot write {target} ({exc.strerror or exc}): disk full? nothing was switched")
            if size != entry.size or digest.hexdigest() != entry.sha256:
                target.unlink(missing_ok=True)
                raise DeployError(f"{name}: sha256 does not match the signed manifest; the bundle was tampered with "
                                  "or damaged in transit")
            seen.add(name)
        missing = sorted(set(expected) - seen)
        if missing:
            raise DeployError(f"{self.path}: {len(missing)} listed files missing (first: {missing[0]}); the bundle "
                              "is incomplete, upload it again")


def inspect(path: Path, trusted_keys: list[Any]) -> dict[str, Any]:
    """The verified manifest plus which key signed it (``edge-deploy verify``): reads every file."""
    with tempfile.TemporaryDirectory(prefix="edge-deploy-verify-") as tmp, BundleReader(Path(path), trusted_keys) as r:
        manifest = r.read_manifest()
        r.extract(Path(tmp))
        return {"name": manifest.name, "signer": r.signer, "target": manifest.raw["target"],
                "created": manifest.raw["created"], "files": len(manifest.files), "bytes": manifest.total_size,
                "runtime": manifest.raw["runtime"]["version"]}


def bundle_summary(manifest: Manifest) -> str:
    return json.dumps({"name": manifest.name, "target": manifest.raw["target"], "created": manifest.raw["created"],
                       "files": len(manifest.files), "bytes": manifest.total_size}, sort_keys=True)
