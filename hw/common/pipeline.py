"""Pipeline building blocks shared by the units: delay lines and credit counters."""

from __future__ import annotations

from amaranth import Mux, Signal

__all__ = ["delay_line", "credit_counter"]


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
