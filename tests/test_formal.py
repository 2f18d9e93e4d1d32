"""Bounded proofs of the handshake rules (SymbiYosys with Boolector from PyPI) at the CI depth, on the smallest
configurations; and proofs that fail where a rule is broken."""

import pytest
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out

from hw.flow import formal
from hw.memory.axi import AXI4Read, AXI4Write, Burst

# units whose outputs first stall later than the CI depth (their rules hold vacuously there, as their covers
# show; `m3vit prove UNIT --depth N` runs deeper): a GEMM result needs a tile's load, the array and the 14-stage
# drain (the engine's FIFO is proven alone, `gemm-fifo`), a route a 33-step division (the top-k stage's stream
# is proven alone, `router-topk`), a LayerNorm or softmax row its statistics or exponentials first
BEYOND_CI_DEPTH = {"gemm", "router", "layernorm", "softmax"}


def test_every_unit_has_a_proof():
    assert set(formal.PROOFS) == set(formal._proofs())


# about how long the longer proofs run on one core (the session starts the longest tests first)
SECONDS = {"loader": 115, "writer": 80, "softmax": 35, "gemm-fifo": 27, "gemm": 25, "layernorm": 25}


@pytest.mark.parametrize("unit", [pytest.param(unit, marks=pytest.mark.long(SECONDS[unit])) if unit in SECONDS
                                  else unit for unit in formal.PROOFS])
def test_handshake_rules_hold(unit):
    result = formal.prove_unit(unit, formal.CI_DEPTH)
    assert result.depth >= 24
    if unit not in BEYOND_CI_DEPTH:
        assert result.covers_reached == result.covers > 0, "an output never stalls within the depth"


class _Dropping(wiring.Component):
    """A stream source that withdraws `valid` after one cycle whether or not it was taken."""
    out: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        phase = Signal()
        m.d.sync += phase.eq(~phase)
        m.d.comb += [self.out.valid.eq(phase), self.out.payload.eq(7)]
        return m


class _Crossing(wiring.Component):
    """An AXI read master whose one request crosses a 4 KiB boundary (8 beats of 8 bytes from 0xFE0)."""
    axi: Out(AXI4Read.Signature(addr_width=16, data_width=64))

    def elaborate(self, platform):
        m = Module()
        sent = Signal()
        with m.If(self.axi.arvalid & self.axi.arready):
            m.d.sync += sent.eq(1)
        m.d.comb += [self.axi.arvalid.eq(~sent), self.axi.araddr.eq(0xFE0), self.axi.arlen.eq(7),
                     self.axi.arsize.eq(3), self.axi.arburst.eq(Burst.INCR), self.axi.rready.eq(1)]
        return m


class _ShortBurst(wiring.Component):
    """An AXI write master that announces 2-beat bursts and raises WLAST on every beat (`good`: on every
    second)."""
    axi: Out(AXI4Write.Signature(addr_width=16, data_width=64))

    def __init__(self, good=False):
        self.good = good
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        second = Signal()
        with m.If(self.axi.wvalid & self.axi.wready):
            m.d.sync += second.eq(~second)
        outputs = {"awvalid": 1, "awaddr": 0, "awlen": 1, "awsize": 3, "awburst": Burst.INCR, "awid": 0, "awcache": 0,
                   "awprot": 0, "wvalid": 1, "wdata": 0, "wstrb": 0xFF, "wlast": second if self.good else 1,
                   "bready": 1}
        m.d.comb += [getattr(self.axi, name).eq(value) for name, value in outputs.items()]
        return m


def test_a_correct_write_master_passes():
    formal.prove(_ShortBurst(good=True), "good", 8, [formal.axi_write_rules("axi", 2)])


@pytest.mark.parametrize("dut, rules, message", [
    (_Dropping, [formal.stream_rules], "valid and payload held"),
    (_Crossing, [formal.axi_read_rules("axi", 2)], "4 KiB"),
    (_ShortBurst, [formal.axi_write_rules("axi", 2)], "WLAST on exactly a burst's last beat"),
])
def test_a_broken_rule_fails(dut, rules, message):
    with pytest.raises(formal.FormalError, match="FAIL") as error:
        formal.prove(dut(), "broken", 8, rules)
    assert message in str(error.value)
