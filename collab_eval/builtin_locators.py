"""The built-in locators: ViCrop's three ("MLLMs know where to look", saccharomycetes/mllms_know)
and the centre window, the no-knowledge baseline. Registered in pyproject.toml under the
entry-point group ``collab_eval.locators``, as a user's plug-in would be (docs/locators.md)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.ndimage import median_filter

from collab_eval.locators import Located, LocateRequest, MapLocator, Mapped
from collab_eval.roi import relative_attention, square_box
from collab_eval.server_contract import GENERIC_PROMPT, image_key


class RelativeAttention(MapLocator):
    """rel_att: the question's attention (stage 1's, free) divided by the generic prompt's on
    the same image (cached per image and task: the ``generic`` FLOPs part). On a tile
    (highres) both maps are one map-only pass each, counted in ``locate``."""

    def image_map(self, ask: LocateRequest, image: Image.Image, question_map: np.ndarray | None) -> Mapped:
        if question_map is None:
            question_map, asked = ask.server.attention(image, ask.question)
            generic, general = ask.server.attention(image, GENERIC_PROMPT)
            return Mapped(relative_attention(question_map, generic),
                          {"locate": sum(asked.values()) + sum(general.values())})
        # The stage-1 prefix holds the first image: the generic pass reuses it when that is the one looked at.
        generic, flops, cached = ask.caches.generic_map(ask.server, image, ask.scope, image_key(image),
                                                        prefix=ask.stage1.prefix)
        return Mapped(relative_attention(question_map, generic), {"generic": sum(flops.values())}, cached)


class GradientAttention(MapLocator):
    """grad_att: the attention at the map layer times the ReLU of its gradient (of the log of
    the top next-token probability), head-averaged; InstructBLIP weights its Q-Former
    cross-attention the same way. One forward and one backward; no generic prompt."""

    def image_map(self, ask: LocateRequest, image: Image.Image, question_map: np.ndarray | None) -> Mapped:
        grid, flops = ask.server.gradient_attention(image, ask.question)
        return Mapped(grid, {"locate": flops})


class PureGradient(MapLocator):
    """pure_grad: the pixels' gradient (same target), L2 norm over channels, divided by the
    generic prompt's, kept where the image's high-pass detail exceeds its median, averaged
    over each patch of the map's grid. Two forwards, two backwards."""

    def image_map(self, ask: LocateRequest, image: Image.Image, question_map: np.ndarray | None) -> Mapped:
        (asked, shape), flops_asked = ask.server.pixel_gradient(image, ask.question)
        (general, _), flops_general = ask.server.pixel_gradient(image, GENERIC_PROMPT)
        return Mapped(gradient_map(asked, general, image, shape), {"locate": flops_asked + flops_general})


class Center:
    """center: the window of the base size (the encoder's input side, in original pixels)
    at the centre of the first original. Knows nothing, costs nothing: the baseline any
    locator should beat."""
    kind = "box"

    def locate(self, ask: LocateRequest) -> Located:
        width, height = ask.sizes[0]
        return Located(0, box=square_box(width / 2, height / 2, ask.server.input_side, (width, height)))


def gradient_map(asked: np.ndarray, general: np.ndarray, image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
    """pure_grad's map from two pixel gradients (height, width, channels) of ``image`` as the
    encoder got it: norm ratio, masked by high-pass detail above its median, patch means."""
    norm, norm_general = np.linalg.norm(asked, axis=2), np.linalg.norm(general, axis=2)
    ratio = np.divide(norm, norm_general, out=np.zeros_like(norm), where=norm_general > 0)
    detail = high_pass(image, (norm.shape[1], norm.shape[0]))
    return block_mean(ratio * (detail > np.median(detail)), shape)


def high_pass(image: Image.Image, size: tuple[int, int], blur: int = 3, median: int = 7) -> np.ndarray:
    """ViCrop's high-pass filter at ``size`` (w, h): the image minus its 3x3 Gaussian blur,
    L2 norm over channels, then a 7x7 median filter."""
    pixels = TF.to_tensor(image.convert("RGB").resize(size, Image.BICUBIC)).unsqueeze(0)
    detail = (pixels - TF.gaussian_blur(pixels, kernel_size=[blur, blur]))[0]
    return median_filter(torch.linalg.vector_norm(detail, dim=0).numpy(), size=median)


def block_mean(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``values`` (height, width) averaged over a ``shape`` grid of equal blocks."""
    rows, cols = shape
    height, width = values.shape
    if height % rows or width % cols:
        raise ValueError(f"a {height}x{width} gradient does not split into a {rows}x{cols} grid")
    return values.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3))
