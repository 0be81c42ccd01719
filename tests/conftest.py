"""Fixtures: a tiny BEiT checkpoint made with transformers, and H.264 clips of real photos."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import check_requirements, free_port, require
from media import make_clip
from rtsp_server import RtspServer, missing_requirements

# Nothing is downloaded at test time.
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (under CI=true: fail) tests marked ``requires`` whose component is missing."""
    check_requirements(item)


TINY_LABELS = [
    "tabby, tabby cat",
    "Egyptian cat",
    "tiger cat",
    "espresso",
    "cup",
    "coffee mug",
    "space shuttle",
    "missile",
    "projectile, missile",
    "mask",
]

PREPROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": False,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "BeitFeatureExtractor",
    "image_processor_type": "BeitImageProcessor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
}


def make_tiny_beit(
    directory: Path,
    seed: int = 0,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate_size: int = 64,
) -> Path:
    """Save a small randomly initialised BEiT classifier with the hub's preprocessing config.

    The sizes default to a model that costs next to nothing; tests that need the classifier
    to be the slow stage (slower than decoding) ask for a larger one.
    """
    import torch
    from transformers import BeitConfig, BeitForImageClassification

    torch.manual_seed(seed)
    config = BeitConfig(
        image_size=224,
        patch_size=16,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        use_mean_pooling=True,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    model = BeitForImageClassification(config).eval()
    # Random heads give near-uniform scores; a larger head makes top labels differ by image.
    with torch.no_grad():
        model.classifier.weight.mul_(40)
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_beit(tmp_path_factory.mktemp("tiny-beit"))


# A hub model that is only ever in the local cache (hub_cache): the tiny model, as this commit.
HUB_ID = "labelcast-tests/tiny-beit"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def hub_cache(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache (``HF_HOME``) holding the tiny model as commit HUB_COMMIT of
    HUB_ID, on ``main``."""
    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(tiny_model, repo / "snapshots" / HUB_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    return home


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 20 s clip at 30 fps, a short clip of another size, and a faststart mp4 to damage."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "long": make_clip(folder / "long.mp4", seconds=20, fps=30),
        "short": make_clip(
            folder / "short.mp4", seconds=4, fps=25, size=(180, 320), photos=("coffee", "rocket")
        ),
        "faststart": make_clip(
            folder / "faststart.mp4", seconds=6, fps=30, container_options={"movflags": "faststart"}
        ),
    }


@pytest.fixture(scope="session")
def live_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 90 s clip at 15 fps for the RTSP server: longer than any test watches one connection."""
    folder = tmp_path_factory.mktemp("live")
    return make_clip(folder / "live.mp4", seconds=90, fps=15)


@pytest.fixture
def rtsp_server(live_clip: Path) -> Iterator[Callable[..., RtspServer]]:
    """Start real RTSP server processes (GStreamer) on free loopback ports; killed at the end."""
    missing = missing_requirements()
    require("gstreamer-rtsp", missing is None, missing or "")
    servers: list[RtspServer] = []

    def start(**kwargs: Any) -> RtspServer:
        server = RtspServer(free_port(), live_clip, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
