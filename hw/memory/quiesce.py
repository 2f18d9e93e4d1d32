"""`AXI4Quiesce`: the AXI4 transactions of masters that are being reset, completed on their behalf.

Between the masters (`inner`, an AXI4 slave port) and the bus (`outer`, an AXI4 master port). Unless `draining`,
every channel passes straight through (no register on any path) while the guard counts what is in flight: read
bursts (AR taken, their last R beat not yet), the W beats owed to the write bursts whose AW was taken and the write
responses owed. A W beat passes only once its burst's AW has been taken (AXI4 would let it go ahead), so that no
beat is ever on the bus without its address.

`abandon` (a pulse, the cycle before the masters are reset) starts `draining` the next cycle, until the bus is
quiet: an AR, AW or W beat offered and not taken in the `abandon` cycle is offered on as it was (its fields held),
and no other address leaves; R beats and write responses are taken and dropped; the other W beats owed go out with
WSTRB 0 (no byte is written) and WLAST on each burst's last. The masters see no valid and no ready meanwhile, so
one that starts again waits until the bus is passed through. `max_bursts`: at least the masters' bursts in flight
in either direction (it sizes the counters).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..common.pipeline import credit_counter
from .axi import AXI4, join

__all__ = ["AXI4Quiesce"]

_ADDRESS_FIELDS = ("addr", "len", "size", "burst", "id", "cache", "prot")


class AXI4Quiesce(wiring.Component):
    def __init__(self, signature: AXI4.Signature, max_bursts: int):
        if not isinstance(max_bursts, int) or max_bursts < 1:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"AXI4Quiesce max_bursts = {max_bursts!r}: must be a positive integer")
        self.max_bursts = max_bursts
        super().__init__({"inner": In(signature), "outer": Out(signature), "abandon": In(1), "draining": Out(1)})

    def elaborate(self, platform):
        m = Module()
        inner, outer, draining = self.inner, self.outer, self.draining
        # the write bursts' lengths (AWLEN) in order, and the beats of the first that have gone
        m.submodules.owed = owed = SyncFIFO(width=8, depth=self.max_bursts)
        beat = Signal(8)
        m.d.comb += [owed.w_data.eq(outer.awlen), owed.w_en.eq(outer.awvalid & outer.awready)]
        with m.If(outer.wvalid & outer.wready):
            m.d.sync += beat.eq(beat + 1)
            with m.If(beat == owed.r_data):
                m.d.sync += beat.eq(0)
                m.d.comb += owed.r_en.eq(1)
        reads, reads_nonzero, responses, responses_nonzero = (
            Signal(range(self.max_bursts + 1)), Signal(), Signal(range(self.max_bursts + 1)), Signal())
        credit_counter(m, reads, reads_nonzero, outer.arvalid & outer.arready,
                       outer.rvalid & outer.rready & outer.rlast)
        credit_counter(m, responses, responses_nonzero, outer.awvalid & outer.awready, outer.bvalid & outer.bready)

        # an address or a W beat offered and not taken: its fields, held from the cycle `abandon` comes (the
        # rules keep a channel's payload until it is taken)
        fields = {"ar": _ADDRESS_FIELDS, "aw": _ADDRESS_FIELDS, "w": ("data", "strb")}     # (WLAST: from `beat`)
        waiting = {channel: Signal(name=f"{channel}_waiting") for channel in fields}
        held = {(channel, field): Signal.like(getattr(inner, channel + field), name=f"{channel}{field}_held")
                for channel, names in fields.items() for field in names}
        for channel, offered in waiting.items():
            valid, ready = getattr(outer, channel + "valid"), getattr(outer, channel + "ready")
            with m.If(~draining):
                m.d.sync += offered.eq(valid & ~ready)
                m.d.sync += [held[channel, field].eq(getattr(inner, channel + field)) for field in fields[channel]]
            with m.Elif(ready):
                m.d.sync += offered.eq(0)

        with m.If(~draining):
            m.d.sync += draining.eq(self.abandon)
            join(m, inner, outer, outer.signature)
            # W only against an AW taken
            m.d.comb += [outer.wvalid.eq(inner.wvalid & owed.r_rdy), inner.wready.eq(outer.wready & owed.r_rdy)]
        with m.Else():
            in_flight = waiting["ar"] | waiting["aw"] | reads_nonzero | responses_nonzero   # (B after the last W)
            m.d.sync += draining.eq(in_flight | self.abandon)
            for channel in ("ar", "aw"):
                m.d.comb += getattr(outer, channel + "valid").eq(waiting[channel])
                m.d.comb += [getattr(outer, channel + field).eq(held[channel, field]) for field in _ADDRESS_FIELDS]
            # the beat offered (as it was), then the beats owed with no byte strobe
            m.d.comb += [outer.rready.eq(1), outer.bready.eq(1), outer.wvalid.eq(owed.r_rdy),
                         outer.wdata.eq(held["w", "data"]), outer.wstrb.eq(Mux(waiting["w"], held["w", "strb"], 0)),
                         outer.wlast.eq(beat == owed.r_data)]
        return m
