"""A DRAM behind a verilated design's AXI4 master port, served natively in the model each cycle (`NativeDram`):
`hw.sim.dram`'s read and write models in C++, cycle for cycle the same timing (read latency to a burst's first
beat, bursts in order, W beats before their AW allowed, write responses `write_latency` after the last beat and
held until taken) and the same master rules checked (a violation raises `AXIProtocolError` at the next tick);
stalls (the probability of a stall on each channel each cycle) come from its own generator, so with stalls the
cycles differ from the Python models'. The C++ (`DRAM_SOURCE`) is compiled into every verilated model.
"""

from __future__ import annotations

import ctypes

from .dram import AXIProtocolError, check_access

__all__ = ["NativeDram", "DRAM_SOURCE"]

_PORTS = ("arvalid arready araddr arlen arsize arburst rvalid rready rdata rresp rlast rid awvalid awready awaddr "
          "awlen awsize awburst wvalid wready wdata wstrb wlast bvalid bready bresp bid").split()


class NativeDram:
    """`size` bytes behind the AXI4 master `port` of the verilated `model` (`hw.sim.verilator.Verilated`), from
    the next tick on; `write` / `read` reach its bytes."""

    def __init__(self, model, port, size: int, *, read_latency: int = 8, write_latency: int = 4,
                 stall: float = 0.0, seed: int = 0, fail_reads: range | None = None, fail_writes: range | None = None):
        if read_latency < 1 or write_latency < 1:
            raise ValueError(f"latencies {read_latency}, {write_latency}: at least one cycle")
        lib, self.size = model.library, size
        lib.sim_add_dram.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int,
                                     ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_ulonglong,
                                     ctypes.POINTER(ctypes.c_ulonglong)]
        for function in ("sim_dram_write", "sim_dram_read"):
            getattr(lib, function).argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_int]
        lib.sim_add_dram.restype = ctypes.c_void_p
        self._lib, self._model = lib, model
        indices = (ctypes.c_int * len(_PORTS))(*(model.port_index(getattr(port, name)) for name in _PORTS))
        fail = (ctypes.c_ulonglong * 4)(*(value for failed in (fail_reads, fail_writes)
                                         for value in ((failed.start, failed.stop) if failed else (0, 0))))
        self._device = lib.sim_add_dram(model.handle, indices, len(port.rdata) // 8, size, read_latency,
                                        write_latency, stall, seed, fail)
        model.add_device(self._device, AXIProtocolError)

    def write(self, address: int, data: bytes) -> None:
        check_access(address, len(data), self.size)
        self._lib.sim_dram_write(self._device, address, bytes(data), len(data))

    def read(self, address: int, length: int) -> bytes:
        check_access(address, length, self.size)
        buffer = ctypes.create_string_buffer(length)
        self._lib.sim_dram_read(self._device, address, buffer, length)
        return buffer.raw


# Port indices: AR (valid ready addr len size burst), R (valid ready data resp last id), AW (valid ready addr len
# size burst), W (valid ready data strb last), B (valid ready resp id), in the order of `_PORTS`.
DRAM_SOURCE = r"""
struct Burst { uint64_t address; int beats, received; int64_t ready_at; bool failed; };
struct Dram : Device {
  int p[27]; int bus, words, read_latency, write_latency; double stall; uint64_t seed;
  uint64_t fail_read[2], fail_write[2];
  std::vector<uint8_t> image;
  std::deque<Burst> reads, writes; std::deque<std::vector<uint32_t>> w_beats; std::deque<std::pair<int64_t, bool>> responses;
  bool beat = false, beat_last = false, beat_failed = false, accepted = false, arready = false, awready = false;
  bool wready = false, response = false, response_failed = false, b_taken = false;
  std::vector<uint32_t> beat_data, request, waiting, aw, aw_waiting, w, w_waiting;
  bool has_request = false, has_waiting = false, has_aw = false, has_aw_waiting = false, has_w = false;
  bool has_w_waiting = false;
  bool chance() { seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                  return (double)(seed >> 11) / 9007199254740992.0 >= stall; }
  void drive(Sim *s) override;
  void sample(Sim *s) override;
  void advance(Sim *s) override;
};
enum { ARV, ARR, ARA, ARL, ARS, ARB, RV, RR, RD, RRESP, RL, RID, AWV, AWR, AWA, AWL, AWS, AWB,
       WV, WR, WD, WS, WL, BV, BR, BRESP, BID };

static bool overlaps(const uint64_t *range, uint64_t start, uint64_t end) { return start < range[1] && range[0] < end; }

static bool check(Dram *d, const char *channel, const std::vector<uint32_t> &r, Burst &burst) {
  uint64_t address = r[0]; int beats = (int)r[1] + 1; char where[160];
  snprintf(where, sizeof where, "cycle %lld: %s burst at 0x%llx, %d beats", (long long)d->cycle, channel,
           (unsigned long long)address, beats);
  const char *broken = nullptr;
  uint64_t end = address + (uint64_t)beats * d->bus;
  if (r[3] != 1) broken = "not an INCR burst";
  else if ((1u << r[2]) != (uint32_t)d->bus) broken = "a size other than the bus width";
  else if (address % d->bus) broken = "not aligned to the beat";
  else if (address / 4096 != (end - 1) / 4096) broken = "crosses a 4 KiB boundary";
  else if (end > d->image.size()) broken = "past the end of the image";
  if (broken) { d->error = std::string(where) + ": " + broken; return false; }
  burst = Burst{address, beats, 0, 0, false};
  return true;
}

void Dram::drive(Sim *s) {
  Dram *d = this;
  d->arready = d->chance();
  set1(s, d->p[ARR], d->arready);
  if (!d->beat && !d->reads.empty() && d->reads.front().ready_at <= d->cycle && d->chance()) {
    Burst &head = d->reads.front();
    uint64_t address = head.address + (uint64_t)head.received * d->bus;
    d->beat_data.assign(d->words, 0);
    memcpy(d->beat_data.data(), &d->image[address], d->bus);
    d->beat_last = head.received == head.beats - 1;
    d->beat_failed = overlaps(d->fail_read, address, address + d->bus);
    d->beat = true;
  }
  set1(s, d->p[RV], d->beat);
  if (d->beat) {
    set_port(&s->top, d->p[RD], d->beat_data.data());
    set1(s, d->p[RL], d->beat_last); set1(s, d->p[RRESP], d->beat_failed ? 2 : 0); set1(s, d->p[RID], 0);
  }
  d->awready = d->chance(); d->wready = d->chance();
  set1(s, d->p[AWR], d->awready); set1(s, d->p[WR], d->wready);
  if (!d->response && !d->responses.empty() && d->responses.front().first <= d->cycle && d->chance()) {
    d->response = true; d->response_failed = d->responses.front().second; d->responses.pop_front();
  }
  set1(s, d->p[BV], d->response); set1(s, d->p[BRESP], d->response_failed ? 2 : 0); set1(s, d->p[BID], 0);
}

void Dram::sample(Sim *s) {
  Dram *d = this;
  std::vector<uint32_t> buffer(d->words + 2, 0);
  auto offer = [&](int valid, std::initializer_list<int> fields, std::vector<uint32_t> &into, bool &has,
                   const std::vector<uint32_t> &waiting, bool has_waiting, const char *channel) {
    has = get1(s, d->p[valid]) & 1;
    into.clear();
    for (int field : fields) {
      if (field == WD) { get_port(&s->top, d->p[WD], buffer.data()); into.insert(into.end(), buffer.begin(), buffer.begin() + d->words); }
      else if (field == WS) { uint32_t w[2] = {0, 0}; get_port(&s->top, d->p[WS], w); into.push_back(w[0]); into.push_back(w[1]); }
      else into.push_back(get1(s, d->p[field]));
    }
    char message[120];
    if (has && has_waiting && into != waiting) {
      snprintf(message, sizeof message, "cycle %lld: %s payload changed before %sREADY", (long long)d->cycle, channel, channel);
      d->error = message;
    } else if (!has && has_waiting) {
      snprintf(message, sizeof message, "cycle %lld: %sVALID dropped before %sREADY", (long long)d->cycle, channel, channel);
      d->error = message;
    }
  };
  offer(ARV, {ARA, ARL, ARS, ARB}, d->request, d->has_request, d->waiting, d->has_waiting, "AR");
  offer(AWV, {AWA, AWL, AWS, AWB}, d->aw, d->has_aw, d->aw_waiting, d->has_aw_waiting, "AW");
  offer(WV, {WD, WS, WL}, d->w, d->has_w, d->w_waiting, d->has_w_waiting, "W");
  d->accepted = d->beat && (get1(s, d->p[RR]) & 1);
  d->b_taken = d->response && (get1(s, d->p[BR]) & 1);
}

void Dram::advance(Sim *s) {
  Dram *d = this;
  Burst burst;
  if (d->has_request && d->arready) {
    if (!check(d, "AR", d->request, burst)) return;
    burst.ready_at = d->cycle + d->read_latency;
    d->reads.push_back(burst);
    d->has_waiting = false;
  } else { d->has_waiting = d->has_request; d->waiting = d->request; }
  if (d->accepted) {
    if (++d->reads.front().received == d->reads.front().beats) d->reads.pop_front();
    d->beat = false;
  }
  d->has_aw_waiting = d->has_aw && !d->awready; d->aw_waiting = d->aw;
  d->has_w_waiting = d->has_w && !d->wready; d->w_waiting = d->w;
  if (d->has_aw && d->awready) {
    if (!check(d, "AW", d->aw, burst)) return;
    burst.failed = overlaps(d->fail_write, burst.address, burst.address + (uint64_t)burst.beats * d->bus);
    d->writes.push_back(burst);
  }
  if (d->has_w && d->wready) d->w_beats.push_back(d->w);
  while (!d->writes.empty() && !d->w_beats.empty()) {
    Burst &head = d->writes.front();
    std::vector<uint32_t> beat = d->w_beats.front(); d->w_beats.pop_front();
    bool last = beat[d->words + 2] & 1;
    if (last != (head.received == head.beats - 1)) {
      char message[120];
      snprintf(message, sizeof message, "cycle %lld: WLAST %d on beat %d of a %d-beat burst at 0x%llx",
               (long long)d->cycle, (int)last, head.received + 1, head.beats, (unsigned long long)head.address);
      d->error = message; return;
    }
    uint64_t base = head.address + (uint64_t)head.received * d->bus;
    uint64_t strobe = (uint64_t)beat[d->words] | (uint64_t)beat[d->words + 1] << 32;
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(beat.data());
    for (int byte = 0; byte < d->bus; byte++)
      if ((strobe >> byte & 1) && !head.failed) d->image[base + byte] = bytes[byte];
    if (++head.received == head.beats) { d->responses.push_back({d->cycle + d->write_latency, head.failed}); d->writes.pop_front(); }
  }
  if (d->b_taken) d->response = false;
}

extern "C" {
void *sim_add_dram(void *h, const int *ports, int bus, int bytes, int read_latency, int write_latency, double stall,
                  unsigned long long seed, const unsigned long long *fail) {
  Sim *s = static_cast<Sim *>(h);
  Dram *d = new Dram();
  memcpy(d->p, ports, sizeof d->p);
  d->bus = bus; d->words = (bus + 3) / 4; d->read_latency = read_latency; d->write_latency = write_latency;
  d->stall = stall; d->seed = seed * 2654435761ULL + 1;
  d->fail_read[0] = fail[0]; d->fail_read[1] = fail[1]; d->fail_write[0] = fail[2]; d->fail_write[1] = fail[3];
  d->image.assign(bytes, 0);
  s->devices.push_back(d);
  return d;
}
void sim_dram_write(void *device, unsigned long long address, const uint8_t *data, int length) {
  memcpy(&static_cast<Dram *>(device)->image[address], data, length);
}
void sim_dram_read(void *device, unsigned long long address, uint8_t *data, int length) {
  memcpy(data, &static_cast<Dram *>(device)->image[address], length);
}
}
"""
