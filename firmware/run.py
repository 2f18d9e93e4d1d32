"""`m3vit run`: a whole backbone inference on the simulated accelerator, every task, against the golden model.

`run_backbone(quantized, accel, image, tasks, simulator)` compiles the backbone once (`backbone_program`), runs it
for each task in turn on one accelerator through the host driver, and compares the backbone output and every MoE
layer's routing with `golden.model.run` bit for bit. Per task it reports the cycles, the MAC floor (the
backbone's array multiply-accumulates over R·C: the router has MACs of its own) and the utilization, the busy
cycles per unit, the DRAM bytes read against what the program must read (each LOAD once, a per-expert LOAD once
per active expert, the program once; fetch may read up to a buffer of instructions past HALT) and written, and
the wall time. On a mismatch `first_mismatch` runs the program again with its intermediates stored and names
the first one that differs from the golden model's, and the operation that made it.
"""

from __future__ import annotations

import time

import numpy as np

from golden.config import AcceleratorConfig
from golden.model import run as golden_run
from golden.quantized import QuantizedModel
from hw.control.registers import COUNTERS

from .compiler import CHECKPOINTS, backbone_program
from .driver import Driver
from .image import residual_from_bytes, routes_from_bytes, x_bytes
from .sim import accelerator_for, simulate

__all__ = ["run_backbone", "expected_read_bytes", "first_mismatch", "ARRAY_KINDS"]

ARRAY_KINDS = ("patch_embed", "qkv", "attention", "proj", "dense_mlp", "experts")   # golden MACs on the array


def expected_read_bytes(program, model, routing) -> int:
    """The DRAM bytes `program` must read: every LOAD once, a per-expert LOAD once per active expert of its
    layer (`routing`: golden routing by block), and the program's instructions once."""
    total, layer = 16 * len(program.words), None
    for line in program.text.splitlines():
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        if line.startswith("ROUTE"):
            layer = int(fields["layer"])
        elif line.startswith("LOAD"):
            times = len(routing[model.moe_blocks[layer]].active_experts) if fields["per_expert"] == "1" else 1
            total += int(fields["bytes"]) * times
    return total


def _driven(accelerator, programs_tasks, dram_bytes, simulator, latency):
    async def host(transport):
        driver = Driver(transport, accelerator.model, accelerator.accel)
        await driver.connect()
        results = []
        for program, task in programs_tasks:
            start = time.perf_counter()
            result = await driver.run(program, task, timeout=1 << 40)
            results.append((result, time.perf_counter() - start))
        return results
    return simulate(accelerator, host, dram_bytes, simulator=simulator, latency=latency)


def _dram_bytes(program, model, accel) -> int:
    return Driver(None, model, accel).dram_map(program).size


def first_mismatch(quantized: QuantizedModel, accel: AcceleratorConfig, image: np.ndarray, task: int,
                   simulator: str = "verilator", latency: int = 10, reference: QuantizedModel | None = None) -> str:
    """The first intermediate of a backbone run of `task` that differs from the golden model's (run on
    `reference`, by default the same model), as "tensor (operation)", or "" when all agree."""
    model = quantized.config
    golden = golden_run(reference or quantized, image, task, intermediates=True)
    program = backbone_program(quantized, accel, image, checkpoints=True)
    ((result, _),) = _driven(accelerator_for(model, accel), [(program, task)], _dram_bytes(program, model, accel),
                             simulator, latency)
    if not result.ok:
        return f"the run itself ({result.cause.name} at instruction {result.error_pc})"
    for name in program.outputs:       # in the order the program stores them
        if not _agrees(name, result.outputs[name], golden, model, accel):
            kind = name.split(".")[0] if name.startswith("routes.") else name.split(".")[-1]
            return f"{name} ({CHECKPOINTS[kind]})"
    return ""


def _agrees(name: str, stored: bytes, golden, model, accel) -> bool:
    """Whether output `name` of a backbone program (`backbone_program`'s names) is the golden model's."""
    if name.startswith("routes."):
        routing = golden.routing[int(name.split(".")[1])]
        ids, weights = routes_from_bytes(stored, model, accel)
        return np.array_equal(ids, routing.expert_ids) and np.array_equal(weights, routing.gate_weights)
    if name.endswith("norm2"):
        return stored == x_bytes(golden.tensors[name], accel, model.num_tokens)
    expected = golden.backbone if name == "out" else golden.tensors[name]
    return np.array_equal(residual_from_bytes(stored, model, accel), expected)


def run_backbone(quantized: QuantizedModel, accel: AcceleratorConfig, image: np.ndarray, tasks: list[int],
                 simulator: str = "verilator", latency: int = 10) -> list[dict]:
    """Per task, in order, one after another on one accelerator: the report described in the module's doc."""
    model = quantized.config
    program = backbone_program(quantized, accel, image)
    goldens = {task: golden_run(quantized, image, task) for task in tasks}
    accelerator = accelerator_for(model, accel)
    results = _driven(accelerator, [(program, task) for task in tasks], _dram_bytes(program, model, accel),
                      simulator, latency)
    array = accel.array_rows * accel.array_cols
    reports = []
    for task, (result, seconds) in zip(tasks, results):
        golden = goldens[task]
        bit_exact = result.ok and all(_agrees(name, data, golden, model, accel)
                                      for name, data in result.outputs.items())
        floor = -(-sum(golden.macs.get(kind, 0) for kind in ARRAY_KINDS) // array)
        report = {
            "task": task, "task_name": model.tasks[task].name, "bit_exact": bool(bit_exact),
            "error": result.cause.name, "error_pc": result.error_pc, "cycles": result.cycles, "floor_cycles": floor,
            "utilization": floor / result.cycles if result.cycles else 0.0,
            "dram_read_bytes": result.counters["DRAM_READ_BYTES"],
            "expected_read_bytes": expected_read_bytes(program, model, golden.routing),
            "dram_write_bytes": result.counters["DRAM_WRITE_BYTES"],
            "busy": {name.removeprefix("BUSY_").lower(): result.counters[name] for name, _ in COUNTERS
                     if name.startswith("BUSY_")},
            "dram_stall_cycles": result.counters["DRAM_STALL_CYCLES"],
            "experts_used": {str(block): experts for block, experts in golden.experts_used.items()},
            "wall_seconds": round(seconds, 3),
        }
        if not bit_exact:
            report["first_mismatch"] = first_mismatch(quantized, accel, image, task, simulator, latency)
        reports.append(report)
    return reports
