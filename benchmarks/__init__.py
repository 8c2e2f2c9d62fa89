"""Benchmarks run by ``make bench`` (``python -m benchmarks.run``): ratios measured side by side."""
