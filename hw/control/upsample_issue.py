"""The controller's UPSAMPLE: its issue rule and its store path command."""

from __future__ import annotations

from amaranth import Mux

from ..common.arith import narrow_product
from .datapath import UPSAMPLABLE, upsample_length
from .isa import ErrorCause

__all__ = ["upsample_products", "upsample_reaches", "predecode_upsample", "issue_upsample"]


def upsample_products(ops) -> dict:
    """What an UPSAMPLE's predecode compares, worked out from its operands a cycle before (`prepare`): the words
    it reads, tiles × width; how far past its first tile its last begins, (tiles − 1) × stride; and past the
    first tile's last word, max(near, far) + width."""
    return {"upsample_words": narrow_product(ops.tiles, ops.width),
            "upsample_span": narrow_product((ops.tiles - 1).as_unsigned(), ops.stride),
            "upsample_first_reach": Mux(ops.near > ops.far, ops.near, ops.far) + ops.width}


def upsample_reaches(ops, prepared) -> dict:
    """What an UPSAMPLE's predecode compares, summed a cycle after its `upsample_products` (`reach`): the words it
    reads, and how far it reaches past its last word."""
    return {"upsample_words": prepared.upsample_words,
            "upsample_reach": prepared.upsample_first_reach + prepared.upsample_span}


def predecode_upsample(ctrl, m, ops, reached, refuse):
    """What an UPSAMPLE's operands decide alone (`predecode`; `reached` its `upsample_reaches`, a cycle old):
    BAD_OPERAND when it is empty, reads past its memory or is not a whole number of bus words; UNSUPPORTED from a
    memory the upsampler does not read."""
    words = reached.upsample_words
    with m.If(words == 0):
        refuse(ErrorCause.BAD_OPERAND)
    for space in UPSAMPLABLE:
        with m.Elif(ops.memory == space):
            length = upsample_length(words, ctrl.spaces[space].word_bytes)
            with m.If((length[:(ctrl.bus_bytes - 1).bit_length()] != 0)
                      | (reached.upsample_reach > ctrl.spaces[space].depth)):
                refuse(ErrorCause.BAD_OPERAND)
    with m.Else():
        refuse(ErrorCause.UNSUPPORTED)


def issue_upsample(ctrl, m, front, ops, decoded, refuse, go, touched):
    """The UPSAMPLE at the head of the controller `ctrl` (`Controller`; `decoded` what `predecode_upsample` made
    of it): a store path command (into `front`, the issue stage's) of tiles × 2·width words (the path works out its
    length)."""
    address, good = ctrl.dram_address(m, decoded, "upsample")
    command = front.store.payload
    m.d.comb += [command.base.eq(ops.near), command.address.eq(address), command.upsample.eq(1),
                 command.far.eq(ops.far), command.width.eq(ops.width), command.tiles.eq(ops.tiles),
                 command.stride.eq(ops.stride)]
    with m.If(~good):
        refuse(ErrorCause.BAD_OPERAND)
    with m.Elif(decoded.cause != ErrorCause.NONE):
        refuse(decoded.cause)
    for space in UPSAMPLABLE:
        with m.Elif(ops.memory == space):
            m.d.comb += command.memory.eq(space)
            issue = go(front.store.ready & ~touched.store_waits[space.value])
            m.d.comb += [front.store.valid.eq(issue), touched.store_issued.eq(issue),
                         touched.store_space.eq(space)]
