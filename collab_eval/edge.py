"""The edge device: what it does to the original image and what it costs to send.

Every image that crosses the link is really encoded and decoded, so the bytes
counted are the payload's length and a lossy codec changes what the server sees.
"""
from __future__ import annotations

import io
import re
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in original pixels

# Refuse images that would take gigabytes once decoded; PIL's own default (~179 Mpx)
# only warns below twice its limit.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 178_956_970
CODECS = ("png", "jpeg:Q", "webp:Q")


class BadImage(ValueError):
    """The sample's image cannot be used; the message says why."""


@dataclass(frozen=True)
class Codec:
    name: str  # png | jpeg | webp
    quality: int | None = None

    @classmethod
    def parse(cls, spec: str) -> "Codec":
        name, _, quality = str(spec).lower().partition(":")
        if name == "png" and not quality:
            return cls("png")
        if name in ("jpeg", "webp") and quality.isdigit() and 1 <= int(quality) <= 100:
            return cls(name, int(quality))
        raise ValueError(f"codec must be one of {CODECS} with Q in 1..100, got {spec!r}")

    def __str__(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"

    def encode(self, image: Image.Image) -> bytes:
        buf = io.BytesIO()
        if self.name == "png":
            image.save(buf, format="PNG")
        else:
            image.save(buf, format=self.name.upper(), quality=self.quality)
        return buf.getvalue()

    @staticmethod
    def decode(payload: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(payload))
        image.load()
        return image.convert("RGB")


@dataclass(frozen=True)
class Transmission:
    """An image as it crossed the link: what the server decodes, and what it cost."""
    image: Image.Image  # decoded payload: what the model sees
    nbytes: int


class _Section:
    """A process-wide setting held while any thread is inside: the first thread in applies it,
    the last one out undoes it (the edge's threads decode concurrently; a plain save-and-restore
    per thread would let one thread's exit undo the setting under another's decode)."""

    def __init__(self, apply, undo):
        self._apply, self._undo = apply, undo
        self._lock, self._inside, self._saved = threading.Lock(), 0, None

    @contextmanager
    def __call__(self):
        with self._lock:
            if self._inside == 0:
                self._saved = self._apply()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    self._undo(self._saved)


def _strict():
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return previous


def _lenient_again(previous) -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous


# lmms-eval turns on PIL's LOAD_TRUNCATED_IMAGES at import, which silently fills a truncated
# image with grey; within this block (on any thread) a truncated image is an error again.
strict_decoding = _Section(_strict, _lenient_again)


def _quiet():
    """PIL's own warnings (EXIF, palette transparency: all raised from PIL's modules) off; only
    this one filter is added and later removed, so filters others set meanwhile stay."""
    warnings.filterwarnings("ignore", module=r"PIL\.")
    return warnings.filters[0]


def _loud_again(entry) -> None:
    if entry in warnings.filters:
        warnings.filters.remove(entry)
        mutated = getattr(warnings, "_filters_mutated", None)  # as filterwarnings does: warnings
        if mutated is not None:  # ignored meanwhile are not marked "already shown" for later
            mutated()


quiet_pil = _Section(_quiet, _loud_again)
# Loading a lazily opened image is not thread-safe; the same image object may reach two samples
# (a task that hands out one cached image), so its loading is serialised (striped by identity).
_LOAD_LOCKS = [threading.Lock() for _ in range(16)]


def sanitize(image) -> Image.Image:
    """Turn whatever the dataset gave (a PIL image, encoded bytes, a datasets
    ``{"bytes", "path"}`` dict or a file path) into an upright 8-bit RGB image,
    or raise BadImage saying why not, in words that are the same from run to run."""
    image = _open(image)
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImage(f"image has zero size ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise BadImage(f"image of {width}x{height} pixels exceeds the {MAX_PIXELS} pixel limit (decompression bomb?)")
    try:
        # Decoding happens here, strictly whoever calls: lmms-eval's import turns on PIL's
        # LOAD_TRUNCATED_IMAGES for the whole process.
        with quiet_pil(), strict_decoding():
            with _LOAD_LOCKS[id(image) % len(_LOAD_LOCKS)]:
                image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # truncated, corrupt, too large
        raise BadImage(f"image cannot be decoded: {_plain(err)}") from err


def _open(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        image = image.get("bytes") if image.get("bytes") is not None else (image.get("path") or b"")
    if isinstance(image, (bytes, bytearray, str)):
        if not image:
            raise BadImage("image is empty (0 bytes)")
        source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
        try:  # opening reads the header only: the size check comes before any decoding
            return Image.open(source)
        except UnidentifiedImageError:
            what = (f"{len(image)} bytes starting {bytes(image[:16])!r}" if isinstance(image, (bytes, bytearray))
                    else image)
            raise BadImage(f"not an image: no image format recognised in {what}") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise BadImage(f"image cannot be opened: {_plain(err)}") from err
    raise BadImage(f"expected an image (PIL image, bytes, or path), got {type(image).__name__}")


def _plain(err: Exception) -> str:
    """PIL's message without object addresses (``<_io.BytesIO object at 0x7f...>``), which
    differ between identical runs."""
    return re.sub(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", r"<\1>", str(err))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grey: stretch the used range onto 8 bits instead of clipping to white.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels go onto white, as a viewer would show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def transmit(original: Image.Image, region: Box, size: tuple[int, int], codec: Codec) -> Transmission:
    """Resample ``region`` of the original to ``size`` (w, h), encode, count, decode (a local
    image or tile: any box of the original, to sub-pixel precision)."""
    return send(resample(original, region, size), codec)


def resample(original: Image.Image, region: Box, size: tuple[int, int]) -> Image.Image:
    """``region`` of the original (sub-pixel box) resampled to ``size`` (w, h), bicubic: what the
    edge makes of a local image or tile, and of a global one where the family sends its framing
    rather than its processor's output (LLaVA-NeXT's pinpoint fit). The whole image at its own
    size is the original, unchanged."""
    return original.resize(size, Image.Resampling.BICUBIC, box=region)


def send(view: Image.Image, codec: Codec) -> Transmission:
    """Encode ``view`` as it is, count, decode (the global image: the family's processor made
    it of the whole original, Server.global_view)."""
    payload = codec.encode(view)
    return Transmission(codec.decode(payload), len(payload))


def encoded_size(image: Image.Image, codec: Codec) -> int:
    return len(codec.encode(image))


def encode_request(box: Box) -> bytes:
    """The server's crop request on the downlink: the box as four unsigned 32-bit ints."""
    return struct.pack("<4I", *(int(round(v)) for v in box))
