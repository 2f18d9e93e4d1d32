"""The GEMM engine's sizes, its output modes and the layouts its stages exchange (one object, checked once)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth import signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import ReadPort

from golden import ops

from ...common.arith import address_bits, index_bits
from ...common.pipeline import REGISTERED_READ_LATENCY
from ...vector.gelu import Gelu
from ..array import SystolicArray

__all__ = ["GemmMode", "GemmGeometry", "tiles", "largest_product", "DRAIN_STAGES", "STREAM_STAGES", "GELU_STAGES",
           "REQUANTIZER_STAGES", "OPERAND_READ_LATENCY", "GATE_WIDTH", "FRACTION_WIDTH"]

REQUANTIZER_STAGES = 13  # a requantizer lane's: register, + bias, the DSPs' input and product registers, the
                         # partial products' register, product, + half (and the kept bit's byte), the kept bit,
                         # + kept bit, shift by bytes, shift by bits, range, saturate
DRAIN_STAGES = 1 + REQUANTIZER_STAGES   # the accumulator's read, then a lane
# X and W (the array's operands) come from their memories' outputs registered before any multiplexer (a block RAM's
# output comes late in the cycle): the word `OPERAND_READ_LATENCY` cycles after the read's `en`
OPERAND_READ_LATENCY = REGISTERED_READ_LATENCY
# from a row's issue to the array's input: the index read, the source row, the X word's read and register
STREAM_STAGES = 2 + OPERAND_READ_LATENCY
GELU_STAGES = Gelu.LATENCY + REQUANTIZER_STAGES   # GELU, then a lane (× m_h into int8)
GATE_WIDTH = ops.GATE_BITS + 1                        # Q1.15: 1.0 is 2^15
FRACTION_WIDTH = ops.FRACTION_FIELD_BITS             # a column's Q.f in GELU mode (5…15)


class GemmMode(enum.IntEnum):
    INT8 = 0
    INT16 = 1
    INT18 = 2
    RAW = 3
    COMBINE = 4   # expert fc2: requantize to 18 bits, × gate weight, rounded: a row of its token's terms
    GELU = 5      # fc1: requantize to int16 in Q.f, GELU, requantize (per command) to the int8 hidden activation

    @property
    def bits(self) -> int | None:
        """Bits of the first requantization (GELU's input for GELU)."""
        return {GemmMode.INT8: 8, GemmMode.INT16: 16, GemmMode.INT18: 18, GemmMode.COMBINE: 18,
                GemmMode.GELU: 16}.get(self)


def tiles(size: int, tile: int) -> int:
    return -(-size // tile)


def largest_product(model, accel) -> tuple[int, int]:
    """(K, N) the engine must run for `model` on `accel`: the largest of its matrix products, attention and the
    task heads' convolutions included (a 3×3 one's K with its channels padded to whole K tiles per tap)."""
    convs = [conv for task in range(model.num_tasks) for conv in model.head_layers(task)]
    hidden = max(model.mlp_hidden, model.expert_hidden if model.moe_blocks else 0)
    largest_k = max([model.patch_dim, model.embed_dim, hidden, model.num_tokens]
                    + [conv.kernel ** 2 * tiles(conv.in_channels, accel.array_rows) * accel.array_rows
                       for conv in convs])
    largest_n = max([3 * model.embed_dim, hidden, model.num_tokens] + [conv.out_channels for conv in convs])
    return largest_k, largest_n


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"GemmEngine {name} = {value!r}: must be a positive integer")


@dataclass(frozen=True)
class GemmGeometry:
    """An engine around a `rows` × `cols` array for matrices up to `max_m` × `max_k` × `max_n`: X rows `x_stride`
    words apart per K tile, `load_rows` weight rows per cycle, GELU `gelu_lanes` values per cycle, the drain
    `drain_lanes` columns per cycle (a divisor of `cols`: a row in `drain_chunks` cycles), and the depths of the
    memories behind its read ports (0: the least the sizes need)."""
    rows: int
    cols: int
    max_m: int
    max_k: int
    max_n: int
    x_stride: int | None = None
    w_depth: int | None = None
    p_depth: int | None = None
    index_depth: int | None = None
    operand_width: int = 8
    accumulator_width: int = 32
    multiplier_width: int = 16
    load_rows: int = 1
    gelu_lanes: int | None = None
    x_depth: int | None = None
    drain_lanes: int | None = None

    def __post_init__(self):
        for name in ("rows", "cols", "max_m", "max_k", "max_n", "operand_width", "accumulator_width",
                     "multiplier_width"):
            _positive(name, getattr(self, name))
        for name in ("x_stride", "w_depth", "p_depth", "index_depth", "x_depth"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.x_stride is not None and self.x_stride < self.max_m:
            raise ValueError(f"GemmEngine x_stride = {self.x_stride}: must be at least max_m ({self.max_m})")
        for name, top in (("load_rows", self.rows), ("gelu_lanes", self.cols), ("drain_lanes", self.cols)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 1 <= value <= top):
                raise ValueError(f"GemmEngine {name} = {value!r}: must be from 1 to {top}")
        if self.drain_lanes is not None and self.cols % self.drain_lanes:
            raise ValueError(f"GemmEngine drain_lanes = {self.drain_lanes}: must divide cols ({self.cols})")
        x_stride = self.max_m if self.x_stride is None else self.x_stride
        defaults = {"x_stride": self.max_m, "x_depth": x_stride * self.k_tiles_max, "gelu_lanes": self.cols,
                    "drain_lanes": self.cols,
                    "p_depth": self.n_tiles_max,
                    "index_depth": self.max_m, "w_depth": self.k_tiles_max * self.n_tiles_max * self.load_beats}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    # --- derived sizes --------------------------------------------------------------------------------------
    @property
    def k_tiles_max(self) -> int:
        return tiles(self.max_k, self.rows)

    @property
    def n_tiles_max(self) -> int:
        return tiles(self.max_n, self.cols)

    @property
    def load_beats(self) -> int:
        """Cycles to load one weight tile."""
        return tiles(self.rows, self.load_rows)

    @property
    def gelu_chunks(self) -> int:
        """Cycles a row spends entering the GELU unit."""
        return tiles(self.cols, self.gelu_lanes)

    @property
    def drain_chunks(self) -> int:
        """Cycles a row spends entering the drain's lanes (`drain_lanes` columns a cycle)."""
        return self.cols // self.drain_lanes

    @property
    def drain_latency(self) -> int:
        """Cycles from a row's issue into the drain to the whole row out of it: its last chunk's."""
        return DRAIN_STAGES + self.drain_chunks - 1

    @property
    def product_width(self) -> int:
        """The requantizer's (acc + bias) · multiplier, signed."""
        return self.accumulator_width + 1 + self.multiplier_width + 1

    @property
    def fifo_places(self) -> int:
        """Output FIFO places: a row holds one from its issue until it leaves the FIFO, so they cover the rows
        a path holds at its rate: one per `drain_chunks` cycles through the drain, one per ⌈C / gelu_lanes⌉
        cycles (or `drain_chunks`, if more) through GELU."""
        gelu_path = self.drain_latency + 1 + self.gelu_chunks + GELU_STAGES
        gelu_spacing = max(self.gelu_chunks, self.drain_chunks)
        return max(-(-self.drain_latency // self.drain_chunks), -(-gelu_path // gelu_spacing)) + 3

    @property
    def saturation_widths(self) -> list[int]:
        """The signed widths an output is clamped to: each mode's, then the accumulator's (RAW)."""
        return sorted({mode.bits for mode in GemmMode if mode.bits}) + [self.accumulator_width]

    # --- layouts --------------------------------------------------------------------------------------------
    @property
    def operand(self):
        return signed(self.operand_width)

    @property
    def column(self) -> data.StructLayout:
        """One column's output parameters, in the P word."""
        return data.StructLayout({
            "bias": signed(self.accumulator_width),
            "multiplier": unsigned(self.multiplier_width),
            "shift": unsigned(ops.SHIFT_BITS),
            "fraction_bits": unsigned(FRACTION_WIDTH),   # GELU mode: the column's Q.f (5…15), GELU's input format
        })

    @property
    def command(self) -> data.StructLayout:
        return data.StructLayout({
            "m": unsigned(index_bits(self.max_m + 1)),
            "k_tiles": unsigned(index_bits(self.k_tiles_max + 1)),
            "k_last": unsigned(index_bits(self.rows + 1)),       # valid lanes of the last K tile, 1..R
            "n_tiles": unsigned(index_bits(self.n_tiles_max + 1)),
            "x_base": unsigned(index_bits(self.x_depth)),
            "x_stride": unsigned(index_bits(self.x_depth)),       # words from one K tile (conv: channel tile) to the next
            "conv": unsigned(1),           # 3×3 im2col: K tiles walk the taps (ky, kx), channel tiles inside each
            "channel_tiles": unsigned(index_bits(self.k_tiles_max + 1)),   # conv: K tiles per tap
            "x_above": unsigned(index_bits(self.x_depth)),     # conv: x_base of the input row above (and below)
            "x_below": unsigned(index_bits(self.x_depth)),
            "pad": data.StructLayout({"above": 1, "below": 1, "left": 1, "right": 1}),   # conv: zeros there
            "w_base": unsigned(index_bits(self.w_depth)),
            "p_base": unsigned(index_bits(self.p_depth)),
            "gather": unsigned(1),
            "list_base": unsigned(index_bits(self.index_depth)),
            "mode": unsigned(3),
            "relu": unsigned(1),
            "row_scaled": unsigned(1),     # multiplier and shift per row (attention·V) instead of per column
            "hidden_multiplier": unsigned(self.multiplier_width),   # GELU: its output's requantization to int8
            "hidden_shift": unsigned(ops.SHIFT_BITS),
        })

    @property
    def row_scale(self) -> data.StructLayout:
        return data.StructLayout({"multiplier": unsigned(self.multiplier_width), "shift": unsigned(ops.SHIFT_BITS)})

    @property
    def result(self) -> data.StructLayout:
        """An output row: its row m (COMBINE: its token, below `x_stride`), N tile j and C values."""
        return data.StructLayout({
            "row": unsigned(index_bits(self.x_stride)),
            "tile": unsigned(index_bits(self.n_tiles_max)),
            "data": data.ArrayLayout(signed(self.accumulator_width), self.cols),
        })

    @property
    def tag(self) -> data.StructLayout:
        """What travels beside a streamed row: its row m, K tile i, N tile j, array bank, whether i is the
        first or the last K tile, and whether its X word is padding (a conv's zeros outside the image)."""
        return data.StructLayout({"valid": 1, "m": unsigned(index_bits(self.max_m + 1)),
                                  "i": unsigned(index_bits(self.k_tiles_max + 1)),
                                  "j": unsigned(index_bits(self.n_tiles_max + 1)), "bank": 1, "first": 1, "last": 1,
                                  "pad": 1})

    @property
    def flags(self) -> data.StructLayout:
        """The command's mode, decoded once when it is taken: the modes the output path tells apart, and the
        saturation width one-hot over `saturation_widths`."""
        return data.StructLayout({"raw": 1, "combine": 1, "gelu": 1, "row_scaled": 1, "relu": 1,
                                  "saturate": unsigned(len(self.saturation_widths))})

    @property
    def drained_row(self) -> data.StructLayout:
        """A row leaving the requantizer: its values and, for GELU, its columns' Q.f."""
        return data.StructLayout({
            "valid": 1,
            "row": unsigned(index_bits(self.max_m + 1)),
            "tile": unsigned(index_bits(self.n_tiles_max + 1)),
            "data": data.ArrayLayout(signed(self.accumulator_width), self.cols),
            "fraction_bits": data.ArrayLayout(unsigned(FRACTION_WIDTH), self.cols),
        })

    @property
    def accumulator_word(self) -> data.ArrayLayout:
        return data.ArrayLayout(signed(self.accumulator_width), self.cols)

    @property
    def token(self):
        return unsigned(index_bits(self.x_stride))

    def read_port(self, name: str) -> ReadPort.Signature:
        """The signature of the memory read port `name` (x, w, p, row, index, gate); x's and w's data come
        `OPERAND_READ_LATENCY` cycles after `en`, the others' a cycle after."""
        depth, shape = {
            "x": (self.x_depth, data.ArrayLayout(self.operand, self.rows)),
            "w": (self.w_depth, data.ArrayLayout(data.ArrayLayout(self.operand, self.cols), self.load_rows)),
            "p": (self.p_depth, data.ArrayLayout(self.column, self.cols)),
            "row": (self.max_m, self.row_scale),
            "index": (self.index_depth, self.token),
            "gate": (self.index_depth, unsigned(GATE_WIDTH)),
        }[name]
        return ReadPort.Signature(addr_width=address_bits(depth), shape=shape)

    @property
    def array(self) -> SystolicArray.Signature:
        """The signature of the engine's systolic array."""
        return SystolicArray.Signature(self.rows, self.cols, self.operand_width, self.accumulator_width,
                                       self.load_rows)

    def address_width(self, name: str) -> int:
        """Address bits of the memory behind read port `name`."""
        return self.read_port(name).addr_width
