"""`m3vit sweep`: the design space of accelerator configurations, each point's cycles from the analytic model
(`firmware.cycles.estimate`) beside its multipliers and block RAM from the fit plan, fanned out over a Dask
cluster, cached point by point, and its Pareto front.

A point (`Point`) is a model preset and an accelerator: the nearest preset's defaults (`accelerator_preset`) with a
square array, slab buffers, DRAM bus width, vector lanes and GELU lanes of the grid (`AXES`), every token in one
block. `grid(presets, axes)` lists them all; `select(points, count)` spreads `count` of them over the grid.
`evaluate(point)` → its record: the whole inference's cycles (backbone and the task's head, uniform routing), per
run, the fit plan's multiplier and memory blocks on the target, or the reason the point cannot be built.
`run_sweep(points, directory)` evaluates what its cache (`directory/points/KEY.json`) does not hold yet, on a
`distributed` cluster (`LocalCluster` of `workers` processes, or the scheduler at `scheduler`), writing each record
as it comes, so an interrupted sweep resumes where it stopped. `pareto(records)`: the records no other beats on
both cycles and multipliers (and on block RAM). `verify(records, …)` simulates points in Verilator against the
model; `synthesize(records, …)` adds a point's logic from the target's open flow (`SYNTHESIS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["AXES", "Point", "grid", "select", "evaluate", "run_sweep", "pareto", "load_records", "verify",
           "synthesize"]

AXES = {
    "array": (4, 8, 16, 32, 64),                            # R = C
    "weight_buffer_bytes": (36 * 1024, 72 * 1024, 144 * 1024, 288 * 1024),
    "dram_data_width": (64, 128, 256),
    "vector_lanes": (1, 2, 4, 8, 16, 32),
    "requant_lanes": (1, 2, 4, 8, 16),
}


@dataclass(frozen=True)
class Point:
    preset: str
    array: int
    weight_buffer_bytes: int
    dram_data_width: int
    vector_lanes: int
    requant_lanes: int
    task: int = 0
    target: str = "zcu104"
    latency: int = 10

    @property
    def key(self) -> str:
        """A file name for the point: its values, and a hash of them."""
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.preset}-{self.array}x{self.array}-" + hashlib.sha256(text.encode()).hexdigest()[:12]

    def accel(self):
        from golden.config import accelerator_preset
        side = self.array
        base = accelerator_preset(f"{side}x{side}")
        return base.replace(name=f"{side}x{side}-b{self.weight_buffer_bytes // 1024}k-w{self.dram_data_width}"
                                 f"-v{self.vector_lanes}-g{self.requant_lanes}",
                            weight_buffer_bytes=self.weight_buffer_bytes, dram_data_width=self.dram_data_width,
                            vector_lanes=min(self.vector_lanes, side), requant_lanes=self.requant_lanes,
                            token_block=None)


def grid(presets: list[str], axes: dict | None = None, **fixed) -> list[Point]:
    """Every combination of `axes` (default `AXES`) for each preset, in order."""
    axes = AXES if axes is None else axes
    names = list(AXES)
    return [Point(preset, **dict(zip(names, values)), **fixed)
            for preset in presets for values in itertools.product(*(axes[name] for name in names))]


def select(points: list[Point], count: int | None) -> list[Point]:
    """`count` points spread evenly over `points` (all of them if there are no more)."""
    if count is None or count >= len(points):
        return list(points)
    return [points[i * len(points) // count] for i in range(count)]


def evaluate(point: Point) -> dict:
    """The point's record: `point` (its values), `accel` (the configuration), and either `error` (why it cannot
    be built or run) or `cycles` (the whole inference), `runs` (per run its cycles and units' busy cycles), and
    the fit plan on the target: `multipliers`, `memory_blocks` (by kind), `memory_bits`, `fits`."""
    from golden.config import ConfigError, check_compatible, model_preset
    from hw.control.memories import check_top_level
    from hw.flow.fit import fit_report, target
    from hw.control.isa import IsaError

    from .compiler import CompileError
    from .cycles import estimate

    record = {"key": point.key, "point": asdict(point)}
    model = model_preset(point.preset)
    try:
        accel = point.accel()
        check_compatible(model, accel)
        check_top_level(model, accel)
        result = estimate(model, accel, point.task, latency=point.latency)
        fit = fit_report(model, accel, target(point.target))
    except (ConfigError, CompileError, IsaError) as error:
        record["error"] = str(error)
        return record
    record["accel"] = accel.to_dict()
    record["cycles"] = result["cycles"]
    record["runs"] = {str(run): {"cycles": value["cycles"], "busy": value["busy"]}
                      for run, value in result["runs"].items()}
    bits = {block.name: block.bits for block in target(point.target).memory_blocks}
    record.update(multipliers=fit.multipliers.total, memory_blocks=fit.blocks_used,
                  memory_bits=sum(bits[kind] * used for kind, used in fit.blocks_used.items()), fits=fit.fits,
                  macs_per_cycle=accel.macs_per_cycle)
    return record


def load_records(directory: str | Path) -> dict[str, dict]:
    """The records a sweep's cache holds, by key."""
    records = {}
    for path in sorted((Path(directory) / "points").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):          # a record cut short: evaluated again
            continue
        records[record["key"]] = record
    return records


def _store(directory: Path, record: dict) -> None:
    path = directory / f"{record['key']}.json"
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)                             # whole or absent: a kill leaves no half record


def run_sweep(points: list[Point], directory: str | Path, *, scheduler: str | None = None, workers: int = 2,
              progress=None) -> list[dict]:
    """Every point's record, in order: from the cache, or evaluated on the cluster and cached as it comes.
    `progress(done, total)` after each."""
    directory = Path(directory)
    (directory / "points").mkdir(parents=True, exist_ok=True)
    cached = load_records(directory)
    todo = [point for point in points if point.key not in cached]
    done = len(points) - len(todo)
    if progress:
        progress(done, len(points))
    if todo:
        for record in _evaluated(todo, scheduler, workers):
            _store(directory / "points", record)
            cached[record["key"]] = record
            done += 1
            if progress:
                progress(done, len(points))
    return [cached[point.key] for point in points]


def _evaluated(points: list[Point], scheduler: str | None, workers: int):
    """The points' records as the cluster finishes them, a program's points at a time."""
    from distributed import as_completed

    from .cycles import program_config

    def program(point):
        try:
            return point.preset, json.dumps(program_config(point.accel()).to_dict(), sort_keys=True)
        except ValueError:                 # not a configuration: `evaluate` says why
            return point.preset, ""

    # a batch: the points of one program, which its worker compiles once
    batches = [list(group) for _, group in itertools.groupby(sorted(points, key=program), key=program)]
    batches.sort(key=len, reverse=True)
    with _client(scheduler, workers) as client:
        for future in as_completed(client.map(_evaluate_batch, batches, pure=False)):
            yield from future.result()


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int):
    """A `distributed` client: of the scheduler at `scheduler`, or of a local cluster of `workers` processes."""
    from distributed import Client, LocalCluster

    cluster = None if scheduler is not None else LocalCluster(n_workers=workers, threads_per_worker=1,
                                                              processes=True, dashboard_address=None)
    client = Client(scheduler if cluster is None else cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _evaluate_batch(points: list[Point]) -> list[dict]:
    return [evaluate(point) for point in points]


def pareto(records: list[dict], axes=("cycles", "multipliers", "memory_bits")) -> list[dict]:
    """The records (without `error`) that no other is at least as good as on every axis and better on one."""
    good = [record for record in records if "error" not in record]

    def beats(a, b):
        return all(a[k] <= b[k] for k in axes) and any(a[k] < b[k] for k in axes)

    return [r for r in good if not any(beats(other, r) for other in good)]


def verify(records: list[dict], quantized: dict[str, str], directory: str | Path, *, scheduler: str | None = None,
           workers: int = 2, head: bool = False, image_seed: int = 1, progress=None) -> list[dict]:
    """Each record's point simulated in Verilator against the model (`firmware.cycles.compare`: the backbone, and
    with `head` the task's head), with the quantized model of its preset (`quantized`: preset → .npz path) and
    the built-in image of `image_seed`, on the cluster; per point its key, `max_layer_error`, `total_error`,
    the RTL's and the model's cycles and the wall seconds. Cached as `directory/verified/KEY.json`."""
    return _per_point(records, Path(directory) / "verified", scheduler, workers, progress, _verify_point,
                      lambda record, _: (quantized[record["point"]["preset"]],), head=head, image_seed=image_seed)


def _per_point(records: list[dict], cache: Path, scheduler: str | None, workers: int, progress, function,
               arguments, **keywords) -> list[dict]:
    """`function(record, *arguments(record, cache), **keywords)` for each record the cache (`cache/KEY.json`)
    does not hold yet, on the cluster, each result stored as it comes; every record's result, in order."""
    from distributed import as_completed

    cache.mkdir(parents=True, exist_ok=True)
    done = {}
    for record in records:
        path = cache / f"{record['key']}.json"
        if path.exists():
            done[record["key"]] = json.loads(path.read_text())
    todo = [record for record in records if record["key"] not in done]
    if progress:
        progress(len(done), len(records))
    if todo:
        with _client(scheduler, workers) as client:
            futures = client.map(function, todo, *zip(*(arguments(record, cache) for record in todo)), **keywords,
                                 pure=False)
            for future in as_completed(futures):
                result = future.result()
                _store(cache, result)
                done[result["key"]] = result
                if progress:
                    progress(len(done), len(records))
    return [done[record["key"]] for record in records]


def _verify_point(record: dict, quantized_path: str, *, head: bool, image_seed: int) -> dict:
    import time

    from distributed import get_worker

    from golden.config import AcceleratorConfig
    from golden.images import natural_images
    from golden.quantize import quantize_image
    from golden.quantized import QuantizedModel
    from hw.sim.verilator import JOBS_VARIABLE

    from .cycles import compare

    start = time.perf_counter()
    os.environ[JOBS_VARIABLE] = str(get_worker().state.nthreads)     # its Verilator builds on its own cores
    quantized = QuantizedModel.load(quantized_path)
    image = quantize_image(quantized, natural_images(quantized.config, 1, image_seed)[0])
    accel = AcceleratorConfig.from_dict(record["accel"])
    result = compare(quantized, accel, image, record["point"]["task"], latency=record["point"]["latency"],
                     head=head)
    return {"key": record["key"], "max_layer_error": result["max_layer_error"], "total_error": result["total_error"],
            "cycles": result["cycles"], "model_cycles": result["model_cycles"], "head": head,
            "seconds": round(time.perf_counter() - start, 1)}


# The open flow of each target: what `synthesize` runs, and whether it places and routes
SYNTHESIS = {"zcu104": "Yosys synth_xilinx of the accelerator on the XCZU7EV (a synthesis estimate, no placement)",
             "ulx3s-85f": "the ULX3S-85F board top placed and routed (nextpnr-ecp5, seed 1)"}


def synthesize(records: list[dict], directory: str | Path, *, scheduler: str | None = None, workers: int = 2,
               progress=None) -> list[dict]:
    """Each record's point through its target's open flow (`SYNTHESIS`) on the cluster: per point its key,
    `flow`, `luts` (XCZU7EV: CLB LUTs; ULX3S: LUT4 slots placed), `ffs`, the multiplier and memory blocks
    synthesis found, `fmax_mhz` where the flow places and routes, and the wall seconds (or `error`: why the flow
    refused it). Cached as `directory/synth/KEY.json`; the flow's files in `directory/synth/KEY/`."""
    return _per_point(records, Path(directory) / "synth", scheduler, workers, progress, _synthesize_point,
                      lambda record, cache: (str(cache / record["key"]),))


def _synthesize_point(record: dict, files: str) -> dict:
    from golden.config import AcceleratorConfig, ConfigError, model_preset
    from hw.flow.fit import FitError
    from hw.flow.synth import SynthError

    point = record["point"]
    if point["target"] not in SYNTHESIS:
        raise ValueError(f"no open flow for target {point['target']!r}: {', '.join(SYNTHESIS)} have one")
    model, accel = model_preset(point["preset"]), AcceleratorConfig.from_dict(record["accel"])
    out = {"key": record["key"], "flow": SYNTHESIS[point["target"]]}
    try:
        return {**out, **_synthesized(model, accel, point["target"], Path(files))}
    except (ConfigError, FitError, SynthError) as error:    # refused, or a tool failed: said in the record
        return {**out, "error": str(error)}


def _synthesized(model, accel, target: str, files: Path) -> dict:
    if target == "zcu104":
        from hw.flow.xilinx import XILINX_DEVICES, estimate
        name = next(device.name for device in XILINX_DEVICES.values() if device.fit_target == "zcu104")
        result = estimate(model, accel, name, directory=files)
        return {"luts": result.used["CLB LUT"], "ffs": result.used["CLB FF"],
                "multipliers": result.used["DSP48E2"],
                "memory_blocks": {"RAMB36E2": result.used["block RAM (36 Kb)"], "URAM288": result.used["URAM288"]},
                "fmax_mhz": None, "seconds": result.seconds}
    from hw.flow.board import build_board
    result = build_board(model, accel, "ulx3s-85f", directory=files)
    used = {kind: value["used"] for kind, value in result.utilization.items()}
    return {"luts": used.get("TRELLIS_COMB", 0), "ffs": used.get("TRELLIS_FF", 0),
            "multipliers": used.get("MULT18X18D", 0), "memory_blocks": {"DP16KD": used.get("DP16KD", 0)},
            "fmax_mhz": min(result.fmax_mhz.values()), "seconds": result.seconds}
