"""The ONNX Runtime backend: export, dynamic batch axis, parity with torch fp32, int8, pipeline.

Tolerances (tiny random BEiT, classifier head scaled x40 so logits span about ±10):
fp32 ONNX Runtime vs torch fp32 differs by float rounding only, measured ~1e-5 in logits;
we allow 1e-3 absolute and require identical top-1. ONNX Runtime's dynamic int8 quantization
moves logits by about 0.1 here; we assert finiteness and a loose bound, and report agreement.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import read_events, require_module, run_cli, write_config
from media import photo

from labelcast.config import load_config
from labelcast.errors import ConfigError
from labelcast.model.agreement import agreement
from labelcast.model.classifier import Classifier, ModelConfig

require_module("onnxruntime", "pip install labelcast[onnx]")
require_module("onnxscript", "pip install labelcast[onnx]")

FP32_MAX_ABS_LOGIT_DIFF = 1e-3
INT8_MAX_ABS_LOGIT_DIFF = 3.0


def photos() -> list[np.ndarray]:
    """Real photos at several sizes: what the parity checks run on."""
    names = ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat")
    sizes = (None, (150, 200), (480, 640))
    return [photo(name, size) for name in names for size in sizes]


def pipeline_config(model: dict, clip: Path, out: Path) -> dict:
    return {
        "name": "onnx",
        "model": model,
        "sources": [{"id": "a", "type": "file", "path": str(clip), "sample": {"fps": 1}}],
        "sinks": [{"type": "log", "path": str(out)}],
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("labelcast-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELCAST_CACHE", str(cache))


@pytest.fixture(scope="module")
def exported(tiny_model: Path, clips, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with `labelcast export` (fp32)."""
    folder = tmp_path_factory.mktemp("export")
    config = write_config(
        folder, pipeline_config({"id": str(tiny_model)}, clips["short"], folder / "unused")
    )
    output = folder / "model.onnx"
    result = run_cli("export", str(config), "-o", str(output), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == str(output) and report["precision"] == "fp32"
    assert report["input"] == {"name": "pixel_values", "shape": ["batch", 3, 224, 224]}
    assert report["check"]["max_abs_logit_diff"] < FP32_MAX_ABS_LOGIT_DIFF
    assert report["check"]["top1_agreement_pct"] == 100.0
    return output


def test_the_export_has_a_dynamic_batch_axis(exported):
    import onnx
    import onnxruntime

    # Given the exported file
    graph = onnx.load(str(exported)).graph
    (pixel_values,) = graph.input
    dims = pixel_values.type.tensor_type.shape.dim
    # Then its batch axis is symbolic and the rest is (3, 224, 224)
    assert pixel_values.name == "pixel_values" and dims[0].dim_param
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert graph.output[0].name == "logits"
    # And it runs at batch 1 and batch 5
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224))
        (logits,) = session.run(["logits"], {"pixel_values": pixels.astype(np.float32)})
        assert logits.shape == (batch, 10)


def test_onnxruntime_logits_match_torch_fp32_on_real_photos(tiny_model, exported):
    # Given the torch fp32 classifier and the same checkpoint in ONNX Runtime
    torch_fp32 = Classifier.load(ModelConfig(id=str(tiny_model), precision="fp32"))
    ort = Classifier.load(
        ModelConfig(id=str(tiny_model), backend="onnxruntime", onnx={"path": str(exported)})
    )
    assert (ort.info.backend, ort.info.precision, ort.info.device) == ("onnxruntime", "fp32", "cpu")
    assert ort.id2label == torch_fp32.id2label
    images = photos()
    # When both classify real photos, in one batch
    expected, actual = torch_fp32.logits(images), ort.logits(images)
    # Then logits match within float rounding and top-1 is the same on every photo
    difference = float(np.abs(actual - expected).max())
    print(f"fp32 ONNX Runtime vs torch: max |Δ logit| {difference:.3g} on {len(images)} photos")
    assert difference < FP32_MAX_ABS_LOGIT_DIFF
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert len(set(expected.argmax(axis=1).tolist())) > 1  # the photos are told apart
    np.testing.assert_allclose(ort.classify(images), torch_fp32.classify(images), atol=1e-4)
    # And batch size does not change the results (batch 1 vs the whole batch)
    single = np.concatenate([ort.logits([image]) for image in images[:4]])
    np.testing.assert_allclose(single, actual[:4], atol=1e-4)


def test_int8_quantization_agrees_loosely_with_fp32(tiny_model, exported, cache):
    # Given ONNX Runtime's dynamic int8 quantization of the export
    config = ModelConfig(
        id=str(tiny_model), backend="onnxruntime", onnx={"path": str(exported), "quantize": "int8"}
    )
    int8 = Classifier.load(config)
    assert int8.info.precision == "int8"
    assert list(cache.glob("onnx/*-int8.onnx"))  # quantized once, into the cache
    reference = Classifier.load(ModelConfig(id=str(tiny_model), precision="fp32"))
    images = photos()
    # When both classify real photos
    logits, expected = int8.logits(images), reference.logits(images)
    # Then logits stay finite and close; top-1 agreement is reported (an accuracy trade-off)
    result = agreement(logits, expected)
    print(f"int8 ONNX Runtime vs torch fp32: {result}")
    assert np.isfinite(logits).all()
    assert result["max_abs_logit_diff"] < INT8_MAX_ABS_LOGIT_DIFF
    assert result["top1_agreement_pct"] >= 50.0


def test_without_a_path_the_checkpoint_is_exported_once_into_the_cache(tiny_model, cache):
    config = ModelConfig(id=str(tiny_model), backend="onnxruntime")
    before = set(cache.glob("onnx/*.onnx"))
    first = Classifier.load(config)
    made = set(cache.glob("onnx/*.onnx")) - before
    assert len(made) == 1
    (path,) = made
    stamp = path.stat().st_mtime_ns
    second = Classifier.load(config)
    assert path.stat().st_mtime_ns == stamp  # reused, not exported again
    image = [photo("chelsea")]
    np.testing.assert_array_equal(first.logits(image), second.logits(image))


def test_a_pipeline_runs_end_to_end_on_onnxruntime(tiny_model, exported, clips, tmp_path, cache):
    out = tmp_path / "events.jsonl"
    model = {"id": str(tiny_model), "backend": "onnxruntime", "onnx": {"path": str(exported)}}
    config = write_config(tmp_path, pipeline_config(model, clips["short"], out))
    result = run_cli("run", str(config), env={"LABELCAST_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]  # 4 s at 1 frame/s
    assert {e["model"]["precision"] for e in events} == {"fp32"}
    assert all(e["labels"] for e in events)


def test_verify_compares_the_onnx_backend_with_torch_fp32(
    tiny_model, exported, clips, tmp_path, cache
):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        Image.fromarray(photo(name)).save(images / f"{name}.png")
    model = {
        "id": str(tiny_model),
        "backend": "onnxruntime",
        "onnx": {"path": str(exported), "quantize": "int8"},
    }
    config = write_config(tmp_path, pipeline_config(model, clips["short"], tmp_path / "unused"))
    result = run_cli(
        "verify",
        str(config),
        "--images",
        str(images),
        "--json",
        env={"LABELCAST_CACHE": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["backend"] == "onnxruntime"
    assert report["model"]["precision"] == "int8"
    assert report["reference"] == {"device": "cpu", "precision": "fp32", "backend": "torch"}
    assert 0 < report["agreement"]["max_abs_logit_diff"] < INT8_MAX_ABS_LOGIT_DIFF


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"backend": "onnxruntime", "precision": "int8"}, "onnx.quantize: int8"),
        ({"backend": "onnxruntime", "precision": "bf16"}, "precision bf16"),
        ({"onnx": {"quantize": "int8"}}, "model.backend: onnxruntime"),
        ({"backend": "onnxruntime", "onnx": {"quantize": "int4"}}, "model.onnx.quantize"),
    ],
)
def test_backend_settings_that_do_not_fit_are_config_errors(tmp_path, clips, model, words):
    config = write_config(tmp_path, pipeline_config(model, clips["short"], tmp_path / "o"))
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config(config)


def test_export_can_write_the_int8_quantization(tiny_model, tmp_path):
    from labelcast.commands.export import export

    output = tmp_path / "int8.onnx"
    result = export(ModelConfig(id=str(tiny_model)), output, quantize="int8")
    assert result["precision"] == "int8" and output.is_file()
    assert result["check"]["max_abs_logit_diff"] < INT8_MAX_ABS_LOGIT_DIFF
    # The file is recognised as quantized when loaded with quantize: none
    config = ModelConfig(id=str(tiny_model), backend="onnxruntime", onnx={"path": str(output)})
    assert Classifier.load(config).info.precision == "int8"


def test_a_missing_onnx_file_is_a_model_error(tiny_model, tmp_path):
    from labelcast.errors import ModelError

    missing = tmp_path / "nope.onnx"
    config = ModelConfig(id=str(tiny_model), backend="onnxruntime", onnx={"path": str(missing)})
    with pytest.raises(ModelError, match=r"nope\.onnx"):
        Classifier.load(config)


def test_the_torch_export_exporter_is_the_fallback(tiny_model, tmp_path, monkeypatch):
    import torch

    from labelcast.model.backends import onnxruntime as onnx_backend
    from labelcast.model.checkpoint import resolve_checkpoint
    from labelcast.model.classifier import load_torch_model

    # Given a torch whose TorchScript exporter fails
    real_export = torch.onnx.export
    calls: list[bool] = []

    def export(*args, dynamo=True, **kwargs):
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("no TorchScript exporter here")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    model = load_torch_model(resolve_checkpoint(str(tiny_model), None, allow_pickle=False), False)
    # When the model is exported
    path = tmp_path / "fallback.onnx"
    onnx_backend.export_onnx(model, (224, 224), path)
    # Then the torch.export-based exporter wrote a file with a dynamic batch axis
    assert calls == [False, True]
    session = onnx_backend.OnnxModel(path, ["CPUExecutionProvider"])
    pixels = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        expected = model(pixel_values=pixels).logits
    np.testing.assert_allclose(session(pixels).numpy(), expected.numpy(), atol=1e-3)
