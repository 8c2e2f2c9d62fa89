"""Fakes for tests: an in-memory serving backend (optionally persisted to a JSON file, so that
its state survives the process, e.g. one killed half-way through a promotion)."""

from servegate.testing.memory import MemoryBackend

__all__ = ["MemoryBackend"]
