"""The whole accelerator, run by the real host driver over the Python simulator and Verilator: compiled programs
(up to the whole backbone, every task) bit-exact against the golden model (DRAM latency and random stalls on every
AXI4 channel included), runs back to back, every fault ending the run with its cause and no hang, the scoreboard
holding a GEMM until its slab is in, the EXPERTS loop."""

import dataclasses
import re

import numpy as np
import pytest

from firmware.assembler import Assembler
from firmware.compiler import (AttentionLayout, CompileError, Program, ProgramBuilder, backbone_program,
                               dense_block_program, mlp_program, moe_block_program, patch_embedding_program,
                               qkv_program, route_program)
from firmware.driver import Driver, DriverError
from firmware.run import run_lines
from firmware.image import DramMap, residual_bytes, residual_from_bytes, routes_from_bytes, x_bytes
from firmware.sim import SimulatorTransport, accelerator_for, simulate
from golden.config import ACCELERATOR_PRESETS, MODEL_PRESETS, ConfigError, accelerator_preset, model_preset
from golden.float_model import M3ViT, quantize_model
from golden.images import natural_images
from golden.model import run
from golden.quantize import quantize_image
from golden.quantized import QuantizedModel
from hw.control.accelerator import Accelerator
from hw.control.datapath import UPSAMPLABLE
from hw.compute.gemm.geometry import GemmMode, tiles
from hw.compute.gemm.images import pack_w
from hw.control.isa import ErrorCause, InstructionSet, IsaError, Opcode, Operand, Region, Space, Stationary
from hw.control.memories import onchip_spaces
from hw.control.registers import Control, Status, register
from hw.memory.layout import matrix_layout
from hw.flow.export import lint, to_verilog
from hw.vector.upsample import Upsampler
from hw.sim import simulate as run_simulation

TINY, ACCEL = model_preset("tiny"), accelerator_preset("4x4")
DRAM_BYTES = 1 << 18


@pytest.fixture(scope="module")
def quantized():
    return quantize_model(M3ViT.trained_like(TINY, seed=1), natural_images(TINY, 8, 11))


@pytest.fixture(scope="module")
def golden(quantized):
    images = [quantize_image(quantized, image) for image in natural_images(TINY, 2, 5)]
    return images, [run(quantized, image, 0, intermediates=True).tensors for image in images]


def _run(programs, simulator="pysim", tasks=None, accel=ACCEL, model=TINY, timeout=10_000_000, **dram):
    """Run `programs` one after another on one accelerator (no reset between them), with `tasks` in TASK (0 by
    default), each within `timeout` cycles; their `RunResult`s."""
    async def host(transport):
        driver = Driver(transport, model, accel)
        await driver.connect()
        return [await driver.run(program, task, timeout=timeout)
                for program, task in zip(programs, tasks or [0] * len(programs))]
    return simulate(accelerator_for(model, accel), host, DRAM_BYTES, simulator=simulator, **dram)


def test_patch_embedding_is_bit_exact(quantized, golden):
    """(Under a slow DRAM that stalls: `test_gemm_waits_until_its_slab_is_loaded`.)"""
    images, tensors = golden
    program = patch_embedding_program(quantized, ACCEL, images[0])
    (result,) = _run([program], "verilator", latency=12)
    assert result.ok, result.cause
    assert np.array_equal(residual_from_bytes(result.outputs["embed"], TINY, ACCEL), tensors[0]["embed"])
    counters = result.counters
    loaded = sum(int(line.split("bytes=")[1].split()[0]) for line in program.text.splitlines()
                 if line.startswith("LOAD"))
    assert loaded <= counters["DRAM_READ_BYTES"] <= loaded + 8 * 16 * len(program.words)
    assert counters["DRAM_WRITE_BYTES"] == program.output_bytes
    assert counters["INSTRUCTIONS"] == len(program.words)
    assert 0 < counters["BUSY_GEMM"] < result.cycles and 0 < counters["BUSY_LOADER"] < result.cycles


def test_dense_mlp_and_back_to_back_runs_are_bit_exact(quantized, golden):
    """Block 0's second half (LayerNorm₂, fc1 with GELU into SCRATCH, fc2 added into the residual) on two
    images, then the patch embedding, one run after another without a reset."""
    images, tensors = golden
    programs = [mlp_program(quantized, ACCEL, 0, t["blocks.0.mid"]) for t in tensors]
    programs.append(patch_embedding_program(quantized, ACCEL, images[1]))
    results = _run(programs, "verilator", latency=20, stall=0.2, seed=4)
    assert all(result.ok for result in results), [result.cause for result in results]
    for result, t in zip(results, tensors):
        assert np.array_equal(np.frombuffer(result.outputs["norm2"], np.int8),
                              np.frombuffer(x_bytes(t["blocks.0.norm2"], ACCEL, TINY.num_tokens), np.int8))
        assert np.array_equal(residual_from_bytes(result.outputs["out"], TINY, ACCEL), t["blocks.0.out"])
    assert np.array_equal(residual_from_bytes(results[2].outputs["embed"], TINY, ACCEL), tensors[1]["embed"])
    assert results[0].counters["INSTRUCTIONS"] == len(programs[0].words)   # counters restart every run


def test_attention_operands_and_result_are_bit_exact(quantized, golden):
    """Block 1's attention: LayerNorm₁, qkv in parts from one kept slab (Q; each head's K through the corner-turn
    into the layout of Q·Kᵀ's stationary operand; V in the layout of P·V's), then per head Q·Kᵀ, the softmax and
    P·V with its row scales, and proj into the residual."""
    _, tensors = golden
    t, d, hd, r = TINY.num_tokens, TINY.embed_dim, TINY.head_dim, ACCEL.array_rows
    layout = AttentionLayout.for_model(TINY, ACCEL)
    program = qkv_program(quantized, ACCEL, 1, tensors[1]["blocks.0.out"])
    (result,) = _run([program], "verilator", latency=15, stall=0.25, seed=9)
    assert result.ok, result.cause
    qkv = tensors[1]["blocks.1.qkv"]
    assert result.outputs["q"] == x_bytes(qkv[:, :d], ACCEL, t)
    assert result.outputs["kt"] == b"".join(pack_w(qkv[:, d + h * hd:d + (h + 1) * hd].T, r, r).astype(np.int8)
                                            .tobytes() for h in range(TINY.num_heads))
    v = np.frombuffer(result.outputs["v"], np.int8).reshape(d // r, layout.t_padded, r).transpose(1, 0, 2)
    assert np.array_equal(v.reshape(layout.t_padded, d)[:t], qkv[:, 2 * d:]) and not v[t:].any()
    assert np.array_equal(residual_from_bytes(result.outputs["mid"], TINY, ACCEL), tensors[1]["blocks.1.mid"])


def test_a_whole_dense_block_is_bit_exact_in_verilator(quantized, golden):
    """Block 2 (dense) from its input residual stream: attention and MLP, every instruction on the accelerator."""
    _, tensors = golden
    program = dense_block_program(quantized, ACCEL, 2, tensors[0]["blocks.1.out"])
    (result,) = _run([program], simulator="verilator", latency=10, stall=0.1, seed=11)
    assert result.ok, result.cause
    assert result.outputs["attn_out"] == x_bytes(tensors[0]["blocks.2.attn_out"], ACCEL, TINY.num_tokens)
    # a head's softmax runs beside the next head's Q·Kᵀ (the SCORES halves): not every vector cycle is exposed
    assert result.counters["EXPOSED_VECTOR"] < result.counters["BUSY_VECTOR"]
    assert np.array_equal(residual_from_bytes(result.outputs["mid"], TINY, ACCEL), tensors[0]["blocks.2.mid"])
    assert np.array_equal(residual_from_bytes(result.outputs["out"], TINY, ACCEL), tensors[0]["blocks.2.out"])


def test_raw_product_with_the_stationary_operand_in_scratch(quantized):
    """Attention's operand paths: W from SCRATCH (as Kᵀ and V will be), the raw int32 product into SCORES, ragged
    K and N, the extreme operands."""
    rng = np.random.default_rng(3)
    t, k, n, r = TINY.num_tokens, 7, 17, ACCEL.array_rows
    x, w = rng.integers(-128, 128, (t, k)), rng.integers(-128, 128, (k, n))
    x[0], w[:, 0] = -128, -128
    x[1], w[:, 1] = 127, -128
    builder = ProgramBuilder(quantized, ACCEL)
    offset = builder.place(Region.IMAGE, x_bytes(x, ACCEL, t))
    builder.load(Region.IMAGE, offset, tiles(k, r) * t * r, Space.ACTIVATION, 0)
    weights = pack_w(w, r, r).astype(np.int8).tobytes()
    offset = builder.place(Region.IMAGE, weights)
    builder.load(Region.IMAGE, offset, len(weights), Space.SCRATCH, 100)
    header = bytes(8 * r * tiles(n, r))                       # bias 0
    builder.load(Region.MODEL, builder.place(Region.MODEL, header), len(header), Space.PARAMS, 0)
    builder.emit(Opcode.GEMM, m=t, k_tiles=tiles(k, r), k_last=k % r, n_tiles=tiles(n, r),
                 source=Operand.ACTIVATION, stationary=Stationary.SCRATCH, w_base=100, destination=Space.SCORES, d_stride=t,
                 mode=GemmMode.RAW)
    builder.store("scores", Space.SCORES, 0, t * tiles(n, r) * 4 * r)
    builder.halt()
    (result,) = _run([builder.build()], latency=10, stall=0.2)
    assert result.ok, result.cause
    scores = np.frombuffer(result.outputs["scores"], "<i4").reshape(tiles(n, r), t, r).transpose(1, 0, 2)
    assert np.array_equal(scores.reshape(t, -1)[:, :n], x @ w)


UPSAMPLES = [   # memory, width, tiles, stride, near, far: a pixel a tile, rows apart, far before near, one row
    (Space.SCRATCH, 1, 3, 2, 0, 1),
    (Space.ACTIVATION, 3, 2, 5, 7, 0),
    (Space.RESIDUAL, 2, 3, 2, 0, 6),
    (Space.RESIDUAL, 4, 1, 4, 3, 3),
]


@pytest.mark.parametrize("memory, width, channel_tiles, stride, near, far", UPSAMPLES)
def test_an_upsample_walks_its_tiles_and_rows(quantized, memory, width, channel_tiles, stride, near, far):
    """UPSAMPLE's contract (`StorePath`) beyond the heads' geometry (stride = width, rows a ring apart): for tile
    c, pixels near + c·stride + x and far + c·stride + x in, ¾·near + ¼·far out, under stalls; extremes in."""
    rng = np.random.default_rng(width * 7 + channel_tiles)
    word, bits = onchip_spaces(TINY, ACCEL)[memory].word_bytes, UPSAMPLABLE[memory]
    lanes = 8 * word // bits
    words = max(near, far) + (channel_tiles - 1) * stride + width
    words += -words % (ACCEL.dram_bytes_per_beat // word)
    values = rng.integers(-(1 << bits - 1), 1 << bits - 1, (words, lanes))
    values[near, 0], values[far, 0] = (1 << bits - 1) - 1, -(1 << bits - 1)
    builder = ProgramBuilder(quantized, ACCEL)
    image = values.astype(f"<i{bits // 8}").tobytes()
    builder.load(Region.IMAGE, builder.place(Region.IMAGE, image), len(image), memory, 0)
    length = channel_tiles * 2 * width * word
    builder.emit(Opcode.UPSAMPLE, memory=memory, near=near, far=far, width=width, tiles=channel_tiles,
                 stride=stride, region=Region.OUTPUT, address=builder.output_area("upsampled", length))
    builder.emit(Opcode.SYNC)
    builder.halt()
    (result,) = _run([builder.build()], latency=7, stall=0.3, seed=width, timeout=20_000)
    assert result.ok, result.cause
    unit = Upsampler(lanes, bits, bits)
    unit._MustUse__silence = True
    rows = [values[base + c * stride:][:width] for c in range(channel_tiles) for base in (near, far)]
    expected = np.concatenate([unit.model(n, f) for n, f in zip(rows[::2], rows[1::2])])
    got = np.frombuffer(result.outputs["upsampled"], f"<i{bits // 8}").reshape(-1, lanes)
    assert np.array_equal(got, expected)


def test_routing_of_every_task_back_to_back_and_a_bad_task(quantized):
    """Block 1's LayerNorm₂ with its int16 copy streamed to the router, ROUTE with the task in TASK: the same
    program for task 0, then task 1, then task 2 (outside the model: BAD_TASK, no hang), then task 0 again."""
    image = quantize_image(quantized, natural_images(TINY, 1, 6)[0])
    goldens = [run(quantized, image, task, intermediates=True) for task in range(TINY.num_tasks)]
    program = route_program(quantized, ACCEL, 1, goldens[0].tensors["blocks.1.mid"])
    results = _run([program] * 4, "verilator", tasks=[0, 1, 2, 0], latency=9, stall=0.15, seed=12)
    for result, task in zip(results[:2] + results[3:], (0, 1, 0)):
        assert result.ok, result.cause
        ids, weights = routes_from_bytes(result.outputs["routes"], TINY, ACCEL)
        assert np.array_equal(ids, goldens[task].routing[1].expert_ids)
        assert np.array_equal(weights, goldens[task].routing[1].gate_weights)
        assert result.outputs["norm2"] == x_bytes(goldens[task].tensors["blocks.1.norm2"], ACCEL, TINY.num_tokens)
        assert 0 < result.counters["BUSY_ROUTER"] < result.cycles
    assert results[2].cause is ErrorCause.BAD_TASK


def _echo(quantized, payload: bytes) -> Program:
    """IMAGE → ACTIVATION → OUTPUT: the load and store paths alone."""
    builder = ProgramBuilder(quantized, ACCEL)
    offset = builder.place(Region.IMAGE, payload)
    builder.load(Region.IMAGE, offset, len(payload), Space.ACTIVATION, 0)
    builder.store("echo", Space.ACTIVATION, 0, len(payload))
    builder.halt()
    return builder.build()


def _faulty(quantized, text: str, raw: dict | None = None) -> Program:
    """A program from assembler text; `raw` = {instruction index: a word that replaces it}."""
    asm = Assembler(ProgramBuilder(quantized, ACCEL).isa)
    words = asm.assemble(text)
    for index, word in (raw or {}).items():
        words[index] = word
    return Program(words, bytes(4096), bytes(4096), 4096, text)


def _region_three(quantized) -> int:
    asm = Assembler(ProgramBuilder(quantized, ACCEL).isa)
    word = asm.encode(Opcode.LOAD, bytes=8, memory=Space.ACTIVATION)
    offset = next(o for name, o, _, _ in asm.isa.fields(Opcode.LOAD) if name == "region")
    return word | 3 << offset


_DEPTH = onchip_spaces(TINY, ACCEL)[Space.ACTIVATION].depth
_SCRATCH = onchip_spaces(TINY, ACCEL)[Space.SCRATCH].depth
_PARAMS = onchip_spaces(TINY, ACCEL)[Space.PARAMS]
_HALF = _PARAMS.depth // 2
_SCORES_HALF = onchip_spaces(TINY, ACCEL)[Space.SCORES].depth // 2
FAULTS = [
    ("a PARAMS LOAD across its halves", f"LOAD region=MODEL bytes={2 * _PARAMS.word_bytes} memory=PARAMS "
     f"base={_HALF - 1}\nHALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("a GEMM into SCORES across its halves", f"GEMM m=1 k_tiles=1 k_last=0 n_tiles=2 d_stride={TINY.num_tokens} "
     f"d_base={_SCORES_HALF - 1} destination=SCORES mode=RAW\nHALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("a GEMM's parameters across PARAMS' halves", f"GEMM m=1 k_tiles=1 k_last=0 n_tiles=2 p_base={_HALF - 1} "
     "stationary=WEIGHTS destination=ACTIVATION\nHALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("a zero word", "SYNC\nHALT", {0: 0}, ErrorCause.BAD_OPCODE, 0, {}),
    ("EXPERTS longer than its body buffer", "SYNC\nEXPERTS body=17\nHALT", None, ErrorCause.BAD_OPERAND, 1, {}),
    ("a per-expert LOAD outside EXPERTS", "LOAD region=MODEL bytes=8 memory=ACTIVATION per_expert=1\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("a COMBINE GEMM outside EXPERTS", "GEMM m=1 k_tiles=1 k_last=0 n_tiles=1 destination=RESIDUAL mode=COMBINE "
     "residual=1\nHALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("a COMBINE GEMM that does not add into the residual", f"ROUTE layer=0 tokens={TINY.num_tokens}\n"
     f"LAYERNORM rows={TINY.num_tokens} route=1\nEXPERTS body=1\nGEMM m=1 k_tiles=1 k_last=0 n_tiles=1 "
     f"d_stride={TINY.num_tokens} destination=RESIDUAL mode=COMBINE\nHALT", None, ErrorCause.BAD_OPERAND, 3, {}),
    ("EXPERTS inside an EXPERTS body", f"ROUTE layer=0 tokens={TINY.num_tokens}\nLAYERNORM rows={TINY.num_tokens} "
     "route=1\nEXPERTS body=1\nEXPERTS body=1\nHALT", None, ErrorCause.BAD_OPERAND, 3, {}),
    ("LAYERNORM for the router with no ROUTE", "LAYERNORM rows=3 route=1\nHALT", None, ErrorCause.BAD_OPERAND, 0,
     {}),
    ("SOFTMAX past the last token", f"SOFTMAX rows=3 source={TINY.num_tokens - 1}\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("a transposed GEMM into RESIDUAL", "GEMM m=1 k_tiles=1 k_last=0 n_tiles=1 destination=RESIDUAL transpose=1\n"
     "HALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("a raw GEMM into ACTIVATION", "GEMM m=1 k_tiles=1 k_last=0 n_tiles=1 destination=ACTIVATION mode=RAW\nHALT",
     None, ErrorCause.BAD_OPERAND, 0, {}),
    ("a GEMM with W in SCRATCH into SCRATCH (one port for both)", "GEMM m=1 k_tiles=1 k_last=0 n_tiles=1 "
     "stationary=SCRATCH destination=SCRATCH\nHALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("LAYERNORM past the last token", f"LAYERNORM rows=3 source={TINY.num_tokens - 2}\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("misaligned LOAD", "LOAD region=IMAGE address=4 bytes=8 memory=ACTIVATION\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("LOAD past the memory", f"LOAD region=IMAGE bytes=8 memory=ACTIVATION base={_DEPTH - 1}\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("STORE of half a bus word", "STORE memory=ACTIVATION region=OUTPUT bytes=4\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("misaligned STORE", "SYNC\nSTORE memory=ACTIVATION region=OUTPUT address=4 bytes=64\nHALT", None,
     ErrorCause.BAD_OPERAND, 1, {}),
    ("misaligned UPSAMPLE", "UPSAMPLE memory=SCRATCH width=8 tiles=2 stride=8 region=OUTPUT address=4\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("LOAD from region 3", "SYNC\nLOAD\nHALT", "region3", ErrorCause.BAD_OPERAND, 1, {}),
    ("a gathering GEMM outside EXPERTS", "GEMM m=1 k_tiles=1 k_last=0 n_tiles=1 stationary=WEIGHTS gather=1\n"
     "HALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("DRAM read error", "LOAD region=IMAGE bytes=64 memory=ACTIVATION\nSYNC\nHALT", None, ErrorCause.DRAM_READ,
     None, {"fail_reads": "image"}),
    ("DRAM write error", "STORE memory=ACTIVATION region=OUTPUT bytes=64\nSYNC\nHALT", None,
     ErrorCause.DRAM_WRITE, None, {"fail_writes": "output"}),
    ("DRAM write error in an UPSAMPLE", "UPSAMPLE memory=SCRATCH width=8 tiles=2 stride=8 region=OUTPUT\nSYNC\n"
     "HALT", None, ErrorCause.DRAM_WRITE, None, {"fail_writes": "output"}),
    ("UPSAMPLE from SCORES", "UPSAMPLE memory=SCORES width=4 tiles=1 region=OUTPUT\nHALT", None,
     ErrorCause.UNSUPPORTED, 0, {}),
    ("UPSAMPLE past its memory", f"UPSAMPLE memory=SCRATCH near={_SCRATCH - 3} width=4 tiles=1 region=OUTPUT\n"
     "HALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("an UPSAMPLE whose last tile reads past its memory", f"UPSAMPLE memory=SCRATCH width=4 tiles=2 "
     f"stride={_SCRATCH - 2} region=OUTPUT\nHALT", None, ErrorCause.BAD_OPERAND, 0, {}),
    ("an UPSAMPLE of no pixels", "UPSAMPLE memory=SCRATCH width=0 tiles=1 region=OUTPUT\nHALT", None,
     ErrorCause.BAD_OPERAND, 0, {}),
    ("a 3×3 im2col GEMM whose K tiles are not nine taps", "CONFIG_CONV kernel=1 channel_tiles=2\nGEMM m=1 "
     "k_tiles=17 k_last=0 n_tiles=1 stationary=WEIGHTS im2col=1\nHALT", None, ErrorCause.BAD_OPERAND, 1, {}),
]


@pytest.mark.parametrize("name, text, raw, cause, pc, failing", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_fault_ends_the_run_with_its_cause_and_the_next_run_works(quantized, name, text, raw, cause, pc,
                                                                    failing):
    if raw == "region3":
        raw = {1: _region_three(quantized)}
    program = _faulty(quantized, text, raw)
    payload = bytes(range(256)) * 2
    echo = _echo(quantized, payload)
    layout = Driver(None, TINY, ACCEL).dram_map(program)
    regions = {"image": range(layout.image, layout.image + 4096), "output": range(layout.output, layout.output + 4096)}
    dram = {key: regions[value] for key, value in failing.items()}
    faulty, after = _run([program, echo], "verilator", latency=6, **dram)
    assert faulty.cause is cause
    if pc is not None:
        assert faulty.error_pc == pc
    assert after.ok and after.outputs["echo"] == payload


@pytest.mark.parametrize("reads, stall", [(0, 0.0), (1, 0.3), (3, 0.3), (12, 0.0)])
def test_a_soft_reset_mid_run_returns_to_idle_and_the_next_run_works(quantized, reads, stall):
    """CONTROL.soft_reset `reads` STATUS reads into a run: as the program is fetched, as a LOAD and a STORE move
    their bursts, while a GEMM computes. STATUS reads idle, not done, no error; the DRAM models (which raise on a
    broken AXI4 rule) see every burst in flight end by the rules, and the next run is right."""
    tiles_d = tiles(TINY.embed_dim, ACCEL.array_rows)
    program = _faulty(quantized, "LOAD region=IMAGE bytes=2048 memory=SCRATCH\n"
                                 "STORE region=OUTPUT bytes=2048 memory=ACTIVATION\n"
                                 f"GEMM m={TINY.num_tokens} k_tiles={tiles_d} k_last=0 n_tiles={tiles_d} "
                                 "stationary=SCRATCH destination=ACTIVATION\nHALT")
    payload = bytes(range(256))
    echo = _echo(quantized, payload)
    status = register("STATUS").offset

    async def host(transport):
        driver = Driver(transport, TINY, ACCEL)
        await driver.connect()
        await driver.start(program)
        busy = [Status.from_bits(await transport.read32(status)).busy for _ in range(reads)]
        await transport.write32(register("CONTROL").offset, Control.const({"soft_reset": 1}).as_value().value)
        after_reset = Status.from_bits(await transport.read32(status))
        return busy, after_reset, await driver.run(echo)

    busy, after_reset, result = simulate(accelerator_for(TINY, ACCEL), host, DRAM_BYTES, latency=5, stall=stall,
                                         seed=reads)
    assert busy == [1] * reads, "the run ended before the reset: make it longer"
    assert (after_reset.busy, after_reset.done, after_reset.error) == (0, 0, 0)
    assert result.ok and result.outputs["echo"] == payload


def test_experts_with_no_active_expert_skip_their_body(quantized):
    """EXPERTS with no ROUTE before it has no expert to run: its body (two instructions that would fault if they
    issued) is dropped, and the program goes on after it."""
    payload = bytes(range(64))
    echo = _echo(quantized, payload)
    builder = ProgramBuilder(quantized, ACCEL)

    def body():
        builder.emit(Opcode.GEMM, m=1, k_tiles=1, k_last=0, n_tiles=1, gather=1)
        builder.emit(Opcode.LOAD, bytes=8, memory=Space.ACTIVATION, per_expert=1)
        return 0
    builder.experts(body)
    program = builder.build()
    program = Program(program.words[:3] + echo.words, echo.model, echo.image, echo.output_bytes, outputs=echo.outputs)
    (result,) = _run([program], latency=5)
    assert result.ok and result.outputs["echo"] == payload
    assert result.counters["INSTRUCTIONS"] == 1 + len(echo.words)


def test_the_compiler_refuses_an_experts_body_longer_than_the_buffer(quantized):
    builder = ProgramBuilder(quantized, ACCEL)

    def body():
        for _ in range(builder.isa.body_depth + 1):
            builder.emit(Opcode.SYNC)
        return 0
    with pytest.raises(CompileError, match=f"body buffer holds {builder.isa.body_depth}"):
        builder.experts(body)


@pytest.mark.parametrize("model,accel", [("m3vit-tiny-cityscapes", "4x4"), ("m3vit-tiny-cityscapes", "8x8"),
                                         ("m3vit-tiny-cityscapes", "16x16"), ("m3vit-small-nyud", "16x16")])
def test_the_experts_body_buffer_holds_the_body_the_configuration_compiles_to(model, accel):
    """The body buffer is sized from the configuration (`experts_body_depth`): an expert's fc1 and fc2 in 5 slabs
    each on 4×4 (23 instructions) and in 4 on m3vit-small at 16×16 (19) fit, where a fixed 16 refused both."""
    model, accel = model_preset(model), accelerator_preset(accel)
    program = backbone_program(QuantizedModel.blank(model), accel, np.zeros((model.in_channels, *model.image_size),
                                                                             np.int8))
    bodies = [int(line.split("body=")[1].split()[0]) for line in run_lines(program) if line.startswith("EXPERTS")]
    depth = InstructionSet(model, accel).body_depth
    assert len(bodies) == len(model.moe_blocks) and max(bodies) <= depth < max(bodies) + 16


# what the top level refuses of the presets, and the words naming why
REFUSED = {("tiny", "32x32"): "the head dimension (16) a multiple of the array's columns",
           ("m3vit-small-nyud", "4x4"): "the on-chip memories are too deep",
           ("m3vit-small-nyud", "8x8"): "smaller than the narrowest slab",
           ("m3vit-small-pascal", "4x4"): "the on-chip memories are too deep",
           ("m3vit-small-pascal", "8x8"): "smaller than the narrowest slab"}


@pytest.mark.parametrize("accel", ACCELERATOR_PRESETS)
@pytest.mark.parametrize("model", MODEL_PRESETS)
def test_every_preset_pair_compiles_its_whole_inference_or_is_refused_by_name(model, accel):
    """Every model preset on every accelerator preset: the whole inference (the backbone, then every task's head)
    compiles, or the configuration is refused up front with an error that names why. (The tiny model's
    classifier ring once overflowed RESIDUAL on the default 16×16, and on 32×32 its 16-wide heads split qkv's Kᵀ
    tiles: both were tracebacks from deep inside the compiler.)"""
    config = model_preset(model)

    def compile_inference():
        image = np.zeros((config.in_channels, *config.image_size), np.int8)
        return backbone_program(QuantizedModel.blank(config), accelerator_preset(accel), image, heads=True,
                                listing=False)
    if (model, accel) in REFUSED:
        with pytest.raises((ConfigError, IsaError), match=re.escape(REFUSED[model, accel])):
            compile_inference()
    else:
        program = compile_inference()
        assert sorted(program.heads) == list(range(config.num_tasks))


def _check_backbone(result, golden, accel=ACCEL, model=TINY):
    assert result.ok, (result.cause, result.error_pc)
    assert np.array_equal(residual_from_bytes(result.outputs["out"], model, accel), golden.backbone)
    for block, routing in golden.routing.items():
        ids, weights = routes_from_bytes(result.outputs[f"routes.{block}"], model, accel)
        assert np.array_equal(ids, routing.expert_ids) and np.array_equal(weights, routing.gate_weights)


def test_an_moe_block_is_bit_exact_for_every_task_under_stalls(quantized):
    """Block 1 (experts) from its input: attention, LayerNorm₂ streamed to the router, EXPERTS over the task's
    active experts (each expert's slabs, parameters and hidden scale loaded once, fc1 on its gathered tokens, fc2's
    gate-weighted rows added into their tokens' residual rows); every task, back to back, with DRAM stalls on
    every channel."""
    image = quantize_image(quantized, natural_images(TINY, 1, 8)[0])
    goldens = [run(quantized, image, task, intermediates=True) for task in range(TINY.num_tasks)]
    programs = [moe_block_program(quantized, ACCEL, 1, golden.tensors["blocks.0.out"]) for golden in goldens]
    results = _run(programs, simulator="verilator", tasks=range(TINY.num_tasks), latency=11, stall=0.2, seed=5)
    for result, golden in zip(results, goldens):
        assert result.ok, (result.cause, result.error_pc)
        assert np.array_equal(residual_from_bytes(result.outputs["out"], TINY, ACCEL), golden.tensors["blocks.1.out"])
        ids, weights = routes_from_bytes(result.outputs["routes"], TINY, ACCEL)
        assert np.array_equal(ids, golden.routing[1].expert_ids)
        body = len(golden.routing[1].active_experts) - 1       # the body's replays, one per further expert
        assert result.counters["INSTRUCTIONS"] == len(programs[0].words) + 7 * body


def test_the_backbone_is_bit_exact_for_every_task_back_to_back_in_verilator(quantized):
    """The whole backbone (patch embedding, dense and MoE blocks) from one program, every task one after another
    on one accelerator, a task outside the model in between (BAD_TASK at the first ROUTE, done, no hang)."""
    image = quantize_image(quantized, natural_images(TINY, 1, 9)[0])
    goldens = [run(quantized, image, task) for task in range(TINY.num_tasks)]
    program = backbone_program(quantized, ACCEL, image)
    tasks = [*range(TINY.num_tasks), TINY.num_tasks, 0]
    results = _run([program] * len(tasks), simulator="verilator", tasks=tasks, latency=10)
    for result, task in zip(results, tasks):
        if task < TINY.num_tasks:
            _check_backbone(result, goldens[task])
        else:
            assert result.cause is ErrorCause.BAD_TASK
    loaded = results[0].counters["DRAM_READ_BYTES"]
    assert loaded < len(program.model) + len(program.image) + 16 * len(program.words)  # inactive experts stay in DRAM


@pytest.mark.long(80)
def test_the_backbone_is_bit_exact_with_six_options_off_their_defaults():
    """Six options off their defaults in one design, under stalls, the whole backbone of every task back to back
    in Verilator, bit-exact:
    - a weight feed of two array rows a cycle: slab tiles load in half the cycles, and SCRATCH sits in two banks
      so that attention's Kᵀ and V (the stationary operand there) come two rows a read too;
    - slab buffers of 1.5 KiB split every matrix past qkv into slabs, an expert's fc2 (64 × 32, 2 KiB) into two:
      each slab's COMBINE GEMM adds into the residual from its own first N tile (`d_base`);
    - the engine's drain has two lanes, half the columns: every output mode (GELU, COMBINE, the per-row scales of
      P·V) a row in two chunks;
    - token blocks of 5 query rows for attention's 17 tokens: per head Q·Kᵀ, the softmax and P·V block by block
      (5, 5, 5, 2 rows), eight blocks alternating between SCORES' halves, each half only a block's rows; the
      other products on every token at once;
    - PARAMS on a 128-bit bus: a lane's write enable covers two columns;
    - a router holding two MoE layers' weights (`router_weights_resident` off) for three MoE layers: each layer's
      weights load into set layer mod 2 while the layer before routes; every router weight read once per run,
      none at a start-up; a ROUTE past the model's MoE layers refused."""
    model = dataclasses.replace(TINY, moe_blocks=(1, 2, 3))
    accel = ACCEL.replace(weight_feed_bytes=2 * ACCEL.array_cols, weight_buffer_bytes=1536, drain_lanes=2,
                          dram_data_width=128, token_block=5, router_weights_resident=False)
    fc2 = matrix_layout(model.expert_hidden, model.embed_dim, accel)
    assert [slab.first_tile for slab in fc2.slabs] == [0, 6]
    assert onchip_spaces(model, accel)[Space.SCORES].depth == 2 * 5 * -(-model.num_tokens // accel.array_cols)
    assert accel.router_layers_held(model) == 2 and onchip_spaces(model, accel)[Space.ROUTER].depth * 3 \
        == onchip_spaces(model, ACCEL)[Space.ROUTER].depth * 2
    quantized = quantize_model(M3ViT.trained_like(model, seed=1), natural_images(model, 8, 11))
    image = quantize_image(quantized, natural_images(model, 1, 9)[0])
    program = backbone_program(quantized, accel, image)
    softmaxes = [line for line in program.text.splitlines() if line.startswith("SOFTMAX")]
    assert [int(line.split("rows=")[1].split()[0]) for line in softmaxes] == [5, 5, 5, 2] * model.num_heads \
        * model.depth
    assert program.entry == 0        # no start-up: nothing stays resident
    assembler = ProgramBuilder(quantized, accel).assembler
    loads = [assembler.decode(word) for word in program.words]
    loads = [load.fields for load in loads if load.opcode is Opcode.LOAD and load.fields["memory"] is Space.ROUTER]
    assert [load["base"] * 2 // onchip_spaces(model, accel)[Space.ROUTER].depth for load in loads] == [0, 1, 0]
    assert len({load["address"] for load in loads}) == 3       # each layer's weights once, each from its own place
    route = next(i for i, word in enumerate(program.words) if assembler.decode(word).opcode is Opcode.ROUTE)
    words = list(program.words)
    words[route] = assembler.encode(Opcode.ROUTE, layer=len(model.moe_blocks), tokens=model.num_tokens)
    bad = dataclasses.replace(program, words=words)
    tasks = [*range(model.num_tasks), 0]
    results = _run([program] * len(tasks) + [bad], "verilator", tasks=tasks + [0], accel=accel, model=model,
                   latency=10, stall=0.2, seed=3)
    for result, task in zip(results, tasks):
        _check_backbone(result, run(quantized, image, task), accel, model)
    assert (results[-1].cause, results[-1].error_pc) == (ErrorCause.BAD_OPERAND, route)


def test_driver_refuses_hardware_of_another_configuration():
    async def host(transport):
        await Driver(transport, TINY, accelerator_preset("8x8")).connect()

    with pytest.raises(DriverError, match="CONFIG_HASH"):
        simulate(Accelerator.for_model(TINY, ACCEL), host, DRAM_BYTES)


def test_driver_places_a_program_once_and_a_task_switch_writes_task_only(quantized):
    """The driver against a recording transport (a run ends at once, STATUS done): placing writes DRAM and the
    region registers and runs the start-up from the program's first word; runs of any task after it write TASK,
    PROGRAM_ADDR (the entry) and CONTROL, and no DRAM."""
    import asyncio
    from hw.control.registers import REGISTERS, Status
    names = {reg.offset: reg.name for reg in REGISTERS}

    class Recording:
        def __init__(self):
            self.writes, self.dram, self.cycles = [], 0, 0

        async def write32(self, offset, value):
            self.writes.append((names[offset], value))

        async def read32(self, offset):
            return 1 << Status["done"].offset if names[offset] == "STATUS" else 0

        async def write_dram(self, address, data):
            self.dram += 1

        upload = write_dram

        async def read_dram(self, address, length):
            return bytes(length)

        async def wait_irq(self, cycles):
            self.cycles += 5
            return 5

    image = quantize_image(quantized, natural_images(TINY, 1, 2)[0])
    program = backbone_program(quantized, ACCEL, image)
    transport = Recording()
    driver = Driver(transport, TINY, ACCEL)
    base = driver.dram_map(program).program

    async def host():
        await driver.run(program, 1)
        placing, transport.writes, placed_dram = transport.writes, [], transport.dram
        await driver.run(program, 0)
        return placing, placed_dram

    placing, placed_dram = asyncio.run(host())
    assert placed_dram == 4 and transport.dram == 4
    assert [name for name, _ in placing[:3]] == ["MODEL_ADDR", "IMAGE_ADDR", "OUTPUT_ADDR"]
    assert placing[3:5] == [("PROGRAM_ADDR", base), ("CONTROL", Driver.START_WITH_IRQ)]        # the start-up
    assert transport.writes == [("TASK", 0), ("PROGRAM_ADDR", base + 16 * program.entry),
                                ("CONTROL", Driver.START_WITH_IRQ)]
    # an entry off the bus words is refused before anything is written (the compiler pads the start-up)
    wide = ACCEL.replace(dram_data_width=256)
    padded = backbone_program(quantized, wide, image)
    assert padded.entry * 16 % 32 == 0 and padded.text.split("\n")[padded.entry - 1] == "HALT"
    transport.writes, driver = [], Driver(transport, TINY, wide)
    with pytest.raises(DriverError, match="not aligned to the 32-byte bus"):
        asyncio.run(driver.start(dataclasses.replace(padded, entry=padded.entry - 1)))
    starts = [value for name, value in transport.writes if name in ("PROGRAM_ADDR", "TASK")]
    assert starts == [driver.dram_map(padded).program]            # the placing's start-up only


def test_a_program_address_off_the_bus_words_ends_the_run_at_once(quantized):
    """PROGRAM_ADDR not bus-aligned: BAD_OPERAND at instruction 0 with nothing fetched, and the next run works."""
    payload = bytes(range(64))
    echo = _echo(quantized, payload)

    async def host(transport):
        driver = Driver(transport, TINY, ACCEL)
        await driver.connect()
        await driver.place(echo)
        await driver._start(driver.dram_map(echo).program + 4)
        return await driver.finish(echo), await driver.run(echo)

    bad, good = simulate(accelerator_for(TINY, ACCEL), host, DRAM_BYTES, simulator="verilator")
    assert bad.cause is ErrorCause.BAD_OPERAND and bad.error_pc == 0 and bad.counters["INSTRUCTIONS"] == 0
    assert good.ok and good.outputs["echo"] == payload


def test_gemm_waits_until_its_slab_is_loaded(quantized, golden):
    """With a slow DRAM that stalls on every channel, the GEMM right behind its slab's LOAD is held by the
    scoreboard until the buffer is full: no assertion fails (a take sent before the buffer is full is one the loader
    does not accept: `Assertion violated: the unit did not take the controller's take command`), the patch embedding
    is bit-exact, and the engine sat idle while the loader was busy."""
    images, tensors = golden
    program = patch_embedding_program(quantized, ACCEL, images[0])
    (result,) = _run([program], "verilator", latency=60, stall=0.3, seed=3)
    assert result.ok, result.cause
    assert np.array_equal(residual_from_bytes(result.outputs["embed"], TINY, ACCEL), tensors[0]["embed"])
    assert result.counters["EXPOSED_LOADER"] > 0


@pytest.mark.parametrize("accel, parameter", [("4x8", "array_rows × array_cols"), ("3x3", "array_rows × array_cols")])
def test_top_level_refuses_what_it_cannot_wire(accel, parameter):
    with pytest.raises(ConfigError, match=parameter.replace("×", ".")):
        Accelerator.for_model(TINY, accelerator_preset(accel))


def test_top_level_refuses_a_weight_feed_of_three_rows():
    with pytest.raises(ConfigError, match="weight_feed_bytes.*power-of-two number of array rows"):
        Accelerator.for_model(TINY, ACCEL.replace(weight_feed_bytes=3 * ACCEL.array_cols))


def test_a_dram_too_small_for_the_program_is_named(quantized):
    program = _echo(quantized, bytes(64))

    async def host(transport):
        return await Driver(transport, TINY, ACCEL).run(program)

    with pytest.raises(ValueError, match="the simulated DRAM holds 4096 bytes"):
        simulate(Accelerator.for_model(TINY, ACCEL), host, 4096)


def test_dram_map_keeps_regions_apart():
    layout = DramMap.for_program(100, 5000, 10, 3000, 128)
    assert layout.program == 0 < layout.model < layout.image < layout.output < layout.size
    assert all(address % 4096 == 0 for address in (layout.model, layout.image, layout.output, layout.size))
    assert layout.model >= 100 + 128 and layout.image - layout.model >= 5000


@pytest.mark.long(30)
def test_verilog_elaborates_and_lints():
    lint(to_verilog(Accelerator.for_model(TINY, ACCEL), "accelerator"), "accelerator")


@pytest.mark.long(70)
def test_verilator_agrees_with_the_python_simulator_cycle_for_cycle(quantized, golden):
    """Block 0's MLP (LayerNorm₂, fc1 with GELU, fc2 added into the residual) in both simulators through the same
    driver and the same DRAM timing (in Python; native in Verilator): the same cycles, counters, bytes, and the
    same cycle for each instruction's issue (the `issued` trace the cycle model is measured by). Watched cycle by
    cycle in Python: fc2's column parameters go into the PARAMS half fc1 does not read, the load path writing
    PARAMS while the engine runs fc1. (A wider bus carries several columns' parameters a beat, a lane's write
    enable covering them: the whole backbone runs bit-exact on a 128-bit bus in
    `test_the_backbone_is_bit_exact_with_six_options_off_their_defaults`.)"""
    _, tensors = golden
    program = mlp_program(quantized, ACCEL, 0, tensors[0]["blocks.0.mid"])
    count = len(program.words)
    accelerator = accelerator_for(TINY, ACCEL)
    seen = {"overlapped": 0}

    class Watching(SimulatorTransport):
        async def tick(self):
            if self.ctx.get(accelerator.load_path.params.en) and self.ctx.get(accelerator.controller.gemm_active):
                seen["overlapped"] += 1
            await super().tick()

    results = []

    async def host(transport):
        return await Driver(transport, TINY, ACCEL).run(program, issues=count)

    async def testbench(ctx):
        results.append(await host(Watching(ctx, accelerator, DRAM_BYTES, latency=9)))

    run_simulation(accelerator, testbench)
    results.append(simulate(accelerator, host, DRAM_BYTES, simulator="verilator", latency=9))
    assert results[0].ok and results[1].ok and seen["overlapped"] > 0
    assert results[0].cycles == results[1].cycles and results[0].counters == results[1].counters
    assert results[0].outputs == results[1].outputs
    assert np.array_equal(residual_from_bytes(results[1].outputs["out"], TINY, ACCEL), tensors[0]["blocks.0.out"])
    trace = results[0].issue_cycles
    assert trace == results[1].issue_cycles and len(trace) == count == results[0].counters["INSTRUCTIONS"]
    assert trace == sorted(trace) and trace[-1] < results[0].cycles


def test_a_norms_load_during_a_product_leaves_its_parameters_alone(quantized, golden):
    """LayerNorm₂'s γ/β LOADed while the projection still reads its column parameters from PARAMS (the order the
    compiler emits): the product and the LayerNorm after it are bit-exact. (The norm path's γ/β port once wrote
    PARAMS too.)"""
    from golden.model import _norm, linear
    _, tensors = golden
    mid = tensors[0]["blocks.1.mid"]
    builder = ProgramBuilder(quantized, ACCEL)
    builder.load(Region.IMAGE, builder.place(Region.IMAGE, residual_bytes(mid, ACCEL)),
                 len(residual_bytes(mid, ACCEL)), Space.RESIDUAL, 0)
    builder.layernorm(["blocks.1.norm1"], rows=TINY.num_tokens, source=0, destination=0)
    builder.linear("blocks.1.proj", source=Operand.ACTIVATION, x_base=0, m=TINY.num_tokens,
                   outputs=[builder.tokens_out(Space.RESIDUAL, 0)], mode=GemmMode.INT16, residual=True)
    builder.layernorm(["blocks.1.norm2"], rows=TINY.num_tokens, source=0, destination=0)
    builder.store("out", Space.RESIDUAL, 0, len(residual_bytes(mid, ACCEL)))
    builder.store("norm2", Space.ACTIVATION, 0, TINY.num_tokens * TINY.embed_dim)
    builder.halt()
    (result,) = _run([builder.build()], "verilator", latency=7)
    (x8,) = _norm(mid, quantized, ("blocks.1.norm1", 8))
    out = np.clip(mid.astype(np.int64) + linear(x8, quantized, "blocks.1.proj", 16), -32768, 32767)
    (norm2,) = _norm(out, quantized, ("blocks.1.norm2", 8))
    assert result.ok
    assert np.array_equal(residual_from_bytes(result.outputs["out"], TINY, ACCEL), out)
    assert result.outputs["norm2"] == x_bytes(norm2, ACCEL, TINY.num_tokens)
