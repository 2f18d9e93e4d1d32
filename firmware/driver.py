"""The host driver: one interface to the accelerator over interchangeable transports (Amaranth's simulator,
`firmware.sim`; Verilator and a board to come).

A transport gives the driver the host's view of the hardware, all `async`: `read32(offset)` /
`write32(offset, value)` on the host registers (AXI4-Lite), `write_dram(address, data)` / `read_dram(address,
length)` on the DRAM the accelerator masters, and `wait(cycles)` to let the hardware run.

`Driver(transport, model, accel)`: `await connect()` reads ID and CONFIG_HASH and refuses hardware built for
another configuration; `await run(program, task)` places the program and its regions in DRAM (`DramMap`),
writes the region registers and TASK, starts, polls STATUS until done, and returns a `RunResult`: the OUTPUT
region's bytes, ERROR and ERROR_PC, CYCLES and the performance counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from golden.config import AcceleratorConfig, ModelConfig, config_hash
from hw.control.isa import ErrorCause
from hw.control.registers import COUNTERS, ID_MAGIC, register

from .assembler import Assembler
from .compiler import Program
from .image import DramMap

__all__ = ["Driver", "DriverError", "RunResult"]


class DriverError(RuntimeError):
    """The hardware is not the one the program was built for, or it did not finish in time."""


@dataclass
class RunResult:
    cause: ErrorCause
    error_pc: int
    cycles: int
    counters: dict[str, int]
    output: bytes
    outputs: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.cause is ErrorCause.NONE


class Driver:
    POLL_CYCLES = 64

    def __init__(self, transport, model: ModelConfig, accel: AcceleratorConfig, *, prefetch_instructions: int = 8):
        self.transport, self.model, self.accel = transport, model, accel
        self.prefetch_bytes = 16 * prefetch_instructions

    async def _write(self, name: str, value: int) -> None:
        await self.transport.write32(register(name).offset, value)

    async def _read(self, name: str) -> int:
        return await self.transport.read32(register(name).offset)

    async def connect(self) -> None:
        identity = await self._read("ID")
        if identity >> 16 != ID_MAGIC:
            raise DriverError(f"no M3ViT accelerator answers: ID reads {identity:#010x}")
        expected = config_hash(self.model, self.accel)
        found = await self._read("CONFIG_HASH")
        if found != expected:
            raise DriverError(f"the hardware was built for another configuration (CONFIG_HASH {found:#010x}, "
                              f"{self.model.name} on {self.accel.name} is {expected:#010x})")

    def dram_map(self, program: Program) -> DramMap:
        return DramMap.for_program(16 * len(program.words), len(program.model), len(program.image),
                                   program.output_bytes, self.prefetch_bytes)

    async def run(self, program: Program, task: int = 0, *, timeout: int = 10_000_000) -> RunResult:
        layout = self.dram_map(program)
        transport = self.transport
        await transport.write_dram(layout.program, Assembler.program_bytes(program.words))
        await transport.write_dram(layout.model, program.model)
        await transport.write_dram(layout.image, program.image)
        await transport.write_dram(layout.output, bytes(program.output_bytes))
        for name, value in (("PROGRAM_ADDR", layout.program), ("MODEL_ADDR", layout.model),
                            ("IMAGE_ADDR", layout.image), ("OUTPUT_ADDR", layout.output), ("TASK", task)):
            await self._write(name, value)
        await self._write("CONTROL", 1)
        waited = 0
        while not (await self._read("STATUS")) & 0b10:
            if waited >= timeout:
                raise DriverError(f"the accelerator did not finish within {timeout} cycles")
            await transport.wait(self.POLL_CYCLES)
            waited += self.POLL_CYCLES
        cycles = await self._read("CYCLES_LO") | await self._read("CYCLES_HI") << 32
        counters = {name: await self._read(name) for name, _ in COUNTERS}
        output = await transport.read_dram(layout.output, program.output_bytes)
        return RunResult(ErrorCause(await self._read("ERROR")), await self._read("ERROR_PC"), cycles, counters,
                         output, {name: output[offset:offset + length]
                                  for name, (offset, length) in program.outputs.items()})
