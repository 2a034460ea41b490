"""Locators: how the server finds the region to ask the edge for (step 4 of the pipeline).

A locator is a named plug-in, found through the Python entry-point group
``collab_eval.locators`` and chosen with ``--model_args locator=NAME``; the built-in ones
(``collab_eval.builtin_locators``: rel_att, grad_att, pure_grad, center) are registered in
collab-eval's own pyproject.toml exactly as a user's would be (docs/locators.md).

What a locator receives is a ``LocateRequest``: the model wrapper, the question, stage 1's
answer (its question attention maps and kept prefix), each global image as the server
received it and its framing in the original, the originals' sizes, and a way to ask the edge
for tiles of an original. What it returns is a ``Located``: a patch-grid map of one image,
which the pipeline turns into a box by ViCrop's window search, or a box directly; plus the
FLOPs it spent, by part (``locate``; rel_att's generic-prompt pass keeps its ``generic``).

A map locator subclasses ``MapLocator`` and writes only ``image_map``; ``highres=true`` then
applies ViCrop's tiled variant to it (``MapLocator.locate``).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from collab_eval import plugins
from collab_eval.edge import Box, Transmission
from collab_eval.server_contract import Answer, RunCaches, Server

GROUP = "collab_eval.locators"
TILE_LIMIT = 1024  # ViCrop's high-resolution variant: tiles under this many pixels a side


@dataclass(frozen=True)
class LocateRequest:
    """Everything a locator may use, for one sample whose gate asked for a crop."""
    server: "Server"  # the model wrapper (model_adapters.server.ServerModel): its passes and geometry
    question: str
    stage1: "Answer"  # stage 1's answer: ``attentions`` (the question's map of each image), ``prefix``
    images: list[Image.Image]  # each global image as the server received it (decoded)
    regions: list[Box]  # each global image's framing: the part of the original it shows, original pixels
    sizes: list[tuple[int, int]]  # each original's (width, height)
    scope: str  # the task: the scope of ``caches``
    caches: "RunCaches"  # maps that depend only on an image (the generic prompt's), per scope
    highres: bool = False  # the highres model arg
    # Ask the edge for these boxes of original ``image``, each framed and encoded as a global
    # image is; their bytes are counted by the locator into ``Located.bytes_tiles``.
    send_tiles: Callable[[int, list[Box]], list[Transmission]] | None = None

    def looked_at(self) -> int:
        """The image the question attends to most in stage 1 (its map is one softmax row over
        every image's tokens); the first image when stage 1 kept no map."""
        maps = self.stage1.attentions
        return int(np.argmax([float(np.nansum(grid)) for grid in maps])) if maps else 0


@dataclass
class Located:
    """A locator's answer: ``box`` (original pixels of image ``image``), or ``map``, a patch
    grid over ``region`` of that original (default: the image's global framing)."""
    image: int
    map: np.ndarray | None = None
    region: Box | None = None
    box: Box | None = None
    flops: dict[str, int] = field(default_factory=dict)  # by part: "locate" (rel_att: "generic")
    generic_cached: bool = False  # rel_att: the generic map came from the cache
    bytes_tiles: int = 0  # tiles the edge sent for the map (highres)


@runtime_checkable
class Locator(Protocol):
    """A registered locator. ``kind``: "map" (its maps can be tiled: highres) or "box"."""
    kind: str

    def locate(self, ask: LocateRequest) -> Located:
        ...


@dataclass
class Mapped:
    """One image's map, what computing it cost, and whether a cached map was reused."""
    map: np.ndarray
    flops: dict[str, int]
    generic_cached: bool = False


class MapLocator:
    """A locator that maps one image at a time: ``image_map`` gives the map of a received
    image (``question_map``: stage 1's map of it, when it is a global image; None for a tile)."""
    kind = "map"

    def image_map(self, ask: LocateRequest, image: Image.Image, question_map: np.ndarray | None) -> Mapped:
        raise NotImplementedError

    def locate(self, ask: LocateRequest) -> Located:
        look = ask.looked_at()
        tiles = tile_boxes(ask.sizes[look]) if ask.highres else []
        if len(tiles) <= 1:  # an original under the tile limit is its own one tile: the global image
            question_map = ask.stage1.attentions[look] if ask.stage1.attentions else None
            mapped = self.image_map(ask, ask.images[look], question_map)
            return Located(look, map=mapped.map, flops=mapped.flops, generic_cached=mapped.generic_cached)
        sent = ask.send_tiles(look, tiles)
        flops, maps = Counter(), []
        for tile in sent:
            mapped = self.image_map(ask, tile.image, None)
            maps.append(mapped.map)
            flops.update(mapped.flops)
        grid, region = stitch(maps, [ask.server.frame(tile)[0] for tile in tiles])
        return Located(look, map=grid, region=region, flops=dict(flops), bytes_tiles=sum(t.nbytes for t in sent))


def tile_boxes(size: tuple[int, int], limit: int = TILE_LIMIT) -> list[Box]:
    """ViCrop's high-resolution split, row by row: as many rows as the height needs under
    ``limit`` pixels, columns as the rows times the aspect ratio (rounded down, so tiles keep
    about the image's shape), but at least as many as the width needs under the limit
    (ViCrop's own rule can give tiles over the limit, or none for a tall image). An image
    within the limit is one tile."""
    width, height = size
    rows = max(1, math.ceil(height / limit))
    cols = max(1, math.ceil(width / limit), int(rows * width / height))
    xs = [width * i / cols for i in range(cols + 1)]
    ys = [height * j / rows for j in range(rows + 1)]
    return [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(rows) for i in range(cols)]


def stitch(maps: list[np.ndarray], regions: list[Box]) -> tuple[np.ndarray, Box]:
    """One map over the whole original from each tile's map over its region (the part of the
    tile its encoder saw): a grid of the finest tile's cell size, each cell the value of the
    tile cell under its centre (zero where no tile's encoder looked). Returns the grid and the
    region it covers (from the origin; it may reach past the image by under one cell)."""
    cells = [((r[2] - r[0]) / m.shape[1], (r[3] - r[1]) / m.shape[0]) for m, r in zip(maps, regions)]
    cell_w, cell_h = min(c[0] for c in cells), min(c[1] for c in cells)
    width, height = max(r[2] for r in regions), max(r[3] for r in regions)
    cols, rows = math.ceil(width / cell_w - 1e-9), math.ceil(height / cell_h - 1e-9)
    cx, cy = (np.arange(cols) + 0.5) * cell_w, (np.arange(rows) + 0.5) * cell_h
    grid = np.zeros((rows, cols), dtype=np.float64)
    for m, (x0, y0, x1, y1) in zip(maps, regions):
        inside_x, inside_y = (cx >= x0) & (cx < x1), (cy >= y0) & (cy < y1)
        col = np.clip(((cx[inside_x] - x0) / (x1 - x0) * m.shape[1]).astype(int), 0, m.shape[1] - 1)
        row = np.clip(((cy[inside_y] - y0) / (y1 - y0) * m.shape[0]).astype(int), 0, m.shape[0] - 1)
        grid[np.ix_(inside_y, inside_x)] = np.asarray(m, dtype=np.float64)[np.ix_(row, col)]
    return grid, (0.0, 0.0, cols * cell_w, rows * cell_h)


# ----- the registry ---------------------------------------------------------------------------
def installed() -> dict[str, object]:
    """Every locator entry point installed, by name (none loaded)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@lru_cache(maxsize=None)
def load(name: str) -> Locator:
    """The locator registered as ``name`` (a class is instantiated with no arguments; one
    instance per process). Unknown: ValueError listing the installed ones; a broken plug-in:
    ValueError saying why."""
    loaded = plugins.load_group(GROUP, accept)
    if name in loaded.found:
        return loaded.found[name]
    if name in loaded.broken:
        raise ValueError(f"locator {name!r} is installed but cannot be loaded: {loaded.broken[name]}")
    stale = ("; none is installed, not even the built-ins: the package's metadata predates them "
             "(reinstall collab-eval, e.g. pip install -e .)") if not loaded.found and not loaded.broken else ""
    broken = f"; installed but broken: {sorted(loaded.broken)}" if loaded.broken else ""
    raise ValueError(f"locator must be one of the installed locators {sorted(loaded.found)} "
                     f"(entry-point group {GROUP!r}){broken}, got {name!r}{stale}")


def accept(ep, obj) -> Locator:
    locator = obj() if isinstance(obj, type) else obj
    if not isinstance(locator, Locator) or getattr(locator, "kind", None) not in ("map", "box"):
        raise plugins.NotAPlugin(f"{ep.value} is not a locator: it needs kind 'map' or 'box' and "
                                 "locate(request) -> Located (docs/locators.md)")
    return locator
