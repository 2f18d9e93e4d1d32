"""The router's sizes and the layouts its stages exchange (one object, checked once)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Cat, signed, unsigned
from amaranth.lib import data

from golden import ops

from ...common.arith import index_bits

__all__ = ["RouterGeometry", "QUOTIENT_BITS", "EXP_BITS", "select", "weight_words"]

QUOTIENT_BITS = 33        # 2^62 // S with 2^30 ≤ S: at most 2^32
EXP_BITS = 31             # e ≤ 2^30


def select(values, index):
    """values[index] of same-shaped signals, as a shift (an out-of-range index reads anything)."""
    shape = values[0].shape()
    selected = Cat(*values).word_select(index, shape.width)
    return selected.as_signed() if shape.signed else selected


@dataclass(frozen=True)
class RouterGeometry:
    """A router for `experts` experts, top-`top_k`, `gate` ('vmoe' or 'noisy'), `tasks` tasks and `layers` MoE
    layers of up to `max_tokens` tokens of `embed_dim` values of `input_width` bits, with `macs` multipliers."""
    embed_dim: int
    experts: int
    top_k: int
    gate: str
    tasks: int
    layers: int
    max_tokens: int
    macs: int = 128
    input_width: int = 16

    def __post_init__(self):
        for name in ("embed_dim", "experts", "top_k", "tasks", "layers", "max_tokens", "macs", "input_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Router {name} = {value!r}: must be a positive integer")
        if self.top_k > self.experts:
            raise ValueError(f"Router top_k = {self.top_k}: at most experts ({self.experts})")
        if self.gate not in ("vmoe", "noisy"):
            raise ValueError(f"Router gate = {self.gate!r}: must be 'vmoe' or 'noisy'")

    @property
    def group_experts(self) -> int:
        """E': the experts whose logits are computed side by side."""
        return min(self.experts, self.macs)

    @property
    def lanes(self) -> int:
        """d': the dims of a token beat (and of a weight word per expert)."""
        return self.macs // self.group_experts

    @property
    def groups(self) -> int:
        return -(-self.experts // self.group_experts)

    @property
    def chunks(self) -> int:
        """Beats of one token."""
        return -(-self.embed_dim // self.lanes)

    @property
    def logit_width(self) -> int:
        return self.input_width + 8 + max(0, self.embed_dim - 1).bit_length() + 1

    @property
    def weights_depth(self) -> int:
        return self.layers * self.tasks * self.groups * self.chunks

    @property
    def token(self):
        return unsigned(index_bits(self.max_tokens))

    @property
    def expert(self):
        return unsigned(index_bits(self.experts))

    @property
    def weight(self):
        """A gate weight, Q1.15."""
        return unsigned(ops.GATE_BITS + 1)

    @property
    def token_beat(self) -> data.ArrayLayout:
        return data.ArrayLayout(signed(self.input_width), self.lanes)

    @property
    def weight_word(self) -> data.ArrayLayout:
        return data.ArrayLayout(signed(8), self.macs)

    @property
    def exponent_params(self) -> data.StructLayout:
        """Per (layer, task): the multiplier and shift that scale a logit distance into the exponent table."""
        return data.StructLayout({"multiplier": unsigned(ops.MULTIPLIER_BITS + 1), "shift": unsigned(ops.SHIFT_BITS)})

    @property
    def command(self) -> data.StructLayout:
        return data.StructLayout({"layer": unsigned(index_bits(self.layers)), "task": unsigned(8),
                                  "tokens": unsigned(index_bits(self.max_tokens + 1))})

    @property
    def winners(self) -> data.StructLayout:
        """A token's top k (best first) with their exponentials, and the sum of all E exponentials."""
        return data.StructLayout({"experts": data.ArrayLayout(self.expert, self.top_k),
                                  "e": data.ArrayLayout(unsigned(EXP_BITS), self.top_k),
                                  "total": unsigned(EXP_BITS + index_bits(self.experts) + 1)})

    @property
    def route(self) -> data.StructLayout:
        return data.StructLayout({"token": self.token, "experts": data.ArrayLayout(self.expert, self.top_k),
                                  "weights": data.ArrayLayout(self.weight, self.top_k)})

    @property
    def record(self) -> data.StructLayout:
        """A route as kept for the queues."""
        return data.StructLayout({"experts": data.ArrayLayout(self.expert, self.top_k),
                                  "weights": data.ArrayLayout(self.weight, self.top_k)})

    @property
    def expert_entry(self) -> data.StructLayout:
        return data.StructLayout({"expert": self.expert, "base": unsigned(index_bits(self.max_tokens * self.top_k)),
                                  "count": unsigned(index_bits(self.max_tokens + 1))})

    @property
    def queue_entry(self) -> data.StructLayout:
        return data.StructLayout({"token": self.token, "weight": self.weight})

    @property
    def queue_depth(self) -> int:
        return self.max_tokens * self.top_k


def weight_words(router, weights: np.ndarray) -> list[list[int]]:
    """Router weights of one (layer, task), W [D, E] int8, as the words of `router` (a `Router` or its
    `RouterGeometry`) in address order (group by group, chunk by chunk; lane e'·d' + j is W[chunk·d' + j,
    group·E' + e'], zero past D and E): what the firmware loads and the testbenches write."""
    groups, chunks, width, lanes = router.groups, router.chunks, router.group_experts, router.lanes
    padded = np.zeros((chunks * lanes, groups * width), dtype=np.int64)
    padded[:weights.shape[0], :weights.shape[1]] = weights
    tiles = padded.reshape(chunks, lanes, groups, width).transpose(2, 0, 3, 1)   # [g, c, e', j]
    return [[int(v) for v in word] for word in tiles.reshape(groups * chunks, width * lanes)]
