"""The instruction set: fixed 128-bit instructions, one executable source for the controller's decoder, the
firmware's assembler and the generated C header.

An instruction is `InstructionSet(model, accel).layout`: bits 0-3 the `Opcode`, bits 4-127 its operands (a
`data.UnionLayout` with one `data.StructLayout` per opcode, fields from bit 4 up in the order listed). Field
widths come from the configuration: on-chip addresses (`base`, `x_base`, …) are word addresses as wide as the
deepest memory of the plan (`hw.memory.plan`), row counts hold the token count, GEMM tile counts the model's
largest K and N. `InstructionSet` refuses a configuration whose operands do not fit 124 bits.

Numeric constants that stay fixed for a run of instructions (GELU's hidden requantization, a LayerNorm's eps
and shifts, the softmax's exponent and output scales) and a convolution's band of input rows are set by
`CONFIG_*` instructions and hold until the next one of the same kind, so the compute instructions carry only
shapes and addresses.
"""

from __future__ import annotations

from amaranth import Shape, unsigned
from amaranth.lib import data, enum

from golden.config import AcceleratorConfig, ModelConfig

from ..common.arith import address_bits, index_bits
from ..compute.gemm.geometry import GemmMode, largest_product, tiles
from ..memory.layout import matrix_layout
from ..memory.transfer import LENGTH_BITS
from ..memory.plan import onchip_memories
from ..vector.layernorm import LayerNorm
from ..vector.softmax import Softmax

__all__ = ["INSTRUCTION_BITS", "OPCODE_BITS", "DRAM_ADDRESS_BITS", "Opcode", "Space", "Operand", "Stationary", "Region", "ErrorCause",
           "InstructionSet", "IsaError", "MEANINGS", "experts_body_depth"]

INSTRUCTION_BITS = 128
OPCODE_BITS = 4
DRAM_ADDRESS_BITS = 32


class IsaError(ValueError):
    """A configuration the instruction set cannot encode, or an instruction that is not one."""


class Opcode(enum.Enum, shape=OPCODE_BITS):
    """0 and 7 are not instructions: the controller stops with `ErrorCause.BAD_OPCODE`."""
    LOAD = 1             # DRAM → an on-chip memory (weights through the loader, parameters, the image)
    GEMM = 2             # one matrix product on the engine
    LAYERNORM = 3        # rows of the residual → the activation memory (and the router)
    SOFTMAX = 4          # rows of scores → P, and their row scales
    ROUTE = 5            # the router on the next LayerNorm's rows, with the task in the TASK register
    EXPERTS = 6          # repeat the next `body` instructions once per active expert
    STORE = 8            # an on-chip memory → DRAM
    SYNC = 9             # wait until every unit is idle
    HALT = 10            # SYNC, then stop and raise done
    CONFIG_GELU = 11     # GELU's hidden requantization for the GEMMs that follow
    CONFIG_NORM = 12     # eps and output shifts for the LayerNorms that follow
    CONFIG_SOFTMAX = 13  # exponent and output scales for the softmaxes that follow
    CONFIG_CONV = 14     # the band of input rows an `im2col` GEMM reads (a task head's convolution)
    UPSAMPLE = 15        # a row of a bilinear ×2 of a feature map on chip → DRAM (the task heads)


class Space(enum.Enum, shape=4):
    """The on-chip memories an instruction names (docs/architecture.md, section 9)."""
    RESIDUAL = 0
    ACTIVATION = 1
    SCRATCH = 2
    WEIGHTS = 3      # the loader's slab buffers
    PARAMS = 4       # GEMM column parameters (a matrix header)
    NORMS = 5        # LayerNorm γ/β
    ROUTER = 6       # router weights and exponent scales
    ROUTES = 7       # the routing record of the last ROUTE (per token: experts, gate weights)
    SCORES = 8       # one head's attention scores, int32 (a RAW GEMM's output, the softmax's input)
    ROW_SCALES = 9   # the softmax's per-row output scales, read by a `row_scaled` GEMM
    ROUTER_PARAMS = 10   # the router's exponent multiplier and shift per (layer, task)
    HIDDEN = 11      # GELU's hidden requantization, as CONFIG_GELU sets it (a LOAD: per expert, from DRAM)


class Operand(enum.Enum, shape=1):
    """Where a GEMM's streamed operand X is."""
    ACTIVATION = 0
    SCRATCH = 1


class Stationary(enum.Enum, shape=1):
    """Where a GEMM's stationary operand W is: a slab buffer, or SCRATCH (attention's Kᵀ and V)."""
    WEIGHTS = 0
    SCRATCH = 1


class Region(enum.Enum, shape=2):
    """What a LOAD or STORE address is an offset from: the host's region registers."""
    MODEL = 0        # MODEL_ADDR: weights, parameters, router weights
    IMAGE = 1        # IMAGE_ADDR: the input
    OUTPUT = 2       # OUTPUT_ADDR: results written by STORE


class ErrorCause(enum.Enum, shape=4):
    """The `ERROR` register: the first fault of a run; the run ends with done at once."""
    NONE = 0
    BAD_OPCODE = 1       # an opcode that is no instruction
    BAD_TASK = 2         # the TASK register names no task of the model
    DRAM_READ = 3        # a read response other than OKAY (program fetch or a LOAD)
    DRAM_WRITE = 4       # a write response other than OKAY (STORE)
    QUEUE_OVERFLOW = 5   # an expert's tokens exceed the token block
    BAD_OPERAND = 6      # an operand outside its memory, an EXPERTS body longer than its buffer, a bad region
    GELU_RANGE = 7       # a GELU column with fewer than 5 fraction bits
    UNSUPPORTED = 8      # an operand this hardware has no path for: a LOAD, STORE or GEMM of a memory it cannot reach


MEANINGS = {
    Opcode.LOAD: {"region": "the region register address is from", "address": "DRAM byte offset (a bus-word multiple)", "bytes": "bytes to copy",
                  "memory": "destination memory", "base": "its first word",
                  "per_expert": "inside EXPERTS: add the expert's index × the loop's stride to address"},
    Opcode.GEMM: {"m": "rows (tokens, or a head's pixels); a gathering or COMBINE GEMM runs the expert's token "
                       "count instead",
                  "k_tiles": "K tiles", "k_last": "valid lanes of the last K tile, mod R (0: all R)",
                  "n_tiles": "N tiles", "source": "memory of X", "x_base": "word of X's K tile 0",
                  "stationary": "memory of W (a slab buffer, or SCRATCH for Kᵀ and V)",
                  "w_base": "W's first word (in WEIGHTS: buffer · span + offset; in SCRATCH: a feed word, "
                            "SCRATCH word / rows a feed word)",
                  "p_base": "word of N tile 0's column parameters in PARAMS (its N tiles in one half)",
                  "destination": "memory of Y",
                  "d_base": "word of Y's row 0, N tile 0 (COMBINE: of token 0's row; its rows are its tokens')",
                  "d_stride": "words from one N tile of Y to the next", "mode": "output mode (GemmMode)",
                  "gather": "X rows by the current expert's token list (inside EXPERTS)", "relu": "clamp at 0",
                  "row_scaled": "multiplier and shift per row from the last SOFTMAX",
                  "residual": "add Y into the residual as its rows leave",
                  "keep": "keep the slab buffer for the next GEMM (another part of the same slab)",
                  "transpose": "rows land transposed in SCRATCH, as the W of K = d_stride·C (qkv's K as Kᵀ)",
                  "im2col": "X from the band of the last CONFIG_CONV: pixels from x_base in its row, K tiles over "
                            "its taps (3×3: K tiles = 9 × its channel tiles) or its channel tiles (1×1)"},
    Opcode.LAYERNORM: {"rows": "rows", "set": "γ/β parameter set", "source": "first RESIDUAL row",
                       "destination": "first ACTIVATION row", "route": "also stream the rows to the router"},
    Opcode.SOFTMAX: {"rows": "rows of scores", "source": "first score row", "half": "the SCORES half the scores "
                     "are in", "destination": "ACTIVATION word of the first P row"},
    Opcode.ROUTE: {"layer": "MoE layer (router weights)", "tokens": "tokens of the next LAYERNORM with route"},
    Opcode.EXPERTS: {"body": "instructions that follow, repeated per active expert", "stride": "DRAM bytes "
                     "from one expert's weights to the next (per_expert LOADs)"},
    Opcode.STORE: {"memory": "source memory", "base": "its first word", "region": "the region register address is from",
                   "address": "DRAM byte offset",
                   "bytes": "bytes to write"},
    Opcode.CONFIG_GELU: {"multiplier": "hidden requantization multiplier", "shift": "its shift"},
    Opcode.CONFIG_NORM: {"eps": "ε in the variance's scale", "shifts": "output shifts (int8, int16)"},
    Opcode.CONFIG_SOFTMAX: {"exp_multiplier": "score → exponent scale", "exp_shift": "its shift",
                            "out_multiplier": "P·V output scale before 1/ΣP", "out_shift": "its shift"},
    Opcode.UPSAMPLE: {"memory": "source memory (ACTIVATION, SCRATCH: int8; RESIDUAL: int16), a pixel a word",
                      "near": "word of the near row's pixel 0 (weight ¾), channel tile 0",
                      "far": "the same of the far row (¼; the near row itself at the map's edges)",
                      "width": "pixels a row", "tiles": "channel tiles", "stride": "words from one channel tile "
                      "of a row to the next", "region": "the region register address is from",
                      "address": "DRAM byte offset of the output row: tiles × 2·width words, tile by tile"},
    Opcode.CONFIG_CONV: {"kernel": "1: 3×3 (nine taps), 0: 1×1", "channel_tiles": "the band's channel tiles (K "
                         "tiles a tap)", "stride": "words from one channel tile of the band to the next",
                         "above": "word of the input row above the GEMM's (its x_base's channel tile 0 there)",
                         "below": "the same in the row below", "pad_above": "zeros instead of the row above "
                         "(the image's top edge)", "pad_below": "zeros instead of the row below",
                         "pad_left": "zeros left of the first pixel", "pad_right": "zeros right of the last pixel"},
}


def experts_body_depth(model: ModelConfig, accel: AcceleratorConfig) -> int:
    """The EXPERTS body buffer's depth (instructions) for `model` on `accel`: the body an expert's MLP compiles to,
    a LOAD and a GEMM for each slab of its fc1 and of its fc2 and a LOAD for each matrix's column parameters and
    for fc1's HIDDEN word (`firmware.compiler`), rounded up to 16, the depth of a LUT RAM block (ECP5's DPR16X4)."""
    slabs = 0
    if model.moe_blocks:
        slabs = sum(len(matrix_layout(k, n, accel, name).slabs) for k, n, name in
                    [(model.embed_dim, model.expert_hidden, "expert fc1"), (model.expert_hidden, model.embed_dim,
                                                                            "expert fc2")])
    return 16 * -(-(2 * slabs + 3) // 16)


class InstructionSet:
    """The instruction layouts of `accel` running `model`; `operands[opcode]` is that opcode's layout."""

    def __init__(self, model: ModelConfig, accel: AcceleratorConfig, *, body_depth: int | None = None):
        body_depth = experts_body_depth(model, accel) if body_depth is None else body_depth
        if not isinstance(body_depth, int) or body_depth < 1:
            raise IsaError(f"body_depth = {body_depth!r}: the EXPERTS body buffer holds at least one instruction")
        self.model, self.accel, self.body_depth = model, accel, body_depth
        t = model.num_tokens
        max_k, max_n = largest_product(model, accel)
        convs = [conv for task in range(model.num_tasks) for conv in model.head_layers(task)]
        k_tiles = tiles(max(conv.in_channels for conv in convs), accel.array_rows)
        n_tiles = tiles(max_n, accel.array_cols)
        plan = {memory.name: memory for memory in onchip_memories(model, accel)}
        depths = {name: memory.depth for name, memory in plan.items()}
        # the slab buffers side by side, each at a power-of-two span (`WeightLoader.read`)
        depths["weights"] = plan["weights"].count << address_bits(plan["weights"].depth)
        word = lambda *names: unsigned(address_bits(max(depths[name] for name in names)))
        self.address_width = address_bits(max(depths.values()))
        rows = unsigned(index_bits(t + 1))
        address = unsigned(self.address_width)
        dram = unsigned(DRAM_ADDRESS_BITS)
        layernorm = LayerNorm.for_model(model, accel)
        softmax = Softmax.for_model(model, accel)
        for unit in (layernorm, softmax):
            unit._MustUse__silence = True      # built for its command layout only
        norm_command = layernorm.signature.members["command"].signature.members["payload"].shape
        softmax_command = softmax.signature.members["command"].signature.members["payload"].shape
        operands = {
            Opcode.LOAD: {"region": Region, "address": dram, "bytes": unsigned(LENGTH_BITS), "memory": Space, "base": address,
                          "per_expert": 1},
            Opcode.GEMM: {"m": unsigned(index_bits(model.num_tokens + 1)), "k_tiles": unsigned(index_bits(tiles(max_k, accel.array_rows) + 1)),
                          "k_last": unsigned(address_bits(accel.array_rows)),
                          "n_tiles": unsigned(index_bits(n_tiles + 1)),
                          "source": Operand, "x_base": word("activation", "scratch"), "stationary": Stationary,
                          "w_base": word("weights", "scratch"), "p_base": unsigned(address_bits(2 * n_tiles)),
                          "destination": Space, "d_base": word("residual", "activation", "scratch"),
                          "d_stride": unsigned(index_bits(max([t] + [conv.width for conv in convs]) + 1)),
                          "mode": GemmMode, "gather": 1, "relu": 1, "row_scaled": 1, "residual": 1, "keep": 1,
                          "transpose": 1, "im2col": 1},
            Opcode.LAYERNORM: {"rows": rows, "set": norm_command["set"].shape, "source": rows, "destination": rows,
                               "route": 1},
            Opcode.SOFTMAX: {"rows": rows, "source": rows, "half": 1, "destination": word("activation")},
            Opcode.ROUTE: {"layer": unsigned(index_bits(len(model.moe_blocks))), "tokens": rows},
            Opcode.EXPERTS: {"body": unsigned(index_bits(body_depth + 1)), "stride": dram},
            Opcode.STORE: {"memory": Space, "base": address, "region": Region, "address": dram, "bytes": unsigned(LENGTH_BITS)},
            Opcode.SYNC: {},
            Opcode.HALT: {},
            Opcode.CONFIG_GELU: {"multiplier": unsigned(accel.requant_multiplier_width),
                                 "shift": unsigned(6)},
            Opcode.CONFIG_NORM: {"eps": norm_command["eps"].shape, "shifts": norm_command["shifts"].shape},
            Opcode.CONFIG_SOFTMAX: {name: field.shape for name, field in softmax_command
                                    if name != "rows"},
            Opcode.UPSAMPLE: {"memory": Space, "near": address, "far": address,
                              "width": unsigned(max(conv.width for conv in convs).bit_length()),
                              "tiles": unsigned(max(tiles(conv.out_channels, accel.array_rows)
                                                    for conv in convs).bit_length()),
                              "stride": address, "region": Region, "address": dram},
            Opcode.CONFIG_CONV: {"kernel": 1, "channel_tiles": unsigned(index_bits(k_tiles + 1)),
                                 "stride": word("activation", "scratch"), "above": word("activation", "scratch"),
                                 "below": word("activation", "scratch"), "pad_above": 1, "pad_below": 1,
                                 "pad_left": 1, "pad_right": 1},
        }
        payload = INSTRUCTION_BITS - OPCODE_BITS
        self.operands = {}
        for opcode, fields in operands.items():
            layout = data.StructLayout(fields)
            if layout.size > payload:
                raise IsaError(f"{opcode.name} needs {layout.size} operand bits for {model.name} on {accel.name}, "
                               f"more than an instruction's {payload}: the on-chip memories are too deep "
                               f"({self.address_width}-bit addresses) for a GEMM of up to {model.num_tokens} rows")
            self.operands[opcode] = layout
        self.layout = data.StructLayout({
            "opcode": Opcode,
            "operands": data.UnionLayout({**{op.name.lower(): layout for op, layout in self.operands.items()},
                                          "bits": unsigned(payload)}),
        })
        assert self.layout.size == INSTRUCTION_BITS

    def fields(self, opcode: Opcode) -> list[tuple[str, int, int, object]]:
        """(name, bit offset in the instruction, width, shape) of every scalar field of `opcode`; arrays are
        named `name[i]`."""
        return list(_leaves(self.operands[opcode], OPCODE_BITS, ""))


def _leaves(shape, offset: int, name: str):
    if isinstance(shape, data.ArrayLayout):
        width = Shape.cast(shape.elem_shape).width
        for i in range(shape.length):
            yield from _leaves(shape.elem_shape, offset + i * width, f"{name}[{i}]")
    elif isinstance(shape, data.StructLayout):
        for member, field in shape:
            yield from _leaves(field.shape, offset + field.offset, f"{name}.{member}" if name else member)
    else:
        yield name, offset, Shape.cast(shape).width, shape
