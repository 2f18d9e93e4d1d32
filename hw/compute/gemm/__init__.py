"""The GEMM engine and its stages (docs/architecture.md, section 3)."""

from .engine import GemmEngine
from .geometry import (DRAIN_STAGES, GATE_WIDTH, GELU_STAGES, OPERAND_READ_LATENCY, STREAM_STAGES, GemmGeometry,
                       GemmMode, tiles)
from .images import combine_model, gemm_model, pack_params, pack_w, pack_x

__all__ = ["GemmEngine", "GemmGeometry", "GemmMode", "gemm_model", "combine_model", "pack_x", "pack_w",
           "pack_params", "tiles", "GATE_WIDTH", "DRAIN_STAGES", "STREAM_STAGES", "GELU_STAGES",
           "OPERAND_READ_LATENCY"]
