"""Measured facts the benchmarks use (from shared/reference/m3vit.md)."""

__all__ = ["ROUTING_FIXTURE"]

# Tokens per expert at the first MoE layer of a trained M³ViT-tiny (Cityscapes), one image, top-2 of 16,
# by task: {task: {expert: tokens}} (experts not listed received no token).
ROUTING_FIXTURE = {
    0: {1: 6, 3: 32, 5: 27, 6: 15, 7: 24, 8: 22, 9: 19, 11: 22, 12: 11, 13: 33, 14: 32, 15: 15},
    1: {1: 17, 3: 41, 4: 1, 5: 22, 6: 16, 7: 25, 8: 2, 9: 19, 11: 23, 12: 16, 13: 1, 14: 51, 15: 24},
}

# Activation tails of a trained M³ViT-tiny (Cityscapes), one real image in [0, 1], blocks 0-1: tensor →
# (max / rms, 99.99th percentile of |x| / rms). Where the table measured a tensor in both blocks, block 0 (dense)
# gives the figure of the dense blocks and block 1 (MoE) that of the MoE blocks; a tensor measured in one block
# stands for every block. `gelu` is the MLP hidden (the experts' hidden in MoE blocks).
TRAINED_TAILS = {
    "embed": (8.7, 8.0),
    "norm1": {"dense": (12.7, 11.7), "moe": (15.5, 7.2)},
    "v": (11.5, 10.0),
    "attn_out": {"dense": (18.0, 15.8), "moe": (11.6, 10.5)},
    "mid": (13.7, 8.7),
    "norm2": {"dense": (12.1, 8.8), "moe": (9.5, 7.9)},
    "gelu": (29.3, 20.5),
    "router_logits": (4.8, 4.5),
    "out": (12.1, 8.9),
}

# Routing of a trained M³ViT-tiny at its first MoE layer (top-2 of 16, one image): experts used per task, the
# median top-2 margin (k-th minus (k+1)-th logit) by task, and the share of tokens whose pair both tasks agree on.
TRAINED_ROUTING = {"experts_used": (12, 13), "tokens_per_expert": (1, 51), "margin_median": (0.12, 0.20),
                   "shared_pair": 0.19, "margin_min": 7e-4}

# The same tensors' rms (absolute, on the same image): what the ratios above do not fix, how large each update
# is against the residual stream it is added to. Keyed like TRAINED_TAILS.
TRAINED_RMS = {
    "embed": 1.22,
    "norm1": {"dense": 0.576, "moe": 0.582},
    "v": 0.496,
    "attn_out": {"dense": 0.167, "moe": 0.157},
    "mid": 1.10,
    "norm2": {"dense": 0.691, "moe": 0.924},
    "gelu": 0.178,
    "router_logits": 1.14,
    "out": 1.05,
}
