"""Postprocess: turn class probabilities into the labels an event carries.

Order: groups (class ids → group names) → map (rename or merge; merged scores add up)
→ include/exclude (on the resulting names, exact or shell-style patterns) →
``min_score`` → ``top_k``. The same scores (before ``min_score`` and ``top_k``) feed
each stream's ``LabelTracker`` (smoothing.py).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from labelcast.frames import Label
from labelcast.labels.config import LabelsConfig, UngroupedRule
from labelcast.labels.groups import resolve_groups

__all__ = ["OTHER", "LabelsConfig", "Postprocess", "StreamPostprocess", "UngroupedRule"]

OTHER = "other"


class Postprocess:
    """Applies a ``LabelsConfig`` to batches of probability vectors, vectorised over classes.

    Raises ConfigError if ``labels.groups`` does not fit the checkpoint's classes.
    """

    def __init__(self, config: LabelsConfig, id2label: dict[int, str]) -> None:
        self._top_k = config.top_k
        self._min_score = config.min_score
        num_classes = len(id2label)
        class_groups = resolve_groups(config.groups, id2label) if config.groups else {}
        names: list[str] = []
        members: dict[str, list[int]] = {}
        for class_id in range(num_classes):
            name = _name(config, id2label[class_id], class_groups.get(class_id))
            if name is None:
                continue
            if name not in members:
                members[name] = []
                names.append(name)
            members[name].append(class_id)
        self._names = tuple(names)
        self._class_ids: list[int | None] = [
            ids[0] if len(ids) == 1 else None for ids in (members[n] for n in names)
        ]
        # Each column of the result is one name; the identity (no merges, nothing dropped)
        # skips the matrix product.
        self._merge: npt.NDArray[np.float32] | None = None
        if len(names) != num_classes:
            merge = np.zeros((num_classes, len(names)), dtype=np.float32)
            for column, name in enumerate(names):
                merge[members[name], column] = 1.0
            self._merge = merge
        self._keep = np.array(
            [_kept(name, config.include, config.exclude) for name in names], dtype=bool
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The label name of each column of ``scores()``."""
        return self._names

    def scores(self, probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Return each row's score per name (shape (N, len(names))); filtered-out names get -1."""
        scores = probs @ self._merge if self._merge is not None else probs
        return np.where(self._keep, scores, np.float32(-1.0)).astype(np.float32, copy=False)

    def labels(self, probs: npt.NDArray[np.float32]) -> list[tuple[Label, ...]]:
        """Return the labels of each row of ``probs`` (shape (N, num_classes)), best first."""
        return self.labels_from_scores(self.scores(probs))

    def labels_from_scores(self, scores: npt.NDArray[np.float32]) -> list[tuple[Label, ...]]:
        """Return the labels of each row of ``scores()``: ``min_score``, then ``top_k``."""
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


class StreamPostprocess:
    """The postprocess of mixed-stream batches: one ``Postprocess`` per distinct ``LabelsConfig``.

    Keyed by subject: a stream, or a region of one (``<stream>/<region>``). Subjects
    that share a config (the usual case) share one matrix product per batch.
    """

    def __init__(self, configs: dict[str, LabelsConfig], id2label: dict[int, str]) -> None:
        shared: dict[str, Postprocess] = {}
        self._of_stream: dict[str, Postprocess] = {}
        for stream, config in configs.items():
            key = config.model_dump_json()
            if key not in shared:
                shared[key] = Postprocess(config, id2label)
            self._of_stream[stream] = shared[key]

    def of(self, stream: str) -> Postprocess:
        """Return the postprocess of one stream."""
        return self._of_stream[stream]

    def run(
        self, streams: Sequence[str], probs: npt.NDArray[np.float32]
    ) -> list[tuple[tuple[Label, ...], npt.NDArray[np.float32]]]:
        """Return each row's labels and scores; row i of ``probs`` belongs to ``streams[i]``."""
        rows: dict[int, tuple[Postprocess, list[int]]] = {}
        for index, stream in enumerate(streams):
            postprocess = self._of_stream[stream]
            rows.setdefault(id(postprocess), (postprocess, []))[1].append(index)
        result: list[tuple[tuple[Label, ...], npt.NDArray[np.float32]] | None] = [None] * len(
            streams
        )
        for postprocess, indices in rows.values():
            part = probs if len(indices) == len(streams) else probs[indices]
            scores = postprocess.scores(part)
            for index, row, labels in zip(
                indices, scores, postprocess.labels_from_scores(scores), strict=True
            ):
                result[index] = (labels, row)
        return [item for item in result if item is not None]  # every row was filled


def _name(config: LabelsConfig, label: str, group: str | None) -> str | None:
    """Return the name a class is reported under, or None if it is dropped."""
    if label in config.map:
        return config.map[label]
    if group is not None:
        return config.map.get(group, group)
    if config.groups is None or config.ungrouped == "keep":
        return label
    if config.ungrouped == "other":
        return config.map.get(OTHER, OTHER)
    return None


def _kept(name: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
