"""Reading what a person hands the tools: bounded JSON files and safe quoting in one-line errors.

Parameter files, instruction scripts and similar user JSON are untrusted: a file nested 100k
levels deep, a 5000-digit number, a repeated key, a directory given as the file, bytes that are
not UTF-8 or a file of millions of keys must each end in one short error line that names the
file (and the field, where there is one) -- never a traceback, never a megabyte-long message.
The checks live here once so that ``edge-run``, ``edge-task`` and the library loaders
(``MPCParams.from_json_file``, ``load_script``) behave the same.

Limits (module constants): nesting depth, characters of one number literal, bytes of a file.
Duplicate keys are refused, as the answer parser refuses them (a repeated key silently taking
the last value hides a typo). A number literal that is too long is reported with the path of the
field that holds it (``qv``, ``[3].t``).

:func:`quote` and :func:`name_list` bound what an error message quotes of the user's text and
escape control characters, so that a raw escape sequence cannot reach the terminal.
Torch-free and numpy-free: the bottom layer (``contracts``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NUMBER_CHARS", "DuplicateKeyError", "UserInputError", "clip", "load_json_file",
           "loads_bounded", "name_list", "no_duplicate_keys", "printable", "quote", "read_text_file"]

#: Deepest nesting of lists / objects accepted (parameter sets and scripts need 2).
MAX_DEPTH = 32
#: Longest number literal accepted ("-123.456e-7" style; a float has 17 significant digits).
MAX_NUMBER_CHARS = 40
#: Largest user JSON file read.
MAX_FILE_BYTES = 8 * 2**20

_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class UserInputError(ValueError):
    """A user file or text that cannot be used; the message is one bounded line naming the source."""


def printable(text: str) -> str:
    """``text`` with control characters (escape sequences, newlines, DEL, C1) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def clip(text: Any, limit: int = 300) -> str:
    """``text`` for an error line: control characters escaped, cut to ``limit`` characters."""
    text = printable(str(text)[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(value: Any, limit: int = 60) -> str:
    """``repr`` of a user value for an error line: control characters escaped, cut to ``limit``."""
    if isinstance(value, str):
        text = repr(value if len(value) <= 4 * limit else value[: 4 * limit])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        text = f"<a {value.bit_length()}-bit integer>"
    elif isinstance(value, (dict, list)) and len(value) > limit:
        text = f"<a {type(value).__name__} of {len(value)} items>"
    else:
        text = repr(value)
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def name_list(names: Iterable[Any], shown: int = 5) -> str:
    """``'a', 'b', 'c'`` -- at most ``shown`` names quoted, then ``... (N in all)``."""
    names = list(names)
    head = ", ".join(quote(n, 40) for n in names[:shown])
    return head if len(names) <= shown else f"{head}, ... ({len(names)} in all)"


class _TooLong:
    """A number literal longer than MAX_NUMBER_CHARS, kept so that its field can be named."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


class DuplicateKeyError(ValueError):
    """Raised by :func:`no_duplicate_keys`; ``args[0]`` is the repeated key."""


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads`` that refuses a key repeated within one object."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def _number(parse):
    def hook(literal: str):
        return _TooLong(literal) if len(literal) > MAX_NUMBER_CHARS else parse(literal)
    return hook


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _check_depth(text: str, source: str, max_depth: int) -> None:
    depth = 0
    for m in _BRACKETS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > max_depth:
                raise UserInputError(f"{source}: JSON nested deeper than {max_depth} levels (line "
                                     f"{_line_of(text, m.start())}); write a flat object or list")
        elif c in "]}":
            depth -= 1


def _find_too_long(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, literal) of the first over-long number (the depth is already bounded)."""
    if isinstance(value, _TooLong):
        return path or "(top level)", value.literal
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for sub, v in items:
        found = _find_too_long(v, sub)
        if found:
            return found
    return None


def loads_bounded(text: str, source: str = "<json>", max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for user input: UserInputError (one line naming ``source``) for invalid JSON,
    nesting deeper than ``max_depth``, a repeated key, or a number literal longer than
    MAX_NUMBER_CHARS (naming its field). ``NaN`` / ``Infinity`` parse as floats, as in ``json``:
    the caller's value checks refuse them with the field's name."""
    _check_depth(text, source, max_depth)
    try:
        data = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_int=_number(int),
                          parse_float=_number(float))
    except DuplicateKeyError as exc:
        raise UserInputError(f"{source}: key {quote(exc.args[0], 40)} appears more than once in an object; "
                             "keep one") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (RecursionError, MemoryError, ValueError) as exc:  # belt and braces: the checks above should catch these
        raise UserInputError(f"{source}: not usable JSON ({type(exc).__name__})") from None
    found = _find_too_long(data, "")
    if found:
        field, literal = found
        raise UserInputError(f"{source}: field {quote(field, 60)}: the number {quote(literal, 30)} has "
                             f"{len(literal)} characters (at most {MAX_NUMBER_CHARS}); write a plain number")
    return data


def read_text_file(path: str | Path, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a user file (a BOM is dropped); UserInputError naming the file when it is
    missing, a directory, unreadable, larger than ``max_bytes`` or not UTF-8."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserInputError(f"{path}: is a directory, not a {what}; give the path of the file")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserInputError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read the {what} ({type(exc).__name__}: "
                             f"{printable(exc.strerror or exc)})") from None
    if len(data) > max_bytes:
        raise UserInputError(f"{path}: the {what} is larger than {max_bytes // 2**20} MiB; this is not a {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                             f"{exc.start}); save it as UTF-8") from None


def load_json_file(path: str | Path, what: str = "JSON file", max_bytes: int = MAX_FILE_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    """:func:`read_text_file` then :func:`loads_bounded`: every failure is one UserInputError line."""
    return loads_bounded(read_text_file(path, what, max_bytes), str(path), max_depth)
