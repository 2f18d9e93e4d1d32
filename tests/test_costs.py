"""The cost model against figures worked out by hand and from the reference (not from the code)."""

from golden.config import model_preset
from golden.costs import backbone_macs, expert_weight_bytes, head_macs, model_info


def test_m3vit_tiny_backbone_macs():
    info = model_info(model_preset("m3vit-tiny-cityscapes"))
    assert info["backbone_macs"] == 782_719_488  # the figure the foundation issue states


def test_m3vit_tiny_per_layer_figures():
    # Reference: per layer ≈ 14.3 M qkv, 6.4 M attention matmuls, 4.7 M proj, 38 M MLP or top-2 experts,
    # plus 19 M for the patch embedding; 129 tokens, embed 192.
    macs = backbone_macs(model_preset("m3vit-tiny-cityscapes"))
    assert macs["qkv"] == 12 * 129 * 192 * 576
    assert round(macs["qkv"] / 12 / 1e5) == 143
    assert round(macs["attention"] / 12 / 1e5) == 64
    assert round(macs["proj"] / 12 / 1e5) == 48  # 4.76 M
    assert round(macs["dense_mlp"] / 6 / 1e6) == 38 and macs["experts"] == macs["dense_mlp"]
    assert macs["patch_embed"] == 128 * 768 * 192
    assert macs["router"] == 6 * 129 * 192 * 16


def test_all_experts_costs_e_over_k_times_the_experts():
    model = model_preset("m3vit-tiny-cityscapes")
    active, every = backbone_macs(model), backbone_macs(model, all_experts=True)
    assert every["experts"] == active["experts"] * 16 // 2
    assert {k: v for k, v in every.items() if k != "experts"} == {k: v for k, v in active.items() if k != "experts"}


def test_head_macs_match_reference():
    # Reference: about 6.41 G MACs per task for the M³ViT-tiny Cityscapes head.
    assert round(head_macs(model_preset("m3vit-tiny-cityscapes"), "semseg") / 1e7) == 641
    # The depth head differs only in its 1×1 classifier: 64×128 pixels × 256 channels × (7 − 1) classes.
    model = model_preset("m3vit-tiny-cityscapes")
    assert head_macs(model, "semseg") - head_macs(model, "depth") == 64 * 128 * 256 * 6


def test_expert_bytes():
    # m3vit-small's expert matrices are 288 KiB each.
    assert expert_weight_bytes(model_preset("m3vit-small-nyud")) == 2 * 288 * 1024
    assert expert_weight_bytes(model_preset("m3vit-tiny-cityscapes")) == 2 * 192 * 384


def test_info_has_the_promised_keys():
    info = model_info(model_preset("tiny"))
    for key in ("backbone_macs", "backbone_macs_all_experts", "head_macs", "params", "weight_bytes",
                "expert_weight_bytes"):
        assert isinstance(info[key], int) and info[key] > 0
