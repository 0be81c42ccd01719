"""Every example config under configs/ is a valid config as shipped (docs point users at them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labelcast import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the environment variables the config names, set as a user would
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text(encoding="utf-8")):
        monkeypatch.setenv(name, "example")
    # When it is loaded, Then it validates, with at least one source and one sink
    config = load_config(path)
    assert config.sources and config.sinks


def test_every_example_config_is_checked() -> None:
    assert len(CONFIGS) >= 10 and any(p.name == "garage.yaml" for p in CONFIGS)
