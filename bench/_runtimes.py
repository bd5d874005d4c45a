"""The runtimes ``bench/compare_throughput.py`` measures, behind one interface (an adapter each):
our ONNX generator and the peers a user could deploy instead -- onnxruntime-genai, llama.cpp
(llama-cpp-python) and PyTorch eager.

Why one interface: every runtime is timed by the same loop (prefill = one ``append`` of the
prompt; decode = ``append`` of the argmax token, EOS ignored), so a ratio compares runtimes, not
measuring code. Where a peer's own loop is what a user would run and the step API would add host
overhead it does not have (genai's ``generate_next_token``), the adapter overrides
``decode_times``/``answer`` with it. Each peer's package is imported only inside ``load`` (the
parent checks it is installed and skips the peer with a note when it is not).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


class Adapter:
    """One runtime behind the measurement interface: ``load``, ``encode`` (chat format applied),
    ``reset``/``append`` (step API: logits of the last appended position), ``decode_times`` (the
    forced-length loop), ``answer`` (greedy to EOS or the budget, text out)."""

    kind = "?"
    supports_constrained = False

    def __init__(self, entry: Any, cfg: dict[str, Any]) -> None:  # entry: compare_throughput.Entry
        self.entry, self.cfg, self.path = entry, cfg, Path(entry.path)
        self.eos_id: int | None = None
        self.chat_format = None

    def _fallback_chat_format(self, folder: Path):
        from edge_runtime.contracts.chat_format import CHAT_FORMAT_FILE, ChatFormat, read_chat_format

        if (folder / CHAT_FORMAT_FILE).is_file():
            return read_chat_format(folder)
        return ChatFormat.from_dict(self.cfg["chat_format"]) if self.cfg.get("chat_format") else ChatFormat.plain()

    def info(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, prompt: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def append(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def capacity(self) -> int | None:
        return None

    def use_prompt_prefix_cache(self) -> bool:
        """Reuse the MPC prompt's instruction-independent prefix across answers, as the runtime would be
        configured on a vehicle (``--prefix-cache``); False: this runtime has no such mechanism here."""
        return False

    def decode_times(self, prompt_ids: list[int], steps: int) -> list[float]:
        self.reset()
        token = int(np.argmax(self.append(prompt_ids)))
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            token = int(np.argmax(self.append([token])))
            times.append(time.perf_counter() - t)
        return times

    def answer(self, prompt: str, budget: int, constrained: bool) -> tuple[str, int]:
        """(text, tokens emitted) of a greedy answer that stops at EOS."""
        ids = self.encode(prompt)
        self.reset()
        return self._greedy(ids, budget)

    def _greedy(self, ids: list[int], budget: int) -> tuple[str, int]:
        """Append ``ids`` after what the runtime holds, then greedy to EOS or ``budget`` tokens."""
        token = int(np.argmax(self.append(ids)))
        out = [token]
        while token != self.eos_id and len(out) < budget:
            token = int(np.argmax(self.append([token])))
            out.append(token)
        return self.decode(out), len(out)


class OnnxAdapter(Adapter):
    kind = "onnx"
    supports_constrained = True

    def load(self) -> None:
        from edge_runtime.decoding.generator import OnnxGenerator
        from edge_runtime.decoding.providers import ProviderConfig

        providers = self.cfg["providers"]
        if providers in ("cuda", "tensorrt"):  # a GPU run that silently fell back to CPU would mislead: require it
            providers = ProviderConfig(providers, threads=self.cfg["threads"], require=True,
                                       trt_engine_cache=self.cfg.get("trt_cache"))
        self.gen = OnnxGenerator(self.path, providers=providers, threads=self.cfg["threads"])
        self.eos_id = self.gen.eos_id
        self.state = None

    def info(self) -> dict[str, Any]:
        from edge_runtime.runtime.llm_worker import mpc_token_budget

        from _common import streamed_weight_bytes

        data = self.path.with_name(self.path.name + ".data")  # edge-export --external-data's weights
        size = self.path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
        return {"parameters": self.gen.spec.num_parameters(), "file_bytes": size, "external_data": data.is_file(),
                "streamed_weight_bytes": streamed_weight_bytes(self.path), "dtype": self.gen.dtype, "providers": self.gen.providers, "kv_cache": self.gen.kv_layout,
                "kv_capacity": self.gen.kv_capacity, "mpc_budget": mpc_token_budget(self.gen.generation, str(self.path)),
                "chat_format": self.gen.chat_format.to_dict()}

    def capacity(self) -> int | None:
        return self.gen.kv_capacity

    def use_prompt_prefix_cache(self) -> bool:
        # exactly what the vehicle's LLM worker registers at warm-up
        from edge_runtime.runtime.llm_worker import register_mpc_prefix

        return register_mpc_prefix(self.gen) > 0

    def encode(self, prompt: str) -> list[int]:
        return self.gen.encode(prompt)

    def decode(self, ids: list[int]) -> str:
        return self.gen.decode(ids)

    def reset(self) -> None:
        if self.state is None:
            self.state = self.gen.start()
        else:
            self.state.reset()

    def append(self, ids: list[int]) -> np.ndarray:
        return self.state.append_tokens(ids)[-1]

    def answer(self, prompt: str, budget: int, constrained: bool) -> tuple[str, int]:
        self.state = None  # generate() takes the shared cache; our state would refuse to run afterwards
        r = self.gen.generate(prompt, budget, constrained=constrained, task="mpc" if constrained else None)
        return r.text, r.emitted_tokens


class TorchAdapter(Adapter):
    kind = "torch"

    def load(self) -> None:
        import torch

        from _common import TorchSteps
        from edge_runtime.contracts.chat_format import read_chat_format
        from edge_runtime.model.io import load_model
        from edge_runtime.model.tokenizer import load_tokenizer, special_ids

        torch.set_num_threads(self.cfg["threads"])
        model, self.spec = load_model(self.path)
        self.chat_format = read_chat_format(self.path)
        self.tok = load_tokenizer(self.path / "tokenizer.json", self.chat_format)
        self.eos_id, _ = special_ids(self.tok, self.chat_format)
        self.steps = TorchSteps(model)

    def info(self) -> dict[str, Any]:
        weights = self.path / "model.safetensors"
        return {"parameters": self.spec.num_parameters(), "file_bytes": weights.stat().st_size if weights.is_file() else None,
                "dtype": "fp32 (stored)", "providers": ["torch eager CPU"]}

    def encode(self, prompt: str) -> list[int]:
        return self.tok.encode(self.chat_format.render(prompt)).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([t for t in ids if t != self.eos_id], skip_special_tokens=False)

    def reset(self) -> None:
        self.steps.reset()

    def append(self, ids: list[int]) -> np.ndarray:
        return self.steps.append(ids)


class OrtGenaiAdapter(Adapter):
    kind = "ortgenai"

    def load(self) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(self.path))
        config.clear_providers()
        if self.cfg["providers"] in ("cuda", "tensorrt"):
            config.append_provider("cuda")
        threads = self.cfg["threads"]
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.tok = og.Tokenizer(self.model)
        self.chat_format = self._fallback_chat_format(self.path)
        self.gen = None
        gcfg = json.loads((self.path / "genai_config.json").read_text())
        self.context = int(gcfg["model"].get("context_length", 2048))
        eos = gcfg["model"].get("eos_token_id")
        self.eos_id = eos[0] if isinstance(eos, list) else eos

    def info(self) -> dict[str, Any]:
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file() and f.name.startswith("model"))
        return {"parameters": None, "file_bytes": size, "dtype": "see genai_config.json", "providers": ["genai"]}

    def capacity(self) -> int | None:
        return self.context

    def _generator(self, max_length: int, min_length: int = 0):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, min_length=min_length, do_sample=False)
        return self.og.Generator(self.model, params)

    def encode(self, prompt: str) -> list[int]:
        return [int(t) for t in self.tok.encode(self.chat_format.render(prompt))]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(np.asarray([t for t in ids if t != self.eos_id], dtype=np.int32))

    def reset(self) -> None:
        self.gen = self._generator(self.context)

    def append(self, ids: list[int]) -> np.ndarray:
        self.gen.append_tokens(np.asarray(ids, dtype=np.int32))
        logits = np.asarray(self.gen.get_logits())  # [batch, tokens or 1, vocab]
        return logits.reshape(-1, logits.shape[-1])[-1]

    def decode_times(self, prompt_ids: list[int], steps: int) -> list[float]:
        # genai's own greedy loop; min_length = max_length masks EOS, so it runs all `steps` steps
        total = len(prompt_ids) + steps + 1
        gen = self._generator(total, total)
        gen.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        gen.generate_next_token()  # the first token, from the prefill's logits
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            gen.generate_next_token()  # one forward pass over the previous token + the choice
            times.append(time.perf_counter() - t)
        return times

    def answer(self, prompt: str, budget: int, constrained: bool) -> tuple[str, int]:
        ids = self.encode(prompt)
        gen = self._generator(len(ids) + budget)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        out = [int(t) for t in gen.get_sequence(0)[len(ids):]]
        return self.decode(out), len(out)


class LlamaCppAdapter(Adapter):
    kind = "llamacpp"

    def load(self) -> None:
        import llama_cpp
        from llama_cpp import Llama

        self._lib = llama_cpp

        self.context = max(self.cfg["prompt_lengths"]) + self.cfg["new_tokens"] + 1024
        gpu = -1 if self.cfg["providers"] in ("cuda", "tensorrt") else 0
        self.llm = Llama(model_path=str(self.path), n_ctx=self.context, n_threads=self.cfg["threads"],
                         n_threads_batch=self.cfg["threads"], n_batch=max(512, max(self.cfg["prompt_lengths"])),
                         n_gpu_layers=gpu, logits_all=False, verbose=False)
        self.eos_id = int(self.llm.token_eos())
        self._n_vocab = int(self.llm.n_vocab())
        self.chat_format = self._fallback_chat_format(self.path.parent)
        self.reuse_prefix = False  # use_prompt_prefix_cache() turns on llama-cpp-python's prefix reuse

    def info(self) -> dict[str, Any]:
        return {"parameters": None, "file_bytes": self.path.stat().st_size, "dtype": "see the GGUF file",
                "providers": ["llama.cpp"]}

    def capacity(self) -> int | None:
        return self.context

    def use_prompt_prefix_cache(self) -> bool:
        self.reuse_prefix = True
        return True

    def answer(self, prompt: str, budget: int, constrained: bool) -> tuple[str, int]:
        """Greedy to EOS; with the prefix cache, llama-cpp-python's own prompt reuse (what its
        ``generate`` / ``create_completion`` do for a user): the KV entries of the longest run of
        leading ids the prompt shares with what the context holds (the previous prompt and answer)
        are kept, and only the rest of the prompt is evaluated -- the last prompt token always."""
        if not self.reuse_prefix:
            return super().answer(prompt, budget, constrained)
        from edge_runtime.decoding.step_api import common_prefix_length

        ids = self.encode(prompt)
        held = self.llm.input_ids[: self.llm.n_tokens].tolist()
        self.llm.n_tokens = common_prefix_length(held, ids[:-1])  # eval drops the KV entries past n_tokens
        return self._greedy(ids[self.llm.n_tokens:], budget)

    def encode(self, prompt: str) -> list[int]:
        return list(self.llm.tokenize(self.chat_format.render(prompt).encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize([t for t in ids if t != self.eos_id], special=True).decode("utf-8", "replace")

    def reset(self) -> None:
        self.llm.reset()

    def append(self, ids: list[int]) -> np.ndarray:
        # Llama.eval no longer copies logits into Llama.scores without logits_all (0.3.x: sampling
        # moved into llama.cpp's sampler), so read the batch's last row from the context directly.
        self.llm.eval(list(ids))
        row = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self._n_vocab,))  # a view: valid until the next eval


ADAPTERS = {"onnx": OnnxAdapter, "torch": TorchAdapter, "ortgenai": OrtGenaiAdapter, "llamacpp": LlamaCppAdapter}
