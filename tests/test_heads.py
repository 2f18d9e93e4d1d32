"""The task heads on the accelerator: the whole inference, image to prediction, for every task bit for bit against
`golden.run` in Verilator (every feature map between the convolutions too, and under DRAM stalls), the bytes the
compiler states for the head against what the run moved, and the head's DRAM formats."""

import numpy as np
import pytest

from firmware.compiler import CompileError, backbone_program
from firmware.driver import Driver, DriverError
from firmware.heads import FeatureMap, head_output, head_traffic, map_bytes
from firmware.run import expected_read_bytes, expected_write_bytes, head_prediction, run_lines
from firmware.sim import accelerator_for, simulate
from golden import ops
from golden.config import accelerator_preset, model_preset
from golden.float_model import M3ViT, quantize_model
from golden.images import natural_images
from golden.model import run
from golden.quantize import quantize_image
from hw.control.isa import Space
from hw.control.memories import onchip_spaces
from hw.memory.layout import conv_weight

TINY, ACCEL = model_preset("tiny"), accelerator_preset("4x4")


@pytest.fixture(scope="module")
def quantized():
    return quantize_model(M3ViT.trained_like(TINY, seed=1), natural_images(TINY, 8, 11))


def _inference(quantized, image, **dram):
    program = backbone_program(quantized, ACCEL, image, heads=True)

    async def host(transport):
        driver = Driver(transport, TINY, ACCEL)
        await driver.connect()
        runs = []
        for task in range(TINY.num_tasks):
            backbone = await driver.run(program, task, timeout=1 << 30)
            runs.append((backbone, await driver.run_head(program, task, timeout=1 << 30)))
        return runs
    return program, simulate(accelerator_for(TINY, ACCEL), host, Driver(None, TINY, ACCEL).dram_map(program).size,
                             simulator="verilator", latency=10, **dram)


@pytest.mark.long(60)
def test_the_whole_inference_is_bit_exact_for_every_task(quantized):
    """Backbone, then each task's head: the input map of every convolution after the first (the ×2 upsampled
    output of the one before) and the prediction equal the golden model's, with DRAM stalls on every AXI4 channel
    (which back-pressure the store path and its upsampler). Without stalls, the whole inference of every task is
    `m3vit run`'s test (tests/test_run.py), and one task's on the simulated board (tests/test_board_link.py)."""
    image = quantize_image(quantized, natural_images(TINY, 1, 5)[0])
    program, runs = _inference(quantized, image, stall=0.3, seed=3)
    between, _ = TINY.head_upsamples()
    for task, (backbone, head) in enumerate(runs):
        golden = run(quantized, image, task, intermediates=True)
        assert backbone.ok and head.ok, (backbone.cause, head.cause, head.error_pc)
        layers = TINY.head_layers(task)
        for index in range(1, len(layers) - 1):
            before = golden.tensors[f"heads.{task}.{layers[index - 1].name}"]
            expected = ops.upsample2x(before, 8) if index - 1 < between else before
            assert head.outputs[f"head.{task}.input.{layers[index].name}"] == map_bytes(expected, ACCEL.array_rows, 8)
        prediction = head_prediction(head, TINY, ACCEL, task)
        assert prediction.shape == golden.output.shape and np.array_equal(prediction, golden.output)
        # the compiler's stated bytes, stalls or not: reads (+ the fetch past HALT), writes exactly
        read, written = head.counters["DRAM_READ_BYTES"], head.counters["DRAM_WRITE_BYTES"]
        stated = expected_read_bytes(program, TINY, run=task)
        assert stated <= read <= stated + 16 * 12
        assert written == expected_write_bytes(program, onchip_spaces(TINY, ACCEL), run=task)
        # and layer by layer, for the loop order, they add up to what the program moves
        layers = head_traffic(TINY, ACCEL, task, onchip_spaces(TINY, ACCEL)[Space.NORMS].bytes // 2)
        assert [layer["layer"] for layer in layers] == ["norm"] + [conv.name for conv in TINY.head_layers(task)]
        instructions = 16 * len(run_lines(program, task))
        assert sum(layer["weights"] + layer["input"] for layer in layers) + instructions == stated
        assert sum(layer["output"] for layer in layers) == written


def test_a_head_run_needs_a_head():
    with pytest.raises(DriverError, match="no head for task 5"):
        import asyncio
        program = type("P", (), {"heads": {0: 8}})()
        asyncio.run(Driver(None, TINY, ACCEL).run_head(program, 5))


def test_feature_map_bytes_round_trip():
    rng = np.random.default_rng(0)
    values = rng.integers(-32768, 32768, (5, 3, 4))
    data = map_bytes(values, 4, 16)
    assert len(data) == FeatureMap(0, 3, 4, 2, 8).bytes
    assert np.array_equal(head_output(data, 5, 3, 4, 4), values)
    small = rng.integers(-128, 128, (4, 2, 3))
    words = np.frombuffer(map_bytes(small, 4, 8), np.int8).reshape(2, 1, 3, 4)      # [H, tiles, W, lanes]
    assert np.array_equal(words[1, 0, 2], small[:, 1, 2])


def test_conv_weight_is_tap_major_with_channels_padded():
    rng = np.random.default_rng(1)
    weight = rng.integers(-128, 128, (3 * 9, 2))
    tapped = conv_weight(weight, 4)
    assert tapped.shape == (9 * 4, 2)
    for channel in range(3):
        for tap in range(9):
            assert np.array_equal(tapped[tap * 4 + channel], weight[channel * 9 + tap])
    assert not tapped[3::4].any()            # the padding channel of every tap
    with pytest.raises(ValueError, match="C·9 rows"):
        conv_weight(weight[:-1], 4)


def test_a_head_the_program_cannot_run_is_refused_by_name():
    """Two 3×3 convolutions and a patch of 8: one ×2 between them, two after the classifier, which the head's
    program does not do (the classifier's output would go through DRAM at int16)."""
    model = TINY.replace(head_convs=2)
    quantized = quantize_model(M3ViT.trained_like(model, seed=1), natural_images(model, 2, 11))
    image = quantize_image(quantized, natural_images(model, 1, 5)[0])
    with pytest.raises(CompileError, match="2 ×2 stages after the classifier"):
        backbone_program(quantized, ACCEL, image, heads=True)
