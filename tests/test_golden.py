"""The quantizer, the quantized-model file and the whole integer golden model on the `tiny` preset."""

import numpy as np
import pytest
import torch

from golden.config import model_preset
from golden.costs import backbone_macs, head_macs
from golden.fidelity import snr_db
from golden.float_model import M3ViT, calibrate, float_inference, numpy_weights, quantize_model
from golden.images import natural_images, structured_images
from golden.model import run
from golden.quantize import QuantizationError, quantize, quantize_image, rounded_weights
from golden.quantized import FORMAT, QuantizedFileError, QuantizedModel, array_spec

TINY = model_preset("tiny")


@pytest.fixture(scope="module")
def network():
    return M3ViT.trained_like(TINY, seed=1)


@pytest.fixture(scope="module")
def quantized(network):
    return quantize_model(network, natural_images(TINY, 8, 11))


@pytest.fixture(scope="module")
def images():
    return natural_images(TINY, 4, 22)


def test_structured_images_are_reproducible_and_not_noise():
    a, b = structured_images(TINY, 4, 5), structured_images(TINY, 4, 5)
    assert np.array_equal(a, b) and not np.array_equal(a, structured_images(TINY, 4, 6))
    # Neighbouring pixels correlate strongly (smooth structure), unlike noise.
    x = a.reshape(-1, 32)
    assert np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1] > 0.5


def test_every_array_matches_the_spec(quantized):
    spec = array_spec(TINY)
    assert set(quantized.arrays) == set(spec)
    for name, (shape, dtype) in spec.items():
        assert quantized[name].shape == shape and quantized[name].dtype == dtype, name
    for name in spec:
        if name.endswith(".multiplier") or name.endswith("_multiplier"):
            m = quantized[name]
            assert ((m >= 1 << 14) & (m < 1 << 15)).all(), name


def test_golden_run_shapes_routing_and_counts(quantized, images):
    image = quantize_image(quantized, images[0])
    result = run(quantized, image, "depth", intermediates=True)
    assert result.output.dtype == np.int16 and result.output.shape == (1, 32, 32)
    assert result.backbone.dtype == np.int16 and result.backbone.shape == (17, 32)
    assert set(result.routing) == set(TINY.moe_blocks)
    for routing in result.routing.values():
        assert routing.expert_ids.shape == (17, 2) and routing.gate_weights.shape == (17, 2)
        for expert, tokens in enumerate(routing.expert_tokens):
            assert list(tokens) == sorted(tokens)
            assert sorted(tokens.tolist()) == sorted(np.nonzero((routing.expert_ids == expert).any(-1))[0].tolist())
        assert routing.active_experts == [e for e in range(4) if len(routing.expert_tokens[e])]
    # Multiply-accumulates counted by the golden model equal the analytic cost model.
    macs = backbone_macs(TINY)
    for kind in ("patch_embed", "qkv", "attention", "proj", "dense_mlp", "router", "experts"):
        assert result.macs[kind] == macs[kind], kind
    assert result.macs["head"] == head_macs(TINY, "depth")
    for name, tensor in result.tensors.items():
        assert np.issubdtype(tensor.dtype, np.integer), name


def test_golden_is_deterministic_and_rejects_bad_input(quantized, images):
    image = quantize_image(quantized, images[1])
    a, b = run(quantized, image, 0), run(quantized, image, 0)
    assert np.array_equal(a.output, b.output) and np.array_equal(a.backbone, b.backbone)
    with pytest.raises(ValueError, match="int8 of shape"):
        run(quantized, image.astype(np.int16), 0)
    with pytest.raises(ValueError, match="task = 5"):
        run(quantized, image, 5)


def test_extreme_images_saturate_cleanly(quantized):
    for value in (-128, 127):
        result = run(quantized, np.full((3, 32, 32), value, np.int8), 0)
        assert result.output.dtype == np.int16


def test_tiny_integer_model_tracks_float(network, quantized, images):
    for task in range(TINY.num_tasks):
        refs, ints, agree = [], [], []
        for image in images:
            reference = float_inference(network, image, task)
            result = run(quantized, quantize_image(quantized, image), task)
            refs.append(reference["blocks"][-1])
            ints.append(result.backbone * quantized.scales["residual"])
            for block in TINY.moe_blocks:
                agree.append((np.sort(reference["routing"][block][0], -1)
                              == np.sort(result.routing[block].expert_ids, -1)).all(-1).mean())
        # the trained-like model's heavy tails (as far as an embed width of 32 allows) cost a few dB
        assert snr_db(np.stack(refs), np.stack(ints)) > 20
        assert np.mean(agree) > 0.9


def test_file_round_trip(tmp_path, quantized):
    path = tmp_path / "tiny.npz"
    quantized.save(path)
    loaded = QuantizedModel.load(path, expect=TINY)
    assert loaded.config == TINY and loaded.scales == quantized.scales
    assert all(np.array_equal(loaded[n], quantized[n]) and loaded[n].dtype == quantized[n].dtype
               for n in quantized.arrays)


def _rewrite(path, quantized, meta=None, arrays=None):
    import json
    meta = meta or {"format": FORMAT, "config": TINY.to_dict(), "scales": quantized.scales}
    arrays = dict(quantized.arrays if arrays is None else arrays)
    with open(path, "wb") as file:
        np.savez(file, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def test_corrupt_files_get_clear_errors(tmp_path, quantized):
    good = tmp_path / "good.npz"
    quantized.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(QuantizedFileError, match="not a readable quantized-model file"):
        QuantizedModel.load(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(QuantizedFileError, match="no __meta__ header"):
        QuantizedModel.load(foreign)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(QuantizedFileError, match="not a readable"):
        QuantizedModel.load(text)
    old = tmp_path / "old.npz"
    _rewrite(old, quantized, meta={"format": "m3vit-quantized-0", "config": TINY.to_dict()})
    with pytest.raises(QuantizedFileError, match=f"format 'm3vit-quantized-0', expected '{FORMAT}'"):
        QuantizedModel.load(old)
    with pytest.raises(QuantizedFileError, match="quantized for tiny .* expected m3vit-tiny-cityscapes"):
        QuantizedModel.load(good, expect=model_preset("m3vit-tiny-cityscapes"))
    broken = dict(quantized.arrays)
    del broken["blocks.0.qkv.weight"]
    broken["blocks.1.router.weight"] = broken["blocks.1.router.weight"].astype(np.int16)
    broken["blocks.2.proj.bias"] = broken["blocks.2.proj.bias"][:5]
    bad = tmp_path / "bad.npz"
    _rewrite(bad, quantized, arrays=broken)
    with pytest.raises(QuantizedFileError) as error:
        QuantizedModel.load(bad)
    message = str(error.value)
    assert "1 missing arrays: blocks.0.qkv.weight" in message
    assert "blocks.1.router.weight: ((2, 32, 4), dtype('int16')), expected ((2, 32, 4), int8)" in message
    assert "blocks.2.proj.bias: ((5,), dtype('int32')), expected ((32,), int32)" in message
    invalid = tmp_path / "invalid.npz"
    _rewrite(invalid, quantized, meta={"format": FORMAT, "config": {**TINY.to_dict(), "top_k": 9}})
    with pytest.raises(QuantizedFileError, match="invalid config in header .*top_k = 9"):
        QuantizedModel.load(invalid)


def test_quantizer_errors(network):
    weights = numpy_weights(network)
    clips = calibrate(network, structured_images(TINY, 2, 3))
    bad = dict(weights)
    bad["blocks.2.attn.qkv.weight"] = bad["blocks.2.attn.qkv.weight"].copy()
    bad["blocks.2.attn.qkv.weight"][0, 0] = np.nan
    with pytest.raises(QuantizationError, match="weight blocks.2.attn.qkv.weight contains NaN or inf"):
        quantize(TINY, bad, clips)
    partial = {k: v for k, v in clips.items() if not k.startswith("blocks.3.experts.1.")}
    with pytest.raises(QuantizationError, match="no statistics for blocks.3.experts.1.fc1.channels: it saw no data"):
        quantize(TINY, weights, partial)
    broken = dict(clips, **{"blocks.1.attn_out.gram": np.full_like(clips["blocks.1.attn_out.gram"], np.nan)})
    with pytest.raises(QuantizationError, match="calibration of blocks.1.attn_out: its Gram matrix holds NaN"):
        quantize(TINY, weights, broken)
    expert = f"blocks.{TINY.moe_blocks[0]}.experts.1.gelu"
    with pytest.raises(QuantizationError, match=f"calibration of {expert}: its Gram matrix holds NaN"):
        quantize(TINY, weights, dict(clips, **{f"{expert}.gram": np.full_like(clips[f"{expert}.gram"], np.inf)}))
    indefinite = np.eye(TINY.embed_dim)
    indefinite[0, 1] = indefinite[1, 0] = 10.0             # no tokens' Gram matrix: eigenvalues 11 and −9
    with pytest.raises(QuantizationError, match="blocks.1.proj: GPTQ rounding failed on its input's Gram matrix"):
        quantize(TINY, weights, dict(clips, **{"blocks.1.attn_out.gram": indefinite}))
    with pytest.raises(ValueError, match="non-empty batch"):
        calibrate(network, np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        calibrate(network, np.full((1, 3, 32, 32), np.inf, np.float32))


def _correlated_inputs(rng, tokens, mixing):
    """Tokens [tokens, k] with channels correlated by `mixing` [k, k] and one outlier channel, as a LayerNorm
    output has."""
    x = rng.standard_normal((tokens, len(mixing))) @ mixing
    x[:, 3] *= 8
    return x


def _output_error(x, w, scale, wq):
    return float(np.square(x @ (w - wq * scale)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_rounding_lowers_the_output_error(seed):
    rng = np.random.default_rng(seed)
    k, n = 48, 24
    w = rng.standard_normal((k, n)) * rng.uniform(0.2, 2.0, n)
    w[5, 7] *= 6                                                # a column whose scale one weight sets
    scale = np.abs(w).max(0) / 127
    mixing = np.eye(k) + 0.5 * rng.standard_normal((k, k)) / np.sqrt(k)
    calibration, held_out = _correlated_inputs(rng, 1000, mixing), _correlated_inputs(rng, 1000, mixing)
    nearest = rounded_weights(w, scale)
    assert np.array_equal(nearest, np.clip(np.round(w / scale), -127, 127))
    gptq = rounded_weights(w, scale, calibration.T @ calibration)
    assert gptq.dtype == np.int8 and np.abs(gptq.astype(int)).max() <= 127
    for x in (calibration, held_out):
        assert _output_error(x, w, scale, gptq) < 0.85 * _output_error(x, w, scale, nearest)
    # a diagonal Gram matrix (uncorrelated channels) and an all-zero one (channels never seen) pass no error on
    assert np.array_equal(rounded_weights(w, scale, np.diag(rng.uniform(0.1, 9, k))), nearest)
    assert np.array_equal(rounded_weights(w, scale, np.zeros((k, k))), nearest)
    # a leading axis (a layer's experts) rounds each slice as on its own, with a shared or its own Gram
    experts = np.stack([w, -0.5 * w])
    shared = rounded_weights(experts, np.stack([scale, 0.5 * scale]), calibration.T @ calibration)
    assert np.array_equal(shared[0], gptq)
    assert np.array_equal(shared[1], rounded_weights(-0.5 * w, 0.5 * scale, calibration.T @ calibration))


def test_quantizer_rounds_by_gptq_where_calibration_gives_the_inputs_moments(network, quantized):
    weights = numpy_weights(network)
    clips = calibrate(network, natural_images(TINY, 8, 11))
    assert clips["blocks.0.norm1.gram"].shape == (TINY.embed_dim, TINY.embed_dim)
    assert clips[f"blocks.{TINY.moe_blocks[0]}.experts.0.gelu.gram"].shape == (TINY.expert_hidden,) * 2
    nearest = quantize(TINY, weights, {k: v for k, v in clips.items() if not k.endswith(".gram")})
    moe = TINY.moe_blocks[0]
    for layer in ("blocks.0.qkv", "blocks.0.proj", "blocks.0.fc1", "blocks.0.fc2", f"blocks.{moe}.experts.fc1",
                  f"blocks.{moe}.experts.fc2", f"blocks.{moe}.router"):
        got, plain = quantized.arrays[f"{layer}.weight"], nearest.arrays[f"{layer}.weight"]
        assert not np.array_equal(got, plain), layer
    # what GPTQ leaves alone: the patch embedding, the heads, every scale
    for name in ("patch.weight", "heads.0.conv_0.weight"):
        assert np.array_equal(quantized.arrays[name], nearest.arrays[name]), name
    for name, value in nearest.arrays.items():
        if not name.endswith(".weight"):
            assert np.array_equal(quantized.arrays[name], value), name


def test_trained_like_shape(network):
    images = torch.from_numpy(natural_images(TINY, 4, TINY.depth))
    with torch.no_grad():
        out = network(images, 0, intermediates=True).blocks[0]
    ratio = float(out.abs().max() / out.pow(2).mean().sqrt())
    assert ratio > 3  # one outlier channel: at most sqrt(32) ≈ 5.7 for embed 32
    margins = []
    for block in TINY.moe_blocks:
        result = float_inference(network, natural_images(TINY, 1, 40)[0], 0)
        top = -np.sort(-result["logits"][block], -1)
        margins.append(top[:, 1] - top[:, 2])
    assert 0.03 < np.median(np.concatenate(margins)) < 0.6


@pytest.mark.parametrize("case", ["all to one", "spread", "one token", "k equals E"])
def test_expert_queues(case):
    from golden.model import expert_queues
    rng = np.random.default_rng(len(case))
    ids = {"all to one": np.tile([[2, 0]], (9, 1)),
           "spread": np.array([rng.permutation(16)[:2] for _ in range(40)]),
           "one token": np.array([[3, 1]]),
           "k equals E": np.tile([[1, 0, 3, 2]], (5, 1))}[case]
    experts = 4 if case != "spread" else 16
    queues = expert_queues(ids, experts)
    for expert in range(experts):
        tokens = queues.expert_tokens[expert]
        assert tokens.tolist() == sorted(np.nonzero((ids == expert).any(-1))[0].tolist())
    assert queues.active.tolist() == sorted(set(ids.ravel().tolist()))
    assert queues.counts.sum() == ids.size
    assert np.array_equal(ids[queues.tokens, queues.slots], queues.active[queues.batch])
    if case == "all to one":
        assert queues.counts.tolist() == [9, 0, 9, 0] and queues.expert_tokens[2].tolist() == list(range(9))


def test_golden_all_tokens_to_one_expert(quantized, images):
    # Make expert 3 win every token of every MoE layer for task 0: its router column dominates.
    arrays = dict(quantized.arrays)
    for block in TINY.moe_blocks:
        weight = arrays[f"blocks.{block}.router.weight"].copy()
        weight[0] = 0
        arrays[f"blocks.{block}.router.weight"] = weight
    forced = QuantizedModel(TINY, arrays, quantized.scales)
    result = run(forced, quantize_image(forced, images[0]), 0)
    for routing in result.routing.values():
        # All logits equal: experts 0 and 1 win every token, in that order.
        assert (routing.expert_ids == [0, 1]).all()
        assert routing.active_experts == [0, 1] and len(routing.expert_tokens[0]) == TINY.num_tokens


@pytest.mark.parametrize("name, value, words", [
    ("blocks.0.qkv.multiplier", 1 << 15, r"blocks.0.qkv.multiplier\[0\] = 32768: a multiplier must lie in 16384…32767"),
    ("blocks.2.proj.shift", 63, r"blocks.2.proj.shift\[0\] = 63: a shift must lie in 0…62"),
    ("blocks.1.experts.fc1.fraction_bits", 4, r"blocks.1.experts.fc1.fraction_bits\[0, 0\] = 4: GELU's fraction bits"),
    ("blocks.0.fc1.fraction_bits", 16, r"blocks.0.fc1.fraction_bits\[0\] = 16"),
    ("blocks.3.norm1.gamma", 1 << 15, r"blocks.3.norm1.gamma\[0\] = 32768: a LayerNorm γ"),
    ("norm.eps", 0, r"norm.eps = 0: LayerNorm's eps must lie in 1…"),
    ("blocks.0.attn.exp_shift", -1, r"blocks.0.attn.exp_shift = -1: a shift"),
    ("blocks.1.router.exp_multiplier", 5, r"blocks.1.router.exp_multiplier\[0\] = 5: a multiplier"),
    ("patch.bias", (1 << 31) - 1, r"patch.bias\[0\] = 2147483647: with K = 192 products, a bias"),
])
def test_values_the_hardware_cannot_take_are_refused(tmp_path, quantized, name, value, words):
    arrays = dict(quantized.arrays)
    changed = arrays[name].copy()
    changed.flat[0] = value
    arrays[name] = changed
    path = tmp_path / "values.npz"
    _rewrite(path, quantized, arrays=arrays)
    with pytest.raises(QuantizedFileError, match=words):
        QuantizedModel.load(path)
    with pytest.raises(ValueError, match=words):
        QuantizedModel(TINY, arrays, quantized.scales)


def test_archive_members_are_checked_before_they_are_read(tmp_path, quantized):
    import zipfile
    good, big = tmp_path / "good.npz", tmp_path / "big.npz"
    quantized.save(good)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(big, "w") as archive:
        for info in source.infolist():   # one member far larger than its array's shape: never read
            large = info.filename == "blocks.0.qkv.weight.npy"
            archive.writestr(info.filename, b"0" * (1 << 20) if large else source.read(info))
    with pytest.raises(QuantizedFileError, match=r"member blocks.0.qkv.weight.npy declares 1,048,576 bytes"):
        QuantizedModel.load(big)
    stray = tmp_path / "stray.npz"
    quantized.save(stray)
    with zipfile.ZipFile(stray, "a") as archive:
        archive.writestr("../escape.npy", b"x")
    with pytest.raises(QuantizedFileError, match="unexpected member '../escape.npy'"):
        QuantizedModel.load(stray)
    meta = tmp_path / "meta.npz"
    np.savez(meta, __meta__=np.zeros(2 << 20, np.uint8))
    with pytest.raises(QuantizedFileError, match="__meta__ declares"):
        QuantizedModel.load(meta)
