"""The on-chip memories the instructions name (`Space`), their word formats and depths: one source for the top
level, which builds them, and the firmware, which lays out what `LOAD` brings in and reads what `STORE` writes.

Word formats (little-endian bytes in DRAM, lane 0 first):
- `ACTIVATION`, `SCRATCH`: R int8 operands, K-tile-major X of the GEMM engine: row t's K tile i at word
  `base + i·T + t` (T the token count, the engine's `x_stride`); ACTIVATION holds a T × D operand and, past it,
  one head's P (T × T) that the softmax writes; SCRATCH also holds attention's stationary Kᵀ
  and V, a tile's R rows at consecutive words from a base that is a multiple of `feed_rows`, read by feed word
  (a GEMM's `w_base` counts feed words there);
- `RESIDUAL`: C int16 values, N-tile-major in the same way: token t's columns j·C … at word `j·T + t` (a GEMM
  output row's tile is one word);
- `PARAMS`: one GEMM N tile's column parameters a word, C × (int32 bias, 32-bit parameter word), the DRAM
  matrix header's bytes as they are (`hw.memory.layout`); two halves of the largest matrix's N tiles each, so
  the next matrix's header loads into one half while a GEMM reads the other (the scoreboard keeps them apart);
- `SCORES`: two halves, each the scores of one head for a block of up to B query rows (B the accelerator's token
  block, `tokens_per_block`), C int32 a word, N-tile-major: the block's row r's keys j·C … at word `h·H + j·B + r`
  in half h (H = B·⌈T / C⌉ words a half), so one block's softmax reads a half while the next block's Q·Kᵀ writes
  the other; the scoreboard keeps the halves apart;
- `ROW_SCALES`: per query row of a block, the softmax's multiplier (bits 0-15) and shift (bits 16-21) for
  attention·V;
- `ROUTER`, `ROUTER_PARAMS`: the router's weights and exponent scales, in its own words (`Router`);
- `ROUTES`: the routing record of the last ROUTE, token t at word t: its k experts then its k gate weights;
- `NORMS`: LayerNorm's parameters, set s's beat b at word s·⌈D / lanes⌉ + b (`LayerNorm.params_layout`: γ and β
  of its two outputs for `vector_lanes` channels);
- `WEIGHTS`: the loader's slab buffers (`WeightLoader`), addressed by feed word: buffer b at b · `span`;
- `HIDDEN`: one word, GELU's hidden requantization (multiplier bits 0-15, shift bits 16-21), the register
  `CONFIG_GELU` sets (an expert's own, by a per-expert LOAD inside EXPERTS).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.lib import data

from golden.config import AcceleratorConfig, ConfigError, ModelConfig

from ..compute.gemm.geometry import tiles
from ..memory.layout import HEADER_COLUMN_BYTES
from ..memory.plan import feed_rows, onchip_memories
from ..moe.router.geometry import RouterGeometry
from .isa import Space

__all__ = ["OnChip", "onchip_spaces", "check_top_level", "router_geometry", "feed_rows", "TWO_PORTED"]

# The memories the store path reads beside another reader: each is an `InterleavedMemory`, the store path's reads
# (and SCRATCH's stationary reads) sharing port A with the writes, the engine's, LayerNorm's and the residual
# addition's or the softmax's reads on port B. The scoreboard keeps a STORE or UPSAMPLE apart from the memory's
# writers, and from a GEMM whose stationary operand is in SCRATCH (docs/architecture.md, section 11).
TWO_PORTED = (Space.ACTIVATION, Space.SCRATCH, Space.RESIDUAL, Space.SCORES)


@dataclass(frozen=True)
class OnChip:
    space: Space
    word_bytes: int
    depth: int

    @property
    def bytes(self) -> int:
        return self.word_bytes * self.depth


def check_top_level(model: ModelConfig, accel: AcceleratorConfig) -> None:
    """What this top level needs beyond `check_compatible`, as `ConfigError`s naming the parameter."""
    r, c = accel.array_rows, accel.array_cols
    if r != c or r & (r - 1):
        raise ConfigError("array_rows × array_cols", f"{r}x{c}", "the top level wires a GEMM's output tiles "
                          "into the next one's K tiles, so it needs a square array of a power-of-two side")
    if model.head_dim % c:
        raise ConfigError("array_cols", c, f"qkv writes each of the {model.num_heads} heads' K through the corner-turn "
                          f"as whole N tiles of Kᵀ, so the top level needs the head dimension ({model.head_dim}) a "
                          "multiple of the array's columns")
    for name, size in (("array_rows", r), ("vector_lanes", accel.vector_lanes)):
        if model.embed_dim % size or accel.vector_lanes & (accel.vector_lanes - 1):
            raise ConfigError(name, size, f"the top level moves rows of {model.embed_dim} values in words of "
                              f"{size}: it needs the embedding a multiple of it, and lanes a power of two")
    if accel.vector_lanes > c:
        raise ConfigError("vector_lanes", accel.vector_lanes, f"the top level feeds the softmax from words of {c} "
                          "scores, so it needs at most as many vector lanes as the array has columns")
    if feed_rows(accel) & (feed_rows(accel) - 1):
        raise ConfigError("weight_feed_bytes", accel.weight_feed_bytes, "the top level reads attention's Kᵀ and V "
                          "from SCRATCH in banks, a feed word's rows at once: it needs a power-of-two number of "
                          "array rows a feed word")


def onchip_spaces(model: ModelConfig, accel: AcceleratorConfig) -> dict[Space, OnChip]:
    """The loadable and storable memories of the top level for `model` on `accel`."""
    r, c, t = accel.array_rows, accel.array_cols, model.num_tokens
    plan = {memory.name: memory for memory in onchip_memories(model, accel)}
    hidden = max(model.mlp_hidden, model.expert_hidden if model.moe_blocks else 0)
    x_words = lambda k: t * tiles(k, r)    # noqa: E731: an X of K columns, K-tile-major
    n_tiles = tiles(max(3 * model.embed_dim, hidden, t), c)
    return {
        # the attention output, then one head's P (T × T, K-tile-major); in a head, its last convolution's row
        Space.ACTIVATION: OnChip(Space.ACTIVATION, r, plan["activation"].depth),
        Space.SCRATCH: OnChip(Space.SCRATCH, r, tiles(max(plan["scratch"].depth, x_words(model.patch_dim),
                                                          x_words(hidden)), feed_rows(accel)) * feed_rows(accel)),
        Space.RESIDUAL: OnChip(Space.RESIDUAL, 2 * c, plan["residual"].depth),    # or a head's classifier ring
        Space.PARAMS: OnChip(Space.PARAMS, HEADER_COLUMN_BYTES * c, 2 * n_tiles),     # two matrices, a half each
        # LayerNorm's two parameter sets: per beat of `vector_lanes` channels, γ (16 bits) and β (48 bits) for
        # its two outputs, `LayerNorm.params_layout`
        Space.NORMS: OnChip(Space.NORMS, 16 * accel.vector_lanes, 2 * tiles(model.embed_dim, accel.vector_lanes)),
        Space.SCORES: OnChip(Space.SCORES, 4 * c, plan["scores"].depth),        # two heads' scores, a half each
        Space.ROW_SCALES: OnChip(Space.ROW_SCALES, 4, t),
        Space.HIDDEN: OnChip(Space.HIDDEN, 4, 1),
        **_router_spaces(model, accel),
    }


def router_geometry(model: ModelConfig, accel: AcceleratorConfig) -> RouterGeometry:
    return RouterGeometry(model.embed_dim, model.num_experts, model.top_k, model.gate, model.num_tasks,
                          accel.router_layers_held(model), model.num_tokens, accel.router_macs_per_cycle,
                          accel.residual_width)


def _router_spaces(model: ModelConfig, accel: AcceleratorConfig) -> dict[Space, OnChip]:
    """The router's weights (a word of `router_macs_per_cycle` int8 per group and chunk of each (layer, task)),
    its exponent scales (one word per (layer, task)) and the routing record (a word per token: its k experts and
    Q1.15 gate weights, `route_word` bits in a power of two of bytes; its depth a whole number of bus words, so
    STORE takes it whole)."""
    g = router_geometry(model, accel)
    record = data.Layout.cast(g.record).size
    word, bus = 1 << (-(-record // 8) - 1).bit_length(), accel.dram_bytes_per_beat
    return {Space.ROUTER: OnChip(Space.ROUTER, g.macs, g.weights_depth),
            Space.ROUTER_PARAMS: OnChip(Space.ROUTER_PARAMS, 4, g.layers * g.tasks),
            Space.ROUTES: OnChip(Space.ROUTES, word, tiles(model.num_tokens, max(1, bus // word)) * max(1, bus // word))}
