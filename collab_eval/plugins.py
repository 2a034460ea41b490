"""Loading the plug-ins of one entry-point group (families, scores, locators) the same way.

A plug-in that cannot be imported, or is not what its group expects, is reported by name with
the reason and never hides the others: a user's broken plug-in must not take the built-ins down.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any


class NotAPlugin(Exception):
    """Raised by a group's ``accept`` with why a loaded object is not one of its plug-ins."""


@dataclass(frozen=True)
class Loaded:
    """A group's plug-ins by name, in listing order, and the ones that could not be loaded."""
    found: dict[str, Any]
    broken: dict[str, str]  # entry-point name -> why


def load_group(group: str, accept: Callable[[EntryPoint, Any], Any], order: tuple[str, ...] = ()) -> Loaded:
    """Every entry point of ``group``, loaded and passed through ``accept(entry_point, obj)``,
    which returns the plug-in or raises NotAPlugin. Listed ``order`` first (the built-ins), then
    the others by name."""
    found, broken = {}, {}
    for ep in entry_points(group=group):
        if ep.name in found:
            continue  # the same distribution seen twice on sys.path: the first wins, as Python imports it
        try:
            found[ep.name] = accept(ep, ep.load())
        except NotAPlugin as err:
            broken[ep.name] = str(err)
        except Exception as err:  # noqa: BLE001  -- a broken plug-in is reported by name, never hides the others
            broken[ep.name] = f"{ep.value}: {type(err).__name__}: {err}"
    rank = {name: i for i, name in enumerate(order)}
    listed = sorted(found, key=lambda name: (rank.get(name, len(rank)), name))
    return Loaded({name: found[name] for name in listed}, broken)
