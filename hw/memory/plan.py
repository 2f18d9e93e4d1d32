"""The plan of on-chip memories (docs/architecture.md, section 9): every memory of the accelerator, its word width
and depth, from a model and an accelerator configuration. The fit check counts them in a target's blocks; the
instruction set sizes its address fields from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from golden.config import AcceleratorConfig, ModelConfig

__all__ = ["Memory", "onchip_memories", "feed_rows", "HEAD_BAND_ROWS", "HEAD_RING_ROWS", "head_row_in_activation"]

# A task head's 3×3 convolution holds its input rows y − 1 … y + 1 in a band and its output rows in a ring
# (firmware.heads): a band of three, since the scoreboard keeps SCRATCH whole, so a row's LOAD waits for every GEMM
# reading the band and a fourth slot would let no load run ahead; a ring of three, the two an UPSAMPLE reads and
# the one being written.
HEAD_BAND_ROWS, HEAD_RING_ROWS = 3, 3


def head_row_in_activation(model: ModelConfig) -> bool:
    """Whether the last 3×3 convolution of a task head writes its output row (the classifier's input, one row at a
    time) into ACTIVATION from word 0, over the normed tokens, rather than into SCRATCH after its band: when it is
    not the first convolution, the only one that reads the tokens."""
    return len(model.head_layers(0)) > 2


@dataclass(frozen=True)
class Memory:
    """One on-chip memory of the plan: `count` copies of `depth` words of `width` bits, kept in `banks` banks of
    depth / banks words each; `two_ports`: each bank uses both ports of its blocks (the write and the reads that
    share its port in time, and a read of its own: `hw.memory.interleaved`), so it takes true dual-port blocks,
    whose ports are narrower than a simple dual-port block's write and read ports."""

    name: str
    width: int
    depth: int
    count: int = 1
    purpose: str = ""
    banks: int = 1
    two_ports: bool = False

    @property
    def bytes(self) -> int:
        return self.count * self.width * self.depth // 8


def _words(total_bits: int, width: int) -> int:
    return max(1, math.ceil(total_bits / width))


def feed_rows(accel: AcceleratorConfig) -> int:
    """Array rows a weight feed word holds: SCRATCH's banks, word a in bank a mod feed_rows, so the stationary
    read of Kᵀ and V takes a feed word (rows L·a … L·a + L − 1) at feed-word address a."""
    return accel.weight_feed_bytes // (accel.array_cols * accel.operand_width // 8)


def onchip_memories(model: ModelConfig, accel: AcceleratorConfig) -> list[Memory]:
    """The on-chip memories of docs/architecture.md for `model` on `accel`."""
    t, d = model.num_tokens, model.embed_dim
    rows = accel.tokens_per_block(model)
    lanes, ow, acc, rw = accel.vector_lanes, accel.operand_width, accel.accumulator_width, accel.residual_width
    stream_width = accel.array_rows * ow
    has_moe = bool(model.moe_blocks)
    # The scratch memory is shared by phases that never overlap: attention (Q, Kᵀ, V), the MLP (the hidden
    # activations of every token) and the task heads (a band of input rows and a ring of output rows for the 3×3
    # convs). The raw scores (two blocks of `rows` query rows: one block's softmax reads one while the next
    # block's Q·Kᵀ writes the other) have a memory of their own; one head's probabilities (every token's row,
    # K-tile-major) go past the activations. The experts' gate-weighted rows are added straight into the residual.
    attention_bits = 3 * t * d * ow
    mlp_bits = t * max(model.mlp_hidden, model.expert_hidden if has_moe else 0) * ow
    c = accel.array_cols
    # the heads: a band of input rows (the first conv's input is in ACTIVATION) and a ring of output rows (the
    # classifier's input row is in ACTIVATION, or one after the band), channels in whole tiles of the array's rows
    # (firmware.heads)
    convs = model.head_layers(0)[:-1]
    channels = lambda count: -(-count // accel.array_rows) * accel.array_rows      # noqa: E731
    last_row = channels(convs[-1].out_channels) * convs[-1].width // accel.array_rows   # words, the classifier's input
    ring_rows = [HEAD_RING_ROWS] * (len(convs) - 1) + [0 if head_row_in_activation(model) else 1]
    # the classifier writes its int16 output rows into a ring of three in RESIDUAL, over the residual stream (which
    # the head no longer reads)
    classifier_ring = max(HEAD_RING_ROWS * -(-layers[-1].out_channels // c) * layers[-1].width
                          for layers in map(model.head_layers, range(model.num_tasks)))
    head_bits = max((HEAD_BAND_ROWS * channels(conv.in_channels) * (index > 0) + rows * channels(conv.out_channels))
                    * conv.width * ow for index, (conv, rows) in enumerate(zip(convs, ring_rows)))
    router_weights = accel.router_layers_held(model) * model.num_tasks * model.num_experts * d * ow
    router_width = min(accel.router_macs_per_cycle, model.num_experts * d) * ow
    feed_width = accel.weight_feed_bytes * 8
    banks = feed_rows(accel)
    index_bits = max(1, (t - 1).bit_length())
    memories = [
        Memory("residual", c * rw, max(t * -(-d // c), classifier_ring),
               purpose="residual stream, every token, or a task head's ring of classifier output rows", two_ports=True),
        Memory("activation", stream_width, max(t * (-(-d // accel.array_rows) + -(-t // accel.array_rows)),
                                               last_row if head_row_in_activation(model) else 0),
               purpose="LayerNorm output / attention output and one head's P, or a task head's last convolution "
                       "output row: the array's streamed operand",
               two_ports=True),
        Memory("scratch", stream_width, banks * -(-max(attention_bits, mlp_bits, head_bits) // (stream_width * banks)),
               purpose="attention Q/Kᵀ/V, or MLP hidden, or a task head's band of input rows and ring of output rows",
               banks=banks, two_ports=True),
        Memory("scores", c * acc, 2 * rows * -(-t // c), purpose="two blocks of query rows' raw attention scores",
               two_ports=True),
        Memory("params", accel.array_cols * 64, 2 * -(-max(3 * d, model.mlp_hidden, model.expert_hidden, t)
                                                    // accel.array_cols),
               purpose="column parameters (bias, requantization) of two matrices, one loading while one is read"),
        Memory("accumulator", accel.array_cols * acc, 2 << max(1, (t - 1).bit_length()), 2,
               purpose="GEMM engine partial sums, M × C tile, two banks of a power of two rows; a copy for each "
                       "of its readers (the accumulation reads one bank while the drain reads the other)"),
        Memory("weights", feed_width, _words(accel.weight_buffer_bytes * 8, feed_width), accel.weight_buffers,
               purpose="ping/pong weight slabs from the loader"),
        Memory("router_weights", router_width, _words(router_weights, router_width),
               purpose="every task's router weights, " + ("every MoE layer" if accel.router_weights_resident
                                                          else "two MoE layers: one routing, the next loading")),
        Memory("expert_queues", index_bits + accel.requant_multiplier_width, max(1, t * model.top_k),
               purpose="per-expert token indices and gate weights"),
        Memory("row_buffer", lanes * max(rw, acc), _words(2 * max(d, t) * max(rw, acc), lanes * max(rw, acc)), 2,
               purpose="the row under processing, double-buffered: one in LayerNorm, one in the softmax"),
    ]
    return [memory for memory in memories if memory.depth > 0]
