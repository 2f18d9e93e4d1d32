"""The DRAM weight layout: slabs are the GEMM engine's W image byte for byte, headers hold the parameters,
alignment and slab sizes follow the configuration."""

import numpy as np
import pytest

from golden.config import AcceleratorConfig, ConfigError, accelerator_preset, model_preset
from hw.compute.gemm import pack_w
from hw.memory.layout import HEADER_COLUMN_BYTES, dense_layouts, expert_layer_layout, matrix_layout


def _accel(name, **changes):
    return accelerator_preset(name).replace(**changes)


@pytest.mark.parametrize("accel", [_accel("4x4"), _accel("8x8"), _accel("16x16"), _accel("3x5"),
                                   _accel("4x4", weight_feed_bytes=8), _accel("4x4", weight_buffer_bytes=256),
                                   _accel("16x16", dram_data_width=256, weight_feed_bytes=64)],
                         ids=lambda a: f"{a.name}-feed{a.weight_feed_bytes}-buf{a.weight_buffer_bytes}")
def test_slabs_are_the_engines_w_image(accel):
    rng = np.random.default_rng(accel.array_rows * 100 + accel.weight_feed_bytes)
    for k, n in [(1, 1), (7, 13), (40, 33), (64, 64)]:
        w = rng.integers(-128, 128, (k, n))
        w[0, 0], w[-1, -1] = -128, 127
        bias = rng.integers(-2**31, 2**31, n)
        multiplier = rng.integers(1 << 14, 1 << 15, n)
        shift = rng.integers(0, 63, n)
        fraction_bits = rng.integers(5, 16, n)
        layout = matrix_layout(k, n, accel)
        image = layout.pack(w, bias, multiplier, shift, fraction_bits)
        load_rows = accel.weight_feed_bytes // accel.array_cols
        words = pack_w(w, accel.array_rows, accel.array_cols, load_rows)   # [words, load_rows, C]
        per_tile = layout.k_tiles * layout.beats
        bus = accel.dram_bytes_per_beat
        assert sum(slab.tiles for slab in layout.slabs) == layout.n_tiles
        for slab in layout.slabs:
            assert slab.offset % bus == 0 and slab.length % bus == 0 and slab.length <= accel.weight_buffer_bytes
            body = image[slab.offset:slab.offset + slab.length]
            count = slab.tiles * per_tile
            stored = body[:count * layout.word_stride].reshape(count, layout.word_stride)
            expected = words[slab.first_tile * per_tile:(slab.first_tile + slab.tiles) * per_tile]
            assert np.array_equal(stored[:, :load_rows * accel.array_cols].view(np.int8).reshape(expected.shape),
                                  expected)
            assert not stored[:, load_rows * accel.array_cols:].any() and not body[count * layout.word_stride:].any()
        header = image[:layout.n_tiles * accel.array_cols * HEADER_COLUMN_BYTES].view("<u4").reshape(-1, 2)
        assert np.array_equal(header[:n, 0].view(np.int32), bias)
        assert np.array_equal(header[:n, 1] & 0xFFFF, multiplier)
        assert np.array_equal((header[:n, 1] >> 16) & 0x3F, shift)
        assert np.array_equal(header[:n, 1] >> 22, fraction_bits)
        assert np.all(header[n:, 1] == (1 << 14) | (14 << 16) | (15 << 22))
        assert layout.header_bytes % bus == 0


def test_expert_matrices_split_into_slabs_of_whole_n_tiles():
    tiny, small = model_preset("m3vit-tiny-cityscapes"), model_preset("m3vit-small-pascal")
    accel = accelerator_preset("16x16")
    tiny_layer = expert_layer_layout(tiny, accel)
    assert len(tiny_layer.fc1.slabs) == 1 and tiny_layer.fc1.slab_bytes == 192 * 384    # 72 KiB
    small_layer = expert_layer_layout(small, accel)
    assert small_layer.fc1.slab_bytes == 384 * 768 and len(small_layer.fc1.slabs) == 4    # 288 KiB in 72 KiB
    loads = tiny_layer.loads([2, 5], base=4096)
    assert [load.address for load in loads] == [
        4096 + e * tiny_layer.expert_bytes + offset + matrix.slabs[0].offset
        for e in (2, 5) for matrix, offset in ((tiny_layer.fc1, 0), (tiny_layer.fc2, tiny_layer.fc2_offset))]
    with pytest.raises(ValueError, match="must be ascending, distinct"):
        tiny_layer.loads([5, 2])
    assert set(dense_layouts(tiny, accel)) == {"patch_embed", "qkv", "proj", "fc1", "fc2"}


def test_a_buffer_smaller_than_one_n_tile_is_a_config_error():
    accel = AcceleratorConfig(name="x", array_rows=4, array_cols=4, weight_buffer_bytes=64)
    with pytest.raises(ConfigError, match="smaller than one N tile of expert fc1"):
        matrix_layout(100, 8, accel, "expert fc1")


def test_pack_rejects_wrong_shapes_and_values():
    layout = matrix_layout(8, 8, accelerator_preset("4x4"))
    ones = np.ones(8, np.int64)
    with pytest.raises(ValueError, match="weights of shape"):
        layout.pack(np.zeros((8, 9)), ones, ones, ones)
    with pytest.raises(ValueError, match="outside int8"):
        layout.pack(np.full((8, 8), 128), ones, ones, ones)
    good = np.zeros((8, 8), int), np.zeros(8, int), np.full(8, 1 << 14), np.full(8, 14)
    for field, value, words in (("multiplier", 1 << 15, "multiplier = 32768 .column 3.: the header field holds"),
                                ("multiplier", (1 << 14) - 1, "multiplier = 16383"), ("shift", 63, "shift = 63"),
                                ("shift", -1, "shift = -1"), ("fraction_bits", 16, "fraction_bits = 16")):
        arrays = dict(zip(("w", "bias", "multiplier", "shift"), good), fraction_bits=np.full(8, 15))
        arrays[field] = arrays[field].copy()
        arrays[field][3] = value
        with pytest.raises(ValueError, match=words):
            layout.pack(arrays["w"], arrays["bias"], arrays["multiplier"], arrays["shift"], arrays["fraction_bits"])
    with pytest.raises(ValueError, match="bias outside int32"):
        layout.pack(good[0], np.full(8, 1 << 31), *good[2:])
