"""The answer tags and the prompt-template version: what a model's text output is agreed to look like.

Both sides read these: the formatters and parsers of :mod:`edge_runtime.tasks.answers`, the
tokenizer's special tokens and the training rewards, the runtime's constrained decoder and answer
grammar, and the ONNX exporter, which writes them into a model's metadata. A model trained with
one set of tags or one prompt template is only valid with the same ones at run time, which is
why they are defined once, below every package that uses them.

:data:`PROMPT_VERSION` names the prompt template whose text lives in
:mod:`edge_runtime.tasks.prompts`; change it whenever the text of either prompt changes.
"""

from __future__ import annotations

__all__ = ["ANSWER_OPEN", "ANSWER_CLOSE", "PROMPT_VERSION"]

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

PROMPT_VERSION = "2"
