"""`m3vit report`: one configuration's performance, as Markdown, JSON and PNG plots.

`performance_report(quantized, accel, image, tasks, directory)` runs each task's inference (backbone, then its head)
in Verilator with the issue trace (`firmware.cycles.measured`) and the analytic model on the same instructions,
and writes `report.md`, `report.json` and the plots:
- per layer: the RTL's cycles, the model's, and the model's split of them (the engine busy, or idle while the
  vector units, the router or the DRAM reads are busy, or none: `Timeline.breakdown`, as the RTL's EXPOSED_
  counters split a run) as stacked bars (`layers_<task>.png`), and the array's utilization (`utilization.png`);
- DRAM bytes read per inference: this design's counted in simulation, against two orders computed from the
  program (`dram_orders`): token by token and a dense multi-task model of the same size (`dram.png`);
- the routing: tokens per expert per MoE layer and task (`routing.png`);
- the fit plan on the target FPGA;
- latency and frames per second at a stated clock, beside the peers' published figures.
Every figure says where it comes from: simulated (Verilator, cycle-exact), modelled (`firmware.cycles`),
computed (from the program and the configuration) or quoted (a paper).
"""

from __future__ import annotations

import json
from pathlib import Path

from golden.config import AcceleratorConfig
from golden.costs import expert_weight_bytes
from golden.quantized import QuantizedModel
from hw.control.isa import Opcode

from .cycles import CycleModel, layer_bounds, measured
from .plots import bars, stacked_bars
from .run import expected_read_bytes

__all__ = ["performance_report", "dram_orders", "PEERS"]

# Published figures of the peers (../shared/reference/m3vit.md): what each paper states, nothing derived.
PEERS = [
    {"design": "Edge-MoE (ICCAD 2023)", "platform": "ZCU102 (XCZU9EG), 300 MHz, Vitis HLS",
     "figure": "2.24× the energy efficiency of a GPU, 4.90× a CPU; no frame rate stated in the reference",
     "source": "quoted"},
    {"design": "UbiMoE (ISCAS 2025)", "platform": "ZCU102", "figure": "1.34× the throughput of Edge-MoE",
     "source": "quoted"},
    {"design": "CoQMoE (2025)", "platform": "Alveo U280", "figure": "about 155 frames/s", "source": "quoted"},
    {"design": "M³ViT (NeurIPS 2022)", "platform": "ZCU104", "figure": "up to 9.23× the energy efficiency of a "
     "comparable FPGA baseline, 2.4× less memory", "source": "quoted"},
]


def _gemm_macs(issue, accel: AcceleratorConfig) -> int:
    """The array's multiply-accumulates of a GEMM issue: M × K × N with K its true length and N its tiles' width."""
    r, c = accel.array_rows, accel.array_cols
    k = (issue["k_tiles"] - 1) * r + (issue["k_last"] or r)
    return issue.m * k * issue["n_tiles"] * c


def dram_orders(program, model, accel: AcceleratorConfig, counts: dict[int, list[int]], task: int,
                measured_bytes: int) -> dict:
    """Bytes read per inference of `task` in three orders. This design: `measured_bytes` (counted in
    simulation). Token by token: the same, but each MoE layer's experts fetched per token (T·k times the bytes of
    one expert's LOADs) unless every expert of the layer fits the slab buffers at once (then each active one
    once). Dense multi-task: the same backbone with a dense MLP of the same parameters in each MoE block (every
    expert's weights read once) and every task's head run."""
    lines = program.text.splitlines()
    per_expert = sum(int(line.split("bytes=")[1].split()[0]) for line in lines[program.entry:program.heads.get(0,
                     len(lines))] if line.startswith("LOAD") and "per_expert=1" in line) // max(1, len(counts))
    active = {layer: sum(1 for count in tokens if count) for layer, tokens in counts.items()}
    this_experts = sum(active.values()) * per_expert
    onchip = accel.weight_buffers * accel.weight_buffer_bytes
    fits = model.num_experts * expert_weight_bytes(model) <= onchip
    token_experts = sum((active[layer] if fits else model.num_tokens * model.top_k) * per_expert for layer in counts)
    dense_experts = len(counts) * model.num_experts * per_expert
    heads = {t: expected_read_bytes(program, model, run=t) for t in program.heads}
    other_heads = sum(bytes_ for t, bytes_ in heads.items() if t != task)
    return {
        "this_design": measured_bytes,
        "token_by_token": measured_bytes - this_experts + token_experts,
        "dense_multitask": measured_bytes - this_experts + dense_experts + other_heads,
        "per_expert_bytes": per_expert, "active_experts": active, "experts_fit_on_chip": fits,
        "formula": {
            "this_design": "DRAM_READ_BYTES of the backbone's and the head's runs (simulated)",
            "token_by_token": "this design − Σ_layers active experts × expert bytes + Σ_layers T·k × expert bytes "
                              "(or active experts × expert bytes when all E experts fit the slab buffers)",
            "dense_multitask": "this design − Σ_layers active experts × expert bytes + Σ_layers E × expert bytes "
                               "+ the other tasks' heads' reads (each head's LOADs, as the program states them)",
        },
    }


def performance_report(quantized: QuantizedModel, accel: AcceleratorConfig, image, tasks: list[int],
                       directory: str | Path, *, clock_mhz: float = 150.0, target_name: str = "zcu104",
                       latency: int = 10, simulator: str = "verilator") -> dict:
    from hw.flow.fit import fit_report, target

    model = quantized.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cycle_model = CycleModel(model, accel, latency=latency)
    macs_per_cycle = accel.array_rows * accel.array_cols
    report = {"preset": model.name, "accel": accel.to_dict(), "clock_mhz": clock_mhz, "latency": latency,
              "simulator": simulator, "tasks": [], "peers": PEERS}
    utilization = {}
    for task in tasks:
        rtl = measured(quantized, accel, image, task, simulator=simulator, latency=latency)
        program = rtl["program"]
        layers, counters = [], {}
        for run in ("backbone", task):
            traced = rtl[run]
            timeline = cycle_model.run(traced["sequence"])
            modelled = layer_bounds(program, traced["sequence"], timeline.issue_cycles, timeline.cycles)
            measured_bounds = layer_bounds(program, traced["sequence"], traced["issue_cycles"], traced["cycles"])
            names = dict(program.layers)
            macs = dict.fromkeys(measured_bounds, 0)
            current = None
            for issue in traced["sequence"]:
                current = names.get(issue.index, current)
                if issue.opcode is Opcode.GEMM and current in macs:
                    macs[current] += _gemm_macs(issue, accel)
            for name, (start, end) in measured_bounds.items():
                cycles = end - start
                layers.append({"layer": name, "run": "backbone" if run == "backbone" else "head", "cycles": cycles,
                               "model_cycles": modelled[name][1] - modelled[name][0],
                               "model_breakdown": timeline.breakdown(*modelled[name]),
                               "array_macs": macs[name], "utilization": macs[name] / macs_per_cycle / cycles})
            counters[run if run == "backbone" else "head"] = traced["counters"]
        cycles = rtl["backbone"]["cycles"] + rtl[task]["cycles"]
        read = counters["backbone"]["DRAM_READ_BYTES"] + counters["head"]["DRAM_READ_BYTES"]
        counts = rtl["backbone"]["counts"]
        entry = {
            "task": task, "task_name": model.tasks[task].name, "cycles": cycles, "source": "simulated",
            "model_cycles": sum(layer["model_cycles"] for layer in layers),
            "latency_ms": cycles / clock_mhz / 1e3, "frames_per_s": clock_mhz * 1e6 / cycles,
            "layers": layers, "counters": counters,
            "dram_read_bytes": dram_orders(program, model, accel, counts, task, read),
            "tokens_per_expert": {str(block): counts[layer] for layer, block in enumerate(model.moe_blocks)},
        }
        report["tasks"].append(entry)
        utilization[entry["task_name"]] = [layer["utilization"] for layer in layers]
        stacked_bars([layer["layer"].replace(f"heads.{task}.", "head.") for layer in layers],
                     {label: [layer["model_breakdown"][unit] for layer in layers]
                      for unit, label in (("gemm", "GEMM engine busy"), ("vector", "idle: vector units"),
                                          ("router", "idle: router"), ("loader", "idle: DRAM reads"),
                                          ("other", "idle: fetch, issue, stores"))},
                     directory / f"layers_{entry['task_name']}.png",
                     f"{model.name} on {accel.name}, {entry['task_name']}: cycles per layer\n(the model's split; "
                     f"the RTL's total {cycles:,})", "cycles")
    fit = fit_report(model, accel, target(target_name))
    report["resources"] = fit.to_dict()
    first = report["tasks"][0]
    bars([layer["layer"] for layer in first["layers"]], utilization, directory / "utilization.png",
         "array utilization per layer (array MACs / R·C / RTL cycles)", "utilization")
    bars([t["task_name"] for t in report["tasks"]],
         {order: [t["dram_read_bytes"][order] / 1e6 for t in report["tasks"]]
          for order in ("this_design", "token_by_token", "dense_multitask")},
         directory / "dram.png", "DRAM MB read per inference", "MB", log=True)
    experts = list(range(model.num_experts))
    routing = {f"{t['task_name']} block {block}": tokens for t in report["tasks"]
               for block, tokens in t["tokens_per_expert"].items()}
    bars([f"e{e}" for e in experts], routing, directory / "routing.png", "tokens per expert (simulated image)",
         "tokens")
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(_markdown(report, model, accel, fit, target_name))
    return report


def _markdown(report: dict, model, accel: AcceleratorConfig, fit, target_name: str) -> str:
    lines = [f"# {model.name} on the {accel.name} accelerator", "",
             f"Sources: **simulated** (Verilator, the RTL cycle for cycle), **modelled** (`firmware.cycles`, the "
             f"analytic model on the same instructions), **computed** (from the program and the configuration), "
             f"**quoted** (a paper). DRAM latency {report['latency']} cycles; clock {report['clock_mhz']:g} MHz "
             f"(stated, not measured).", "", "## Latency", "",
             "| design | task | cycles | latency | frames/s | source |", "|---|---|---:|---:|---:|---|"]
    for task in report["tasks"]:
        lines.append(f"| this design, {accel.name} | {task['task_name']} | {task['cycles']:,} | "
                     f"{task['latency_ms']:.2f} ms | {task['frames_per_s']:.1f} | simulated |")
        lines.append(f"| this design, {accel.name} | {task['task_name']} | {task['model_cycles']:,} | "
                     f"{task['model_cycles'] / report['clock_mhz'] / 1e3:.2f} ms | "
                     f"{report['clock_mhz'] * 1e6 / task['model_cycles']:.1f} | modelled |")
    for peer in report["peers"]:
        lines.append(f"| {peer['design']}, {peer['platform']} | — | — | — | {peer['figure']} | {peer['source']} |")
    for task in report["tasks"]:
        name = task["task_name"]
        lines += ["", f"## {name}: cycles per layer", "", f"![layers](layers_{name}.png)", "",
                  "| layer | RTL cycles (simulated) | model | error | utilization | engine busy | idle: vector | "
                  "router | DRAM reads | other |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for layer in task["layers"]:
            split = layer["model_breakdown"]
            lines.append(f"| {layer['layer']} | {layer['cycles']:,} | {layer['model_cycles']:,} | "
                         f"{(layer['model_cycles'] - layer['cycles']) / layer['cycles']:+.2%} | "
                         f"{layer['utilization']:.3f} | {split['gemm']:,} | {split['vector']:,} | "
                         f"{split['router']:,} | {split['loader']:,} | {split['other']:,} |")
        orders = task["dram_read_bytes"]
        lines += ["", f"## {name}: DRAM bytes read per inference", "", "| order | bytes | source | how |",
                  "|---|---:|---|---|"]
        for order, source in (("this_design", "simulated"), ("token_by_token", "computed"),
                              ("dense_multitask", "computed")):
            lines.append(f"| {order.replace('_', ' ')} | {orders[order]:,} | {source} | {orders['formula'][order]} |")
        lines += ["", f"One expert's LOADs: {orders['per_expert_bytes']:,} bytes; active experts per MoE layer: "
                  f"{orders['active_experts']}; all experts of a layer fit the slab buffers: "
                  f"{orders['experts_fit_on_chip']}."]
    lines += ["", "![utilization](utilization.png)", "", "![DRAM bytes](dram.png)", "", "## Routing (simulated image)",
              "", "![routing](routing.png)", "", "| task | MoE block | tokens per expert |", "|---|---|---|"]
    for task in report["tasks"]:
        for block, tokens in task["tokens_per_expert"].items():
            lines.append(f"| {task['task_name']} | {block} | {tokens} |")
    resources = report["resources"]
    lines += ["", f"## Resources on {target_name} (fit plan, before synthesis)", "", "| resource | used | available |",
              "|---|---:|---:|"]
    for kind, used in resources["blocks_used"].items():
        lines.append(f"| {kind} | {used:,} | {resources['blocks_available'][kind]:,} |")
    lines.append(f"| {resources['multiplier_name']} | {resources['multipliers_total']:,} | "
                 f"{resources['multipliers_available']:,} |")
    lines += ["", f"Fits: {resources['fits']}." + (" " + "; ".join(resources["problems"]) if resources["problems"]
                                                    else ""), ""]
    return "\n".join(lines)
