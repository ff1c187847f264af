"""Benchmarks of the connection mapper: each event against the bare SDK (the floor) and the naive approach.

Run with `make bench` (full, writes bench/results/) or `make bench-smoke` (a few iterations, to a temp dir).
"""
