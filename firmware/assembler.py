"""Encoder, decoder, assembler and disassembler of the instruction set (`hw.control.isa`).

`Assembler(isa)` turns instructions into 128-bit words and back, each field at the bit offset and width the ISA's
own `lib.data` layout gives it (`InstructionSet.fields`, read once; packing through the layout's `const` on every
instruction would cost a whole program seconds):
- `encode(opcode, **fields)` → int, `decode(word)` → `Instruction`;
- `assemble(text)` → [int], `disassemble(words)` → text, one instruction per line:
  `GEMM m=129 k_tiles=12 k_last=0 ... source=ACTIVATION mode=INT8` (fields by name in any order, omitted
  ones 0, enumerations by name, `#` starts a comment); `disassemble` writes every field, so
  `assemble(disassemble(w)) == w`;
- `program_bytes(words)`: the program as the controller fetches it, 16 bytes per instruction, little-endian.
Every error names the line and the field.
"""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass, field

from hw.control.isa import INSTRUCTION_BITS, OPCODE_BITS, InstructionSet, Opcode

__all__ = ["Assembler", "AssemblerError", "Instruction", "INSTRUCTION_BYTES"]

INSTRUCTION_BYTES = INSTRUCTION_BITS // 8
_OPCODES = {opcode.value: opcode for opcode in Opcode}


class AssemblerError(ValueError):
    """An instruction that the instruction set cannot encode; the message names the line and the field."""


@dataclass(frozen=True)
class Instruction:
    opcode: Opcode
    fields: dict = field(default_factory=dict)

    def __str__(self):
        operands = " ".join(f"{name}={_text(value)}" for name, value in self.fields.items())
        return f"{self.opcode.name} {operands}".rstrip()


def _text(value) -> str:
    return value.name if isinstance(value, enum.Enum) else str(value)


def _is_enum(shape) -> bool:
    return isinstance(shape, type) and issubclass(shape, enum.Enum)


class Assembler:
    def __init__(self, isa: InstructionSet):
        self.isa = isa
        self._fields = {op: isa.fields(op) for op in isa.operands}
        self._names = {op: {name for name, _, _, _ in fields} for op, fields in self._fields.items()}
        self._enums = {op: [_is_enum(shape) for _, _, _, shape in fields] for op, fields in self._fields.items()}
        self._members = {shape: {member.value: member for member in shape}     # an enumeration's members by value
                         for fields in self._fields.values() for _, _, _, shape in fields if _is_enum(shape)}

    # --- one instruction -----------------------------------------------------------------------------------
    def encode(self, opcode: Opcode | str, **values) -> int:
        opcode = self._opcode(opcode)
        if not self._names[opcode].issuperset(values):
            known = [name for name, _, _, _ in self._fields[opcode]]
            unknown = next(name for name in values if name not in self._names[opcode])
            raise AssemblerError(f"{opcode.name} has no field {unknown!r}; its fields: {', '.join(known) or 'none'}")
        word = opcode.value
        for (name, offset, width, shape), is_enum in zip(self._fields[opcode], self._enums[opcode]):
            value = values.get(name, 0)
            if type(value) is int and not is_enum and 0 <= value < 1 << width:     # the common cases, checked
                word |= value << offset
                continue
            if is_enum and type(value) is shape:
                word |= value.value << offset
                continue
            value = self._value(opcode, name, value, width, shape)
            word |= (value.value if isinstance(value, enum.Enum) else value) << offset
        return word

    def decode(self, word: int) -> Instruction:
        if not isinstance(word, int) or not 0 <= word < 1 << INSTRUCTION_BITS:
            raise AssemblerError(f"{word!r} is not a {INSTRUCTION_BITS}-bit instruction word")
        opcode = _OPCODES.get(word & ((1 << OPCODE_BITS) - 1))
        if opcode is None or opcode not in self._fields:
            raise AssemblerError(f"opcode {word & ((1 << OPCODE_BITS) - 1)} is not an instruction")
        fields = {}
        for (name, offset, width, shape), is_enum in zip(self._fields[opcode], self._enums[opcode]):
            raw = (word >> offset) & ((1 << width) - 1)
            if is_enum:
                member = self._members[shape].get(raw)
                if member is None:
                    raise AssemblerError(f"{opcode.name} {name} = {raw}: not a {shape.__name__}")
                raw = member
            fields[name] = raw
        return Instruction(opcode, fields)

    # --- text ----------------------------------------------------------------------------------------------
    def assemble(self, text: str) -> list[int]:
        words = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            mnemonic, *operands = line.split()
            values = {}
            for operand in operands:
                name, sep, value = operand.partition("=")
                if not sep or not name or not value:
                    raise AssemblerError(f"line {number}: {operand!r} is not name=value")
                if name in values:
                    raise AssemblerError(f"line {number}: {name} given twice")
                values[name] = value
            try:
                words.append(self.encode(mnemonic, **values))
            except AssemblerError as error:
                raise AssemblerError(f"line {number}: {error}") from None
        return words

    def disassemble(self, words) -> str:
        return "".join(f"{self.decode(int(word))}\n" for word in words)

    @staticmethod
    def program_bytes(words) -> bytes:
        return b"".join(int(word).to_bytes(INSTRUCTION_BYTES, "little") for word in words)

    # --- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _opcode(opcode) -> Opcode:
        if isinstance(opcode, Opcode):
            return opcode
        try:
            return Opcode[str(opcode).upper()]
        except KeyError:
            raise AssemblerError(f"{opcode!r} is not an instruction; the instructions: "
                                 f"{', '.join(op.name for op in Opcode)}") from None

    @staticmethod
    def _value(opcode, name, value, width, shape):
        if _is_enum(shape):
            if isinstance(value, shape):
                return value
            if isinstance(value, str) and not value.lstrip("-").isdigit():
                try:
                    return shape[value.upper()]
                except KeyError:
                    raise AssemblerError(f"{opcode.name} {name} = {value!r}: not one of "
                                         f"{', '.join(m.name for m in shape)}") from None
            try:
                return shape(int(value))
            except ValueError:
                raise AssemblerError(f"{opcode.name} {name} = {value!r}: not one of "
                                     f"{', '.join(m.name for m in shape)}") from None
        try:
            number = int(value, 0) if isinstance(value, str) else value
        except ValueError:
            raise AssemblerError(f"{opcode.name} {name} = {value!r}: not an integer") from None
        if isinstance(number, bool) or not isinstance(number, numbers.Integral) or not 0 <= number < 1 << width:
            raise AssemblerError(f"{opcode.name} {name} = {value!r}: must be an integer from 0 to "
                                 f"{(1 << width) - 1} ({width} bits)")
        return int(number)

