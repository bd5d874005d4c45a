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

Only the logits come back to host memory. A file exported with ``--logits last`` (the default;
``edge_runtime.export.last_logits``) computes them for the last position of a run only: every
decoding loop reads nothing else, and the LM head over a whole prompt is the largest matrix
product of a prefill. ``last_logits_only`` says which kind a file is (from the graph's declared
``logits`` shape); on such a file ``append_tokens`` returns one row per run.

**Binding reuse.** Each :class:`DecodeState` builds one IOBinding on its first run and keeps it:
the shared cache's buffers are bound once (as past and present), ``input_ids`` / ``position_ids``
are host arrays wrapped once as OrtValues (their memory is the array's, so a step writes the new
token and position into them in place), ``attention_mask`` (all ones; only its length changes)
is re-pointed at a prefix of one preallocated ones buffer, and ``logits`` is bound to a
preallocated host array. A one-token step then costs two scalar writes, one re-pointing and
``run_with_iobinding``. A run of a different length re-binds the token inputs and the logits
once. The concat layout reuses the same binding and buffers but must still re-bind its pasts and
let ONNX Runtime allocate its presents each step (they grow by one token). ``append_tokens``
returns a fresh array (a multi-token run's own logits buffer, or a copy of the one-token row), so
logits a caller keeps are never overwritten by a later step.

**Prompt-prefix cache.** ``cache_prefix(ids)`` prefills a token prefix once (for the MPC prompt:
the role, the parameter table and the answer format before the instruction -- the runtime's LLM
worker registers it at load, :meth:`OnnxGenerator.cache_common_prefix`) and keeps a host copy of
its KV entries. :meth:`DecodeState.prefill` (used by ``generate`` and constrained decoding) then
looks for the registered prefix sharing the longest run of leading token ids with the prompt,
copies those ``k`` positions into the state's cache and runs only the rest of the prompt. It
compares token ids, not text: BPE may merge the prefix's last characters with the instruction's,
and then only the positions before the first differing id are reused (keys and values at a
position depend only on the tokens up to it, so the reused entries are exactly what a full
prefill computes, up to the float summation order). At least the prompt's last token is always
run (its logits are needed). ``prefix_stats`` counts full, partial and missed reuses.

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
from .step_api import GenerationResult, KVCapacityError, common_prefix_length

__all__ = ["DecodeState", "KVCapacityError", "OnnxGenerator", "OnnxPolicy", "PrefixCache"]

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_MAX_PREFIXES = 8  # registered prompt prefixes kept per generator (oldest dropped first)


class PrefixCache:
    """One registered prompt prefix: its token ids and a host copy of its KV entries (one array per
    past input, in ``past_key_values`` order; ``[1, kv_heads, len(ids), head_dim]``, or the whole
    shared buffer when the cache lives on a GPU, where a copy back is one ``update_inplace``)."""

    __slots__ = ("ids", "kv")

    def __init__(self, ids: tuple[int, ...], kv: list[np.ndarray]) -> None:
        self.ids = ids
        self.kv = kv

    def __len__(self) -> int:
        return len(self.ids)


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
        self._kv_host: list[np.ndarray] | None = None  # shared layout on CPU: the buffers' numpy memory
        self._ones = np.ones((1, self.kv_capacity or 256), dtype=np.int64)  # attention_mask source (grows: concat)
        self._prefixes: list[PrefixCache] = []
        self.prefix_stats = {"full": 0, "partial": 0, "miss": 0, "reused_tokens": 0}
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
        logits = next(o for o in self.session.get_outputs() if o.name == "logits")
        self.logits_dtype = _NP_DTYPES.get(logits.type, np.float32)
        #: the graph computes the last position's logits only (``edge-export --logits last``): a run
        #: returns one row however many tokens it feeds (module docstring)
        self.last_logits_only: bool = len(logits.shape) == 3 and logits.shape[1] == 1

    def _empty_past(self) -> list[ort.OrtValue]:
        """The cache a sequence starts with: empty pasts (concat), or the generator's buffers
        (shared: positions beyond the sequence are never read, so they need no clearing)."""
        if self.kv_layout == "shared":
            if self._kv_buffers is None:
                self._kv_buffers = []
                host = [] if self._device == "cpu" else None
                for (b, kv, _, hd) in self.spec.kv_cache_shapes(1, 0):
                    for _kind in ("key", "value"):
                        shape = [b, kv, self.kv_capacity, hd]
                        if host is not None:  # numpy memory: a cached prefix is copied in with np.copyto
                            host.append(np.zeros(shape, dtype=self.kv_dtype))
                            self._kv_buffers.append(ort.OrtValue.ortvalue_from_numpy(host[-1], "cpu", 0))
                        else:
                            self._kv_buffers.append(ort.OrtValue.ortvalue_from_shape_and_type(
                                shape, self.kv_dtype, self._device, 0))
                self._kv_host = host
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

    def _mask(self, length: int) -> np.ndarray:
        """A ones buffer of at least ``length`` entries (attention_mask is bound to its first ``length``)."""
        if self._ones.shape[1] < length:
            self._ones = np.ones((1, max(length, 2 * self._ones.shape[1])), dtype=np.int64)
        return self._ones

    # ---------------------------------------------------------------- prefix cache
    def cache_prefix(self, token_ids: Sequence[int]) -> PrefixCache:
        """Prefill ``token_ids`` once and register their KV entries: a later :meth:`DecodeState.prefill`
        of a prompt that starts with (some of) these ids copies them instead of recomputing them.

        KVCapacityError when the prefix leaves no room in the shared cache. Registering the same ids
        again returns the entry (nothing runs); at most a few prefixes are kept (oldest dropped). With
        the shared layout the prefill takes the cache buffers: a state started before refuses to run
        afterwards."""
        arr = np.asarray(token_ids)
        if arr.ndim != 1 or not arr.size or arr.dtype.kind not in "iu":
            raise ValueError(f"cache_prefix needs a non-empty list of integer token ids, got {one_line(token_ids, 80)}")
        ids = tuple(int(t) for t in arr)
        if self.kv_capacity is not None and len(ids) >= self.kv_capacity:
            raise KVCapacityError(f"{self.path.name}: a {len(ids)}-token prefix leaves no room in the KV cache "
                                  f"capacity {self.kv_capacity}; cache a shorter prefix or re-export with a larger "
                                  f"--kv-capacity")
        known = next((p for p in self._prefixes if p.ids == ids), None)
        if known is not None:
            return known
        state = self.start()
        state.append_tokens(ids)
        if self.kv_layout == "shared" and self._kv_host is not None:
            kv = [buf[:, :, :len(ids)].copy() for buf in self._kv_host]
        else:  # concat: the presents are [1, kv, len, hd]; shared on a GPU: the whole buffer
            kv = [np.array(value.numpy(), copy=True) for value in state.kv_cache]
        if self.kv_layout == "shared":
            self._owner = 0  # the state above is internal; nobody holds the buffers now
        entry = PrefixCache(ids, kv)
        self._prefixes = self._prefixes[-(_MAX_PREFIXES - 1):] + [entry]
        return entry

    def cache_common_prefix(self, prompts: Sequence[str]) -> PrefixCache | None:
        """Register the longest token prefix that every one of ``prompts`` (two or more renderings of
        one prompt template with different contents) starts with; None when they share none. This is
        how the instruction-independent part of the MPC prompt is found without knowing where the
        template's text ends: compared in token ids, after the chat format, as :meth:`encode` gives them."""
        encoded = [self.encode(p) for p in prompts]
        if len(encoded) < 2:
            raise ValueError("cache_common_prefix needs at least two prompts")
        n = min(common_prefix_length(encoded[0], other) for other in encoded[1:])
        if self.kv_capacity is not None:
            n = min(n, self.kv_capacity - 1)
        return self.cache_prefix(encoded[0][:n]) if n > 0 else None

    def clear_prefixes(self) -> None:
        self._prefixes = []

    @property
    def prefixes(self) -> tuple[PrefixCache, ...]:
        return tuple(self._prefixes)

    def _match_prefix(self, ids: Sequence[int]) -> tuple[int, PrefixCache | None]:
        """The registered prefix sharing the most leading ids with ``ids``, and how many (at most
        ``len(ids) - 1``: the last prompt token is always run for its logits)."""
        best, match = 0, None
        for entry in self._prefixes:
            k = common_prefix_length(entry.ids, ids)
            if k > best:
                best, match = k, entry
        return min(best, len(ids) - 1), match

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
        """Logits [len(token_ids), vocab] (graph dtype) of one prefill run (parity checks, debugging).
        ValueError for more than one token on a file that computes the last position only
        (:attr:`last_logits_only`): feed it one token at a time (``start().append_tokens``)."""
        if not len(token_ids):
            raise ValueError("prefill_logits: empty token list")
        if self.last_logits_only and len(token_ids) > 1:
            raise ValueError(f"prefill_logits: {self.path.name} computes the logits of the last position only "
                             f"(edge-export --logits last); append one token at a time for every position's row")
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
        logits = state.prefill(ids)
        token = int(np.argmax(logits[-1]))
        out = [token]
        ttft = time.perf_counter() - t0
        decode_times: list[float] = []
        stopped = stop_at_eos and token == self.eos_id
        while not stopped and len(out) < max_new_tokens:
            t = time.perf_counter()
            logits = state._run([token])  # a view of the state's logits buffer, read before the next step
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

    The state keeps one IOBinding for all its runs (module docstring, "Binding reuse"): the cache
    is bound once (shared layout), the token inputs and the logits are preallocated host arrays
    updated in place, so a one-token step allocates nothing but the copy of its logits row."""

    def __init__(self, generator: OnnxGenerator) -> None:
        self.generator = generator
        self._id, self._past = generator._claim()
        self._length = 0
        self._binding: ort.IOBinding | None = None  # built on the first run
        self._bound_n = 0  # tokens per run the binding's input_ids / position_ids / logits are sized for
        self._ids_buf = self._pos_buf = self._logits_buf = np.empty(0)
        self._values: list[ort.OrtValue] = []  # the OrtValues over those arrays (kept alive with the binding)

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

    def _check_owner(self) -> None:
        gen = self.generator
        if gen.kv_layout == "shared" and gen._owner != self._id:
            raise RuntimeError(f"{gen.path.name}: this DecodeState no longer holds the shared KV cache (a later start() "
                               f"or reset() took it); call reset() or start a new one")

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        """Append a prompt and return the logits of its last token, ``[1, vocab]`` -- the last row of
        ``append_tokens(token_ids)``, but on an empty state the leading ids that a registered prefix
        (:meth:`OnnxGenerator.cache_prefix`) shares with the prompt are copied from the prefix cache
        instead of being run (module docstring, "Prompt-prefix cache"). Same errors as append_tokens."""
        gen = self.generator
        arr = np.asarray(token_ids)
        if self._length or not gen._prefixes or arr.ndim != 1 or not arr.size or arr.dtype.kind not in "iu":
            return self._last_row(token_ids)  # (append_tokens names what is wrong with the list)
        ids = [int(t) for t in arr]
        k, entry = gen._match_prefix(ids)
        stats = gen.prefix_stats
        if entry is None or k < 1:
            stats["miss"] += 1
            return self._last_row(ids)
        self._check_owner()
        if gen.kv_capacity is not None and len(ids) > gen.kv_capacity:
            return self._last_row(ids)  # refused in one line (KVCapacityError)
        stats["full" if k == len(entry) else "partial"] += 1
        stats["reused_tokens"] += k
        if gen.kv_layout == "shared":
            if gen._kv_host is not None:
                for buf, saved in zip(gen._kv_host, entry.kv):
                    np.copyto(buf[:, :, :k], saved[:, :, :k])
            else:  # device buffers: the saved copy is the whole buffer (positions >= k are overwritten or unread)
                for value, saved in zip(self._past, entry.kv):
                    value.update_inplace(saved)
        else:
            self._past = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(saved[:, :, :k]), gen._device, 0)
                          for saved in entry.kv]
        self._length = k
        return self._last_row(ids[k:])

    def _last_row(self, token_ids: Sequence[int]) -> np.ndarray:
        """The last logits row of a run, as an array of its own ([1, vocab]; the rest is not kept)."""
        return self._run(token_ids)[-1:].copy()

    def _bind(self, n: int) -> ort.IOBinding:
        """The state's binding with input_ids / position_ids / logits sized for ``n`` tokens (built or
        re-sized only when ``n`` changes; with the shared layout the cache is bound when it is built)."""
        gen = self.generator
        binding = self._binding
        if binding is None:
            binding = self._binding = gen.session.io_binding()
            self._bound_n = 0
            if gen.kv_layout == "shared":  # the same buffer is past and present: the graph appends in place
                for name, value in zip(gen._past_names, self._past):
                    binding.bind_ortvalue_input(name, value)
                for name, value in zip(gen._present_names, self._past):
                    binding.bind_ortvalue_output(name, value)
        if n != self._bound_n:
            self._ids_buf = np.zeros((1, n), dtype=np.int64)
            self._pos_buf = np.zeros((1, n), dtype=np.int64)
            rows = 1 if gen.last_logits_only else n
            self._logits_buf = np.empty((1, rows, gen.spec.vocab_size), dtype=gen.logits_dtype)
            self._values = [ort.OrtValue.ortvalue_from_numpy(a, "cpu", 0)  # CPU: the OrtValue uses the array's memory
                            for a in (self._ids_buf, self._pos_buf, self._logits_buf)]
            binding.bind_ortvalue_input("input_ids", self._values[0])
            binding.bind_ortvalue_input("position_ids", self._values[1])
            binding.bind_ortvalue_output("logits", self._values[2])
            self._bound_n = n
        return binding

    def append_tokens(self, token_ids: Sequence[int]) -> np.ndarray:
        """Run the graph on ``token_ids`` (at positions ``length``.. after the cached tokens) and
        return their logits ``[len(token_ids), vocab]`` in the graph's dtype (``[1, vocab]``, the last
        position's, on a file that computes only that one: :attr:`OnnxGenerator.last_logits_only`);
        the last row scores the next token. The array is the caller's: later steps never write into it. ValueError for
        an empty or non-integer list, an id outside the vocabulary, or more tokens than the shared
        cache holds (KVCapacityError); RuntimeError when a newer state has taken the shared cache."""
        logits = self._run(token_ids)
        return logits.copy() if len(logits) == 1 else logits  # a one-token run's row lives in the reused buffer

    def _run(self, token_ids: Sequence[int]) -> np.ndarray:
        """append_tokens without the copy: after a one-token run the logits are a view of the state's
        reused buffer, valid until its next run (the greedy loop of ``generate`` reads them at once)."""
        gen = self.generator
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or not ids.size or ids.dtype.kind not in "iu":
            raise ValueError(f"append_tokens needs a non-empty list of integer token ids, got {one_line(token_ids, 80)}")
        n = int(ids.size)
        if n == 1:
            first = int(ids[0])
            bad = not 0 <= first < gen.spec.vocab_size
        else:
            bad = ids.min() < 0 or ids.max() >= gen.spec.vocab_size
        if bad:
            raise ValueError(f"append_tokens: token ids must lie in [0, {gen.spec.vocab_size}) (the model's vocabulary), "
                             f"got {one_line(token_ids, 80)}")
        shared = gen.kv_layout == "shared"
        self._check_owner()
        start = self._length
        if shared and start + n > gen.kv_capacity:
            raise KVCapacityError(f"{gen.path.name}: {start + n} tokens exceed the KV cache capacity {gen.kv_capacity}; "
                                  f"shorten the prompt or re-export with a larger --kv-capacity")
        binding = self._bind(n)
        if n == 1:
            self._ids_buf[0, 0] = first
            self._pos_buf[0, 0] = start
        else:
            self._ids_buf[0] = ids
            self._pos_buf[0] = np.arange(start, start + n)
        # attention_mask: the first start + n entries of the generator's ones buffer (only the length changes)
        binding.bind_input("attention_mask", "cpu", 0, np.int64, [1, start + n], gen._mask(start + n).ctypes.data)
        if not shared:  # concat: the pasts are the previous presents; ORT allocates the longer presents
            for name, value in zip(gen._past_names, self._past):
                binding.bind_ortvalue_input(name, value)
            for name in gen._present_names:
                binding.bind_output(name, gen._device)
        gen.session.run_with_iobinding(binding)
        if not shared:
            self._past = list(binding.get_outputs()[1:])
        self._length = start + n
        out = self._logits_buf[0]
        if n > 1 and not gen.last_logits_only:
            self._bound_n = 0  # a multi-token run hands its logits buffer to the caller; the next one binds a new one
        return out


class OnnxPolicy:
    """The ``TextPolicy`` of an exported file (edge_runtime.contracts.generation), one prompt at a time.

    ``last_results`` keeps the full GenerationResult (timings) of the latest ``generate`` call.
    ``constrained``: grammar-constrained decoding, the task inferred from each prompt.
    ``prefix_cache``: register the common token prefix of each batch of two or more prompts
    (:meth:`OnnxGenerator.cache_common_prefix`; for a batch of MPC prompts, the system part) before
    generating it. Off by default: an evaluation then runs exactly the full prefill it always did
    (the cached path agrees within float summation order, 1e-5 on the logits)."""

    def __init__(self, onnx_path: str | Path, providers: str | Sequence[str] | None = None,
                 threads: int | None = None, name: str | None = None, *, constrained: bool = False,
                 prefix_cache: bool = False) -> None:
        self.generator = OnnxGenerator(onnx_path, providers=providers, threads=threads, constrained=constrained)
        self.prefix_cache = bool(prefix_cache)
        self.path = Path(onnx_path)
        self.name = name or self.path.stem
        self.last_results: list[GenerationResult] = []

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[Generation]:
        """Completions of ``prompts``; with a shared KV cache every prompt is checked to fit first
        (KVCapacityError), so that a batch that cannot run fails before its first generation."""
        if self.generator.kv_capacity is not None:
            for prompt in prompts:
                self.generator.check_fits(len(self.generator.encode(prompt)), max_new_tokens)
        if self.prefix_cache and len(prompts) > 1:
            self.generator.cache_common_prefix(prompts)
        self.last_results = [self.generator.generate(p, max_new_tokens) for p in prompts]
        return [Generation(r.text, prompt_tokens=r.prompt_tokens, emitted_tokens=r.emitted_tokens)
                for r in self.last_results]

    def parameter_count(self) -> int:
        """The arch spec's parameter count; the load checked the spec against every weight matrix of
        the graph (:mod:`.graph_check`), so it counts the graph's model, not what the metadata claims."""
        return self.generator.spec.num_parameters()

    def file_size(self) -> int:
        return self.path.stat().st_size
