"""Text generation from an exported ONNX decoder (vehicle side: numpy, onnxruntime, tokenizers).

The ONNX file is self-describing (see ``edge_runtime.export.onnx_export``): its metadata holds the
architecture spec (per-layer KV cache shapes), the tokenizer, the prompt version, the answer
schema and the generation settings, so ``OnnxGenerator("model.onnx")`` needs nothing else
(:mod:`.model_file` opens it and checks the metadata is there; :mod:`.graph_check` checks at load
that the metadata describes the graph -- layers, query and KV heads, head_dim, vocab, MLP widths).

**Step API** (:mod:`.step_api`, the way onnxruntime-genai's generator is driven)::

    state = generator.start()                 # a DecodeState: empty KV cache
    logits = state.append_tokens(prompt_ids)  # prefill: [len(prompt_ids), vocab]
    logits = state.append_tokens([token])     # one decode step (or several tokens at once)
    state.reset()                             # start over, same buffers

Greedy decoding (:meth:`OnnxGenerator.generate`), sampling and grammar-constrained decoding
(:mod:`.constrained`) are all clients of it. Greedy, one prompt at a time (batch 1, the
on-vehicle case):

1. render the task prompt with the file's chat format (metadata ``edge_runtime.chat_format``,
   :mod:`edge_runtime.contracts.chat_format`; absent = plain, the prompt as is) and tokenize it
   (no BOS/EOS is added, as in training) -- :meth:`OnnxGenerator.encode`;
2. prefill: the whole prompt through the graph with empty ``[1, kv_heads_i, 0, head_dim]`` pasts;
3. greedy loop: argmax of the last logits, then one token through the graph with the previous
   ``present.*`` outputs fed back as ``past_key_values.*``; stop at EOS (the chat format's eos_token, e.g.
   ``<|im_end|>``) or ``max_new_tokens``.

KV cache handling, by the file's layout (metadata ``edge_runtime.kv_cache``):

* ``shared`` (``edge_export.shared_cache_graph``): one ``[1, kv_heads_i, capacity, head_dim]``
  buffer per layer and kind, allocated once per generator on the provider's device and bound
  through IOBinding as both the past input and the present output; the graph writes the new
  entries in place. Nothing is allocated or copied per token. A prompt plus its generated tokens
  must fit ``capacity`` (ValueError before the run otherwise). Because the buffers belong to the
  generator, one :class:`DecodeState` at a time uses them: ``start()`` (or ``reset()`` of an older
  state) hands them to that state, and an older state then refuses to run (RuntimeError) rather
  than read a cache another sequence has overwritten.
* ``concat`` (traced graph; files without the key): the pasts are bound as the OrtValues the
  previous step returned (no host round trip, no copy on the way in), but the graph's Concat
  makes each present one token longer than its past, so every step allocates the cache anew.
  States are independent.

Only the logits come back to host memory.

Timing (``GenerationResult``): ``time_to_first_token_s`` runs from the call to the first token
being known (tokenization + prefill + argmax); ``decode_times_s`` holds one entry per further
token (the graph run + argmax for that token), so ``len(decode_times_s) == emitted_tokens - 1``;
``total_s`` covers the whole call including decoding the text.

Constrained decoding and sampling (``generate(constrained=True)``, ``temperature > 0``) run in
:mod:`.constrained`; the plain greedy loop above is unchanged by them. There, forced tokens are
fed to the graph together with the next token (``forced_tokens``, ``forward_passes``) and
``decode_times_s`` has one entry per model-chosen token after the first.

Text: generated ids without EOS/pad, decoded with special tokens kept (the answer tags are
ordinary added tokens), exactly like ``edge_runtime.evaluation.torch_policy.TorchPolicy``.
``emitted_tokens`` counts what the model really produced, the EOS included when it stopped on it.

This module must not import torch or transformers (import-linter checks it, and a test).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ..contracts.arch_spec import ArchSpec, ArchSpecError
from ..contracts.chat_format import ChatFormat, ChatFormatError
from ..contracts.generation import Generation
from .graph_check import check_graph_against_spec
from .model_file import META, ModelLoadError, json_field, one_line, open_session, read_metadata
from .providers import ProviderConfig, provider_names, resolve_providers
from .step_api import GenerationResult, KVCapacityError

__all__ = ["DecodeState", "KVCapacityError", "OnnxGenerator", "OnnxPolicy"]

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxGenerator:
    """Generator over one exported decoder file (see the module docstring): ``start()`` opens a
    :class:`DecodeState` (the step API), ``generate()`` completes a prompt.

    ``providers``: None (CPU), "auto", or names -- see :func:`.providers.resolve_providers`, or a
    :class:`.providers.ProviderConfig`; requested but
    unavailable providers are listed in ``unavailable_providers`` (and warned about), not fatal.
    ``threads``: ONNX Runtime intra-op threads (None: ONNX Runtime's default).
    ``constrained``: default of ``generate(constrained=...)``: grammar-constrained decoding
    (:mod:`edge_runtime.decoding.constrained`). Off by default so that the generator reproduces the
    model's own greedy tokens (parity with PyTorch, honest evaluation); turn it on for a vehicle,
    where an answer that does not parse is a lost instruction.
    """

    def __init__(self, onnx_path: str | Path, providers: str | Sequence[str] | ProviderConfig | None = None,
                 threads: int | None = None, *, constrained: bool = False) -> None:
        path = Path(onnx_path)
        self.path = path
        self.constrained = bool(constrained)
        if not path.is_file():
            raise ModelLoadError(f"{path}: ONNX model file not found")
        if isinstance(providers, ProviderConfig):  # typed config: provider options, TensorRT profile (providers.py)
            wanted, self.unavailable_providers = providers.resolve(path)
            threads = providers.threads if threads is None else threads
        else:
            wanted, self.unavailable_providers = resolve_providers(providers)
        for note in self.unavailable_providers:
            warnings.warn(f"{path.name}: {note}; using {', '.join(provider_names(wanted))}", RuntimeWarning,
                          stacklevel=2)
        self.session = open_session(path, wanted, threads)
        self.providers: list[str] = self.session.get_providers()
        self.metadata = meta = read_metadata(path, self.session)
        try:
            self.spec = ArchSpec.from_dict(json_field(path, meta, "arch_spec"))
        except ArchSpecError as exc:
            raise ModelLoadError(f"{path}: metadata field '{META}arch_spec' is invalid: {one_line(exc, 160)}") from None
        try:
            self.tokenizer = Tokenizer.from_str(meta[META + "tokenizer"])
        except Exception as exc:  # noqa: BLE001 -- tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"{path}: metadata field '{META}tokenizer' is not a tokenizers JSON "
                                 f"({one_line(exc, 120)})") from None
        self.generation: dict[str, Any] = json_field(path, meta, "generation")
        self.answer_schema: dict[str, Any] = json_field(path, meta, "answer_schema")
        self.prompt_version: str = meta[META + "prompt_version"]
        self.source_sha256: str = meta[META + "source_sha256"]
        self.dtype: str = meta[META + "dtype"]
        for key in ("eos_id", "max_new_tokens"):
            if key not in self.generation:
                raise ModelLoadError(f"{path}: metadata field '{META}generation' lacks '{key}'")
        self.eos_id = int(self.generation["eos_id"])
        try:
            self.chat_format = (ChatFormat.from_dict(json_field(path, meta, "chat_format"))
                                if META + "chat_format" in meta else ChatFormat.plain())
        except ChatFormatError as exc:
            raise ModelLoadError(f"{path}: metadata field '{META}chat_format' is invalid: {one_line(exc, 160)}") from None
        if self.chat_format.kind != "plain" and self.tokenizer.token_to_id(self.chat_format.eos_token) != self.eos_id:
            raise ModelLoadError(f"{path}: metadata field '{META}generation' has eos_id {self.eos_id}, but the chat "
                                 f"format ends answers with {self.chat_format.eos_token!r}; re-export the model")
        pad = self.generation.get("pad_id")
        self.pad_id = int(pad) if pad is not None else None
        layout = json_field(path, meta, "kv_cache") if META + "kv_cache" in meta else {"layout": "concat"}
        if not isinstance(layout, dict) or layout.get("layout") not in ("concat", "shared") or (
                layout["layout"] == "shared" and not (isinstance(layout.get("capacity"), int) and layout["capacity"] > 1)):
            raise ModelLoadError(f"{path}: metadata field '{META}kv_cache' must be {{\"layout\": \"concat\"}} or "
                                 f"{{\"layout\": \"shared\", \"capacity\": N}}, got {one_line(layout, 80)}")
        self.kv_layout: str = layout["layout"]
        self.kv_capacity: int | None = layout.get("capacity") if self.kv_layout == "shared" else None
        self._check_graph()
        gpu = next((p for p in self.providers if p in _GPU_PROVIDERS), None)
        self._device = "cuda" if gpu else "cpu"
        self._kv_buffers: list[ort.OrtValue] | None = None  # shared layout: allocated on first use
        self._owner = 0  # shared layout: the id of the DecodeState that holds the buffers (see start())
        self._last_state_id = 0
        if self.constrained:  # refuse at load, in one line, a model the grammar cannot be laid over
            from . import constrained as cd

            try:
                for task in cd.TASKS:
                    cd.constraint_for(self, task)
            except ValueError as exc:
                raise ModelLoadError(f"{path}: constrained decoding cannot be used with this model: "
                                     f"{one_line(exc, 200)}") from None

    # ------------------------------------------------------------------ graph
    def _check_graph(self) -> None:
        """The metadata against the graph (:mod:`.graph_check`: layers, KV and query heads, head_dim,
        vocab, every projection's shape), then the binding names and the cache dtype."""
        check_graph_against_spec(self.path, self.session, self.spec, self.kv_capacity)
        self._past_names = [n for i in range(self.spec.num_layers)
                            for n in (f"past_key_values.{i}.key", f"past_key_values.{i}.value")]
        self._present_names = [n for i in range(self.spec.num_layers) for n in (f"present.{i}.key", f"present.{i}.value")]
        first = next(i for i in self.session.get_inputs() if i.name == "past_key_values.0.key")
        if first.type not in _NP_DTYPES:
            raise ModelLoadError(f"{self.path}: unsupported KV cache type {first.type}")
        self.kv_dtype = _NP_DTYPES[first.type]

    def _empty_past(self) -> list[ort.OrtValue]:
        """The cache a sequence starts with: empty pasts (concat), or the generator's buffers
        (shared: positions beyond the sequence are never read, so they need no clearing)."""
        if self.kv_layout == "shared":
            if self._kv_buffers is None:
                self._kv_buffers = []
                for (b, kv, _, hd) in self.spec.kv_cache_shapes(1, 0):
                    for _kind in ("key", "value"):
                        self._kv_buffers.append(ort.OrtValue.ortvalue_from_shape_and_type(
                            [b, kv, self.kv_capacity, hd], self.kv_dtype, self._device, 0))
            return self._kv_buffers
        values = []
        for (b, kv, p, hd) in self.spec.kv_cache_shapes(1, 0):
            empty = np.zeros((b, kv, p, hd), dtype=self.kv_dtype)
            values += [ort.OrtValue.ortvalue_from_numpy(empty, self._device, 0),
                       ort.OrtValue.ortvalue_from_numpy(empty, self._device, 0)]
        return values

    def _claim(self) -> tuple[int, list[ort.OrtValue]]:
        """A new state id and its empty cache; with the shared layout the id becomes the buffers' owner."""
        self._last_state_id += 1
        if self.kv_layout == "shared":
            self._owner = self._last_state_id
        return self._last_state_id, self._empty_past()

    # ---------------------------------------------------------------- public
    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """ValueError when a prompt of ``prompt_tokens`` plus ``max_new_tokens`` cannot fit the
        shared KV cache (the last token is never fed back, hence the -1); no-op for concat files."""
        if self.kv_capacity is not None and prompt_tokens + max_new_tokens - 1 > self.kv_capacity:
            raise KVCapacityError(f"{self.path.name}: a {prompt_tokens}-token prompt plus {max_new_tokens} new tokens "
                             f"exceed the KV cache capacity {self.kv_capacity}; shorten the prompt, lower "
                             f"max_new_tokens or re-export with a larger --kv-capacity")

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a task prompt as the model was trained on it: rendered with the chat format."""
        return self.tokenizer.encode(self.chat_format.render(prompt)).ids

    def decode(self, token_ids: Sequence[int]) -> str:
        drop = {self.eos_id, self.pad_id}
        return self.tokenizer.decode([t for t in token_ids if t not in drop], skip_special_tokens=False)

    def start(self) -> DecodeState:
        """A new sequence with an empty KV cache (the step API). With the shared layout it takes
        over the generator's cache buffers: a state started earlier refuses to run afterwards."""
        return DecodeState(self)

    def prefill_logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [len(token_ids), vocab] (graph dtype) of one prefill run (parity checks, debugging)."""
        if not len(token_ids):
            raise ValueError("prefill_logits: empty token list")
        return self.start().append_tokens(token_ids)

    def generate(self, prompt: str, max_new_tokens: int | None = None, stop_at_eos: bool = True, *,
                 constrained: bool | None = None, task: str | None = None, temperature: float = 0.0,
                 seed: int | None = None, rng: np.random.Generator | None = None) -> GenerationResult:
        """Completion of ``prompt``. ``max_new_tokens=None`` takes the file's MPC budget.

        Greedy by default; ``temperature > 0`` samples (``seed`` or ``rng`` for reproducibility).
        ``constrained`` (None: the generator's default) masks the logits with the answer grammar
        of ``task`` ("mpc" or "decision"; None: inferred from the prompt) and skips the forward
        pass of forced tokens -- see :mod:`edge_runtime.decoding.constrained`."""
        t0 = time.perf_counter()
        if max_new_tokens is None:
            max_new_tokens = int(self.generation["max_new_tokens"]["mpc"])
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if self.constrained if constrained is None else constrained:
            from . import constrained as cd

            constraint = cd.constraint_for(self, task or cd.infer_task(prompt))
            return cd.generate_constrained(self, prompt, int(max_new_tokens), constraint, temperature=temperature,
                                           rng=rng or np.random.default_rng(seed), stop_at_eos=stop_at_eos)
        if temperature > 0:
            from .constrained import generate_constrained

            return generate_constrained(self, prompt, int(max_new_tokens), None, temperature=temperature,
                                        rng=rng or np.random.default_rng(seed), stop_at_eos=stop_at_eos)
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to zero tokens; give a non-empty prompt")
        self.check_fits(len(ids), int(max_new_tokens))
        state = self.start()
        logits = state.append_tokens(ids)
        token = int(np.argmax(logits[-1]))
        out = [token]
        ttft = time.perf_counter() - t0
        decode_times: list[float] = []
        stopped = stop_at_eos and token == self.eos_id
        while not stopped and len(out) < max_new_tokens:
            t = time.perf_counter()
            logits = state.append_tokens([token])
            token = int(np.argmax(logits[-1]))
            out.append(token)
            decode_times.append(time.perf_counter() - t)
            stopped = stop_at_eos and token == self.eos_id
        text = self.decode(out)
        return GenerationResult(text=text, token_ids=tuple(out), prompt_tokens=len(ids), emitted_tokens=len(out),
                                time_to_first_token_s=ttft, decode_times_s=tuple(decode_times),
                                total_s=time.perf_counter() - t0, stopped_at_eos=stopped,
                                forward_passes=1 + len(decode_times))


class DecodeState:
    """One sequence on an :class:`OnnxGenerator`: its KV cache and length (the step API, see the
    module docstring). Made by :meth:`OnnxGenerator.start`.

    ``append_tokens`` binds the inputs, the cache (as both past and present with the shared
    layout: the graph appends in place) and a host buffer for the logits, and runs the graph once;
    nothing else is allocated or copied per call."""

    def __init__(self, generator: OnnxGenerator) -> None:
        self.generator = generator
        self._id, self._past = generator._claim()
        self._length = 0

    @property
    def length(self) -> int:
        """Tokens in the cache: the position of the next appended token."""
        return self._length

    @property
    def kv_cache(self) -> list[ort.OrtValue]:
        """The cache as bound to the graph: past key, past value of every layer (read-only use:
        inspection and tests; the shared layout's buffers are the same objects for every state)."""
        return self._past

    @property
    def capacity(self) -> int | None:
        """Most tokens the cache holds (shared layout); None: unbounded (concat layout)."""
        return self.generator.kv_capacity

    def reset(self) -> None:
        """Start over with an empty cache; with the shared layout this state takes the generator's
        buffers back (any other state then refuses to run)."""
        self._id, self._past = self.generator._claim()
        self._length = 0

    def append_tokens(self, token_ids: Sequence[int]) -> np.ndarray:
        """Run the graph on ``token_ids`` (at positions ``length``.. after the cached tokens) and
        return their logits ``[len(token_ids), vocab]`` in the graph's dtype; the last row scores
        the next token. ValueError for an empty or non-integer list, an id outside the vocabulary,
        or more tokens than the shared cache holds; RuntimeError when a newer state has taken the
        shared cache."""
        gen = self.generator
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or not ids.size or ids.dtype.kind not in "iu":
            raise ValueError(f"append_tokens needs a non-empty list of integer token ids, got {one_line(token_ids, 80)}")
        if ids.min() < 0 or ids.max() >= gen.spec.vocab_size:
            raise ValueError(f"append_tokens: token ids must lie in [0, {gen.spec.vocab_size}) (the model's vocabulary), "
                             f"got {one_line(token_ids, 80)}")
        shared = gen.kv_layout == "shared"
        if shared and gen._owner != self._id:
            raise RuntimeError(f"{gen.path.name}: this DecodeState no longer holds the shared KV cache (a later start() "
                               f"or reset() took it); call reset() or start a new one")
        start, n = self._length, int(ids.size)
        if shared and start + n > gen.kv_capacity:
            raise ValueError(f"{gen.path.name}: {start + n} tokens exceed the KV cache capacity {gen.kv_capacity}; "
                             f"shorten the prompt or re-export with a larger --kv-capacity")
        # The arrays stay referenced until the run is over (IOBinding does not own host buffers).
        input_ids = ids.astype(np.int64, copy=False)[None, :]
        mask = np.ones((1, start + n), dtype=np.int64)
        positions = np.arange(start, start + n, dtype=np.int64)[None, :]
        binding = gen.session.io_binding()
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", positions)
        for name, value in zip(gen._past_names, self._past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name, value in zip(gen._present_names, self._past):
            if shared:  # the same buffer: the graph appends in place
                binding.bind_ortvalue_output(name, value)
            else:
                binding.bind_output(name, gen._device)
        gen.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not shared:
            self._past = list(outputs[1:])
        self._length = start + n
        return outputs[0].numpy()[0]


class OnnxPolicy:
    """The ``TextPolicy`` of an exported file (edge_runtime.contracts.generation), one prompt at a time.

    ``last_results`` keeps the full GenerationResult (timings) of the latest ``generate`` call.
    ``constrained``: grammar-constrained decoding, the task inferred from each prompt."""

    def __init__(self, onnx_path: str | Path, providers: str | Sequence[str] | None = None,
                 threads: int | None = None, name: str | None = None, *, constrained: bool = False) -> None:
        self.generator = OnnxGenerator(onnx_path, providers=providers, threads=threads, constrained=constrained)
        self.path = Path(onnx_path)
        self.name = name or self.path.stem
        self.last_results: list[GenerationResult] = []

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[Generation]:
        """Completions of ``prompts``; with a shared KV cache every prompt is checked to fit first
        (KVCapacityError), so that a batch that cannot run fails before its first generation."""
        if self.generator.kv_capacity is not None:
            for prompt in prompts:
                self.generator.check_fits(len(self.generator.encode(prompt)), max_new_tokens)
        self.last_results = [self.generator.generate(p, max_new_tokens) for p in prompts]
        return [Generation(r.text, prompt_tokens=r.prompt_tokens, emitted_tokens=r.emitted_tokens)
                for r in self.last_results]

    def parameter_count(self) -> int:
        """The arch spec's parameter count; the load checked the spec against every weight matrix of
        the graph (:mod:`.graph_check`), so it counts the graph's model, not what the metadata claims."""
        return self.generator.spec.num_parameters()

    def file_size(self) -> int:
        return self.path.stat().st_size
