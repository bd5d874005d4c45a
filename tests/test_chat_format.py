"""The chat format (contracts.chat_format): rendering exact against the Jinja chat templates,
recorded in model directories and ONNX metadata, used by SFT encoding, the PyTorch policy and the
ONNX generator; plain stays the default."""

import json

import pytest

from edge_runtime.contracts.chat_format import (CHAT_FORMAT_FILE, ChatFormat, ChatFormatError,
                                                read_chat_format)

torch = pytest.importorskip("torch")

from edge_runtime.model.build import build_model, preset_spec  # noqa: E402
from edge_runtime.model.tokenizer import special_ids, train_tokenizer  # noqa: E402
from edge_runtime.tasks.prompts import build_mpc_prompt  # noqa: E402

# SmolLM2-135M-Instruct's chat template, verbatim; and the generic ChatML template (no default system).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chatml_tokenizer():
    """Our tokenizer with <|im_end|> at id 0 (so a model whose logits are all equal picks it) and
    <|im_start|> added, as a pretrained ChatML tokenizer has them: special, single tokens."""
    from tokenizers import Tokenizer

    corpus = [build_mpc_prompt(t) for t in ("Drive on the centre line.", "Go backwards.", "Be smooth.")] * 3
    data = json.loads(train_tokenizer(corpus, vocab_size=300).to_str())
    for entry in data["added_tokens"]:
        if entry["id"] == 0:
            entry["content"] = "<|im_end|>"
    vocab = data["model"]["vocab"]
    vocab["<|im_end|>"] = vocab.pop("<|endoftext|>")
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(["<|im_start|>", "<|endoftext|>"])
    return tok


PROMPTS = [build_mpc_prompt("Drive on the centre line."), "a\nb {x} <answer>", ""]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chatml_render_equals_the_jinja_chat_templates(prompt):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=chatml_tokenizer(), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    user = [{"role": "user", "content": prompt}]

    def jinja(template, messages):
        return hf.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)

    assert ChatFormat.chatml().render(prompt) == jinja(CHATML_TEMPLATE, user)
    # SmolLM2's template adds its default system turn: recording that message reproduces it exactly
    assert ChatFormat.chatml(system=SMOLLM2_SYSTEM).render(prompt) == jinja(SMOLLM2_TEMPLATE, user)
    own = [{"role": "system", "content": "Drive."}] + user
    assert ChatFormat.chatml(system="Drive.").render(prompt) == jinja(SMOLLM2_TEMPLATE, own) == jinja(CHATML_TEMPLATE, own)


def test_plain_is_the_default_and_renders_the_prompt_as_is(tmp_path):
    fmt = ChatFormat()
    assert fmt == ChatFormat.plain() and fmt.kind == "plain" and fmt.answer_suffix == "<|endoftext|>"
    assert all(fmt.render(p) == p for p in PROMPTS)
    assert read_chat_format(tmp_path) == fmt  # nothing recorded: plain
    assert ChatFormat.chatml().answer_suffix == "<|im_end|>"


def test_round_trip_and_where_it_is_read_from(tmp_path):
    for fmt in (ChatFormat.plain(), ChatFormat.chatml(), ChatFormat.chatml(system="s", pad_token="<pad>")):
        assert ChatFormat.from_dict(json.loads(fmt.to_json())) == fmt
    ChatFormat.chatml(system="x").save(tmp_path)
    assert read_chat_format(tmp_path) == ChatFormat.chatml(system="x")
    meta_only = tmp_path / "meta"
    meta_only.mkdir()  # an importer may put it into edge_runtime_meta.json's user metadata instead
    (meta_only / "edge_runtime_meta.json").write_text(json.dumps({"metadata": {"chat_format": ChatFormat.chatml().to_dict()}}))
    assert read_chat_format(meta_only) == ChatFormat.chatml()


@pytest.mark.parametrize("data, field", [
    ({"version": 1, "kind": "jinja"}, "kind"),
    ({"version": 2, "kind": "plain"}, "version"),
    ({"version": 1, "kind": "chatml", "eos_token": "<|endoftext|>"}, "eos_token"),
    ({"version": 1, "kind": "plain", "system": "x"}, "system"),
    ({"version": 1, "kind": "plain", "pad_token": ""}, "pad_token"),
    ({"version": 1, "kind": "plain", "colour": 1}, "unknown"),
])
def test_bad_chat_format_names_the_field(data, field, tmp_path):
    with pytest.raises(ChatFormatError, match=field):
        ChatFormat.from_dict(data)
    (tmp_path / CHAT_FORMAT_FILE).write_text(json.dumps(data))
    with pytest.raises(ChatFormatError, match=CHAT_FORMAT_FILE):
        read_chat_format(tmp_path)


def test_special_ids_take_the_chat_formats_tokens():
    tok = chatml_tokenizer()
    assert special_ids(tok, ChatFormat.chatml()) == (0, tok.token_to_id("<|endoftext|>"))
    assert special_ids(tok) == (tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|pad|>"))
    with pytest.raises(ValueError, match="<|im_end|>"):
        special_ids(train_tokenizer(PROMPTS[:1], vocab_size=300), ChatFormat.chatml())


def test_sft_encoding_renders_the_prompt_and_ends_the_answer_with_im_end():
    from edge_runtime.train.sft import encode_examples
    from edge_runtime.train.sft_data import SFTExample

    tok, fmt = chatml_tokenizer(), ChatFormat.chatml()
    ex = SFTExample("mpc", PROMPTS[0], "Reason: x.\n<answer>{}</answer>", "centreline")
    eos, _ = special_ids(tok, fmt)
    (enc,) = encode_examples([ex], tok, eos, 2048, fmt)
    n_prompt = len(tok.encode(fmt.render(ex.prompt)).ids)
    assert enc.input_ids[0] == tok.token_to_id("<|im_start|>") and enc.labels[:n_prompt] == [-100] * n_prompt
    assert enc.input_ids[n_prompt - 1] == tok.encode("\n").ids[-1]  # "assistant\n" is the prompt's end
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:] and enc.labels[-1] == 0 == eos
    (plain,) = encode_examples([ex], tok, 1, 2048)  # no format: the prompt as is
    assert plain.input_ids[: len(tok.encode(ex.prompt).ids)] == tok.encode(ex.prompt).ids


@pytest.mark.slow
def test_chatml_model_dir_exports_its_format_and_the_generator_stops_at_im_end(tmp_path):
    from edge_runtime.decoding.generator import OnnxGenerator
    from edge_runtime.evaluation.torch_policy import TorchPolicy
    from edge_runtime.export.onnx_export import export_onnx
    from edge_runtime.model.io import save_model
    from onnx_fixtures import with_metadata

    tok = chatml_tokenizer()
    tok.save(str(tmp_path / "tok.json"))
    model = build_model(preset_spec("qwen2-1m", vocab_size=tok.get_vocab_size()), seed=0)
    with torch.no_grad():  # equal logits everywhere: greedy picks id 0, <|im_end|>
        model.model.norm.weight.zero_()
    fmt = ChatFormat.chatml(system="Drive.")
    model_dir = save_model(model, tmp_path / "m", tokenizer_json=tmp_path / "tok.json",
                           extra_files={CHAT_FORMAT_FILE: fmt.to_json()})
    onnx_path = export_onnx(model_dir, tmp_path / "m.onnx")
    gen = OnnxGenerator(onnx_path)
    assert gen.metadata["edge_runtime.chat_format"] == fmt.to_json() and gen.chat_format == fmt
    assert gen.eos_id == 0 and gen.pad_id == tok.token_to_id("<|endoftext|>")
    prompt = PROMPTS[0]
    assert gen.encode(prompt) == tok.encode(fmt.render(prompt)).ids
    result = gen.generate(prompt, 8)
    assert result.token_ids == (0,) and result.stopped_at_eos and result.text == ""
    assert result.prompt_tokens == len(tok.encode(fmt.render(prompt)).ids)
    policy = TorchPolicy(model, tok, chat_format=fmt)  # the PyTorch side renders and stops the same way
    (g,) = policy.generate([prompt], 8)
    assert (g.text, g.prompt_tokens, g.emitted_tokens) == ("", result.prompt_tokens, 1)
    # a file exported before the chat format existed: no field, plain prompts
    old = with_metadata(onnx_path, tmp_path / "old.onnx", lambda props: props.pop("edge_runtime.chat_format"))
    assert OnnxGenerator(old).chat_format == ChatFormat.plain() and OnnxGenerator(old).encode("ab") == tok.encode("ab").ids
    bad = with_metadata(onnx_path, tmp_path / "bad.onnx",
                        lambda props: props.update({"edge_runtime.chat_format": '{"version": 1, "kind": "x"}'}))
    from edge_runtime.decoding.model_file import ModelLoadError

    with pytest.raises(ModelLoadError, match="chat_format"):
        OnnxGenerator(bad)
