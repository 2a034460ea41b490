"""Model args as lmms-eval hands them over, checked one by one before anything loads.

lmms-eval turns ``k=v`` into Python values with its own guesses ("1" -> 1, "1.5" -> 1.5,
"true" -> True, "inf" -> inf, anything else a string). Each parser accepts what a user
means, and otherwise raises ModelArgError naming the argument, the value given and what
is allowed.
"""
from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path


class ModelArgError(ValueError):
    """A model arg that cannot be used; the message names it, its value and what is allowed."""


def number(name: str, value, *, infinite_ok: bool = False, what: str = "a number") -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ModelArgError(f"{name} must be {what}, got {value!r}") from None
    if math.isnan(x) or (math.isinf(x) and not infinite_ok):
        raise ModelArgError(f"{name} must be {what}, got {value!r}")
    return x


def integer(name: str, value, *, minimum: int | None = None) -> int:
    """An integer; lmms-eval may hand it over as an int, a float with no fraction, or a string."""
    try:
        x = float(value)
        ok = math.isfinite(x) and x == int(x) and not isinstance(value, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelArgError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and int(x) < minimum:
        raise ModelArgError(f"{name} must be >= {minimum}, got {value!r}")
    return int(x)


def optional_integer(name: str, value, *, minimum: int | None = None) -> int | None:
    return None if value is None else integer(name, value, minimum=minimum)


def boolean(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ModelArgError(f"{name} must be true or false, got {value!r}")


def one_of(name: str, value, allowed) -> str:
    if str(value) not in allowed:
        raise ModelArgError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return str(value)


RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def run_id(name: str, value) -> str | None:
    """A run id chosen by the user becomes part of file names: letters, digits, . _ - only."""
    if value is None or value == "":
        return None
    text = str(value)
    if not RUN_ID.match(text) or ".rank" in text or text.endswith(".run"):
        raise ModelArgError(f"{name} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or "
                            f"digit, without '.rank'), got {value!r}")
    return text


def local_path_exists(name: str, value: str) -> str:
    """A value that can only be a local path (absolute, ./ ../ ~, or more than one '/', which
    no hub id has) must exist; the hub's own error for it ("Repo id must be in the form ...")
    would not say what is wrong."""
    text = str(value)
    looks_local = text.startswith(("/", "./", "../", "~")) or text.count("/") > 1
    if looks_local and not Path(text).expanduser().exists():
        raise ModelArgError(f"{name}={text}: no such local directory (a hub id has the form 'namespace/name')")
    return text


def writable_directory(name: str, value) -> Path:
    """Create the directory if needed and prove a file can be created in it, before the
    model loads (finding out after an hour of loading is the alternative)."""
    path = Path(str(value)).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelArgError(f"{name}={value}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ModelArgError(f"{name}={value}: cannot write there ({err.strerror or err})") from None
    return path
