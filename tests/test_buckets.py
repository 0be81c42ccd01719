"""Padded batch-size buckets and torch.compile: the same results as the plain fp32 path.

Padding must never leak into results: every fast path is compared with the plain torch
fp32 path (no buckets, not compiled) on the same real photos.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_events, require, run_cli, write_config
from media import photo

from labelcast.config import load_config
from labelcast.errors import ConfigError
from labelcast.model.agreement import agreement
from labelcast.model.buckets import BatchBuckets, Chunk, pad_batch
from labelcast.model.classifier import Classifier, ModelConfig, reference_config

# fp32 on the CPU: a different batch size changes only the rounding (~1e-6 measured).
FP32_MAX_ABS_LOGIT_DIFF = 1e-4
# int8 against fp32, as tests/test_onnx.py allows ONNX Runtime's int8.
INT8_MAX_ABS_LOGIT_DIFF = 3.0
# fp16 on CUDA, compiled against eager: other kernels, other rounding (logits here are < 10).
FP16_MAX_ABS_LOGIT_DIFF = 0.1


def photos(count: int) -> list[np.ndarray]:
    """``count`` real photos of several subjects and sizes."""
    names = ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat")
    sizes = (None, (150, 200), (480, 640))
    every = [photo(name, size) for size in sizes for name in names]
    return every[:count]


def load(model: Path, **settings) -> Classifier:
    return Classifier.load(
        ModelConfig.model_validate({"id": str(model), "device": "cpu", **settings})
    )


def assert_same_results(fast: np.ndarray, plain: np.ndarray, tolerance: float) -> None:
    assert fast.shape == plain.shape
    assert np.abs(fast - plain).max() <= tolerance
    assert (fast.argmax(axis=1) == plain.argmax(axis=1)).all()


@pytest.fixture(scope="module")
def plain(tiny_model: Path) -> Classifier:
    return load(tiny_model)


def test_a_batch_is_padded_to_the_smallest_bucket_that_holds_it():
    buckets = BatchBuckets([8, 1, 4, 4])
    assert buckets.sizes == (1, 4, 8)
    assert buckets.plan(1) == [Chunk(0, 1, 1)]
    assert buckets.plan(3) == [Chunk(0, 3, 4)]
    assert buckets.plan(8) == [Chunk(0, 8, 8)]
    # larger than the largest bucket (only the Python API does that): chunks of it
    assert buckets.plan(19) == [Chunk(0, 8, 8), Chunk(8, 16, 8), Chunk(16, 19, 4)]
    assert BatchBuckets().plan(5) == [Chunk(0, 5, 5)]


def test_padding_repeats_the_last_real_frame():
    batch = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    padded = pad_batch(batch, 5)
    assert padded.shape == (5, 2)
    assert torch.equal(padded[:3], batch)
    assert torch.equal(padded[3], batch[2]) and torch.equal(padded[4], batch[2])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_padded_batches_give_the_plain_fp32_results(tiny_model, plain, count):
    # given the same checkpoint with buckets of 2 and 4 frames (batches of 5 and 7 split)
    padded = load(tiny_model, batch={"max_size": 4, "buckets": [2, 4]})
    images = photos(count)

    # when both classify the same real photos
    fast, reference = padded.logits(images), plain.logits(images)

    # then there is one result per photo, the same as without padding
    assert_same_results(fast, reference, FP32_MAX_ABS_LOGIT_DIFF)
    probs = padded.classify(images)
    assert probs.shape == (count, padded.num_labels)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_padding_does_not_leak_into_int8_results(tiny_model):
    # given int8 (dynamic quantization scales activations by the whole batch's range)
    padded = load(tiny_model, precision="int8", batch={"max_size": 8, "buckets": [8]})
    unpadded = load(tiny_model, precision="int8")
    images = photos(3)

    # when 3 photos run padded to 8, and unpadded
    fast, reference = padded.logits(images), unpadded.logits(images)

    # then the results are those of the 3 photos alone: the padding copies a real frame,
    # so the quantization ranges are the same (rounding of another batch size remains)
    assert_same_results(fast, reference, FP32_MAX_ABS_LOGIT_DIFF)


def test_int8_with_buckets_agrees_loosely_with_the_plain_fp32_path(tiny_model, plain):
    # given torch's dynamic int8 quantization, batches padded to buckets
    int8 = load(tiny_model, precision="int8", batch={"max_size": 8, "buckets": [4, 8]})
    images = photos(7)

    # when it and the plain fp32 path classify the same real photos
    result = agreement(int8.logits(images), plain.logits(images))

    # then logits stay close (an accuracy trade-off: see labelcast verify)
    assert result["max_abs_logit_diff"] < INT8_MAX_ABS_LOGIT_DIFF
    assert result["top1_agreement_pct"] >= 50.0


def test_a_pipeline_with_buckets_classifies_every_frame_once(tiny_model, clips, tmp_path):
    # given two streams and buckets that most batches must be padded up to
    out = tmp_path / "events.jsonl"
    sources = [
        {"id": name, "type": "file", "path": str(clips["short"]), "sample": {"fps": 2}}
        for name in ("a", "b")
    ]
    config = {
        "name": "buckets",
        "model": {"id": str(tiny_model), "device": "cpu", "batch": {"max_size": 8, "buckets": [8]}},
        "sources": sources,
        "sinks": [{"type": "log", "path": str(out)}],
    }

    # when it runs
    result = run_cli("run", str(write_config(tmp_path, config)), timeout=120)

    # then each sampled frame has exactly one event, gapless per stream
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    for stream in ("a", "b"):
        seqs = [e["seq"] for e in events if e["stream"] == stream]
        assert seqs == list(range(1, 9))


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"batch": {"max_size": 32, "buckets": [8, 16]}}, "largest bucket (16)"),
        ({"batch": {"buckets": [0, 32]}}, "model.batch.buckets[0]"),
        ({"batch": {"buckets": []}}, "at least one batch size"),
        ({"compile": "torch-compile"}, "needs model.batch.buckets"),
        ({"compile": "always"}, "model.compile"),
        (
            {"compile": "torch-compile", "backend": "onnxruntime", "batch": {"buckets": [32]}},
            "needs model.backend: torch",
        ),
        (
            {"compile": "torch-compile", "batch": {"buckets": [*range(1, 10), 32]}},
            "at most 8",
        ),
    ],
)
def test_bucket_and_compile_settings_that_cannot_work_are_config_errors(
    tmp_path, clips, model, words
):
    config = {
        "name": "bad",
        "model": {"id": "some/model", **model},
        "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
        "sinks": [],
    }
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(write_config(tmp_path, config))


def test_the_fp32_reference_is_the_plain_path():
    config = ModelConfig.model_validate(
        {"compile": "torch-compile", "batch": {"max_size": 4, "buckets": [1, 4]}}
    )
    reference = reference_config(config)
    assert reference.compile == "none" and reference.batch.buckets is None
    assert reference.batch.max_size == 4


def test_torch_compile_over_buckets_gives_the_plain_fp32_results(tiny_model, plain):
    # given the model compiled for batches of 2 and 4 (at load time)
    compiled = load(tiny_model, compile="torch-compile", batch={"max_size": 4, "buckets": [2, 4]})

    # when it classifies batches that are padded (1, 3) and not (2, 4) and split (6)
    for count in (1, 2, 3, 4, 6):
        images = photos(count)
        # then the results are the plain path's
        assert_same_results(compiled.logits(images), plain.logits(images), FP32_MAX_ABS_LOGIT_DIFF)


@pytest.mark.gpu
def test_cuda_graphs_over_buckets_give_the_eager_fp16_results(tiny_model):
    # given the model in fp16 on CUDA, eager and compiled (CUDA graphs) for 2 and 4 frames
    require("cuda", torch.cuda.is_available(), "no CUDA device (this test is marked gpu)")
    eager = load(tiny_model, device="cuda", precision="fp16")
    compiled = load(
        tiny_model,
        device="cuda",
        precision="fp16",
        compile="torch-compile",
        batch={"max_size": 4, "buckets": [2, 4]},
    )
    for count in (1, 3, 4, 6):
        images = photos(count)
        # then padded, unpadded and split batches give the eager results, up to fp16
        # rounding (~0.01 here): top-1 agrees wherever it is not a near tie
        fast, reference = compiled.logits(images), eager.logits(images)
        assert fast.shape == reference.shape
        assert np.abs(fast - reference).max() <= FP16_MAX_ABS_LOGIT_DIFF
        top2 = np.sort(reference, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * FP16_MAX_ABS_LOGIT_DIFF
        assert (fast.argmax(axis=1) == reference.argmax(axis=1))[clear].all()
    # and logits handed out stay valid after the next replay of the same graph
    first_images, second_images = photos(4), photos(8)[4:]
    first = compiled.forward(compiled.preprocess(first_images))
    kept = first.clone()
    compiled.forward(compiled.preprocess(second_images))
    assert torch.equal(first, kept)
