"""Errors as the command line shows them: one line that says what is wrong, not the traceback around it."""

from __future__ import annotations

import re

from jsonargparse import ArgumentError

from datamodules import DatasetError
from zoo import CheckpointError, PretrainedError

__all__ = ["UsageError", "USER_ERRORS", "one_line", "worker_error"]


class UsageError(Exception):
    """Something the user passed cannot work; the message says what and what to do instead."""


# What the user passed or pointed at (exit status 2) rather than a failure of the run itself (status 1).
USER_ERRORS = (
    UsageError,
    ArgumentError,
    ValueError,
    TypeError,
    DatasetError,
    CheckpointError,
    PretrainedError,
    OSError,
)


def worker_error(e: Exception) -> Exception:
    """The error a worker of ``ddp_spawn`` / ``ddp_fork`` raised, rebuilt from the last line of its traceback: torch
    hands the caller a ``ProcessRaisedException`` whose message is the whole traceback."""
    lines = str(e).strip().splitlines()
    if type(e).__name__ != "ProcessRaisedException" or ": " not in lines[-1]:
        return e
    name, message = lines[-1].split(": ", 1)
    known = {c.__name__: c for c in USER_ERRORS if c is not ArgumentError}  # each takes a message alone
    return known.get(name.rsplit(".", 1)[-1], type(name.rsplit(".", 1)[-1], (Exception,), {}))(message)


_NOISE = re.compile(r"Expected a <class 'NoneType'>|Not a valid subclass of .*|Given value.*|Subtypes: .*")


def _reasons(text: str) -> list[str]:
    """The innermost reasons of a jsonargparse message, whose "Does not validate against any of the Union subtypes"
    wraps, once per subtype tried, the error that each raised ("- lr must be > 0", "- Expected a <class 'int'>")."""
    if "Errors:" not in text:
        return [text.strip()]
    found: list[str] = []
    for item in re.split(r"\n\s*- ", text.split("Errors:", 1)[1])[1:]:
        item = re.sub(r"\n\s*(Given value|Subtypes).*", "", item, flags=re.S).strip()
        if _NOISE.fullmatch(item):
            continue
        head, _, tail = item.partition(":\n")
        found += _reasons(tail) if tail and ("Errors:" in tail or head.startswith("Problem with")) else [item]
    return [" ".join(r.split()) for r in found if r]


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line, unwrapped from jsonargparse's layers."""
    text = str(e)
    key = re.match(r'Parser key "([^"]+)":', text)
    reasons = _reasons(text)
    types = [m.group(1) for r in reasons if (m := re.fullmatch(r"Expected a <class '(\w+)'>", r))]
    if key and types and len(types) == len(reasons):
        given = re.search(r"Given value: (.*)", text)
        return f"--{key.group(1)}: expected {' or '.join(types)}, got {given.group(1).strip() if given else 'other'}"
    message = "; ".join(dict.fromkeys(reasons)) or text.strip()
    if key and not message.startswith(f"--{key.group(1)}"):
        message = f"--{key.group(1)}: {message}"
    return " ".join(message.split())
