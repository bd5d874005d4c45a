"""A small byte-level BPE tokenizer: train, save, load (``tokenizers``; HF wrapper on demand).

* Pre-tokenizer: ``Digits(individual_digits=True)`` then ``ByteLevel`` (no prefix space), so
  every digit is its own token (numbers stay learnable: "-12.345" -> "-", "1", "2", ".", "3",
  "4", "5") and every string -- also words never seen in training, e.g. held-out phrasings --
  tokenizes without an unknown token; no normalizer, so ``decode(encode(x)) == x``.
* Tokens: ``<|endoftext|>`` (id 0; end of sequence, also used as beginning of sequence),
  ``<|pad|>`` (id 1), and ``<answer>`` / ``</answer>`` (ids 2, 3) as single, *non-special*
  added tokens: they survive ``decode(..., skip_special_tokens=True)``, which the answer parser
  needs. The answer tags are cut out of the training text so that BPE does not spend merges on
  their pieces.
* No post-processor: ``encode`` adds no BOS/EOS; callers append EOS to training targets.

The text it is trained on is the caller's: ``edge-train sft`` passes the task corpus of
:func:`edge_runtime.train.corpus.task_corpus`. This module knows the token conventions only
(it imports the answer tags from ``contracts``, nothing from ``tasks`` or ``sim``), so that a
model directory's tokenizer can be loaded without the training-data code.

This module is training-side; ``transformers`` is imported only inside :func:`as_hf_tokenizer`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..contracts.answer_format import ANSWER_CLOSE, ANSWER_OPEN
from ..contracts.chat_format import ChatFormat

__all__ = [
    "special_ids",
    "EOS_TOKEN", "BOS_TOKEN", "PAD_TOKEN", "ANSWER_TOKENS", "TOKENIZER_FILE",
    "train_tokenizer", "save_tokenizer", "load_tokenizer", "as_hf_tokenizer", "token_counts",
]

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = EOS_TOKEN
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
ANSWER_TOKENS = (ANSWER_OPEN, ANSWER_CLOSE)
TOKENIZER_FILE = "tokenizer.json"


def special_ids(tok: Tokenizer, chat_format: ChatFormat | None = None) -> tuple[int, int]:
    """(EOS id, pad id): generation stops at EOS and batches are padded with pad, so a tokenizer
    without both cannot train or generate here. The token strings come from ``chat_format`` (a
    pretrained tokenizer ends answers with its own token, e.g. ``<|im_end|>``); None: ours."""
    eos_token, pad_token = (chat_format.eos_token, chat_format.pad_token) if chat_format else (EOS_TOKEN, PAD_TOKEN)
    eos, pad = tok.token_to_id(eos_token), tok.token_to_id(pad_token)
    if eos is None or pad is None:
        raise ValueError(f"tokenizer needs the {eos_token} and {pad_token} tokens (the chat format's eos_token "
                         f"and pad_token); fix chat_format.json or use the model's own tokenizer")
    return eos, pad


_TAG_RE = re.compile("|".join(re.escape(t) for t in ANSWER_TOKENS))


def _new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """Train the byte-level BPE tokenizer on ``corpus``; ``vocab_size`` counts every token
    (specials and answer tags included; a small corpus may end up with fewer)."""
    fixed = SPECIAL_TOKENS + ANSWER_TOKENS
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < len(fixed) + n_bytes:
        raise ValueError(f"vocab_size must be >= {len(fixed) + n_bytes} (256 bytes + {len(fixed)} fixed tokens), "
                         f"got {vocab_size}")
    tok = _new_tokenizer()
    # All four fixed tokens go into the model vocabulary first (ids 0-3) ...
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(fixed),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)

    def pieces() -> Iterable[str]:  # the answer tags are single tokens: do not learn merges for them
        for text in corpus:
            if not isinstance(text, str):
                raise TypeError(f"train_tokenizer: corpus items must be strings, got {type(text).__name__}")
            yield from (p for p in _TAG_RE.split(text) if p)

    tok.train_from_iterator(pieces(), trainer)
    # ... then the answer tags are turned into ordinary (non-special) added tokens, so that
    # decode(..., skip_special_tokens=True) keeps them. Editing the serialized form is the one
    # reliable way: re-adding them through the API leaves them in the in-memory special set.
    data = json.loads(tok.to_str())
    for entry in data["added_tokens"]:
        if entry["content"] in ANSWER_TOKENS:
            entry["special"] = False
    tok = Tokenizer.from_str(json.dumps(data))
    _check(tok, "trained tokenizer")
    return tok


def _check(tok: Tokenizer, where: str, chat_format: ChatFormat | None = None) -> None:
    """Our own tokenizers carry our special and answer tokens. A pretrained tokenizer used through a
    chat format needs only the format's own tokens, each a single token (the answer tags are then
    ordinary text, several tokens each)."""
    if chat_format is not None and chat_format.kind != "plain":
        for token in chat_format.special_tokens():
            got = tok.token_to_id(token)
            if got is None or tok.encode(token, add_special_tokens=False).ids != [got]:
                raise ValueError(f"{where}: the chat format's token {token!r} is not a single token of this "
                                 "tokenizer; use the model's own tokenizer.json or fix chat_format.json")
        return
    for token in SPECIAL_TOKENS + ANSWER_TOKENS:
        got = tok.token_to_id(token)
        if got is None:
            raise ValueError(f"{where}: token {token!r} is missing; train it with "
                             "edge_runtime.model.tokenizer.train_tokenizer")
        if token in ANSWER_TOKENS and tok.encode(token).ids != [got]:
            raise ValueError(f"{where}: {token!r} does not encode to a single token")


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write ``tok`` as JSON; ``path`` is a ``.json`` file or a directory (then ``tokenizer.json``
    inside it). Returns the file written."""
    path = Path(path)
    if path.suffix != ".json" or path.is_dir():
        path = path / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def load_tokenizer(path: str | Path, chat_format: ChatFormat | None = None) -> Tokenizer:
    """Load a tokenizer saved by :func:`save_tokenizer` (a ``.json`` file or a directory holding
    ``tokenizer.json``); FileNotFoundError / ValueError naming the file when missing or corrupt.
    ``chat_format``: the model's recorded format (a pretrained tokenizer is checked for its tokens,
    not for ours)."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found; train one with "
                                "edge_runtime.model.tokenizer.train_tokenizer and save_tokenizer")
    try:
        json.loads(path.read_text(encoding="utf-8"))
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # JSON errors, tokenizers' own exceptions, bad encodings
        raise ValueError(f"tokenizer file {path} is not a valid tokenizers JSON file ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None
    _check(tok, f"tokenizer file {path}", chat_format)
    return tok


def as_hf_tokenizer(tok_or_path: Tokenizer | str | Path):
    """Wrap a tokenizer (object, ``tokenizer.json`` path or directory) as a
    ``transformers.PreTrainedTokenizerFast`` with eos = bos = ``<|endoftext|>`` and pad ``<|pad|>``.

    Token ids are the same as the raw tokenizer's (no BOS/EOS is added); tokenization spaces are
    not cleaned up on decode, so decode(encode(x)) == x holds here too."""
    from transformers import PreTrainedTokenizerFast  # training side only

    tok = tok_or_path if isinstance(tok_or_path, Tokenizer) else load_tokenizer(tok_or_path)
    _check(tok, "as_hf_tokenizer")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=BOS_TOKEN,
                                   pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False)


def token_counts(tok: Tokenizer, texts: Sequence[str]) -> list[int]:
    """Number of tokens of each text (no special tokens added)."""
    return [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]
