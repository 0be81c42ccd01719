"""Model trust: pinned revisions, SHA-256 checks, safetensors only, model-info and verify."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import HUB_COMMIT, HUB_ID, TINY_LABELS, make_tiny_beit
from helpers import read_events, run_cli, write_config
from media import photo

COMMIT = HUB_COMMIT


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def short_config(model: dict, clip: Path, out: Path) -> dict:
    return {
        "name": "trust",
        "model": model,
        "sources": [{"id": "a", "type": "file", "path": str(clip), "sample": {"fps": 1}}],
        "sinks": [{"type": "log", "path": str(out)}],
    }


def test_a_hub_model_records_the_commit_it_resolved_and_warns_when_unpinned(
    hub_cache, clips, tmp_path
):
    # Given a cached hub model and no network, referenced without a pinned revision
    out = tmp_path / "events.jsonl"
    config = write_config(tmp_path, short_config({"id": HUB_ID}, clips["short"], out))
    env = {"HF_HOME": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    # When labelcast runs it
    result = run_cli("run", str(config), env=env)
    # Then events carry the resolved commit, and a warning names the commit to pin
    assert result.returncode == 0, result.stderr
    assert {e["model"]["revision"] for e in read_events(out)} == {COMMIT}
    assert f"model.revision: {COMMIT}" in result.stderr
    # And pinned, it runs without the warning
    pinned = write_config(
        tmp_path,
        short_config({"id": HUB_ID, "revision": COMMIT}, clips["short"], out),
        "pinned.yaml",
    )
    result = run_cli("run", str(pinned), env=env)
    assert result.returncode == 0, result.stderr
    assert "not pinned" not in result.stderr


def test_a_wrong_sha256_refuses_to_start_and_the_right_one_loads(tiny_model, clips, tmp_path):
    weights = tiny_model / "model.safetensors"
    out = tmp_path / "events.jsonl"
    bad = {"id": str(tiny_model), "sha256": {"model.safetensors": "0" * 64}}
    result = run_cli("run", str(write_config(tmp_path, short_config(bad, clips["short"], out))))
    assert result.returncode == 2
    assert "SHA-256" in result.stderr and sha256(weights) in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    good = {"id": str(tiny_model), "sha256": {"model.safetensors": sha256(weights).upper()}}
    result = run_cli("run", str(write_config(tmp_path, short_config(good, clips["short"], out))))
    assert result.returncode == 0, result.stderr
    assert len(read_events(out)) == 4


def test_pickle_only_checkpoints_need_allow_pickle(clips, tmp_path):
    # Given a checkpoint saved as pytorch_model.bin only
    model_dir = make_tiny_beit(tmp_path / "pickled")
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model_dir / "model.safetensors"), model_dir / "pytorch_model.bin")
    (model_dir / "model.safetensors").unlink()
    out = tmp_path / "events.jsonl"
    refused = run_cli(
        "run",
        str(write_config(tmp_path, short_config({"id": str(model_dir)}, clips["short"], out))),
    )
    assert refused.returncode == 2
    assert "only pickle weights (pytorch_model.bin)" in refused.stderr
    assert "model.allow_pickle" in refused.stderr and "Traceback" not in refused.stderr
    allowed = run_cli(
        "run",
        str(
            write_config(
                tmp_path,
                short_config({"id": str(model_dir), "allow_pickle": True}, clips["short"], out),
            )
        ),
    )
    assert allowed.returncode == 0, allowed.stderr
    assert len(read_events(out)) == 4


def test_model_info_describes_the_checkpoint(tiny_model, tmp_path):
    model_dir = tmp_path / "card"
    shutil.copytree(tiny_model, model_dir)
    (model_dir / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# Tiny\n")
    result = run_cli("model-info", str(model_dir), "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    from safetensors.numpy import load_file

    tensors = load_file(model_dir / "model.safetensors")
    assert info["parameters"] == sum(t.size for t in tensors.values())
    assert info["architecture"] == "BeitForImageClassification"
    assert info["license"] == "apache-2.0" and info["num_labels"] == len(TINY_LABELS)
    assert info["revision"] is None and info["safetensors"] is True
    assert info["preprocessing"]["size"] == {"height": 224, "width": 224}
    files = {f["name"]: f for f in info["files"]}
    weights = model_dir / "model.safetensors"
    assert files["model.safetensors"] == {
        "name": "model.safetensors",
        "size": weights.stat().st_size,
        "sha256": sha256(weights),
    }
    text = run_cli("model-info", str(model_dir), timeout=60)
    assert text.returncode == 0 and "apache-2.0" in text.stdout and sha256(weights) in text.stdout


@pytest.fixture(scope="module")
def labelled_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos in DIR/<label>/, at two sizes each, saved as PNG with PyAV."""
    import av

    folder = tmp_path_factory.mktemp("labelled")
    for name, label in (
        ("chelsea", "tabby, tabby cat"),
        ("coffee", "espresso"),
        ("rocket", "space shuttle"),
        ("astronaut", "mask"),
    ):
        (folder / label).mkdir()
        for size in (None, (150, 200)):
            image = photo(name, size)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            suffix = "full" if size is None else "small"
            with av.open(str(folder / label / f"{name}-{suffix}.png"), "w") as container:
                stream = container.add_stream("png")
                stream.width, stream.height = image.shape[1], image.shape[0]
                stream.pix_fmt = "rgb24"
                for packet in stream.encode(frame):
                    container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
    return folder


def reference_predictions(model_dir: Path, folder: Path) -> tuple[float, float]:
    """Top-1 and top-5 accuracy computed with plain transformers (PIL preprocessing)."""
    import torch
    from PIL import Image
    from transformers import BeitForImageClassification, BeitImageProcessorPil

    model = BeitForImageClassification.from_pretrained(model_dir).eval()
    processor = BeitImageProcessorPil.from_pretrained(model_dir)
    top1, top5 = [], []
    for path in sorted(folder.rglob("*.png")):
        inputs = processor(Image.open(path).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0].numpy()
        ranked = [model.config.id2label[int(i)] for i in np.argsort(-logits)[:5]]
        top1.append(ranked[0] == path.parent.name)
        top5.append(path.parent.name in ranked)
    return float(np.mean(top1) * 100), float(np.mean(top5) * 100)


def test_verify_reports_accuracy_and_agreement(tiny_model, labelled_images, tmp_path, clips):
    config = write_config(
        tmp_path, short_config({"id": str(tiny_model)}, clips["short"], tmp_path / "unused.jsonl")
    )
    expected_top1, expected_top5 = reference_predictions(tiny_model, labelled_images)
    # When verify runs with the expected accuracy as the reference
    result = run_cli(
        "verify",
        str(config),
        "--images",
        str(labelled_images),
        "--json",
        "--expect-top1",
        str(expected_top1),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Then accuracy matches the independent computation, and fp32 (the reference itself)
    # is not compared with itself
    assert report["images"] == 8
    assert report["accuracy"] == {"images": 8, "top1_pct": expected_top1, "top5_pct": expected_top5}
    assert report["agreement"] is None and report["reference"] is None
    assert report["nothing_to_compare"].startswith("nothing to compare")
    assert report["passed"] is True
    # And a reference 10 points off fails with a non-zero exit
    failed = run_cli(
        "verify",
        str(config),
        "--images",
        str(labelled_images),
        "--expect-top1",
        str(expected_top1 + 10),
        timeout=120,
    )
    assert failed.returncode == 1
    assert "FAIL: top-1" in failed.stdout and "tolerance ±2.00" in failed.stdout


def test_verify_measures_a_lower_precision_against_fp32(
    tiny_model, labelled_images, tmp_path, clips
):
    config = write_config(
        tmp_path,
        short_config(
            {"id": str(tiny_model), "precision": "bf16"}, clips["short"], tmp_path / "unused.jsonl"
        ),
    )
    result = run_cli("verify", str(config), "--images", str(labelled_images), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    agreement = report["agreement"]
    assert report["model"]["precision"] == "bf16"
    # bf16 rounds weights and activations: logits move, but by far less than their spread
    assert 0 < agreement["max_abs_logit_diff"] < 1.0
    assert 0 <= agreement["mean_abs_logit_diff"] <= agreement["max_abs_logit_diff"]
    assert 0 <= agreement["top1_agreement_pct"] <= 100


def test_verify_names_folders_that_are_not_labels(tiny_model, labelled_images, tmp_path, clips):
    folder = tmp_path / "images"
    shutil.copytree(labelled_images, folder)
    (folder / "espresso").rename(folder / "coffee-ish")
    config = write_config(
        tmp_path, short_config({"id": str(tiny_model)}, clips["short"], tmp_path / "unused.jsonl")
    )
    result = run_cli("verify", str(config), "--images", str(folder), timeout=120)
    assert result.returncode == 2
    assert "coffee-ish" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("max_diff", "level"), [(1e-6, "WARNING"), (0.5, "INFO")])
def test_start_up_self_check_compares_with_fp32(tiny_model, clips, tmp_path, max_diff, level):
    # Given bf16 (on the CPU here; on CUDA the check is on by default for fp16/bf16)
    model = {
        "id": str(tiny_model),
        "precision": "bf16",
        "self_check": "on",
        "self_check_max_score_diff": max_diff,
        # The clip's 4 sampled frames make the first batch, however slowly they decode.
        "batch": {"max_size": 4, "max_wait_ms": 10000},
    }
    out = tmp_path / "events.jsonl"
    result = run_cli("run", str(write_config(tmp_path, short_config(model, clips["short"], out))))
    # Then the first frames are also classified in fp32 and the numbers are logged
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "self-check" in line]
    assert len(lines) == 1 and f" {level} " in lines[0], result.stderr
    assert "bf16 vs fp32 on 4 frames: top-1 agreement" in lines[0]
    assert len(read_events(out)) == 4
