"""The named exceptions labelcast raises for problems a user can fix."""

from __future__ import annotations


class LabelcastError(Exception):
    """Base class of every error labelcast reports as one clear message."""


class ConfigError(LabelcastError):
    """The configuration file (or a ``--set`` override) is invalid; the message names the field."""


class SourceError(LabelcastError):
    """A source cannot be opened or read (missing, garbage or damaged media, unreachable stream)."""


class SinkError(LabelcastError):
    """A sink cannot be opened or written to."""


class ReportedSinkError(SinkError):
    """A sink could not deliver one item and has already logged why (once per outage).

    The pipeline counts the item as failed without logging it again, so a full disk is
    one error in the log, not one per picture.
    """


class ModelError(LabelcastError):
    """The model cannot be loaded, or its checkpoint files are not usable."""


class BatchError(ModelError):
    """One batch could not be classified (a remote model server kept failing it).

    The pipeline counts the batch's frames as dropped and goes on with the next batch.
    """
