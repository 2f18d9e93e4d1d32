"""The GEMM engine's output FIFO: result rows to the `out` stream, places promised when a row issues."""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ...common.pipeline import credit_counter, data_register
from .geometry import GemmGeometry

__all__ = ["OutputFifo"]


class OutputFifo(wiring.Component):
    """`places` rows (default `GemmGeometry.fifo_places`) of LUT RAM between the output path and the `out`
    stream.

    A place is promised when a row issues into the output path (`promise`, one-cycle pulse) and given back
    when the row moves on into the output register. `room` (a register) says a place is free; the path issues
    no row without one, so a write never finds the FIFO full and needs no check. `arriving` announces a row on
    `data` in the next cycle, which is written then; it can leave on `out` the cycle after. `out` is a
    `lib.stream` from registers (valid held, payload stable until ready), rows in the order written.
    """

    @staticmethod
    def model(rows):
        """The rows `out` gives: those written, in the order written."""
        return list(rows)

    def __init__(self, geometry: GemmGeometry, places: int | None = None):
        self.geometry = g = geometry
        self.places = g.fifo_places if places is None else places
        if not isinstance(self.places, int) or self.places < 2:
            raise ValueError(f"OutputFifo places = {places!r}: must be an integer of at least 2")
        super().__init__({
            "arriving": In(1),
            "data": In(g.result),
            "promise": In(1),
            "room": Out(1, init=1),
            "out": Out(stream.Signature(g.result)),
        })

    def elaborate(self, platform):
        m = Module()
        places = self.places
        # LUT RAM written from a register and read asynchronously
        m.submodules.memory = memory = Memory(shape=len(self.data.as_value()), depth=places, init=[])
        write, read = memory.write_port(), memory.read_port(domain="comb")
        produce, consume = Signal(range(places)), Signal(range(places))
        rows, holding, leaving = Signal(range(places + 1)), Signal(), Signal()   # holding: rows ≠ 0
        free = Signal(range(places + 1), init=places)   # places not taken or promised
        writing = Signal()                              # the write enable from a register
        m.d.sync += writing.eq(self.arriving)
        m.d.comb += [write.addr.eq(produce), write.en.eq(writing), write.data.eq(self.data)]
        with m.If(writing):
            m.d.sync += produce.eq(Mux(produce == places - 1, 0, produce + 1))
        # the new count of free places chosen among precomputed ones
        with m.Switch(Cat(self.promise, leaving)):
            for events in range(4):
                gained = ((events >> 1) & 1) - (events & 1)
                with m.Case(events):
                    m.d.sync += [free.eq(free + gained), self.room.eq(free + gained != 0)]
        # The oldest row moves from the LUT RAM into the output register (giving its place back) when that is empty
        # or being taken: `out` leaves from registers, not from the LUT RAM's read multiplexers.
        m.d.comb += [read.addr.eq(consume), leaving.eq(holding & (~self.out.valid | self.out.ready))]
        payload = data_register(m, self.out.payload, "out_payload")
        with m.If(leaving):
            m.d.sync += [consume.eq(Mux(consume == places - 1, 0, consume + 1)), payload.eq(read.data),
                         self.out.valid.eq(1)]
        with m.Elif(self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        credit_counter(m, rows, holding, writing, leaving)
        return m
