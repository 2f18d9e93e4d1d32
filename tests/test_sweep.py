"""`m3vit sweep` (`firmware.sweep`): the grid, each point's record from the analytic model and the fit plan, the
cache that lets an interrupted sweep resume without computing a point twice, the Pareto front, and the CLI."""

import json

import pytest

from firmware.cycles import estimate
from firmware.sweep import AXES, Point, evaluate, grid, load_records, pareto, run_sweep, select
from golden.config import accelerator_preset, config_hash, model_preset
from m3vit.cli import main

TINY_AXES = {"array": (4, 8), "weight_buffer_bytes": (16 * 1024,), "dram_data_width": (64, 128),
             "vector_lanes": (1,), "requant_lanes": (2,)}


def test_grid_and_select():
    points = grid(["tiny", "m3vit-tiny-cityscapes"])
    assert len(points) == 2 * len(list(__import__("itertools").product(*AXES.values())))
    assert len({point.key for point in points}) == len(points)
    chosen = select(points, 10)
    assert len(chosen) == 10 and chosen[0] == points[0] and len(set(chosen)) == 10
    assert select(points[:3], 10) == points[:3]


def test_a_point_is_the_models_estimate_and_the_fit_plan():
    point = Point("tiny", 4, 16 * 1024, 64, 1, 2)
    record = evaluate(point)
    accel = point.accel()
    assert record["cycles"] == estimate(model_preset("tiny"), accel, 0)["cycles"]
    assert set(record["runs"]) == {"backbone", "0"}
    assert record["multipliers"] > 16 and record["memory_bits"] > 0 and record["fits"]
    assert record["point"]["array"] == 4 and record["accel"]["array_rows"] == 4


def test_a_point_that_cannot_be_built_says_why():
    record = evaluate(Point("m3vit-tiny-cityscapes", 64, 36 * 1024, 64, 1, 2))
    assert "cycles" not in record and "weight_buffer_bytes" in record["error"]


def test_pareto_front():
    records = [{"key": "a", "cycles": 10, "multipliers": 5, "memory_bits": 1},
               {"key": "b", "cycles": 8, "multipliers": 9, "memory_bits": 1},
               {"key": "c", "cycles": 12, "multipliers": 6, "memory_bits": 2},      # beaten by a
               {"key": "d", "cycles": 10, "multipliers": 5, "memory_bits": 1},      # a's equal: both stay
               {"key": "e", "error": "no"}]
    assert [r["key"] for r in pareto(records)] == ["a", "b", "d"]


@pytest.mark.long(20)
def test_sweep_resumes_from_its_cache(tmp_path, monkeypatch):
    """The cluster is `test_sweep_command`'s; here the points are evaluated in the test's process."""
    import firmware.sweep as sweep
    evaluated = []

    def recording(batch):
        evaluated.extend(point.key for point in batch)
        return [evaluate(point) for point in batch]

    monkeypatch.setattr(sweep, "_evaluated", lambda todo, scheduler, workers: recording(todo))
    points = grid(["tiny"], TINY_AXES)
    first = run_sweep(points[:2], tmp_path)
    assert [r["key"] for r in first] == [p.key for p in points[:2]]
    # killed halfway: two points done, one record cut short; the rest are computed, the done ones are not
    (tmp_path / "points" / f"{points[2].key}.json").write_text('{"key": "')
    evaluated.clear()
    seen = []
    records = run_sweep(points, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert evaluated == [p.key for p in points[2:]]
    assert [r["key"] for r in records] == [p.key for p in points]
    assert seen[0] == (2, 4) and seen[-1] == (4, 4)
    assert set(load_records(tmp_path)) == {p.key for p in points}
    evaluated.clear()
    assert run_sweep(points, tmp_path) == records and evaluated == []
    assert first == records[:2]


@pytest.mark.long(40)
def test_sweep_command(tmp_path, capsys):
    assert main(["sweep", "--preset", "tiny", "--arrays", "4,8", "--buffers", "16,32", "--points", "6", "--workers",
                 "1", "-o", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["points"] == 6 and result["pareto"]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert len(saved["records"]) == 6 and (tmp_path / "pareto.png").stat().st_size > 10_000
    # --synth on the front's points that fit, here from results already in its cache (the flow takes minutes)
    records = {record["key"]: record for record in saved["records"]}
    fitting = [key for key in result["pareto"] if records[key]["fits"]]
    assert fitting
    (tmp_path / "synth").mkdir()
    for number, key in enumerate(fitting):
        (tmp_path / "synth" / f"{key}.json").write_text(json.dumps(
            {"key": key, "flow": "cached", "luts": 1000 * (number + 1), "ffs": 7, "multipliers": 3,
             "memory_blocks": {}, "fmax_mhz": None, "seconds": 1.0}))
    assert main(["sweep", "--preset", "tiny", "--arrays", "4,8", "--buffers", "16,32", "--points", "6", "--workers",
                 "1", "-o", str(tmp_path), "--synth", "9"]) == 0
    out = capsys.readouterr().out
    assert out.count("synthesis ") == len(fitting) and "1,000 LUTs, 7 FFs, 3 multipliers" in out
    assert [r["key"] for r in json.loads((tmp_path / "sweep.json").read_text())["synthesized"]] == fitting
    assert main(["sweep", "--preset", "nope", "-o", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


def test_configurations_that_differ_in_lanes_alone_time_the_same_instructions():
    """`program_config` sets the vector and GELU lanes aside: the model times a program compiled for other lanes
    exactly as the configuration's own."""
    import numpy as np
    from firmware.compiler import backbone_program
    from firmware.cycles import CycleModel, issued, program_config, uniform_counts
    from golden.config import accelerator_preset
    from golden.quantized import QuantizedModel
    from hw.control.isa import InstructionSet
    model = model_preset("tiny")
    blank, image = QuantizedModel.blank(model), np.zeros((model.in_channels, *model.image_size), np.int8)
    shared = program_config(accelerator_preset("4x4"))
    base = accelerator_preset("4x4")
    for accel in (base.replace(vector_lanes=4), base.replace(requant_lanes=4)):
        assert program_config(accel) == shared
        for run in ("backbone", 1):
            own = issued(backbone_program(blank, accel, image, heads=True), InstructionSet(model, accel), run,
                         uniform_counts(model))
            other = issued(backbone_program(blank, shared, image, heads=True), InstructionSet(model, shared), run,
                           uniform_counts(model))
            model_of = CycleModel(model, accel)
            assert model_of.run(own).issue_cycles == model_of.run(other).issue_cycles


@pytest.fixture
def threaded_cluster(monkeypatch):
    """The sweep's cluster as threads of the test's process (so that its monkeypatches hold on the workers)."""
    import contextlib

    import firmware.sweep as sweep
    from distributed import Client, LocalCluster

    @contextlib.contextmanager
    def client(scheduler, workers):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
                Client(cluster) as connected:
            yield connected
    monkeypatch.setattr(sweep, "_client", client)


def test_synthesis_of_pareto_points_through_the_targets_flow(tmp_path, monkeypatch, threaded_cluster):
    """zcu104: the XCZU7EV estimate (of a registered multiplier in place of the accelerator: seconds), cached;
    ulx3s-85f: a point that does not fit is refused before any tool, and the record says why."""
    from amaranth import signed

    from firmware.sweep import synthesize
    from hw.common.multiplier import Multiplier
    from hw.flow import xilinx
    built = []

    def multiplier(model, accel):
        built.append(accel.name)
        return Multiplier(signed(18), signed(18))
    monkeypatch.setattr(xilinx, "_accelerator", multiplier)
    small = evaluate(Point("tiny", 4, 16 * 1024, 64, 1, 2))
    large = evaluate(Point("m3vit-tiny-cityscapes", 16, 144 * 1024, 128, 1, 2, target="ulx3s-85f"))
    results = synthesize([small, large], tmp_path)
    assert results[0]["key"] == small["key"] and results[0]["multipliers"] == 1 and results[0]["luts"] < 10
    assert results[0]["fmax_mhz"] is None and "synth_xilinx" in results[0]["flow"]
    assert "does not fit ulx3s-85f" in results[1]["error"] and "placed and routed" in results[1]["flow"]
    assert (tmp_path / "synth" / small["key"] / "yosys.log").exists() and built == [small["accel"]["name"]]
    assert synthesize([small, large], tmp_path) == results and len(built) == 1     # from the cache


@pytest.mark.long(60)
def test_verify_simulates_a_point_against_the_model(tmp_path, monkeypatch, threaded_cluster):
    """A point in Verilator on the image's own routing, the model on the same instructions; cached after."""
    import firmware.cycles as cycles
    from firmware.sim import accelerator_for
    from firmware.sweep import verify
    from golden.float_model import M3ViT, quantize_model
    from golden.images import natural_images
    from hw.sim.verilator import JOBS_VARIABLE
    monkeypatch.setenv(JOBS_VARIABLE, "2")                        # the worker's setting is undone after
    model = model_preset("tiny")
    quantize_model(M3ViT.trained_like(model, seed=2), natural_images(model, 4, 1)).save(tmp_path / "q.npz")
    point = Point("tiny", 4, 16 * 1024, 64, 1, 2)
    # the 4×4 preset's hardware under another name: the worker's other tests converted it, and built its Verilator
    # model
    assert config_hash(model, point.accel()) == config_hash(model, accelerator_preset("4x4"))
    assert accelerator_for(model, point.accel()) is accelerator_for(model, accelerator_preset("4x4"))
    record = evaluate(point)
    (result,) = verify([record], {"tiny": str(tmp_path / "q.npz")}, tmp_path)
    assert result["key"] == record["key"] and result["head"] is False
    assert result["total_error"] == pytest.approx((result["model_cycles"] - result["cycles"]) / result["cycles"])
    assert abs(result["total_error"]) < 0.02 and result["max_layer_error"] < 0.02
    monkeypatch.setattr(cycles, "compare", None)                  # a second call reads the cache alone
    assert verify([record], {"tiny": str(tmp_path / "q.npz")}, tmp_path) == [result]
