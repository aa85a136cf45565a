"""Drift metrics, latency harness, gates and reports."""
