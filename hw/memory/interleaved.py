"""`InterleavedMemory`: one memory of narrow words kept in `banks` banks, word a in bank a mod banks, so that a
wide port reads `banks` consecutive words in one cycle."""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Out

from ..common.arith import address_bits

__all__ = ["InterleavedMemory"]


class InterleavedMemory(wiring.Component):
    """`depth` words of `width` bits (`depth` a multiple of `banks`, `banks` a power of two), every port with the
    contract of a `lib.memory` port (read data a cycle after `en`, held while `en` is low; reads see the old word
    when a write to the same word lands in the same cycle):
    - `write`: word `addr`;
    - `read_0` … `read_{narrow_reads-1}`: word `addr`;
    - `wide`: words `banks`·addr … `banks`·addr + banks − 1, the lowest in the low bits of `data`.
    With `banks` = 1 it is a plain memory and `wide` reads one word."""

    def __init__(self, width: int, depth: int, banks: int = 1, narrow_reads: int = 1):
        problem = next((f"{name} = {value!r}: a positive integer" for name, value in
                        (("width", width), ("depth", depth), ("banks", banks), ("narrow_reads", narrow_reads))
                        if not isinstance(value, int) or value < 1), None)
        if problem is None and (banks & (banks - 1) or depth % banks):
            problem = f"banks = {banks}: a power of two dividing depth ({depth})"
        if problem is not None:
            self._MustUse__silence = True             # never built, so never elaborated
            raise ValueError(f"InterleavedMemory {problem}")
        self.width, self.depth, self.banks = width, depth, banks
        addr = address_bits(depth)
        members = {"write": Out(WritePort.Signature(addr_width=addr, shape=width)),
                   "wide": Out(ReadPort.Signature(addr_width=address_bits(depth // banks), shape=width * banks))}
        members.update({f"read_{i}": Out(ReadPort.Signature(addr_width=addr, shape=width))
                        for i in range(narrow_reads)})
        self.narrow_reads = narrow_reads
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
        narrow = [getattr(self, f"read_{i}") for i in range(self.narrow_reads)]
        bank_data = [[] for _ in narrow]
        wide_data = []
        for b in range(n):
            m.submodules[f"bank_{b}"] = bank = Memory(shape=self.width, depth=self.depth // n, init=[])
            write = bank.write_port()
            m.d.comb += [write.addr.eq(self.write.addr[low:]), write.data.eq(self.write.data),
                         write.en.eq(self.write.en & (self.write.addr[:low] == b if low else 1))]
            for port, data in zip(narrow, bank_data):
                read = bank.read_port()
                m.d.comb += [read.addr.eq(port.addr[low:]), read.en.eq(port.en)]
                data.append(read.data)
            read = bank.read_port()
            m.d.comb += [read.addr.eq(self.wide.addr), read.en.eq(self.wide.en)]
            wide_data.append(read.data)
        m.d.comb += self.wide.data.eq(Cat(*wide_data))
        for port, data in zip(narrow, bank_data):
            if low:
                chosen = Signal(low)           # the bank of the word read, kept like the port's data
                with m.If(port.en):
                    m.d.sync += chosen.eq(port.addr[:low])
                m.d.comb += port.data.eq(Cat(*data).word_select(chosen, self.width))
            else:
                m.d.comb += port.data.eq(data[0])
        return m
