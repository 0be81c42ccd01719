"""``labelcast train``: a new head on a base checkpoint from DATA_DIR/<label>/ pictures.

Given pictures cut from two real photos (random crops, flips and noise, so each differs),
when ``labelcast train`` runs on a tiny BEiT, then: the held-out accuracy is at least 95 %,
the checkpoint is a standard one (plain transformers loads it and classifies the held-out
pictures with its own preprocessing), ``labelcast run`` reports the trained labels,
``labelcast verify --images`` on the held-out pictures passes, the same seed gives the same
weights, and bad data folders exit 2 naming the folder or file, before any model loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HUB_COMMIT, HUB_ID
from helpers import read_events, run_cli, write_config
from media import make_clip, make_labelled_pictures
from safetensors.numpy import load_file

# Each label's pictures are cut from one photo.
PHOTOS = {"cat": "chelsea", "coffee": "coffee"}
PER_LABEL = 16
COMMIT = HUB_COMMIT


def make_pictures(folder: Path, per_label: int) -> Path:
    return make_labelled_pictures(folder, PHOTOS, per_label)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_pictures(tmp_path_factory.mktemp("train") / "data", PER_LABEL)
    # What the snapshot sink and the /label page leave beside pictures: skipped.
    (data / "cat" / "00.json").write_text("{}")
    (data / "cat" / ".DS_Store").write_bytes(b"\0")
    return data


@pytest.fixture(scope="module")
def trained(pictures: Path, hub_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train from the hub base, pinned, with the default split; the report and folder."""
    out = tmp_path_factory.mktemp("trained") / "gate-state"
    command = ["train", str(pictures), "-o", str(out), "--base", HUB_ID, "--revision", COMMIT]
    result = run_cli(*command, "--json", env={"HF_HOME": str(hub_cache)}, timeout=180)
    assert result.returncode == 0, result.stderr
    return {"report": json.loads(result.stdout), "out": out, "stderr": result.stderr}


def test_train_reaches_95_percent_held_out_and_reports_the_confusion(trained):
    report: dict[str, Any] = trained["report"]
    # Then a fifth of each label was held out, and at least 95 % of it is classified right
    assert report["labels"] == ["cat", "coffee"]
    assert report["pictures"] == {
        "cat": {"train": 13, "holdout": 3},
        "coffee": {"train": 13, "holdout": 3},
    }
    assert report["holdout_top1_pct"] >= 95
    confusion = np.array(report["confusion"])
    assert confusion.sum() == 6 and np.trace(confusion) / 6 * 100 == report["holdout_top1_pct"]
    assert len(report["held_out"]) == 6
    assert report["base"] == {"id": HUB_ID, "revision": COMMIT}
    # And the sidecar and hidden file were skipped, with a note
    assert "skipped 2 file(s) that are not pictures" in trained["stderr"]


def test_the_checkpoint_is_standard_and_its_card_says_how_it_was_made(trained, pictures):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, BeitImageProcessorPil

    out: Path = trained["out"]
    report = trained["report"]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    # Readable as any file made here (safetensors writes owner-only files)
    modes = {(out / name).stat().st_mode & 0o777 for name in ("config.json", "model.safetensors")}
    assert len(modes) == 1
    # Plain transformers loads it, with the new labels, and (with its own PIL
    # preprocessing) classifies the held-out pictures as train measured
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "BeitForImageClassification"
    assert model.config.id2label == {0: "cat", 1: "coffee"}
    assert model.config.label2id == {"cat": 0, "coffee": 1}
    processor = BeitImageProcessorPil.from_pretrained(out)
    for item in report["held_out"]:
        inputs = processor(Image.open(item["file"]).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        assert model.config.id2label[int(logits.argmax())] == item["label"]
    card = (out / "README.md").read_text()
    front = card.split("---\n")[1]
    assert f'base_model: "{HUB_ID}"' in front
    assert "library_name: transformers" in front and "pipeline_tag: image-classification" in front
    assert COMMIT in card
    assert "| `cat` | 16 | 13 | 3 |" in card
    assert f"**{report['holdout_top1_pct']:.2f}%**" in card
    assert report["command"] in card and f"--revision {COMMIT}" in report["command"]


def test_labelcast_run_reports_the_trained_labels(trained, tmp_path):
    # Given a clip showing the cat, then the coffee
    clip = make_clip(tmp_path / "clip.mp4", seconds=4, fps=10, photos=("chelsea", "coffee"))
    events_path = tmp_path / "events.jsonl"
    config = {
        "name": "taught",
        "model": {"id": str(trained["out"])},
        "sources": [{"id": "door", "type": "file", "path": str(clip), "sample": {"fps": 2}}],
        "labels": {"top_k": 1},
        "sinks": [{"type": "log", "path": str(events_path)}],
    }
    # When labelcast runs with the trained checkpoint as model.id
    result = run_cli("run", str(write_config(tmp_path, config)), "--no-progress")
    assert result.returncode == 0, result.stderr
    # Then each event names a trained label: the cat first, then the coffee
    events = read_events(events_path)
    assert len(events) == 8
    tops = [event["labels"][0]["label"] for event in events]
    assert tops == ["cat"] * 4 + ["coffee"] * 4
    assert events[0]["model"]["id"] == str(trained["out"])


def test_verify_on_the_held_out_pictures_passes(trained, tmp_path):
    # Given the held-out pictures in DIR/<label>/
    report = trained["report"]
    images = tmp_path / "held-out"
    for item in report["held_out"]:
        (images / item["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(item["file"], images / item["label"])
    config = {
        "model": {"id": str(trained["out"])},
        "sources": [{"id": "a", "type": "file", "path": "unused.mp4"}],
    }
    # When verify checks the checkpoint against train's held-out accuracy
    result = run_cli(
        "verify",
        str(write_config(tmp_path, config)),
        "--images",
        str(images),
        "--expect-top1",
        str(report["holdout_top1_pct"]),
        "--json",
    )
    # Then it measures the same accuracy (the same preprocessing and weights) and passes
    assert result.returncode == 0, result.stderr
    verified = json.loads(result.stdout)
    assert verified["accuracy"]["top1_pct"] == report["holdout_top1_pct"]
    assert verified["passed"] is True


def test_the_same_seed_gives_the_same_weights(trained, pictures, tiny_model, tmp_path):
    # Given the same base, as a local directory this time, and the same data and seed
    out = tmp_path / "again"
    result = run_cli("train", str(pictures), "-o", str(out), "--base", str(tiny_model))
    assert result.returncode == 0, result.stderr
    # Then every tensor is bitwise the same as the first run's
    first = load_file(trained["out"] / "model.safetensors")
    second = load_file(out / "model.safetensors")
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert np.array_equal(tensor, second[name]), name
    # And the terminal report has the accuracy and the confusion table
    assert "held-out top-1: 100.0% (6/6 pictures)" in result.stdout
    assert "true \\ predicted    cat  coffee" in result.stdout
    # And a local base has no base_model in the card's metadata
    assert "base_model" not in (out / "README.md").read_text()


def test_holdout_0_trains_on_every_picture_and_measures_nothing(pictures, tiny_model, tmp_path):
    out = tmp_path / "all"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # Given a non-empty output folder: refused without --force
    refused = run_cli("train", str(pictures), "-o", str(out), "--base", str(tiny_model))
    assert refused.returncode == 2 and f"-o {out}: not empty" in refused.stderr
    command = ["train", str(pictures), "-o", str(out), "--base", str(tiny_model)]
    result = run_cli(*command, "--holdout", "0", "--epochs", "50", "--force", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["holdout_top1_pct"] is None and report["confusion"] is None
    assert report["pictures"]["cat"] == {"train": 16, "holdout": 0}
    # And --force replaced train's files, leaving the others
    assert (out / "notes.txt").read_text() == "mine"
    assert "Not measured" in (out / "README.md").read_text()


def damaged(data: Path) -> str:
    path = data / "coffee" / "03.jpg"
    path.write_bytes(path.read_bytes()[:2000])  # cut short, as by an interrupted copy
    return str(path)


def one_label(data: Path) -> str:
    shutil.rmtree(data / "coffee")
    return str(data / "cat")


def too_few(data: Path) -> str:
    for path in sorted((data / "coffee").iterdir())[4:]:
        path.unlink()
    return f"{data / 'coffee'}: 4 picture(s); each label needs at least 5"


def no_labels(data: Path) -> str:
    for label in PHOTOS:
        shutil.rmtree(data / label)
    return f"{data}: no label folders"


@pytest.mark.parametrize("spoil", [damaged, one_label, too_few, no_labels])
def test_bad_data_folders_exit_2_naming_the_folder_or_file(spoil, tmp_path):
    # Given a data folder with one thing wrong
    data = make_pictures(tmp_path / "data", 6)
    named = spoil(data)
    # When train runs on it (the base named does not exist: no model is loaded first)
    result = run_cli("train", str(data), "-o", str(tmp_path / "out"), "--base", "/nonexistent")
    # Then it exits 2 with one message naming what is wrong, and writes nothing
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert not (tmp_path / "out").exists()
