"""The units' interfaces, read from their signatures: the table of docs/architecture.md, section 7."""

from __future__ import annotations

from amaranth import Shape
from amaranth.lib import data, stream
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from golden.config import AcceleratorConfig, ModelConfig

from ..memory.axi import AXI4, AXI4Lite, AXI4Read, AXI4Write

__all__ = ["describe", "interface_rows", "interface_table", "instruction_table"]


def describe(shape) -> str:
    """A shape or layout in a line: u8 / s16, `s8[16]` for an array, `{name: …, …}` for a struct."""
    if isinstance(shape, data.ArrayLayout):
        return f"{describe(shape.elem_shape)}[{shape.length}]"
    if isinstance(shape, data.StructLayout):
        return "{" + ", ".join(f"{name}: {describe(field.shape)}" for name, field in shape) + "}"
    if isinstance(shape, data.Layout):
        return f"{type(shape).__name__}({shape.size} bits)"
    if hasattr(shape, "as_shape") and not isinstance(shape, Shape):        # an enum
        return shape.__name__
    shape = Shape.cast(shape)
    return f"{'s' if shape.signed else 'u'}{shape.width}"


def _kind(member, latency: int = 1) -> tuple[str, str]:
    """(what the port is, what it carries) for a signature member, from the unit's side (a read port's data
    `latency` cycles after its `en`)."""
    if not member.is_signature:
        return ("input" if member.flow == In else "output"), describe(member.shape)
    signature = member.signature.flip() if member.flow == In else member.signature
    if isinstance(signature, stream.Signature):
        ready = ", always ready" if signature.always_ready else ""
        return f"stream {'in' if member.flow == In else 'out'}{ready}", describe(signature.members["payload"].shape)
    if isinstance(signature, ReadPort.Signature):
        role = "reads a memory" if member.flow == In else "read port of its memory"
        later = "a cycle later" if latency == 1 else f"{latency} cycles later"
        return role, f"addr u{signature.addr_width} → {describe(signature.shape)}, {later}"
    if isinstance(signature, WritePort.Signature):
        role = "writes a memory" if member.flow == In else "write port of its memory"
        return role, f"addr u{signature.addr_width}, {describe(signature.shape)}"
    for kind, name in ((AXI4Read, "AXI4 read master"), (AXI4Write, "AXI4 write master"), (AXI4, "AXI4 master")):
        if isinstance(signature, kind.Signature):
            return name, f"addr u{signature.addr_width}, data u{signature.data_width}, id u{signature.id_width}"
    if isinstance(signature, AXI4Lite.Signature):
        return "AXI4-Lite slave" if member.flow == In else "AXI4-Lite master", \
            f"addr u{signature.addr_width}, data u{signature.data_width}"
    return "interface", type(signature).__name__


def _units(model: ModelConfig, accel: AcceleratorConfig) -> dict:
    """Unit name → the unit (built for its signature only) or, for the top level, its signature."""
    from ..compute.gemm import GemmEngine
    from ..control.accelerator import Accelerator
    from ..control.host import HostRegisters
    from ..memory.reader import StreamReader
    from ..memory.writer import StoreWriter
    from ..memory.loader import WeightLoader
    from ..moe.router import Router
    from ..vector.gelu import Gelu
    from ..vector.layernorm import LayerNorm
    from ..vector.residual import ResidualAdd
    from ..vector.softmax import Softmax
    return {"Accelerator": Accelerator.Signature(accel),
            "HostRegisters": HostRegisters(0), "StreamReader": StreamReader.for_config(accel),
            "StoreWriter": StoreWriter.for_config(accel),
            "GemmEngine": GemmEngine.for_model(model, accel), "WeightLoader": WeightLoader.for_config(accel),
            "Router": Router.for_model(model, accel), "LayerNorm": LayerNorm.for_model(model, accel),
            "Softmax": Softmax.for_model(model, accel), "ResidualAdd": ResidualAdd.for_model(model, accel),
            "Gelu": Gelu(min(accel.requant_lanes, accel.array_cols))}


def interface_rows(model: ModelConfig, accel: AcceleratorConfig) -> list[tuple[str, str, str, str]]:
    """(unit, port, kind, payload) of every port of every unit `accel` builds for `model`."""
    rows = []
    for unit, component in _units(model, accel).items():
        if isinstance(component, wiring.Signature):
            signature = component
        else:
            component._MustUse__silence = True    # built for its signature only, never elaborated
            signature = component.signature
        latencies = getattr(component, "READ_LATENCIES", {})     # read ports slower than `lib.memory`'s
        for name, member in signature.members.items():
            rows.append((unit, name, *_kind(member, latencies.get(name, 1))))
    return rows


def interface_table(model: ModelConfig, accel: AcceleratorConfig) -> str:
    lines = [f"Ports of each unit for {model.name} on the {accel.name} accelerator (`m3vit interfaces`):", "",
             "| unit | port | kind | payload |", "|---|---|---|---|"]
    lines += [f"| {unit} | `{port}` | {kind} | `{payload}` |" for unit, port, kind, payload in interface_rows(model, accel)]
    return "\n".join(lines)


def instruction_table(model: ModelConfig, accel: AcceleratorConfig) -> str:
    """The instruction set and the host registers for `model` on `accel`, from `hw.control` (markdown)."""
    from ..control.isa import MEANINGS, InstructionSet, Opcode
    from ..control.registers import REGISTERS
    isa = InstructionSet(model, accel)
    lines = [f"Instructions for {model.name} on the {accel.name} accelerator (`m3vit interfaces --instructions`; "
             "bits 0-3 the opcode, operands from bit 4 in this order, widths from the configuration):", "",
             "| opcode | operands |", "|---|---|"]
    for opcode in Opcode:
        fields = [(name, width, shape) for name, _, width, shape in isa.fields(opcode)]
        operands = "; ".join(f"`{name}` {describe(shape) if width != 1 else 'u1'}: "
                             f"{MEANINGS[opcode][name.split('[')[0]]}" for name, width, shape in fields)
        lines.append(f"| `{opcode.name}` = {opcode.value} | {operands or '—'} |")
    lines += ["", "Host registers (32 bits, AXI4-Lite byte offsets; `w1`: write 1 to act, reads back 0):", "",
              "| offset | name | access | meaning | fields |", "|---|---|---|---|---|"]
    for reg in REGISTERS:
        fields = ", ".join(f"{name} (bit {field.offset}{'' if field.width == 1 else f', {field.width} bits'})"
                           for name, field in reg.layout) if reg.layout is not None else ""
        lines.append(f"| 0x{reg.offset:02X} | `{reg.name}` | {reg.access} | {reg.meaning} | {fields} |")
    return "\n".join(lines)
