"""The host registers: 32-bit words at byte offsets of the AXI4-Lite slave, one executable source for the
register file, the host driver and the generated C header.

Each `Register` names its offset, access (`rw`: the host writes and reads back; `ro`: the accelerator's; `w1`:
write-1 bits that act once and read back 0) and, for registers with fields, a `data.StructLayout` from bit 0.
Addresses are 32-bit byte addresses of DRAM (the AXI4 ports' `addr_width`); the program's `LOAD` and `STORE`
addresses are offsets from the region registers (`MODEL_ADDR`, `IMAGE_ADDR`, `OUTPUT_ADDR`), so the driver
places the model once and each image and output wherever it likes.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import unsigned
from amaranth.lib import data

from .isa import ErrorCause

__all__ = ["Register", "REGISTERS", "REGISTER_BYTES", "ID_MAGIC", "ID_VERSION", "register", "Control", "Status",
           "Identity", "ErrorRegister", "COUNTERS"]

REGISTER_BYTES = 4
ID_MAGIC = 0x4D33      # "M3"
ID_VERSION = 1

Identity = data.StructLayout({"version": unsigned(16), "magic": unsigned(16)})
Control = data.StructLayout({"start": 1, "soft_reset": 1, "irq_enable": 1})
Status = data.StructLayout({"busy": 1, "done": 1, "error": 1})
ErrorRegister = data.StructLayout({"cause": ErrorCause})


@dataclass(frozen=True)
class Register:
    offset: int
    name: str
    access: str
    meaning: str
    layout: data.StructLayout | None = None


# The performance counters, in register order: (name, what one count is). Each counts over the last run,
# from start to done, and wraps at 2^32 (CYCLES: 2^64, low word first).
COUNTERS = (
    ("BUSY_GEMM", "cycles the GEMM engine or its output path is busy"),
    ("BUSY_LOADER", "cycles the weight loader has a descriptor or a burst in flight"),
    ("BUSY_ROUTER", "cycles the router is busy"),
    ("BUSY_VECTOR", "cycles LayerNorm or the softmax is busy"),
    ("DRAM_READ_BYTES", "bytes read from DRAM (whole beats)"),
    ("DRAM_WRITE_BYTES", "bytes written to DRAM (strobed bytes)"),
    ("DRAM_STALL_CYCLES", "cycles with a read burst in flight and no beat arriving, or a request or write beat "
                          "waiting for DRAM to take it"),
    ("INSTRUCTIONS", "instructions issued (an EXPERTS body counts once per expert)"),
    # The cycles the GEMM engine is not busy, each counted once, by the first unit that is: CYCLES = BUSY_GEMM +
    # the four EXPOSED_ counters. What the GEMMs do not hide.
    ("EXPOSED_VECTOR", "cycles the GEMM engine is idle while LayerNorm or the softmax is busy"),
    ("EXPOSED_ROUTER", "cycles the GEMM engine is idle while the router is busy (and no vector unit)"),
    ("EXPOSED_LOADER", "cycles the GEMM engine is idle while the loader is busy (and neither of the above)"),
    ("EXPOSED_OTHER", "cycles the GEMM engine is idle and none of the above busy: fetch, issue, stores"),
)

REGISTERS = (
    Register(0x00, "ID", "ro", f"magic 0x{ID_MAGIC:04X} (bits 16-31) and version (bits 0-15)", Identity),
    Register(0x04, "CONFIG_HASH", "ro", "golden.config.config_hash of the configuration the hardware was built from"),
    Register(0x08, "CONTROL", "w1", "start a run; soft reset; interrupt on done (kept while set)", Control),
    Register(0x0C, "STATUS", "ro", "busy: a run is in progress; done: the last run ended (cleared by start); "
             "error: it ended on a fault", Status),
    Register(0x10, "ERROR", "ro", "the first fault of the last run (ErrorCause)", ErrorRegister),
    Register(0x14, "ERROR_PC", "ro", "index of the instruction that faulted (0 for a fault at fetch of the first)"),
    Register(0x18, "TASK", "rw", "task id for the next run (ROUTE uses it; outside the model: BAD_TASK)"),
    Register(0x1C, "PROGRAM_ADDR", "rw", "DRAM address of the first instruction (bus-aligned, else BAD_OPERAND)"),
    Register(0x20, "MODEL_ADDR", "rw", "DRAM address the program's MODEL region starts at (weights, parameters)"),
    Register(0x24, "IMAGE_ADDR", "rw", "DRAM address of the IMAGE region (the input)"),
    Register(0x28, "OUTPUT_ADDR", "rw", "DRAM address of the OUTPUT region (STORE's results)"),
    Register(0x30, "CYCLES_LO", "ro", "cycles of the last run, low word"),
    Register(0x34, "CYCLES_HI", "ro", "cycles of the last run, high word"),
    *(Register(0x38 + REGISTER_BYTES * i, name, "ro", meaning) for i, (name, meaning) in enumerate(COUNTERS)),
)


def register(name: str) -> Register:
    for reg in REGISTERS:
        if reg.name == name:
            return reg
    raise KeyError(f"no host register named {name!r}")
