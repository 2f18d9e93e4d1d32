"""Measured facts the benchmarks use (from shared/reference/m3vit.md)."""

__all__ = ["ROUTING_FIXTURE"]

# Tokens per expert at the first MoE layer of a trained M³ViT-tiny (Cityscapes), one image, top-2 of 16,
# by task: {task: {expert: tokens}} (experts not listed received no token).
ROUTING_FIXTURE = {
    0: {1: 6, 3: 32, 5: 27, 6: 15, 7: 24, 8: 22, 9: 19, 11: 22, 12: 11, 13: 33, 14: 32, 15: 15},
    1: {1: 17, 3: 41, 4: 1, 5: 22, 6: 16, 7: 25, 8: 2, 9: 19, 11: 23, 12: 16, 13: 1, 14: 51, 15: 24},
}
