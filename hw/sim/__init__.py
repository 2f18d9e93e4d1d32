"""Simulation helpers shared by the tests and benchmarks of every unit."""
