"""The instruction set, the host registers, the assembler and the generated C header."""

import enum
import re
import shutil
import subprocess

import numpy as np
import pytest
from amaranth.lib import data

from firmware.assembler import INSTRUCTION_BYTES, Assembler, AssemblerError
from firmware.header import c_header
from golden.config import ACCELERATOR_PRESETS, MODEL_PRESETS, accelerator_preset, config_hash, model_preset
from hw.control.isa import (INSTRUCTION_BITS, MEANINGS, OPCODE_BITS, InstructionSet, IsaError, Opcode, Operand,
                            Region, Space)
from hw.control.registers import REGISTER_BYTES, REGISTERS
from m3vit.cli import main

TINY, SMALL = model_preset("tiny"), model_preset("m3vit-small-nyud")
# m3vit-small on 4×4 (1,201 tokens, 5 MiB on chip a word of four bytes at a time) has no room in an instruction
CONFIGS = [(model, accel) for model in MODEL_PRESETS for accel in ACCELERATOR_PRESETS
           if not (model.startswith("m3vit-small") and accel == "4x4")]


def _isa(model="tiny", accel="4x4"):
    return InstructionSet(model_preset(model), accelerator_preset(accel))


@pytest.mark.parametrize("model,accel", CONFIGS)
def test_fields_tile_the_instruction_without_overlap(model, accel):
    isa = _isa(model, accel)         # every preset fits
    for opcode in Opcode:
        used = 0
        for name, offset, width, _ in isa.fields(opcode):
            mask = ((1 << width) - 1) << offset
            assert offset >= OPCODE_BITS and offset + width <= INSTRUCTION_BITS, (opcode, name)
            assert not used & mask, (opcode, name)
            used |= mask
        fields = {name.split("[")[0] for name, *_ in isa.fields(opcode)}
        assert fields == set(MEANINGS.get(opcode, {})), f"{opcode.name}: every field has its meaning documented"


def _random_fields(isa, opcode, rng, extreme=None):
    values = {}
    for name, _, width, shape in isa.fields(opcode):
        if isinstance(shape, type) and issubclass(shape, enum.Enum):
            members = list(shape)
            values[name] = members[0 if extreme == "low" else -1 if extreme == "high" else rng.integers(len(members))]
        else:
            values[name] = 0 if extreme == "low" else (1 << width) - 1 if extreme == "high" \
                else int(rng.integers(0, 1 << width))
    return values


def _field_of(view, name: str):
    """Field `name` (`a`, `a[1]`) of a `data.Const` view, as an int or enumeration member."""
    head, _, index = name.partition("[")
    value = getattr(view, head)
    return value[int(index.rstrip("]"))] if index else value


@pytest.mark.parametrize("model,accel", [("tiny", "4x4"), ("m3vit-tiny-cityscapes", "16x16"),
                                         ("m3vit-small-nyud", "8x8")])
def test_encode_decode_and_text_round_trip(model, accel):
    isa = _isa(model, accel)
    asm = Assembler(isa)
    rng = np.random.default_rng(14)
    words, instructions = [], []
    for opcode in Opcode:
        for extreme in ("low", "high", None, None, None):
            fields = _random_fields(isa, opcode, rng, extreme)
            word = asm.encode(opcode, **fields)
            assert 0 <= word < 1 << INSTRUCTION_BITS and word & 0xF == opcode.value
            decoded = asm.decode(word)
            assert decoded.opcode is opcode and decoded.fields == fields
            # The layout's own view reads the same fields: the encoder's offsets are the layout's.
            view = data.Const(isa.layout, word)
            assert view.opcode == opcode
            for name, value in fields.items():
                assert _field_of(getattr(view.operands, opcode.name.lower()), name) == value, name
            words.append(word)
            instructions.append(decoded)
    text = asm.disassemble(words)
    assert asm.assemble(text) == words
    assert text.splitlines() == [str(i) for i in instructions]
    program = asm.program_bytes(words)
    assert len(program) == INSTRUCTION_BYTES * len(words)
    assert int.from_bytes(program[INSTRUCTION_BYTES:2 * INSTRUCTION_BYTES], "little") == words[1]


def test_assembler_text_form():
    asm = Assembler(_isa())
    text = """
    # a comment line
    CONFIG_GELU multiplier=0x4000 shift=14     # trailing comment
    gemm m=17 mode=gelu source=SCRATCH destination=2 residual=1
    HALT
    """
    config, gemm, halt = asm.assemble(text)
    assert asm.decode(config).fields == {"multiplier": 0x4000, "shift": 14}
    fields = asm.decode(gemm).fields
    assert fields["m"] == 17 and fields["mode"].name == "GELU" and fields["source"] is Operand.SCRATCH
    assert fields["destination"] is Space.SCRATCH and fields["k_tiles"] == 0
    assert asm.decode(halt).opcode is Opcode.HALT


@pytest.mark.parametrize("line,message", [
    ("GEMM m=32", "line 2: GEMM m = '32': must be an integer from 0 to 31 (5 bits)"),
    ("GEMM m=-1", "must be an integer from 0 to 31"),
    ("NOPE", "line 2: 'NOPE' is not an instruction"),
    ("GEMM x=1", "GEMM has no field 'x'"),
    ("GEMM mode=BAR", "GEMM mode = 'BAR': not one of INT8"),
    ("LOAD memory=12", "LOAD memory = '12': not one of RESIDUAL"),
    ("LOAD region=OUTPUT bytes=1.5", "LOAD bytes = '1.5': not an integer"),
    ("GEMM m", "'m' is not name=value"),
    ("GEMM m=1 m=2", "m given twice"),
    ("HALT now=1", "HALT has no field 'now'; its fields: none"),
])
def test_assembler_errors_name_the_line_and_field(line, message):
    with pytest.raises(AssemblerError, match=re.escape(message)):
        Assembler(_isa()).assemble("SYNC\n" + line)


@pytest.mark.parametrize("word,message", [(0, "opcode 0 is not an instruction"),
                                          (1 << 128, "is not a 128-bit instruction word"),
                                          (-1, "is not a 128-bit instruction word")])
def test_decode_refuses_what_is_no_instruction(word, message):
    with pytest.raises(AssemblerError, match=message):
        Assembler(_isa()).decode(word)


def test_encode_takes_python_values():
    asm = Assembler(_isa())
    word = asm.encode(Opcode.LOAD, region=Region.IMAGE, address=64, bytes=4096, memory=Space.SCRATCH)
    assert asm.decode(word).fields["region"] is Region.IMAGE
    with pytest.raises(AssemblerError, match="must be an integer"):
        asm.encode(Opcode.LOAD, per_expert=True)


def test_registers_are_word_aligned_unique_and_fit_their_fields():
    offsets = [reg.offset for reg in REGISTERS]
    assert offsets == sorted(set(offsets)) and all(o % REGISTER_BYTES == 0 for o in offsets)
    assert len({reg.name for reg in REGISTERS}) == len(REGISTERS)
    for reg in REGISTERS:
        assert reg.access in ("ro", "rw", "w1")
        assert reg.layout is None or reg.layout.size <= 32


def test_config_hash_names_the_configuration():
    a, b = accelerator_preset("4x4"), accelerator_preset("8x8")
    assert config_hash(TINY, a) == config_hash(model_preset("tiny"), accelerator_preset("4x4"))
    hashes = {config_hash(TINY, a), config_hash(TINY, b), config_hash(SMALL, a), config_hash(TINY, a.replace(
        dram_outstanding=a.dram_outstanding + 1))}
    assert len(hashes) == 4 and all(0 <= h < 1 << 32 for h in hashes)
    # the same hardware however it is named or its query blocks written; blocks of fewer rows are other hardware
    tokens = TINY.num_tokens
    assert a.token_block > tokens and config_hash(TINY, a) == config_hash(
        TINY.replace(name="renamed"), a.replace(name="renamed", token_block=None)) == config_hash(
        TINY, a.replace(token_block=tokens))
    assert config_hash(TINY, a.replace(token_block=tokens - 1)) != config_hash(TINY, a)


_C_ENCODER = r"""
#include <stdio.h>
#include <stdint.h>
#include "m3vit.h"
#define SET(op, field, value) m3vit_set_field(insn, M3VIT_##op##_##field##_OFFSET, M3VIT_##op##_##field##_WIDTH, value)
int main(void)
{
    uint32_t insn[4] = {0, 0, 0, 0};
    m3vit_set_field(insn, M3VIT_OPCODE_OFFSET, M3VIT_OPCODE_WIDTH, M3VIT_OP_GEMM);
    %s
    printf("%%08x%%08x%%08x%%08x\n", insn[3], insn[2], insn[1], insn[0]);
    printf("%%08x %%u %%u\n", M3VIT_CONFIG_HASH, M3VIT_REG_TASK, M3VIT_STATUS_DONE_SHIFT);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("model,accel", [("tiny", "4x4"), ("m3vit-tiny-cityscapes", "16x16")])
def test_c_header_compiles_and_packs_as_the_assembler(model, accel, tmp_path):
    isa = _isa(model, accel)
    m, a = model_preset(model), accelerator_preset(accel)
    (tmp_path / "m3vit.h").write_text(c_header(m, a))
    rng = np.random.default_rng(5)
    fields = _random_fields(isa, Opcode.GEMM, rng)
    fields["mode"] = type(fields["mode"])["GELU"]
    sets = "\n    ".join(f"SET(GEMM, {name.upper()}, {int(getattr(value, 'value', value))}u);"
                         for name, value in fields.items())
    (tmp_path / "encode.c").write_text(_C_ENCODER % sets)
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", str(tmp_path / "encode"),
                    str(tmp_path / "encode.c")], check=True, cwd=tmp_path)
    lines = subprocess.run([str(tmp_path / "encode")], check=True, capture_output=True, text=True).stdout.split("\n")
    assert int(lines[0], 16) == Assembler(isa).encode(Opcode.GEMM, **fields)
    hash_text, task, done = lines[1].split()
    registers = {reg.name: reg for reg in REGISTERS}
    assert int(hash_text, 16) == config_hash(m, a)
    assert int(task) == registers["TASK"].offset and int(done) == registers["STATUS"].layout["done"].offset


def test_header_command(tmp_path):
    out = tmp_path / "accel.h"
    assert main(["header", "--preset", "tiny", "--accel", "4x4", "-o", str(out)]) == 0
    assert f"0x{config_hash(TINY, accelerator_preset('4x4')):08X}u" in out.read_text()


def test_a_configuration_too_deep_for_128_bits_is_refused_by_name():
    huge = model_preset("m3vit-small-nyud").replace(image_size=(1024, 2048))    # 8,193 tokens
    with pytest.raises(IsaError, match=r"GEMM needs \d+ operand bits .* \(25-bit addresses\) for a GEMM of up to "
                                       r"8193 rows"):
        InstructionSet(huge, accelerator_preset("4x4"))
    with pytest.raises(IsaError, match=r"GEMM needs 126 operand bits for m3vit-small-nyud on 4x4"):
        InstructionSet(SMALL, accelerator_preset("4x4"))


def test_header_command_refuses_a_bad_configuration(tmp_path, capsys):
    assert main(["header", "--accel", "5x0", "-o", str(tmp_path / "a.h")]) == 2
    assert "accelerator preset" in capsys.readouterr().err
    assert not (tmp_path / "a.h").exists()
