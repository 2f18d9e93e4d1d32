"""The accelerator's cycles without simulating it: an analytic model, instruction by instruction, checked
against the RTL's own trace.

`issued(program, run, counts)`: the instructions a run of `program` issues, in order (`Issued`): an EXPERTS
body once per active expert (`counts[layer][expert]`: its tokens; the router's ascending order), a gathering or
COMBINE GEMM's M the expert's token count.

`measured(quantized, accel, image, task, simulator)`: the RTL's figures for one task's backbone and head runs,
back to back after the start-up as `m3vit run` does: each run's cycles and the cycle of every issue (the
accelerator's `issued` trace port), per layer (`Program.layers`: a layer runs from its first dependent
instruction's issue to the next layer's; the first from the run's start, the last to its end).
"""

from __future__ import annotations

import functools
import json
from collections import deque
from dataclasses import dataclass

import numpy as np

from golden.config import AcceleratorConfig
from golden.model import run as golden_run
from golden.quantized import QuantizedModel
from hw.compute.gemm.geometry import GemmMode
from hw.control.isa import InstructionSet, Opcode, Space
from hw.moe.router.gates import GateWeights
from hw.moe.router.logits import SETTLE
from hw.moe.router.topk import ExponentTopK

from .assembler import Assembler, Instruction
from .compiler import Program, backbone_program
from .driver import Driver
from .sim import accelerator_for, simulate

__all__ = ["Issued", "issued", "layer_spans", "layer_bounds", "expert_counts", "measured", "compare",
           "against", "estimate", "uniform_counts", "program_config", "CycleModel", "Timeline"]


@dataclass(frozen=True)
class Issued:
    """One issue: the program's instruction `index`, decoded, and, inside an EXPERTS body, its `expert` and the
    expert's token count (`tokens`)."""
    index: int
    instruction: Instruction
    expert: int | None = None
    tokens: int = 0

    @property
    def opcode(self) -> Opcode:
        return self.instruction.opcode

    def __getitem__(self, name: str):
        return self.instruction.fields[name]

    @property
    def m(self) -> int:
        """A GEMM's rows: its `m`, or in an EXPERTS body the expert's tokens (a gathering or COMBINE GEMM)."""
        gathers = self["gather"] or self["mode"] == GemmMode.COMBINE.value
        return self.tokens if self.expert is not None and gathers else self["m"]


def issued(program: Program, isa: InstructionSet, run="backbone", counts: dict[int, list[int]] | None = None) \
        -> list[Issued]:
    """The instructions a run ("backbone" or a task's head) of `program` issues, to its HALT; `counts`: per MoE
    layer (ROUTE's `layer`) the tokens of each expert."""
    assembler = Assembler(isa)
    span = program.run_range(run)
    decoded = [assembler.decode(program.words[index]) for index in span]
    out, layer, at = [], None, 0
    while at < len(decoded):
        instruction = decoded[at]
        index = span[at]
        if instruction.opcode is Opcode.EXPERTS:
            out.append(Issued(index, instruction))
            body = instruction.fields["body"]
            tokens = (counts or {}).get(layer)
            if tokens is None:
                raise ValueError(f"instruction {index}: EXPERTS of MoE layer {layer} and no token counts for it")
            for expert, count in enumerate(tokens):
                if count:
                    out += [Issued(span[at + 1 + i], decoded[at + 1 + i], expert, count) for i in range(body)]
            at += 1 + body
            continue
        if instruction.opcode is Opcode.ROUTE:
            layer = instruction.fields["layer"]
        out.append(Issued(index, instruction))
        if instruction.opcode is Opcode.HALT:
            break
        at += 1
    return out


def layer_bounds(program: Program, sequence: list[Issued], issue_cycles: list[int], cycles: int) \
        -> dict[str, tuple[int, int]]:
    """Each layer's [start, end) cycles in a run: from its first marked instruction's issue to the next layer's
    (the first layer from 0, the last to `cycles`)."""
    names = dict(program.layers)
    starts = []
    for issue, at in zip(sequence, issue_cycles):
        if issue.index in names and (not starts or starts[-1][0] != names[issue.index]):
            starts.append((names[issue.index], at))
    if not starts:
        return {}
    starts[0] = (starts[0][0], 0)
    ends = [at for _, at in starts[1:]] + [cycles]
    return {name: (at, end) for (name, at), end in zip(starts, ends)}


def layer_spans(program: Program, sequence: list[Issued], issue_cycles: list[int], cycles: int) -> dict[str, int]:
    """Cycles per layer of a run (`layer_bounds`)."""
    return {name: end - start for name, (start, end) in layer_bounds(program, sequence, issue_cycles, cycles).items()}


def expert_counts(quantized: QuantizedModel, golden) -> dict[int, list[int]]:
    """Per MoE layer the tokens of each expert in a golden run."""
    model = quantized.config
    return {layer: [len(tokens) for tokens in golden.routing[block].expert_tokens]
            for layer, block in enumerate(model.moe_blocks)}


def measured(quantized: QuantizedModel, accel: AcceleratorConfig, image, task: int, *, simulator: str = "verilator",
             latency: int = 10, head: bool = True) -> dict:
    """The RTL's backbone run of `task` after the start-up and (with `head`) its head's run, as `m3vit run` drives
    them: per run ("backbone", or the task) its `cycles`, `issue_cycles`, `sequence` (`issued`) and `layers`
    (`layer_spans`); and the `program`."""
    model = quantized.config
    program = backbone_program(quantized, accel, image, heads=head)
    counts = expert_counts(quantized, golden_run(quantized, image, task))
    isa = InstructionSet(model, accel)
    runs = {"backbone": issued(program, isa, "backbone", counts)}
    if head:
        runs[task] = issued(program, isa, task, counts)
    accelerator = accelerator_for(model, accel)

    async def host(transport):
        driver = Driver(transport, model, accel)
        await driver.connect()
        await driver.place(program, timeout=1 << 40)
        results = {"backbone": await driver.run(program, task, timeout=1 << 40, issues=len(runs["backbone"]))}
        if head:
            results[task] = await driver.run_head(program, task, timeout=1 << 40, issues=len(runs[task]))
        return results

    results = simulate(accelerator, host, Driver(None, model, accel).dram_map(program).size, simulator=simulator,
                       latency=latency)
    out = {"program": program}
    for run, sequence in runs.items():
        result = results[run]
        if not result.ok or len(result.issue_cycles) != len(sequence) \
                or result.counters["INSTRUCTIONS"] != len(sequence):
            raise RuntimeError(f"run {run}: {result.cause.name}, {len(result.issue_cycles)} issues traced, "
                               f"{result.counters['INSTRUCTIONS']} counted, {len(sequence)} expected")
        out[run] = {"cycles": result.cycles, "issue_cycles": result.issue_cycles, "sequence": sequence,
                    "layers": layer_spans(program, sequence, result.issue_cycles, result.cycles),
                    "counters": result.counters, "counts": counts}
    return out


def compare(quantized: QuantizedModel, accel: AcceleratorConfig, image, task: int, *, simulator: str = "verilator",
            latency: int = 10, head: bool = True) -> dict:
    """The model against the RTL (`measured`) for one task's backbone and head: per run and per layer the RTL's
    cycles, the model's and the error ((model − RTL) / RTL); `max_layer_error` (the largest |error| of any
    layer), `total_error` (of the whole inference: backbone and head)."""
    rtl = measured(quantized, accel, image, task, simulator=simulator, latency=latency, head=head)
    result = against(rtl, CycleModel(quantized.config, accel, latency=latency))
    return {"task": task, "task_name": quantized.config.tasks[task].name, **result}


def against(rtl: dict, cycle_model: "CycleModel") -> dict:
    """`compare`'s figures for a `measured` result and a model."""
    program, runs = rtl["program"], {}
    for run, measured_run in rtl.items():
        if run == "program":
            continue
        timeline = cycle_model.run(measured_run["sequence"])
        modelled = layer_spans(program, measured_run["sequence"], timeline.issue_cycles, timeline.cycles)
        runs[run] = {"cycles": measured_run["cycles"], "model_cycles": timeline.cycles,
                     "error": _error(timeline.cycles, measured_run["cycles"]),
                     "layers": [{"layer": name, "cycles": cycles, "model_cycles": modelled[name],
                                 "error": _error(modelled[name], cycles)}
                                for name, cycles in measured_run["layers"].items()]}
    total = sum(run["cycles"] for run in runs.values())
    model_total = sum(run["model_cycles"] for run in runs.values())
    return {"runs": runs, "cycles": total, "model_cycles": model_total, "total_error": _error(model_total, total),
            "max_layer_error": max(abs(layer["error"]) for run in runs.values() for layer in run["layers"])}


def uniform_counts(model) -> dict[int, list[int]]:
    """Per MoE layer each expert's tokens when the T·k choices spread evenly (the first T·k mod E one more):
    the routing the model assumes where no image decides it."""
    chosen, e = model.num_tokens * model.top_k, model.num_experts
    counts = [chosen // e + (expert < chosen % e) for expert in range(e)]
    return {layer: list(counts) for layer in range(len(model.moe_blocks))}


def program_config(accel: AcceleratorConfig) -> AcceleratorConfig:
    """`accel` with what the model's timing of a program does not depend on set aside: its name, the GELU and
    drain lanes (the engine's timing alone) and the vector lanes (they move LayerNorm's parameter sets in NORMS,
    which the scoreboard keeps whole). Configurations that differ only there time the same instructions."""
    return accel.replace(name="program", requant_lanes=1, drain_lanes=None, vector_lanes=1)


@functools.lru_cache(maxsize=4)
def _program(model, accel: AcceleratorConfig, head: bool) -> Program:
    """The program `estimate` compiles for `accel` from `model`'s shapes."""
    return backbone_program(QuantizedModel.blank(model), accel,
                            np.zeros((model.in_channels, *model.image_size), np.int8), heads=head, listing=False)


@functools.lru_cache(maxsize=16)
def _compiled(model, accel: AcceleratorConfig, run, head: bool, counts: str) -> tuple[Program, list[Issued]]:
    """`_program`, and the sequence a run of it issues with the experts' tokens `counts` (JSON)."""
    program = _program(model, accel, head)
    counts = {int(layer): tokens for layer, tokens in json.loads(counts).items()}
    return program, issued(program, InstructionSet(model, accel), run, counts)


def estimate(model, accel: AcceleratorConfig, task: int = 0, *, counts: dict[int, list[int]] | None = None,
             latency: int = 10, head: bool = True) -> dict:
    """The model alone: one inference of `task` (the backbone, and with `head` its head) compiled for `accel` from
    `model`'s shapes (`QuantizedModel.blank`), the experts' tokens `counts` (default `uniform_counts`): per run its
    `cycles`, `layers` and the units' busy cycles (`busy`); `cycles` of the whole."""
    counts = uniform_counts(model) if counts is None else counts
    key = json.dumps(counts, sort_keys=True)
    cycle_model = CycleModel(model, accel, latency=latency)
    runs = {}
    for run in ["backbone"] + ([task] if head else []):
        program, sequence = _compiled(model, program_config(accel), run, head, key)
        timeline = cycle_model.run(sequence)
        runs[run] = {"cycles": timeline.cycles, "busy": timeline.busy,
                     "layers": layer_spans(program, sequence, timeline.issue_cycles, timeline.cycles)}
    return {"runs": runs, "cycles": sum(run["cycles"] for run in runs.values())}


def _error(model: int, rtl: int) -> float:
    return (model - rtl) / rtl


# --- the model ---------------------------------------------------------------------------------------------------

@dataclass
class _Busy:
    """A unit's command in flight: until `end` (the first cycle an instruction waiting for it may issue), the
    memories it reads and writes (`_mask`s of scoreboard keys)."""
    end: int = 0
    reads: int = 0
    writes: int = 0


@dataclass
class Timeline:
    """A modelled run: the cycle of each issue, the run's cycles, per unit the cycles it was busy, and the units'
    commands as (unit, start, end) spans."""
    issue_cycles: list[int]
    cycles: int
    busy: dict[str, int]
    spans: list[tuple[str, int, int]]

    def breakdown(self, start: int, end: int) -> dict[str, int]:
        """Cycles of [start, end) as the RTL's counters split a run: `gemm` (the engine busy), and the cycles
        it is idle by the first busy unit of `vector` (LayerNorm, softmax), `router`, `loader` (DRAM reads),
        else `other` (fetch, issue, stores)."""
        groups = {"gemm": "gemm", "norm": "vector", "softmax": "vector", "router": "router",
                  "load": "loader", "loader": "loader"}
        events = []
        for unit, first, last in self.spans:
            first, last = max(first, start), min(last, end)
            if first < last and unit in groups:
                events += [(first, groups[unit], 1), (last, groups[unit], -1)]
        events.sort()
        order = ("gemm", "vector", "router", "loader")
        active = dict.fromkeys(order, 0)
        out = dict.fromkeys(order + ("other",), 0)
        time = start
        for at, group, step in events + [(end, None, 0)]:
            if at > time:
                busy = next((name for name in order if active[name]), "other")
                out[busy] += at - time
                time = at
            if group:
                active[group] += step
        return out


class _ReadPort:
    """The DRAM read port: the readers (the load path, the loader) take turns a burst at a time (the arbiter's
    round robin) and their beats come back in order on the one R channel, each beat for as many cycles as its
    reader takes to write it; a transfer's first beat comes `latency` cycles after it is asked for at the
    earliest, and a reader's transfers go one after another. Modelled as a fluid: while n readers stream, each
    moves a burst per round of their n bursts. `start` a transfer, then `end(id)`: the cycle its last beat is in."""

    def __init__(self, latency: int, burst: int):
        self.latency, self.burst = latency, burst
        self.now = 0.0
        # reader → its transfers: [id, first beat's earliest, beats left, cycles a beat]
        self.queues: dict[str, deque] = {}
        self.ends: dict[int, int] = {}       # transfers served
        self.ahead: dict[int, int] = {}      # the ends of transfers served ahead, until another is started
        self.count = 0

    def start(self, reader: str, at: int, beats: int, per_beat: int = 1) -> int:
        if any(self.queues.values()):
            self._serve(until=at)
        else:
            self.now = max(self.now, at)
        self.ahead.clear()                   # the ends served ahead may change now
        self.count += 1
        self.queues.setdefault(reader, deque()).append([self.count, at + self.latency, beats, per_beat])
        return self.count

    def end(self, transfer: int) -> int:
        if transfer in self.ends:
            return self.ends[transfer]
        if transfer not in self.ahead and sum(map(bool, self.queues.values())) == 1:    # one reader: in turn
            (queue,) = [queue for queue in self.queues.values() if queue]
            time = self.now
            for number, ready, beats, per_beat in queue:
                time = max(time, ready) + beats * per_beat
                self.ahead[number] = int(-(-time // 1))
        if transfer not in self.ahead:      # serve ahead on a copy of the state
            saved = (self.now, {r: deque(list(t) for t in q) for r, q in self.queues.items()})
            for done in self._serve(until=None, stop=transfer):
                self.ahead[done] = self.ends.pop(done)
            self.now, self.queues = saved
        return self.ahead[transfer]

    def _serve(self, until, stop=None) -> list[int]:
        """Move the transfers on from `now` to `until` (None: until `stop` ends); the transfers it ended."""
        ended = []
        active = [queue for queue in self.queues.values() if queue]
        if until is not None and len(active) == 1:      # one reader: its transfers in turn, to `until`
            queue = active[0]
            while queue:
                head = queue[0]
                start = max(self.now, head[1])
                if start >= until:
                    break
                finish = start + head[2] * head[3]
                if finish > until:
                    head[2] -= (until - start) / head[3]
                    break
                self.now = finish
                queue.popleft()
                self.ends[head[0]] = int(-(-finish // 1))
                ended.append(head[0])
            self.now = max(self.now, until)
            return ended
        now, burst = self.now, self.burst
        while active:
            streaming, waiting, weight = [], None, 0
            for queue in active:
                ready = queue[0][1]
                if ready <= now:
                    streaming.append(queue)
                    weight += burst * queue[0][3]
                elif waiting is None or ready < waiting:
                    waiting = ready
            if not streaming:
                if until is not None and waiting >= until:
                    self.now = until
                    return ended
                now = waiting
                continue
            rate = burst / weight                       # beats a cycle: a burst a round
            step = min(queue[0][2] for queue in streaming) / rate
            if waiting is not None:
                step = min(step, waiting - now)
            if until is not None:
                step = min(step, until - now)
            if step <= 0:
                self.now = now
                return ended
            now += step
            for queue in streaming:
                head = queue[0]
                head[2] -= rate * step
                if head[2] <= 1e-9:
                    queue.popleft()
                    self.ends[head[0]] = int(-(-now // 1))
                    ended.append(head[0])
                    if not queue:
                        active.remove(queue)
                    if head[0] == stop:
                        self.now = now
                        return ended
        self.now = now if until is None else max(now, until)
        return ended


def _mask(*keys) -> int:
    """Scoreboard keys (a Space, or (Space, half) for PARAMS and SCORES) as a set of bits: three a memory."""
    out = 0
    for key in keys:
        out |= 1 << (3 * key.value if isinstance(key, Space) else 3 * key[0].value + 1 + key[1])
    return out


def _gemm_touches(fields: dict, params_depth: int, scores_depth: int) -> tuple[int, int]:
    """The memories a GEMM reads and writes, as the scoreboard keys them (PARAMS and SCORES by half)."""
    mode = GemmMode(fields["mode"])
    reads = {Space.SCRATCH if fields["source"].name == "SCRATCH" else Space.ACTIVATION,
             _half(Space.PARAMS, fields["p_base"], params_depth)}
    if fields["stationary"].name == "SCRATCH":
        reads.add(Space.SCRATCH)
    if fields["row_scaled"]:
        reads.add(Space.ROW_SCALES)
    if mode is GemmMode.GELU:
        reads.add(Space.HIDDEN)
    destination = Space(fields["destination"].value)
    writes = {_half(destination, fields["d_base"], scores_depth) if destination is Space.SCORES else destination}
    return _mask(*reads), _mask(*writes)


def _half(memory: Space, base: int, depth: int) -> tuple[Space, int]:
    """The scoreboard's key of a memory it keeps per half (PARAMS, SCORES): the half word `base` is in."""
    return memory, int(base >= depth // 2)


class CycleModel:
    """The accelerator of `accel` running `model`, instruction by instruction: each issues at the first cycle the
    controller's rules allow (fetch, its unit free, the scoreboard, its slab buffer full, the router's experts; three
    cycles after the last at the earliest: the issue stage), and each unit's command starts the cycle after its
    issue and takes the cycles its contract gives. `run(sequence)` → `Timeline`.

    The costs, from the units' contracts and the RTL's pipeline depths (`hw.compute.gemm.geometry`):
    - GEMM: K tiles · N tiles · max(M, a weight tile's load cycles b, (b + L + M) / 2) (M = 1: 2M; a weight word is in
      L = `OPERAND_READ_LATENCY` cycles after its read, a tile streams the cycle after its weights are in, and loads
      once the tile two before it has streamed), or N tiles · M · d where the drain takes a row in d = C / drain
      lanes cycles and that is longer, then the first tile's load, the operand stream, the array (R + C), the drain
      (`DRAIN_STAGES`) and the last N tile's M rows (d cycles a row; GELU: at least ⌈C / requant lanes⌉, then its
      pipeline); transposed output adds the corner turn's 2C − 4;
    - LayerNorm and the softmax: rows · max(the per-row statistics, the row's beats + the two-row buffer's gap);
    - the router: per token ⌈E/E'⌉·(⌈D/d'⌉ + E' + 5) behind LayerNorm's rows, then top-k, the gate weights and the
      queues' prefix sums (the experts known: EXPERTS), then the queues (T·(k + 1): the gathering GEMMs);
    - DRAM reads: `_ReadPort`; a load path beat takes ⌈bus / the memory's word⌉ cycles to write;
    - a STORE or UPSAMPLE from SCRATCH and a GEMM with its stationary operand there wait for each other (one port).
    """

    STAGE = 1                # the issue stage: a command goes out the cycle after its decision,
    ISSUE_GAP = 3            # and decisions are three cycles apart at least, on a head there since the cycle before
    GEMM_FIXED = 14          # a command's handshakes: its start, the accumulator, the FIFO's output register, writes
    GELU_FIXED = 2           # the GELU path's rows beyond its stages
    LOAD_FIXED = 5           # a load path command after its last beat: the gearbox, the write registers, the write
    STORE_FIXED = 9          # a STORE after its last beat: the skid buffer, the write response
    END_FIXED = 7            # HALT to STATUS.done
    SEEN = 1                 # the decision sees a unit idle a cycle after it is (`Scoreboard.seen`, a ready's register)
    LAYERNORM = (31, 18, 45)     # per-row statistics, a row's gap beyond its beats, the first row's pipeline
    SOFTMAX = (21, 4, 13)

    def __init__(self, model, accel: AcceleratorConfig, *, latency: int = 10):
        from hw.compute.gemm.geometry import DRAIN_STAGES, GELU_STAGES, OPERAND_READ_LATENCY, STREAM_STAGES, tiles
        from hw.control.memories import feed_rows, onchip_spaces
        self.model, self.accel, self.latency = model, accel, latency
        self.tiles = tiles
        self.r, self.c = accel.array_rows, accel.array_cols
        self.beats = tiles(self.r, feed_rows(accel))                    # cycles to load a weight tile
        self.drain_gap = self.c // accel.drain_lanes                     # cycles between the drain's rows
        self.gelu_gap = max(tiles(self.c, min(accel.requant_lanes, self.c)), self.drain_gap)    # between GELU rows
        self.bus = accel.dram_bytes_per_beat
        self.spaces = onchip_spaces(model, accel)
        self.load_latency = OPERAND_READ_LATENCY                        # a weight word's read to the array
        self.fixed = (self.beats + self.load_latency - 1 + STREAM_STAGES + self.r + self.c + DRAIN_STAGES
                      + self.GEMM_FIXED)
        self.gelu_stages = GELU_STAGES
        feed_bytes = max(self.bus, accel.weight_feed_bytes)
        words = -(-accel.weight_buffer_bytes // feed_bytes)
        self.span = 1 << (words - 1).bit_length()
        e, macs = model.num_experts, accel.router_macs_per_cycle
        groups = min(e, macs)
        # a group's chunks, its logits written, the pipeline between (`SETTLE`) and the next token's start
        self.router_token = tiles(e, groups) * (tiles(model.embed_dim, macs // groups) + groups + SETTLE + 1)
        # after the last token's logits: its top-k, its gate weights, the queues' prefix sums
        self.router_known = e + ExponentTopK.LATENCY + GateWeights.CYCLES_PER_TOKEN + e
        self.router_queues = model.num_tokens * (model.top_k + 1)

    # --- unit costs ------------------------------------------------------------------------------------------
    def gemm_cycles(self, issue: Issued) -> int:
        m = issue.m
        if m == 0:
            return 1
        rows = 2 * m if m == 1 else m
        # a tile streams the cycle after its weights are in, and loads once the tile two before has streamed
        tiles = issue["k_tiles"] * issue["n_tiles"]
        streamed = max(rows * tiles, self.beats * tiles, (self.beats + self.load_latency + rows) * tiles // 2,
                       m * self.drain_gap * issue["n_tiles"])
        if issue["mode"] == GemmMode.GELU.value:
            tail = m * self.gelu_gap + self.gelu_stages + self.GELU_FIXED + self.drain_gap - 1
        else:
            tail = m * self.drain_gap
        transpose = 2 * self.c - 4 if issue["transpose"] else 0
        return streamed + self.fixed + tail + transpose

    def _rows(self, unit, rows: int, length: int) -> tuple[int, int]:
        """(cycles of `rows` rows of `length` through a row unit, the first row's)."""
        statistics, gap, first = unit
        beats = -(-length // self.accel.vector_lanes)
        per_row = max(statistics, beats + gap)
        return rows * per_row + first, first + per_row

    # --- a run -----------------------------------------------------------------------------------------------
    def run(self, sequence: list[Issued]) -> Timeline:
        port = _ReadPort(self.latency, self.accel.dram_max_burst)
        units = {name: _Busy() for name in ("load", "gemm", "norm", "softmax", "router", "store")}
        residual, activation, hidden, routes = (_mask(space) for space in (Space.RESIDUAL, Space.ACTIVATION,
                                                                            Space.HIDDEN, Space.ROUTES))
        norms, row_scales = _mask(Space.NORMS), _mask(Space.ROW_SCALES)
        transfers = {}                          # unit or slab buffer → its DRAM transfer
        totals = dict.fromkeys(list(units) + ["loader"], 0)
        full, empty = {}, {}                    # slab buffer → the cycle it is full, empty
        fetched = self._fetch(sequence)
        issue_cycles, last, held = [], -1, None
        spans, reads_from = [], []              # the units' spans; the DRAM transfers' (unit, start, transfer)
        routed = None                           # the router's (experts known, queues done) once its LayerNorm ran
        on_port_a = {"gemm": False, "store": False}     # the unit's last command reads SCRATCH's port A

        def end(name):
            if name in transfers:
                units[name].end = port.end(transfers.pop(name)) + self.LOAD_FIXED
            return units[name].end + self.SEEN

        def slab_full(buffer):
            if buffer in transfers:
                full[buffer] = port.end(transfers.pop(buffer)) + self.LOAD_FIXED
            return full.get(buffer, 0)

        previous_slab = None
        ahead = self.accel.dram_outstanding * self.accel.dram_max_burst

        def loader_free(buffer):
            return 0 if buffer is None else slab_full(buffer) - self.LOAD_FIXED - ahead

        def hazard(reads=0, writes=0):
            touched = reads | writes
            return max([end(name) for name, busy in units.items()
                        if busy.writes & touched or busy.reads & writes], default=0)

        def occupy(name, start, finish, reads=0, writes=0):
            units[name] = _Busy(finish, reads, writes)
            totals[name] += finish - start
            spans.append((name, start, finish))

        for position, issue in enumerate(sequence):
            op = issue.opcode
            at = max(last + self.ISSUE_GAP, fetched[position] + 1)     # the cycle the controller decides to issue it
            if op is Opcode.LOAD:
                memory = issue["memory"]
                beats = -(-issue["bytes"] // self.bus)
                if memory is Space.WEIGHTS:
                    buffer = issue["base"] // self.span
                    # the loader takes a descriptor into an empty buffer once it has asked for all of the last
                    at = max(at, empty.get(buffer, 0), loader_free(previous_slab))
                    start = at + self.STAGE
                    transfers[buffer] = port.start("loader", start, beats)
                    reads_from.append(("loader", start, transfers[buffer]))
                    previous_slab = buffer
                    empty[buffer] = 1 << 62
                    totals["loader"] += beats
                else:
                    key = _mask(self._key(memory, issue["base"]))
                    at = max(at, end("load"), hazard(writes=key))
                    if issue["region"].name == "OUTPUT":
                        at = max(at, end("store"))
                    per_beat = -(-self.bus // self.spaces[memory].word_bytes)
                    units["load"] = _Busy(at, writes=key)
                    start = at + self.STAGE
                    transfers["load"] = port.start("load", start, beats, per_beat)
                    reads_from.append(("load", start, transfers["load"]))
                    totals["load"] += beats * per_beat
            elif op is Opcode.GEMM:
                reads, writes = self._gemm_touches(issue)
                at = max(at, end("gemm"), hazard(reads, writes))
                on_port_a["gemm"] = issue["stationary"].name == "SCRATCH"
                if on_port_a["gemm"] and on_port_a["store"]:
                    at = max(at, end("store"))
                buffer = issue["w_base"] // self.span if issue["stationary"].name == "WEIGHTS" else None
                if buffer is not None and held != buffer:
                    at = max(at, slab_full(buffer))
                if issue.expert is not None and (issue["gather"] or issue["mode"] == GemmMode.COMBINE.value):
                    at = max(at, routed[1])
                start = at + self.STAGE
                finish = start + self.gemm_cycles(issue)
                occupy("gemm", start, finish, reads, writes)
                if buffer is not None:
                    if held is not None and held != buffer:
                        empty[held] = at
                    held = buffer if issue["keep"] else None
                    if not issue["keep"]:
                        empty[buffer] = finish
            elif op is Opcode.LAYERNORM:
                reads, writes = residual | norms, activation
                at = max(at, end("norm"), hazard(reads, writes))
                cycles, first = self._rows(self.LAYERNORM, issue["rows"], self.model.embed_dim)
                start = at + self.STAGE
                occupy("norm", start, start + cycles, reads, writes)
                if issue["route"]:
                    per_row = (cycles - first) // max(1, issue["rows"] - 1) if issue["rows"] > 1 else 0
                    logits = max(start + first + issue["rows"] * self.router_token,
                                 start + cycles + self.router_token)
                    if per_row >= self.router_token:
                        logits = start + cycles + self.router_token
                    known = logits + self.router_known
                    routed = (known, known + self.router_queues)
                    occupy("router", start, routed[1], writes=routes)
            elif op is Opcode.SOFTMAX:
                reads, writes = _mask((Space.SCORES, issue["half"])), activation | row_scales
                at = max(at, end("softmax"), hazard(reads, writes))
                cycles, _ = self._rows(self.SOFTMAX, issue["rows"], self.model.num_tokens)
                start = at + self.STAGE
                occupy("softmax", start, start + cycles, reads, writes)
            elif op is Opcode.ROUTE:    # after the router weights' LOADs, too
                at = max(at, end("router"), hazard(reads=_mask(Space.ROUTER) | _mask(Space.ROUTER_PARAMS),
                                                   writes=routes))
                units["router"] = _Busy(1 << 62, writes=routes)
            elif op is Opcode.EXPERTS:
                at = max(at, routed[0])
            elif op in (Opcode.STORE, Opcode.UPSAMPLE):
                memory = _mask(issue["memory"])
                at = max([at, end("store")] + [end(name) for name, busy in units.items() if memory & busy.writes])
                on_port_a["store"] = issue["memory"] is Space.SCRATCH
                if on_port_a["store"] and on_port_a["gemm"]:
                    at = max(at, end("gemm"))
                words = issue["bytes"] // self.bus if op is Opcode.STORE else issue["tiles"] * 2 * issue["width"]
                start = at + self.STAGE
                occupy("store", start, start + words + self.latency // 2 + self.STORE_FIXED, reads=memory)
            elif op is Opcode.CONFIG_GELU:
                at = max(at, hazard(writes=hidden))
            elif op in (Opcode.SYNC, Opcode.HALT):
                at = max([at] + [end(name) for name in units] + [slab_full(b) for b in list(transfers)
                                                                  if not isinstance(b, str)])
            issue_cycles.append(at)
            last = at
        spans += [(unit, start, port.end(transfer) + self.LOAD_FIXED) for unit, start, transfer in reads_from]
        return Timeline(issue_cycles, last + self.END_FIXED, totals, spans)

    def _key(self, memory: Space, base: int):
        return _half(memory, base, self.spaces[memory].depth) if memory in (Space.PARAMS, Space.SCORES) else memory

    def _gemm_touches(self, issue: Issued) -> tuple[int, int]:
        depths = self.spaces[Space.PARAMS].depth, self.spaces[Space.SCORES].depth
        cached = issue.__dict__.get("touches")          # kept on the issue: a sweep times one sequence many times
        if cached is None or cached[0] != depths:
            cached = depths, _gemm_touches(issue.instruction.fields, *depths)
            object.__setattr__(issue, "touches", cached)
        return cached[1]

    def _fetch(self, sequence: list[Issued]) -> list[int]:
        """The cycle each instruction of the sequence is in the fetch buffer (an EXPERTS body's replays at once)."""
        first = self.latency + 8 + -(-16 // self.bus)
        seen, out = set(), []
        for issue in sequence:
            out.append(0 if issue.index in seen else first)
            seen.add(issue.index)
        return out
