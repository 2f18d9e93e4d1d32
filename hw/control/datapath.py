"""The top level's data paths between DRAM, the on-chip memories and the GEMM engine's output.

- `LoadPath`: `LOAD` into ACTIVATION, SCRATCH, RESIDUAL or PARAMS. A command {address, length, memory, base}
  is taken when the path is idle; its bytes (a whole number of the memory's words) come through a
  `StreamReader` and a `Gearbox` to the memory's word width and are written to words `base`, `base` + 1, ….
  PARAMS (`LANE_WRITTEN`: only LOADs write it), where its word spans several bus words, takes each bus word
  into its lane of the word instead (a write port of bus-word granularity, a lane's enable each), no gearbox.
  `busy` from the cycle after the command until its last word is written.
- `StorePath` (`store_path.py`): `STORE` and `UPSAMPLE`, on-chip memory → DRAM.
- `OutputPath`: the GEMM engine's result rows into ACTIVATION, SCRATCH (int8), RESIDUAL (int16) or SCORES
  (int32), row t of
  N tile j at word `d_base + j·d_stride + t`; with `residual`, RESIDUAL's word there is read and the row added
  to it (`ResidualAdd`) before it is written back. Every beat takes 3 cycles, one a cycle; `active` while a
  beat is in the pipeline. With `transpose` the rows go through the `CornerTurn` into SCRATCH instead (qkv's K
  into Kᵀ, `d_stride` the K tiles of the head, `rows` the GEMM's M). A COMBINE-mode GEMM's rows are its
  tokens' (`row` the token), added into RESIDUAL like any other (`residual`).
Memory ports are `lib.memory` port signatures, connected by the top level.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from golden import ops

from ..common.arith import address_bits, times_constant
from ..common.gearbox import Gearbox
from ..common.pipeline import delay_line, kept_copies, skid_buffer
from ..memory.axi import AXI4Read
from ..memory.reader import StreamReader
from ..vector.residual import ResidualAdd
from .corner import CornerTurn
from .isa import Space
from .memories import OnChip

__all__ = ["TransferPath", "LoadPath", "OutputPath", "NormPath", "LOADABLE", "STORABLE",
           "UPSAMPLABLE", "GEMM_DESTINATIONS", "LANE_WRITTEN", "upsample_length"]

LOADABLE = (Space.ACTIVATION, Space.SCRATCH, Space.RESIDUAL, Space.PARAMS, Space.NORMS, Space.ROUTER,
            Space.ROUTER_PARAMS, Space.HIDDEN)
STORABLE = (Space.ACTIVATION, Space.SCRATCH, Space.RESIDUAL, Space.SCORES, Space.ROUTES)
UPSAMPLABLE = {Space.ACTIVATION: 8, Space.SCRATCH: 8, Space.RESIDUAL: 16}     # the memories' value bits
GEMM_DESTINATIONS = (Space.ACTIVATION, Space.SCRATCH, Space.RESIDUAL, Space.SCORES)
# memories no unit but the load path writes: where a word spans several bus words, each is written into its lane
LANE_WRITTEN = (Space.PARAMS,)


def upsample_length(words, word_bytes: int):
    """The bytes an UPSAMPLE writes for `words` (tiles × width) read from a memory of `word_bytes` words: 2·width
    values a tile, a value a word."""
    return words << word_bytes.bit_length()


def _port_name(space: Space) -> str:
    return space.name.lower()


class TransferPath(wiring.Component):
    """What the load and store paths share: a DRAM transfer unit (`unit`, started with each command, which is
    taken while the path is idle), a port per memory (`port`: a write or a read port signature), and the words
    of the transfer, counted from the command's `base` (`fields`: the command's further fields)."""

    def __init__(self, spaces: dict[Space, OnChip], kept, unit, axi, port, fields=None, granularity=None):
        self.spaces = {space: spaces[space] for space in kept}
        self.granularity = granularity or {}        # {space: bits a write enable covers}, where not the word
        self.unit = unit
        self.address_width = max(address_bits(memory.depth) for memory in self.spaces.values())
        super().__init__({
            "command": In(stream.Signature(data.StructLayout({
                "memory": Space, "base": unsigned(self.address_width), "address": unsigned(unit.addr_width),
                "length": unsigned(24), **(fields or {})}))),
            "axi": Out(axi(unit.addr_width, 8 * unit.bus_bytes)),
            **{_port_name(space): In(port(addr_width=max(1, address_bits(memory.depth)),   # HIDDEN: one word
                                          shape=unsigned(8 * memory.word_bytes),
                                          **({"granularity": self.granularity[space]}
                                             if space in self.granularity else {})))
               for space, memory in self.spaces.items()},
            "busy": Out(1),
            "error": Out(1),
        })

    def _front(self, m):
        """The unit started with each command; returns (the command's memory, the next word's address, the
        words left, the command's acceptance)."""
        m.submodules.unit = unit = self.unit
        wiring.connect(m, unit.axi, wiring.flipped(self.axi))
        m.d.comb += self.error.eq(unit.error)
        command = self.command.payload
        space, address, words_left = Signal(Space), Signal(self.address_width), Signal(24)
        m.d.comb += [self.command.ready.eq(~self.busy & unit.command.ready),
                     unit.command.payload.address.eq(command.address), unit.command.payload.length.eq(command.length),
                     unit.command.valid.eq(self.command.valid & ~self.busy)]
        accepted = self.command.valid & self.command.ready
        with m.If(accepted):
            m.d.sync += [self.busy.eq(1), space.eq(command.memory), address.eq(command.base)]
            with m.Switch(command.memory):
                for chosen, memory in self.spaces.items():
                    with m.Case(chosen):
                        shift = (memory.word_bytes - 1).bit_length()
                        m.d.sync += words_left.eq((command.length + memory.word_bytes - 1) >> shift)
        return space, address, words_left, accepted

    def _by_width(self, m, accepted, spaces) -> dict:
        """`spaces` by word width: {width: (spaces of that width, whether the command's memory is one of them: a
        register set as the command is `accepted`)}."""
        widths = {}
        for space in spaces:
            widths.setdefault(self.spaces[space].word_bytes, []).append(space)
        groups = {}
        for width, kept in widths.items():
            chosen = Signal(name=f"chosen{width}")
            with m.If(accepted):
                m.d.sync += chosen.eq(Cat(*(self.command.payload.memory == space for space in kept)).any())
            groups[width] = (kept, chosen)
        return groups

    def _gearboxes(self, m, bus_to_words: bool, accepted) -> dict:
        """A `Gearbox` between bus words and each memory word width (not the lane-written memories'): {width:
        (gearbox, spaces of that width, whether the command's memory is one of them)}."""
        bus = 8 * self.unit.bus_bytes
        return {width: (Gearbox(bus, 8 * width) if bus_to_words else Gearbox(8 * width, bus), spaces, chosen)
                for width, (spaces, chosen) in self._by_width(
                    m, accepted, [space for space in self.spaces if space not in self.granularity]).items()}


class LoadPath(TransferPath):
    """A LOAD: DRAM bytes from `address` into the memory's words from `base`, the bus's words through a skid
    buffer into a bus-to-word gearbox, each word written (its write port: `addr`, `data`, `en` from registers)
    the cycle after it leaves the gearbox; `busy` from the command until the last word is written."""

    def __init__(self, spaces: dict[Space, OnChip], reader: StreamReader):
        bus = reader.bus_bytes
        lanes = {space: 8 * bus for space in LANE_WRITTEN if space in spaces and spaces[space].word_bytes > bus}
        assert all(spaces[space].word_bytes % bus == 0 for space in lanes), "a lane-written word: whole bus words"
        super().__init__(spaces, LOADABLE, reader, AXI4Read.Signature, WritePort.Signature, granularity=lanes)

    def elaborate(self, platform):
        m = Module()
        reader = self.unit
        target, address, words_left, accepted = self._front(m)
        word_valid = Signal()
        # each word is written from registers a cycle after it leaves its gearbox (the bus's handshake does not
        # reach the memories' ports)
        write_address = Signal.like(address)
        # (a word being written into each memory: a register, a lane-written memory's any of its lanes' enables)
        writing = {space: Signal(name=f"writing_{space.name.lower()}") for space in self.spaces}
        # the bus's words pass a skid buffer first, so its handshake does not reach the gearboxes' registers either
        beat_valid, beat_ready, beat = Signal(), Signal(), Signal.like(reader.data.payload)
        skid_buffer(m, reader.data.valid, reader.data.ready, {"data": reader.data.payload}, beat_valid, beat_ready,
                    {"data": beat})
        for width, (gearbox, spaces, chosen) in self._gearboxes(m, True, accepted).items():
            m.submodules[f"gearbox{width}"] = gearbox
            m.d.comb += [gearbox.input.payload.eq(beat), gearbox.input.valid.eq(beat_valid & chosen),
                         gearbox.output.ready.eq(1)]
            with m.If(chosen):
                m.d.comb += [beat_ready.eq(gearbox.input.ready), word_valid.eq(gearbox.output.valid)]
            write_data = Signal(8 * width, name=f"write_data{8 * width}", reset_less=True)    # valid with `writing`
            m.d.sync += write_data.eq(gearbox.output.payload)
            for space in spaces:
                port = getattr(self, _port_name(space))
                m.d.sync += writing[space].eq(gearbox.output.valid & (target == space) & (words_left != 0))
                m.d.comb += [port.addr.eq(write_address), port.data.eq(write_data), port.en.eq(writing[space])]
        # the lane-written memories: each bus word into its lane (one-hot `lane`, from the first at each command),
        # the word complete with its last lane's
        for width, (spaces, chosen) in self._by_width(m, accepted, self.granularity).items():
            ratio = width // reader.bus_bytes
            lane = Signal(ratio, name=f"lane{width}", init=1)
            lane_data = Signal.like(beat, name=f"lane_data{width}", reset_less=True)   # valid with the enables
            m.d.sync += lane_data.eq(beat)
            with m.If(accepted):
                m.d.sync += lane.eq(1)
            with m.If(chosen):
                m.d.comb += [beat_ready.eq(1), word_valid.eq(beat_valid & lane[-1])]
                with m.If(beat_valid):
                    m.d.sync += lane.eq(lane.rotate_left(1))
            for space in spaces:
                port, enables = getattr(self, _port_name(space)), Signal(ratio, name=f"lanes_{space.name.lower()}")
                here = beat_valid & chosen & (target == space) & (words_left != 0)
                m.d.sync += enables.eq(Mux(here, lane, 0))
                m.d.comb += [port.addr.eq(write_address), port.data.eq(Cat(*[lane_data] * ratio)),
                             port.en.eq(enables), writing[space].eq(enables.any())]
        m.d.sync += write_address.eq(address)
        with m.If(word_valid & (words_left != 0)):
            m.d.sync += [address.eq(address + 1), words_left.eq(words_left - 1)]
        last_written = ~Cat(*writing.values()).any()
        with m.If(~accepted & self.busy & reader.idle & ~reader.data.valid & ~beat_valid & ~word_valid & last_written):
            m.d.sync += self.busy.eq(0)
        return m


class OutputPath(wiring.Component):
    """The engine's rows (`result`) into the GEMM's destination (`job`, taken at `start`): row r of N tile j
    at word d_base + r + j·d_stride, added into RESIDUAL's word there with saturation (`residual`), or turned
    by the corner turn into SCRATCH's columns (`transpose`). A row's write leaves from registers `LATENCY` + 1
    cycles after it arrives; `active` while a row or a write is inside."""

    LATENCY = 2 + ResidualAdd.LATENCY     # the row's address into a register, the residual word's read, the addition

    def __init__(self, spaces: dict[Space, OnChip], result: data.StructLayout, cols: int, stride_width: int,
                 rows_width: int):
        self.spaces = {space: spaces[space] for space in GEMM_DESTINATIONS}
        self.cols = cols
        self.address_width = max(address_bits(memory.depth) for memory in self.spaces.values())
        residual = self.spaces[Space.RESIDUAL]
        self.corner = CornerTurn(cols, result, address_bits(self.spaces[Space.SCRATCH].depth), rows_width,
                                 stride_width)
        super().__init__({
            "result": In(stream.Signature(result)),
            "start": In(1),
            "job": In(data.StructLayout({"destination": Space, "d_base": unsigned(self.address_width),
                                         "d_stride": unsigned(stride_width), "residual": 1, "transpose": 1,
                                         "rows": unsigned(rows_width)})),
            "residual_read": In(ReadPort.Signature(addr_width=address_bits(residual.depth),
                                                   shape=unsigned(8 * residual.word_bytes))),
            **{_port_name(space): In(WritePort.Signature(addr_width=address_bits(memory.depth),
                                                         shape=unsigned(8 * memory.word_bytes)))
               for space, memory in self.spaces.items()},
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cols, width = self.cols, ops.RESIDUAL_BITS
        m.submodules.add = add = ResidualAdd(cols, width)
        m.submodules.corner = corner = self.corner
        job = Signal.like(self.job, reset_less=True)         # set at every start
        tile, offset = Signal.like(self.result.payload.tile), Signal(self.address_width)
        with m.If(self.start):
            m.d.sync += [job.eq(self.job), tile.eq(0), offset.eq(0)]
        m.d.comb += [corner.start.eq(self.start), corner.job.base.eq(self.job.d_base),
                     corner.job.stride.eq(self.job.d_stride), corner.job.rows.eq(self.job.rows),
                     corner.result.payload.eq(self.result.payload),
                     corner.result.valid.eq(self.result.valid & job.transpose),
                     self.result.ready.eq(Mux(job.transpose, corner.result.ready, 1))]
        beat, arriving = self.result.payload, self.result.valid & ~job.transpose
        next_tile = beat.tile != tile
        address = Signal(self.address_width)
        m.d.comb += address.eq(job.d_base + beat.row + Mux(next_tile, offset + job.d_stride, offset))
        with m.If(arriving & next_tile):
            m.d.sync += [tile.eq(beat.tile), offset.eq(offset + job.d_stride)]
        # each stage's row: its valid bit, and its address and values (data, valid with it: not reset)
        valid = delay_line(m, arriving, self.LATENCY, "valid")[1:]
        addresses = delay_line(m, address, self.LATENCY, "address", data=True)[1:]
        values = delay_line(m, beat.data, self.LATENCY, "values", data=True)[1:]
        # the residual word is read from the registered address (RESIDUAL's blocks spread over the die)
        m.d.comb += [self.residual_read.addr.eq(addresses[0]), self.residual_read.en.eq(valid[0])]
        residual_now = Signal(data.ArrayLayout(signed(width), cols))
        m.d.comb += [residual_now.eq(self.residual_read.data), add.output.ready.eq(1),
                     add.input.valid.eq(valid[1] & job.residual)]
        for lane in range(cols):
            m.d.comb += [add.input.payload.residual[lane].eq(residual_now[lane]),
                         add.input.payload.addend[lane].eq(values[1][lane])]
        result = values[-1]
        # every write leaves from registers, a cycle after its row's last stage (or the corner turn's write); `active`
        # sees each enable from a copy of its own, so that the enable's net to the memories is not the scoreboard's
        writing = []
        for space in self.spaces:
            port = getattr(self, _port_name(space))
            bits = {Space.RESIDUAL: width, Space.SCORES: 32}.get(space, 8)
            addr, en, word = (Signal.like(getattr(port, name), name=f"{space.name.lower()}_{name}")
                              for name in ("addr", "en", "data"))
            m.d.comb += [addr.eq(addresses[-1]), en.eq(valid[-1] & (job.destination == space)),
                         word.eq(Cat(*(result[lane][:bits] for lane in range(cols))))]
            if space == Space.RESIDUAL:
                with m.If(job.residual):
                    m.d.comb += word.eq(add.output.payload.as_value())
            if space == Space.SCRATCH:
                with m.If(corner.write.en):
                    m.d.comb += [addr.eq(corner.write.addr), word.eq(corner.write.data), en.eq(1)]
            # (the write's address and word are data, valid with its enable: not reset)
            m.d.sync += port.en.eq(en)
            writing += kept_copies(m, en, 1, f"{space.name.lower()}_writing")
            m.d.comb += [port.addr.eq(delay_line(m, addr, 1, addr.name, data=True)[-1]),
                         port.data.eq(delay_line(m, word, 1, word.name, data=True)[-1])]
        m.d.comb += self.active.eq(Cat(*valid, *writing).any() | corner.active)
        return m


class NormPath(wiring.Component):
    """`LAYERNORM`: rows of RESIDUAL through the `LayerNorm` unit into ACTIVATION. A command {rows, set, eps,
    shifts, source, destination} is taken when the path is idle: row `source` + r is read tile by tile (words
    `j·T + source + r`), its int8 output written K tile by K tile (words `destination + i·T + r`); with `route`
    its int16 output also leaves on `router_tokens` (the router's beats). `busy` until the last word is written
    and the last beat taken. The unit's parameter memory (NORMS) is written through `norms` (word
    `set·beats + beat`, the bytes of `LayerNorm.params_layout`)."""

    READ_AHEAD = 3      # RESIDUAL's words read ahead of the unit: the FIFO's and the read's latency, a word a cycle

    def __init__(self, spaces: dict[Space, OnChip], layernorm, tokens: int, router_beat: data.ArrayLayout):
        self.layernorm, self.tokens, self.router_beat = layernorm, tokens, router_beat
        self.residual_space, self.activation_space = spaces[Space.RESIDUAL], spaces[Space.ACTIVATION]
        self.norms_space = spaces[Space.NORMS]
        self.row_width = address_bits(tokens + 1)
        command = layernorm.signature.members["command"].signature.members["payload"].shape
        super().__init__({
            "command": In(stream.Signature(data.StructLayout({
                **{name: field.shape for name, field in command},
                "source": unsigned(self.row_width), "destination": unsigned(self.row_width), "route": 1}))),
            "router_tokens": Out(stream.Signature(router_beat)),
            "residual_read": In(ReadPort.Signature(addr_width=address_bits(self.residual_space.depth),
                                                   shape=unsigned(8 * self.residual_space.word_bytes))),
            "activation": In(WritePort.Signature(addr_width=address_bits(self.activation_space.depth),
                                                 shape=unsigned(8 * self.activation_space.word_bytes))),
            "norms": Out(WritePort.Signature(addr_width=address_bits(self.norms_space.depth),
                                              shape=unsigned(8 * self.norms_space.word_bytes))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.layernorm = norm = self.layernorm
        t = self.tokens
        residual_words, activation_words = self.residual_space.word_bytes // 2, self.activation_space.word_bytes
        m.d.comb += [norm.params_write.addr.eq(self.norms.addr), norm.params_write.en.eq(self.norms.en),
                     norm.params_write.data.eq(self.norms.data)]
        command = self.command.payload
        m.d.comb += [self.command.ready.eq(~self.busy & norm.command.ready),
                     norm.command.valid.eq(self.command.valid & ~self.busy)]
        for name in ("rows", "set", "eps", "shifts"):
            m.d.comb += getattr(norm.command.payload, name).eq(getattr(command, name))
        accepted = self.command.valid & self.command.ready
        tiles_in = -(-norm.dim // residual_words)          # RESIDUAL words of a row
        tiles_out = -(-norm.dim // activation_words)       # ACTIVATION words of a row

        # Rows of RESIDUAL, word by word, into the unit through a FIFO of `READ_AHEAD` words. A word is read while
        # the FIFO has room for it beside the word in flight: registers alone decide RESIDUAL's read (the unit's
        # readiness stops at the FIFO), a word a cycle.
        m.submodules.read_ahead = ahead = SyncFIFO(width=16 * residual_words, depth=self.READ_AHEAD)
        m.submodules.widen_in = gear_in = Gearbox(16 * residual_words, 16 * norm.lanes)
        rows_left, row, tile = Signal(self.row_width), Signal(self.row_width), Signal(range(tiles_in + 1))
        more, word_valid, fetch = Signal(), Signal(), Signal()      # `more`: rows_left ≠ 0
        m.d.comb += [fetch.eq(more & (ahead.w_level + word_valid < self.READ_AHEAD)),
                     self.residual_read.addr.eq(times_constant(tile, t) + row), self.residual_read.en.eq(fetch),
                     ahead.w_en.eq(word_valid), ahead.w_data.eq(self.residual_read.data),
                     gear_in.input.valid.eq(ahead.r_rdy), gear_in.input.payload.eq(ahead.r_data),
                     ahead.r_en.eq(gear_in.input.ready)]
        m.d.comb += [norm.input.valid.eq(gear_in.output.valid), norm.input.payload.eq(gear_in.output.payload),
                     gear_in.output.ready.eq(norm.input.ready)]
        m.d.sync += word_valid.eq(fetch)
        with m.If(fetch):
            with m.If(tile == tiles_in - 1):
                m.d.sync += [tile.eq(0), row.eq(row + 1), rows_left.eq(rows_left - 1), more.eq(rows_left != 1)]
            with m.Else():
                m.d.sync += tile.eq(tile + 1)

        # The int8 output, K tile by K tile, into ACTIVATION.
        m.submodules.widen_out = gear_out = Gearbox(8 * norm.lanes, 8 * activation_words)
        out_row, out_tile = Signal(self.row_width), Signal(range(tiles_out + 1))
        words_left = Signal(range(t * tiles_out + 1))
        # With `route`, the int16 output goes to the router too: a beat leaves when both can take it.
        route = Signal()
        m.submodules.to_router = gear_router = Gearbox(16 * norm.lanes, Shape.cast(self.router_beat).width)
        m.d.comb += [gear_router.input.payload.eq(norm.output.payload.data.y1),
                     gear_router.input.valid.eq(norm.output.valid & route & gear_out.input.ready)]
        # the router's ready (its logit unit's capture) reaches no further than a skid buffer
        skid_buffer(m, gear_router.output.valid, gear_router.output.ready, {"beat": gear_router.output.payload},
                    self.router_tokens.valid, self.router_tokens.ready, {"beat": self.router_tokens.payload})
        m.d.comb += [gear_out.input.valid.eq(norm.output.valid & (~route | gear_router.input.ready)),
                     gear_out.input.payload.eq(norm.output.payload.data.y0),
                     norm.output.ready.eq(gear_out.input.ready & (~route | gear_router.input.ready)),
                     gear_out.output.ready.eq(1),
                     self.activation.addr.eq(times_constant(out_tile, t) + out_row),
                     self.activation.data.eq(gear_out.output.payload),
                     self.activation.en.eq(gear_out.output.valid)]
        with m.If(gear_out.output.valid):
            m.d.sync += words_left.eq(words_left - 1)
            with m.If(out_tile == tiles_out - 1):
                m.d.sync += [out_tile.eq(0), out_row.eq(out_row + 1)]
            with m.Else():
                m.d.sync += out_tile.eq(out_tile + 1)

        with m.If(accepted):
            m.d.sync += [self.busy.eq(command.rows != 0), more.eq(command.rows != 0), rows_left.eq(command.rows),
                         row.eq(command.source), tile.eq(0), out_row.eq(command.destination), out_tile.eq(0),
                         words_left.eq(times_constant(command.rows, tiles_out)), route.eq(command.route)]
        with m.Elif(self.busy & (words_left == 0) & ~gear_router.output.valid & ~self.router_tokens.valid):
            m.d.sync += self.busy.eq(0)
        return m
