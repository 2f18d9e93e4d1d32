"""An AXI4-Lite master for simulation: the host side of `HostRegisters`, for the tests and the firmware's
simulated transports. Each call runs the handshake through `tick`, an async function that advances one clock
cycle (`ctx.tick`, or a transport's tick that also serves the DRAM), and raises `AXILiteError` on a response
other than OKAY or when the slave does not answer within `timeout` cycles. With `stall` > 0 (and a seeded
`rng`) the master holds BREADY / RREADY low and offers WVALID late with that probability each cycle, as an
AXI4-Lite master may."""

from __future__ import annotations

from hw.memory.axi import Response

__all__ = ["AXILiteMaster", "AXILiteError"]


class AXILiteError(RuntimeError):
    """A register access answered SLVERR / DECERR, or not at all."""


class AXILiteMaster:
    def __init__(self, ctx, bus, tick, timeout: int = 1000, stall: float = 0.0, rng=None):
        self.ctx, self.bus, self.tick, self.timeout = ctx, bus, tick, timeout
        self.stall, self.rng = stall, rng

    def _now(self) -> bool:
        return self.stall == 0 or self.rng.random() >= self.stall

    async def write(self, offset: int, value: int, strobe: int = 0xF) -> None:
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.awaddr, offset)
        ctx.set(bus.wdata, value & 0xFFFF_FFFF)
        ctx.set(bus.wstrb, strobe)
        ctx.set(bus.awvalid, 1)
        address_sent = data_sent = False
        for _ in range(self.timeout):
            if not data_sent and self._now():
                ctx.set(bus.wvalid, 1)
            ctx.set(bus.bready, self._now())
            address_sent |= bool(ctx.get(bus.awvalid) and ctx.get(bus.awready))
            data_sent |= bool(ctx.get(bus.wvalid) and ctx.get(bus.wready))
            response = ctx.get(bus.bvalid) and ctx.get(bus.bready)
            resp = ctx.get(bus.bresp)
            await self.tick()
            if address_sent:
                ctx.set(bus.awvalid, 0)
            if data_sent:
                ctx.set(bus.wvalid, 0)
            if response:
                ctx.set(bus.bready, 0)
                self._check(resp, "write", offset)
                return
        raise AXILiteError(f"register write at {offset:#x}: no response within {self.timeout} cycles")

    async def read(self, offset: int) -> int:
        ctx, bus = self.ctx, self.bus
        ctx.set(bus.araddr, offset)
        ctx.set(bus.arvalid, 1)
        for _ in range(self.timeout):
            ctx.set(bus.rready, self._now())
            taken = ctx.get(bus.arvalid) and ctx.get(bus.arready)
            response = ctx.get(bus.rvalid) and ctx.get(bus.rready)
            data, resp = ctx.get(bus.rdata), ctx.get(bus.rresp)
            await self.tick()
            if taken:
                ctx.set(bus.arvalid, 0)
            if response:
                ctx.set(bus.rready, 0)
                self._check(resp, "read", offset)
                return int(data)
        raise AXILiteError(f"register read at {offset:#x}: no response within {self.timeout} cycles")

    @staticmethod
    def _check(resp, what, offset):
        if Response(resp) != Response.OKAY:
            raise AXILiteError(f"register {what} at {offset:#x}: {Response(resp).name}")
