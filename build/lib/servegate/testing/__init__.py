"""Fakes for tests: an in-memory serving backend (optionally persisted to a JSON file, so that
its state survives the process, e.g. one killed half-way through a promotion), and a scripted
target whose versions are accuracies and latencies (the pipeline's decisions in seconds)."""

from servegate.testing.memory import MemoryBackend
from servegate.testing.target import ScriptedModel, ScriptedTarget

__all__ = ["MemoryBackend", "ScriptedModel", "ScriptedTarget"]
