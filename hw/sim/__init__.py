"""Simulation helpers shared by the tests and benchmarks of every unit."""

from amaranth.sim import Simulator

__all__ = ["simulate"]


def simulate(design, testbench) -> None:
    """Run the async `testbench(ctx)` against `design` in the Python simulator (one clock domain)."""
    simulator = Simulator(design)
    simulator.add_clock(1e-8)
    simulator.add_testbench(testbench)
    simulator.run()
