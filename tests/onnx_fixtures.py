"""Tiny exported ONNX decoders for runtime tests (training-side helpers: these import torch).

``build_tiny_onnx(root)`` trains a small tokenizer on a few MPC prompts, builds the ``qwen2-1m``
preset with a non-uniform (pruned) layer, scales its weights so that greedy decoding emits varied
tokens, saves it and exports it with :func:`edge_runtime.export.onnx_export.export_onnx` -- also
the model of ``tests/test_generator.py``. A random model answers garbage, which exercises the
runtime's parse-failure path; tests that need a valid answer wrap the generator.

``with_metadata(src, dst, edit)`` rewrites an exported file's metadata (``edit(props)`` changes a
plain dict in place), for missing-field tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def build_tiny_model_dir(root: str | Path, seed: int = 3, weight_scale: float = 6.0, vocab_size: int = 320) -> Path:
    """Save a tiny random non-uniform decoder (layer 1 pruned to 2 q / 1 kv heads) to ``root/model``."""
    import torch

    from edge_runtime.model.build import build_model, preset_spec, resize_layer
    from edge_runtime.model.io import save_model
    from edge_runtime.contracts.arch_spec import LayerSpec
    from edge_runtime.model.tokenizer import save_tokenizer, train_tokenizer
    from edge_runtime.tasks.instructions import instruction_set
    from edge_runtime.tasks.prompts import build_mpc_prompt

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        corpus = [build_mpc_prompt(i.text) for i in instruction_set("train")[:20]]
        tok = train_tokenizer(corpus, vocab_size=vocab_size)
        tok_path = save_tokenizer(tok, root / "tok.json")
        model = build_model(preset_spec("qwen2-1m", vocab_size=tok.get_vocab_size()), seed=seed)
        resize_layer(model, 1, LayerSpec(2, 1, 192))
        gen = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for module in model.model.layers[1].modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
                    if module.bias is not None:
                        module.bias.zero_()
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(weight_scale)
        return save_model(model, root / "model", tokenizer_json=tok_path)
    finally:
        torch.set_num_threads(threads)


def build_tiny_onnx(root: str | Path, seed: int = 3, weight_scale: float = 6.0, vocab_size: int = 320) -> Path:
    """Export the tiny decoder of :func:`build_tiny_model_dir` to ``root/model.onnx``."""
    from edge_runtime.export.onnx_export import export_onnx

    model_dir = build_tiny_model_dir(root, seed=seed, weight_scale=weight_scale, vocab_size=vocab_size)
    return export_onnx(model_dir, Path(root) / "model.onnx")


def with_metadata(src: str | Path, dst: str | Path, edit: Callable[[dict[str, str]], None]) -> Path:
    """Copy ``src`` to ``dst`` with its metadata_props edited by ``edit(props)``."""
    import onnx

    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    edit(props)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(dst))
    return Path(dst)


def vocab_tables(path: str | Path) -> int:
    """How many vocab x hidden matrices (either orientation) the file stores as initialisers: 1 for
    a tied model (embedding and LM head share the table), 2 for an untied one."""
    import json

    import onnx

    model = onnx.load(str(path))
    spec = json.loads(next(p.value for p in model.metadata_props if p.key == "edge_runtime.arch_spec"))
    want = sorted([spec["vocab_size"], spec["hidden_size"]])
    return sum(sorted(i.dims) == want for i in model.graph.initializer)
