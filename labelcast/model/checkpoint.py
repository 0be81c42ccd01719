"""Checkpoint files: resolve a hub id or local directory to files on disk, and vet them.

Resolution pins what is loaded (the hub commit actually fetched), integrity checks
compare SHA-256 digests before anything is deserialised, and pickle weights (which
can run code when loaded) are refused unless explicitly allowed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelcast.errors import ModelError

log = logging.getLogger(__name__)

SAFE_WEIGHTS = (".safetensors",)
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# What a classifier needs from a hub repository; other files (other frameworks' weights,
# ONNX exports) are not fetched. Zero-shot checkpoints add their tokenizer: BPE merges
# (CLIP; tokenizer.json is matched by *.json) or a SentencePiece model (SigLIP), data
# files that run no code when read.
_HUB_FILES = [
    "*.json",
    "*.safetensors",
    "README.md",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
]


@dataclass(frozen=True)
class CheckpointFile:
    """One file of a checkpoint, with its size in bytes."""

    name: str
    size: int


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint resolved to a local directory; ``revision`` is the hub commit, if any."""

    id: str
    directory: Path
    revision: str | None
    files: tuple[CheckpointFile, ...]

    @property
    def weight_files(self) -> list[str]:
        """Names of the files that hold weights (safetensors or pickle)."""
        return [f.name for f in self.files if f.name.endswith(SAFE_WEIGHTS + PICKLE_WEIGHTS)]

    @property
    def has_safetensors(self) -> bool:
        """Whether the checkpoint has safetensors weights."""
        return any(f.name.endswith(SAFE_WEIGHTS) for f in self.files)

    def read_json(self, name: str) -> dict[str, Any]:
        """Read one of the checkpoint's JSON files; ModelError if it is missing or broken."""
        path = self.directory / name
        try:
            with path.open(encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError as exc:
            raise ModelError(f"model {self.id!r} has no {name}") from exc
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a readable JSON file ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelError(f"{path}: expected a JSON object")
        return data

    def license(self) -> str | None:
        """Return the license in the model card's metadata (README.md front matter), if any."""
        card = self.directory / "README.md"
        if not card.is_file():
            return None
        text = card.read_text(encoding="utf-8", errors="replace")
        match = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
        if match is None:
            return None
        found = re.search(r"^license:\s*(\S+)\s*$", match.group(1), re.M)
        return found.group(1).strip("'\"") if found else None


def resolve_checkpoint(
    model_id: str, revision: str | None, *, allow_pickle: bool, weights: bool = True
) -> Checkpoint:
    """Find (and for hub ids, fetch or take from the cache) the checkpoint's files.

    A hub id given without a commit sha as ``revision`` logs a warning naming the
    commit that was resolved, so the user can pin it. ``weights=False`` fetches only
    the JSON files (labels and preprocessing: what a Triton gateway needs).
    """
    if os.path.isdir(model_id):
        directory = Path(model_id)
        if not (directory / "config.json").is_file():
            raise ModelError(
                f"model directory {model_id!r} has no config.json "
                "(it is not a Hugging Face checkpoint directory)"
            )
        checkpoint = Checkpoint(model_id, directory, None, _list_files(directory))
    else:
        checkpoint = _from_hub(model_id, revision, allow_pickle, weights)
        if revision is None or not _COMMIT.match(revision):
            log.warning(
                "model %s: revision %s is not pinned; loaded commit %s. Pin it with "
                "model.revision: %s so a re-upload can't change what this gateway reports",
                model_id,
                revision or "main",
                checkpoint.revision,
                checkpoint.revision,
            )
    if weights and not checkpoint.has_safetensors and not allow_pickle:
        pickles = [name for name in checkpoint.weight_files if name.endswith(PICKLE_WEIGHTS)]
        if pickles:
            raise ModelError(
                f"model {model_id!r} has only pickle weights ({', '.join(pickles)}); loading "
                "pickle can run arbitrary code. Convert it to safetensors, or set "
                "model.allow_pickle: true if you trust its source"
            )
        raise ModelError(f"model {model_id!r} has no weight files")
    return checkpoint


def verify_sha256(checkpoint: Checkpoint, expected: dict[str, str]) -> None:
    """Compare the SHA-256 of each named file with ``expected``; ModelError on any mismatch."""
    for name, digest in expected.items():
        path = checkpoint.directory / name
        if not path.is_file():
            raise ModelError(f"model.sha256 names {name}, which model {checkpoint.id!r} lacks")
        actual = sha256_of(path)
        if actual != digest.lower():
            raise ModelError(
                f"model {checkpoint.id!r}: {name} has SHA-256 {actual}, but model.sha256 "
                f"expects {digest.lower()}; refusing to load a checkpoint that changed"
            )
        log.info("model %s: %s matches its SHA-256", checkpoint.id, name)


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _list_files(directory: Path) -> tuple[CheckpointFile, ...]:
    return tuple(
        CheckpointFile(str(path.relative_to(directory)), path.stat().st_size)
        for path in sorted(directory.rglob("*"))
        # The hub's download metadata lives in .cache/ inside local-dir downloads.
        if path.is_file() and ".cache" not in path.relative_to(directory).parts
    )


def _from_hub(model_id: str, revision: str | None, allow_pickle: bool, weights: bool) -> Checkpoint:
    # Imported here: the hub client is only needed for hub ids.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if model_id.startswith(("/", ".", "~")):
        raise ModelError(f"model.id {model_id!r} is neither an existing directory nor a hub id")
    patterns = _HUB_FILES + (["*" + ext for ext in PICKLE_WEIGHTS] if allow_pickle else [])
    if not weights:
        patterns = [pattern for pattern in patterns if pattern.endswith((".json", ".md"))]
    try:
        folder = snapshot_download(model_id, revision=revision, allow_patterns=patterns)
    except HFValidationError as exc:
        raise ModelError(
            f"model.id {model_id!r} is neither an existing directory nor a valid hub id"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(
            f"model {model_id!r}: the hub has no such model (or it is private and no token is set)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"model {model_id!r} has no revision {revision!r}") from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        raise ModelError(_unreachable_message(model_id, revision)) from exc
    directory = Path(folder)
    # Hub snapshots live in .../snapshots/<commit sha>/.
    resolved = directory.name if _COMMIT.match(directory.name) else revision
    return Checkpoint(model_id, directory, resolved, _list_files(directory))


def _unreachable_message(model_id: str, revision: str | None) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    reason = (
        "HF_HUB_OFFLINE is set and it is not in the local cache"
        if offline
        else "the Hugging Face hub could not be reached and it is not in the local cache"
    )
    rev = revision or "main"
    return (
        f"cannot load model {model_id!r} (revision {rev}): {reason}. To run without the hub, "
        f"download it where there is network (hf download {model_id} --revision {rev} "
        f"--local-dir models/local), copy that folder here and set model.id to it "
        f"(e.g. --set model.id=models/local)"
    )
