"""The controller's issue stage: the registers between its issue decision and the units (docs/architecture.md,
section 11).

The decision to issue an instruction, or to refuse it (a fault), starts and ends at registers of the controller's
own. It looks at the fetch buffer's or the EXPERTS body's head of the cycle before (from a register), once nothing
moved the head in that cycle. It only loads registers: its commands to the units (`load`, `descriptor`, `take`,
`gemm`, `store`, `norm`, `softmax`, `route`, and the output path's `output_start` with `output_job`) go
out of them the cycle after, and are taken in that cycle: the decision saw the unit's `ready` high, and a unit's
`ready` (the loader's per buffer: `slab_accepts`, `slab_full`) falls only when it takes a command (the Python
simulator asserts it). In that cycle the controller moves on (`issued` is high: the fetch buffer's pop, the pc, the
EXPERTS loop, a CONFIG's register, what the scoreboard records) and nothing issues, so each decision sees the units
with the last command in them. So an instruction takes three cycles at least, and a command starts a cycle after its
decision; a fault ends the run a cycle after its decision.

The decision sees a unit's `ready` from a register, a cycle late (the loader's `slab_accepts` and `slab_full` as
they are), as it sees the units' busy flags (`Scoreboard.seen`): the next decision comes two cycles after a command
is taken, and sees the unit's `ready` of the cycle after it. So no unit's logic or net runs into the decision, and
an instruction that waits for a unit issues a cycle after the unit is free.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Signal
from amaranth.hdl import Assert
from amaranth.lib.wiring import Out

__all__ = ["issue_stage", "COMMANDS", "RECORDED"]

COMMANDS = ("load", "descriptor", "take", "gemm", "store", "norm", "softmax", "route")
RECORDED = ("load_issued", "load_space", "load_half", "store_issued", "store_space", "gemm_issued", "gemm",
            "softmax_issued", "softmax_half")     # what the scoreboard records of an instruction issued


def issue_stage(ctrl, m, issue, scoreboard):
    """The registers the decision `issue` of the controller `ctrl` loads, and the cycle after it (`retire`).

    Returns (`retire`, `front`, `record`): `front` has a stream interface per command of `COMMANDS` and
    `output_start`, `output_job`, which the decision drives; they reach the controller's ports a cycle later, when
    the unit takes them (the decision saw its `ready`; the loader's is `slab_accepts` or `slab_full` of the
    decision's own buffer). `record` stands for `scoreboard`: its outputs as they are, its inputs of `RECORDED`
    registered on the way in, so the scoreboard records an instruction as its unit takes the command."""
    retire = Signal()
    m.d.sync += retire.eq(issue)
    front = SimpleNamespace(**{name: getattr(ctrl, name).signature.create(path=("front", name)) for name in COMMANDS})
    front.output_start, front.output_job = Signal(name="front_output_start"), Signal.like(ctrl.output_job)
    for name in COMMANDS:
        port, command = getattr(ctrl, name), getattr(front, name)
        m.d.sync += [port.valid.eq(command.valid), port.payload.eq(command.payload)]
        if name not in ("descriptor", "take"):      # the unit's ready, a cycle late
            ready = Signal(name=f"{name}_ready_seen")
            m.d.sync += ready.eq(port.ready)
            m.d.comb += command.ready.eq(ready)
        with m.If(port.valid):
            m.d.sync += Assert(port.ready, f"the unit did not take the controller's {name} command")
    m.d.comb += [front.descriptor.ready.eq(ctrl.slab_accepts.bit_select(front.descriptor.payload.buffer, 1)),
                 front.take.ready.eq(ctrl.slab_full.bit_select(front.take.payload, 1))]
    m.d.sync += [ctrl.output_start.eq(front.output_start), ctrl.output_job.eq(front.output_job)]
    members = scoreboard.signature.members
    record = SimpleNamespace(**{name: getattr(scoreboard, name) for name in members if members[name].flow == Out},
                             **{name: Signal(members[name].shape, name=f"record_{name}") for name in RECORDED})
    m.d.sync += [getattr(scoreboard, name).eq(getattr(record, name)) for name in RECORDED]
    return retire, front, record
