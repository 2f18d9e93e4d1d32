"""The host driver: one interface to the accelerator over interchangeable transports (Amaranth's simulator and
Verilator, `firmware.sim`; a board or the simulated board over its UART, `firmware.board`).

A transport gives the driver the host's view of the hardware, all `async`: `read32(offset)` /
`write32(offset, value)` on the host registers (AXI4-Lite), `write_dram(address, data)` / `read_dram(address,
length)` on the DRAM the accelerator masters, `upload(address, data)` for what stays resident (the model's
weights: a board's transport skips it when the board holds it already), `wait(cycles)` to let the hardware run,
and `wait_irq(cycles)` to let it run until its interrupt is high (at most `cycles`; returns the cycles that ran).

`Driver(transport, model, accel)`: `await connect()` reads ID and CONFIG_HASH and refuses hardware built for
another configuration; `await place(program)` puts the program and its regions in DRAM (`DramMap`), writes the
region registers and runs the program's start-up (what stays resident: the router weights); `await
run(program, task)` places it if it is not placed, writes TASK, starts at the program's entry with the
interrupt enabled, waits for the interrupt, checks STATUS.done, and returns a `RunResult`: the outputs the run
stored (`Program.stored_by`: the backbone's; `run_head`'s, that head's), read from the OUTPUT region in one span,
ERROR and ERROR_PC, CYCLES and the performance counters. Back-to-back runs of one program, of any tasks, write only
TASK, PROGRAM_ADDR and CONTROL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from golden.config import AcceleratorConfig, ModelConfig, config_hash
from hw.compute.gemm.geometry import tiles
from hw.control.isa import ErrorCause
from hw.control.registers import COUNTERS, ID_MAGIC, Control, Status, register

from .assembler import INSTRUCTION_BYTES, Assembler
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
    outputs: dict[str, bytes] = field(default_factory=dict)    # what the run stored (`Program.stored_by`), by name
    finished_at: int = 0        # the transport's cycle count when the host saw the run end (its interrupt)
    issue_cycles: list[int] = field(default_factory=list)    # with `issues`: each issue's cycle of the run

    @property
    def ok(self) -> bool:
        return self.cause is ErrorCause.NONE


class Driver:
    START_WITH_IRQ = Control.const({"start": 1, "irq_enable": 1}).as_value().value

    def __init__(self, transport, model: ModelConfig, accel: AcceleratorConfig, *, prefetch_instructions: int = 8):
        self.transport, self.model, self.accel = transport, model, accel
        self.prefetch_bytes = 16 * prefetch_instructions
        self.placed: Program | None = None          # the program in DRAM, its start-up run
        self.start_up: RunResult | None = None

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

    async def place(self, program: Program, *, timeout: int = 10_000_000) -> RunResult | None:
        """Place `program` and its regions in DRAM, point the region registers at them and run its start-up (if
        it has one); the start-up's result. `run` places a program it has not placed yet."""
        layout = self.dram_map(program)
        transport = self.transport
        await transport.write_dram(layout.program, Assembler.program_bytes(program.words))
        await transport.upload(layout.model, program.model)
        await transport.write_dram(layout.image, program.image)
        await transport.write_dram(layout.output, bytes(program.output_bytes))
        for name, value in (("MODEL_ADDR", layout.model), ("IMAGE_ADDR", layout.image),
                            ("OUTPUT_ADDR", layout.output)):
            await self._write(name, value)
        self.placed, self.start_up = program, None
        if program.entry:
            await self._start(layout.program)
            self.start_up = await self.finish(program, timeout)
            if not self.start_up.ok:
                raise DriverError(f"the start-up failed: {self.start_up.cause.name} at instruction "
                                  f"{self.start_up.error_pc}")
        return self.start_up

    async def run(self, program: Program, task: int = 0, *, timeout: int = 10_000_000, issues: int = 0) -> RunResult:
        """One run of `program` (placed first if it is not the one placed) for `task`: a task switch writes TASK
        and nothing else. With `issues`, the result has the cycle of each of its first `issues` instructions'
        issue (`issue_cycles`, from the run's start; a transport with the `issued` trace, the simulators')."""
        await self.start(program, task)
        return await self.finish(program, timeout, issues=issues)

    async def run_head(self, program: Program, task: int = 0, *, timeout: int = 10_000_000,
                       issues: int = 0) -> RunResult:
        """The run of `task`'s head, after a run of the backbone (`run`) for that task has left its output on
        chip: from the head's entry (`Program.heads`)."""
        if task not in program.heads:
            raise DriverError(f"the program has no head for task {task!r} (it has {sorted(program.heads)})")
        await self.start(program, task, program.heads[task])
        return await self.finish(program, timeout, head=task, issues=issues)

    async def start(self, program: Program, task: int = 0, entry: int | None = None) -> None:
        """Start a run of `program` for `task` (placing it first if it is not the one placed) at instruction
        `entry` (by default the program's); `finish` waits for it."""
        if self.placed is not program:
            await self.place(program)
        index = program.entry if entry is None else entry
        entry = self.dram_map(program).program + INSTRUCTION_BYTES * index
        if entry % self.accel.dram_bytes_per_beat:
            raise DriverError(f"the program's entry (instruction {index}, byte {entry}) is not aligned to "
                              f"the {self.accel.dram_bytes_per_beat}-byte bus: the program fetch reads whole bus words")
        await self._write("TASK", task)
        await self._start(entry)

    async def _start(self, address: int) -> None:
        await self._write("PROGRAM_ADDR", address)
        await self._write("CONTROL", self.START_WITH_IRQ)

    async def counters(self) -> dict[str, int]:
        """The performance counters as they stand (they count while a run is going)."""
        return {name: await self._read(name) for name, _ in COUNTERS}

    async def finish(self, program: Program, timeout: int = 10_000_000, *, head: int | None = None,
                     issues: int = 0) -> RunResult:
        """Wait (at most `timeout` cycles) for the run of `program` started last to end; its result, with the
        outputs that run stores (the backbone's, or with `head` that task's head's), read in one span, and with
        `issues` the cycles its first `issues` instructions issued at."""
        transport = self.transport
        issued = await transport.wait_issues(issues, timeout) if issues else []
        await transport.wait_irq(timeout)
        finished_at = transport.cycles
        if not await self._read("STATUS") >> Status["done"].offset & 1:
            raise DriverError(f"the accelerator did not finish within {timeout} cycles")
        cycles = await self._read("CYCLES_LO") | await self._read("CYCLES_HI") << 32
        counters = await self.counters()
        stored, span, first = program.stored_by(head), b"", 0
        if stored:                         # from the first output's bus word to the last output's end, whole words
            bus = self.accel.dram_bytes_per_beat
            first = min(offset for offset, _ in stored.values()) // bus * bus
            end = max(offset + length for offset, length in stored.values())
            span = await transport.read_dram(self.dram_map(program).output + first, tiles(end - first, bus) * bus)
        started = finished_at - cycles        # the cycle the run started at, as the transport counts
        return RunResult(ErrorCause(await self._read("ERROR")), await self._read("ERROR_PC"), cycles, counters,
                         {name: span[offset - first:offset - first + length]
                          for name, (offset, length) in stored.items()}, finished_at,
                         [at - started for at in issued])
