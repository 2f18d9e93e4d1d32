"""Training the float model on the procedural scenes: it learns, it balances its experts, its scores are right."""

import json

import numpy as np
import pytest
import torch

from golden.config import model_preset
from golden.float_model import M3ViT
from golden.scenes import labelled_scenes
from golden.train import NoisyGating, _miou, evaluate, train
from m3vit.cli import main

TINY = model_preset("tiny")


@pytest.mark.parametrize("predicted, labels, expected", [
    ([0, 1, 2, 3], [0, 1, 2, 3], 1.0),
    ([1, 0, 3, 2], [0, 1, 2, 3], 0.0),
    ([0, 0, 1, 1], [0, 1, 1, 1], (1 / 2 + 2 / 3) / 2),       # class 0: 1 of 2; class 1: 2 of 3
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),                        # classes absent from both are not counted
])
def test_miou_by_hand(predicted, labels, expected):
    assert _miou(np.array(predicted), np.array(labels), 4)[0] == pytest.approx(expected)


def test_the_balance_loss_reaches_the_routers_and_grows_with_imbalance():
    torch.manual_seed(0)
    model = M3ViT.random(TINY, 0).train()
    gating = NoisyGating(model)
    images = torch.from_numpy(labelled_scenes(TINY, 8, 0).images)
    model(images, 0)
    balanced = gating.take()
    balanced.backward()
    assert all(model.blocks[b].mlp.gate[0].w_gate.grad.abs().sum() > 0 for b in TINY.moe_blocks)
    assert gating.take() == 0                                     # taken once
    noise = gating._noise_of(0)
    tokens = torch.randn(64, TINY.embed_dim)
    logits = torch.randn(64, TINY.num_experts)
    noise(tokens, logits, 0)
    spread = gating.take()
    noise(tokens, logits + torch.tensor([3.0, 0, 0, 0]), 0)      # every token prefers expert 0
    assert gating.take() > 4 * spread


def test_evaluate_scores_a_perfect_and_a_constant_prediction():
    scenes = labelled_scenes(TINY, 4, 9)

    class Oracle(M3ViT):             # answers with the truth of the scenes it is given (as logits / depth)
        def forward(self, image, task=0, *, intermediates=False, probe=None):
            output = super().forward(image, task, intermediates=True)
            first = int(np.flatnonzero((scenes.images == image[0].numpy()).all(axis=(1, 2, 3)))[0])
            if self.config.tasks[task].name == "semseg":
                truth = torch.nn.functional.one_hot(torch.from_numpy(scenes.labels[first:first + len(image)]), 4)
                output.output = truth.permute(0, 3, 1, 2).float()
            else:
                output.output = torch.from_numpy(scenes.depth[first:first + len(image)])[:, None]
            return output

    model = Oracle(TINY)
    model.load_state_dict(M3ViT.random(TINY, 0).state_dict())
    report = evaluate(model.eval(), scenes, batch=2)
    assert report["miou"] == 1.0 and report["depth_error"] == 0
    assert report["constant_depth_error"] == pytest.approx(np.abs(scenes.depth - np.median(scenes.depth)).mean())
    shares = report["expert_shares"]
    assert set(shares) == {str(b) for b in TINY.moe_blocks}
    assert all(sum(task) == pytest.approx(1, abs=1e-3) for block in shares.values() for task in block.values())
    assert report["min_expert_share"] == min(min(task) for block in shares.values() for task in block.values())


@pytest.mark.long(30)
def test_a_short_training_learns_and_is_reproducible(tmp_path):
    first = train(TINY, steps=120, seed=3, pool_scenes=512)
    again = train(TINY, steps=20, seed=3, pool_scenes=512)
    repeat = train(TINY, steps=20, seed=3, pool_scenes=512)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 repeat.model.state_dict().values()))
    report = first.report
    assert report["steps"] == 120
    assert report["depth_error"] < 0.6 * report["constant_depth_error"], report     # it learned depth
    assert report["depth_error"] < again.report["depth_error"]
    assert report["min_expert_share"] > 0.05, report["expert_shares"]
    path = tmp_path / "model.pt"
    first.model.save(path)
    loaded = M3ViT.load(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), first.model.state_dict().values()))


def test_the_command_line_trains_and_refuses_what_it_cannot_label(tmp_path, capsys):
    path = tmp_path / "m.pt"
    assert main(["train", "--steps", "3", "-o", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert path.is_file() and report["steps"] == 3 and report["checkpoint"] == str(path)
    assert {"miou", "depth_error", "constant_depth_error", "min_expert_share"} <= set(report)
    assert main(["train", "--preset", "m3vit-small-pascal", "--steps", "3", "-o", str(tmp_path / "p.pt")]) == 2
    assert "label semseg and depth only" in capsys.readouterr().err and not (tmp_path / "p.pt").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--minutes", "0", "-o", str(tmp_path / "z.pt")])
    assert exit_.value.code == 2
