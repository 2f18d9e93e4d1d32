"""The program compiler: a `QuantizedModel`'s layers become instructions (`hw.control.isa`) and the bytes they
load (the MODEL and IMAGE regions, `firmware.image`), for one `AcceleratorConfig`.

`ProgramBuilder` emits the pieces: `load`, `layernorm` (its γ/β into the unit's next parameter set), `linear` (a matrix: its header into PARAMS, its slabs into the
loader's buffers one slab ahead of the GEMM that uses it, so each load hides behind the previous slab's
product), `store`, `halt`. `build()` returns a `Program`. The compiled programs so far:
- `patch_embedding_program(model, accel, image)`: the position embedding into RESIDUAL, the image's patch rows
  (laid out by the firmware, the patch embedding's X) into SCRATCH, the patch embedding added into RESIDUAL
  rows 1 … P, RESIDUAL to OUTPUT: `golden.model.run`'s `embed` tensor;
- `mlp_program(model, accel, block, residual)`: a dense block's second half from its residual stream (the
  golden model's `mid` while attention does not run on the accelerator): LayerNorm₂, fc1 with GELU into
  SCRATCH, fc2 added into RESIDUAL; outputs the block's `norm2` and `out` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from golden import ops
from golden.config import AcceleratorConfig, check_compatible
from golden.quantized import QuantizedModel
from hw.compute.gemm.geometry import GemmMode, tiles
from hw.control.isa import InstructionSet, Opcode, Region, Space
from hw.control.memories import check_top_level, onchip_spaces
from hw.memory.layout import HEADER_COLUMN_BYTES, matrix_layout
from hw.memory.loader import WeightLoader
from hw.vector.layernorm import LayerNorm

from .assembler import Assembler
from .image import residual_bytes, x_bytes

__all__ = ["Program", "ProgramBuilder", "CompileError", "patch_embedding_program", "mlp_program"]


class CompileError(ValueError):
    """A program the accelerator cannot run (a region too large, a layer that does not fit)."""


@dataclass
class Program:
    """What the driver runs: instruction words, the MODEL and IMAGE regions' bytes, the OUTPUT region's size."""
    words: list[int]
    model: bytes
    image: bytes
    output_bytes: int
    text: str = ""
    outputs: dict = field(default_factory=dict)    # name → (OUTPUT offset, bytes)


class ProgramBuilder:
    def __init__(self, quantized: QuantizedModel, accel: AcceleratorConfig):
        model = quantized.config
        check_compatible(model, accel)
        check_top_level(model, accel)
        self.quantized, self.model, self.accel = quantized, model, accel
        self.isa = InstructionSet(model, accel)
        self.assembler = Assembler(self.isa)
        self.spaces = onchip_spaces(model, accel)
        loader = WeightLoader.for_config(accel)
        loader._MustUse__silence = True             # built for its buffer geometry only
        self.buffers, self.span = loader.buffers, loader.buffer_span
        self.bus = accel.dram_bytes_per_beat
        self.regions = {Region.MODEL: bytearray(), Region.IMAGE: bytearray()}
        self.output_bytes = 0
        self.outputs = {}
        self.lines: list[str] = []
        self.next_buffer = 0
        self.layernorm_unit = LayerNorm.for_model(model, accel)
        self.layernorm_unit._MustUse__silence = True  # built for its parameter layout only
        self.next_norm_set = 0

    # --- regions -------------------------------------------------------------------------------------------
    def place(self, region: Region, data: bytes) -> int:
        """Append `data` to `region` on a bus-word boundary; its offset there."""
        buffer = self.regions[region]
        buffer.extend(bytes(-len(buffer) % self.bus))
        offset = len(buffer)
        buffer.extend(data)
        return offset

    def emit(self, opcode: Opcode, **fields) -> None:
        self.lines.append(str(self.assembler.decode(self.assembler.encode(opcode, **fields))))

    def load(self, region: Region, offset: int, length: int, memory: Space, base: int) -> None:
        self.emit(Opcode.LOAD, region=region, address=offset, bytes=length, memory=memory, base=base)

    def store(self, name: str, memory: Space, base: int, length: int) -> None:
        offset = self.output_bytes + (-self.output_bytes % self.bus)
        self.emit(Opcode.STORE, memory=memory, base=base, region=Region.OUTPUT, address=offset, bytes=length)
        self.outputs[name] = (offset, length)
        self.output_bytes = offset + length

    # --- a matrix product -----------------------------------------------------------------------------------
    def linear(self, prefix: str, *, source: Space, x_base: int, m: int, destination: Space, d_base: int,
               mode: GemmMode, residual: bool = False, gelu: tuple[int, int] | None = None, relu: bool = False):
        """Y = out(X · W + b) for layer `prefix` of the model: X rows 0 … m − 1 of `source` from `x_base`
        (K-tile-major, T words a tile), Y rows into `destination` from `d_base` (N-tile-major, T words a tile).
        `gelu`: (hidden multiplier, hidden shift)."""
        q, accel, t = self.quantized, self.accel, self.model.num_tokens
        weight = q[f"{prefix}.weight"]
        k, n = weight.shape
        layout = matrix_layout(k, n, accel, prefix)
        fraction_bits = q[f"{prefix}.fraction_bits"] if f"{prefix}.fraction_bits" in q.arrays else 15
        image = layout.pack(weight, q[f"{prefix}.bias"], q[f"{prefix}.multiplier"], q[f"{prefix}.shift"],
                            fraction_bits)
        offset = self.place(Region.MODEL, image.tobytes())
        buffers = []
        for slab in layout.slabs:
            buffers.append(self.next_buffer)
            self.next_buffer = (self.next_buffer + 1) % self.buffers
        loads = [(offset + slab.offset, slab.length, buffer) for slab, buffer in zip(layout.slabs, buffers)]
        # The first slabs load while the previous matrix still computes; its parameters only after it (the
        # scoreboard holds a LOAD into PARAMS while a GEMM reads them).
        ahead = min(len(loads), self.buffers - 1)
        for address, length, buffer in loads[:ahead]:
            self.load(Region.MODEL, address, length, Space.WEIGHTS, buffer * self.span)
        self.load(Region.MODEL, offset, layout.n_tiles * accel.array_cols * HEADER_COLUMN_BYTES, Space.PARAMS, 0)
        if gelu is not None:
            self.emit(Opcode.CONFIG_GELU, multiplier=gelu[0], shift=gelu[1])
        for index, (slab, buffer) in enumerate(zip(layout.slabs, buffers)):
            if index + ahead < len(loads):
                address, length, next_buffer = loads[index + ahead]
                self.load(Region.MODEL, address, length, Space.WEIGHTS, next_buffer * self.span)
            self.emit(Opcode.GEMM, m=m, k_tiles=layout.k_tiles, k_last=k - (layout.k_tiles - 1) * accel.array_rows,
                      n_tiles=slab.tiles, source=source, x_base=x_base, stationary=Space.WEIGHTS,
                      w_base=buffer * self.span, p_base=slab.first_tile, destination=destination,
                      d_base=d_base + slab.first_tile * t, d_stride=t, mode=mode, relu=int(relu),
                      residual=int(residual))

    def layernorm(self, norms: list[str], *, rows: int, source: int, destination: int) -> None:
        """LayerNorm of RESIDUAL rows `source` … into ACTIVATION rows `destination` … with the parameters of
        `norms` (the int8 output's norm, then optionally the router's int16 copy), through the unit's next
        parameter set."""
        q, unit = self.quantized, self.layernorm_unit
        d = self.model.embed_dim
        params = [(q[f"{p}.gamma"], q[f"{p}.beta"]) for p in norms]
        params += [(np.zeros(d, np.int64), np.zeros(d, np.int64))] * (2 - len(norms))
        word_bytes = self.spaces[Space.NORMS].word_bytes
        image = b"".join(int(unit.params_layout.const(word).as_bits()).to_bytes(word_bytes, "little")
                         for word in unit.params_words(params))
        offset = self.place(Region.MODEL, image)
        norm_set, self.next_norm_set = self.next_norm_set, 1 - self.next_norm_set
        self.load(Region.MODEL, offset, len(image), Space.NORMS, norm_set * unit.beats)
        shifts = [int(q[f"{p}.shift"]) for p in norms] + [0] * (2 - len(norms))
        self.emit(Opcode.CONFIG_NORM, eps=int(q["norm.eps"]), **{f"shifts[{i}]": s for i, s in enumerate(shifts)})
        self.emit(Opcode.LAYERNORM, rows=rows, set=norm_set, source=source, destination=destination)

    def halt(self) -> None:
        self.emit(Opcode.HALT)

    def build(self) -> Program:
        text = "".join(f"{line}\n" for line in self.lines)
        return Program(self.assembler.assemble(text), bytes(self.regions[Region.MODEL]),
                       bytes(self.regions[Region.IMAGE]), self.output_bytes, text, dict(self.outputs))


def _residual_length(builder: ProgramBuilder) -> int:
    model, accel = builder.model, builder.accel
    return model.num_tokens * tiles(model.embed_dim, accel.array_cols) * 2 * accel.array_cols


def patch_embedding_program(quantized: QuantizedModel, accel: AcceleratorConfig, image: np.ndarray) -> Program:
    """The patch embedding and position embedding of `image` (int8 [C, H, W]); output `embed` [T, D] int16."""
    builder = ProgramBuilder(quantized, accel)
    model, t = builder.model, builder.model.num_tokens
    position = builder.place(Region.MODEL, residual_bytes(quantized["embed.position"], accel))
    builder.load(Region.MODEL, position, _residual_length(builder), Space.RESIDUAL, 0)
    rows = ops.patches(np.asarray(image), model.patch_size)
    patches = builder.place(Region.IMAGE, x_bytes(rows, accel, t))
    builder.load(Region.IMAGE, patches, tiles(model.patch_dim, accel.array_rows) * t * accel.array_rows,
                 Space.SCRATCH, 0)
    builder.linear("patch", source=Space.SCRATCH, x_base=0, m=model.num_patches, destination=Space.RESIDUAL,
                   d_base=1, mode=GemmMode.INT16, residual=True)
    builder.store("embed", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    return builder.build()


def mlp_program(quantized: QuantizedModel, accel: AcceleratorConfig, block: int, residual: np.ndarray) -> Program:
    """Dense block `block`'s second half from its residual stream `residual` (the golden `mid`, while attention
    does not run on the accelerator): LayerNorm₂ into ACTIVATION, fc1 with GELU into SCRATCH, fc2 added into
    RESIDUAL. Outputs `norm2` (ACTIVATION, K-tile-major) and `out` [T, D] int16."""
    builder = ProgramBuilder(quantized, accel)
    model, t = builder.model, builder.model.num_tokens
    if model.is_moe(block):
        raise CompileError(f"block {block} of {model.name} has experts: mlp_program compiles a dense MLP")
    start = builder.place(Region.IMAGE, residual_bytes(residual, accel))
    builder.load(Region.IMAGE, start, _residual_length(builder), Space.RESIDUAL, 0)
    p = f"blocks.{block}"
    builder.layernorm([f"{p}.norm2"], rows=t, source=0, destination=0)
    gelu = (int(quantized[f"{p}.mlp.hidden_multiplier"]), int(quantized[f"{p}.mlp.hidden_shift"]))
    builder.linear(f"{p}.fc1", source=Space.ACTIVATION, x_base=0, m=t, destination=Space.SCRATCH, d_base=0,
                   mode=GemmMode.GELU, gelu=gelu)
    builder.linear(f"{p}.fc2", source=Space.SCRATCH, x_base=0, m=t, destination=Space.RESIDUAL, d_base=0,
                   mode=GemmMode.INT16, residual=True)
    builder.store("norm2", Space.ACTIVATION, 0, tiles(model.embed_dim, accel.array_rows) * t * accel.array_rows)
    builder.store("out", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    return builder.build()
