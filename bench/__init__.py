"""Benchmarks, demo and local test stack for picker."""
