"""The driver's transports over a simulator: the `Accelerator` with a DRAM on its AXI4 port and an AXI4-Lite master
on its host port, in Amaranth's simulator (`pysim`: the DRAM models of `hw.sim.dram`, in Python) or Verilator
(`verilator`: `hw.sim.verilator`, the same DRAM timing and rules served natively each cycle, so a run of a
million cycles takes seconds; a build of a minute or two the first time); or the whole board (`board`:
`hw.board.system.BoardSystem` in Verilator, the SDRAM chip and the host's end of the UART served natively,
`hw.sim.native_board`), driven over the UART through `firmware.board.BoardTransport` as a board is.

`simulate(accelerator, host, dram_bytes, simulator="pysim", **dram)` runs `await host(transport)` and returns its
result; every simulated cycle serves the DRAM, whatever the host is doing. `dram`: `latency` (cycles to a read
burst's first beat; write responses take half), `stall` (the probability of a stall on each AXI4 channel each
cycle; each simulator draws its own), `seed`, and `fail_reads` / `fail_writes` (byte ranges that answer SLVERR).
With no stalls both simulators see the same DRAM, cycle for cycle. The board takes none of them (its DRAM is the
SDRAM) but those of `SimulatedBoard`: its clock, and `preload`: the resident upload (the weights) written through
a backdoor first, with its tag, as on a board that holds it already (the link then reads the tag and skips the
upload); the UART runs at `BOARD_DIVISOR` cycles a bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from golden.config import config_hash
from hw.board.system import BoardSystem
from hw.board.top import DEFAULT_CLOCK_HZ
from hw.control.accelerator import Accelerator
from hw.sim import simulate as run_simulation
from hw.sim.axilite import AXILiteMaster
from hw.sim.dram import AXI4ReadModel, AXI4WriteModel, check_access
from hw.sim.native_board import NativeSdram, NativeUart, UARTError
from hw.sim.native_dram import NativeDram

from .board import BoardTransport, BridgeLink, LinkError, resident_tag

__all__ = ["SimulatorTransport", "VerilatorTransport", "SimulatedBoard", "simulate", "accelerator_for", "SIMULATORS"]


class _Transport:
    """The host's side of a transport: registers over AXI4-Lite, `wait`; DRAM access is the subclass's."""

    def __init__(self, ctx, accelerator):
        self.ctx, self.accelerator = ctx, accelerator
        self.host = AXILiteMaster(ctx, accelerator.host, self.tick)
        self.cycles = 0

    async def read32(self, offset: int) -> int:
        return await self.host.read(offset)

    async def write32(self, offset: int, value: int) -> None:
        await self.host.write(offset, value)

    async def upload(self, address: int, data: bytes) -> bool:
        """What stays resident, written every time (a simulation starts with an empty DRAM)."""
        await self.write_dram(address, data)
        return True

    async def wait(self, cycles: int) -> None:
        for _ in range(cycles):
            await self.tick()

    async def wait_irq(self, cycles: int) -> int:
        """Cycles until the accelerator's `irq` is high after one, at most `cycles`; how many ran."""
        return await self._wait_for(self.accelerator.irq, cycles)

    async def _wait_for(self, port, cycles: int) -> int:
        for ran in range(1, cycles + 1):
            await self.tick()
            if self.ctx.get(port):
                return ran
        return cycles

    async def wait_issues(self, count: int, cycles: int) -> list[int]:
        """The transport's cycle (`cycles`) of each of the next `count` instructions the accelerator issues (its
        `issued` trace port), waiting at most `cycles` for each; fewer if one does not come."""
        issued = []
        for _ in range(count):
            ran = await self._wait_for(self.accelerator.issued, cycles)
            if ran == cycles and not self.ctx.get(self.accelerator.issued):
                break
            issued.append(self.cycles)
        return issued


class SimulatorTransport(_Transport):
    """Amaranth's simulator, the DRAM in Python (`AXI4ReadModel`, `AXI4WriteModel`) over `dram`."""

    def __init__(self, ctx, accelerator, dram_bytes: int, *, latency: int = 8, stall: float = 0.0, seed: int = 0,
                 fail_reads: range | None = None, fail_writes: range | None = None):
        super().__init__(ctx, accelerator)
        self.dram = np.zeros(dram_bytes, np.uint8)
        bus = accelerator.bus.beat_bytes
        self.reads = AXI4ReadModel(self.dram, bus, latency=latency, ar_stall=stall, r_stall=stall, fail=fail_reads,
                                   seed=seed)
        self.writes = AXI4WriteModel(self.dram, bus, latency=max(1, latency // 2), aw_stall=stall, w_stall=stall,
                                     b_stall=stall, fail=fail_writes, seed=seed + 1)

    async def tick(self) -> None:
        self.reads.drive(self.ctx, self.accelerator.axi)
        self.writes.drive(self.ctx, self.accelerator.axi)
        await self.ctx.tick()
        self.reads.advance()
        self.writes.advance()
        self.cycles += 1

    async def write_dram(self, address: int, data: bytes) -> None:
        check_access(address, len(data), len(self.dram))
        self.dram[address:address + len(data)] = np.frombuffer(bytes(data), np.uint8)

    async def read_dram(self, address: int, length: int) -> bytes:
        check_access(address, length, len(self.dram))
        return self.dram[address:address + length].tobytes()


class VerilatorTransport(_Transport):
    """Verilator, the DRAM native in the verilated model (`hw.sim.native_dram`); `wait` runs in one call."""

    def __init__(self, ctx, accelerator, dram_bytes: int, *, latency: int = 8, stall: float = 0.0, seed: int = 0,
                 fail_reads: range | None = None, fail_writes: range | None = None):
        super().__init__(ctx, accelerator)
        self.model = ctx.model
        self.dram = NativeDram(self.model, accelerator.axi, dram_bytes, read_latency=latency,
                               write_latency=max(1, latency // 2), stall=stall, seed=seed, fail_reads=fail_reads,
                               fail_writes=fail_writes)

    async def tick(self) -> None:
        await self.ctx.tick()
        self.cycles += 1

    async def wait(self, cycles: int) -> None:
        self.model.tick(cycles)
        self.cycles += cycles

    async def _wait_for(self, port, cycles: int) -> int:
        ran = self.model.tick_until(port, cycles)
        self.cycles += ran
        return ran

    async def write_dram(self, address: int, data: bytes) -> None:
        self.dram.write(address, data)

    async def read_dram(self, address: int, length: int) -> bytes:
        return self.dram.read(address, length)


class SimulatedUart:
    """The link's pipe on the simulated board's UART (`hw.sim.native_board.NativeUart`); `cycles` the model's."""

    def __init__(self, model, uart, divisor: int):
        self.model, self.uart, self.divisor, self.sent = model, uart, divisor, 0

    @property
    def cycles(self) -> int:
        return self.model.cycles

    async def send(self, data: bytes) -> None:
        self.uart.send(data)
        self.sent += len(data)

    async def receive(self, count: int) -> bytes:
        budget = 20 * self.divisor * (self.sent + count) + 1_000_000     # the line's time, twice, and the bus's
        self.sent = 0
        try:
            return self.uart.receive(count, budget)
        except UARTError as error:
            raise LinkError(str(error)) from None

    async def idle(self, cycles: int) -> None:
        self.model.tick(cycles)


class SimulatedBoardTransport(BoardTransport):
    """`BoardTransport` on the simulated board; with `preload`, an upload is first put in place by the backdoor
    (`sdram`: the `NativeSdram`), tag and all."""

    def __init__(self, link, sdram, *, preload: bool = False):
        super().__init__(link, sdram.size)
        self.sdram, self.preload = sdram, preload

    async def upload(self, address: int, data: bytes) -> bool:
        if self.preload:
            self.sdram.write(address, data)
            self.sdram.write(self.tag_address, resident_tag(address, data))
        return await super().upload(address, data)


SIMULATORS = ("pysim", "verilator", "board")
BOARD_DIVISOR = 4           # the simulated board's UART cycles a bit: the fewest it takes (the board's: 7)


_ACCELERATORS: dict[int, Accelerator] = {}     # config_hash → its accelerator, the least recently used first


def accelerator_for(model, accel) -> Accelerator:
    """`Accelerator.for_model(model, accel)`, one per process for each of the last four hardware configurations
    (`config_hash`: pairs that differ only in their names, or in how they write blocks of all tokens, build the same
    hardware and share it): a simulation may reuse it, and the fast simulator converts it to Verilog once (half a
    minute for the tiny 4×4 one)."""
    hardware = config_hash(model, accel)
    accelerator = _ACCELERATORS.pop(hardware, None)
    _ACCELERATORS[hardware] = Accelerator.for_model(model, accel) if accelerator is None else accelerator
    while len(_ACCELERATORS) > 4:
        del _ACCELERATORS[next(iter(_ACCELERATORS))]
    return _ACCELERATORS[hardware]


@functools.lru_cache(maxsize=2)
def board_for(accelerator, clock_hz: float) -> BoardSystem:
    """The simulated board around `accelerator` at `clock_hz`, one per process for each."""
    return BoardSystem(accelerator.model, accelerator.accel, clock_hz=clock_hz, divisor=BOARD_DIVISOR,
                       accelerator=accelerator)


@dataclass(frozen=True)
class SimulatedBoard:
    """The board in simulation at `clock_hz` (its SDRAM's timing in cycles), the resident upload preloaded through
    the backdoor with `preload`; `drive(host, accelerator)` runs `await host(transport)` on it, after the SDRAM's
    initialisation (as a host waits after programming a board)."""
    clock_hz: float = DEFAULT_CLOCK_HZ
    preload: bool = False

    def __str__(self) -> str:
        return f"simulated board at {self.clock_hz / 1e6:g} MHz"

    def drive(self, host, accelerator, dram_bytes: int = 0):
        from hw.sim.verilator import Verilated, VerilatorContext, run

        board = board_for(accelerator, self.clock_hz)
        model = Verilated(board, "board")
        sdram = NativeSdram(model, board.sdram, board.chip)
        link = BridgeLink(SimulatedUart(model, NativeUart(model, board.rx, board.tx, board.divisor), board.divisor),
                          accelerator.accel.dram_bytes_per_beat)
        transport = SimulatedBoardTransport(link, sdram, preload=self.preload)
        if dram_bytes > transport.tag_address:
            raise ValueError(f"the simulated board has {transport.tag_address:,} bytes of DRAM, not {dram_bytes:,}")
        power_up = board.chip.timing.cycles(board.clock_hz).power_up
        if model.tick_until(board.ready, 2 * power_up) == 2 * power_up:
            raise RuntimeError(f"the simulated board's SDRAM was not ready within {2 * power_up:,} cycles")
        result = {}

        async def testbench(ctx):
            result["value"] = await host(transport)
        run(VerilatorContext(model), testbench)
        return result["value"]


def simulate(accelerator, host, dram_bytes: int, simulator: str = "pysim", **dram):
    """Run `await host(transport)` against `accelerator` in `simulator`; its return value."""
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator {simulator!r}: one of {', '.join(SIMULATORS)}")
    result = {}

    if simulator == "board":
        return SimulatedBoard(**dram).drive(host, accelerator, dram_bytes)
    if simulator == "pysim":
        async def testbench(ctx):
            result["value"] = await host(SimulatorTransport(ctx, accelerator, dram_bytes, **dram))
        run_simulation(accelerator, testbench)
    else:
        from hw.sim.verilator import Verilated, VerilatorContext, run

        async def testbench(ctx):
            result["value"] = await host(VerilatorTransport(ctx, accelerator, dram_bytes, **dram))
        run(VerilatorContext(Verilated(accelerator, "accelerator")), testbench)
    return result["value"]
