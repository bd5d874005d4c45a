"""The one error type of edge-deploy: a message of one line that says what failed and what to do."""

from __future__ import annotations


class DeployError(Exception):
    """A refused or failed deploy step; ``str(exc)`` is the one line shown to the user. ``code``: the
    exit status (1: refused or failed, the previous version still runs; 2: bad input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(" ".join(str(message).split()))
        self.code = code
