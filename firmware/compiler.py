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
from hw.common.bits import pack
from hw.compute.gemm.geometry import GemmMode, tiles
from hw.control.isa import InstructionSet, Opcode, Operand, Region, Space, Stationary
from hw.control.memories import check_top_level, feed_rows, onchip_spaces, router_geometry
from hw.memory.layout import HEADER_COLUMN_BYTES, matrix_layout
from hw.memory.loader import WeightLoader
from hw.moe.router.geometry import weight_words
from hw.vector.layernorm import LayerNorm

from .assembler import INSTRUCTION_BYTES, Assembler
from .image import residual_bytes, x_bytes

__all__ = ["AttentionLayout", "Output", "Program", "ProgramBuilder", "CompileError", "patch_embedding_program", "qkv_program",
           "dense_block_program", "mlp_program", "route_program", "moe_block_program", "backbone_program",
           "CHECKPOINTS"]


class CompileError(ValueError):
    """A program the accelerator cannot run (a region too large, a layer that does not fit)."""


@dataclass(frozen=True)
class Output:
    """Where a run of a GEMM's N tiles goes: `tiles` of them into `memory`, N tile j (of the run) row t at word
    `base + j·stride + t`; `transposed` (SCRATCH, int8): as the W of a product with K = `stride`·C, row t's
    tile j in lane t mod C of words `base + ((t / C)·stride + j)·C + q` (qkv's K as Kᵀ)."""
    tiles: int
    memory: Space
    base: int
    stride: int
    transposed: bool = False


@dataclass(frozen=True)
class Prefetched:
    """A matrix's slab buffers and its slabs' LOADs (MODEL offset, bytes, buffer), the first `ahead` emitted."""
    layout: object
    offset: int
    buffers: list
    loads: list
    ahead: int


@dataclass
class Program:
    """What the driver runs: instruction words, the MODEL and IMAGE regions' bytes, the OUTPUT region's size.
    With `entry` > 0 the words before it are the start-up (what stays resident on chip, ending in HALT), run
    once after the program is placed; every run starts at instruction `entry`."""
    words: list[int]
    model: bytes
    image: bytes
    output_bytes: int
    text: str = ""
    outputs: dict = field(default_factory=dict)    # name → (OUTPUT offset, bytes)
    entry: int = 0
    heads: dict = field(default_factory=dict)      # task → the instruction its head's run enters at
    layers: list = field(default_factory=list)     # (instruction, name): where a layer starts (`ProgramBuilder.layer`)

    def run_range(self, run="backbone") -> range:
        """The instructions of one of the program's runs: "start_up", "backbone", or a task's head (its index)."""
        if run == "start_up":
            return range(self.entry)
        start = self.entry if run == "backbone" else self.heads[run]
        return range(start, min([entry for entry in self.heads.values() if entry > start] + [len(self.words)]))

    def stored_by(self, head: int | None = None) -> dict:
        """The `outputs` a run stores: the backbone's, or with `head` that task's head's (`head.{task}.…`)."""
        return {name: place for name, place in self.outputs.items()
                if (name.startswith(f"head.{head}.") if head is not None else not name.startswith("head."))}


class ProgramBuilder:
    """Emits a program's instructions and places its regions' bytes; `build()` → `Program`, with its listing
    (`Program.text`) unless `listing` is False (the cycle model reads the words alone)."""

    def __init__(self, quantized: QuantizedModel, accel: AcceleratorConfig, *, listing: bool = True):
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
        self.listing = listing
        self.words: list[int] = []                  # the encoded instructions
        self.layer_names: list[str | None] = []     # beside `words`: the layer an instruction starts
        self.next_layer: tuple[str, Opcode] | None = None
        self.entry = 0
        self.heads = {}
        self.next_buffer = 0
        self.next_params = 0          # PARAMS' halves in turn, matrix by matrix
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

    def emit(self, opcode: Opcode, *, at: int | None = None, **fields) -> None:
        """Append an instruction (or insert it at line `at`), checked by the assembler."""
        word = self.assembler.encode(opcode, **fields)
        at = len(self.words) if at is None else at
        self.words.insert(at, word)
        starts = self.next_layer is not None and self.next_layer[1] is opcode
        self.layer_names.insert(at, self.next_layer[0] if starts else None)
        if starts:
            self.next_layer = None

    def layer(self, name: str, starts_at: Opcode) -> None:
        """Layer `name` starts at the next `starts_at` instruction emitted: the first of the layer that waits for
        what the layer before wrote (a block's LayerNorm₁, a convolution's first GEMM), so that a layer's cycles
        run from that instruction's issue to the next layer's (`firmware.cycles`)."""
        self.next_layer = (name, starts_at)

    def load(self, region: Region, offset: int, length: int, memory: Space, base: int, *,
             per_expert: bool = False) -> None:
        self.emit(Opcode.LOAD, region=region, address=offset, bytes=length, memory=memory, base=base,
                  per_expert=int(per_expert))

    def output_area(self, name: str, length: int) -> int:
        """`length` bytes of the OUTPUT region, on a bus-word boundary, for output `name`; their offset."""
        offset = self.output_bytes + (-self.output_bytes % self.bus)
        self.outputs[name] = (offset, length)
        self.output_bytes = offset + length
        return offset

    def store(self, name: str, memory: Space, base: int, length: int) -> None:
        offset = self.output_area(name, length)
        self.emit(Opcode.STORE, memory=memory, base=base, region=Region.OUTPUT, address=offset, bytes=length)

    # --- a matrix product -----------------------------------------------------------------------------------
    def matrix(self, prefix: str, expert: int | None = None):
        """The DRAM image of layer `prefix`'s matrix (expert `expert`'s of a batch): its `MatrixLayout` and
        bytes (header, then slabs)."""
        q = self.quantized

        def get(name):
            array = q[f"{prefix}.{name}"]
            return array if expert is None else array[expert]
        weight = get("weight")
        layout = matrix_layout(*weight.shape, self.accel, prefix)
        fraction_bits = get("fraction_bits") if f"{prefix}.fraction_bits" in q.arrays else 15
        return layout, layout.pack(weight, get("bias"), get("multiplier"), get("shift"), fraction_bits).tobytes()

    def linear(self, prefix: str, **product) -> None:
        """Y = out(X · W + b) for layer `prefix` of the model, its matrix placed in MODEL (`product`'s
        arguments)."""
        layout, image = self.matrix(prefix)
        self.product(prefix, layout, self.place(Region.MODEL, image), **product)

    def prefetch(self, layout, offset: int, *, per_expert: bool = False) -> "Prefetched":
        """The slab buffers of the matrix at MODEL `offset` (its `layout`), in turn with the matrices before it,
        and the LOADs of its first slabs (as many as a buffer is left for), emitted now: they load while the
        products before still compute. `product` takes it to emit the rest."""
        buffers = []
        for slab in layout.slabs:
            buffers.append(self.next_buffer)
            self.next_buffer = (self.next_buffer + 1) % self.buffers
        loads = [(offset + slab.offset, slab.length, buffer) for slab, buffer in zip(layout.slabs, buffers)]
        ahead = min(len(loads), self.buffers - 1)
        for address, length, buffer in loads[:ahead]:
            self.load(Region.MODEL, address, length, Space.WEIGHTS, buffer * self.span, per_expert=per_expert)
        return Prefetched(layout, offset, buffers, loads, ahead)

    def product(self, prefix: str, layout, offset: int, *, source: Operand, x_base: int, m: int,
                outputs: list[Output], mode: GemmMode, residual: bool = False, gelu: tuple[int, int] | None = None,
                hidden: int | None = None, relu: bool = False, per_expert: bool = False, gather: bool = False,
                im2col: bool = False, prefetched: "Prefetched | None" = None):
        """Y = out(X · W + b) for the matrix at MODEL `offset` (its `layout`): X rows 0 … m − 1 of `source` from
        `x_base` (K-tile-major, T words a tile); Y's N tiles go to `outputs` in turn, each a run of N tiles into
        its own memory and place (N-tile-major). `gelu`: (hidden multiplier, hidden shift) by CONFIG_GELU;
        `hidden`: the MODEL offset of a HIDDEN word to LOAD instead. Inside EXPERTS: `per_expert` loads (the
        loop's stride apart) and `gather`ed X rows (m is then the expert's count). `im2col`: X is the band of the
        last CONFIG_CONV (a head's convolution), `x_base` its word for the block's first pixel. `prefetched`:
        its first slabs' LOADs, emitted earlier by `prefetch` (else emitted first here)."""
        accel, k = self.accel, layout.k
        if sum(output.tiles for output in outputs) != layout.n_tiles:
            raise CompileError(f"{prefix}: outputs of {sum(o.tiles for o in outputs)} N tiles for a matrix of "
                               f"{layout.n_tiles}")
        # The first slabs load while the previous matrix still computes, and so do its parameters, into the
        # PARAMS half the previous matrix does not read.
        if prefetched is None:
            prefetched = self.prefetch(layout, offset, per_expert=per_expert)
        if (prefetched.layout, prefetched.offset) != (layout, offset):
            raise CompileError(f"{prefix}: the slabs prefetched are another matrix's")
        buffers, loads, ahead = prefetched.buffers, prefetched.loads, prefetched.ahead
        if hidden is not None:
            self.load(Region.MODEL, hidden, self.spaces[Space.HIDDEN].bytes, Space.HIDDEN, 0, per_expert=per_expert)
        params = self.params_half()
        self.load(Region.MODEL, offset, layout.n_tiles * accel.array_cols * HEADER_COLUMN_BYTES, Space.PARAMS,
                  params, per_expert=per_expert)
        if gelu is not None:
            self.emit(Opcode.CONFIG_GELU, multiplier=gelu[0], shift=gelu[1])
        starts = [sum(output.tiles for output in outputs[:i]) for i in range(len(outputs))]
        for index, (slab, buffer) in enumerate(zip(layout.slabs, buffers)):
            if index + ahead < len(loads):
                address, length, next_buffer = loads[index + ahead]
                self.load(Region.MODEL, address, length, Space.WEIGHTS, next_buffer * self.span,
                          per_expert=per_expert)
            end = slab.first_tile + slab.tiles
            parts = [(max(slab.first_tile, start), min(end, start + output.tiles), start, output)
                     for start, output in zip(starts, outputs) if start < end and start + output.tiles > slab.first_tile]
            for part, (first, last, start, output) in enumerate(parts):
                self.emit(Opcode.GEMM, m=m, k_tiles=layout.k_tiles,
                          k_last=k % accel.array_rows, n_tiles=last - first, source=source,
                          x_base=x_base, stationary=Stationary.WEIGHTS,
                          w_base=buffer * self.span + (first - slab.first_tile) * layout.k_tiles * layout.beats,
                          p_base=params + first, destination=output.memory,
                          d_base=output.base + (first - start) * (accel.array_cols if output.transposed
                                                                  else output.stride),
                          d_stride=output.stride, mode=mode, relu=int(relu), residual=int(residual),
                          keep=int(part < len(parts) - 1), transpose=int(output.transposed), gather=int(gather),
                          im2col=int(im2col))

    def params_half(self) -> int:
        """The first PARAMS word of the next matrix's parameters: the halves in turn."""
        half, self.next_params = self.next_params, 1 - self.next_params
        return half * self.spaces[Space.PARAMS].depth // 2

    def layernorm(self, norms: list[str], *, rows: int, source: int, destination: int, route: bool = False) -> None:
        """LayerNorm of RESIDUAL rows `source` … into ACTIVATION rows `destination` … with the parameters of
        `norms` (the int8 output's norm, then optionally the router's int16 copy), through the unit's next
        parameter set."""
        q, unit = self.quantized, self.layernorm_unit
        d = self.model.embed_dim
        params = [(q[f"{p}.gamma"], q[f"{p}.beta"]) for p in norms]
        params += [(np.zeros(d, np.int64), np.zeros(d, np.int64))] * (2 - len(norms))
        word_bytes = self.spaces[Space.NORMS].word_bytes
        image = b"".join(pack(unit.params_layout, word).to_bytes(word_bytes, "little")
                         for word in unit.params_words(params))
        offset = self.place(Region.MODEL, image)
        norm_set, self.next_norm_set = self.next_norm_set, 1 - self.next_norm_set
        self.load(Region.MODEL, offset, len(image), Space.NORMS, norm_set * unit.beats)
        shifts = [int(q[f"{p}.shift"]) for p in norms] + [0] * (2 - len(norms))
        self.emit(Opcode.CONFIG_NORM, eps=int(q["norm.eps"]), **{f"shifts[{i}]": s for i, s in enumerate(shifts)})
        self.emit(Opcode.LAYERNORM, rows=rows, set=norm_set, source=source, destination=destination, route=int(route))

    def router_weights(self, layer: int = 0) -> None:
        """The router weights and exponent scales of every task into the router: of every MoE layer when the
        router holds them all (resident; `layer` is then ignored), else of MoE layer `layer` into its set
        (`layer` mod 2, `AcceleratorConfig.router_layers_held`)."""
        q, g, model = self.quantized, router_geometry(self.model, self.accel), self.model
        layers = range(len(model.moe_blocks)) if self.router_resident else [layer]
        weights, params = bytearray(), bytearray()
        for index in layers:
            p = f"blocks.{model.moe_blocks[index]}.router"
            for task in range(model.num_tasks):
                for word in weight_words(g, q[f"{p}.weight"][task]):
                    weights += np.asarray(word, np.int64).astype(np.int8).tobytes()
                params += (int(q[f"{p}.exp_multiplier"][task]) | int(q[f"{p}.exp_shift"][task]) << 16).to_bytes(4, "little")
        first = layers[0] % self.accel.router_layers_held(model)
        for memory, image in ((Space.ROUTER, bytes(weights)), (Space.ROUTER_PARAMS, bytes(params))):
            base = first * len(image) // self.spaces[memory].word_bytes
            self.load(Region.MODEL, self.place(Region.MODEL, image), len(image), memory, base)

    def next_router_weights(self, layer: int) -> None:
        """After the ROUTE of MoE layer `layer` − 1: layer `layer`'s router weights into the set the layer
        before that one used (the router, taking this ROUTE, is done with it), when the router holds two layers
        and there is such a layer."""
        if not self.router_resident and layer < len(self.model.moe_blocks):
            self.router_weights(layer)

    @property
    def router_resident(self) -> bool:
        """The router holds every MoE layer's weights (loaded once, at the start-up)."""
        return self.accel.router_layers_held(self.model) >= len(self.model.moe_blocks)

    def experts(self, body) -> None:
        """EXPERTS around the instructions `body()` emits (repeated per active expert), `stride` bytes apart;
        refused when the body is longer than the controller's body buffer."""
        start = len(self.words)
        stride = body()
        length = len(self.words) - start
        if length > self.isa.body_depth:
            raise CompileError(f"an EXPERTS body of {length} instructions: the controller's body buffer holds "
                               f"{self.isa.body_depth}")
        self.emit(Opcode.EXPERTS, at=start, body=length, stride=stride)

    def hidden_word(self, multiplier: int, shift: int) -> bytes:
        """A HIDDEN word: GELU's hidden requantization in CONFIG_GELU's operand layout."""
        layout = self.isa.operands[Opcode.CONFIG_GELU]
        value = int(layout.const({"multiplier": multiplier, "shift": shift}).as_bits())
        return value.to_bytes(self.spaces[Space.HIDDEN].bytes, "little")

    def tokens_out(self, memory: Space, base: int, columns: int | None = None) -> Output:
        """An output of `columns` (default D) columns for every token: N tiles T words apart from `base`."""
        columns = self.model.embed_dim if columns is None else columns
        return Output(tiles(columns, self.accel.array_cols), memory, base, self.model.num_tokens)

    def halt(self) -> None:
        self.emit(Opcode.HALT)

    def start_up(self) -> None:
        """End the start-up here: a HALT, and runs enter after it (`Program.entry`)."""
        self.entry = self.entry_point()

    def entry_point(self) -> int:
        """A HALT, then HALTs to a bus-aligned address (the program fetch reads whole bus words): the
        instruction a run may enter at next."""
        self.halt()
        while len(self.words) * INSTRUCTION_BYTES % self.bus:
            self.halt()
        return len(self.words)

    def build(self) -> Program:
        text = self.assembler.disassemble(self.words) if self.listing else ""
        return Program(list(self.words), bytes(self.regions[Region.MODEL]),
                       bytes(self.regions[Region.IMAGE]), self.output_bytes, text, dict(self.outputs), self.entry,
                       dict(self.heads), [(index, name) for index, name in enumerate(self.layer_names) if name])


def _residual_length(builder: ProgramBuilder) -> int:
    model, accel = builder.model, builder.accel
    return model.num_tokens * tiles(model.embed_dim, accel.array_cols) * 2 * accel.array_cols


def patch_embedding_program(quantized: QuantizedModel, accel: AcceleratorConfig, image: np.ndarray) -> Program:
    """The patch embedding and position embedding of `image` (int8 [C, H, W]); output `embed` [T, D] int16."""
    builder = ProgramBuilder(quantized, accel)
    _embedding(builder, image)
    builder.store("embed", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    return builder.build()


def _embedding(builder: ProgramBuilder, image: np.ndarray) -> None:
    """The position embedding into RESIDUAL, the image's patch rows into SCRATCH, the patch embedding added."""
    model, accel, t = builder.model, builder.accel, builder.model.num_tokens
    builder.layer("patch_embed", Opcode.LOAD)
    position = builder.place(Region.MODEL, residual_bytes(builder.quantized["embed.position"], accel))
    builder.load(Region.MODEL, position, _residual_length(builder), Space.RESIDUAL, 0)
    rows = ops.patches(np.asarray(image), model.patch_size)
    patches = builder.place(Region.IMAGE, x_bytes(rows, accel, t))
    builder.load(Region.IMAGE, patches, tiles(model.patch_dim, accel.array_rows) * t * accel.array_rows,
                 Space.SCRATCH, 0)
    builder.linear("patch", source=Operand.SCRATCH, x_base=0, m=model.num_patches,
                   outputs=[builder.tokens_out(Space.RESIDUAL, 1)], mode=GemmMode.INT16, residual=True)


@dataclass(frozen=True)
class AttentionLayout:
    """Where attention's operands lie (word addresses): in SCRATCH Q (T × D, K-tile-major), Kᵀ per head (the W
    of Q·Kᵀ: `head_dim / R` K tiles by ⌈T / C⌉ key tiles, `kt_words` words a head) and V (the W of P·V: N tile j
    of dimensions at `v + j·t_padded`, keys in rows), up to `end`; Kᵀ and V start at multiples of `feed_rows`
    words, as the stationary read takes them by feed word. P (a block's rows of T, K-tile-major, T words a tile)
    is in ACTIVATION at `p`, past the attention output; the scores of a block of `block` query rows in a SCORES
    half, from word `scores_half` · (the block's index mod 2), `block` words from one key tile to the next."""
    q: int
    kt: int
    kt_words: int
    v: int
    t_padded: int
    end: int
    p: int
    scores_half: int
    block: int

    @classmethod
    def for_model(cls, model, accel) -> "AttentionLayout":
        t, d, r, c = model.num_tokens, model.embed_dim, accel.array_rows, accel.array_cols
        rows = feed_rows(accel)
        kt_words = tiles(tiles(t, c) * model.head_dim, rows) * rows
        t_padded = tiles(t, r) * r
        kt = tiles(t * tiles(d, r), rows) * rows
        v = kt + model.num_heads * kt_words
        block = accel.tokens_per_block(model)
        return cls(0, kt, kt_words, v, t_padded, v + tiles(d, c) * t_padded, t * tiles(d, r), block * tiles(t, c),
                   block)


def _attention(builder: ProgramBuilder, block: int, *, store: bool = False) -> None:
    """Attention of block `block` on RESIDUAL: LayerNorm₁, qkv (Q, Kᵀ through the corner-turn, V), per head Q·Kᵀ
    into SCORES, the softmax into P and the row scales, P·V (row-scaled) into the head's columns of ACTIVATION,
    each per block of at most the token block's query rows, then proj added into RESIDUAL. With `store`, Q, Kᵀ
    and V are stored as they lie in SCRATCH (`q`, `kt`, `v`). The blocks' scores (head by head, query block by
    query block) alternate between SCORES' halves and each block's Q·Kᵀ comes right after the softmax before
    it, so the softmax runs beside the next block's product (the last one's has none to hide behind)."""
    model, accel, q = builder.model, builder.accel, builder.quantized
    t, c, r, hd = model.num_tokens, accel.array_cols, accel.array_rows, model.head_dim
    layout, rows = AttentionLayout.for_model(model, accel), feed_rows(accel)     # w_base in SCRATCH: feed words
    p = f"blocks.{block}"
    builder.layer(p, Opcode.LAYERNORM)
    builder.layernorm([f"{p}.norm1"], rows=t, source=0, destination=0)
    head_tiles = tiles(hd, c)
    outputs = [Output(tiles(model.embed_dim, c), Space.SCRATCH, layout.q, t)]
    outputs += [Output(head_tiles, Space.SCRATCH, layout.kt + h * layout.kt_words, head_tiles, transposed=True)
                for h in range(model.num_heads)]
    outputs.append(Output(tiles(model.embed_dim, c), Space.SCRATCH, layout.v, layout.t_padded))
    builder.linear(f"{p}.qkv", source=Operand.ACTIVATION, x_base=0, m=t, outputs=outputs, mode=GemmMode.INT8)
    if store:
        for name, begin, end in (("q", layout.q, layout.kt), ("kt", layout.kt, layout.v), ("v", layout.v, layout.end)):
            builder.store(name, Space.SCRATCH, begin, (end - begin) * r)
    # Q·Kᵀ and P·V add no bias: one header of zeros serves both.
    zeros = bytes(HEADER_COLUMN_BYTES * c * max(tiles(t, c), head_tiles))
    params = builder.params_half()
    builder.load(Region.MODEL, builder.place(Region.MODEL, zeros), len(zeros), Space.PARAMS, params)
    builder.emit(Opcode.CONFIG_SOFTMAX, **{name: int(q[f"{p}.attn.{name}"]) for name in
                                          ("exp_multiplier", "exp_shift", "out_multiplier", "out_shift")})
    key_tiles = tiles(t, r)
    blocks = [(h, first, min(layout.block, t - first)) for h in range(model.num_heads)
              for first in range(0, t, layout.block)]

    def scores(index):
        h, first, m = blocks[index]
        builder.emit(Opcode.GEMM, m=m, k_tiles=tiles(hd, r), k_last=hd % r, n_tiles=tiles(t, c),
                     source=Operand.SCRATCH, x_base=layout.q + h * tiles(hd, r) * t + first,
                     stationary=Stationary.SCRATCH, w_base=(layout.kt + h * layout.kt_words) // rows, p_base=params,
                     destination=Space.SCORES, d_base=index % 2 * layout.scores_half, d_stride=layout.block,
                     mode=GemmMode.RAW)

    scores(0)
    for index, (h, first, m) in enumerate(blocks):
        builder.emit(Opcode.SOFTMAX, rows=m, source=0, half=index % 2, destination=layout.p)
        if index + 1 < len(blocks):
            scores(index + 1)
        builder.emit(Opcode.GEMM, m=m, k_tiles=key_tiles, k_last=t % r, n_tiles=head_tiles,
                     source=Operand.ACTIVATION, x_base=layout.p, stationary=Stationary.SCRATCH,
                     w_base=(layout.v + h * head_tiles * layout.t_padded) // rows, p_base=params,
                     destination=Space.ACTIVATION,
                     d_base=h * head_tiles * t + first, d_stride=t, mode=GemmMode.INT8, row_scaled=1)
    builder.linear(f"{p}.proj", source=Operand.ACTIVATION, x_base=0, m=t,
                   outputs=[builder.tokens_out(Space.RESIDUAL, 0)], mode=GemmMode.INT16, residual=True)


def _dense_mlp(builder: ProgramBuilder, block: int) -> None:
    """LayerNorm₂, fc1 with GELU into SCRATCH, fc2 added into RESIDUAL."""
    model, q, t = builder.model, builder.quantized, builder.model.num_tokens
    p = f"blocks.{block}"
    builder.layernorm([f"{p}.norm2"], rows=t, source=0, destination=0)
    gelu = (int(q[f"{p}.mlp.hidden_multiplier"]), int(q[f"{p}.mlp.hidden_shift"]))
    builder.linear(f"{p}.fc1", source=Operand.ACTIVATION, x_base=0, m=t,
                   outputs=[builder.tokens_out(Space.SCRATCH, 0, model.mlp_hidden)], mode=GemmMode.GELU, gelu=gelu)
    builder.linear(f"{p}.fc2", source=Operand.SCRATCH, x_base=0, m=t, outputs=[builder.tokens_out(Space.RESIDUAL, 0)],
                   mode=GemmMode.INT16, residual=True)


def _padded(data: bytes, bus: int) -> bytes:
    return data + bytes(-len(data) % bus)


def _moe_mlp(builder: ProgramBuilder, block: int) -> None:
    """LayerNorm₂ with its int16 copy to the router (ROUTE with the task in TASK), each active expert (EXPERTS:
    fc1 with GELU on its gathered tokens into SCRATCH, fc2 in COMBINE mode, its gate-weighted rows added into
    their tokens' RESIDUAL rows). The experts' images lie one after another in MODEL, each fc1, fc2 and its
    HIDDEN word."""
    model, q, t = builder.model, builder.quantized, builder.model.num_tokens
    p = f"blocks.{block}"
    layer = model.moe_blocks.index(block)
    builder.emit(Opcode.ROUTE, layer=layer, tokens=t)
    builder.next_router_weights(layer + 1)
    builder.layernorm([f"{p}.norm2", f"{p}.norm2_router"], rows=t, source=0, destination=0, route=True)
    images = []
    for expert in range(model.num_experts):
        (fc1, fc1_image), (fc2, fc2_image) = (builder.matrix(f"{p}.experts.{name}", expert) for name in ("fc1", "fc2"))
        hidden = builder.hidden_word(int(q[f"{p}.experts.hidden_multiplier"][expert]),
                                     int(q[f"{p}.experts.hidden_shift"][expert]))
        images.append([_padded(image, builder.bus) for image in (fc1_image, fc2_image, hidden)])
    first = builder.place(Region.MODEL, b"".join(b"".join(parts) for parts in images))
    fc1_bytes, fc2_bytes, _ = (len(part) for part in images[0])

    def body():
        builder.product(f"{p}.experts.fc1", fc1, first, source=Operand.ACTIVATION, x_base=0, m=t,
                        outputs=[builder.tokens_out(Space.SCRATCH, 0, model.expert_hidden)], mode=GemmMode.GELU,
                        hidden=first + fc1_bytes + fc2_bytes, per_expert=True, gather=True)
        builder.product(f"{p}.experts.fc2", fc2, first + fc1_bytes, source=Operand.SCRATCH, x_base=0, m=t,
                        outputs=[builder.tokens_out(Space.RESIDUAL, 0)], mode=GemmMode.COMBINE, residual=True,
                        per_expert=True)
        return sum(len(part) for part in images[0])
    builder.experts(body)


def _activation_length(builder: ProgramBuilder) -> int:
    """Bytes of a T × D operand in ACTIVATION."""
    model, accel = builder.model, builder.accel
    return model.num_tokens * tiles(model.embed_dim, accel.array_rows) * accel.array_rows


def _dense(model, block: int, what: str) -> None:
    if model.is_moe(block):
        raise CompileError(f"block {block} of {model.name} has experts: {what} compiles a dense block")


def _start(quantized: QuantizedModel, accel: AcceleratorConfig, residual: np.ndarray) -> ProgramBuilder:
    builder = ProgramBuilder(quantized, accel)
    start = builder.place(Region.IMAGE, residual_bytes(residual, accel))
    builder.load(Region.IMAGE, start, _residual_length(builder), Space.RESIDUAL, 0)
    return builder


def qkv_program(quantized: QuantizedModel, accel: AcceleratorConfig, block: int, residual: np.ndarray) -> Program:
    """Block `block`'s attention from its input residual stream, with Q, Kᵀ and V stored as they lie in SCRATCH
    (`AttentionLayout`): outputs `q`, `kt`, `v` and `mid` [T, D] int16."""
    builder = _start(quantized, accel, residual)
    _attention(builder, block, store=True)
    builder.store("mid", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    return builder.build()


def dense_block_program(quantized: QuantizedModel, accel: AcceleratorConfig, block: int,
                        residual: np.ndarray) -> Program:
    """Dense block `block` from its input residual stream: attention, then the MLP. Outputs `attn_out`
    (ACTIVATION, K-tile-major), `mid` and `out` [T, D] int16."""
    _dense(quantized.config, block, "dense_block_program")
    builder = _start(quantized, accel, residual)
    _attention(builder, block)
    builder.store("attn_out", Space.ACTIVATION, 0, _activation_length(builder))
    builder.store("mid", Space.RESIDUAL, 0, _residual_length(builder))
    _dense_mlp(builder, block)
    builder.store("out", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    return builder.build()


def mlp_program(quantized: QuantizedModel, accel: AcceleratorConfig, block: int, residual: np.ndarray) -> Program:
    """Dense block `block`'s second half from its residual stream after attention (`mid`): LayerNorm₂, fc1 with
    GELU into SCRATCH, fc2 added into RESIDUAL. Outputs `norm2` (ACTIVATION, K-tile-major) and `out` [T, D]."""
    _dense(quantized.config, block, "mlp_program")
    builder = _start(quantized, accel, residual)
    _dense_mlp(builder, block)
    builder.store("norm2", Space.ACTIVATION, 0, _activation_length(builder))
    builder.store("out", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    return builder.build()


def moe_block_program(quantized: QuantizedModel, accel: AcceleratorConfig, block: int,
                      residual: np.ndarray) -> Program:
    """MoE block `block` from its input residual stream: attention, routing, the experts, the combine. Outputs
    `routes` (as `route_program`'s), `norm2` and `out` [T, D] int16."""
    model = quantized.config
    if not model.is_moe(block):
        raise CompileError(f"block {block} of {model.name} is dense: moe_block_program compiles a block with experts")
    builder = _start(quantized, accel, residual)
    builder.router_weights(model.moe_blocks.index(block))
    _attention(builder, block)
    _moe_mlp(builder, block)
    builder.store("routes", Space.ROUTES, 0, builder.spaces[Space.ROUTES].bytes)
    builder.store("norm2", Space.ACTIVATION, 0, _activation_length(builder))
    builder.store("out", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    return builder.build()


CHECKPOINTS = {"embed": "the patch embedding", "mid": "attention", "norm2": "LayerNorm₂", "routes": "the routing",
               "out": "the MLP"}


def backbone_program(quantized: QuantizedModel, accel: AcceleratorConfig, image: np.ndarray, *,
                     checkpoints: bool = False, heads: bool = False, listing: bool = True) -> Program:
    """The whole backbone on `image` (int8 [C, H, W]): a start-up that loads every MoE layer's router weights for
    every task (resident: a task switch loads nothing; a router holding two layers gets each layer's during the
    run instead, the first before the patch embedding), then the patch embedding and every block. Outputs `out` (the
    backbone's output [T, D] int16, `golden.run`'s `backbone`) and `routes.{block}` per MoE block; with
    `checkpoints`, also `golden.run`'s intermediates `embed` and per block `blocks.{b}.mid`, `.norm2` and `.out`
    (`CHECKPOINTS` says which operation each ends), stored as they are made. With `heads`, every task's head
    follows, each a run of its own from `Program.heads[task]` after the backbone's (`firmware.heads`). Without
    `listing`, `Program.text` is empty."""
    model = quantized.config
    builder = ProgramBuilder(quantized, accel, listing=listing)
    residual, activation = _residual_length(builder), _activation_length(builder)
    if model.moe_blocks:
        builder.router_weights(0)
        if builder.router_resident:
            builder.start_up()
    _embedding(builder, image)
    if checkpoints:
        builder.store("embed", Space.RESIDUAL, 0, residual)
    for block in range(model.depth):
        _attention(builder, block)
        if checkpoints:
            builder.store(f"blocks.{block}.mid", Space.RESIDUAL, 0, residual)
        (_moe_mlp if model.is_moe(block) else _dense_mlp)(builder, block)
        if model.is_moe(block):
            builder.store(f"routes.{block}", Space.ROUTES, 0, builder.spaces[Space.ROUTES].bytes)
        if checkpoints:
            builder.store(f"blocks.{block}.norm2", Space.ACTIVATION, 0, activation)
            builder.store(f"blocks.{block}.out", Space.RESIDUAL, 0, residual)
    builder.store("out", Space.RESIDUAL, 0, _residual_length(builder))
    builder.halt()
    if heads:
        from .heads import compile_head
        for task in range(model.num_tasks):
            builder.heads[task] = builder.entry_point()
            compile_head(builder, task)
        builder.halt()
    return builder.build()


def route_program(quantized: QuantizedModel, accel: AcceleratorConfig, block: int, residual: np.ndarray) -> Program:
    """MoE block `block`'s routing from its residual stream after attention (`mid`): the router weights in,
    ROUTE with the task in TASK, LayerNorm₂ with its int16 copy streamed to the router. Outputs `routes` (per token
    its k experts, best first, then its k Q1.15 gate weights, one ROUTES word each) and `norm2`."""
    model = quantized.config
    if not model.is_moe(block):
        raise CompileError(f"block {block} of {model.name} is dense: it has no router")
    builder = _start(quantized, accel, residual)
    builder.router_weights(model.moe_blocks.index(block))
    t = model.num_tokens
    builder.emit(Opcode.ROUTE, layer=model.moe_blocks.index(block), tokens=t)
    builder.layernorm([f"blocks.{block}.norm2", f"blocks.{block}.norm2_router"], rows=t, source=0, destination=0,
                      route=True)
    builder.store("routes", Space.ROUTES, 0, builder.spaces[Space.ROUTES].bytes)
    builder.store("norm2", Space.ACTIVATION, 0, _activation_length(builder))
    builder.halt()
    return builder.build()
