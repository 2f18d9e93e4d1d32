"""The units' interfaces, read from their signatures: the table of docs/architecture.md, section 7."""

from __future__ import annotations

from amaranth import Shape
from amaranth.lib import data, stream
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In

from golden.config import AcceleratorConfig, ModelConfig

from ..memory.axi import AXI4Read

__all__ = ["describe", "interface_rows", "interface_table"]


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


def _kind(member) -> tuple[str, str]:
    """(what the port is, what it carries) for a signature member, from the unit's side."""
    if not member.is_signature:
        return ("input" if member.flow == In else "output"), describe(member.shape)
    signature = member.signature.flip() if member.flow == In else member.signature
    if isinstance(signature, stream.Signature):
        ready = ", always ready" if signature.always_ready else ""
        return f"stream {'in' if member.flow == In else 'out'}{ready}", describe(signature.members["payload"].shape)
    if isinstance(signature, ReadPort.Signature):
        role = "reads a memory" if member.flow == In else "read port of its memory"
        return role, f"addr u{signature.addr_width} → {describe(signature.shape)}, a cycle later"
    if isinstance(signature, WritePort.Signature):
        role = "writes a memory" if member.flow == In else "write port of its memory"
        return role, f"addr u{signature.addr_width}, {describe(signature.shape)}"
    if isinstance(signature, AXI4Read.Signature):
        return "AXI4 read master", f"addr u{signature.addr_width}, data u{signature.data_width}, id u{signature.id_width}"
    return "interface", type(signature).__name__


def _units(model: ModelConfig, accel: AcceleratorConfig) -> dict:
    from ..compute.gemm import GemmEngine
    from ..memory.loader import WeightLoader
    from ..moe.router import Router
    from ..vector.gelu import Gelu
    from ..vector.layernorm import LayerNorm
    from ..vector.residual import ResidualAdd
    from ..vector.softmax import Softmax
    return {"GemmEngine": GemmEngine.for_model(model, accel), "WeightLoader": WeightLoader.for_config(accel),
            "Router": Router.for_model(model, accel), "LayerNorm": LayerNorm.for_model(model, accel),
            "Softmax": Softmax.for_model(model, accel), "ResidualAdd": ResidualAdd.for_model(model, accel),
            "Gelu": Gelu(min(accel.requant_lanes, accel.array_cols))}


def interface_rows(model: ModelConfig, accel: AcceleratorConfig) -> list[tuple[str, str, str, str]]:
    """(unit, port, kind, payload) of every port of every unit `accel` builds for `model`."""
    rows = []
    for unit, component in _units(model, accel).items():
        component._MustUse__silence = True        # built for its signature only, never elaborated
        for name, member in component.signature.members.items():
            rows.append((unit, name, *_kind(member)))
    return rows


def interface_table(model: ModelConfig, accel: AcceleratorConfig) -> str:
    lines = [f"Ports of each unit for {model.name} on the {accel.name} accelerator (`m3vit interfaces`):", "",
             "| unit | port | kind | payload |", "|---|---|---|---|"]
    lines += [f"| {unit} | `{port}` | {kind} | `{payload}` |" for unit, port, kind, payload in interface_rows(model, accel)]
    return "\n".join(lines)
