"""A memory whose reads leave through a register: a block RAM with its output register in use.

`RegisteredReadMemory(width, depth, reads)`: one write port (`write_addr`, `write_data`, `write_en`) and
`reads` read ports; `read_data[i]` is the word that was at `read_addr[i]` two clock edges earlier (the
block RAM's read, then its output register). A read in the same cycle as a write to its address returns
either word: callers resolve that collision themselves.

On a Lattice ECP5 platform (`platform.family == "ecp5"`), for depths up to 512, each read port gets its own
copy of ⌈width / 36⌉ DP16KD blocks in 36-bit pseudo-dual-port mode with REGMODE_B = "OUTREG": Yosys maps
memories to DP16KD without the output register, leaving the block's 5.6 ns clock-to-output in front of the
fabric route. The pin use follows Yosys's own PDPW16KD mapping (write enables on ADA0-3, the word address on
AD*5-13, data bits 0-17 on the A pins and 18-35 on the B pins). Elsewhere: `lib.memory.Memory` and registers.
"""

from __future__ import annotations

from amaranth import ClockSignal, Const, Module, Signal
from amaranth.hdl import Instance
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["RegisteredReadMemory", "DP16KD_DEPTH", "DP16KD_WIDTH"]

DP16KD_DEPTH, DP16KD_WIDTH = 512, 36      # one DP16KD in 36-bit pseudo-dual-port mode
ADDRESS_OFFSET = 5                        # the word address sits on AD*5 … AD*13


class RegisteredReadMemory(wiring.Component):
    LATENCY = 2

    def __init__(self, width: int, depth: int, reads: int = 1):
        for name, value in (("width", width), ("depth", depth), ("reads", reads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RegisteredReadMemory {name} = {value!r}: must be a positive integer")
        self.width, self.depth, self.reads = width, depth, reads
        address = max(1, (depth - 1).bit_length())
        super().__init__({
            "write_addr": In(address), "write_data": In(width), "write_en": In(1),
            "read_addr": In(address).array(reads), "read_data": Out(width).array(reads),
        })

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "family", None) == "ecp5" and self.depth <= DP16KD_DEPTH:
            for port in range(self.reads):
                for block in range(-(-self.width // DP16KD_WIDTH)):
                    m.submodules[f"block{port}_{block}"] = self._dp16kd(m, port, block)
            return m
        memory = m.submodules.memory = Memory(shape=self.width, depth=self.depth, init=[])
        write = memory.write_port()
        m.d.comb += [write.addr.eq(self.write_addr), write.data.eq(self.write_data), write.en.eq(self.write_en)]
        for port in range(self.reads):
            read = memory.read_port()
            m.d.comb += read.addr.eq(self.read_addr[port])
            m.d.sync += self.read_data[port].eq(read.data)
        return m

    def _dp16kd(self, m: Module, port: int, block: int) -> Instance:
        low = block * DP16KD_WIDTH
        bits = min(DP16KD_WIDTH, self.width - low)
        data_in = Signal(DP16KD_WIDTH, name=f"data_in{port}_{block}")
        data_out = Signal(DP16KD_WIDTH, name=f"data_out{port}_{block}")
        m.d.comb += [data_in.eq(self.write_data[low:low + bits]),
                     self.read_data[port][low:low + bits].eq(data_out[:bits])]
        pins = {}
        for bit in range(18):
            pins[f"i_DIA{bit}"], pins[f"i_DIB{bit}"] = data_in[bit], data_in[18 + bit]
            pins[f"o_DOA{bit}"], pins[f"o_DOB{bit}"] = data_out[bit], data_out[18 + bit]
        for bit in range(14):
            word_bit = bit - ADDRESS_OFFSET
            in_range = 0 <= word_bit < len(self.write_addr)
            pins[f"i_ADA{bit}"] = (self.write_en if bit < 4 else
                                   self.write_addr[word_bit] if in_range else Const(0))
            pins[f"i_ADB{bit}"] = self.read_addr[port][word_bit] if in_range else Const(0)
        return Instance(
            "DP16KD",
            p_DATA_WIDTH_A=DP16KD_WIDTH, p_DATA_WIDTH_B=DP16KD_WIDTH, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
            p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
            p_CLKAMUX="CLKA", p_CLKBMUX="CLKB", p_GSR="AUTO",
            i_CLKA=ClockSignal(), i_WEA=Const(1), i_CEA=Const(1), i_OCEA=Const(0), i_RSTA=Const(0),
            i_CLKB=ClockSignal(), i_WEB=Const(0), i_CEB=Const(1), i_OCEB=Const(1), i_RSTB=Const(0),
            **{f"i_CS{side}{n}": Const(0) for side in "AB" for n in range(3)},
            **pins)
