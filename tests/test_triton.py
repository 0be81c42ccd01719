"""model.backend: triton against a real Triton server (``labelcast serve``, PyTriton) on loopback.

The server runs in a venv of Debian's Python (``tests/triton_server.py`` says why); under
``scripts/test.sh`` (``$LABELCAST_REQUIRE_TRITON``) or CI (``$CI``) a missing or broken
server venv fails these tests instead of skipping them.

Tolerances (tiny random BEiT, fp32 on the CPU on both sides): the server runs the same
torch code on the same uint8 pixels, so logits differ at most by the float rounding of
another batch size; we allow 1e-4 in logits and 1e-5 in scores, and require the same labels.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import free_port, read_events, require, require_module, write_config
from media import photo
from triton_server import TritonServer, missing_requirements

from labelcast import Pipeline, load_config
from labelcast.config import PipelineConfig
from labelcast.errors import BatchError, ConfigError, ModelError
from labelcast.model.classifier import Classifier, ModelConfig

require_module("tritonclient.grpc", "pip install labelcast[triton]")

MAX_ABS_LOGIT_DIFF = 1e-4
MAX_ABS_SCORE_DIFF = 1e-5
MODEL = "tiny"


@pytest.fixture(scope="module", autouse=True)
def _server_venv() -> None:
    reason = missing_requirements()
    if reason is not None and os.environ.get("LABELCAST_REQUIRE_TRITON"):
        pytest.fail(f"scripts/test.sh must run the Triton tests: {reason}")
    require("triton-server", reason is None, reason or "")


def triton_model(
    model_dir: Path, server: TritonServer | None, port: int = 0, **triton: Any
) -> dict:
    """A model section classifying on ``server`` (or on nothing listening at ``port``)."""
    url = server.grpc_url if server is not None else f"grpc://127.0.0.1:{port}"
    return {
        "id": str(model_dir),
        "backend": "triton",
        "triton": {"url": url, "model": MODEL, **triton},
    }


def make_server(
    folder: Path, model_dir: Path, *, control: Path | None = None, **serve: Any
) -> TritonServer:
    """A TritonServer (not started) on free loopback ports, serving the tiny model."""
    grpc, http, metrics = free_port(), free_port(), free_port()
    config = write_config(
        folder,
        {
            "name": "triton-server",
            "model": {
                "id": str(model_dir),
                "triton": {
                    "model": MODEL,
                    "serve": {
                        "bind": "127.0.0.1",
                        "grpc_port": grpc,
                        "http_port": http,
                        "metrics_port": metrics,
                        **serve,
                    },
                },
            },
            "sources": [{"id": "unused", "type": "file", "path": "unused.mp4"}],
        },
        "server.yaml",
    )
    # PyTriton binds Unix sockets inside its workspace, and a socket path has at most 107
    # characters: pytest's own folders (deeper still under pytest-xdist) can be longer.
    workspace = Path(tempfile.mkdtemp(prefix="lct-"))
    return TritonServer(
        config,
        grpc_port=grpc,
        http_port=http,
        model=MODEL,
        workspace=workspace,
        log_path=folder / "server.log",
        control=control,
    )


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """``labelcast serve`` (the CLI): batches of up to 4 frames, waiting 100 ms to fill one.

    Two gateways sending 2 frames each fill a batch at once; one alone waits 100 ms per
    request, so the other catches up: their requests meet even if one starts late.
    """
    folder = tmp_path_factory.mktemp("triton-server")
    started = make_server(folder, tiny_model, max_batch_size=4, max_queue_delay_us=100_000)
    started.start()
    yield started
    started.kill()


@pytest.fixture(scope="module")
def faulty_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """A server with a fault switch (tests/triton_server.py), not started: tests start it."""
    folder = tmp_path_factory.mktemp("triton-faulty")
    control = folder / "faults.json"
    control.write_text("{}")
    faulty = make_server(folder, tiny_model, control=control, max_batch_size=4)
    yield faulty
    faulty.kill()


def running(server: TritonServer, **faults: Any) -> TritonServer:
    """Start ``server`` if it is not running, with these faults."""
    server.set_faults(**faults)
    if server.process is None:
        server.start()
    return server


def photos() -> list[np.ndarray]:
    return [
        photo(name, size)
        for name in ("chelsea", "coffee", "astronaut", "rocket")
        for size in (None, (150, 200))
    ]


# -- the same results as local inference -----------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_same_labels_and_scores_as_local_inference(tiny_model, server, protocol):
    # Given the same checkpoint loaded locally and through Triton (gRPC or HTTP)
    local = Classifier.load(ModelConfig(id=str(tiny_model)))
    model = triton_model(tiny_model, server)
    if protocol == "http":
        model["triton"]["url"] = server.http_url
    remote = Classifier.load(ModelConfig.model_validate(model))
    # When both classify the same photos (several sizes; 16 frames: 4 requests of 4)
    images = photos() * 2
    remote_logits, local_logits = remote.logits(images), local.logits(images)
    remote_probs, local_probs = remote.classify(images), local.classify(images)
    # Then labels and scores agree within float rounding, and the server says what it runs
    assert np.abs(remote_logits - local_logits).max() <= MAX_ABS_LOGIT_DIFF
    assert np.abs(remote_probs - local_probs).max() <= MAX_ABS_SCORE_DIFF
    assert (remote_probs.argmax(axis=1) == local_probs.argmax(axis=1)).all()
    assert remote.info.backend == "triton" and remote.info.precision == "fp32"
    assert remote.remote_status() is None


def test_pipeline_events_through_triton_equal_local_ones(tiny_model, clips, server, tmp_path):
    # Given one pipeline classifying locally and one through Triton, over the same clip
    def events(model: dict) -> list[dict]:
        config = write_config(
            tmp_path,
            {
                "name": "gw",
                "model": model,
                "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
                "sinks": [],
                "labels": {"top_k": 3, "min_score": 0.0},
            },
            f"{model.get('backend', 'torch')}.yaml",
        )
        return [e.to_dict() for e in Pipeline(load_config(config)).events()]

    local = events({"id": str(tiny_model)})
    remote = events(triton_model(tiny_model, server))
    # Then every event matches: stream, seq, pts, labels and scores, model info
    assert len(remote) == len(local) > 0
    for ours, theirs in zip(remote, local, strict=True):
        assert (ours["stream"], ours["seq"], ours["pts"]) == (
            theirs["stream"],
            theirs["seq"],
            theirs["pts"],
        )
        assert [lab["label"] for lab in ours["labels"]] == [
            lab["label"] for lab in theirs["labels"]
        ]
        scores = [lab["score"] for lab in ours["labels"]]
        assert scores == pytest.approx(
            [lab["score"] for lab in theirs["labels"]], abs=MAX_ABS_SCORE_DIFF
        )
        assert ours["model"] == theirs["model"] and ours["dropped"] == 0


# -- two gateways, one server ----------------------------------------------------------------


def start_gateway(config: Path, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    stderr = tmp_path / f"{name}.stderr"
    process = subprocess.Popen(
        [sys.executable, "-m", "labelcast", "run", "--no-progress", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("wb"),
    )
    return process, stderr


def summary(stderr: str, stream: str) -> dict[str, int]:
    match = re.search(
        rf"stream {stream}: (\d+) frames decoded, (\d+) sampled, (\d+) classified, (\d+) dropped",
        stderr,
    )
    assert match, stderr[-3000:]
    decoded, sampled, classified, dropped = map(int, match.groups())
    return {"decoded": decoded, "sampled": sampled, "classified": classified, "dropped": dropped}


def test_two_gateway_processes_share_one_server(tiny_model, clips, server, tmp_path):
    # Given two gateway processes, each sending batches of at most 2 frames
    before = server.batch_sizes()
    gateways = []
    for name in ("east", "west"):
        out = tmp_path / f"{name}.jsonl"
        config = write_config(
            tmp_path,
            {
                "name": name,
                "model": {
                    **triton_model(tiny_model, server),
                    "batch": {"max_size": 2, "max_wait_ms": 20},
                },
                "sources": [
                    {"id": "cam", "type": "file", "path": str(clips["long"]), "sample": {"fps": 5}}
                ],
                "sinks": [{"type": "log", "path": str(out)}],
            },
            f"{name}.yaml",
        )
        gateways.append((name, out, *start_gateway(config, tmp_path, name)))
    # When both run at once through the server
    for _, _, process, _ in gateways:
        assert process.wait(120) == 0
    # Then each got every event: all sampled frames classified, seq without gaps, none dropped
    for _name, out, _, stderr in gateways:
        counts = summary(stderr.read_text(), "cam")
        events = read_events(out)
        assert counts["sampled"] == counts["classified"] == len(events) == 100
        assert [e["seq"] for e in events] == list(range(1, 101))
        assert sum(e["dropped"] for e in events) == 0
    # And Triton's statistics show batches larger than either gateway ever sends (2)
    after = server.batch_sizes()
    formed = {
        size: after[size] - before.get(size, 0)
        for size in after
        if after[size] > before.get(size, 0)
    }
    assert max(formed) > 2, formed
    # (the 200 frames, and a 1-frame request per gateway connection asking what is served)
    assert 202 <= sum(size * count for size, count in formed.items()) <= 210, formed


# -- faults -----------------------------------------------------------------------------------


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def triton_reasons(ops: str) -> list[str]:
    status, body = get(f"{ops}/readyz")
    return [r for r in body.get("reasons", []) if r.startswith("triton")] if status == 503 else []


def test_server_down_at_start_frozen_killed_and_restarted(
    tiny_model, clips, faulty_server, tmp_path
):
    # Given a gateway whose Triton server is down when it starts (2 s timeout, 1 retry)
    faulty_server.kill()
    faulty_server.set_faults(delay_s=0.05)  # the server answers, a little slowly
    ops_port = free_port()
    out = tmp_path / "events.jsonl"
    timeout_s = 2.0
    config = write_config(
        tmp_path,
        {
            "name": "gw",
            "model": {
                **triton_model(
                    tiny_model,
                    faulty_server,
                    timeout_s=timeout_s,
                    retries=1,
                    reconnect={"min_s": 0.2, "max_s": 1.0},
                ),
                "batch": {"max_size": 2, "max_wait_ms": 20},
            },
            "sources": [
                {"id": "cam", "type": "file", "path": str(clips["long"]), "sample": {"fps": 5}}
            ],
            "sinks": [{"type": "log", "path": str(out)}],
            "server": {"bind": f"127.0.0.1:{ops_port}"},
        },
    )
    ops = f"http://127.0.0.1:{ops_port}"
    process, stderr = start_gateway(config, tmp_path, "gateway")
    try:
        # Then it runs, alive but not ready, saying the server is unreachable
        reasons = wait_for(lambda: _ops_up(ops) and triton_reasons(ops), 60, "not-ready at start")
        assert "unreachable" in reasons[0]
        assert get(f"{ops}/healthz")[0] == 200
        # When the server comes up, events flow
        faulty_server.start()
        wait_for(lambda: len(read_events(out)) >= 10 if out.exists() else False, 60, "events")
        # When the server freezes (answers nothing): not ready within the timeout
        faulty_server.freeze()
        frozen_at = time.monotonic()
        reasons = wait_for(lambda: triton_reasons(ops), 3 * timeout_s + 5, "not-ready when frozen")
        assert time.monotonic() - frozen_at <= 3 * timeout_s + 5
        assert "timeout_s" in reasons[0]
        # When it is killed: not ready, unreachable; and still alive (a down server is no hang)
        faulty_server.kill()
        wait_for(lambda: any("unreachable" in r for r in triton_reasons(ops)), 30, "unreachable")
        assert get(f"{ops}/healthz")[0] == 200
        stalled = len(read_events(out))
        time.sleep(1.0)
        assert len(read_events(out)) == stalled  # nothing is classified meanwhile
        # When it is restarted, the gateway recovers and finishes the clip
        faulty_server.start()
        assert process.wait(120) == 0
    finally:
        process.kill()
    log = stderr.read_text()
    assert "connected to model 'tiny'" in log and log.count("connected to model 'tiny'") >= 2
    # Then every sampled frame was classified (a file source waits, it never drops)
    events = read_events(out)
    counts = summary(log, "cam")
    assert counts["sampled"] == counts["classified"] == len(events) == 100
    assert [e["seq"] for e in events] == list(range(1, 101))
    assert counts["dropped"] == sum(e["dropped"] for e in events) == 0


def _ops_up(ops: str) -> bool:
    try:
        get(f"{ops}/healthz")
    except OSError:
        return False
    return True


def slow_gateway_config(tiny_model: Path, server: TritonServer) -> ModelConfig:
    return ModelConfig.model_validate(
        triton_model(
            tiny_model, server, timeout_s=0.5, retries=1, reconnect={"min_s": 0.1, "max_s": 0.2}
        )
    )


def test_requests_time_out_within_timeout_s_and_the_batch_is_dropped(tiny_model, faulty_server):
    # Given a gateway connected to a server that then takes 1.5 s per request (timeout 0.5 s)
    running(faulty_server)
    config = slow_gateway_config(tiny_model, faulty_server)
    classifier = Classifier.load(config)
    assert classifier.remote_status() is None
    faulty_server.set_faults(delay_s=1.5)
    # When it classifies a batch
    started = time.monotonic()
    with pytest.raises(BatchError, match="count as dropped") as raised:
        classifier.classify(photos()[:2])
    elapsed = time.monotonic() - started
    # Then each of the 1 + retries attempts gave up after timeout_s, and the batch was dropped
    triton = config.triton
    attempts = triton.retries + 1
    assert (
        attempts * triton.timeout_s * 0.9
        <= elapsed
        <= attempts * (triton.timeout_s + triton.reconnect.max_s) + 1.5
    )
    assert "timeout_s" in str(raised.value)
    assert "timeout_s" in (classifier.remote_status() or "")
    # When the server is fast again, the same classifier recovers
    faulty_server.set_faults()
    time.sleep(3.5)  # the server finishes the requests the gateway gave up on
    assert classifier.classify(photos()[:2]).shape == (2, 10)
    assert classifier.remote_status() is None


def test_a_batch_the_server_keeps_failing_is_counted_as_dropped(tiny_model, clips, faulty_server):
    # Given a pipeline (8 frames, batches of 2, 1 retry) on a server that will fail 3 requests
    running(faulty_server)
    model = slow_gateway_config(tiny_model, faulty_server).model_dump()
    model["batch"] = {"max_size": 2, "max_wait_ms": 2000}
    config = short_pipeline(model, clips["short"])
    classifier = Classifier.load(config.model)
    faulty_server.set_faults(fail=3)
    # When it runs: the 1st batch fails twice (dropped), the 2nd fails once, then succeeds
    pipeline = Pipeline(config, classifier=classifier)
    events = list(pipeline.events())
    # Then the dropped batch's 2 frames are counted, in the next event, and all others classified
    stats = pipeline.stats["cam"]
    assert stats.sampled == 8
    assert stats.classified == len(events) == 6 and stats.dropped == 2
    assert [e.seq for e in events] == list(range(1, 7))
    assert [e.dropped for e in events] == [2, 0, 0, 0, 0, 0]


def short_pipeline(model: dict, clip: Path) -> PipelineConfig:
    """8 frames of the short clip, no sinks."""
    return PipelineConfig.model_validate(
        {
            "name": "gw",
            "model": model,
            "sources": [{"id": "cam", "type": "file", "path": str(clip), "sample": {"fps": 2}}],
            "sinks": [],
        }
    )


def test_when_every_batch_fails_every_sampled_frame_counts_as_dropped(
    tiny_model, clips, faulty_server
):
    # Given a pipeline on a server that fails every request
    running(faulty_server)
    model = slow_gateway_config(tiny_model, faulty_server).model_dump()
    model["batch"] = {"max_size": 2, "max_wait_ms": 2000}
    config = short_pipeline(model, clips["short"])
    classifier = Classifier.load(config.model)
    faulty_server.set_faults(fail=1000)
    try:
        # When it runs: no event at all
        pipeline = Pipeline(config, classifier=classifier)
        assert list(pipeline.events()) == []
    finally:
        faulty_server.set_faults()
    # Then the run's counts still account for every sampled frame, as dropped
    stats = pipeline.stats["cam"]
    assert stats.sampled == stats.dropped == 8 and stats.classified == 0


def test_abort_ends_the_wait_for_a_down_server(tiny_model):
    # Given a gateway classifying against a port where nothing listens
    classifier = Classifier.load(
        ModelConfig.model_validate(triton_model(tiny_model, None, free_port()))
    )
    assert "unreachable" in (classifier.remote_status() or "")
    stop = threading.Event()
    result: list[BaseException] = []

    def classify() -> None:
        try:
            classifier.classify(photos()[:1], stop=stop)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=classify, name="classify")
    thread.start()
    # When it has waited a while and is stopped
    time.sleep(1.0)
    assert thread.is_alive()
    before = classifier.remote_activity()
    stop.set()
    thread.join(5)
    # Then the wait ended at once with BatchError, and the waiting showed activity
    assert not thread.is_alive()
    assert isinstance(result[0], BatchError)
    assert before is not None and time.monotonic() - before < 2.0


# -- check, export, config -------------------------------------------------------------------


def test_check_reports_a_server_that_is_down_and_accepts_a_running_one(
    tiny_model, clips, server, tmp_path
):
    from labelcast.cli import _check

    source = [{"id": "a", "type": "file", "path": str(clips["short"])}]
    up = write_config(
        tmp_path, {"model": triton_model(tiny_model, server), "sources": source}, "up.yaml"
    )
    down = write_config(
        tmp_path,
        {"model": triton_model(tiny_model, None, free_port(), timeout_s=1), "sources": source},
        "down.yaml",
    )
    assert _check(load_config(up)) == 0
    assert _check(load_config(down)) == 2


def test_a_server_with_another_checkpoint_is_refused(tiny_model, server, tmp_path):
    # Given a gateway whose checkpoint has other labels than the served one
    from conftest import make_tiny_beit

    other = make_tiny_beit(tmp_path / "other", seed=1)
    config_json = json.loads((other / "config.json").read_text())
    config_json["id2label"]["0"] = "something else"
    (other / "config.json").write_text(json.dumps(config_json))
    # When it connects, then it is not ready, naming the mismatch
    classifier = Classifier.load(ModelConfig.model_validate(triton_model(other, server)))
    assert "other labels or preprocessing" in (classifier.remote_status() or "")


def test_export_triton_repo_writes_a_stock_triton_model(tiny_model, server, tmp_path):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from labelcast.cli import _parser
    from labelcast.commands.export import export_triton_repo, format_export
    from labelcast.model.backends import triton_client as triton_backend

    config = write_config(
        tmp_path,
        {
            "model": {**triton_model(tiny_model, server), "triton": {"model": "beit"}},
            "sources": [{"id": "a", "type": "file", "path": "x.mp4"}],
        },
    )
    repo = tmp_path / "repo"
    # When the model is exported as a Triton model repository
    # (in process: the CLI's arguments, then what its export command runs)
    args = _parser().parse_args(["export", str(config), "--triton-repo", str(repo)])
    assert args.triton_repo == repo and args.output is None
    result = export_triton_repo(load_config(config).model, repo)
    assert "Triton model 'beit'" in format_export(result)
    assert result["check"]["max_abs_logit_diff"] <= 1e-3
    # Then config.pbtxt is a valid Triton model config with dynamic batching and uint8 input
    parsed = text_format.Parse(
        (repo / "beit/config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert parsed.backend == "onnxruntime" and parsed.max_batch_size == 32
    assert parsed.HasField("dynamic_batching")
    as_json = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
    # And a gateway accepts its signature and recognises the checkpoint it names
    local = Classifier.load(ModelConfig(id=str(tiny_model)))
    expected = triton_backend.Expected(
        str(tiny_model), _fingerprint(tiny_model), (224, 224), 10, None
    )
    assert triton_backend._check_signature(as_json, expected, "beit") == 32
    model = triton_backend.TritonModel(
        ModelConfig.model_validate(triton_model(tiny_model, server)).triton, expected
    )
    served = model._identify(as_json)
    assert served is not None and served.precision == "fp32" and served.backend == "onnxruntime"
    # And the ONNX graph normalises uint8 pixels itself: the same logits as torch
    import onnxruntime
    import torch

    images = photos()
    pixels = local.preprocessor.pixels(images, torch.device("cpu")).contiguous().numpy()
    session = onnxruntime.InferenceSession(
        str(repo / "beit/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"pixels": pixels})
    assert np.abs(logits - local.logits(images)).max() <= 1e-3


def _fingerprint(model_dir: Path) -> str:
    from labelcast.model.backends.triton_served import fingerprint
    from labelcast.model.checkpoint import resolve_checkpoint

    return fingerprint(resolve_checkpoint(str(model_dir), None, allow_pickle=False))


def test_triton_config_is_validated(tiny_model, tmp_path):
    # A URL without a scheme or port, and ONNX settings, are config errors naming the key
    source = [{"id": "a", "type": "file", "path": "x.mp4"}]
    for model, key in (
        ({"backend": "triton", "triton": {"url": "triton-host"}}, "triton.url"),
        ({"backend": "triton", "onnx": {"quantize": "int8"}}, "onnx"),
        ({"backend": "triton", "triton": {"retries": -1}}, "retries"),
    ):
        path = write_config(tmp_path, {"model": model, "sources": source})
        with pytest.raises(ConfigError, match=key):
            load_config(path)
    # A checkpoint whose input size varies with the frame cannot be served
    varying = tmp_path / "varying"
    varying.mkdir()
    for name in ("config.json",):
        (varying / name).write_text((tiny_model / name).read_text())
    (varying / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "size": {"shortest_edge": 224},
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            }
        )
    )
    with pytest.raises(ModelError, match="backend triton needs a fixed size"):
        Classifier.load(ModelConfig.model_validate(triton_model(varying, None, free_port())))


def test_uint8_and_normalise_halves_make_the_same_input_as_the_whole(tiny_model):
    import torch

    local = Classifier.load(ModelConfig(id=str(tiny_model)))
    images = photos()
    pre = local.preprocessor
    cpu = torch.device("cpu")
    pixels = pre.pixels(images, cpu)
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (len(images), 3, 224, 224)
    assert torch.equal(pre.normalise(pixels, torch.float32), pre(images, cpu, torch.float32))
