"""Sink adapters: one module per sink kind."""
