"""Image preprocessing in torch, on the model's device, from RGB ``uint8`` frames.

It follows the checkpoint's ``preprocessor_config.json`` (resize, resample mode,
rescale, center crop, mean/std) the way transformers' PIL image processors do, but
batched: frames of one size are resized in a single ``interpolate`` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from labelcast.errors import ModelError

# PIL's resample codes, as stored in preprocessor_config.json, and the torch mode that
# reproduces each (antialiased like PIL when downscaling).
_RESAMPLE_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class Preprocessor:
    """Resize, crop and normalise batches of ``uint8`` frames into model input tensors."""

    resize_to: tuple[int, int] | None  # (height, width); None with shortest_edge
    shortest_edge: int | None
    crop_to: tuple[int, int] | None
    mode: str
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str) -> Preprocessor:
        """Build from a ``preprocessor_config.json`` dict; ``source`` names it in errors."""
        try:
            resize_to, shortest_edge = None, None
            if config.get("do_resize", True):
                resize_to, shortest_edge = _size(config["size"])
            crop_to = None
            if config.get("do_center_crop", False):
                crop_to, crop_edge = _size(config["crop_size"])
                if crop_to is None:
                    assert crop_edge is not None
                    crop_to = (crop_edge, crop_edge)
            resample = int(config.get("resample", 2))
            if resample not in _RESAMPLE_MODES:
                raise ModelError(
                    f"{source}: resample {resample} is not supported "
                    f"(supported: {sorted(_RESAMPLE_MODES)}: nearest, bilinear, bicubic)"
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
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: unusable preprocessing settings ({exc!r})") from exc
        return cls(resize_to, shortest_edge, crop_to, _RESAMPLE_MODES[resample], rescale, mean, std)

    def __call__(
        self,
        images: Sequence[npt.NDArray[np.uint8]],
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Return a (N, 3, H, W) tensor of ``dtype`` on ``device`` for N RGB ``uint8`` images."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for position, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(position)
        parts: list[torch.Tensor] = []
        order: list[int] = []
        for positions in by_shape.values():
            stacked = np.stack([images[p] for p in positions])
            pixels = torch.from_numpy(stacked).to(device, non_blocking=True)
            parts.append(self._transform(pixels))
            order.extend(positions)
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        if order != sorted(order):
            batch = batch[torch.as_tensor(np.argsort(order), device=device)]
        return batch.to(dtype)

    def _transform(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        target = self._target_size(x.shape[2], x.shape[3])
        if target is not None and target != (x.shape[2], x.shape[3]):
            antialias = self.mode != "nearest-exact"
            x = F.interpolate(
                x,
                size=target,
                mode=self.mode,
                antialias=antialias,
                **({} if self.mode == "nearest-exact" else {"align_corners": False}),
            )
            # PIL resizes uint8 images to uint8; rounding here keeps us within a level of it.
            x = x.round_().clamp_(0, 255)
        if self.crop_to is not None:
            x = _center_crop(x, self.crop_to)
        if self.rescale_factor is not None:
            x = x * self.rescale_factor
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    def _target_size(self, height: int, width: int) -> tuple[int, int] | None:
        if self.resize_to is not None:
            return self.resize_to
        if self.shortest_edge is not None:
            short, long = (height, width) if height <= width else (width, height)
            scaled_long = int(self.shortest_edge * long / short)
            if height <= width:
                return (self.shortest_edge, scaled_long)
            return (scaled_long, self.shortest_edge)
        return None


def _size(value: Any) -> tuple[tuple[int, int] | None, int | None]:
    if isinstance(value, int):
        return (value, value), None
    if "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"])), None
    if "shortest_edge" in value:
        return None, int(value["shortest_edge"])
    raise ValueError(f"size {value!r} is not height/width, shortest_edge or an integer")


def _triple(value: Any) -> tuple[float, float, float]:
    values = [float(v) for v in (value if isinstance(value, list) else [value] * 3)]
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {value!r}")
    return (values[0], values[1], values[2])


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = x.shape[2], x.shape[3]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = x.shape[2], x.shape[3]
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return x[:, :, top : top + crop_h, left : left + crop_w]
