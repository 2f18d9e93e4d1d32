"""ModelConfig / AcceleratorConfig validation: every rule raises a ConfigError naming parameter, value, rule."""

import pytest

from golden.config import (ACCELERATOR_PRESETS, MODEL_PRESETS, AcceleratorConfig, ConfigError, ModelConfig,
                           TaskConfig, accelerator_preset, accumulator_bits_needed, check_compatible,
                           model_preset)

TINY = model_preset("tiny")
ACCEL = accelerator_preset("4x4")

MODEL_ERRORS = [
    # (changes, parameter named, words of the rule)
    ({"embed_dim": 33}, "embed_dim", "divisible by num_heads"),
    ({"top_k": 5}, "top_k", "must not exceed num_experts"),
    ({"depth": 0}, "depth", "at least 1"),
    ({"num_heads": -2}, "num_heads", "at least 1"),
    ({"embed_dim": 32.0}, "embed_dim", "integer"),
    ({"num_experts": True}, "num_experts", "integer"),
    ({"mlp_hidden": 0}, "mlp_hidden", "at least 1"),
    ({"expert_hidden": 0}, "expert_hidden", "at least 1"),
    ({"patch_size": 0}, "patch_size", "at least 1"),
    ({"patch_size": 6, "image_size": (36, 36)}, "patch_size", "power of two"),
    ({"image_size": (32, 36)}, "image_size.width", "multiple of patch_size"),
    ({"image_size": (0, 32)}, "image_size.height", "at least 1"),
    ({"image_size": (32,)}, "image_size", "pair"),
    ({"gate": "softmax"}, "gate", "vmoe, noisy"),
    ({"moe_blocks": (1, 4)}, "moe_blocks", "[0, 4)"),
    ({"moe_blocks": (3, 1)}, "moe_blocks", "ascending"),
    ({"moe_blocks": (1, 1)}, "moe_blocks", "ascending"),
    ({"tasks": ()}, "tasks", "non-empty"),
    ({"tasks": (TaskConfig("a", 2), TaskConfig("a", 3))}, "tasks", "unique"),
    ({"tasks": ("semseg",)}, "tasks", "TaskConfig"),
    ({"head_channels": 0}, "head_channels", "at least 1"),
    ({"head_convs": 0}, "head_convs", "at least 1"),
    ({"in_channels": 0}, "in_channels", "at least 1"),
    ({"name": ""}, "name", "non-empty"),
]


@pytest.mark.parametrize("changes, parameter, rule", MODEL_ERRORS)
def test_model_config_rejects(changes, parameter, rule):
    with pytest.raises(ConfigError) as error:
        TINY.replace(**changes)
    assert error.value.parameter == parameter
    message = str(error.value)
    assert message.startswith(f"{parameter} = ") and rule in message


def test_task_config_rejects():
    with pytest.raises(ConfigError, match=r"classes = 0: must be at least 1"):
        TaskConfig("semseg", 0)
    with pytest.raises(ConfigError, match="identifier"):
        TaskConfig("two words", 3)


ACCEL_ERRORS = [
    ({"array_rows": 0}, "array_rows", "at least 1"),
    ({"array_cols": -1}, "array_cols", "at least 1"),
    ({"operand_width": 1}, "operand_width", "at least 2"),
    ({"operand_width": 20}, "operand_width", "at most 16"),
    ({"accumulator_width": 12}, "accumulator_width", "at least 16"),
    ({"weight_buffers": 1}, "weight_buffers", "ping/pong"),
    ({"weight_feed_bytes": 6}, "weight_feed_bytes", "whole number of array rows"),
    ({"weight_feed_bytes": 20}, "weight_feed_bytes", "whole number of array rows"),
    ({"dram_data_width": 96}, "dram_data_width", "64, 128 or 256"),
    ({"dram_max_burst": 300}, "dram_max_burst", "256 beats"),
    ({"token_block": 0}, "token_block", "at least 1"),
    ({"router_macs_per_cycle": 0}, "router_macs_per_cycle", "at least 1"),
    ({"residual_width": 4}, "residual_width", "at least 8"),
    ({"residual_width": 20}, "residual_width", "fix the residual stream at 16 bits"),
    ({"requant_multiplier_width": 24}, "requant_multiplier_width", "16-bit signed field"),
    ({"router_weights_resident": 1}, "router_weights_resident", "bool"),
    ({"drain_lanes": 0}, "drain_lanes", "at least 1"),
    ({"drain_lanes": 3}, "drain_lanes", "must divide array_cols"),
]


@pytest.mark.parametrize("changes, parameter, rule", ACCEL_ERRORS)
def test_accelerator_config_rejects(changes, parameter, rule):
    with pytest.raises(ConfigError) as error:
        ACCEL.replace(**changes)
    assert error.value.parameter == parameter and rule in str(error.value)


def test_unknown_presets():
    with pytest.raises(ConfigError, match="model preset = 'm3vit-huge': unknown; choose one of tiny"):
        model_preset("m3vit-huge")
    with pytest.raises(ConfigError, match="accelerator preset = '8by8'"):
        accelerator_preset("8by8")


def test_rxc_accelerator_from_name():
    accel = accelerator_preset("3x5")
    assert (accel.array_rows, accel.array_cols, accel.weight_feed_bytes, accel.drain_lanes) == (3, 5, 5, 5)


def test_accumulator_bits_needed_by_hand():
    # One product of two int8 values: the largest magnitude is (−128)² = 16384, which needs 16 signed bits.
    assert accumulator_bits_needed(1, 8) == 16
    # 2304 products: up to 37,748,736 < 2^26, so 27 signed bits.
    assert accumulator_bits_needed(2304, 8) == 27
    # 2048 products reach exactly 2^25, one more than int26's largest value; 2047 stay below it.
    assert accumulator_bits_needed(2048, 8) == 27
    assert accumulator_bits_needed(2047, 8) == 26


def test_accumulator_too_narrow_for_model():
    model = model_preset("m3vit-tiny-cityscapes")  # head conv_3: K = 9 × 256 = 2304 → 27 bits
    check_compatible(model, ACCELERATOR_PRESETS["16x16"].replace(accumulator_width=27))
    with pytest.raises(ConfigError) as error:
        check_compatible(model, ACCELERATOR_PRESETS["16x16"].replace(accumulator_width=26))
    assert error.value.parameter == "accumulator_width"
    assert "K = 2304" in str(error.value) and "needs 27 bits" in str(error.value)


def test_weight_buffer_smaller_than_one_slab():
    model = model_preset("m3vit-tiny-cityscapes")  # K = 2304 rows × 16 columns = 36,864 bytes
    check_compatible(model, ACCELERATOR_PRESETS["16x16"].replace(weight_buffer_bytes=36864))
    with pytest.raises(ConfigError, match=r"weight_buffer_bytes = 36863: smaller than the narrowest slab"):
        check_compatible(model, ACCELERATOR_PRESETS["16x16"].replace(weight_buffer_bytes=36863))


def test_burst_over_4k():
    with pytest.raises(ConfigError, match="crosses 4 KiB"):
        check_compatible(TINY, ACCEL.replace(dram_data_width=256, dram_max_burst=256))


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_model_preset_round_trips_through_dict(name):
    config = model_preset(name)
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", ACCELERATOR_PRESETS)
def test_accelerator_preset_round_trips_through_dict(name):
    config = accelerator_preset(name)
    assert AcceleratorConfig.from_dict(config.to_dict()) == config


def test_reference_dimensions():
    tiny = model_preset("m3vit-tiny-cityscapes")
    assert (tiny.num_tokens, tiny.head_dim, tiny.moe_blocks) == (129, 64, (1, 3, 5, 7, 9, 11))
    assert model_preset("m3vit-small-nyud").num_tokens == 1201
    assert model_preset("m3vit-small-pascal").num_tokens == 1025
    assert model_preset("m3vit-small-pascal").num_tasks == 5


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        TINY.embed_dim = 64


def test_task_index():
    assert TINY.task_index("depth") == 1 and TINY.task_index(0) == 0
    with pytest.raises(ConfigError, match=r"task = 2: must be a task index in \[0, 2\) \(tasks: 0: semseg, 1: depth\)"):
        TINY.task_index(2)
    with pytest.raises(ConfigError, match="no such task"):
        TINY.task_index("normals")
