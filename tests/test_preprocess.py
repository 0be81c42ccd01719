"""Preprocessing on the model's device agrees with transformers' PIL image processors.

Measured with transformers 5.24, Pillow 13.0 and torch 2.13 (CPU, fp32) on scikit-image's
photos chelsea (300x451), coffee (400x600), astronaut (512x512) and rocket (427x640), each
at its native size and resized to 720x1280, 180x320, 97x131 (an upscale) and 640x360
(portrait, which Pillow 13 resizes vertically first), plus a batch mixing four sizes.
|Δ| is in normalized pixel units; one uint8 level is 1 / 255 / std (0.00784 for std 0.5,
0.0150 for CLIP's smallest std, 0.0175 for ImageNet's):

- BEiT hub config (224x224, bilinear, no crop, mean = std = 0.5) against
  ``BeitImageProcessorPil``: max |Δ| 0.00784 (1 level) in every case; mean |Δ| 2.4e-5
  (native sizes), 9.2e-6 (720x1280), 4.2e-6 (180x320), 1.1e-6 (97x131), 2.5e-5
  (640x360), 5.7e-6 (mixed); at most 0.3 % of values differ at all.
- CLIP-style config (shortest_edge 224, center crop 224, bicubic) against
  ``CLIPImageProcessorPil``: max |Δ| 1 level, mean |Δ| at most 1.7e-6. The same with the
  old integer ``size: 224`` form, and at most 2.3e-6 with a crop larger than the resized
  picture (zero padding, odd amounts).
- ConvNeXt config (size 224, crop_pct 0.875, bicubic) against ``ConvNextImageProcessorPil``:
  max |Δ| 1 level, mean |Δ| at most 3.2e-6.
- nearest (resample 0) against ``ViTImageProcessorPil``: the same pixels (|Δ| <= 1e-7).
- logits of the tiny BEiT on our tensors against a plain transformers forward on
  ``BeitImageProcessorPil``'s (12 photos of three sizes): max |Δ| 0.0023 for logits in
  [-8.8, 8.2]; same top-1 everywhere, the smallest top-1/top-2 margin being 0.074.

Tolerances asserted: max |Δ| <= 2 uint8 levels (with bicubic a one-level difference after
the first pass can become two after the second: seen once, BEiT at bicubic on 180x320),
mean |Δ| <= 1e-4, logits max |Δ| <= 0.02 and the same top-1. The resize that went before
(one antialiased interpolate over both axes, rounded once) measured mean |Δ| 6e-4 to 2.4e-3
with up to 5 levels for bicubic, and fails these tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from helpers import require
from media import PHOTOS, photo

from labelcast.errors import ModelError
from labelcast.model.classifier import Classifier, ModelConfig
from labelcast.model.preprocess import Preprocessor

MAX_LEVELS = 2
MEAN_TOLERANCE = 1e-4
LOGITS_TOLERANCE = 0.02

CPU = torch.device("cpu")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _photos(size: tuple[int, int] | None) -> list[npt.NDArray[np.uint8]]:
    return [photo(name, size) for name in PHOTOS]


def _mixed() -> list[npt.NDArray[np.uint8]]:
    """Five frames of four sizes, with one size at interleaved positions."""
    return [
        photo("coffee", (180, 320)),
        photo("chelsea"),
        photo("rocket", (180, 320)),
        photo("astronaut", (97, 131)),
        photo("chelsea", (720, 1280)),
        photo("astronaut", (180, 320)),
    ]


BATCHES = {
    "native": lambda: _photos(None),
    "720x1280": lambda: _photos((720, 1280)),
    "180x320": lambda: _photos((180, 320)),
    "97x131-upscale": lambda: _photos((97, 131)),
    # Portrait: Pillow (13) resizes these vertically first.
    "portrait-640x360": lambda: _photos((640, 360)),
    "mixed": _mixed,
}


def _assert_close_to_pil(
    ours: torch.Tensor, reference: torch.Tensor, std: list[float] | tuple[float, ...]
) -> None:
    assert ours.shape == reference.shape
    difference = (ours.float().cpu() - reference.float()).abs()
    level = 1 / 255 / min(std)
    assert difference.max().item() <= MAX_LEVELS * level + 1e-6, (
        f"max |Δ| {difference.max().item():.5f} is over {MAX_LEVELS} uint8 levels"
    )
    assert difference.mean().item() <= MEAN_TOLERANCE, f"mean |Δ| {difference.mean().item():.2e}"


@pytest.fixture(scope="module")
def classifier(tiny_model: Path) -> Classifier:
    return Classifier.load(ModelConfig(id=str(tiny_model), device="cpu"))


@pytest.fixture(scope="module")
def beit_pil(tiny_model: Path) -> Any:
    from transformers import BeitImageProcessorPil

    return BeitImageProcessorPil.from_pretrained(tiny_model)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_beit_preprocessing_matches_transformers_pil(
    classifier: Classifier, beit_pil: Any, batch: str
) -> None:
    # given real photos and the hub's BEiT preprocessing config (224x224 bilinear, 0.5/0.5)
    images = BATCHES[batch]()

    # when labelcast and transformers' PIL processor preprocess them
    ours = classifier.preprocess(images)
    reference = beit_pil(images, return_tensors="pt")["pixel_values"]

    # then the pixel values agree within two uint8 levels, and on average far closer
    assert ours.device == CPU and ours.dtype == torch.float32
    _assert_close_to_pil(ours, reference, beit_pil.image_std)


def _clip_config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 224},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }
    config.update(changes)
    return config


CROPPING_CONFIGS = {
    "clip-shortest-edge-crop": ("CLIPImageProcessorPil", _clip_config()),
    "clip-integer-size": (
        "CLIPImageProcessorPil",
        {
            **_clip_config(size=224, crop_size=224),
            "image_processor_type": None,
            "feature_extractor_type": "CLIPFeatureExtractor",
        },
    ),
    "crop-larger-than-picture": (
        "CLIPImageProcessorPil",
        _clip_config(size={"shortest_edge": 221}, crop_size={"height": 224, "width": 230}),
    ),
    "convnext-crop-pct": (
        "ConvNextImageProcessorPil",
        {
            "feature_extractor_type": "ConvNextFeatureExtractor",
            "crop_pct": 0.875,
            "do_resize": True,
            "size": 224,
            "resample": 3,
            "do_normalize": True,
            "image_mean": IMAGENET_MEAN,
            "image_std": IMAGENET_STD,
        },
    ),
    "vit-nearest": (
        "ViTImageProcessorPil",
        {
            "image_processor_type": "ViTImageProcessor",
            "size": {"height": 224, "width": 224},
            "resample": 0,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    ),
}


@pytest.mark.parametrize("name", list(CROPPING_CONFIGS))
@pytest.mark.parametrize("batch", ["native", "720x1280", "97x131-upscale"])
def test_other_resize_and_crop_configs_match_transformers_pil(name: str, batch: str) -> None:
    # given a ViT/CLIP/ConvNeXt-style preprocessing config and the matching PIL processor
    import transformers

    class_name, config = CROPPING_CONFIGS[name]
    reference_processor = getattr(transformers, class_name)(
        **{key: value for key, value in config.items() if not key.endswith("_type")}
    )
    preprocessor = Preprocessor.from_config(config, "preprocessor_config.json")
    images = BATCHES[batch]()

    # when both preprocess the same photos
    ours = preprocessor(images, CPU, torch.float32)
    reference = reference_processor(images, return_tensors="pt")["pixel_values"]

    # then they agree within two uint8 levels (same crop geometry, same output size)
    assert ours.shape[-2:] == (224, 230 if name == "crop-larger-than-picture" else 224)
    _assert_close_to_pil(ours, reference, config["image_std"])
    if name == "vit-nearest":  # Pillow's nearest is reproduced exactly
        assert (ours - reference).abs().max().item() <= 1e-6


def test_logits_match_a_plain_transformers_forward(
    classifier: Classifier, beit_pil: Any, tiny_model: Path
) -> None:
    # given photos of several sizes and a plain transformers model of the same checkpoint
    from transformers import BeitForImageClassification

    images = _photos(None) + _photos((180, 320)) + _photos((97, 131))
    model = BeitForImageClassification.from_pretrained(tiny_model).eval()

    # when labelcast classifies them, and transformers runs its own preprocessing + forward
    ours = classifier.forward(classifier.preprocess(images)).float().cpu()
    with torch.inference_mode():
        reference = model(**beit_pil(images, return_tensors="pt")).logits

    # then the logits agree closely, with the same top-1 class for every image
    assert ours.shape == reference.shape == (len(images), classifier.num_labels)
    assert (ours - reference).abs().max().item() <= LOGITS_TOLERANCE
    assert ours.argmax(dim=1).tolist() == reference.argmax(dim=1).tolist()
    # (and the images do not all land on one class, so top-1 equality means something)
    assert len(set(reference.argmax(dim=1).tolist())) > 1


def test_mixed_size_batch_keeps_the_original_order(classifier: Classifier) -> None:
    # given frames of four sizes, with frames of one size at interleaved positions
    images = _mixed()

    # when they are preprocessed as one batch, and each on its own
    batched = classifier.preprocess(images)
    alone = torch.cat([classifier.preprocess([image]) for image in images])

    # then row i of the batch is image i
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)
    assert not torch.allclose(alone[0], alone[2])  # the same-size frames really differ


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resample": 1}, "LANCZOS"),
        ({"image_mean": None}, "image_mean"),
        ({"size": {"shortest_edge": 224, "longest_edge": 448}}, "longest_edge"),
        ({"image_processor_type": "MobileViTImageProcessor"}, "MobileViT"),
    ],
    ids=["lanczos", "no-image-mean", "longest-edge", "mobilevit"],
)
def test_unusable_preprocessor_config_is_a_model_error_naming_the_file(
    tiny_model: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    # given a copy of the checkpoint whose preprocessor_config.json asks for something
    # labelcast cannot reproduce (None removes the key)
    checkpoint = shutil.copytree(tiny_model, tmp_path / "checkpoint")
    config_file = checkpoint / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config.update(change)
    config = {key: value for key, value in config.items() if value is not None}
    config_file.write_text(json.dumps(config))

    # when the classifier loads it
    with pytest.raises(ModelError) as error:
        Classifier.load(ModelConfig(id=str(checkpoint), device="cpu"))

    # then the error names the file and what is wrong with it
    assert str(config_file) in str(error.value)
    assert message in str(error.value)


@pytest.mark.gpu
def test_beit_preprocessing_on_cuda_matches_transformers_pil(
    tiny_model: Path, beit_pil: Any
) -> None:
    # given the classifier on the GPU in fp32 and photos of mixed sizes
    require("cuda", torch.cuda.is_available(), "no CUDA device (this test is marked gpu)")
    gpu = Classifier.load(ModelConfig(id=str(tiny_model), device="cuda", precision="fp32"))
    images = _mixed() + _photos(None)

    # when it preprocesses them on the device
    ours = gpu.preprocess(images)

    # then the tensor is on the GPU and agrees with transformers' PIL processor
    assert ours.device.type == "cuda"
    _assert_close_to_pil(ours, beit_pil(images, return_tensors="pt")["pixel_values"], [0.5])
