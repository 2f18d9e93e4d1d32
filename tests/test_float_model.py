"""The float M³ViT: shapes, routing against a plain per-token loop, task switching, state dicts."""

import math

import pytest
import torch

from golden.config import MODEL_PRESETS, model_preset
from golden.costs import parameter_count
from golden.float_model import CheckpointError, M3ViT, route

TINY = model_preset("tiny")


@pytest.fixture(scope="module")
def tiny_model():
    return M3ViT.random(TINY, seed=3)


def _images(config, count=2, seed=0):
    return torch.randn(count, config.in_channels, *config.image_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_every_preset_runs_one_image(name):
    config = model_preset(name)
    model = M3ViT.random(config, seed=0)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(config)["total"]
    with torch.inference_mode():
        result = model(_images(config, 1)[0], task=config.num_tasks - 1, intermediates=True)
    classes = config.tasks[-1].classes
    assert tuple(result.output.shape) == (classes, *config.image_size)
    assert len(result.blocks) == config.depth
    assert all(tuple(b.shape) == (1, config.num_tokens, config.embed_dim) for b in result.blocks)
    assert sorted(result.routing) == list(config.moe_blocks)
    for routing in result.routing.values():
        assert tuple(routing.expert_ids.shape) == (1, config.num_tokens, config.top_k)
    assert torch.isfinite(result.output).all()


def _plain_route(logits, k, gate):
    """One token, in plain Python: sort by (−logit, index), then the gate weights by the book."""
    values = logits.tolist()
    ids = sorted(range(len(values)), key=lambda e: (-values[e], e))[:k]
    if gate == "vmoe":
        total = sum(math.exp(v) for v in values)
        weights = [math.exp(values[e]) / total for e in ids]
    else:
        total = sum(math.exp(values[e]) for e in ids)
        weights = [math.exp(values[e]) / total for e in ids]
    return ids, weights


@pytest.mark.parametrize("gate", ["vmoe", "noisy"])
@pytest.mark.parametrize("k, experts", [(1, 4), (2, 4), (4, 4), (2, 16)])
def test_route_matches_plain_loop(gate, k, experts):
    generator = torch.Generator().manual_seed(k * 100 + experts)
    logits = torch.randn(50, experts, generator=generator, dtype=torch.float64)
    logits[:5] = 0.25                              # all logits equal: experts 0..k−1 win
    logits[5, :] = torch.arange(experts) % 2 * 1.0  # pairs of ties
    ids, weights = route(logits, k, gate)
    for token in range(logits.shape[0]):
        plain_ids, plain_weights = _plain_route(logits[token], k, gate)
        assert ids[token].tolist() == plain_ids
        assert torch.allclose(weights[token], torch.tensor(plain_weights, dtype=torch.float64), rtol=1e-12)
    assert ids[0].tolist() == list(range(k))
    if gate == "noisy":
        assert torch.allclose(weights.sum(-1), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("gate", ["vmoe", "noisy"])
def test_moe_layer_matches_per_token_loop(gate):
    config = TINY.replace(gate=gate)
    model = M3ViT.random(config, seed=5)
    moe = model.blocks[1].mlp
    x = torch.randn(2, config.num_tokens, config.embed_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for task in range(config.num_tasks):
            out, routing = moe(x, task)
            for b in range(2):
                for t in range(config.num_tokens):
                    token = x[b, t]
                    ids, weights = _plain_route(token @ moe.gate[task].w_gate, config.top_k, gate)
                    assert routing.expert_ids[b, t].tolist() == ids
                    expected = sum(w * moe.experts.expert(e, token) for e, w in zip(ids, weights))
                    assert torch.allclose(out[b, t], expected, atol=1e-5)


def test_task_switching_changes_only_the_router_and_head(tiny_model):
    images = _images(TINY)
    twin = M3ViT.random(TINY, seed=3)
    with torch.no_grad():
        for block in TINY.moe_blocks:  # give task 1 the routers of task 0
            twin.blocks[block].mlp.gate[1].w_gate.copy_(twin.blocks[block].mlp.gate[0].w_gate)
        a = tiny_model(images, 0, intermediates=True)
        b = twin(images, 1, intermediates=True)
        c = tiny_model(images, 1, intermediates=True)
    for x, y in zip(a.blocks, b.blocks):
        assert torch.equal(x, y)  # same routers → same backbone, whichever task asks
    assert torch.equal(a.blocks[0], c.blocks[0])  # before the first MoE block, tasks agree
    assert not torch.equal(a.routing[1].expert_ids, c.routing[1].expert_ids)
    assert a.output.shape[1] == 4 and c.output.shape[1] == 1


def test_seeded_constructor_is_reproducible():
    torch.manual_seed(123)
    a = M3ViT.random(TINY, seed=7).state_dict()
    torch.manual_seed(456)
    b = M3ViT.random(TINY, seed=7).state_dict()
    c = M3ViT.random(TINY, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_save_load_round_trip(tmp_path, tiny_model):
    path = tmp_path / "tiny.pt"
    tiny_model.save(path)
    loaded = M3ViT.load(path)
    assert loaded.config == TINY
    images = _images(TINY)
    with torch.no_grad():
        assert torch.equal(loaded(images, "depth"), tiny_model(images, "depth"))
    saved = torch.load(path, weights_only=True)["state_dict"]    # named as the official multi-task model
    assert "backbone.blocks.1.mlp.gate.0.w_gate" in saved and "decoders.semseg.conv_0.weight" in saved
    assert all(key.startswith(("backbone.", "decoders.semseg.", "decoders.depth.")) for key in saved)
    again = M3ViT(TINY)                                            # as the official layout loads
    again.load_official_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tiny_model.state_dict().values()))


def test_official_names(tiny_model):
    keys = set(tiny_model.state_dict())
    for key in ["patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.norm1.weight",
                "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc1.weight",
                "blocks.1.mlp.experts.htoh4.weight", "blocks.1.mlp.experts.h4toh.bias",
                "blocks.1.mlp.gate.1.w_gate"]:
        assert key in keys
    sd = tiny_model.state_dict()
    assert tuple(sd["blocks.1.mlp.experts.htoh4.weight"].shape) == (4, 64, 32)  # [E, h, d]
    assert tuple(sd["blocks.1.mlp.experts.h4toh.weight"].shape) == (4, 32, 64)  # [E, d, h]
    assert tuple(sd["blocks.1.mlp.gate.0.w_gate"].shape) == (32, 4)             # [d, E]


def test_state_dict_errors_are_reported_together(tiny_model):
    sd = dict(tiny_model.state_dict())
    del sd["blocks.0.attn.qkv.weight"]
    sd["blocks.0.attn.qkv.extra"] = torch.zeros(1)
    sd["blocks.1.mlp.gate.0.w_gate"] = torch.zeros(4, 32)
    sd["pos_embed"] = torch.full_like(sd["pos_embed"], float("nan"))
    model = M3ViT(TINY)
    with pytest.raises(CheckpointError) as error:
        model.load_official_state_dict(sd)
    message = str(error.value)
    assert "1 missing: blocks.0.attn.qkv.weight" in message
    assert "ignored 1" in message          # a key that names nothing of the model takes no part: ignored
    assert "blocks.1.mlp.gate.0.w_gate: shape (4, 32), expected (32, 4)" in message
    assert "pos_embed: contains NaN or inf" in message


def test_wrapped_and_backbone_only_state_dicts(tiny_model):
    sd = tiny_model.state_dict()
    model = M3ViT(TINY)
    model.load_official_state_dict({"model": {f"module.{k}": v for k, v in sd.items()}})
    assert torch.equal(model.blocks[2].attn.qkv.weight, tiny_model.blocks[2].attn.qkv.weight)
    backbone = {k: v for k, v in sd.items() if not k.startswith("heads.")}
    with pytest.raises(CheckpointError, match="missing: heads.0"):
        M3ViT(TINY).load_official_state_dict(backbone)
    M3ViT(TINY).load_official_state_dict(backbone, backbone_only=True)


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "encoder.", "module.backbone.", "module.encoder."])
def test_checkpoint_prefixes_are_stripped(tiny_model, prefix):
    sd = tiny_model.state_dict()
    model = M3ViT(TINY)
    report = model.load_official_state_dict({f"{prefix}{k}": v for k, v in sd.items()})
    assert report.mapped == len(sd) and report.ignored == [] and report.heads_from_checkpoint
    assert "".join(report.prefixes) == prefix
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), sd.values()))


def test_official_training_checkpoint_loads_as_it_is(tiny_model):
    """The official multi-task model: the ViT under `backbone.`, the heads under `decoders.<task name>.`,
    saved from DataParallel inside a training checkpoint; what takes no part in inference is listed."""
    sd = tiny_model.state_dict()
    official = {}
    for key, value in sd.items():
        if key.startswith("heads."):
            _, task, rest = key.split(".", 2)
            official[f"module.decoders.{TINY.tasks[int(task)].name}.{rest}"] = value
        else:
            official[f"module.backbone.{key}"] = value
    official["module.backbone.head.weight"] = torch.zeros(10, 32)     # an image classifier
    official["module.backbone.norm.weight"] = torch.ones(32)           # the ViT's final norm
    model = M3ViT(TINY)
    report = model.load_official_state_dict({"state_dict": official, "optimizer": {"lr": 0.1}, "epoch": 7})
    assert report.mapped == len(sd)
    assert sorted(report.ignored) == ["epoch (training state)", "module.backbone.head.weight",
                                      "module.backbone.norm.weight", "optimizer (training state)"]
    assert torch.equal(model.heads[1].conv_0.weight, tiny_model.heads[1].conv_0.weight)
    assert "120 keys mapped" in report.summary() or f"{len(sd)} keys mapped" in report.summary()
    backbone_only = M3ViT(TINY)
    heads_before = backbone_only.heads[0].conv_0.weight.clone()
    report = backbone_only.load_official_state_dict(official, backbone_only=True)
    assert not report.heads_from_checkpoint and "seeded random weights" in report.summary()
    assert torch.equal(backbone_only.heads[0].conv_0.weight, heads_before)
    assert torch.equal(backbone_only.blocks[1].mlp.gate[1].w_gate, tiny_model.blocks[1].mlp.gate[1].w_gate)


def test_corrupt_and_foreign_checkpoints(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    tiny_model.save(path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint"):
        M3ViT.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an M³ViT float checkpoint"):
        M3ViT.load(foreign)


def test_bad_image_and_task(tiny_model):
    with pytest.raises(ValueError, match=r"image shape \(1, 3, 16, 32\): expected \[B, 3, 32, 32\]"):
        tiny_model(torch.zeros(1, 3, 16, 32))
    with pytest.raises(ValueError, match=r"task = 2: must be a task index in \[0, 2\)"):
        tiny_model(torch.zeros(1, 3, 32, 32), 2)


def test_shaping_calibration_and_the_reference_run_on_one_thread(monkeypatch):
    """The synthetic model's shaping, calibration and the float reference see one torch thread (a reduction split
    among threads sums in another order: the same seed would give another model on a machine of another core
    count), and the caller's thread count comes back after each."""
    import numpy as np

    import golden.trained_like
    from golden.float_model import calibrate, float_inference
    seen = []
    monkeypatch.setattr(golden.trained_like, "shape_like_trained", lambda model, seed: seen.append(
        torch.get_num_threads()))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = M3ViT.trained_like(TINY, 0)
        forward = model.forward
        monkeypatch.setattr(model, "forward", lambda *args, **kwargs: seen.append(torch.get_num_threads())
                            or forward(*args, **kwargs))
        image = np.random.default_rng(0).random((1, 3, *TINY.image_size), np.float32)
        calibrate(model, image, tasks=[0])
        float_inference(model, image[0])
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
