"""edge-deploy bundles: deterministic bytes, Ed25519 signatures, and a reader that refuses anything
the signed manifest does not vouch for (tampered, foreign key, cut short, extra member)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from edge_runtime.deploy.bundle import BundleReader, BundleSpec, build_bundle, build_runtime_wheel, inspect
from edge_runtime.deploy.errors import DeployError
from edge_runtime.deploy.signing import generate_keypair, load_public_key

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny" / "dense.onnx"
CREATED = 1_700_000_000


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_keypair(d / "fleet"), generate_keypair(d / "other")


@pytest.fixture(scope="module")
def runtime_wheel(tmp_path_factory):
    return build_runtime_wheel(tmp_path_factory.mktemp("wheel"), CREATED)


def make(tmp: Path, key: Path, wheel: Path, name: str = "b.bundle", **kw) -> Path:
    spec = BundleSpec(model=TINY, output=tmp / name, key=key, target="x86_64", python="3.11",
                      runtime_wheel=wheel, dependency_wheels=False, created=CREATED, **kw)
    return build_bundle(spec)[0]


def test_same_inputs_same_bytes_and_a_valid_signature(tmp_path, keys, runtime_wheel):
    (key, pub), _ = keys
    a = make(tmp_path, key, runtime_wheel, "a.bundle", instruction="Drive at 2.5 m/s.")
    b = make(tmp_path, key, runtime_wheel, "b.bundle", instruction="Drive at 2.5 m/s.")
    assert a.read_bytes() == b.read_bytes()
    c = make(tmp_path, key, runtime_wheel, "c.bundle", instruction="Drive smoothly.")
    assert c.read_bytes() != a.read_bytes()
    info = inspect(a, [load_public_key(pub)])
    assert info["target"]["arch"] == "x86_64" and info["files"] == 3
    with tarfile.open(a) as tar:
        names = tar.getnames()
        assert names[:2] == ["manifest.json", "manifest.sig"] and names[2:] == sorted(names[2:])
        assert {m.mtime for m in tar.getmembers()} == {CREATED} and {m.uid for m in tar.getmembers()} == {0}
        manifest = json.loads(tar.extractfile("manifest.json").read())
        run = json.loads(tar.extractfile("config/run.json").read())
    assert manifest["created"] == "2023-11-14T22:13:20Z" and manifest["runtime"]["version"]
    assert run["args"][run["args"].index("--instruction") + 1] == "Drive at 2.5 m/s."
    assert run["args"][run["args"].index("--rate") + 1] == "20" and manifest["selftest"]["rate_hz"] == 20.0
    assert manifest["model"]["metadata"]["format_version"] == "1"


def test_source_date_epoch_fixes_the_creation_time(tmp_path, keys, runtime_wheel, monkeypatch):
    (key, _), _ = keys
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    spec = BundleSpec(model=TINY, output=tmp_path / "s.bundle", key=key, target="x86_64", python="3.11",
                      runtime_wheel=runtime_wheel, dependency_wheels=False)
    _, manifest = build_bundle(spec)
    assert manifest.raw["created_epoch"] == 1600000000


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a bundle member by member, letting ``edit(name, data)`` change or drop (None) members."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tout:
        for m in tin.getmembers():
            data = edit(m.name, tin.extractfile(m).read())
            if data is None:
                continue
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    return dst


def read_all(path: Path, pub: Path, dest: Path) -> None:
    with BundleReader(path, [load_public_key(pub)]) as r:
        r.read_manifest()
        r.extract(dest)


def test_the_reader_refuses_what_the_manifest_does_not_vouch_for(tmp_path, keys, runtime_wheel):
    (key, pub), (other_key, _) = keys
    good = make(tmp_path, key, runtime_wheel)
    read_all(good, pub, tmp_path / "ok")  # the untouched bundle reads

    flipped = rewrite(good, tmp_path / "t.bundle",
                      lambda n, d: d[:100] + bytes([d[100] ^ 1]) + d[101:] if n == "model/model.onnx" else d)
    with pytest.raises(DeployError, match="sha256 does not match"):
        read_all(flipped, pub, tmp_path / "t")
    assert not (tmp_path / "t" / "model" / "model.onnx").exists()  # the bad file is not left behind

    foreign = make(tmp_path, other_key, runtime_wheel, "f.bundle")
    with pytest.raises(DeployError, match="not signed by a key this vehicle trusts"):
        read_all(foreign, pub, tmp_path / "f")

    manifest_edit = rewrite(good, tmp_path / "m.bundle",
                            lambda n, d: d.replace(b'"x86_64"', b'"aarch64"') if n == "manifest.json" else d)
    with pytest.raises(DeployError, match="not signed"):
        read_all(manifest_edit, pub, tmp_path / "m")

    missing = rewrite(good, tmp_path / "x.bundle", lambda n, d: None if n == "config/run.json" else d)
    with pytest.raises(DeployError, match="missing"):
        read_all(missing, pub, tmp_path / "x")

    cut = tmp_path / "cut.bundle"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DeployError, match="ends"):
        read_all(cut, pub, tmp_path / "c")


def test_a_member_outside_the_manifest_is_refused(tmp_path, keys, runtime_wheel):
    (key, pub), _ = keys
    good = make(tmp_path, key, runtime_wheel)
    extra = tmp_path / "e.bundle"
    with tarfile.open(good) as tin, tarfile.open(extra, "w", format=tarfile.GNU_FORMAT) as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m))
        evil = tarfile.TarInfo("../evil.sh")
        evil.size = 3
        tout.addfile(evil, io.BytesIO(b"hi\n"))
    with pytest.raises(DeployError, match="not listed"):
        read_all(extra, pub, tmp_path / "e")
    assert not (tmp_path / "evil.sh").exists()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.deploy", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_keygen_and_bad_input_are_one_line(tmp_path):
    proc = cli("keygen", str(tmp_path / "k"))
    assert proc.returncode == 0 and (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    again = cli("keygen", str(tmp_path / "k"))
    assert again.returncode == 2 and "exists" in again.stderr
    for args, words in ((("bundle", "nope.onnx", "--key", str(tmp_path / "k.key"), "-o", str(tmp_path / "o")),
                         "file not found"),
                        (("bundle", str(TINY), "--key", str(tmp_path / "k.pub"), "-o", str(tmp_path / "o")),
                         "private key"),
                        (("bundle", str(TINY), "--key", str(tmp_path / "k.key"), "-o", str(tmp_path / "o"),
                          "--python", "three"), "--python"),
                        (("status", "--root", str(tmp_path / "none")), "not a vehicle root")):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_model_with_external_weights_travels_with_them(tmp_path, keys, runtime_wheel):
    pytest.importorskip("onnx")
    from edge_runtime.export.external_data import externalize_weights

    (key, pub), _ = keys
    model = tmp_path / "src" / "dense.onnx"
    model.parent.mkdir()
    data = externalize_weights(TINY, model)
    spec = BundleSpec(model=model, output=tmp_path / "ext.bundle", key=key, target="x86_64", python="3.11",
                      runtime_wheel=runtime_wheel, dependency_wheels=False, created=CREATED)
    out, manifest = build_bundle(spec)
    assert f"model/{data.name}" in {f.path for f in manifest.files}
    read_all(out, pub, tmp_path / "slot")
    # the renamed graph still finds its weights: the slot's copy loads and answers
    proc = subprocess.run([sys.executable, "-m", "edge_runtime.runtime.cli", "--selftest", "--model",
                           str(tmp_path / "slot" / "model" / "model.onnx"), "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
