"""The board's devices served natively in a verilated model each cycle (`hw.sim.verilator`), so a simulated board
(`hw.board.system.BoardSystem`) runs a whole inference at the fast simulator's speed:

- `NativeSdram(model, pins, chip)`: the SDRAM chip on the controller's pins (`hw.memory.sdram.SDRAMPins`). It keeps
  the words and the bank states and serves reads CAS latency cycles after READ, and raises `SDRAMTimingError` on
  the rules that decide what the data are: a command with CKE low or before LOAD MODE (for ACTIVE, READ,
  WRITE), ACTIVE on an open bank, READ or WRITE on a closed one, REFRESH or LOAD MODE with a bank open, a
  burst length other than 1 or a CAS latency other than 2 or 3, BURST TERMINATE, a WRITE without DQ driven,
  DQ driven over read data. The timing rules (tRCD, tRP, tRAS, tRC, tRRD, tRFC, tWR, tMRD, the refresh
  interval, the power-up wait) are `hw.sim.sdram.SDRAMModel`'s, which the controller's own tests run in
  Python; this model does not time them. `write` / `read` reach its words by the controller's byte addresses
  (word address = byte address / 2, column, bank and row bits as the controller lays them out, so the words
  of one address space are one flat image here; the low byte of a word at the even address).
- `NativeUart(model, rx, tx, divisor)`: the host's end of the UART (8N1, `divisor` cycles a bit, the design's
  `rx` driven, its `tx` sampled in each bit's middle). `send(data)` queues bytes for the line; `receive(count,
  cycles)` runs the clock until `count` bytes have come back (at most `cycles`) and returns them. A stop bit
  low raises `UARTError`.
"""

from __future__ import annotations

import ctypes

from .dram import check_access
from .sdram import SDRAMTimingError

__all__ = ["NativeSdram", "NativeUart", "UARTError", "BOARD_SOURCE"]

_SDRAM_PINS = ("cke", "cs_n", "ras_n", "cas_n", "we_n", "ba", "a", "dqm", "dq_o", "dq_oe", "dq_i")


class UARTError(RuntimeError):
    """The design's UART broke the framing, or did not answer in time."""


def _rule_error(message: str) -> SDRAMTimingError:
    rule, text = message.split(": ", 1)
    return SDRAMTimingError(rule, text)


class NativeSdram:
    def __init__(self, model, pins, chip):
        lib = model.library
        lib.sim_add_sdram.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)] + [ctypes.c_int] * 3
        lib.sim_add_sdram.restype = ctypes.c_void_p
        for function in ("sim_sdram_write", "sim_sdram_read"):
            getattr(lib, function).argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_int]
        indices = (ctypes.c_int * len(_SDRAM_PINS))(*(model.port_index(getattr(pins, name)) for name in _SDRAM_PINS))
        self.size, self._lib, self._model = chip.bytes, lib, model      # the model outlives its devices' users
        self._device = lib.sim_add_sdram(model.handle, indices, (chip.columns - 1).bit_length(),
                                         (chip.banks - 1).bit_length(), chip.bytes)
        model.add_device(self._device, _rule_error)

    def write(self, address: int, data: bytes) -> None:
        check_access(address, len(data), self.size)
        self._lib.sim_sdram_write(self._device, address, bytes(data), len(data))

    def read(self, address: int, length: int) -> bytes:
        check_access(address, length, self.size)
        buffer = ctypes.create_string_buffer(length)
        self._lib.sim_sdram_read(self._device, address, buffer, length)
        return buffer.raw


class NativeUart:
    def __init__(self, model, rx, tx, divisor: int):
        lib = model.library
        lib.sim_add_uart.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 3
        lib.sim_add_uart.restype = ctypes.c_void_p
        lib.sim_uart_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.sim_uart_wait.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_longlong]
        lib.sim_uart_wait.restype = ctypes.c_longlong
        lib.sim_uart_take.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.sim_uart_take.restype = ctypes.c_int
        self.model, self._lib = model, lib
        self._device = lib.sim_add_uart(model.handle, model.port_index(rx), model.port_index(tx), divisor)
        model.add_device(self._device, UARTError)

    def send(self, data: bytes) -> None:
        self._lib.sim_uart_send(self._device, bytes(data), len(data))

    def receive(self, count: int, cycles: int) -> bytes:
        ran = self._lib.sim_uart_wait(self.model.handle, self._device, self.model.clock_index, count, cycles)
        self.model.ran(ran)
        buffer = ctypes.create_string_buffer(max(count, 1))
        taken = self._lib.sim_uart_take(self._device, buffer, count)
        if taken < count:
            raise UARTError(f"{taken} of {count} bytes came back on the UART within {cycles:,} cycles")
        return buffer.raw[:count]


# SDRAM pins in the order of `_SDRAM_PINS`.
BOARD_SOURCE = r"""
enum { CKE, CS, RAS, CAS, WE, BA, ADDR, DQM, DQO, DQOE, DQI };
struct Sdram : Device {
  int p[11], column_bits, bank_bits, cas_latency = 0;
  std::vector<uint8_t> image; std::vector<int64_t> open_row;
  std::deque<std::pair<int64_t, uint16_t>> reads; bool driving = false;
  void fail(const char *rule, const char *what) {
    char message[200]; snprintf(message, sizeof message, "%s: cycle %lld: %s", rule, (long long)cycle, what);
    error = message;
  }
  bool any_open() const { for (int64_t row : open_row) if (row >= 0) return true; return false; }
  void drive(Sim *s) override {
    driving = !reads.empty() && reads.front().first == cycle;
    set1(s, p[DQI], driving ? reads.front().second : 0);
    if (driving) reads.pop_front();
  }
  void sample(Sim *s) override {
    if (!(get1(s, p[CKE]) & 1)) return fail("init", "CKE low (power-down and self refresh are not modelled)");
    if (driving && (get1(s, p[DQOE]) & 1)) return fail("bus", "the controller drives DQ over read data");
    if (get1(s, p[CS]) & 1) return;
    int command = (get1(s, p[RAS]) & 1) << 2 | (get1(s, p[CAS]) & 1) << 1 | (get1(s, p[WE]) & 1);
    int bank = get1(s, p[BA]); uint32_t a = get1(s, p[ADDR]);
    if ((command == 3 || command == 5 || command == 4) && !cas_latency)
      return fail("init", "ACTIVE, READ or WRITE before LOAD MODE");
    switch (command) {
    case 7: return;
    case 3: if (open_row[bank] >= 0) return fail("bank", "ACTIVE on an open bank");
            open_row[bank] = a; return;
    case 5: case 4: {
      if (open_row[bank] < 0) return fail("bank", "READ or WRITE on a closed bank");
      uint64_t column = a & ((1u << column_bits) - 1);
      uint64_t word = ((uint64_t)open_row[bank] << bank_bits | bank) << column_bits | column;
      if (command == 5) reads.push_back({cycle + cas_latency, (uint16_t)(image[2 * word] | image[2 * word + 1] << 8)});
      else {
        if (!(get1(s, p[DQOE]) & 1)) return fail("bus", "WRITE without DQ driven");
        uint32_t data = get1(s, p[DQO]), mask = get1(s, p[DQM]);
        if (!(mask & 1)) image[2 * word] = data & 0xFF;
        if (!(mask & 2)) image[2 * word + 1] = data >> 8;
      }
      if (a & 1024) open_row[bank] = -1;              /* auto precharge */
      return;
    }
    case 2: if (a & 1024) open_row.assign(open_row.size(), -1); else open_row[bank] = -1; return;
    case 1: if (any_open()) return fail("bank", "REFRESH with a bank open"); return;
    case 0:
      if (any_open()) return fail("bank", "LOAD MODE with a bank open");
      if (a & 7) return fail("mode", "a burst length other than 1 (this model serves BL1)");
      if (((a >> 4) & 7) != 2 && ((a >> 4) & 7) != 3) return fail("mode", "a CAS latency other than 2 or 3");
      cas_latency = (a >> 4) & 7; return;
    default: return fail("mode", "BURST TERMINATE (not modelled)");
    }
  }
};

struct Uart : Device {
  int rx, tx, divisor, send_bit = -1, send_count = 0, receive_bit = -1, receive_count = 0;
  uint16_t frame = 0; uint8_t shift = 0;
  std::deque<uint8_t> to_send, received;
  void drive(Sim *s) override {
    if (send_bit < 0 && !to_send.empty()) {
      frame = (uint16_t)(to_send.front() << 1 | 1 << 9); to_send.pop_front(); send_bit = 0; send_count = divisor;
    }
    set1(s, rx, send_bit < 0 ? 1 : frame >> send_bit & 1);
  }
  void sample(Sim *s) override {
    int line = get1(s, tx) & 1;
    if (receive_bit < 0) {
      if (!line) { receive_bit = 0; receive_count = divisor + divisor / 2; shift = 0; }
      return;
    }
    if (--receive_count > 0) return;
    if (receive_bit < 8) { shift |= line << receive_bit++; receive_count = divisor; return; }
    if (!line) { char m[80]; snprintf(m, sizeof m, "cycle %lld: a stop bit low on tx", (long long)cycle); error = m; }
    else received.push_back(shift);
    receive_bit = -1;
  }
  void advance(Sim *s) override {
    if (send_bit >= 0 && --send_count == 0) { send_count = divisor; if (++send_bit == 10) send_bit = -1; }
  }
};

extern "C" {
void *sim_add_sdram(void *h, const int *ports, int column_bits, int bank_bits, int bytes) {
  Sdram *d = new Sdram();
  memcpy(d->p, ports, sizeof d->p);
  d->column_bits = column_bits; d->bank_bits = bank_bits;
  d->image.assign(bytes, 0); d->open_row.assign(1 << bank_bits, -1);
  static_cast<Sim *>(h)->devices.push_back(d);
  return d;
}
void sim_sdram_write(void *device, unsigned long long address, const uint8_t *data, int length) {
  memcpy(&static_cast<Sdram *>(device)->image[address], data, length);
}
void sim_sdram_read(void *device, unsigned long long address, uint8_t *data, int length) {
  memcpy(data, &static_cast<Sdram *>(device)->image[address], length);
}
void *sim_add_uart(void *h, int rx, int tx, int divisor) {
  Uart *u = new Uart();
  u->rx = rx; u->tx = tx; u->divisor = divisor;
  static_cast<Sim *>(h)->devices.push_back(u);
  return u;
}
void sim_uart_send(void *device, const uint8_t *data, int length) {
  Uart *u = static_cast<Uart *>(device);
  u->to_send.insert(u->to_send.end(), data, data + length);
}
/* Rising edges until `count` bytes have come back (or a device's rule broken), at most `cycles`; the edges run. */
long long sim_uart_wait(void *h, void *device, int clock, int count, long long cycles) {
  Sim *s = static_cast<Sim *>(h); Uart *u = static_cast<Uart *>(device);
  long long ran = 0;
  while (ran < cycles && (int)u->received.size() < count && !s->failed()) { tick(s, clock); ran++; }
  return ran;
}
int sim_uart_take(void *device, uint8_t *out, int count) {
  Uart *u = static_cast<Uart *>(device);
  int taken = 0;
  while (taken < count && !u->received.empty()) { out[taken++] = u->received.front(); u->received.pop_front(); }
  return taken;
}
}
"""
