"""The pictures of a sample, for the report's sample browser: re-made from the task's own documents.

A run keeps no pixels (a record holds the image's hash, its framing and the box). The browser
reads the task's documents the way lmms-eval does (the task YAML found through lmms-eval's
TaskManager with the project's tasks/ and the run's include path; the task's ``eval_docs`` and
its ``doc_to_visual``) and re-applies the edge (``collab_eval.edge``) with the record's framing,
sizes and codec: the global image and the crop are then the very payloads the server decoded.
The global image is checked against the record's ``image_key`` (the hash of what the server
received), so a changed document or edge shows as "not verified" instead of a wrong picture.

Costs: nothing on disk in the run; at report time, the dataset's load once per task and, per
sample shown with pictures, one decode of the original and one encode per image sent (the
browser shows pictures for a bounded number of samples per category, so this does not grow
with the task).
"""
from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from collab_eval.edge import Codec, sanitize, send, transmit
from collab_eval.records import SampleRecord
from collab_eval.run_settings import family_arg_defaults

ORIGINAL_SIDE = 480  # the original is shown downscaled to at most this side (JPEG); the box in original pixels


@dataclass
class Picture:
    """An image as a data URI, and the size it stands for (original pixels for the original)."""
    uri: str
    width: int
    height: int


@dataclass
class SampleImages:
    """What the browser shows of one sample, or why it cannot."""
    original: Picture | None = None  # the RoI's image (else the first), downscaled for display
    global_image: Picture | None = None  # as the server received it
    crops: list[Picture] = field(default_factory=list)  # as sent
    map: Picture | None = None  # the locator's map as a heat image, to stretch over ``map_region``
    map_region: list[float] | None = None
    verified: bool | None = None  # the re-made global image hashes to the record's image_key
    problem: str | None = None


def data_uri(image: Image.Image, fmt: str = "PNG", **options) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def heat(grid: list[list[float]]) -> Image.Image:
    """The map, min to max, as an RGBA image of its own grid size: matplotlib's ``jet`` (as ViCrop's
    figures), low cells more transparent than high ones."""
    from matplotlib import colormaps

    a = np.nan_to_num(np.asarray(grid, dtype=float))
    lo, hi = float(a.min()), float(a.max())
    t = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    rgba = colormaps["jet"](t)
    rgba[..., 3] = 0.35 + 0.5 * t
    return Image.fromarray((255 * rgba).round().astype(np.uint8), mode="RGBA")


def remake(record: SampleRecord, originals: list[Image.Image], global_view=None) -> SampleImages:
    """The sample's pictures from its document's images (sanitized, as the edge reads them).
    ``global_view``: the run's family's own ``global_view`` (the edge sends what the processor
    makes of the original); without it the global image is not shown."""
    from collab_eval.pipeline import image_key

    shown = record.roi_image or 0
    if shown >= len(originals):
        return SampleImages(problem=f"the document has {len(originals)} image(s); the record names image {shown}")
    original = originals[shown]
    if record.image_sizes and list(original.size) != record.image_sizes[shown]:
        w, h = record.image_sizes[shown]
        return SampleImages(problem=f"the document's image is {original.size[0]}x{original.size[1]}, the record's "
                                    f"{w}x{h}: not the same image")
    out = SampleImages()
    small = original.copy()
    small.thumbnail((ORIGINAL_SIDE, ORIGINAL_SIDE))
    out.original = Picture(data_uri(small, "JPEG", quality=80), *original.size)
    codec = Codec.parse(record.codec)
    if global_view is not None:
        received = send(global_view(original), codec).image
        out.global_image = Picture(data_uri(received), *received.size)
        out.verified = record.image_key is None or image_key(received) == record.image_key
    for region, size in zip(record.local_regions or [], record.local_sizes or []):
        crop = transmit(original, tuple(region), tuple(size), codec).image
        out.crops.append(Picture(data_uri(crop), *crop.size))
    if record.roi_map and record.roi_map_region:
        out.map, out.map_region = Picture(data_uri(heat(record.roi_map)), len(record.roi_map[0]),
                                          len(record.roi_map)), record.roi_map_region
    return out


class TaskDocuments:
    """One task's documents as lmms-eval gives them to a model (``eval_docs``, ``doc_to_visual``)."""

    def __init__(self, task: str, include_paths: tuple[str, ...]):
        self.task = task
        self._task = load_task(task, include_paths)
        self.docs = self._task.eval_docs

    def originals(self, doc_id: int) -> list[Image.Image]:
        from collab_eval.pipeline import images_in

        return [sanitize(image) for image in images_in(self._task.doc_to_visual(self.docs[doc_id]))]


@functools.lru_cache(maxsize=None)
def load_task(task: str, include_paths: tuple[str, ...]):
    """lmms-eval's task object, found as a run finds it (the project's tasks and include paths first)."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    for include_defaults in (False, True):
        manager = TaskManager(verbosity="WARNING", include_path=list(include_paths) or None,
                              include_defaults=include_defaults)
        if task in manager.all_tasks:
            found = get_task_dict([task], manager)
            return flat(found)[task]
    raise ValueError(f"task {task!r} is not an lmms-eval task here (include paths: {list(include_paths)})")


def flat(task_dict: dict) -> dict:
    """lmms-eval's task dict, groups unfolded: task name -> task object."""
    out = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(flat(value))
        else:
            out[getattr(key, "group_name", key) if not isinstance(key, str) else key] = value
    return out


def family_server(record: SampleRecord):
    """The run's family's server on the CPU, loaded from the record's checkpoint with the run's
    family args (its processor makes the global image as the run's edge did). The family is the
    model id a collab run id starts with (run_session.new_run_id)."""
    from collab_eval import families

    family = families.get(record.run_id.partition("-")[0])
    server_class = family.server_class()
    wanted = family_arg_defaults(server_class.family_args)
    args = {k: v for k, v in record.settings.items() if k in wanted}
    return server_class(record.model, name=family.model_id, device="cpu", **args)


class Pictures:
    """Each task's documents loaded once; a task whose documents cannot be loaded says why once.
    The global image as received is re-made by the run's own family (its checkpoint is loaded
    once per checkpoint and family args, on the CPU); where it cannot be, it is not shown."""

    def __init__(self, include_paths: tuple[str, ...], warn):
        self.include_paths, self.warn = include_paths, warn
        self.tasks: dict[str, TaskDocuments | str] = {}
        self.servers: dict[tuple, object] = {}

    def global_view(self, record: SampleRecord):
        key = (record.run_id.partition("-")[0], record.model, tuple(sorted(record.settings.items(), key=str)))
        if key not in self.servers:
            try:
                self.servers[key] = family_server(record).global_view
            except Exception as err:  # noqa: BLE001  -- no global image for this system; the browser says why
                self.servers[key] = None
                self.warn(f"{record.model}: sample browser without the global image: the run's family server "
                          f"cannot be loaded here: {type(err).__name__}: {err}")
        return self.servers[key]

    def of(self, record: SampleRecord) -> SampleImages:
        if record.task not in self.tasks:
            try:
                self.tasks[record.task] = TaskDocuments(record.task, self.include_paths)
            except Exception as err:  # noqa: BLE001  -- no pictures for this task; the browser says why
                self.tasks[record.task] = f"the task's documents cannot be loaded here: {type(err).__name__}: {err}"
                self.warn(f"{record.task}: sample browser without pictures: {self.tasks[record.task]}")
        docs = self.tasks[record.task]
        if isinstance(docs, str):
            return SampleImages(problem=docs)
        try:
            return remake(record, docs.originals(record.doc_id), self.global_view(record))
        except Exception as err:  # noqa: BLE001  -- one broken document: that sample without pictures
            return SampleImages(problem=f"{type(err).__name__}: {err}")
