"""The top floor: batching, the runner and its threads, fan-out, reload planning, health, metrics.

``runner`` wires the parts: ``streams`` (a thread per source), ``classify`` (the classifier
thread), ``fanout`` (a thread per sink), ``reload`` (what a new config changes), ``health``
(liveness, readiness) and ``metrics``; ``state`` is what their threads share.
"""
