"""The durable outbox shared by every sink that promises delivery (see ``outbox.py``).

``database`` is the SQLite file (schema, settings, the advisory lock), ``handover`` the
in-process registry that lets a reload hand a file over, ``outbox`` the bounded queue,
``config`` the ``outbox`` block of a sink's config and the default file locations.
"""

from __future__ import annotations

from labelcast.sinks.outbox.config import OutboxConfig, default_outbox_path
from labelcast.sinks.outbox.database import StoredMessage
from labelcast.sinks.outbox.handover import hand_over
from labelcast.sinks.outbox.outbox import Outbox, OutboxCounters

__all__ = [
    "Outbox",
    "OutboxConfig",
    "OutboxCounters",
    "StoredMessage",
    "default_outbox_path",
    "hand_over",
]
