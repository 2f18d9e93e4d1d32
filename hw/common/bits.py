"""Packing values into the bits of a `lib.data` layout and back, as `Layout.const` and `View` would, without
building Amaranth constants (memory images and instruction words are large, and made often)."""

from __future__ import annotations

from enum import Enum

from amaranth import Shape
from amaranth.lib import data

__all__ = ["pack", "unpack"]


def pack(shape, value) -> int:
    """The bits of `value` (an int, a list for an array layout, a dict for a struct layout) in `shape`, as
    `shape.const(value)` would give them (a field the dict leaves out is 0), without building Amaranth constants
    (the memory fills are large)."""
    kind, detail = _plan(shape)
    if kind == "numbers":                            # an array of plain numbers: no recursion per item
        mask, bits = (1 << detail) - 1, 0
        for i, item in enumerate(value):
            bits |= (int(item) & mask) << (i * detail)
        return bits
    if kind == "array":
        elem, width = detail
        return sum(pack(elem, item) << (i * width) for i, item in enumerate(value))
    if kind == "struct":
        return sum(pack(field, value[name]) << offset for name, field, offset in detail if name in value)
    return int(value.value if isinstance(value, Enum) else value) & ((1 << detail) - 1)


_plans: dict[int, tuple] = {}           # id(shape) → (shape, its plan): a layout's fields read once, not per word


def _plan(shape) -> tuple[str, object]:
    """How `pack` lays out `shape`: ("numbers", width) for an array of plain numbers, ("array", (element,
    width)), ("struct", [(name, shape, offset)]) or ("number", width)."""
    entry = _plans.get(id(shape))
    if entry is not None and entry[0] is shape:
        return entry[1]
    if isinstance(shape, data.ArrayLayout):
        elem = shape.elem_shape
        if not isinstance(elem, data.Layout) and not (isinstance(elem, type) and issubclass(elem, Enum)):
            plan = ("numbers", Shape.cast(elem).width)
        else:
            plan = ("array", (elem, data.Layout.cast(elem).size if isinstance(elem, data.Layout)
                              else Shape.cast(elem).width))
    elif isinstance(shape, data.StructLayout):
        plan = ("struct", [(name, field.shape, field.offset) for name, field in shape])
    else:
        plan = ("number", Shape.cast(shape).width)
    if len(_plans) > 4096:
        _plans.clear()
    _plans[id(shape)] = (shape, plan)
    return plan


class _Struct(dict):
    """An unpacked struct: fields as attributes too (`beat.row`), like `lib.data.Const`."""

    __getattr__ = dict.__getitem__


def unpack(shape, raw: int):
    """The inverse of `pack`: ints, lists and attribute-accessible dicts."""
    if isinstance(shape, data.ArrayLayout):
        elem = shape.elem_shape
        width = elem.size if isinstance(elem, data.Layout) else Shape.cast(elem).width
        return [unpack(elem, (raw >> (i * width)) & ((1 << width) - 1)) for i in range(shape.length)]
    if isinstance(shape, data.StructLayout):
        return _Struct({name: unpack(field.shape, (raw >> field.offset) & ((1 << field.width) - 1))
                        for name, field in shape})
    cast = Shape.cast(shape)
    if cast.signed and raw >> (cast.width - 1):
        raw -= 1 << cast.width
    return raw
