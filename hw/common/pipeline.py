"""Pipeline building blocks shared by the units: data registers, delay lines, credit counters, skid buffers and
two buffers used in turn."""

from __future__ import annotations

from amaranth import Mux, Signal

__all__ = ["data_register", "delay_line", "kept_copies", "credit_counter", "skid_buffer", "skid_stage",
           "ping_pong", "KEPT_COPY", "REGISTERED_READ_LATENCY"]

# The name prefix of registers that synthesis keeps apart (the board flow marks their flip-flops `keep`): Yosys's
# `opt_merge` would merge registers alike back into one, whose net reaches every load.
KEPT_COPY = "kept_copy_"

# A block RAM read whose output is registered before any multiplexer or logic (the block's output comes late in the
# cycle): its word two cycles after the read's `en`.
REGISTERED_READ_LATENCY = 2


def data_register(m, port, name: str):
    """The register behind the output `port` (`m` drives the port from it): not reset, its validity travels
    beside it, so no reset net reaches a data path. Returns it, like `port` (a `lib.data` view stays a view)."""
    register = Signal.like(port, name=name, reset_less=True)
    m.d.comb += port.eq(register)
    return register


def kept_copies(m, value, copies: int, name: str) -> list:
    """`copies` registers of `value` (`m`'s sync domain), each for a share of its loads so that no one net reaches
    them all; named `KEPT_COPY` + `name` + index, so that synthesis keeps them apart."""
    registers = [Signal.like(value, name=f"{KEPT_COPY}{name}{index}") for index in range(copies)]
    m.d.sync += [register.eq(value) for register in registers]
    return registers


def delay_line(m, value, cycles: int, name: str, *, data: bool = False) -> list:
    """`value` and its copies 1 … `cycles` registers later (`m`'s sync domain): a list of `cycles` + 1 values,
    `value` first. Signals like `value` (a `lib.data` view stays a view), named `{name}_d{k}`. With `data` the
    registers carry values whose validity travels beside them: they are not reset (`reset_less`), so the
    domain's reset does not reach them."""
    line = [value]
    for stage in range(cycles):
        register = Signal.like(value, name=f"{name}_d{stage}", reset_less=data)
        m.d.sync += register.eq(line[-1])
        line.append(register)
    return line


def credit_counter(m, counter: Signal, nonzero: Signal, up, down):
    """Count `counter` up on `up`, down on `down` (both: unchanged), and keep `nonzero` = `counter` ≠ 0 as a
    register of its own. Both next values are chosen from registers alone by the late `up` and `down` (no carry
    chain or comparator after the control signals' fan-out)."""
    m.d.sync += counter.eq(Mux(up == down, counter, Mux(up, counter + 1, counter - 1)))
    m.d.sync += nonzero.eq(Mux(up == down, nonzero, up | (counter != 1)))


def skid_buffer(m, in_valid, in_ready, in_fields: dict, out_valid, out_ready, out_fields: dict):
    """A two-entry buffer from one valid/ready channel to another, in order, a beat a cycle: `in_ready` and
    `out_valid` and the out fields are registers (no path runs through it from either side to the other); the
    fields' registers are not reset (their validity travels beside them), and the skid entry's take the in
    fields every cycle it is empty (`in_ready`: its enable is a flip-flop's output, no logic)."""
    main = {name: Signal.like(value, name=f"main_{name}", reset_less=True) for name, value in in_fields.items()}
    skid = {name: Signal.like(value, name=f"skid_{name}", reset_less=True) for name, value in in_fields.items()}
    main_valid, skid_valid = Signal(), Signal()
    m.d.comb += [in_ready.eq(~skid_valid), out_valid.eq(main_valid)]
    m.d.comb += [out_fields[name].eq(main[name]) for name in in_fields]
    with m.If(~main_valid | out_ready):
        with m.If(skid_valid):
            m.d.sync += [main_valid.eq(1), skid_valid.eq(0)] + [main[name].eq(skid[name]) for name in in_fields]
        with m.Else():
            m.d.sync += [main_valid.eq(in_valid)] + [main[name].eq(in_fields[name]) for name in in_fields]
    with m.Elif(in_valid & in_ready):
        m.d.sync += skid_valid.eq(1)
    with m.If(in_ready):
        m.d.sync += [skid[name].eq(in_fields[name]) for name in in_fields]


def skid_stage(m, valid, output) -> tuple:
    """The last stage of a pipeline that stops as a whole, a skid buffer's (`skid_buffer`) into `output` (`valid`,
    `ready`, `payload`: a stream interface or a namespace of signals): its main register is the stage. Returns
    (`advance`, `staged`): the stages before move while its skid entry is empty or the stage before it (whose
    `valid` this is) holds nothing, both registers, so `output.ready` reaches no further than its registers;
    `staged` is the stage's value (like `output.payload`), which the caller works out from the stage before."""
    advance, ready = Signal(), Signal()
    staged = Signal.like(output.payload)
    m.d.comb += advance.eq(ready | ~valid)
    skid_buffer(m, valid, ready, {"beat": staged}, output.valid, output.ready, {"beat": output.payload})
    return advance, staged


def ping_pong(m, filled, emptied, name: str) -> tuple:
    """The bookkeeping of two buffers used in turn: one fills while the other empties. `filled`: the buffer
    `filling` is full now (it must not be full already); `emptied`: the buffer `emptying` is empty now (it must be
    full). Returns (`full`, a bit a buffer; `filling`; `emptying`), registers named `{name}_…`: a buffer fills
    only while not full and empties only while full, so the two sides never meet in one buffer, and each
    pointer moves only on its own side's event."""
    full = Signal(2, name=f"{name}_full")
    filling, emptying = Signal(name=f"{name}_filling"), Signal(name=f"{name}_emptying")
    m.d.sync += full.eq((full | Mux(filled, Mux(filling, 0b10, 0b01), 0))
                        & ~Mux(emptied, Mux(emptying, 0b10, 0b01), 0))
    with m.If(filled):
        m.d.sync += filling.eq(~filling)
    with m.If(emptied):
        m.d.sync += emptying.eq(~emptying)
    return full, filling, emptying
