"""The controller's UPSAMPLE: its issue rule and its store path command."""

from __future__ import annotations

from amaranth import Mux, Signal

from .datapath import UPSAMPLABLE
from .isa import ErrorCause

__all__ = ["issue_upsample"]


def issue_upsample(ctrl, m, ops, refuse, go, issue, writing, touched):
    """The UPSAMPLE at the head of the controller `ctrl` (`Controller`): a store path command of tiles × 2·width
    words; refused when a row leaves its memory, when it is empty or not a whole number of bus words, or from a
    memory the upsampler does not read."""
    address, good = ctrl.dram_address(m, ops, "upsample")
    words = Signal(2 * max(len(ops.width), len(ops.tiles)))
    reach = Signal(len(ops.near) + len(ops.tiles) + len(ops.stride) + 1)      # past the last word it reads
    m.d.comb += [words.eq(ops.tiles * ops.width),
                 reach.eq(Mux(ops.near > ops.far, ops.near, ops.far) + (ops.tiles - 1) * ops.stride + ops.width)]
    command = ctrl.store.payload
    m.d.comb += [command.base.eq(ops.near), command.address.eq(address), command.upsample.eq(1),
                 command.far.eq(ops.far), command.width.eq(ops.width), command.tiles.eq(ops.tiles),
                 command.stride.eq(ops.stride)]
    with m.If(~good | (words == 0)):
        refuse(ErrorCause.BAD_OPERAND)
    for space in UPSAMPLABLE:
        memory = ctrl.spaces[space]
        length = words << (memory.word_bytes.bit_length())        # 2·width words a tile
        with m.Elif(ops.memory == space):
            m.d.comb += [command.memory.eq(space), command.length.eq(length)]
            with m.If((length[:(ctrl.bus_bytes - 1).bit_length()] != 0) | (reach > memory.depth)):
                refuse(ErrorCause.BAD_OPERAND)
            with m.Else():
                go(ctrl.store.ready & ~writing[space.value])
                m.d.comb += [ctrl.store.valid.eq(issue), touched.store_issued.eq(issue),
                             touched.store_space.eq(space)]
    with m.Else():
        refuse(ErrorCause.UNSUPPORTED)
