"""A UART (8 data bits, no parity, one stop bit, least significant bit first) as two streams of bytes.

`UARTReceiver(divisor)`: `rx` is the line (idle high; metastability is the board top's: it registers the pin
twice before this); `data` a stream of the bytes received. A start bit is taken on a falling edge and checked
half a bit later; each bit is sampled in its middle, `divisor` cycles apart; a byte whose stop bit is low is
dropped and counted in `framing_errors` (8 bits, wrapping). `data` has no back-pressure to offer the line: a
byte not taken before the next one is complete is lost (`overruns`, 8 bits, wrapping).

`UARTTransmitter(divisor)`: `data` a stream of bytes to send, taken when the line is free; `tx` the line.

`divisor` is the clock cycles per bit, at least 4: `divisor_for(clock_hz, baud)` rounds clock / baud and
refuses a rate more than 2 % off (the receiving end samples each bit in its middle: a 10-bit frame tolerates
about 5 % between the two ends, 2 % a side).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTReceiver", "UARTTransmitter", "divisor_for"]


def divisor_for(clock_hz: float, baud: float) -> int:
    divisor = round(clock_hz / baud)
    if divisor < 4 or abs(clock_hz / divisor / baud - 1) > 0.02:
        raise ValueError(f"UART at {baud:,.0f} baud from a {clock_hz / 1e6:g} MHz clock: {clock_hz / baud:.2f} "
                         "cycles a bit, which no whole number of at least 4 matches within 2 %")
    return divisor


class _Line(wiring.Component):
    """A UART direction at `divisor` clock cycles a bit."""

    def __init__(self, divisor: int, members: dict):
        if not isinstance(divisor, int) or divisor < 4:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"UART divisor = {divisor!r}: at least 4 clock cycles a bit")
        self.divisor = divisor
        super().__init__(members)


class UARTReceiver(_Line):
    def __init__(self, divisor: int):
        super().__init__(divisor, {"rx": In(1, init=1), "data": Out(stream.Signature(8)),
                                   "framing_errors": Out(8), "overruns": Out(8)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bits = Signal(range(10))
        shift = Signal(8)
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        with m.FSM():
            with m.State("idle"):
                with m.If(~self.rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "start"
            with m.State("start"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(self.rx):                   # a glitch, not a start bit
                    m.next = "idle"
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bits.eq(0)]
                    m.next = "bits"
            with m.State("bits"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(bits == 8):                 # the stop bit's middle
                    with m.If(~self.rx):
                        m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                    with m.Else():
                        with m.If(self.data.valid & ~self.data.ready):
                            m.d.sync += self.overruns.eq(self.overruns + 1)
                        m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(1)]
                    m.next = "idle"
                with m.Else():
                    m.d.sync += [shift.eq(Cat(shift[1:], self.rx)),
                                 bits.eq(bits + 1), timer.eq(self.divisor - 1)]
        return m


class UARTTransmitter(_Line):
    def __init__(self, divisor: int):
        super().__init__(divisor, {"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        frame = Signal(10)                              # stop bit, the byte, start bit: bit 0 on the line
        left = Signal(range(11))                        # bits still to finish
        with m.If(left == 0):
            m.d.comb += self.data.ready.eq(1)
            with m.If(self.data.valid):
                m.d.sync += [frame.eq(Cat(0, self.data.payload, 1)), self.tx.eq(0), left.eq(10),
                             timer.eq(self.divisor - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [frame.eq(frame >> 1), self.tx.eq(Mux(left == 1, 1, frame[1])), left.eq(left - 1),
                         timer.eq(self.divisor - 1)]
        return m
