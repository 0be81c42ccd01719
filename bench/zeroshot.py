#!/usr/bin/env python
"""CPU cost per frame of zero-shot image towers (CLIP ViT-B/16, SigLIP base) against BEiT-base.

Usage: ``.venv/bin/python bench/zeroshot.py --json bench/results/zeroshot-cpu.json``

A zero-shot checkpoint's text tower runs once at load; each batch runs only its image
tower and a product with the labels' embeddings (docs/zero-shot.md). This measures what a
batch costs per frame, with the modules labelcast runs, randomly initialised from the real
architectures (their hub configs written out below; nothing is downloaded; random weights
cost the same as trained ones):

- ``beit-base``: microsoft/beit-base-patch16-224's classifier (``bench.py``'s model), its
  position bias cached as labelcast runs it;
- ``clip-vit-b16``: openai/clip-vit-base-patch16's vision tower and projection, with a
  prompt head of ``--labels`` labels (``zeroshot.ZeroShotClassifier``);
- ``siglip-base``: google/siglip-base-patch16-224's vision tower (with its attention
  pooling head), with a prompt head likewise.

Side by side in one run: each round runs one batch of each model in turn, so that a busy
moment of a shared machine costs them alike; ``--frames`` frames per model in all, in
batches of ``--batch``, after one warm-up batch each. Also measured per frame: labelcast's
preprocessing of a 720p ``uint8`` frame to each model's input (hub preprocessing configs).
fp32, torch, ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # bench/bench.py: bench/ is no package

SCHEMA = "labelcast.zeroshot-bench/1"
FRAME_SIZE = (720, 1280)

# openai/clip-vit-base-patch16's vision_config (and projection_dim) as on the hub.
CLIP_B16_VISION: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 16,
    "image_size": 224,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}
# google/siglip-base-patch16-224's vision_config as on the hub.
SIGLIP_BASE_VISION: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 16,
    "image_size": 224,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
CLIP_PREPROCESSING: dict[str, Any] = {
    "image_processor_type": "CLIPImageProcessor",
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
SIGLIP_PREPROCESSING: dict[str, Any] = {
    "image_processor_type": "SiglipImageProcessor",
    "size": {"height": 224, "width": 224},
    "resample": 3,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
# Tiny towers of the same shapes' kinds, for --quick (a smoke test, no figure to publish).
_QUICK = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
_QUICK |= {"num_attention_heads": 2}


def _checked(config: Any, expected: dict[str, Any], name: str) -> Any:
    wrong = {k: (getattr(config, k), v) for k, v in expected.items() if getattr(config, k) != v}
    if wrong:
        raise SystemExit(f"{type(config).__name__} does not describe {name}: {wrong}")
    return config


def _head(size: int, labels: int, bias: float | None) -> Any:
    from labelcast.model.zeroshot import PromptHead

    generator = torch.Generator().manual_seed(0)
    text = torch.randn(labels, size, generator=generator)
    return PromptHead(text / text.norm(dim=-1, keepdim=True), 100.0, bias)


def beit_base(quick: bool) -> torch.nn.Module:
    """BEiT-base's classifier, as labelcast runs it (position bias cached)."""
    from transformers import BeitConfig, BeitForImageClassification

    from labelcast.model.position_bias import cache_position_bias

    if quick:
        config = BeitConfig(**{**bench.BEIT_BASE_OVERRIDES, **_QUICK})
    else:
        config = _checked(BeitConfig(**bench.BEIT_BASE_OVERRIDES), bench.BEIT_BASE, "BEiT-base")
    model = BeitForImageClassification(config).eval()
    cache_position_bias(model)
    return model


def clip_b16(quick: bool, labels: int) -> torch.nn.Module:
    """CLIP ViT-B/16's image tower and a prompt head, as labelcast runs them."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from labelcast.model.zeroshot import ImageTower, ZeroShotClassifier

    settings = {**CLIP_B16_VISION, **(_QUICK | {"projection_dim": 16} if quick else {})}
    config = CLIPVisionConfig(**settings)
    projection = torch.nn.Linear(config.hidden_size, config.projection_dim, bias=False)
    tower = ImageTower(CLIPVisionModel(config), projection)
    return ZeroShotClassifier(tower, _head(config.projection_dim, labels, None)).eval()


def siglip_base(quick: bool, labels: int) -> torch.nn.Module:
    """SigLIP base's image tower (attention pooling head included) and a prompt head."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from labelcast.model.zeroshot import ImageTower, ZeroShotClassifier

    settings = {**SIGLIP_BASE_VISION, **(_QUICK if quick else {})}
    config = SiglipVisionConfig(**settings)
    tower = ImageTower(SiglipVisionModel(config), None)
    return ZeroShotClassifier(tower, _head(config.hidden_size, labels, -10.0)).eval()


def parameters(model: torch.nn.Module) -> int:
    """Parameters of what runs per frame (a zero-shot model's image tower and head)."""
    return sum(p.numel() for p in model.parameters())


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max, rounded."""
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def measure(models: dict[str, torch.nn.Module], frames: int, batch: int) -> dict[str, list[float]]:
    """Milliseconds per frame of each batch, models taking turns batch by batch."""
    size = 224  # every model here takes 224x224
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    per_frame: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(pixel_values=pixels)  # warm-up
        for _ in range(math.ceil(frames / batch)):
            for name, model in models.items():
                began = time.perf_counter()
                model(pixel_values=pixels).logits.float().softmax(dim=-1)
                per_frame[name].append((time.perf_counter() - began) * 1000.0 / batch)
    return per_frame


def preprocess_ms(configs: dict[str, dict[str, Any]], repeat: int) -> dict[str, dict[str, float]]:
    """labelcast's preprocessing of one 720p uint8 frame, per model's hub config."""
    from media import photo

    from labelcast.model.preprocess import Preprocessor

    frame = photo("rocket", FRAME_SIZE)
    result = {}
    for name, config in configs.items():
        preprocessor = Preprocessor.from_config(config, name)
        preprocessor([frame], torch.device("cpu"), torch.float32)  # warm-up
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            preprocessor([frame], torch.device("cpu"), torch.float32)
            times.append((time.perf_counter() - began) * 1000.0)
        result[name] = spread(times)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print the figures; write them as JSON with ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--name", default="zeroshot-cpu", help="the run's name in the JSON")
    parser.add_argument("--frames", type=int, default=20, help="frames per model (default 20)")
    parser.add_argument("--batch", type=int, default=4, help="frames per batch (default 4)")
    parser.add_argument("--labels", type=int, default=8, help="labels of the prompt heads")
    parser.add_argument("--quick", action="store_true", help="tiny towers: a smoke test")
    args = parser.parse_args(argv)
    started = os.getloadavg()
    torch.manual_seed(0)
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "beit-base": lambda: beit_base(args.quick),
        "clip-vit-b16": lambda: clip_b16(args.quick, args.labels),
        "siglip-base": lambda: siglip_base(args.quick, args.labels),
    }
    models = {name: build() for name, build in builders.items()}
    per_frame = measure(models, args.frames, args.batch)
    preprocessing = preprocess_ms(
        {
            "beit-base": bench.HUB_PREPROCESSOR_CONFIG,
            "clip-vit-b16": CLIP_PREPROCESSING,
            "siglip-base": SIGLIP_PREPROCESSING,
        },
        repeat=args.frames,
    )
    beit = statistics.median(per_frame["beit-base"])
    results = {
        "schema": SCHEMA,
        "name": args.name,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/zeroshot.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": bench.machine_info(),
        "note": (
            "the models took turns batch by batch, so a busy moment of the machine cost them alike"
        ),
        "settings": {
            "frames": args.frames,
            "batch": args.batch,
            "labels": args.labels,
            "precision": "fp32",
            "threads": torch.get_num_threads(),
            "quick": args.quick,
        },
        "load_average": {"start": list(started), "end": list(os.getloadavg())},
        "models": {
            name: {
                "parameters": parameters(models[name]),
                "forward_ms_per_frame": spread(per_frame[name]),
                "batches": len(per_frame[name]),
                "relative_to_beit_base": round(statistics.median(per_frame[name]) / beit, 3),
                "preprocess_720p_ms": preprocessing[name],
            }
            for name in models
        },
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
