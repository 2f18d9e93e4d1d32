"""The LayerNorm unit against `golden.ops.layernorm`: random rows and every edge, two outputs, stalls."""

import numpy as np
import pytest
from amaranth.hdl import Fragment

from firmware.cycles import CycleModel
from golden import ops
from golden.config import accelerator_preset, model_preset
from hw.flow.export import lint, to_verilog
from hw.vector.layernorm import BETA_BITS, LayerNorm
from hw.sim import simulate
from hw.sim.vector import normalise_rows, write_norm


def _parameters(rng, dim, bits_list):
    """Per output (gamma, beta, shift, bits) as the quantizer makes them: |G| < 2^15, B wide."""
    outputs = []
    for bits in bits_list:
        gamma = rng.integers(-(1 << 15) + 1, 1 << 15, dim)
        shift = int(rng.integers(8, 30))
        beta = rng.integers(-(1 << (shift + bits)), 1 << (shift + bits), dim)
        outputs.append((gamma, beta, shift, bits))
    return outputs


def _edge_rows(rng, dim):
    """Rows of equal values, one huge value, the int16 extremes, alternating extremes, tiny variance."""
    rows = [np.full(dim, 5), np.full(dim, -32768), np.full(dim, 32767), np.zeros(dim, np.int64),
            np.where(np.arange(dim) % 2, 32767, -32768), np.full(dim, 32767), np.full(dim, -3)]
    rows[5][dim // 2] = -32768                   # one huge outlier against the rest
    rows[6][0] = -2                              # variance of one step
    rows.append(rng.integers(-40, 40, dim))
    return np.stack(rows).astype(np.int64)


def _check(unit, x, eps, outputs, rng, **stalls):
    got = {}

    async def testbench(ctx):
        await write_norm(ctx, unit, 1 % unit.param_sets, [(g, b) for g, b, _, _ in outputs])
        got["y"], got["cycles"] = await normalise_rows(ctx, unit, x, eps, [s for _, _, s, _ in outputs],
                                                       parameter_set=1 % unit.param_sets, rng=rng, **stalls)

    simulate(unit, testbench)
    expected = ops.layernorm(x, eps, outputs)
    for o, (y, reference) in enumerate(zip(got["y"], expected)):
        assert np.array_equal(y, reference), f"output {o}: rows {np.flatnonzero((y != reference).any(1))}"
    return got["cycles"]


@pytest.mark.parametrize("dim, lanes, bits", [
    (20, 8, (8, 16)), (32, 4, (8,)), (17, 16, (8, 16)), (48, 16, (16,)), (7, 3, (8, 12)),
])
def test_random_and_edge_rows_with_stalls(dim, lanes, bits):
    rng = np.random.default_rng(dim * lanes)
    unit = LayerNorm(dim, lanes, output_bits=bits, param_sets=2)
    x = np.concatenate([_edge_rows(rng, dim), rng.integers(-(1 << 15), 1 << 15, (6, dim)),
                        rng.integers(-300, 300, (4, dim))])
    for eps, stalls in ((1, {}), (int(rng.integers(1, 1 << 20)), {"valid_probability": 0.6, "ready_probability": 0.4})):
        _check(unit, x, eps, _parameters(rng, dim, bits), rng, **stalls)


@pytest.mark.parametrize("dim, lanes", [(7, 3), (20, 8)])
def test_a_rarely_taken_output_keeps_each_rows_statistics(dim, lanes):
    """The output taken one cycle in a hundred: the next rows fill the freed bank and finish their statistics while
    a row's last beats still read its r, S·r and e from the stages before the affine's."""
    rng = np.random.default_rng(dim + 100 * lanes)
    unit = LayerNorm(dim, lanes, output_bits=(8, 16))
    x = np.concatenate([rng.integers(-(1 << 15), 1 << 15, (6, dim)), _edge_rows(rng, dim)[:4]])
    _check(unit, x, 5, _parameters(rng, dim, (8, 16)), rng, ready_probability=0.01)


def test_saturation_and_huge_beta():
    """Outputs pushed past both ends of their range by γ and β, and β at the unit's widest."""
    rng = np.random.default_rng(3)
    dim = 24
    unit = LayerNorm(dim, 8, output_bits=(8, 16))
    beta = np.where(np.arange(dim) % 2, (1 << (BETA_BITS - 1)) - 1, -(1 << (BETA_BITS - 1)))
    outputs = [(np.full(dim, 32767), beta, 12, 8), (np.full(dim, -32767), rng.integers(-1 << 30, 1 << 30, dim), 0, 16)]
    _check(unit, rng.integers(-(1 << 15), 1 << 15, (5, dim)), 1, outputs, rng)


def test_longest_rows_of_every_preset_full_rate():
    """D = 384 (m3vit-small) at 32 lanes, and the cycle cost per row once the pipeline is full."""
    rng = np.random.default_rng(4)
    dim = max(model_preset(name).embed_dim for name in ("m3vit-small-nyud", "m3vit-tiny-cityscapes"))
    unit = LayerNorm(dim, 32, output_bits=(8, 16))
    x = np.concatenate([rng.integers(-(1 << 15), 1 << 15, (6, dim)), _edge_rows(rng, dim)[:3]])
    cycles = _check(unit, x, 7, _parameters(rng, dim, (8, 16)), rng)
    assert cycles < len(x) * 75 + 60          # statistics-bound: at most about 41 cycles a row (equal values)


@pytest.mark.parametrize("dim, lanes", [(192, 16), (192, 1), (32, 4), (48, 2)])
def test_a_row_costs_what_the_cycle_model_says(dim, lanes):
    """Once the pipeline is full a row of typical values costs max(statistics, beats + gap) cycles, the cycle
    model's `LAYERNORM` (the statistics bound at few beats a row, the two banks' at many)."""
    rng = np.random.default_rng(dim + lanes)
    unit = LayerNorm(dim, lanes, output_bits=(8,))
    cycles = [_check(unit, rng.integers(-3000, 3000, (rows, dim)), 7, _parameters(rng, dim, (8,)), rng)
              for rows in (4, 12)]
    statistics, gap, _ = CycleModel.LAYERNORM
    assert abs((cycles[1] - cycles[0]) / 8 - max(statistics, unit.beats + gap)) <= 1, cycles


def test_parameters_out_of_range_are_refused():
    unit = LayerNorm(4, 4)
    with pytest.raises(ValueError, match="gamma of output 0: a value outside 16-bit"):
        unit.params_words([(np.array([1 << 15, 0, 0, 0]), np.zeros(4))])
    with pytest.raises(ValueError, match="beta of output 0: 3 values for D = 4"):
        unit.params_words([(np.zeros(4), np.zeros(3))])
    Fragment.get(unit, None)          # the unit itself elaborates (and is not left unused)


def test_layernorm_verilog_passes_lint():
    unit = LayerNorm.for_model(model_preset("m3vit-tiny-cityscapes"), accelerator_preset("16x16"))
    lint(to_verilog(unit, "layernorm"), "layernorm")
