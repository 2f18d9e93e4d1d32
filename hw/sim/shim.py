"""The C++ around a verilated model (`hw.sim.verilator`): ports set and read by index, memories served outside
the design, the clock ticked natively (`sim_tick`, `sim_tick_until`), and native devices on its ports (a `Device`: the
DRAM of `hw.sim.native_dram`, the SDRAM chip and the UART host of `hw.sim.native_board`, compiled in beside it)
served on every cycle. `SHIM_SOURCE` is a format string: the model's name (`top`) and one setter and getter per port
(`accessors`).
"""

from __future__ import annotations

__all__ = ["SHIM_SOURCE", "accessors"]

SHIM_SOURCE = """
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <vector>
#include "V{top}.h"
#include "verilated.h"
double sc_time_stamp() {{ return 0; }}

/* A read port served outside the design: the word read at a rising edge reaches `data` after it (`latency` 1), or
   after the next, from the block's output register (`latency` 2; `output` the block's own output, held). */
struct Memory {{ int addr, en, data, words, latency; std::vector<uint32_t> storage, output; }};
struct Sim;
/* A model on some of the design's ports, each cycle: `drive` sets its inputs (the clock low), `sample` reads the
   design's answer (evaluated), `advance` moves on after the rising edge. A rule broken sets `error`, and the
   device stops. */
struct Device {{
  std::string error; int64_t cycle = 0;
  virtual ~Device() {{}}
  virtual void drive(Sim *s) {{}}
  virtual void sample(Sim *s) {{}}
  virtual void advance(Sim *s) {{}}
}};
struct Sim {{
  V{top} top; std::vector<Memory> memories; std::vector<Device *> devices;
  std::string stopped;        /* the file:line of the design's first failed assertion */
  ~Sim() {{ for (Device *d : devices) delete d; }}
  bool failed() const {{
    if (!stopped.empty()) return true;
    for (const Device *d : devices) if (!d->error.empty()) return true;
    return false;
  }}
}};
/* The model being evaluated. A failed assertion ($stop) calls `vl_stop` (the run-time library is built without
   its own, `VL_USER_STOP`): it is noted in that model, and the ticks stop, where Verilator's would end the
   process. */
static Sim *evaluating = nullptr;
void vl_stop(const char *filename, int linenum, const char *) {{
  if (evaluating && evaluating->stopped.empty())
    evaluating->stopped = std::string(filename) + ":" + std::to_string(linenum);
}}

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
/* A port of at most 32 bits, for the devices. */
static uint32_t get1(Sim *s, int port) {{ uint32_t w[2] = {{0, 0}}; get_port(&s->top, port, w); return w[0]; }}
static void set1(Sim *s, int port, uint32_t value) {{ uint32_t w[2] = {{value, 0}}; set_port(&s->top, port, w); }}

extern "C" {{
void *sim_new() {{ return new Sim; }}
void sim_delete(void *h) {{ delete static_cast<Sim *>(h); }}
void sim_eval(void *h) {{ evaluating = static_cast<Sim *>(h); evaluating->top.eval(); }}
void sim_set(void *h, int port, const uint32_t *w) {{ set_port(&static_cast<Sim *>(h)->top, port, w); }}
void sim_get(void *h, int port, uint32_t *w) {{ get_port(&static_cast<Sim *>(h)->top, port, w); }}
int sim_add_memory(void *h, int addr, int en, int data, int words, int depth, int latency) {{
  Sim *s = static_cast<Sim *>(h);
  s->memories.push_back(Memory{{addr, en, data, words, latency, std::vector<uint32_t>((size_t)words * depth),
                                std::vector<uint32_t>(words)}});
  return (int)s->memories.size() - 1;
}}
void sim_store(void *h, int memory, int address, const uint32_t *w) {{
  Memory &m = static_cast<Sim *>(h)->memories[memory];
  for (int i = 0; i < m.words; i++) m.storage[(size_t)address * m.words + i] = w[i];
}}
const char *sim_device_error(void *device) {{ return static_cast<Device *>(device)->error.c_str(); }}
const char *sim_stopped(void *h) {{ return static_cast<Sim *>(h)->stopped.c_str(); }}
}}
/* One rising edge, two evaluations: the clock low with the devices' outputs for this cycle (the design's
   combinational answer to them is what the devices and the memories sample), then the clock high. */
static void tick(Sim *s, int clock) {{
  uint32_t one = 1, zero = 0, address[2], enable[2];
  evaluating = s;
  set_port(&s->top, clock, &zero);
  for (Device *d : s->devices) if (d->error.empty()) d->drive(s);
  s->top.eval();
  for (Device *d : s->devices) if (d->error.empty()) d->sample(s);
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
    if (m.latency == 2) set_port(&s->top, m.data, m.output.data());
    if (reads[i] >= 0) {{
      size_t depth = m.storage.size() / m.words;
      if ((size_t)reads[i] < depth)
        std::copy_n(&m.storage[(size_t)reads[i] * m.words], m.words, m.output.begin());
      else std::fill(m.output.begin(), m.output.end(), 0);
      if (m.latency == 1) set_port(&s->top, m.data, m.output.data());
    }}
  }}
  if (!s->memories.empty()) s->top.eval();
  for (Device *d : s->devices) if (d->error.empty()) {{ d->advance(s); d->cycle++; }}
}}
extern "C" {{
/* `cycles` rising edges, or up to the first that fails an assertion; how many ran. */
int sim_tick(void *h, int clock, int cycles) {{
  Sim *s = static_cast<Sim *>(h);
  int cycle = 0;
  while (cycle < cycles && s->stopped.empty()) {{ tick(s, clock); cycle++; }}
  return cycle;
}}
/* Up to `cycles` rising edges, stopping after the first that leaves bit 0 of port `until` high (or at a device's
   rule broken, or an assertion failed); the edges run. */
long long sim_tick_until(void *h, int clock, int until, long long cycles) {{
  Sim *s = static_cast<Sim *>(h);
  uint32_t value[2];
  for (long long cycle = 0; cycle < cycles; cycle++) {{
    tick(s, clock);
    get_port(&s->top, until, value);
    if ((value[0] & 1) || s->failed()) return cycle + 1;
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
