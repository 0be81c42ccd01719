"""The picture that confirmed a change: sinks that show changes keep each subject's latest.

A change event arrives after the label event whose frame confirmed it (``send_change``
follows ``send``), and carries that event's ``seq``. Sinks that save or publish the
picture of a change (snapshot, mqtt ``snapshot: true``) remember each subject's latest
event and frame here, one per subject, and look the change's picture up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labelcast.frames import ChangeEvent, Frame, LabelEvent

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def subject_picture(frame: Frame, region: str | None) -> npt.NDArray[np.uint8]:
    """Return the picture of ``frame`` that subject ``region`` (None: the whole frame) had.

    A region's picture is its crop (a view of the frame), as the classifier saw it.
    """
    for subject in frame.subjects:
        if subject.region == region:
            return frame.picture(subject)
    raise KeyError(f"frame {frame.index} of stream {frame.stream} has no picture of {region}")


class LatestPictures:
    """Each subject's latest label event and the frame it came from (only the latest)."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[LabelEvent, Frame]] = {}

    def remember(self, event: LabelEvent, frame: Frame) -> None:
        """Keep ``event`` and its frame as the subject's latest (the previous one is let go)."""
        self._latest[event.subject] = (event, frame)

    def confirming(self, change: ChangeEvent) -> tuple[LabelEvent, npt.NDArray[np.uint8]] | None:
        """Return the event and picture that confirmed ``change``, or None if not remembered.

        For a change a gated (unchanged) picture confirmed, that is the subject's last
        classified picture: the one the unchanged pictures repeated.
        """
        latest = self._latest.get(change.subject)
        if latest is None or latest[0].seq != change.seq:
            return None
        event, frame = latest
        return event, subject_picture(frame, event.region)
