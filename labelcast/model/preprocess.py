"""Image preprocessing in torch, on the model's device, from RGB ``uint8`` frames.

It follows the checkpoint's ``preprocessor_config.json`` (resize, resample mode, rescale,
center crop, mean/std) the way transformers' PIL image processors do, but batched: frames
of one size go through every step together.

Resizing reproduces Pillow's ``Image.resize`` of a ``uint8`` image, which is what those
processors call:

- bilinear and bicubic are separable: one pass per axis with Pillow's kernels, widened by
  the downscale factor to antialias (``F.interpolate(..., antialias=True)`` uses the same
  kernels; its bicubic has a = -0.5 like Pillow's). Pillow stores each pass as ``uint8``
  (rounded half up, clipped), and so do we. Pillow (13) runs the horizontal pass first
  unless the height shrinks by more than twice as many pixels as the width
  (python-pillow/Pillow#9549); we follow the same rule.
- nearest takes the source pixel at ``floor(0.5 * s + i * s)``, ``s = in / out``,
  accumulated in float64 as Pillow does.

What remains are last-bit differences of float32 against Pillow's fixed point: a few
pixels one ``uint8`` level apart (``tests/test_preprocess.py`` measures them).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from labelcast.errors import ModelError

# PIL's resample codes as stored in preprocessor_config.json: the ones we reproduce, and
# names for the others (for error messages).
_RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_PIL_FILTERS = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}

# transformers image processors whose integer ``size`` means the shortest edge (their
# ``default_to_square`` is False); for the others an integer ``size`` is a square.
_SHORTEST_EDGE_FAMILIES = frozenset(
    {"Bit", "CLIP", "Chameleon", "ChineseCLIP", "ConvNext", "Llava", "MobileNetV1", "MobileNetV2"}
)
# Image processors with steps of their own that this module does not reproduce.
_UNSUPPORTED_FAMILIES = {
    "EfficientNet": "its rescale offset",
    "Levit": "its resize rule (shortest edge * 256 / 224)",
    "MobileViT": "its RGB to BGR channel flip",
    "Perceiver": "its crop rule",
    "PoolFormer": "its crop_pct resize rule",
}


@dataclass(frozen=True)
class Preprocessor:
    """Resize, crop and normalise batches of ``uint8`` frames into model input tensors."""

    resize_to: tuple[int, int] | None  # (height, width); None with shortest_edge
    shortest_edge: int | None
    crops: tuple[tuple[int, int], ...]  # center crops (height, width), in order
    resample: int  # PIL code, a key of _RESAMPLE_MODES
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str) -> Preprocessor:
        """Build from a ``preprocessor_config.json`` dict; ``source`` names it in errors."""
        family = _family(config)
        if family in _UNSUPPORTED_FAMILIES:
            raise ModelError(
                f"{source}: {family} image preprocessing is not supported "
                f"({_UNSUPPORTED_FAMILIES[family]})"
            )
        try:
            resize_to, shortest_edge = None, None
            crops: list[tuple[int, int]] = []
            if config.get("do_resize", True):
                resize_to, shortest_edge = _size(
                    config["size"], square=family not in _SHORTEST_EDGE_FAMILIES
                )
                if family == "ConvNext":
                    # transformers' ConvNextImageProcessor: below 384, resize the shortest
                    # edge to size / crop_pct and crop a size x size square; else warp.
                    if shortest_edge is None:
                        raise ValueError(f"ConvNeXt size {config['size']!r} has no shortest_edge")
                    if shortest_edge < 384:
                        crops.append((shortest_edge, shortest_edge))
                        shortest_edge = int(shortest_edge / float(config.get("crop_pct", 0.875)))
                    else:
                        resize_to, shortest_edge = (shortest_edge, shortest_edge), None
            if config.get("do_center_crop", False):
                crops.append(_crop_size(config["crop_size"]))
            resample = int(config.get("resample", 2))
            if resample not in _RESAMPLE_MODES:
                name = _PIL_FILTERS.get(resample, "unknown")
                raise ModelError(
                    f"{source}: resample {resample} ({name}) is not supported; "
                    f"supported: 0 (NEAREST), 2 (BILINEAR), 3 (BICUBIC)"
                )
            rescale = (
                float(config.get("rescale_factor", 1 / 255))
                if config.get("do_rescale", True)
                else None
            )
            mean = std = None
            if config.get("do_normalize", True):
                mean = _triple(config["image_mean"])
                std = _triple(config["image_std"])
        except KeyError as exc:
            raise ModelError(f"{source}: {exc.args[0]!r} is missing") from exc
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: unusable preprocessing settings ({exc})") from exc
        return cls(resize_to, shortest_edge, tuple(crops), resample, rescale, mean, std)

    def __call__(
        self,
        images: Sequence[npt.NDArray[np.uint8]],
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Return a (N, 3, H, W) tensor of ``dtype`` on ``device`` for N RGB ``uint8`` images.

        The same as ``normalise(pixels(images, device), dtype)``.
        """
        return self.normalise(self.pixels(images, device), dtype)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """The (height, width) every frame comes out at, or None if it varies with the frame.

        It varies when the shortest edge is resized and nothing is cropped afterwards.
        """
        if self.crops:
            return self.crops[-1]
        return self.resize_to

    def pixels(self, images: Sequence[npt.NDArray[np.uint8]], device: torch.device) -> torch.Tensor:
        """Resize and crop N RGB ``uint8`` images: a (N, 3, H, W) ``uint8`` tensor on ``device``.

        The geometric half of preprocessing (what a Triton gateway sends: the fewest bytes);
        :meth:`normalise` is the other half. Resized pixels are whole ``uint8`` levels on
        every path (Pillow rounds each pass), so nothing is lost between the two halves.
        """
        groups = [
            (positions, torch.from_numpy(np.stack([images[p] for p in positions])).to(device))
            for positions in shape_groups(images)
        ]
        return self.resize_groups(groups)

    def resize_groups(self, groups: Sequence[tuple[Sequence[int], torch.Tensor]]) -> torch.Tensor:
        """Resize and crop groups of same-size frames into one (N, 3, H, W) ``uint8`` batch.

        Each group is the frames' positions in the batch (as :func:`shape_groups` gives
        them) and their (n, H, W, 3) ``uint8`` pixels, already on the device; the result
        is on that device, its frames in position order.
        """
        parts = [self._geometry(pixels).to(torch.uint8) for _, pixels in groups]
        order = [position for positions, _ in groups for position in positions]
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        if order != sorted(order):
            batch = batch[torch.as_tensor(np.argsort(order), device=batch.device)]
        return batch

    def normalise(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rescale and normalise (N, 3, H, W) ``uint8`` pixels into model input of ``dtype``.

        Runs on the tensor's device; the arithmetic is fp32 whatever ``dtype`` is.
        """
        x = pixels.float()
        if self.rescale_factor is not None:
            x = x * self.rescale_factor
        if self.mean is not None and self.std is not None:
            mean, std = _channel_constants(self.mean, self.std, x.device)
            x = (x - mean) / std
        return x.to(dtype)

    def _geometry(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resize and crop (N, H, W, 3) ``uint8`` pixels to (N, 3, H', W') whole levels."""
        nchw = pixels.permute(0, 3, 1, 2)
        height, width = nchw.shape[2], nchw.shape[3]
        target = self._target_size(height, width)
        if target is None or target == (height, width):
            x = nchw
        elif nchw.device.type == "cpu" and self.resample in (2, 3):
            # torch's CPU kernel resizes uint8 (channels-last, as these frames are) directly,
            # rounding each pass to uint8 as Pillow does, ~20x faster than converting whole
            # frames to float first.
            x = nchw
            for step in _pillow_passes((height, width), target):
                x = F.interpolate(
                    x,
                    size=step,
                    mode=_RESAMPLE_MODES[self.resample],
                    antialias=True,
                    align_corners=False,
                )
        else:
            x = _resize(nchw.float(), target, self.resample)
        for crop in self.crops:
            x = _center_crop(x, crop)
        return x

    def _target_size(self, height: int, width: int) -> tuple[int, int] | None:
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is not None:
            # As transformers' get_resize_output_image_size (truncating, not rounding).
            short, long = (height, width) if height <= width else (width, height)
            scaled_long = int(self.shortest_edge * long / short)
            if height <= width:
                return (self.shortest_edge, scaled_long)
            return (scaled_long, self.shortest_edge)
        return None


def shape_groups(images: Sequence[npt.NDArray[np.uint8]]) -> list[list[int]]:
    """Positions of the images of each shape, in order of first appearance.

    Frames of one size are resized together; a batch mixing cameras has a group each.
    """
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(position)
    return list(by_shape.values())


@functools.lru_cache(maxsize=16)
def _channel_constants(
    mean: tuple[float, float, float], std: tuple[float, float, float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) fp32 tensors on ``device``, made once.

    Made per call, each would be a blocking host-to-device copy on CUDA, stalling the
    host while it stages a batch (see staging.py).
    """
    return (
        torch.tensor(mean, device=device).view(1, 3, 1, 1),
        torch.tensor(std, device=device).view(1, 3, 1, 1),
    )


def _resize(x: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """Resize float (N, C, H, W) pixel values in [0, 255] as Pillow resizes ``uint8`` images."""
    height, width = x.shape[2], x.shape[3]
    new_height, new_width = size
    if resample == 0:
        rows = _nearest_sources(height, new_height)
        columns = _nearest_sources(width, new_width)
        return x[:, :, torch.from_numpy(rows).to(x.device)][
            :, :, :, torch.from_numpy(columns).to(x.device)
        ]
    mode = _RESAMPLE_MODES[resample]
    for step in _pillow_passes((height, width), size):
        x = F.interpolate(x, size=step, mode=mode, antialias=True, align_corners=False)
        x = x.add_(0.5).floor_().clamp_(0, 255)
    return x


def _pillow_passes(size: tuple[int, int], target: tuple[int, int]) -> list[tuple[int, int]]:
    """Return the one-axis resize steps Pillow (13) takes from ``size`` to ``target``."""
    height, width = size
    new_height, new_width = target
    if new_height < height and height - new_height > 2 * (width - new_width):
        steps = [(new_height, width), (new_height, new_width)]
    else:
        steps = [(height, new_width), (new_height, new_width)]
    return [step for prev, step in zip([size, *steps], steps, strict=False) if step != prev]


@functools.lru_cache(maxsize=64)
def _nearest_sources(size_in: int, size_out: int) -> npt.NDArray[np.int64]:
    """Source index of each output pixel, as Pillow's nearest-neighbour scaling picks it."""
    scale = size_in / size_out
    steps = np.full(size_out, scale)
    steps[0] = scale * 0.5
    sources: npt.NDArray[np.int64] = np.minimum(np.floor(np.cumsum(steps)), size_in - 1).astype(
        np.int64
    )
    return sources


def _family(config: Mapping[str, Any]) -> str:
    """``ConvNext`` for ``ConvNextImageProcessor(Fast)`` or ``ConvNextFeatureExtractor``."""
    name = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    for suffix in ("Fast", "Pil", "ImageProcessor", "FeatureExtractor"):
        name = name.removesuffix(suffix)
    return name


def _size(value: Any, *, square: bool) -> tuple[tuple[int, int] | None, int | None]:
    """``((height, width), None)`` or ``(None, shortest_edge)`` from a config ``size``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ((value, value), None) if square else (None, value)
    if isinstance(value, list) and len(value) == 2:
        return (int(value[0]), int(value[1])), None
    if isinstance(value, dict):
        keys = {key for key, item in value.items() if item is not None}
        if keys == {"height", "width"}:
            return (int(value["height"]), int(value["width"])), None
        if keys == {"shortest_edge"}:
            return None, int(value["shortest_edge"])
    raise ValueError(f"size {value!r} is not height/width, shortest_edge or an integer")


def _crop_size(value: Any) -> tuple[int, int]:
    """(height, width) of a config ``crop_size``; an integer or a shortest_edge is a square."""
    crop_to, crop_edge = _size(value, square=True)
    if crop_to is not None:
        return crop_to
    assert crop_edge is not None
    return (crop_edge, crop_edge)


def _triple(value: Any) -> tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, list) else [value] * 3)]
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {value!r}")
    return (values[0], values[1], values[2])


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Center crop as transformers does, padding with zeros (more at the top/left) if small."""
    height, width = x.shape[2], x.shape[3]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        x = F.pad(x, (pad_w - pad_w // 2, pad_w // 2, pad_h - pad_h // 2, pad_h // 2))
        height, width = x.shape[2], x.shape[3]
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return x[:, :, top : top + crop_h, left : left + crop_w]
