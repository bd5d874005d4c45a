"""SFT examples: (prompt, answer) text pairs for both driving tasks, from the train split only.

MPC task: the training phrasings, curated and compositional (reference-velocity ones with seeded target speeds),
answered with the oracle's parameter set for that instruction, jittered so that the model learns
a neighbourhood of good answers rather than one string. The jitter is relative (``jitter`` of the
parameter's range, Gaussian), clipped into range, and never touches the speed bounds that a
reference-velocity or reverse instruction pins down, nor the parameters the oracle left at their
defaults. Answers list only the parameters that differ from the defaults (the rest default). Decision task: the balanced, seeded dataset
of ``edge_runtime.tasks.decision`` with train phrasings on the train track.

Optional lexical augmentation (``edge_runtime.train.lexicon``; off by default): WordNet synonym
substitution in the phrasings of both tasks (``synonym_rate``), and a share of MPC examples
(``distractor_fraction``) whose instruction names no category and whose answer is the default
parameter set -- so that a model which does not understand an instruction keeps the defaults;
and random word insertion (``insertion_rate``: the share of phrasings of both tasks that get 1-3
distractor words inserted, their category words kept) -- so that one unfamiliar word next to a
clear instruction word does not make the model drop the instruction.
Optional history augmentation (``edge_runtime.train.history_augment``; off by default): a share
(``history_augment``) of decision examples get a label-preserving edit of their state history, so
that the summary statistics the reason line copies cover a wide range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..control.params import DEFAULT_PARAMS, PARAM_SPECS, MPCParams
from ..tasks.answers import format_decision_answer, format_mpc_answer
from ..tasks.behaviours import StateHistory
from ..tasks.decision import DEFAULT_THRESHOLDS, DecisionInstruction, LabelThresholds, generate_decision_dataset
from ..contracts.task_enums import Category
from ..tasks.instructions import SPEED_RANGE, Instruction, make_instruction, training_phrasings
from ..tasks.oracle_table import OracleTable
from ..tasks.prompts import build_decision_prompt, build_mpc_prompt, history_stats
from .history_augment import augment_example
from .lexicon import Lexicon, distractor_phrasing, insert_words, load_lexicon, substitute_synonyms


@dataclass(frozen=True)
class SFTExample:
    task: str  # "mpc" | "decision"
    prompt: str
    answer: str
    category: str  # instruction category (mpc; "unknown" for a distractor) or decision instruction value
    instruction: str = ""  # the instruction text inside the prompt (the tokenizer corpus takes it)


UNKNOWN_CATEGORY = "unknown"
UNKNOWN_REASON = "Reason: no driving instruction I know, keep the defaults."


@dataclass(frozen=True)
class SFTDataConfig:
    mpc_examples: int = 3000
    decision_per_instruction: int = 200  # even; half True, half False
    jitter: float = 0.03  # Gaussian sigma as a fraction of each parameter's range
    seed: int = 0
    synonym_rate: float = 0.0  # probability of replacing each content word by a WordNet synonym
    distractor_fraction: float = 0.0  # share of MPC examples with no category, answered with the defaults
    lexicon: str | None = None  # lexicon JSON; None = the one shipped with the package
    history_augment: float = 0.0  # share of decision examples whose history gets a label-preserving edit
    insertion_rate: float = 0.0  # share of phrasings (both tasks) with 1-3 random distractor words inserted

    def __post_init__(self) -> None:
        if self.mpc_examples < 0 or self.decision_per_instruction < 0:
            raise ValueError("SFTDataConfig: example counts must be >= 0")
        if self.decision_per_instruction % 2:
            raise ValueError("SFTDataConfig.decision_per_instruction must be even (balanced labels)")
        if not 0 <= self.jitter <= 0.5:
            raise ValueError("SFTDataConfig.jitter must be in [0, 0.5]")
        if not 0 <= self.synonym_rate <= 1:
            raise ValueError("SFTDataConfig.synonym_rate must be in [0, 1]")
        if not 0 <= self.distractor_fraction < 1:
            raise ValueError("SFTDataConfig.distractor_fraction must be in [0, 1)")
        if not 0 <= self.insertion_rate <= 1:
            raise ValueError("SFTDataConfig.insertion_rate must be in [0, 1]")
        if not 0 <= self.history_augment <= 1:
            raise ValueError("SFTDataConfig.history_augment must be in [0, 1]")

    @property
    def augmented(self) -> bool:
        return self.synonym_rate > 0 or self.distractor_fraction > 0 or self.insertion_rate > 0


_PINNED = {Category.REFERENCE_VELOCITY: ("v_max",), Category.REVERSE: ("v_max", "v_min")}


def jitter_params(params: MPCParams, category: Category, rng: np.random.Generator, scale: float) -> MPCParams:
    values = params.to_dict()
    for spec in PARAM_SPECS:
        if spec.name in _PINNED.get(category, ()) or scale == 0 or values[spec.name] == spec.default:
            continue
        noisy = values[spec.name] + rng.normal(0.0, scale) * (spec.high - spec.low)
        values[spec.name] = float(np.clip(noisy, spec.low, spec.high))
    values["v_min"] = min(values["v_min"], values["v_max"])
    return MPCParams(**{k: round_significant(v, 3) for k, v in values.items()})


def round_significant(x: float, digits: int) -> float:
    """Round to ``digits`` significant digits: every digit is a token, and the fourth one of a
    jittered value is noise the model should not have to learn."""
    if x == 0:
        return 0.0
    return round(x, max(0, digits - 1 - int(np.floor(np.log10(abs(x))))))


def reasoning_for(instruction: Instruction) -> str:
    """The short reason line before the answer: naming the category (and target) first gives the
    model an explicit intermediate step before it writes eleven numbers."""
    if instruction.category is Category.REFERENCE_VELOCITY:
        return f"Reason: hold {instruction.target_speed:g} m/s."
    return {
        Category.CENTRELINE: "Reason: stay on the centre line.",
        Category.REVERSE: "Reason: drive backwards.",
        Category.SMOOTH: "Reason: keep accelerations low.",
        Category.RACING_LINE: "Reason: take the racing line.",
    }[instruction.category]


_WRAPPERS = ("Please {lc}.", "{uc}, please.", "Could you {lc}?", "Can you {lc}?", "I want you to {lc}.",
             "I'd like you to {lc}.", "Now {lc}.", "OK, {lc}.", "Next: {uc}.", "Let's {lc}.", "From now on, {lc}.",
             "Hey, {lc}.")


def wrap_phrasing(phrase: str, rng: np.random.Generator, probability: float = 0.5) -> str:
    """Put a training phrasing inside a common request form half of the time ("Could you ...?").

    A model trained from scratch otherwise learns whole sentences; with the same instruction in
    many request forms it has to key on the words that carry the meaning."""
    if rng.random() >= probability:
        return phrase
    core = phrase.rstrip(".!?")
    lc = core[0].lower() + core[1:] if core[:2] != core[:2].upper() else core
    return _WRAPPERS[int(rng.integers(len(_WRAPPERS)))].format(lc=lc, uc=core)


def _maybe_insert(phrase: str, lexicon: Lexicon | None, rng: np.random.Generator, rate: float) -> str:
    """``phrase`` with random distractor words inserted, with probability ``rate`` (no draw at 0,
    so runs without insertion keep their data)."""
    if lexicon is None or rate <= 0 or rng.random() >= rate:
        return phrase
    return insert_words(phrase, lexicon, rng)


def mpc_examples(table: OracleTable, n: int, jitter: float, rng: np.random.Generator,
                 lexicon: Lexicon | None = None, synonym_rate: float = 0.0,
                 distractor_fraction: float = 0.0, insertion_rate: float = 0.0) -> list[SFTExample]:
    categories = list(Category)
    out = []
    for i in range(n):
        if distractor_fraction > 0 and rng.random() < distractor_fraction:
            out.append(distractor_example(lexicon, rng))
            continue
        category = categories[i % len(categories)]
        options = training_phrasings(category)
        phrase = options[int(rng.integers(len(options)))]
        if lexicon is not None:
            phrase = substitute_synonyms(phrase, lexicon, rng, synonym_rate)
            phrase = _maybe_insert(phrase, lexicon, rng, insertion_rate)
        speed = round(float(rng.uniform(*SPEED_RANGE)), 1) if category is Category.REFERENCE_VELOCITY else None
        ins = make_instruction(category, wrap_phrasing(phrase, rng), speed)
        params = jitter_params(table.params_for(ins), category, rng, jitter)
        out.append(SFTExample("mpc", build_mpc_prompt(ins.text), format_mpc_answer(params, reasoning_for(ins), only_changed=True),
                              category.value, ins.text))
    return out


def distractor_example(lexicon: Lexicon, rng: np.random.Generator) -> SFTExample:
    """An instruction shaped like a training phrasing of a speed-free category, with every
    category-bearing word replaced by a random common word; the answer keeps the defaults."""
    category = (Category.CENTRELINE, Category.REVERSE, Category.SMOOTH, Category.RACING_LINE)[int(rng.integers(4))]
    options = training_phrasings(category)
    text = wrap_phrasing(distractor_phrasing(options[int(rng.integers(len(options)))], lexicon, rng), rng)
    return SFTExample("mpc", build_mpc_prompt(text), format_mpc_answer(DEFAULT_PARAMS, UNKNOWN_REASON, only_changed=True),
                      UNKNOWN_CATEGORY, text)


def decision_reasoning(history: StateHistory, instruction: DecisionInstruction,
                       thresholds: LabelThresholds = DEFAULT_THRESHOLDS) -> str:
    """The reason line before a decision answer: the statistic the instruction is about, copied
    from the prompt's summary line, next to the rule's limit (both in cm, cm/s).

    Why: a from-scratch model given only the label never learns which number to look at (it
    settles on the majority answer); naming the number first splits the decision into a lookup
    and a comparison, each of which a small transformer learns."""
    st = {k: int(v) for k, v in history_stats(history).items()}
    cm = lambda x: int(round(100 * x))  # noqa: E731 - a unit conversion
    moving = f"mean v {st['v_mean']}, needs > {cm(thresholds.forward_speed)}"
    if any(history.crashed):
        return "Crashed: yes, so no."
    return {
        DecisionInstruction.DONT_MOVE: f"max |v| {st['v_absmax']}, needs < {cm(thresholds.still_speed)}.",
        DecisionInstruction.REVERSE: f"mean v {st['v_mean']}, needs < {cm(thresholds.reverse_speed)}.",
        DecisionInstruction.DRIVE_FORWARD: f"{moving}.",
        DecisionInstruction.FASTER_THAN_3: f"mean v {st['v_mean']}, needs > {cm(thresholds.fast_speed)}.",
        DecisionInstruction.OSCILLATE: (f"sign changes {st['sign_changes']}, needs >= {thresholds.oscillation_crossings}; "
                                        f"d range {st['d_range']}, needs > {cm(thresholds.oscillation_p2p)}."),
        DecisionInstruction.LEFT_WALL: f"wl mean {st['wl_mean']}, needs < {cm(thresholds.left_wall_distance)}; {moving}.",
        DecisionInstruction.CENTRELINE: f"d rms {st['d_rms']}, needs < {cm(thresholds.centreline_rms)}; {moving}.",
        DecisionInstruction.RACING_LINE: (f"dr rms {st.get('dr_rms', 0)}, needs < {cm(thresholds.racing_line_rms)}; "
                                          f"{moving}."),
    }[instruction]


def decision_examples(n_per_instruction: int, seed: int, lexicon: Lexicon | None = None,
                      synonym_rate: float = 0.0, history_augment: float = 0.0,
                      insertion_rate: float = 0.0) -> list[SFTExample]:
    if n_per_instruction == 0:
        return []
    data = generate_decision_dataset(n_per_instruction=n_per_instruction, split="train", seed=seed)
    rng = np.random.default_rng(seed + 7)
    edit_rng = np.random.default_rng(seed + 11)  # its own stream: switching edits on keeps the phrasings
    out = []
    for ex in data:
        if history_augment > 0 and edit_rng.random() < history_augment:
            ex = augment_example(ex, edit_rng)
        phrase = substitute_synonyms(ex.phrasing, lexicon, rng, synonym_rate) if lexicon is not None else ex.phrasing
        phrase = _maybe_insert(phrase, lexicon, rng, insertion_rate)
        text = wrap_phrasing(phrase, rng)
        out.append(SFTExample("decision", build_decision_prompt(ex.history, text),
                              decision_reasoning(ex.history, ex.instruction) + "\n" + format_decision_answer(ex.label),
                              ex.instruction.value, text))
    return out


def build_sft_examples(table: OracleTable, config: SFTDataConfig) -> list[SFTExample]:
    """All SFT examples, shuffled with the config's seed."""
    rng = np.random.default_rng(config.seed)
    lexicon = load_lexicon(config.lexicon) if config.augmented else None
    examples = mpc_examples(table, config.mpc_examples, config.jitter, rng, lexicon, config.synonym_rate,
                            config.distractor_fraction, config.insertion_rate)
    examples += decision_examples(config.decision_per_instruction, config.seed, lexicon, config.synonym_rate,
                                  config.history_augment, config.insertion_rate)
    order = rng.permutation(len(examples))
    return [examples[i] for i in order]
