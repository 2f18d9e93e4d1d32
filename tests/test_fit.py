"""The fit check: block counting, what fits where, and errors that say what overflows by how much."""

import pytest

from golden.config import ConfigError, accelerator_preset, model_preset
from hw.flow.fit import TARGETS, FitError, MemoryBlock, check_fit, fit_report, onchip_memories, target

ECP5 = TARGETS["ulx3s-85f"]
TINY = model_preset("m3vit-tiny-cityscapes")


@pytest.mark.parametrize("width, depth, blocks", [
    (18, 1024, 1), (18, 1025, 2), (36, 512, 1), (36, 513, 2), (1, 16384, 1), (16, 2048, 2),
    (72, 100, 2), (8, 4096, 2), (128, 1548, 15),
])
def test_dp16kd_counting(width, depth, blocks):
    dp16kd, = ECP5.memory_blocks
    assert dp16kd.blocks_for(width, depth) == blocks


def test_targets_as_specified():
    assert ECP5.memory_blocks[0].count == 208 and ECP5.multiplier_count == 156
    assert ECP5.memory_blocks[0].bits == 18 * 1024
    zcu = TARGETS["zcu104"]
    assert zcu.multiplier_count == 1728
    uram, bram = zcu.memory_blocks
    assert uram.count * uram.bits == 96 * 288 * 1024  # 27 Mbit
    assert bram.count * bram.bits == 312 * 36 * 1024  # 11 Mbit


def test_multiplier_blocks_per_product():
    assert ECP5.multipliers_for(8, 8) == 1 and ECP5.multipliers_for(18, 18) == 1
    assert ECP5.multipliers_for(32, 16) == 2 and ECP5.multipliers_for(32, 32) == 4
    assert TARGETS["zcu104"].multipliers_for(27, 18) == 1 and TARGETS["zcu104"].multipliers_for(32, 16) == 2


def test_8x8_fits_ulx3s_with_both_models_and_not_with_the_knobs_of_4x4():
    report = check_fit(model_preset("tiny"), accelerator_preset("8x8"), ECP5)
    assert report.fits and report.multipliers.by_unit["systolic array"] == 64
    assert report.blocks_used["DP16KD"] <= 208
    # m3vit-tiny-cityscapes: 18 KiB slabs, query blocks of 16 rows, the routers two layers at a time
    assert check_fit(TINY, accelerator_preset("8x8"), ECP5).blocks_used["DP16KD"] == 181
    # with 36 KiB slabs, blocks of 32 rows and every router resident, the scores in a memory of their own as the
    # top level builds them, it does not
    roomy = accelerator_preset("8x8").replace(weight_buffer_bytes=36 * 1024, token_block=32,
                                              router_weights_resident=True)
    with pytest.raises(FitError, match="223 DP16KD blocks, 208 available: over by 15 \\(largest: scratch 52, "
                       "weights 36, residual 30\\)"):
        check_fit(TINY, roomy, ECP5)


def test_router_weights_two_layers_at_a_time_take_a_third_of_six_layers():
    model = model_preset("m3vit-tiny-cityscapes")
    accel = accelerator_preset("8x8").replace(router_weights_resident=True)
    plan = {name: blocks for memory, _, blocks in fit_report(model, accel, ECP5).memories for name in [memory.name]}
    two = {memory.name: memory for memory in onchip_memories(model, accel.replace(router_weights_resident=False))}
    # 36 KiB in 64-bit words (the 8×8 preset's router takes 8 weights a cycle): 2 × 9 blocks of 512 × 36 bits
    assert plan["router_weights"] == 18 and two["router_weights"].bytes == 2 * 2 * 16 * 192


def test_16x16_on_ulx3s_names_both_overflows():
    with pytest.raises(FitError) as error:
        check_fit(TINY, accelerator_preset("16x16"), ECP5)
    message = str(error.value)
    assert "does not fit ulx3s-85f" in message
    report = error.value.report
    over = report.multipliers.total - 156
    assert f"needs {report.multipliers.total} MULT18X18D, 156 available: over by {over}" in message
    assert "systolic array 256" in message
    used = report.blocks_used["DP16KD"]
    assert used > 208 and f"needs {used} DP16KD blocks, 208 available: over by {used - 208}" in message


def test_only_overflowing_resources_are_named():
    # Plenty of memory blocks, too few multipliers.
    small = target("ulx3s-85f")
    few_multipliers = type(small)(small.name, small.description, small.memory_blocks, small.multiplier_name, 100,
                                  small.multiplier_widths)
    with pytest.raises(FitError) as error:
        check_fit(model_preset("tiny"), accelerator_preset("8x8"), few_multipliers)
    assert "multipliers" in str(error.value) and "on-chip memory" not in str(error.value)


def test_residual_memory_size():
    # 129 tokens × 192 × 16 bits, and double-buffered weight slabs of the configured size.
    memories = {m.name: m for m in onchip_memories(TINY, accelerator_preset("16x16"))}
    assert memories["residual"].bytes == 129 * 192 * 2
    assert memories["weights"].count == 2 and memories["weights"].bytes == 2 * 72 * 1024


def test_small_models_fit_neither_target():
    small = model_preset("m3vit-small-nyud")
    # the 8×8 preset's 18 KiB slabs do not hold a slab of its heads' first convolution (K = 3,456, 27 KiB)
    with pytest.raises(ConfigError, match="weight_buffer_bytes = 18432: smaller than the narrowest slab of "
                       "m3vit-small-nyud: task head conv_0 has K = 3456 rows"):
        fit_report(small, accelerator_preset("8x8"), ECP5)
    accel = accelerator_preset("8x8").replace(weight_buffer_bytes=36 * 1024)
    assert not fit_report(small, accel, ECP5).fits
    # the memories of 1,201 tokens fill the XCZU7EV's URAM and overflow its block RAM, the largest there the
    # scratch memory (the MLP's hidden of every token) and the engine's accumulator (two banks of 2,048 rows)
    plan = fit_report(small, accel, TARGETS["zcu104"])
    assert not plan.fits and plan.blocks_used["URAM288"] >= 95 and plan.blocks_used["RAMB36E2"] > 312
    assert "largest: scratch 452, accumulator 58" in plan.problems[0]
    # nor at 16×16
    assert not fit_report(small, accelerator_preset("16x16"), TARGETS["zcu104"]).fits


def test_incompatible_accelerator_is_a_config_error_first():
    with pytest.raises(ConfigError, match="accumulator_width"):
        fit_report(TINY, accelerator_preset("8x8").replace(accumulator_width=20), ECP5)


def test_unknown_target():
    with pytest.raises(ConfigError, match="target = 'arty': unknown; choose one of ulx3s-85f, zcu104"):
        target("arty")


def test_memory_block_aspect_choice():
    block = MemoryBlock("toy", 1, ((2, 4), (4, 2)), 2)
    assert block.blocks_for(4, 2) == 1 and block.blocks_for(2, 4) == 1 and block.blocks_for(4, 4) == 2
    assert block.blocks_for(4, 2, two_ports=True) == 2       # the 4-wide shape has one write and one read port


@pytest.mark.parametrize("width, depth, blocks", [(36, 512, 2), (18, 1024, 1), (64, 2560, 12), (128, 170, 8)])
def test_two_ported_memories_take_true_dual_port_shapes(width, depth, blocks):
    dp16kd, = ECP5.memory_blocks
    assert dp16kd.blocks_for(width, depth, two_ports=True) == blocks
