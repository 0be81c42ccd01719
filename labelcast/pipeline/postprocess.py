"""Postprocess: turn class probabilities into the labels an event carries.

Order: map (rename or merge; merged scores add up) → include/exclude (on mapped names,
exact or shell-style patterns) → ``min_score`` → ``top_k``.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from labelcast.pipeline.frames import Label


class LabelsConfig(BaseModel):
    """Which labels an event carries and under which names."""

    model_config = ConfigDict(extra="forbid")

    top_k: Annotated[int, Field(ge=1, le=1000, description="Most labels per event.")] = 5
    min_score: Annotated[
        float, Field(ge=0, le=1, description="Labels scoring below this are left out.")
    ] = 0.0
    include: Annotated[
        list[str],
        Field(description="Keep only labels matching one of these names or shell patterns."),
    ] = []
    exclude: Annotated[
        list[str], Field(description="Drop labels matching any of these names or shell patterns.")
    ] = []
    map: Annotated[
        dict[str, str],
        Field(description="Rename labels; several labels mapped to one name add their scores."),
    ] = {}


class Postprocess:
    """Applies a ``LabelsConfig`` to batches of probability vectors, vectorised over classes."""

    def __init__(self, config: LabelsConfig, id2label: dict[int, str]) -> None:
        self._top_k = config.top_k
        self._min_score = config.min_score
        num_classes = len(id2label)
        names: list[str] = []
        members: dict[str, list[int]] = {}
        for class_id in range(num_classes):
            name = config.map.get(id2label[class_id], id2label[class_id])
            if name not in members:
                members[name] = []
                names.append(name)
            members[name].append(class_id)
        self._names = names
        self._class_ids: list[int | None] = [
            ids[0] if len(ids) == 1 else None for ids in (members[n] for n in names)
        ]
        self._merge: npt.NDArray[np.float32] | None = None
        if len(names) != num_classes:
            merge = np.zeros((num_classes, len(names)), dtype=np.float32)
            for column, name in enumerate(names):
                merge[members[name], column] = 1.0
            self._merge = merge
        self._keep = np.array(
            [_kept(name, config.include, config.exclude) for name in names], dtype=bool
        )

    def labels(self, probs: npt.NDArray[np.float32]) -> list[tuple[Label, ...]]:
        """Return the labels of each row of ``probs`` (shape (N, num_classes)), best first."""
        scores = probs @ self._merge if self._merge is not None else probs
        scores = np.where(self._keep, scores, -1.0)
        k = min(self._top_k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        result: list[tuple[Label, ...]] = []
        for row, candidates in zip(scores, top, strict=True):
            ordered = candidates[np.argsort(-row[candidates], kind="stable")]
            result.append(
                tuple(
                    Label(self._names[i], float(row[i]), self._class_ids[i])
                    for i in ordered
                    if row[i] >= self._min_score and row[i] >= 0.0
                )
            )
        return result


def _kept(name: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
