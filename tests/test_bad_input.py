"""Bad input gets one clear message, never a traceback, and nothing else is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import by_stream, read_events, require_module, run_cli, write_config


def base_config(tiny_model: Path, out: Path) -> dict:
    return {
        "name": "bad",
        "model": {"id": str(tiny_model)},
        "sources": [],
        "sinks": [{"type": "log", "path": str(out)}],
    }


def assert_one_clear_message(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert errors, stderr
    for needle in needles:
        assert needle in stderr, stderr


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        (
            "sources: [{id: a, type: file, path: x.mp4, colour: red}]",
            ["sources[a].colour: unknown key"],
        ),
        (
            "sources: [{id: a, type: file, path: x.mp4, sample: {fps: fast}}]",
            ["sources[a].sample.fps", "valid number"],
        ),
        (
            "model: {batch: {max_size: -1}}\nsources: [{id: a, type: file, path: x.mp4}]",
            ["model.batch.max_size", "greater than or equal to 1"],
        ),
        (
            "sources: [{id: a, type: file, path: '${LABELCAST_TEST_UNSET}'}]",
            ["sources[a].path", "LABELCAST_TEST_UNSET is not set"],
        ),
        ("!!python/object/apply:os.system ['echo pwned']", ["unsupported YAML tag"]),
        ("sources: [{id: a, type: camcorder}]", ["sources[a].type", "unknown or missing type"]),
        (
            "sources: [{id: a, type: file, path: x}, {id: a, type: file, path: y}]",
            ["stream id 'a' is used by more than one source"],
        ),
        ("sources: {id: a}", ["sources", "valid list"]),
        ("name: [1, 2\n", ["line"]),
    ],
)
@pytest.mark.parametrize("command", ["run", "check"])
def test_config_errors_exit_2_naming_the_field(tmp_path, yaml_text, needles, command):
    # Given a config file with one mistake
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    # When labelcast runs or checks it
    result = run_cli(command, str(path), timeout=60)
    # Then it exits 2 with one message naming the file and the field, and no traceback
    assert result.returncode == 2
    assert_one_clear_message(result.stderr, str(path), *needles)
    assert "pwned" not in result.stdout


def test_unset_variable_error_is_raised_and_a_set_one_is_substituted(tmp_path, tiny_model):
    from labelcast import ConfigError, parse_config

    text = "sources: [{id: a, type: file, path: '${LABELCAST_CLIP}/a.mp4'}]"
    with pytest.raises(
        ConfigError, match=r"sources\[a\]\.path: environment variable LABELCAST_CLIP"
    ):
        parse_config(text)
    config = parse_config(text.replace("${LABELCAST_CLIP}", "${HOME}"))
    assert config.sources[0].path.endswith("/a.mp4") and "${" not in config.sources[0].path


def test_set_overrides_keys_by_dotted_path_and_stream_id():
    from labelcast import ConfigError, parse_config

    text = "sources: [{id: door, type: file, path: a.mp4}, {id: lobby, type: file, path: b.mp4}]"
    config = parse_config(
        text,
        overrides=[
            "sources.lobby.sample.every=3",
            "model.batch.max_size=4",
            "sources.0.path=c.mp4",
        ],
    )
    assert config.sources[1].sample.every == 3 and config.sources[1].sample.fps is None
    assert config.model.batch.max_size == 4 and config.sources[0].path == "c.mp4"
    with pytest.raises(ConfigError, match=r"--set sources\.hall\.path=x: sources has no item hall"):
        parse_config(text, overrides=["sources.hall.path=x"])
    with pytest.raises(ConfigError, match=r"model\.batch\.max_size"):
        parse_config(text, overrides=["model.batch.max_size=big"])


def test_missing_config_file_is_one_message(tmp_path):
    result = run_cli("run", str(tmp_path / "nope.yaml"), timeout=60)
    assert result.returncode == 2
    assert_one_clear_message(result.stderr, "config file not found")


def test_schema_prints_the_json_schema():
    result = run_cli("schema", timeout=60)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert {"name", "model", "sources", "labels", "sinks"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


@pytest.fixture(scope="module")
def damaged_media(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("damaged")
    garbage = folder / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 400)
    whole = clips["faststart"].read_bytes()
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 2])
    return {"garbage": garbage, "truncated": truncated, "missing": folder / "missing.mp4"}


@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_unreadable_file_fails_its_stream_only(tiny_model, clips, damaged_media, tmp_path, kind):
    # Given a good clip and an unreadable one in one pipeline
    out = tmp_path / "events.jsonl"
    config = base_config(tiny_model, out)
    config["sources"] = [
        {"id": "good", "type": "file", "path": str(clips["short"]), "sample": {"fps": 2}},
        {"id": "bad", "type": "file", "path": str(damaged_media[kind])},
    ]
    # When it runs
    result = run_cli("run", str(write_config(tmp_path, config)))
    # Then the bad stream's error names the file, the good stream is complete, exit code 1
    assert result.returncode == 1
    assert_one_clear_message(result.stderr, str(damaged_media[kind]), "'bad'")
    streams = by_stream(read_events(out))
    assert len(streams["good"]) == 8 and "bad" not in streams


def test_truncated_file_gives_events_up_to_the_damage(tiny_model, clips, damaged_media, tmp_path):
    # Given a 6 s clip cut in half, and a good clip
    out = tmp_path / "events.jsonl"
    config = base_config(tiny_model, out)
    config["sources"] = [
        {"id": "good", "type": "file", "path": str(clips["short"]), "sample": {"fps": 2}},
        {
            "id": "cut",
            "type": "file",
            "path": str(damaged_media["truncated"]),
            "sample": {"fps": 2},
        },
    ]
    # When it runs
    result = run_cli("run", str(write_config(tmp_path, config)))
    # Then the cut stream has events for its first part and a warning, the other is complete
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert any(str(damaged_media["truncated"]) in line for line in warnings), result.stderr
    streams = by_stream(read_events(out))
    assert len(streams["good"]) == 8
    cut = streams["cut"]
    assert 2 <= len(cut) < 12
    assert [e["seq"] for e in cut] == list(range(1, len(cut) + 1))


def test_unreachable_hub_model_says_how_to_use_a_local_copy(tmp_path, clips):
    # Given a hub model id that is not cached and no hub access
    config = {
        "model": {"id": "microsoft/beit-base-patch16-224"},
        "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
    }
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("run", str(write_config(tmp_path, config)), env=env, timeout=60)
    # Then one message says so and how to point model.id at a local copy
    assert result.returncode == 2
    assert_one_clear_message(
        result.stderr,
        "cannot load model 'microsoft/beit-base-patch16-224'",
        "model.id",
        "HF_HUB_OFFLINE",
    )


def test_local_directory_that_is_not_a_checkpoint(tmp_path, clips):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    config = {
        "model": {"id": str(empty)},
        "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
    }
    result = run_cli("check", str(write_config(tmp_path, config)), timeout=60)
    assert result.returncode == 2
    assert_one_clear_message(result.stderr, f"model directory '{empty}'")


def test_cuda_on_a_machine_without_it_is_a_clear_error(tmp_path, tiny_model, clips):
    torch = require_module("torch")

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    config = {
        "model": {"id": str(tiny_model), "device": "cuda"},
        "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
    }
    result = run_cli("run", str(write_config(tmp_path, config)), timeout=60)
    assert result.returncode == 2
    assert_one_clear_message(result.stderr, "model.device is 'cuda'", "no CUDA device")


def test_check_accepts_a_good_config_and_names_a_missing_file(tmp_path, tiny_model, clips):
    config = {
        "model": {"id": str(tiny_model)},
        "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
    }
    good = run_cli("check", str(write_config(tmp_path, config)), timeout=60)
    assert good.returncode == 0, good.stderr
    assert "config OK" in good.stderr
    config["sources"].append({"id": "b", "type": "file", "path": str(tmp_path / "gone.mp4")})
    bad = run_cli("check", str(write_config(tmp_path, config)), timeout=60)
    assert bad.returncode == 2
    assert_one_clear_message(bad.stderr, "gone.mp4", "not found")
