"""Errors point at the right place: the --set or file a bad value came from, streams by id,
the nearest valid key; check and verify report every cheap problem before loading a model;
verify does not compare fp32 with itself; library warnings stay out of a user's way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli, write_config
from media import make_clip, photo

# Runs the labelcast command in a fresh interpreter, then says whether it imported torch
# (what loading a model needs): a cheap answer must not have.
_MAIN_THEN_TORCH = (
    "import sys; from labelcast.cli import main; code = main(sys.argv[1:]); "
    "print('torch imported:', 'torch' in sys.modules); sys.exit(code)"
)


def run_main(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``labelcast ARGS`` like run_cli, printing whether torch was imported."""
    return subprocess.run(
        [sys.executable, "-c", _MAIN_THEN_TORCH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# verify reads only the model settings; a config still needs a source.
UNUSED_SOURCE = [{"id": "a", "type": "file", "path": "unused.mp4"}]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-second clip: check opens every source before it loads the model."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    return make_clip(folder / "tiny.mp4", seconds=1, fps=5, size=(64, 64))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def two_streams(tmp_path: Path, **keys: object) -> Path:
    config = {
        "sources": [
            {"id": "door", "type": "file", "path": "door.mp4"},
            {"id": "lobby", "type": "file", "path": "lobby.mp4"},
        ],
        **keys,
    }
    return write_config(tmp_path, config)


# -- 3, 4: where a bad value came from, and what was meant ---------------------------------


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_misspelled_set_key_is_blamed_on_the_set_and_the_nearest_key_named(tmp_path, command):
    # Given a valid config file and a misspelled --set key
    path = two_streams(tmp_path)
    # When labelcast runs or checks it
    result = run_cli(command, str(path), "--set", "model.devcie=cpu", timeout=60)
    # Then it exits 2, blaming the --set (not the file) and naming the key meant
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert line.endswith("--set model.devcie=cpu: unknown key; did you mean model.device?")
    assert str(path) not in line


def test_file_errors_name_streams_and_sinks_and_the_nearest_key(tmp_path):
    # Given a file with mistakes in a stream, in a sink, and a misspelled top-level key
    path = write_config(
        tmp_path,
        {
            "nmae": "x",
            "sources": [
                {"id": "door", "type": "file", "path": "door.mp4", "sample": {"fps": "fast"}},
                {"id": "lobby", "type": "camra"},
            ],
            "sinks": [{"type": "mqtt", "qos": 3}, {"type": "log", "paht": "x.jsonl"}],
        },
    )
    # When it is checked
    result = run_cli("check", str(path), timeout=60)
    # Then every problem names the file, the stream by id and the sink by its type
    assert result.returncode == 2
    assert f"{path}: 5 problems:" in result.stderr
    for fragment in (
        "\n  nmae: unknown key; did you mean name?",
        "\n  sinks[log].paht: unknown key; did you mean sinks[log].path?",
        "\n  sources[door].sample.fps: Input should be a valid number",
        "\n  sources[lobby].type: unknown or missing type (expected one of: file, rtsp, stream, "
        "camera, webrtc); did you mean camera?",
        "\n  sinks[mqtt].qos: Input should be 0, 1 or 2",
    ):
        assert fragment in result.stderr, result.stderr
    assert "sources.0" not in result.stderr and "sinks.1" not in result.stderr


def test_set_errors_name_the_set_each_and_streams_by_id(tmp_path):
    # Given a file with one mistake and two bad --set values, one in the [id] form
    path = two_streams(tmp_path, sinks=[{"type": "mqtt"}, {"type": "mqtt", "port": "x"}])
    # When it is checked
    result = run_cli(
        "check",
        str(path),
        "--set",
        "sources.lobby.sample.fps=fast",
        "--set",
        "sources[door].sampel.fps=2",
        timeout=60,
    )
    # Then each problem says where its value came from
    assert result.returncode == 2
    assert "3 problems in the config:\n" in result.stderr
    for fragment in (
        "\n  --set sources[door].sampel.fps=2: sources[door].sampel: unknown key; "
        "did you mean sources[door].sample?",
        "\n  --set sources.lobby.sample.fps=fast: Input should be a valid number",
        # Two sinks of one type are told apart by index.
        f"\n  {path}: sinks[1].port: Input should be a valid integer",
    ):
        assert fragment in result.stderr, result.stderr


def test_set_errors_mask_secrets_and_share_the_blame_with_the_file(tmp_path):
    # Given an mqtt sink without a user name, and a password given on the command line
    path = two_streams(tmp_path, sinks=[{"type": "mqtt"}])
    result = run_cli("check", str(path), "--set", "sinks.mqtt.password=hunter2", timeout=60)
    # Then the message names both, and never the password
    assert result.returncode == 2
    assert "hunter2" not in result.stderr
    assert (
        f"{path} with --set sinks.mqtt.password=***: sinks[mqtt]: password: set username too"
        in result.stderr
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "sources.door.path=${LABELCAST_TEST_UNSET}",
            "--set sources.door.path=${LABELCAST_TEST_UNSET}: environment variable "
            "LABELCAST_TEST_UNSET is not set",
        ),
        (
            "sources.hall.path=x",
            "--set sources.hall.path=x: sources has no item hall (its items: door, lobby)",
        ),
        ("sinks.mqtt.qos=7", "--set sinks.mqtt.qos=7: Input should be 0, 1 or 2"),
    ],
)
def test_other_set_errors_name_the_set(tmp_path, override, message):
    path = two_streams(tmp_path, sinks=[{"type": "mqtt"}])
    result = run_cli("check", str(path), "--set", override, timeout=60)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert line.endswith(message), result.stderr


def test_set_takes_the_names_errors_give():
    from labelcast import parse_config

    text = (
        "sources: [{id: door, type: file, path: a.mp4}, {id: lobby, type: file, path: b.mp4}]\n"
        "sinks: [{type: log, path: x.jsonl}, {type: mqtt}]"
    )
    config = parse_config(
        text,
        overrides=["sources[lobby].sample.every=3", "sinks[mqtt].qos=0", "sinks.log.path=y.jsonl"],
    )
    assert config.sources[1].sample.every == 3
    assert config.sinks[1].qos == 0  # type: ignore[attr-defined]
    assert config.sinks[0].path == "y.jsonl"  # type: ignore[attr-defined]


# -- 5: cheap problems first, all of them ---------------------------------------------------


def test_check_lists_every_cheap_problem_without_loading_the_model(tmp_path, tiny_model):
    # Given a good model, but two missing clips and a log file under a regular file
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = {
        "model": {"id": str(tiny_model)},
        "sources": [
            {"id": "door", "type": "file", "path": str(tmp_path / "door.mp4")},
            {"id": "lobby", "type": "file", "path": str(tmp_path / "lobby.mp4")},
        ],
        "sinks": [{"type": "log", "path": str(blocker / "events.jsonl")}],
    }
    # When it is checked
    result = run_main("check", str(write_config(tmp_path, config)))
    # Then all three are listed, exit 2, and the model was never loaded (torch not imported)
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 3, result.stderr
    assert errors[0].endswith(f"stream 'door': video file not found: {tmp_path / 'door.mp4'}")
    assert errors[1].endswith(f"stream 'lobby': video file not found: {tmp_path / 'lobby.mp4'}")
    assert errors[2].endswith(f"log sink: {blocker / 'events.jsonl'} is not writable")
    assert "the model was not loaded" in result.stderr
    assert "loading model" not in result.stderr
    assert "torch imported: False" in result.stdout


def test_check_names_a_missing_model_directory_with_the_other_problems(tmp_path):
    config = {
        "model": {"id": str(tmp_path / "no-model")},
        "sources": [{"id": "door", "type": "file", "path": str(tmp_path / "door.mp4")}],
    }
    result = run_main("check", str(write_config(tmp_path, config)))
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert errors[0].endswith(f"model.id '{tmp_path / 'no-model'}': no such directory")
    assert errors[1].endswith("stream 'door': video file not found: " + str(tmp_path / "door.mp4"))
    assert "torch imported: False" in result.stdout


def save_images(folder: Path, names: tuple[str, ...] = ("coffee", "rocket")) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(photo(name, (64, 64))).save(folder / f"{name}.png")
    return folder


def test_verify_lists_every_problem_with_the_images_before_loading_the_model(tmp_path, tiny_model):
    # Given an unlabelled folder with one good and two broken images, and --expect-top1
    images = save_images(tmp_path / "images", ("coffee",))
    (images / "broken.png").write_bytes(b"not a png")
    (images / "empty.jpg").write_bytes(b"")
    config = write_config(tmp_path, {"model": {"id": str(tiny_model)}, "sources": UNUSED_SOURCE})
    # When verify runs
    result = run_main("verify", str(config), "--images", str(images), "--expect-top1", "80")
    # Then every problem is listed, exit 2, no model loaded
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 3, result.stderr
    assert f"{images / 'broken.png'}: not a readable image" in errors[0]
    assert f"{images / 'empty.jpg'}: not a readable image" in errors[1]
    assert errors[2].endswith(f"--expect-top1 needs a labelled folder ({images}/<label>/*.jpg)")
    assert "torch imported: False" in result.stdout
    # And a missing folder is named as such, with a missing model directory
    config = write_config(
        tmp_path, {"model": {"id": str(tmp_path / "gone")}, "sources": UNUSED_SOURCE}
    )
    result = run_main("verify", str(config), "--images", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert errors[0].endswith(f"model.id '{tmp_path / 'gone'}': no such directory")
    assert errors[1].endswith(f"--images {tmp_path / 'nowhere'}: no such directory")
    assert "torch imported: False" in result.stdout


# -- 6: verify of an fp32 model ---------------------------------------------------------------


def test_verify_of_an_fp32_model_says_there_is_nothing_to_compare_and_loads_it_once(
    tmp_path, tiny_model
):
    # Given a model configured in fp32 on torch: the reference itself
    images = save_images(tmp_path / "images")
    config = write_config(
        tmp_path,
        {
            "model": {"id": str(tiny_model), "device": "cpu", "precision": "fp32"},
            "sources": UNUSED_SOURCE,
        },
    )
    # When verify runs with an agreement threshold
    result = run_cli(
        "verify",
        str(config),
        "--images",
        str(images),
        "--min-agreement",
        "99",
        "--json",
        timeout=120,
    )
    # Then it loads the model once, and reports no agreement rather than one with itself
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("loading model") == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["agreement"] is None and report["reference"] is None
    # And it says there is nothing to compare, and skips the threshold
    from labelcast.commands.verify import format_report

    text = format_report(report)
    assert (
        "agreement with fp32: nothing to compare: the model runs in fp32 on torch (cpu), the "
        "reference itself; to measure a faster precision, run verify with "
        "--set model.precision=int8 (or bf16)"
    ) in text
    assert (
        "SKIP: top-1 agreement (minimum 99.00%): nothing to compare (the model is the fp32 "
        "reference)" in text
    )
    assert report["passed"] is True


# -- 7: library warnings ----------------------------------------------------------------------


def test_library_warnings_show_only_at_debug_level(tmp_path, tiny_model, tiny_clip):
    # Given an int8 model, whose quantization makes torch warn about its own deprecations
    config = write_config(
        tmp_path,
        {
            "model": {"id": str(tiny_model), "device": "cpu", "precision": "int8"},
            "sources": [{"id": "a", "type": "file", "path": str(tiny_clip)}],
            "sinks": [{"type": "log", "path": "-"}],
        },
    )
    # When it is checked at the default level, then no warning reaches the user
    quiet = run_cli("check", str(config), timeout=120)
    assert "model " in quiet.stderr and "10 labels" in quiet.stderr, quiet.stderr
    assert "UserWarning" not in quiet.stderr and "Warning:" not in quiet.stderr
    # And at DEBUG it is logged, as a log record
    loud = run_cli("--log-level", "DEBUG", "check", str(config), timeout=120)
    routed = [
        line for line in loud.stderr.splitlines() if " WARNING " in line and "py.warnings" in line
    ]
    assert any("UserWarning" in line for line in routed), loud.stderr


def test_labelcast_warnings_still_show_at_info_level():
    # Given logging set up as the command does, and a warning from a library's module and
    # one from labelcast's
    code = """
import warnings
from labelcast.logs import setup_logging
setup_logging("INFO")
for module in ("torch.fake", "transformers.fake", "labelcast.fake"):
    exec("import warnings; warnings.warn('from ' + __name__, FutureWarning)", {"__name__": module})
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    # Then only labelcast's shows
    assert result.returncode == 0, result.stderr
    assert "FutureWarning: from labelcast.fake" in result.stderr
    assert "torch.fake" not in result.stderr and "transformers.fake" not in result.stderr


@pytest.mark.parametrize(
    "override",
    [
        "sinks[mqtt].password=hunter2",
        "sinks.0.password=hunter2",
        "sinks.mqtt={host: x, password: hunter2}",
        'sinks.mqtt.password="hunter2',  # not even valid YAML
    ],
)
def test_set_values_that_look_secret_are_masked_in_every_form(override):
    from labelcast import ConfigError, parse_config

    text = "sources: [{id: a, type: file, path: a.mp4}]\nsinks: [{type: mqtt}]"
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "x.yaml", [override])
    assert "hunter2" not in str(raised.value)
    assert "=***" in str(raised.value)
