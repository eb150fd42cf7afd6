"""Tests of the benchmark harness itself (fast, no real model); run with
`.venv/bin/python -m pytest -q benchmarks/tests`."""
