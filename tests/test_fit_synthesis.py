"""The fit plan against Yosys: the accelerator of the `tiny` preset on a 4×4 array, synthesized for the ULX3S-85F
through its memory mapping (`blocks_netlist`), its block RAMs counted memory by memory against the plan's, and its
multipliers unit by unit (docs/architecture.md, section 9). About a minute."""

import re

from golden.config import accelerator_preset, model_preset
from hw.control.accelerator import Accelerator
from hw.flow.board import blocks_by_memory
from hw.flow.fit import fit_report, target
from hw.flow.synth import blocks_netlist

# The plan's memories, by the names of what the top level builds for them (a regular expression each).
BUILT_AS = {
    "weights": r"loader\.buffer\d", "scores": r"scores\.bank_\d+", "scratch": r"scratch\.bank_\d+",
    "params": r"params", "residual": r"residual\.bank_\d+",
    "accumulator": r"engine\.accumulator\.memory", "activation": r"activation\.bank_\d+",
    "router_weights": r"router\.weights", "row_buffer": r"(norm_path\.layernorm|softmax_path\.softmax)\.rows",
    "expert_queues": r"router\.queue",
}
# The plan's multipliers, by the names of the units that build them.
MULTIPLIERS_IN = {("systolic array", "GEMM output path"): r"engine\.", ("router",): r"router\.",
                  ("vector units",): r"(norm_path\.layernorm|softmax_path\.softmax)\."}
# Where synthesis may take fewer blocks than the plan, and why.
FEWER = {
    "params": "the top level reads the bias and the parameter word's fields of each column, not all 64 bits",
    "router_weights": "small enough for LUT RAM", "row_buffer": "small enough for LUT RAM",
    "expert_queues": "small enough for LUT RAM",
}
# The units' own block RAMs that the plan does not list: lookup tables and LayerNorm's parameters (NORMS).
UNIT_TABLES = r"engine\.gelu_path\.gelu\.table\d+|norm_path\.layernorm\.params\d+|softmax_path\.softmax\.table\d+" \
              r"|router\.top_k\..*"


def test_the_plan_counts_what_synthesis_builds():
    model, accel, ecp5 = model_preset("tiny"), accelerator_preset("4x4"), target("ulx3s-85f")
    cells, netlist = blocks_netlist(Accelerator.for_model(model, accel), "top")
    (kind,) = (block.name for block in ecp5.memory_blocks)
    built = blocks_by_memory(netlist, {kind})
    assert sum(built.values()) == cells[kind]
    planned = {memory.name: blocks for memory, _, blocks in fit_report(model, accel, ecp5).memories}
    assert set(planned) == set(BUILT_AS)
    synthesized = dict.fromkeys(planned, 0)
    for name, blocks in built.items():
        memory = next((plan for plan, pattern in BUILT_AS.items() if re.fullmatch(pattern, name)), None)
        assert memory is not None or re.fullmatch(UNIT_TABLES, name), f"{name}: {blocks} {kind} the plan does not list"
        if memory is not None:
            synthesized[memory] += blocks
    for memory, blocks in planned.items():
        assert synthesized[memory] == blocks or (memory in FEWER and synthesized[memory] < blocks), \
            f"{memory}: the plan counts {blocks} {kind}, synthesis builds {synthesized[memory]}"
    # the multipliers, unit by unit (Yosys names each after the signal it drives): as many as the plan counts, and
    # none anywhere else (the control's address arithmetic is adders)
    multipliers = [name for module in netlist["modules"].values() for name, cell in module.get("cells", {}).items()
                   if cell["type"] == ecp5.multiplier_name]
    assert len(multipliers) == cells[ecp5.multiplier_name]
    plan = fit_report(model, accel, ecp5).multipliers
    for units, pattern in MULTIPLIERS_IN.items():
        built = sum(bool(re.match(pattern, name)) for name in multipliers)
        planned = sum(plan.by_unit[unit] for unit in units)
        assert built == planned, \
            f"{' + '.join(units)}: the plan counts {planned} {ecp5.multiplier_name}, synthesis builds {built}"
    assert len(multipliers) == plan.total
