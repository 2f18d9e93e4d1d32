"""`m3vit run`: a whole inference (image to prediction) on the simulated accelerator, every task, against the
golden model.

`run_inference(quantized, accel, image, tasks, simulator)` compiles the backbone and every task's head once
(`backbone_program(heads=True)`), places it and runs its start-up (the resident router weights, reported apart),
then for each task in turn on one accelerator through the host driver, back to back, the backbone's run and the
task head's run, and compares the backbone output, every MoE layer's routing and the head's output with
`golden.model.run` bit for bit; with several tasks it returns to the first and reports what the switch cost. Per
task it reports, for the backbone: the cycles, the MAC floor (the backbone's array multiply-accumulates over
R·C: the router has MACs of its own) and the utilization, the busy cycles per unit, what the GEMMs leave exposed
(the cycles the engine is idle, by the unit that is busy: vector, router, loader, other) and the engine's own
cycles beyond the floor (`gemm_overhead_cycles`), the DRAM bytes read against what the program must read (each
LOAD once, a per-expert LOAD once per active expert, the program once; fetch may read up to a buffer of
instructions past HALT) and written, and the wall time; for the head the same under `head_*` keys (its floor
its convolutions' and classifier's MACs; its bytes against the compiler's stated reads and writes), whether its
output is the golden model's (`output_bit_exact`), and the whole inference's cycles and utilization. On a
backbone mismatch `first_mismatch` runs the program again with its intermediates stored and names the first one
that differs from the golden model's, and the operation that made it.
"""
from __future__ import annotations

import time

import numpy as np

from golden.config import AcceleratorConfig
from golden.model import run as golden_run
from golden.quantized import QuantizedModel
from hw.control.isa import Space
from hw.control.memories import onchip_spaces
from hw.control.registers import COUNTERS

from .compiler import CHECKPOINTS, backbone_program
from .board import Board
from .driver import Driver
from .heads import head_output, head_traffic
from .image import residual_from_bytes, routes_from_bytes, x_bytes
from .sim import SimulatedBoard, accelerator_for, simulate

__all__ = ["run_inference", "simulator_speed", "expected_read_bytes", "expected_write_bytes", "run_lines",
           "first_mismatch", "head_prediction", "ARRAY_KINDS"]

FAST_REPEATS = 5       # runs of the fast simulator in `simulator_speed`, two before Amaranth's run and three
                       # after it; the median taken
ARRAY_KINDS = ("patch_embed", "qkv", "attention", "proj", "dense_mlp", "experts")   # golden MACs on the array


def run_lines(program, run="backbone") -> list[str]:
    """The instructions (assembler text) of one of `program`'s runs: "start_up", "backbone", or a task's head
    (the task's index)."""
    span = program.run_range(run)
    return program.text.splitlines()[span.start:span.stop]


def expected_read_bytes(program, model, routing=None, *, run="backbone") -> int:
    """The DRAM bytes a run of `program` (`run_lines`' `run`) must read: every LOAD once, a per-expert LOAD once
    per active expert of its layer (`routing`: golden routing by block), and the run's instructions once."""
    lines = run_lines(program, run)
    total, layer = 16 * len(lines), None
    for line in lines:
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        if line.startswith("ROUTE"):
            layer = int(fields["layer"])
        elif line.startswith("LOAD"):
            times = len(routing[model.moe_blocks[layer]].active_experts) if fields["per_expert"] == "1" else 1
            total += int(fields["bytes"]) * times
    return total


def expected_write_bytes(program, spaces, run="backbone") -> int:
    """The DRAM bytes a run of `program` writes: every STORE's, every UPSAMPLE's output row."""
    total = 0
    for line in run_lines(program, run):
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        if line.startswith("STORE"):
            total += int(fields["bytes"])
        elif line.startswith("UPSAMPLE"):
            total += int(fields["tiles"]) * 2 * int(fields["width"]) * spaces[Space[fields["memory"]]].word_bytes
    return total


def _driven(accelerator, program, tasks, dram_bytes, simulator, latency, heads=None):
    """The start-up's result, then per task in order (run back to back) its backbone's result and wall seconds,
    and its head's (None when the program has none, or past the first `heads` tasks). `simulator` may be a board
    instead: `firmware.board.Board` (a real one), `firmware.sim.SimulatedBoard`."""
    async def host(transport):
        driver = Driver(transport, accelerator.model, accelerator.accel)
        await driver.connect()
        start_up = await driver.place(program, timeout=1 << 40)
        results = []
        for index, task in enumerate(tasks):
            start = time.perf_counter()
            result = await driver.run(program, task, timeout=1 << 40)
            seconds = time.perf_counter() - start
            head = None
            if task in program.heads and (heads is None or index < heads):
                start = time.perf_counter()
                head = (await driver.run_head(program, task, timeout=1 << 40), time.perf_counter() - start)
            results.append((result, seconds, head))
        return start_up, results
    if isinstance(simulator, (Board, SimulatedBoard)):
        return simulator.drive(host, accelerator, dram_bytes)
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
    _, ((result, _, _),) = _driven(accelerator_for(model, accel), program, [task],
                                   _dram_bytes(program, model, accel), simulator, latency)
    if not result.ok:
        return f"the run itself ({result.cause.name} at instruction {result.error_pc})"
    for name in program.stored_by():                  # in the order the program stores them
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


def run_inference(quantized: QuantizedModel, accel: AcceleratorConfig, image: np.ndarray, tasks: list[int],
                  simulator: str = "verilator", latency: int = 10, heads: bool = True,
                  predictions: bool = False) -> dict:
    """The start-up, then each task in order (its backbone, then, with `heads`, its head), back to back on one
    accelerator, then (for several tasks) the first task's backbone again: {"start_up": its cycles and bytes,
    "tasks": per task the report described in the module's doc, "switch": the cost of the last task switch}. The switch
    costs the host's cycles from the end of the run before it to the end of the first task's second backbone
    run, less that task's first backbone run's cycles: whatever a switch adds beyond the new task's own work
    (`switch_fraction`: of that run's cycles). With `predictions`, a task's report keeps its head's output
    (`prediction`, int16 [channels, H, W]) and the output's scale (`output_scale`)."""
    model = quantized.config
    program = backbone_program(quantized, accel, image, heads=heads)
    goldens = {task: golden_run(quantized, image, task) for task in tasks}
    accelerator = accelerator_for(model, accel)
    sequence = tasks + tasks[:1] if len(tasks) > 1 else tasks      # the first again: its backbone, for the switch
    start_up, results = _driven(accelerator, program, sequence, _dram_bytes(program, model, accel), simulator,
                                latency, heads=len(tasks))
    reports = [_report(program, quantized, accel, image, task, goldens[task], result, seconds, simulator, latency,
                       head) for task, (result, seconds, head) in zip(sequence, results)]
    if predictions:
        for report, (_, _, head) in zip(reports, results):
            report["prediction"] = head_prediction(head[0], model, accel, report["task"]) if head else None
            report["output_scale"] = quantized.scales.get(f"heads.{report['task']}.output", 1.0)
    summary = {"start_up": None, "tasks": reports[:len(tasks)], "switch": None}
    if start_up is not None:
        summary["start_up"] = {"cycles": start_up.cycles, "dram_read_bytes": start_up.counters["DRAM_READ_BYTES"],
                               "expected_read_bytes": expected_read_bytes(program, model, run="start_up")}
    if len(tasks) > 1:
        (first, _, _), (before, _, before_head), (again, _, _) = results[0], results[-2], results[-1]
        before = before if before_head is None else before_head[0]
        cycles = again.finished_at - before.finished_at - first.cycles
        summary["switch"] = {"from": tasks[-1], "to": tasks[0], "switch_cycles": cycles,
                             "switch_fraction": cycles / first.cycles, "cycles_again": again.cycles,
                             "bit_exact_again": reports[-1]["bit_exact"]}
    return summary


def _report(program, quantized, accel, image, task, golden, result, seconds, simulator, latency, head) -> dict:
    model = quantized.config
    bit_exact = result.ok and all(_agrees(name, data, golden, model, accel) for name, data in result.outputs.items())
    floor = -(-sum(golden.macs.get(kind, 0) for kind in ARRAY_KINDS) // (accel.array_rows * accel.array_cols))
    report = {
        "task": task, "task_name": model.tasks[task].name, "bit_exact": bool(bit_exact),
        "error": result.cause.name, "error_pc": result.error_pc, "cycles": result.cycles, "floor_cycles": floor,
        "utilization": floor / result.cycles if result.cycles else 0.0,
        "dram_read_bytes": result.counters["DRAM_READ_BYTES"],
        "expected_read_bytes": expected_read_bytes(program, model, golden.routing),
        "dram_write_bytes": result.counters["DRAM_WRITE_BYTES"],
        "busy": {name.removeprefix("BUSY_").lower(): result.counters[name] for name, _ in COUNTERS
                 if name.startswith("BUSY_")},
        "exposed": {name.removeprefix("EXPOSED_").lower(): result.counters[name] for name, _ in COUNTERS
                    if name.startswith("EXPOSED_")},
        "gemm_overhead_cycles": result.counters["BUSY_GEMM"] - floor,
        "dram_stall_cycles": result.counters["DRAM_STALL_CYCLES"],
        "experts_used": {str(block): experts for block, experts in golden.experts_used.items()},
        "wall_seconds": round(seconds, 3),
    }
    if not bit_exact:
        report["first_mismatch"] = first_mismatch(quantized, accel, image, task, simulator, latency)
    if head is not None:
        report.update(_head_report(program, quantized, accel, task, golden, report, *head))
    return report


def _head_report(program, quantized, accel, task, golden, backbone, result, seconds) -> dict:
    """The head's run: its output against the golden model's, its cycles against the floor of its
    multiply-accumulates (its convolutions and classifier), its DRAM traffic against the compiler's stated
    bytes, and the whole inference's (backbone and head) cycles and utilization."""
    model = quantized.config
    output = head_prediction(result, model, accel, task) if result.ok else None
    floor = -(-golden.macs.get("head", 0) // (accel.array_rows * accel.array_cols))
    whole_floor = backbone["floor_cycles"] + floor
    whole = backbone["cycles"] + result.cycles
    return {
        "output_bit_exact": output is not None and np.array_equal(output, golden.output),
        "head_error": result.cause.name, "head_error_pc": result.error_pc,
        "head_cycles": result.cycles, "head_floor_cycles": floor,
        "head_utilization": floor / result.cycles if result.cycles else 0.0,
        "head_dram_stall_cycles": result.counters["DRAM_STALL_CYCLES"],
        "head_dram_read_bytes": result.counters["DRAM_READ_BYTES"],
        "head_expected_read_bytes": expected_read_bytes(program, model, run=task),
        "head_dram_write_bytes": result.counters["DRAM_WRITE_BYTES"],
        "head_expected_write_bytes": expected_write_bytes(program, onchip_spaces(model, accel), run=task),
        "head_busy": {name.removeprefix("BUSY_").lower(): result.counters[name] for name, _ in COUNTERS
                      if name.startswith("BUSY_")},
        "head_exposed": {name.removeprefix("EXPOSED_").lower(): result.counters[name] for name, _ in COUNTERS
                         if name.startswith("EXPOSED_")},
        "head_layers": head_traffic(model, accel, task, onchip_spaces(model, accel)[Space.NORMS].bytes // 2),
        "head_wall_seconds": round(seconds, 3),
        "inference_cycles": whole, "inference_floor_cycles": whole_floor,
        "inference_utilization": whole_floor / whole if whole else 0.0,
    }


def head_prediction(result, model, accel, task: int) -> np.ndarray:
    """The head's int16 output [channels, H, W] of a head run's `result`, as `golden.run` returns it."""
    classes = model.head_layers(task)[-1].out_channels
    return head_output(result.outputs[f"head.{task}.output"], classes, *model.image_size, accel.array_cols)


def simulator_speed(quantized: QuantizedModel, accel: AcceleratorConfig, image: np.ndarray, cycles: int = 20_000,
                    task: int = 0, latency: int = 10) -> dict:
    """Both simulators over the first `cycles` cycles of a backbone run of `task` (after the start-up), the same
    design and the same host code: per simulator the cycles per second (`pysim_cycles_per_s`;
    `fast_cycles_per_s`, the median of `FAST_REPEATS` runs, each on a new instance, half of them (rounded
    down) before Amaranth's run and the rest after it: a run of a few hundredths of a second is at the mercy of
    the shared machine's load at that moment, where Amaranth's run of half a minute averages it) and the seconds
    spent besides the measured cycles (elaboration, the fast simulator's build when it is not cached, each
    run's set-up); their `ratio`; and whether they agree on every performance counter at the end
    (`counters_agree`: they simulate the same cycles)."""
    model = quantized.config
    program = backbone_program(quantized, accel, image)
    accelerator = accelerator_for(model, accel)
    async def host(transport):
        driver = Driver(transport, model, accel)
        await driver.connect()
        await driver.start(program, task)
        start = time.perf_counter()
        ran = await transport.wait_irq(cycles)
        return ran, time.perf_counter() - start, await driver.counters()

    runs, setup = {"pysim": [], "verilator": []}, {"pysim": 0.0, "verilator": 0.0}
    half = FAST_REPEATS // 2
    for simulator in ["verilator"] * half + ["pysim"] + ["verilator"] * (FAST_REPEATS - half):
        begin = time.perf_counter()
        runs[simulator].append(simulate(accelerator, host, _dram_bytes(program, model, accel),
                                        simulator=simulator, latency=latency))
        setup[simulator] += time.perf_counter() - begin - runs[simulator][-1][1]
    measured = {}
    for simulator, done in runs.items():
        ran, seconds, counters = sorted(done, key=lambda run: run[1])[len(done) // 2]
        measured[simulator] = {"cycles": ran, "seconds": seconds, "counters": counters, "speed": ran / seconds,
                               "setup_seconds": setup[simulator]}
    pysim, fast = measured["pysim"], measured["verilator"]
    return {"preset": model.name, "accel": accel.name, "task": task, "cycles": fast["cycles"],
            "pysim_cycles_per_s": pysim["speed"], "fast_cycles_per_s": fast["speed"],
            "ratio": fast["speed"] / pysim["speed"],
            "pysim_seconds": pysim["seconds"], "fast_seconds": fast["seconds"],
            "pysim_setup_seconds": pysim["setup_seconds"], "fast_setup_seconds": fast["setup_seconds"],
            "counters_agree": pysim["cycles"] == fast["cycles"] and pysim["counters"] == fast["counters"],
            "counters": fast["counters"]}
