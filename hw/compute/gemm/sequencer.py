"""The GEMM engine's tile sequencer: the three overlapping walks over the tiles t = j·KT + i."""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ...common.arith import narrow_product, times_constant
from ...common.pipeline import credit_counter, delay_line
from .geometry import OPERAND_READ_LATENCY, GemmGeometry

__all__ = ["TileSequencer"]


class TileSequencer(wiring.Component):
    """Loads weight tiles into the array's banks and issues the rows that stream through them.

    For a command (on `command` in the cycle `start` is set, kept inside; `busy` set from the next cycle until
    the engine is done) it walks
    the tiles t = j·KT + i of `command` (N tile j, K tile i) three times, overlapped:
    - load: tile t's ⌈R / load_rows⌉ weight words are read at `w_base` + t·⌈R / load_rows⌉ + q through `w_read`
      (one word a cycle, its data `OPERAND_READ_LATENCY` cycles later) and enter the array's `load` port into
      bank t mod 2 as their data comes;
    - stream: the M rows of tile t issue on `issue`, one per cycle (`issue.valid`), with their row m, K tile i,
      N tile j, bank, whether i is the first or the last K tile, and whether the row's X word is a conv's
      padding; `tile_base` (x_base + i·x_stride, or a conv's tap row + c·x_stride + kx − 1) is their X base
      address;
    - accumulator banks: N tile j takes one of two banks for all its K tiles; `tile_drained` (one cycle pulse)
      gives one back.
    A tile streams from the cycle after its last weight word entered the array; a tile loads once the tile
    that used its bank two tiles earlier has streamed; an N tile starts when an accumulator bank is free. With
    M = 1 a row is issued at most every second cycle (the accumulator's read-add-write). Back to back, a tile
    costs max(M, ⌈R / load_rows⌉, (⌈R / load_rows⌉ + OPERAND_READ_LATENCY + M) / 2) cycles.

    The walks' conditions are credit counters, each with a register that says it is not zero (no comparator
    on the paths that start a tile):
      load_left    tiles still to load             load_credit   a bank is free: streamed + 2 − loading
      stream_left  tiles still to stream           ready         loaded − streaming tiles
      bank_credit  accumulator banks free: drained + 2 − N tiles started
    """

    @staticmethod
    def model(geometry: GemmGeometry, command: dict):
        """The walks of one command (a dict of its fields; absent conv fields 0), in their order: (the weight
        words loaded, each (W address, bank, first row); the rows issued, each (m, i, j, bank, first, last,
        pad, tile_base)). Addresses wrap at their memories' address widths."""
        g, get = geometry, lambda name: command.get(name, 0)
        beats, k_tiles, n_tiles, rows = g.load_beats, command["k_tiles"], command["n_tiles"], command["m"]
        loads = [((get("w_base") + t * beats + q) % (1 << g.address_width("w")), t % 2, q * g.load_rows)
                 for t in range(k_tiles * n_tiles) for q in range(beats)]
        channel_tiles = get("channel_tiles") if get("conv") else k_tiles
        pad = get("pad") or {}
        issues = []
        for j in range(n_tiles):
            for i in range(k_tiles):
                (ky, kx), channel = divmod(i // channel_tiles, 3) if get("conv") else (1, 1), i % channel_tiles
                row_base = (get("x_above"), get("x_base"), get("x_below"))[ky]
                base = (row_base + kx - 1 + channel * get("x_stride")) % (1 << g.address_width("x"))
                for m in range(rows):
                    padded = bool(get("conv")) and ((ky == 0 and pad.get("above", 0))
                                                    or (ky == 2 and pad.get("below", 0))
                                                    or (kx == 0 and pad.get("left", 0) and m == 0)
                                                    or (kx == 2 and pad.get("right", 0) and m == rows - 1))
                    issues.append((m, i, j, (j * k_tiles + i) % 2, i == 0, i == k_tiles - 1, padded, base))
        return loads, issues

    def __init__(self, geometry: GemmGeometry):
        self.geometry = g = geometry
        super().__init__({
            "start": In(1),
            "command": In(g.command),
            "busy": In(1),
            "tile_drained": In(1),
            "w_read": In(g.read_port("w")),
            "load": Out(g.array.members["load"].signature.flip()),
            "issue": Out(g.tag),
            "tile_base": Out(g.address_width("x")),
            "single_row": Out(1),                           # the command's M = 1, kept
            "m_before_last": Out(g.command["m"].shape),    # M − 2, kept (all ones for M = 1: never reached)
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        beats = g.load_beats
        command, busy = self.command, self.busy
        tile_count = range(g.k_tiles_max * g.n_tiles_max + 1)
        load_left, stream_left, ready = (Signal(tile_count, name=n) for n in ("load_left", "stream_left", "ready"))
        load_credit, bank_credit = Signal(range(3)), Signal(range(3))
        load_done, stream_done, n_started = Signal(), Signal(), Signal()
        k_last_tile = Signal.like(command.k_tiles)

        # Load: tile after tile into bank (tile parity), `load_rows` rows per cycle.
        load_bank = Signal()                                   # parity of the tile being loaded
        load_r = Signal(range(beats))                          # the beat of the tile being loaded
        loading = Signal()
        load_address = Signal.like(self.w_read.addr)
        load_pending, load_credited = Signal(), Signal()         # load_left ≠ 0, load_credit ≠ 0
        issue_load = Signal()
        m.d.comb += [self.w_read.addr.eq(load_address), self.w_read.en.eq(issue_load)]
        m.d.comb += [issue_load.eq(busy & (loading | (load_pending & load_credited))),
                     load_done.eq(issue_load & (load_r == beats - 1))]
        with m.If(issue_load):
            m.d.sync += [load_address.eq(load_address + 1), loading.eq(load_r != beats - 1)]
            m.d.sync += load_r.eq(Mux(load_r == beats - 1, 0, load_r + 1))
            with m.If(load_r == beats - 1):
                m.d.sync += load_bank.eq(~load_bank)
        # The word read this cycle enters the array OPERAND_READ_LATENCY cycles later: its row, bank and whether it
        # ends the tile wait beside its read for its data.
        load = self.load.payload
        load_last = delay_line(m, load_done, OPERAND_READ_LATENCY, "load_last")[-1]
        m.d.comb += [self.load.valid.eq(delay_line(m, issue_load, OPERAND_READ_LATENCY, "load_valid")[-1]),
                     load.row.eq(delay_line(m, times_constant(load_r, g.load_rows), OPERAND_READ_LATENCY,
                                            "load_row", data=True)[-1]),
                     load.bank.eq(delay_line(m, load_bank, OPERAND_READ_LATENCY, "load_bank", data=True)[-1]),
                     load.data.eq(self.w_read.data)]

        # Stream: the M rows of the current tile (N tile j, K tile i, parity stream_bank).
        stream_bank = Signal()
        stream_i = Signal.like(command.k_tiles)
        stream_j = Signal.like(command.n_tiles)
        stream_m = Signal.like(command.m)
        streaming = Signal()
        # stream_left ≠ 0, ready ≠ 0, bank_credit ≠ 0
        stream_pending, tile_ready, bank_credited = Signal(), Signal(), Signal()
        within = Signal()              # inside an N tile: stream_i ≠ 0 or stream_m ≠ 0 (its bank is taken)
        last_row = Signal()            # stream_m = M − 1
        m_before_last = self.m_before_last
        bank_free = within | bank_credited
        # A row is revisited no sooner than every M cycles; with M = 1 keep two cycles between visits, for the
        # accumulator's read-add-write.
        issued_last = Signal()
        single_row = self.single_row
        can_stream = stream_pending & tile_ready & bank_free & ~(issued_last & single_row)
        issue_row = Signal()
        m.d.comb += issue_row.eq(busy & (streaming | can_stream))
        m.d.sync += issued_last.eq(issue_row)
        m.d.comb += [stream_done.eq(issue_row & last_row), n_started.eq(issue_row & ~within)]
        tile_base = self.tile_base                      # the K tile's X base, kept by addition
        kept = Signal.like(command, reset_less=True)    # the command's, kept (read only while busy)
        # The K tile walk of a conv: tap (ky, kx), channel tile c inside it; a plain GEMM stays on tap (1, 1)
        # with all its K tiles as channel tiles (the walk never leaves the tap).
        ky, kx, channel = Signal(2), Signal(2), Signal.like(command.channel_tiles)
        last_channel = Signal.like(command.channel_tiles)
        row_base = [kept.x_above, kept.x_base, kept.x_below]
        next_ky, next_kx = Mux(kx == 2, ky + 1, ky), Mux(kx == 2, 0, kx + 1)
        # The next tap's X base, registered off the tap: a tap changes at a tile's last row, and two such rows
        # are at least two cycles apart (M = 1 rows keep a cycle between them), so it is ready by then.
        next_tap_base = Signal.like(tile_base)
        m.d.sync += next_tap_base.eq(Mux(next_ky == 0, row_base[0], Mux(next_ky == 1, row_base[1], row_base[2]))
                                     + next_kx - 1)
        with m.If(issue_row):
            m.d.sync += [stream_m.eq(Mux(last_row, 0, stream_m + 1)), streaming.eq(~last_row),
                         within.eq(~last_row | (stream_i != k_last_tile)),
                         last_row.eq(Mux(last_row, single_row, stream_m == m_before_last))]
            with m.If(last_row):
                m.d.sync += stream_bank.eq(~stream_bank)
                with m.If(stream_i == k_last_tile):
                    m.d.sync += [stream_i.eq(0), stream_j.eq(stream_j + 1), channel.eq(0)]
                    self._first_tap(m, kept, tile_base, ky, kx)
                with m.Else():
                    m.d.sync += stream_i.eq(stream_i + 1)
                    with m.If(channel == last_channel):
                        m.d.sync += [channel.eq(0), ky.eq(next_ky), kx.eq(next_kx), tile_base.eq(next_tap_base)]
                    with m.Else():
                        m.d.sync += [channel.eq(channel + 1), tile_base.eq(tile_base + kept.x_stride)]
        pad = kept.conv & (((ky == 0) & kept.pad.above) | ((ky == 2) & kept.pad.below)
                           | ((kx == 0) & kept.pad.left & (stream_m == 0)) | ((kx == 2) & kept.pad.right & last_row))
        m.d.comb += [self.issue.valid.eq(issue_row), self.issue.m.eq(stream_m), self.issue.i.eq(stream_i),
                     self.issue.j.eq(stream_j), self.issue.bank.eq(stream_bank), self.issue.first.eq(stream_i == 0),
                     self.issue.last.eq(stream_i == k_last_tile), self.issue.pad.eq(pad)]

        # The credit counters (a tile may stream from the cycle after its last load row entered).
        credit_counter(m, load_left, load_pending, 0, load_done)
        credit_counter(m, stream_left, stream_pending, 0, stream_done)
        credit_counter(m, ready, tile_ready, load_last, stream_done)
        credit_counter(m, load_credit, load_credited, stream_done, load_done)
        credit_counter(m, bank_credit, bank_credited, self.tile_drained, n_started)

        with m.If(self.start):
            total = narrow_product(command.k_tiles, command.n_tiles)
            m.d.sync += [
                k_last_tile.eq(command.k_tiles - 1), single_row.eq(command.m == 1),
                load_address.eq(command.w_base),
                load_left.eq(total), stream_left.eq(total), ready.eq(0), load_credit.eq(2), bank_credit.eq(2),
                load_pending.eq(1), stream_pending.eq(1), tile_ready.eq(0), load_credited.eq(1), bank_credited.eq(1),
                within.eq(0), last_row.eq(command.m == 1), m_before_last.eq(command.m - 2),
                load_bank.eq(0), load_r.eq(0), loading.eq(0),
                stream_bank.eq(0), stream_i.eq(0), stream_j.eq(0), stream_m.eq(0), streaming.eq(0),
                kept.eq(command), channel.eq(0),
                last_channel.eq(Mux(command.conv, command.channel_tiles, command.k_tiles) - 1),
            ]
            self._first_tap(m, command, tile_base, ky, kx)
        return m

    @staticmethod
    def _first_tap(m, command, tile_base, ky, kx):
        """An N tile's first K tile: a conv's tap (0, 0) (the row above, one pixel left), else x_base."""
        m.d.sync += [ky.eq(Mux(command.conv, 0, 1)), kx.eq(Mux(command.conv, 0, 1)),
                     tile_base.eq(Mux(command.conv, command.x_above - 1, command.x_base))]
