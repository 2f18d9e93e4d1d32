"""What the controller works out about the instruction about to enter its issue stage, a cycle before the decision
looks at it, for registers beside it: whether and why it is refused (`check_refusal`); and the DRAM address of a
LOAD, STORE or UPSAMPLE (`dram_address`, worked out from the decided instruction for its command's register).

The refusal combines what `predecode` made of the instruction (the cause its operands give alone, and flags) with the
run's state that only the controller's own moves change: whether an EXPERTS loop is `active`, the last
CONFIG_CONV and TASK. Each of those moves (an instruction issued, the loop's end) keeps the decision off for the
cycle after it, so the registered cause is always that of the state the decision sees. The one refusal that
depends on a unit (a LAYERNORM with `route` and no ROUTE waiting: the router's `busy`) stays in the decision.
"""

from __future__ import annotations

from amaranth import Mux, Signal
from amaranth.lib import data

from .isa import ErrorCause, Opcode

__all__ = ["dram_address", "check_refusal"]


def dram_address(ctrl, m, word, loop):
    """The DRAM address of a LOAD, STORE or UPSAMPLE `word` for the controller `ctrl`: its region register + its
    offset, + the EXPERTS pass's `offset` for a per-expert LOAD (`loop`), for a register its command copies."""
    address = Signal(32, name="dram_address")
    load = word.operands.load
    with m.Switch(word.opcode):
        for opcode, operands, extra in ((Opcode.LOAD, load, Mux(load.per_expert, loop.offset, 0)),
                                        (Opcode.STORE, word.operands.store, 0),
                                        (Opcode.UPSAMPLE, word.operands.upsample, 0)):
            with m.Case(opcode), m.Switch(operands.region):
                for region, base in ctrl.regions():
                    with m.Case(region):
                        m.d.comb += address.eq(base + operands.address + extra)
    return address


def check_refusal(ctrl, m, word, decoded, loop, conv, taps):
    """The refusal of instruction `word` by the controller `ctrl`, a register a cycle later: {`any`, `cause`}.
    `decoded` is its predecode; `loop` the EXPERTS loop; `conv` the last CONFIG_CONV and `taps` 9 × its channel
    tiles. Refused: for its predecoded cause; outside a loop, a per-expert LOAD or a gathering or COMBINE GEMM;
    inside one, EXPERTS; a 3×3 im2col GEMM whose K tiles are not `taps` (all BAD_OPERAND); a ROUTE while TASK
    (as it was a cycle before) is outside the model (BAD_TASK). With more than one reason, BAD_TASK comes first,
    then the predecoded cause."""
    task_outside = Signal(name="task_outside")
    m.d.sync += task_outside.eq(ctrl.task >= ctrl.tasks)
    static = decoded.cause != ErrorCause.NONE
    bad_task = decoded.route & task_outside
    bad_state = ((decoded.loop_only & ~loop.active) | (decoded.not_in_loop & loop.active)
                 | (decoded.im2col & conv.kernel & (word.operands.gemm.k_tiles != taps)))
    refused = Signal(data.StructLayout({"any": 1, "cause": ErrorCause}), name="refused")
    m.d.sync += [refused.any.eq(static | bad_task | bad_state),
                 refused.cause.eq(Mux(bad_task, ErrorCause.BAD_TASK,
                                      Mux(static, decoded.cause, ErrorCause.BAD_OPERAND)))]
    return refused
