"""Execution-provider config (decoding/providers.py) and the TensorRT engine builder's command
construction / unavailable path (export/tensorrt.py, deploy/build_trt_engine.py) -- no GPU needed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from edge_runtime.contracts.arch_spec import ArchSpec, LayerSpec
from edge_runtime.decoding.providers import (
    ProviderConfig,
    ProviderUnavailableError,
    ShapeProfile,
    format_shapes,
    provider_names,
    spec_from_onnx,
)

REPO = Path(__file__).resolve().parent.parent
#: A non-uniform pruned spec: KV heads 2 / 1 / 4 per layer.
SPEC = ArchSpec("qwen2", hidden_size=128, head_dim=32, vocab_size=300,
                layers=(LayerSpec(4, 2, 384), LayerSpec(2, 1, 128), LayerSpec(4, 4, 256)))
ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def metadata_only_onnx(path: Path, spec: ArchSpec = SPEC, extra: dict[str, str] | None = None) -> Path:
    """A one-node graph that carries an edge_runtime arch_spec (enough for spec reading and trtexec
    command construction; TensorRT itself never sees it in these tests)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"edge_runtime.arch_spec": json.dumps(spec.to_dict()), "edge_runtime.dtype": "fp32",
                       **(extra or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def _parse(shapes: str) -> dict[str, list[int]]:
    out = {}
    for item in shapes.split(","):
        name, dims = item.rsplit(":", 1)
        out[name] = [int(d) for d in dims.split("x")]
    return out


# ------------------------------------------------------------------------------ shape profile
def test_profile_shapes_per_layer_kv_heads():
    profile = ShapeProfile(batch=(1, 1, 2), seq=(1, 1, 300), past=(0, 128, 700))
    shapes = profile.shapes(SPEC)
    names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{k}" for i in range(3) for k in ("key", "value")]
    assert list(shapes) == names
    lo, opt, hi = (_parse(format_shapes(shapes, j)) for j in range(3))
    assert lo["input_ids"] == [1, 1] and opt["input_ids"] == [1, 1] and hi["input_ids"] == [2, 300]
    assert lo["attention_mask"] == [1, 1] and opt["attention_mask"] == [1, 129] and hi["attention_mask"] == [2, 1000]
    for i, kv in enumerate((2, 1, 4)):
        for kind in ("key", "value"):
            name = f"past_key_values.{i}.{kind}"
            assert lo[name] == [1, kv, 0, 32] and opt[name] == [1, kv, 128, 32] and hi[name] == [2, kv, 700, 32]


@pytest.mark.parametrize("kwargs, needle", [
    ({"seq": (0, 1, 4)}, "seq"),
    ({"past": (5, 1, 9)}, "past"),
    ({"batch": (1, 1)}, "three integers"),
    ({"seq": (1, 1, True)}, "three integers"),
])
def test_profile_validation(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ShapeProfile(**kwargs)


def test_profile_longer_than_the_model_is_refused():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ShapeProfile(past=(0, 256, 2000), seq=(1, 1, 512)).shapes(SPEC)


# ------------------------------------------------------------------------------ ProviderConfig
@pytest.mark.parametrize("kwargs, exc, needle", [
    ({"provider": "rocm"}, ValueError, "provider must be one of"),
    ({"threads": 0}, ValueError, "threads"),
    ({"threads": True}, ValueError, "threads"),
    ({"device_id": -1}, ValueError, "device_id"),
    ({"trt_profile": (1, 1, 1)}, TypeError, "ShapeProfile"),
    ({"trt_engine_cache": " "}, ValueError, "trt_engine_cache"),
])
def test_config_validation(kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        ProviderConfig(**kwargs)


def test_cpu_resolves_to_cpu_only():
    assert ProviderConfig().resolve(available=ALL) == (["CPUExecutionProvider"], [])
    assert ProviderConfig("CPU").provider == "cpu"


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_falls_back_to_cpu_with_a_note(provider):
    chosen, notes = ProviderConfig(provider).resolve(spec=SPEC, available=["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert len(notes) == 1 and "unavailable" in notes[0] and "onnxruntime-gpu" in notes[0]
    assert "CPUExecutionProvider" in notes[0]  # says what this build offers


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_with_require_raises(provider):
    with pytest.raises(ProviderUnavailableError, match=f"provider '{provider}' required"):
        ProviderConfig(provider, require=True).resolve(spec=SPEC, available=["CPUExecutionProvider"])


def test_cuda_options():
    chosen, notes = ProviderConfig("cuda", device_id=1).resolve(available=ALL)
    assert notes == [] and provider_names(chosen) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0][1] == {"device_id": 1}


def test_tensorrt_options_with_profile_and_cache(tmp_path):
    config = ProviderConfig("tensorrt", device_id=0, trt_fp16=False, trt_engine_cache=str(tmp_path / "trt"),
                            trt_profile=ShapeProfile(past=(0, 64, 256)))
    chosen, notes = config.resolve(spec=SPEC, available=ALL)
    assert notes == [] and provider_names(chosen) == ALL  # TensorRT, CUDA for what TRT leaves, CPU
    _, options = chosen[0]
    assert options["trt_fp16_enable"] is False and options["device_id"] == 0
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert _parse(options["trt_profile_max_shapes"])["past_key_values.1.value"] == [1, 1, 256, 32]
    assert _parse(options["trt_profile_opt_shapes"])["past_key_values.2.key"] == [1, 4, 64, 32]
    assert _parse(options["trt_profile_min_shapes"])["past_key_values.0.key"] == [1, 2, 0, 32]
    # without CUDA in the build, TensorRT goes straight to CPU
    chosen, _ = config.resolve(spec=SPEC, available=["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert provider_names(chosen) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_reads_the_spec_from_the_model_file(tmp_path):
    path = metadata_only_onnx(tmp_path / "m.onnx")
    assert spec_from_onnx(path) == SPEC
    chosen, _ = ProviderConfig("tensorrt").resolve(path, available=ALL)
    assert _parse(chosen[0][1]["trt_profile_min_shapes"])["past_key_values.2.value"] == [1, 4, 0, 32]
    with pytest.raises(ValueError, match="needs the model's spec"):
        ProviderConfig("tensorrt").resolve(available=ALL)


# ---------------------------------------------------------------------- OnnxGenerator wiring
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from onnx_fixtures import build_tiny_onnx

    return build_tiny_onnx(tmp_path_factory.mktemp("prov"))


def test_generator_accepts_a_provider_config(tiny_onnx):
    from edge_runtime.decoding.generator import OnnxGenerator

    gen = OnnxGenerator(tiny_onnx, providers=ProviderConfig("cpu", threads=1))
    assert gen.providers == ["CPUExecutionProvider"] and gen.unavailable_providers == []
    assert gen.session.get_session_options().intra_op_num_threads == 1
    assert gen.generate("Instruction: go", 3).emitted_tokens >= 1
    # the plain-name form keeps working as before
    assert OnnxGenerator(tiny_onnx, providers="cpu", threads=1).providers == ["CPUExecutionProvider"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA build is installed")
def test_generator_unavailable_provider_warns_or_raises(tiny_onnx):
    from edge_runtime.decoding.generator import OnnxGenerator

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = OnnxGenerator(tiny_onnx, providers=ProviderConfig("cuda", threads=1))
    assert gen.providers == ["CPUExecutionProvider"]
    assert len(gen.unavailable_providers) == 1
    assert any("CUDAExecutionProvider unavailable" in str(w.message) and "using CPUExecutionProvider"
               in str(w.message) for w in caught)
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        OnnxGenerator(tiny_onnx, providers=ProviderConfig("tensorrt", require=True))


def test_providers_module_imports_without_torch():
    code = ("import sys; import edge_runtime.decoding.providers; "
            "bad = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------ TensorRT
def test_trtexec_command_for_a_nonuniform_spec(tmp_path):
    from edge_runtime.export.tensorrt import trtexec_command

    cmd = trtexec_command(tmp_path / "m.onnx", tmp_path / "m.engine", SPEC, ShapeProfile(past=(0, 32, 64)))
    assert cmd[0] == "trtexec" and f"--onnx={tmp_path / 'm.onnx'}" in cmd
    assert f"--saveEngine={tmp_path / 'm.engine'}" in cmd and "--fp16" in cmd
    flags = {c.split("=", 1)[0]: c.split("=", 1)[1] for c in cmd[1:] if "=" in c}
    lo, opt, hi = (_parse(flags[f"--{k}Shapes"]) for k in ("min", "opt", "max"))
    assert len(lo) == 3 + 2 * SPEC.num_layers
    for i, kv in enumerate((2, 1, 4)):
        assert lo[f"past_key_values.{i}.key"] == [1, kv, 0, 32]
        assert opt[f"past_key_values.{i}.value"] == [1, kv, 32, 32]
        assert hi[f"past_key_values.{i}.key"] == [1, kv, 64, 32]
    assert hi["attention_mask"] == [1, 64 + 512] and hi["input_ids"] == [1, 512]
    assert "--fp16" not in trtexec_command("a.onnx", "a.engine", SPEC, fp16=False)


@pytest.fixture
def no_tensorrt(monkeypatch, tmp_path):
    """No trtexec on PATH or at JetPack's location, and `import tensorrt` fails."""
    import builtins

    from edge_runtime.export import tensorrt as trt_mod

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(trt_mod, "JETPACK_TRTEXEC", str(tmp_path / "no" / "trtexec"))
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorrt":
            raise ModuleNotFoundError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    return trt_mod


def test_tensorrt_unavailable_is_one_clear_line(no_tensorrt, tmp_path, capsys):
    model = metadata_only_onnx(tmp_path / "m.onnx")
    with pytest.raises(no_tensorrt.TensorRTUnavailable, match="TensorRT not available"):
        no_tensorrt.build_engine(model, tmp_path / "m.engine")
    rc = no_tensorrt.main([str(model), "-o", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.startswith("TensorRT not available:") and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "m.engine").exists()


def test_deploy_script_without_tensorrt_exits_nonzero(tmp_path):
    """The real script in a subprocess: no traceback, exit 3 (this machine has no TensorRT)."""
    from edge_runtime.export.tensorrt import JETPACK_TRTEXEC, find_trtexec

    if find_trtexec() or Path(JETPACK_TRTEXEC).exists():
        pytest.skip("trtexec is installed here")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    model = metadata_only_onnx(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "build_trt_engine.py"), str(model)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "TensorRT not available" in proc.stderr and "Traceback" not in proc.stderr


def test_build_with_a_fake_trtexec(tmp_path, monkeypatch):
    """A stand-in trtexec records its argv and writes the engine: the builder runs it and checks it."""
    from edge_runtime.export.tensorrt import build_engine, main

    model = metadata_only_onnx(tmp_path / "m.onnx")
    log = tmp_path / "argv.txt"
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    f"printf '%s\\n' \"$@\" > {log}\n"
                    "for a in \"$@\"; do case $a in --saveEngine=*) printf engine > \"${a#--saveEngine=}\";; esac; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    result = build_engine(model, tmp_path / "out" / "m.engine", ShapeProfile(past=(0, 16, 32)))
    assert result.builder == "trtexec" and result.engine.read_bytes() == b"engine"
    argv = log.read_text().splitlines()
    assert argv == result.command[1:]
    assert any(a.startswith("--maxShapes=") and "past_key_values.2.key:1x4x32x32" in a for a in argv)
    # dry run prints the same kind of command and builds nothing
    assert main([str(model), "-o", str(tmp_path / "dry.engine"), "--dry-run", "--past", "0,8,16"]) == 0
    assert not (tmp_path / "dry.engine").exists()


def test_builder_refuses_quantized_files_and_bad_input(tmp_path, capsys):
    from edge_runtime.export.tensorrt import main

    quant = metadata_only_onnx(tmp_path / "q.onnx", extra={"edge_runtime.quantization": json.dumps({"kind": "int4"})})
    assert main([str(quant), "--dry-run"]) == 2
    assert "int4" in capsys.readouterr().err
    shared = metadata_only_onnx(tmp_path / "s.onnx",
                                extra={"edge_runtime.kv_cache": json.dumps({"layout": "shared", "capacity": 64})})
    assert main([str(shared), "--dry-run"]) == 2
    assert "--kv-cache concat" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.onnx"), "--dry-run"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([str(quant), "--seq", "1,2"]) == 2
    assert "MIN,OPT,MAX" in capsys.readouterr().err
