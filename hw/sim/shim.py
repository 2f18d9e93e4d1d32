"""The C++ around a verilated model (`hw.sim.verilator`): ports set and read by index, memories served outside
the design, the clock ticked natively (`sim_tick`, `sim_tick_until`); `hw.sim.native_dram`'s DRAM is compiled
in beside it. `SHIM_SOURCE` is a format string: the model's name (`top`) and one setter and getter per port
(`accessors`).
"""

from __future__ import annotations

__all__ = ["SHIM_SOURCE", "accessors"]

SHIM_SOURCE = """
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <vector>
#include "V{top}.h"
#include "verilated.h"
double sc_time_stamp() {{ return 0; }}

struct Memory {{ int addr, en, data, words; std::vector<uint32_t> storage; }};
struct Dram;
struct Sim {{ V{top} top; std::vector<Memory> memories; Dram *dram = nullptr; }};
static void dram_drive(Sim *s);
static void dram_advance(Sim *s);
static void dram_free(Dram *d);
static bool dram_failed(const Dram *d);

static void set_port(V{top} *t, int port, const uint32_t *w) {{
  switch (port) {{
{setters}
  }}
}}
static void get_port(V{top} *t, int port, uint32_t *w) {{
  switch (port) {{
{getters}
  }}
}}

extern "C" {{
void *sim_new() {{ return new Sim; }}
void sim_delete(void *h) {{ dram_free(static_cast<Sim *>(h)->dram); delete static_cast<Sim *>(h); }}
void sim_eval(void *h) {{ static_cast<Sim *>(h)->top.eval(); }}
void sim_set(void *h, int port, const uint32_t *w) {{ set_port(&static_cast<Sim *>(h)->top, port, w); }}
void sim_get(void *h, int port, uint32_t *w) {{ get_port(&static_cast<Sim *>(h)->top, port, w); }}
int sim_add_memory(void *h, int addr, int en, int data, int words, int depth) {{
  Sim *s = static_cast<Sim *>(h);
  s->memories.push_back(Memory{{addr, en, data, words, std::vector<uint32_t>((size_t)words * depth)}});
  return (int)s->memories.size() - 1;
}}
void sim_store(void *h, int memory, int address, const uint32_t *w) {{
  Memory &m = static_cast<Sim *>(h)->memories[memory];
  for (int i = 0; i < m.words; i++) m.storage[(size_t)address * m.words + i] = w[i];
}}
/* One rising edge, two evaluations: the clock low with the DRAM's outputs for this cycle (the design's
   combinational answer to them is what the DRAM and the memories sample), then the clock high. */
static void tick(Sim *s, int clock) {{
  uint32_t one = 1, zero = 0, address[2], enable[2];
  set_port(&s->top, clock, &zero);
  if (s->dram) dram_drive(s); else s->top.eval();
  std::vector<int> reads(s->memories.size(), -1);
  for (size_t i = 0; i < s->memories.size(); i++) {{
    Memory &m = s->memories[i];
    get_port(&s->top, m.en, enable);
    get_port(&s->top, m.addr, address);
    if (enable[0] & 1) reads[i] = (int)address[0];
  }}
  set_port(&s->top, clock, &one);
  s->top.eval();
  for (size_t i = 0; i < s->memories.size(); i++) {{
    Memory &m = s->memories[i];
    if (reads[i] >= 0) {{
      size_t depth = m.storage.size() / m.words;
      static std::vector<uint32_t> blank;
      if ((size_t)reads[i] < depth) set_port(&s->top, m.data, &m.storage[(size_t)reads[i] * m.words]);
      else {{ blank.assign(m.words, 0); set_port(&s->top, m.data, blank.data()); }}
    }}
  }}
  if (!s->memories.empty()) s->top.eval();
  if (s->dram) dram_advance(s);
}}
void sim_tick(void *h, int clock, int cycles) {{
  for (int cycle = 0; cycle < cycles; cycle++) tick(static_cast<Sim *>(h), clock);
}}
/* Up to `cycles` rising edges, stopping after the first that leaves bit 0 of port `until` high (or at a DRAM
   rule broken); the edges run. */
long long sim_tick_until(void *h, int clock, int until, long long cycles) {{
  Sim *s = static_cast<Sim *>(h);
  uint32_t value[2];
  for (long long cycle = 0; cycle < cycles; cycle++) {{
    tick(s, clock);
    get_port(&s->top, until, value);
    if ((value[0] & 1) || (s->dram && dram_failed(s->dram))) return cycle + 1;
  }}
  return cycles;
}}
}}
"""


def accessors(index: int, name: str, width: int) -> tuple[str, str]:
    field = f"t->{name.replace('__', '___05F')}"
    if width <= 32:
        return f"    case {index}: {field} = w[0]; break;", f"    case {index}: w[0] = {field}; break;"
    if width <= 64:
        return (f"    case {index}: {field} = (uint64_t)w[1] << 32 | w[0]; break;",
                f"    case {index}: w[0] = (uint32_t){field}; w[1] = (uint32_t)({field} >> 32); break;")
    words = (width + 31) // 32
    return (f"    case {index}: for (int i = 0; i < {words}; i++) {field}[i] = w[i]; break;",
            f"    case {index}: for (int i = 0; i < {words}; i++) w[i] = {field}[i]; break;")
