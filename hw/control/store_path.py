"""`StorePath`: `STORE` and `UPSAMPLE`, an on-chip memory's words into DRAM through the `StoreWriter`.

A command {memory, base, address, length, upsample, far, width, tiles, stride} is taken while the path is idle
(`command.ready`); `busy` from the next cycle until the last write response, `error` on a write error.
- `STORE` (`upsample` 0): words `base`, `base` + 1, … of `memory` (ACTIVATION, SCRATCH, RESIDUAL, SCORES or
  ROUTES), `length` bytes (a whole number of words and of bus words), through a skid buffer and a `Gearbox` to
  the bus.
- `UPSAMPLE`: one output row of a bilinear ×2 (`Upsampler`) of a feature map stored a pixel a word (ACTIVATION
  or SCRATCH: int8, RESIDUAL: int16, the memory's words), channel tile by channel tile: for tile c of `tiles`,
  pixels x = 0 … `width` − 1 of the near row (`base` + c·`stride` + x, weight ¾) and the far row (`far` +
  c·`stride` + x, ¼) go in, 2·`width` pixels come out, written from `address` on; `length` is not read: the
  path works out their bytes (`upsample_length` of `tiles` · `width` words of `memory`) into a register as it
  takes the UPSAMPLE and gives the writer its command the cycle after, so neither a product of a command's fields
  nor the memory's choice is on the path that hands it over. A pixel takes two reads, so the path writes a word
  about every cycle.
Memory ports are `lib.memory` read port signatures, connected by the top level.
"""

from __future__ import annotations

import operator
from functools import reduce

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib.memory import ReadPort

from ..common.arith import narrow_product
from ..common.pipeline import kept_copies, skid_buffer
from ..memory.axi import AXI4Write
from ..memory.writer import StoreWriter
from ..vector.upsample import Upsampler
from .datapath import STORABLE, UPSAMPLABLE, TransferPath, upsample_length
from .isa import Space
from .memories import OnChip

__all__ = ["StorePath"]

SELECT_BITS = 32          # bits of a word (a memory's read word, the bus word) masked by one copy of its select


class StorePath(TransferPath):
    def __init__(self, spaces: dict[Space, OnChip], writer: StoreWriter, *, max_width: int, max_tiles: int):
        address = max(max(1, spaces[space].depth - 1).bit_length() for space in STORABLE)
        super().__init__(spaces, STORABLE, writer, AXI4Write.Signature, ReadPort.Signature, {
            "upsample": 1, "far": unsigned(address), "width": unsigned(max_width.bit_length()),
            "tiles": unsigned(max_tiles.bit_length()), "stride": unsigned(address)})

    def elaborate(self, platform):
        m = Module()
        writer = self.unit
        _, address, words_left, accepted = self._front(m)
        command = self.command.payload
        # UPSAMPLE's walk: the near and far rows' addresses, the pixels of the channel tile after the next
        # (`last_pixel` when none) and the tiles left (`walking` while any); `phase` 1 when the next read is the
        # far pixel's. The flags are registers, so the read decision is one of registers alone.
        upsample, phase, walking, last_pixel = Signal(), Signal(), Signal(), Signal()
        far, near_row, far_row = Signal.like(address), Signal.like(address), Signal.like(address)
        width, stride = Signal.like(command.width), Signal.like(command.stride)
        pixels_left, tiles_left = Signal.like(command.width), Signal.like(command.tiles)
        # an UPSAMPLE's bytes, worked out as it is taken: no product or memory's choice on the way to the writer
        dram_length = Signal.like(writer.command.payload.length)
        dram_address, pending = Signal.like(command.address), Signal()
        # a STORE's words_left ≠ 0 (never an UPSAMPLE's), a register beside it: no comparison in `fetch`; and
        # whether the command reads each memory, a register each: no comparison on the way to its read enable
        more_words = Signal()
        reads_from = {space: Signal(name=f"reads_from_{space.name.lower()}") for space in self.spaces}
        with m.If(accepted):
            m.d.sync += more_words.eq(~command.upsample & (command.length != 0))
            m.d.sync += [reads_from[space].eq(command.memory == space) for space in self.spaces]
            m.d.sync += [upsample.eq(command.upsample), phase.eq(0), far.eq(command.far), near_row.eq(command.base),
                         far_row.eq(command.far), width.eq(command.width), stride.eq(command.stride),
                         pixels_left.eq(command.width - 1), last_pixel.eq(command.width == 1),
                         tiles_left.eq(command.tiles), walking.eq(command.upsample & (command.tiles != 0)),
                         dram_address.eq(command.address), pending.eq(command.upsample)]
            with m.Switch(command.memory):
                for space in UPSAMPLABLE:
                    with m.Case(space):
                        m.d.sync += dram_length.eq(upsample_length(narrow_product(command.tiles, command.width),
                                                                   self.spaces[space].word_bytes))
        # UPSAMPLE's writer command, a cycle after the path took it (`pending`), from the registers
        with m.If(command.upsample):
            m.d.comb += writer.command.valid.eq(0)
        with m.If(pending):
            m.d.comb += [writer.command.valid.eq(1), writer.command.payload.address.eq(dram_address),
                         writer.command.payload.length.eq(dram_length)]
            with m.If(writer.command.ready):
                m.d.sync += pending.eq(0)
        # Words out of the memory: `word_valid` while the read port holds an untaken word (STORE); UPSAMPLE
        # keeps the near pixel in `near` and offers (near, the port's far pixel) while `pair_valid`.
        # `fetch`: a STORE's word read (`fetch_word`) or an UPSAMPLE's pixel (`fetch_pixel`), each decided apart
        # so that neither's handshake reaches the other's registers
        word_valid, fetch, fetch_word, fetch_pixel, taken = Signal(), Signal(), Signal(), Signal(), Signal()
        pair_valid, pair_last, pair_taken, upsampling = Signal(), Signal(), Signal(), Signal()
        beat_valid, beat_ready, beat = Signal(), Signal(), Signal.like(writer.data.payload)
        read_address = Mux(upsample & phase, far, address)

        def reads(word_taken, pair_taken):
            """(a STORE's next word is read, an UPSAMPLE's next pixel is read) when the port's word leaves on
            `word_taken` and its pair on `pair_taken`"""
            return more_words & (~word_valid | word_taken), walking & (phase | ~pair_valid | pair_taken)
        # Whether any group holds a word, a pair, an upsampled pixel or a bus word: an OR over the groups, not the
        # chosen group's (the others hold nothing while the path is busy), so `chosen` does not reach `busy`
        held, beats = [], []
        for width_bytes, (gearbox, spaces, chosen) in self._gearboxes(m, False, accepted).items():
            m.submodules[f"gearbox{width_bytes}"] = gearbox
            word = Signal(8 * width_bytes, name=f"word{width_bytes}")
            bits = {UPSAMPLABLE[space] for space in spaces if space in UPSAMPLABLE}
            assert len(bits) <= 1, "memories of one word width hold values of one width"
            word_ready, offered = Signal(name=f"word_ready{width_bytes}"), Signal(name=f"offered{width_bytes}")
            pair_ready = Signal(name=f"pair_ready{width_bytes}") if bits else 0
            # `fetch` as this group's readiness decides it (the chosen group's is `fetch`): its memories' read
            # enables from registers and this group's skid buffers, no choice among the groups on the way
            group_fetch = Cat(*reads(word_ready, pair_ready)).any()
            # The word: each memory's data masked by its `reads_from` (`_masked`) and the masks ORed
            parts = []
            for space in spaces:
                port = getattr(self, space.name.lower())
                m.d.comb += [port.addr.eq(read_address), port.en.eq(group_fetch & reads_from[space])]
                parts.append(_masked(m, port.data, reads_from[space], f"{space.name.lower()}_select"))
            m.d.comb += word.eq(reduce(operator.or_, parts))
            # The words, and UPSAMPLE's pixel pairs, pass a skid buffer on their way out of the port, so the
            # gearbox's and the upsampler's readiness does not reach `fetch` and the memories' enables.
            # `offered`: `word_valid` for this group's STORE, a register of its own (a STORE's group is set as it
            # is taken, before its first read), so that the choice is not on the skid buffer's input
            stored, stored_valid, stored_ready = Signal.like(word, name=f"stored{width_bytes}"), Signal(), Signal()
            with m.If(fetch):
                m.d.sync += offered.eq(~upsample & chosen)
            with m.Elif(word_ready):
                m.d.sync += offered.eq(0)
            skid_buffer(m, offered, word_ready, {"word": word}, stored_valid, stored_ready, {"word": stored})
            held += [~word_ready, stored_valid]
            if bits:
                lanes, (value_bits,) = 8 * width_bytes // min(bits), bits
                m.submodules[f"upsampler{width_bytes}"] = upsampler = Upsampler(lanes, value_bits, value_bits)
                near = Signal(8 * width_bytes, name=f"near{width_bytes}", reset_less=True)
                with m.If(fetch_pixel & phase):      # the near pixel, read the cycle before, is on the port
                    m.d.sync += near.eq(word)
                skid_buffer(m, pair_valid & chosen, pair_ready, {"pair": Cat(near, word, pair_last)},
                            upsampler.input.valid, upsampler.input.ready, {"pair": upsampler.input.payload})
                held += [~pair_ready, upsampler.input.valid, upsampler.output.valid]
                with m.If(chosen):
                    m.d.comb += [pair_taken.eq(pair_ready), upsampling.eq(upsampler.output.valid)]
            m.d.comb += [gearbox.input.valid.eq(Mux(upsample, upsampling, stored_valid) & chosen),
                         gearbox.input.payload.eq(stored), stored_ready.eq(gearbox.input.ready)]
            if bits:
                with m.If(upsample):
                    m.d.comb += [gearbox.input.payload.eq(upsampler.output.payload),
                                 upsampler.output.ready.eq(gearbox.input.ready & chosen)]
            held.append(gearbox.output.valid)
            with m.If(chosen):
                m.d.comb += [taken.eq(word_ready), beat_valid.eq(gearbox.output.valid),
                             gearbox.output.ready.eq(beat_ready)]
            beats.append(_masked(m, gearbox.output.payload, chosen, f"beat_select{width_bytes}"))
        m.d.comb += beat.eq(reduce(operator.or_, beats))
        # Bus words to the writer through a skid buffer: the bus's WREADY reaches no further into the path
        skid_buffer(m, beat_valid, beat_ready, {"data": beat}, writer.data.valid, writer.data.ready,
                    {"data": writer.data.payload})

        m.d.comb += [Cat(fetch_word, fetch_pixel).eq(Cat(*reads(taken, pair_taken))),
                     fetch.eq(fetch_word | fetch_pixel)]
        with m.If(~upsample):
            with m.If(fetch_word):
                m.d.sync += [address.eq(address + 1), words_left.eq(words_left - 1), more_words.eq(words_left != 1),
                             word_valid.eq(1)]
            with m.Elif(taken):
                m.d.sync += word_valid.eq(0)
        with m.Else():
            # near, then far (the near pixel is kept as the far one is read); a near read waits until the pair
            # before is taken, since it overwrites the port's far pixel
            with m.If(pair_taken):
                m.d.sync += pair_valid.eq(0)
            with m.If(fetch_pixel):
                m.d.sync += phase.eq(~phase)
                with m.If(phase):
                    m.d.sync += [pair_valid.eq(1), pair_last.eq(last_pixel), pixels_left.eq(pixels_left - 1),
                                 last_pixel.eq(pixels_left == 1)]
                    with m.If(last_pixel):
                        m.d.sync += [pixels_left.eq(width - 1), last_pixel.eq(width == 1),
                                     tiles_left.eq(tiles_left - 1), walking.eq(tiles_left != 1),
                                     address.eq(near_row + stride), far.eq(far_row + stride),
                                     near_row.eq(near_row + stride), far_row.eq(far_row + stride)]
                    with m.Else():
                        m.d.sync += [address.eq(address + 1), far.eq(far + 1)]
        drained = ~Cat(*held).any() & Mux(upsample, ~walking & ~pair_valid, ~more_words & ~word_valid)
        with m.If(~accepted & self.busy & drained & ~writer.data.valid & writer.idle):
            m.d.sync += self.busy.eq(0)
        return m


def _masked(m, value, select, name: str):
    """`value` where `select` is set, else 0, one LUT level a pair of such values ORed: the mask comes from copies
    of the register `select`, one for each `SELECT_BITS` of the value, each placed beside its bits (one register's
    net across the die to every bit of a word and of the bus word was the path). A copy follows `select` a cycle
    later; the selects (which memory the command reads, which width group it uses) change only as a command is
    taken, and its first word is on a port two cycles later at the earliest (the read is decided from registers
    set with the command), its first bus word later still."""
    copies = kept_copies(m, select, -(-len(value) // SELECT_BITS), name)
    return Cat(*(Mux(copy, value[low:low + SELECT_BITS], 0) for low, copy in zip(range(0, len(value), SELECT_BITS),
                                                                               copies)))
