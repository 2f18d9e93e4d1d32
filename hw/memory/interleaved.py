"""`InterleavedMemory`: one memory of narrow words kept in `banks` banks, word a in bank a mod banks, so that a
wide port reads `banks` consecutive words in one cycle; each bank is one copy of a true dual-port block RAM."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Out

from ..common.arith import address_bits
from ..common.pipeline import REGISTERED_READ_LATENCY, delay_line

__all__ = ["InterleavedMemory"]


class InterleavedMemory(wiring.Component):
    """`depth` words of `width` bits (`depth` a multiple of `banks`, `banks` a power of two). Every read port has
    the contract of a `lib.memory` port (`data` a cycle after `en`, held while `en` is low) within the rules below.
    Each bank's block RAM has two ports: port A takes the write and the reads that share it in time, port B the
    free read, so Yosys maps a bank to one copy of true dual-port blocks (ECP5 DP16KD), not a copy per read port:
    - `write`: word `addr` (port A);
    - `read`: word `addr` (port B), in any cycle; the word written in the same cycle reads as the new word in
      simulation and as an undefined one in synthesis (`hw.flow.synth.UNDEFINED_COLLISIONS`, as the block's two
      ports leave it), so the user must not use it. The top level does not: such reads are the engine's X reads
      (enabled in every cycle) of words it does not take;
    - `shared`: word `addr` (port A), never enabled in a cycle with `write.en`;
    - `wide` (with `wide`): words `banks`·addr … `banks`·addr + banks − 1, the lowest in the low bits of `data`
      (port A), never enabled in a cycle with `write.en` or `shared.en`.
    Port A reads in every cycle one of its users enables it (a write's at the write's address), so `shared`'s and
    `wide`'s data are held only until the next cycle with a write or the other's read.
    The user keeps port A's users apart (the top level's scoreboard does, docs/architecture.md section 11).
    With `registered`, `read` and `wide` give their words `REGISTERED_READ_LATENCY` = 2 cycles after `en` (held
    alike), each bank's output registered before the banks' multiplexer."""

    def __init__(self, width: int, depth: int, banks: int = 1, *, wide: bool = False, registered: bool = False):
        problem = next((f"{name} = {value!r}: a positive integer" for name, value in
                        (("width", width), ("depth", depth), ("banks", banks))
                        if not isinstance(value, int) or value < 1), None)
        if problem is None and (banks & (banks - 1) or depth % banks):
            problem = f"banks = {banks}: a power of two dividing depth ({depth})"
        if problem is not None:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"InterleavedMemory {problem}")
        self.width, self.depth, self.banks, self.has_wide, self.registered = width, depth, banks, wide, registered
        addr = address_bits(depth)
        members = {"write": Out(WritePort.Signature(addr_width=addr, shape=width)),
                   "read": Out(ReadPort.Signature(addr_width=addr, shape=width)),
                   "shared": Out(ReadPort.Signature(addr_width=addr, shape=width))}
        if wide:
            members["wide"] = Out(ReadPort.Signature(addr_width=address_bits(depth // banks), shape=width * banks))
        super().__init__(members)

    def model(self, words, op: str, addr: int) -> int:
        """What a read of `op` ("narrow" or "wide") at `addr` returns from the words `words` (a list)."""
        if op == "wide":
            return sum(words[self.banks * addr + b] << (self.width * b) for b in range(self.banks))
        return words[addr]

    def elaborate(self, platform):
        m = Module()
        n = self.banks
        low = (n - 1).bit_length()
        narrow = {self.read: [], self.shared: []}      # each narrow port's data, bank by bank
        wide_data = []
        # port A's address: the write's in its cycle, else the wide read's in its cycle, else the shared read's
        # (so the shared user's enable, often the end of a handshake, chooses no address)
        shared_addr = Signal(address_bits(self.depth // n))
        m.d.comb += shared_addr.eq(self.shared.addr[low:])
        if self.has_wide:
            with m.If(self.wide.en):
                m.d.comb += shared_addr.eq(self.wide.addr)
        with m.If(self.write.en):
            m.d.comb += shared_addr.eq(self.write.addr[low:])
        for b in range(n):
            m.submodules[f"bank_{b}"] = bank = Memory(shape=self.width, depth=self.depth // n, init=[])
            write = bank.write_port()
            bank_write = self.write.en & (self.write.addr[:low] == b if low else 1)
            m.d.comb += [write.addr.eq(shared_addr), write.data.eq(self.write.data), write.en.eq(bank_write)]
            # port A reads in every write's cycle, so Yosys can give the write and the reads one block port
            port_a = bank.read_port()
            m.d.comb += [port_a.addr.eq(shared_addr),
                         port_a.en.eq(bank_write | self.shared.en | (self.wide.en if self.has_wide else 0))]
            narrow[self.shared].append(port_a.data)
            wide_data.append(self._output(m, port_a.data, f"bank{b}_a"))
            port_b = bank.read_port(transparent_for=(write,))
            m.d.comb += [port_b.addr.eq(self.read.addr[low:]), port_b.en.eq(self.read.en)]
            narrow[self.read].append(self._output(m, port_b.data, f"bank{b}_b"))
        if self.has_wide:
            m.d.comb += self.wide.data.eq(Cat(*wide_data))
        for port, data in narrow.items():
            if low:
                chosen = Signal(low)           # the bank of the word read, kept like the port's data
                with m.If(port.en):
                    m.d.sync += chosen.eq(port.addr[:low])
                if port is self.read:
                    chosen = self._output(m, chosen, "read_bank")
                m.d.comb += port.data.eq(Cat(*data).word_select(chosen, self.width))
            else:
                m.d.comb += port.data.eq(data[0])
        return m

    def _output(self, m, value, name: str):
        """`value` as `read` and `wide` see it: registered with `registered` (as many cycles as make the read's
        latency `REGISTERED_READ_LATENCY`), else itself."""
        return delay_line(m, value, REGISTERED_READ_LATENCY - 1, name, data=True)[-1] if self.registered else value
