"""The host bridge: requests of `hw.board.protocol` on a byte stream become AXI4-Lite register accesses and
AXI4 memory beats; replies go back on another byte stream (the board's UART, `hw.board.uart`).

`HostBridge(bus_bytes, addr_width, register_addr_width, resync_cycles)`:
- `rx`: the request bytes, taken as they come (`ready` is always high: a UART cannot wait).
- `tx`: the reply bytes, a stream.
- `registers`: AXI4-Lite master (32-bit data): one transfer a READ32 / WRITE32, at the request's byte offset;
  RREADY and BREADY always high (a response comes only while the bridge waits for it), so that no state of the
  bridge reaches the registers' response logic.
- `memory`: AXI4 master, `8 · bus_bytes` bits: single-beat INCR bursts (ARLEN/AWLEN 0, ARSIZE the bus), one
  outstanding; WSTRB all ones; ID 0. A WRITE_MEM beat is written while the next one arrives: its write must
  finish within one beat's bytes on the line (thousands of cycles at 3 Mbaud), or the bytes behind it are lost.
- `resync_cycles`: the quiet time (no byte) after which the bridge drops a half-received request, and ends the
  quiet wait that follows a reply other than OK (`protocol.RESYNC_BYTES` byte times, in clock cycles).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..memory.axi import AXI4, AXI4Lite, Burst, Response
from .protocol import HEADER_BYTES, POLYNOMIAL, Op, Status

__all__ = ["HostBridge"]


def _byte(status: Status) -> Const:
    return Const(status, 8)


def crc8_step(crc, byte):
    """`protocol.crc8` of one more byte, as logic (eight shift-and-XOR steps)."""
    value = crc ^ byte
    for _ in range(8):
        value = (value << 1)[:8] ^ Mux(value[7], POLYNOMIAL, 0)
    return value


class HostBridge(wiring.Component):
    def __init__(self, *, bus_bytes: int = 16, addr_width: int = 32, register_addr_width: int = 8,
                 resync_cycles: int = 10_000):
        problem = None
        if bus_bytes not in (4, 8, 16, 32, 64, 128):
            problem = f"bus_bytes = {bus_bytes!r}: a power of two from 4 to 128"
        elif not isinstance(resync_cycles, int) or resync_cycles < 1:
            problem = f"resync_cycles = {resync_cycles!r}: a positive number of cycles"
        if problem is not None:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"HostBridge {problem}")
        self.bus_bytes, self.resync_cycles = bus_bytes, resync_cycles
        super().__init__({
            "rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
            "registers": Out(AXI4Lite.Signature(register_addr_width, 32)),
            "memory": Out(AXI4.Signature(addr_width, 8 * bus_bytes)),
        })

    def elaborate(self, platform):
        m = Module()
        rx, tx, regs, mem = self.rx, self.tx, self.registers, self.memory
        bus = self.bus_bytes
        size = (bus - 1).bit_length()

        # Receiving: every byte is taken; a quiet line for resync_cycles ends a request or a wait.
        m.d.comb += rx.ready.eq(1)
        got, byte = rx.valid, rx.payload
        quiet_for = Signal(range(self.resync_cycles + 1))
        quiet = quiet_for == self.resync_cycles
        m.d.sync += quiet_for.eq(Mux(got, 0, Mux(quiet, quiet_for, quiet_for + 1)))

        op, header, index, crc = Signal(8), Signal(48), Signal(range(7)), Signal(8)
        address, beats = Signal(mem.signature.addr_width), Signal(16)
        beat, filled = Signal(8 * bus), Signal(range(bus + 1))
        status, bus_error, lost = Signal(8), Signal(), Signal()
        out, out_bytes, tx_crc = Signal(40), Signal(range(6)), Signal(8)
        m.d.comb += [mem.arlen.eq(0), mem.arsize.eq(size), mem.arburst.eq(Burst.INCR), mem.araddr.eq(address),
                     mem.awlen.eq(0), mem.awsize.eq(size), mem.awburst.eq(Burst.INCR),
                     mem.wstrb.eq((1 << bus) - 1), mem.wlast.eq(1),
                     regs.araddr.eq(header[:8]), regs.awaddr.eq(header[:8]), regs.wdata.eq(header[8:40]),
                     regs.wstrb.eq(0xF), regs.rready.eq(1), regs.bready.eq(1), tx.payload.eq(out[:8])]

        def reply(first, *more):
            """Send the status `first` and the 32-bit `more`, then the CRC; then idle, or (a status other than
            OK) wait for a quiet line."""
            m.d.sync += [out.eq(Cat(first, *more)), out_bytes.eq(1 + 4 * len(more)), status.eq(first)]
            m.next = "reply"

        def send_out(then):
            m.d.comb += tx.valid.eq(1)
            with m.If(tx.ready):
                m.d.sync += [out.eq(out >> 8), out_bytes.eq(out_bytes - 1), tx_crc.eq(crc8_step(tx_crc, out[:8]))]
                with m.If(out_bytes == 1):
                    m.next = then

        def response_status(resp):
            return Mux(resp == Response.OKAY, _byte(Status.OK), _byte(Status.BUS_ERROR))

        # The memory write engine: one single-beat burst of `pending` at a time.
        writing, sent, pending, write_address = Signal(), Signal(2), Signal(8 * bus), Signal.like(address)
        m.d.comb += [mem.awvalid.eq(writing & ~sent[0]), mem.wvalid.eq(writing & ~sent[1]), mem.wdata.eq(pending),
                     mem.awaddr.eq(write_address), mem.bready.eq(writing & sent.all())]
        with m.If(writing):
            m.d.sync += sent.eq(sent | Cat(mem.awready, mem.wready))
            with m.If(mem.bvalid & sent.all()):
                m.d.sync += [writing.eq(0), sent.eq(0), bus_error.eq(bus_error | (mem.bresp != Response.OKAY))]

        with m.FSM():
            with m.State("idle"):
                m.d.sync += [tx_crc.eq(0), index.eq(0), crc.eq(crc8_step(Const(0, 8), byte)), op.eq(byte)]
                with m.If(got & Cat(byte == o.value for o in Op).any()):
                    m.next = "header"
                with m.Elif(got):
                    reply(_byte(Status.BAD_COMMAND))
            with m.State("header"):
                with m.If(got):
                    m.d.sync += [header.word_select(index, 8).eq(byte), index.eq(index + 1),
                                 crc.eq(crc8_step(crc, byte))]
                    with m.If(Cat((op == o.value) & (index == n - 1) for o, n in HEADER_BYTES.items()).any()):
                        m.next = "check"
                with m.Elif(quiet):
                    m.next = "idle"
            with m.State("check"):
                m.d.sync += [address.eq(header[:32]), beats.eq(header[32:48]), bus_error.eq(0), lost.eq(0),
                             filled.eq(0), out.eq(Status.OK), out_bytes.eq(1)]
                with m.If(got & (byte != crc)):
                    reply(_byte(Status.BAD_CRC))
                with m.Elif(got & (op == Op.READ32)):
                    m.next = "register read"
                with m.Elif(got & (op == Op.WRITE32)):
                    m.next = "register write"
                with m.Elif(got & ((header[32:48] == 0) | header[:size].any())):
                    reply(_byte(Status.MISALIGNED))
                with m.Elif(got & (op == Op.READ_MEM)):
                    m.next = "memory status"
                with m.Elif(got):
                    m.d.sync += crc.eq(0)
                    m.next = "memory data"
                with m.Elif(quiet):
                    m.next = "idle"

            self._register_states(m, reply, response_status)

            # --- READ_MEM: the status, a beat at a time, then the bus status and the CRC -----------------------
            with m.State("memory status"):
                send_out("memory address")
            with m.State("memory address"):
                m.d.comb += mem.arvalid.eq(1)
                with m.If(mem.arready):
                    m.next = "memory read"
            with m.State("memory read"):
                m.d.comb += mem.rready.eq(1)
                with m.If(mem.rvalid):
                    m.d.sync += [beat.eq(mem.rdata), filled.eq(bus), address.eq(address + bus), beats.eq(beats - 1),
                                 bus_error.eq(bus_error | (mem.rresp != Response.OKAY))]
                    m.next = "memory send"
            with m.State("memory send"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(beat[:8])]
                with m.If(tx.ready):
                    m.d.sync += [beat.eq(beat >> 8), filled.eq(filled - 1), tx_crc.eq(crc8_step(tx_crc, beat[:8]))]
                    with m.If((filled == 1) & (beats != 0)):
                        m.next = "memory address"
                    with m.Elif(filled == 1):
                        m.d.sync += [out.eq(Mux(bus_error, _byte(Status.BUS_ERROR), _byte(Status.OK))), out_bytes.eq(1),
                                     status.eq(Status.OK)]
                        m.next = "reply"

            # --- WRITE_MEM: bytes into a beat; a full beat is written while the next one arrives -------------
            with m.State("memory data"):
                with m.If(got):
                    m.d.sync += crc.eq(crc8_step(crc, byte))
                    with m.If(filled == bus - 1):
                        with m.If(writing):               # the last beat's write has not finished: lost
                            m.d.sync += lost.eq(1)
                        with m.Else():
                            m.d.sync += [pending.eq(Cat(beat[8:], byte)), writing.eq(1), write_address.eq(address)]
                        m.d.sync += [address.eq(address + bus), beats.eq(beats - 1), filled.eq(0)]
                        with m.If(beats == 1):
                            m.next = "memory data crc"
                    with m.Else():
                        m.d.sync += [beat.eq(Cat(beat[8:], byte)), filled.eq(filled + 1)]
                with m.Elif(quiet):
                    m.next = "idle"
            with m.State("memory data crc"):
                with m.If(got):
                    m.d.sync += lost.eq(lost | (byte != crc))
                    m.next = "memory write done"
                with m.Elif(quiet):
                    m.next = "idle"
            with m.State("memory write done"):
                with m.If(~writing):
                    reply(Mux(lost, _byte(Status.BAD_CRC), Mux(bus_error, _byte(Status.BUS_ERROR), _byte(Status.OK))))

            # --- Replies --------------------------------------------------------------------------------------
            with m.State("reply"):
                send_out("reply crc")
            with m.State("reply crc"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(tx_crc)]
                with m.If(tx.ready & (status == Status.OK)):
                    m.next = "idle"
                with m.Elif(tx.ready):
                    m.next = "quiet wait"
            with m.State("quiet wait"):                   # after a refusal: until the line is quiet
                with m.If(quiet):
                    m.next = "idle"
        return m

    def _register_states(self, m, reply, response_status):
        """READ32 and WRITE32: one AXI4-Lite transfer, then the reply."""
        regs = self.registers
        with m.State("register read"):
            m.d.comb += regs.arvalid.eq(1)
            with m.If(regs.arready):
                m.next = "register read data"
        with m.State("register read data"):
            with m.If(regs.rvalid):
                reply(response_status(regs.rresp), regs.rdata)
        with m.State("register write"):
            taken = Signal(2)                         # AW, W
            m.d.comb += [regs.awvalid.eq(~taken[0]), regs.wvalid.eq(~taken[1])]
            now = taken | Cat(regs.awready, regs.wready)
            m.d.sync += taken.eq(Mux(now.all(), 0, now))
            with m.If(now.all()):
                m.next = "register write response"
        with m.State("register write response"):
            with m.If(regs.bvalid):
                reply(response_status(regs.bresp))
