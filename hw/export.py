"""Verilog and RTLIL export of a component, with the ports its signature declares."""

from __future__ import annotations

from amaranth import Signal
from amaranth.back import rtlil, verilog
from amaranth.lib import wiring

__all__ = ["ports", "to_verilog", "to_rtlil"]


def ports(component: wiring.Component) -> list[Signal]:
    """The component's port signals, leaving out constants (the `ready` of an `always_ready` stream)."""
    return [value for _, _, value in component.signature.flatten(component) if isinstance(value, Signal)]


def to_verilog(component: wiring.Component, name: str) -> str:
    return verilog.convert(component, name=name, ports=ports(component))


def to_rtlil(component: wiring.Component, name: str) -> str:
    return rtlil.convert(component, name=name, ports=ports(component))
