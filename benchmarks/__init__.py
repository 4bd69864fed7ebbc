"""Benchmarks of lightning-pol: ``python -m benchmarks.run`` (see docs/performance.md)."""
