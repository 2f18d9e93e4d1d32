"""The one configuration of the project: the model (`ModelConfig`) and the accelerator (`AcceleratorConfig`).

Both are frozen dataclasses validated on construction: a value that breaks a rule raises `ConfigError`, which
names the parameter, its value and the rule. The RTL (`hw/`), the golden model and the firmware are all
generated from these objects; nothing else holds a model or accelerator dimension.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import NamedTuple

from . import ops

__all__ = [
    "ConfigError", "MAX_ARRAY_SIDE", "TaskConfig", "HeadConv", "ModelConfig", "AcceleratorConfig", "GATE_VARIANTS",
    "MODEL_PRESETS", "ACCELERATOR_PRESETS", "DEFAULT_MODEL_PRESET", "DEFAULT_ACCELERATOR_PRESET",
    "model_preset", "accelerator_preset", "check_compatible", "largest_dot_product", "accumulator_bits_needed",
    "config_hash",
]

GATE_VARIANTS = ("vmoe", "noisy")


MAX_ARRAY_SIDE = 128   # rows or columns of a systolic array: 16,384 multipliers, beyond any target's DSPs


class ConfigError(ValueError):
    """A configuration value breaks a rule. `parameter`, `value` and `rule` say which, what and why."""

    def __init__(self, parameter: str, value, rule: str):
        self.parameter, self.value, self.rule = parameter, value, rule
        super().__init__(f"{parameter} = {value!r}: {rule}")


def _int(name: str, value, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, value, "must be an integer")
    if value < minimum:
        raise ConfigError(name, value, f"must be at least {minimum}")


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


@dataclass(frozen=True)
class TaskConfig:
    """One task: its name and the number of output channels of its head (classes; 1 for depth)."""

    name: str
    classes: int

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError("task.name", self.name, "must be a non-empty identifier")
        _int(f"tasks[{self.name}].classes", self.classes)


class HeadConv(NamedTuple):
    """One convolution of a task head: kernel × kernel, in → out channels, on a height × width map."""

    name: str
    kernel: int
    in_channels: int
    out_channels: int
    height: int
    width: int

    @property
    def macs(self) -> int:
        return self.height * self.width * self.kernel ** 2 * self.in_channels * self.out_channels


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of an M³ViT: backbone, mixture of experts, routers and PUP task heads.

    Block `i` has an MoE MLP when `i in moe_blocks` (default: the odd blocks) and a dense MLP otherwise.
    Each task has its own router and head. A head is `head_convs` 3×3 convolutions (+BN+ReLU) with a
    bilinear ×2 after each but the last, a 1×1 classifier, and further ×2 stages until the output reaches
    the image size; `patch_size` must therefore be a power of two (log2(patch) ×2 stages in all).
    """

    name: str
    image_size: tuple[int, int]          # (height, width) in pixels
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int                      # hidden width of the dense MLP
    num_experts: int
    top_k: int
    expert_hidden: int                   # hidden width of one expert
    tasks: tuple[TaskConfig, ...]
    gate: str = "vmoe"                   # "vmoe": softmax over all E, then top-k; "noisy": top-k, softmax over k
    moe_blocks: tuple[int, ...] | None = None
    in_channels: int = 3
    head_channels: int = 256
    head_convs: int = 4

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", self.name, "must be a non-empty string")
        size = self.image_size
        if (not isinstance(size, (tuple, list)) or len(size) != 2):
            raise ConfigError("image_size", size, "must be a pair (height, width)")
        object.__setattr__(self, "image_size", tuple(size))
        for axis, value in zip(("height", "width"), size):
            _int(f"image_size.{axis}", value)
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_hidden", "num_experts", "top_k",
                     "expert_hidden", "in_channels", "head_channels", "head_convs"):
            _int(name, getattr(self, name))
        if not _is_power_of_two(self.patch_size):
            raise ConfigError("patch_size", self.patch_size,
                              "must be a power of two so the task heads' ×2 upsampling reaches the image size")
        for axis, value in zip(("height", "width"), size):
            if value % self.patch_size:
                raise ConfigError(f"image_size.{axis}", value,
                                  f"must be a multiple of patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ConfigError("embed_dim", self.embed_dim,
                              f"must be divisible by num_heads ({self.num_heads})")
        if self.top_k > self.num_experts:
            raise ConfigError("top_k", self.top_k, f"must not exceed num_experts ({self.num_experts})")
        if self.gate not in GATE_VARIANTS:
            raise ConfigError("gate", self.gate, f"must be one of {', '.join(GATE_VARIANTS)}")
        moe = self.moe_blocks
        if moe is None:
            moe = tuple(range(1, self.depth, 2))
        if not isinstance(moe, (tuple, list)):
            raise ConfigError("moe_blocks", moe, "must be a sequence of block indices")
        for index in moe:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.depth:
                raise ConfigError("moe_blocks", tuple(moe), f"every index must be an integer in [0, {self.depth})")
        if list(moe) != sorted(set(moe)):
            raise ConfigError("moe_blocks", tuple(moe), "must be ascending without repeats")
        object.__setattr__(self, "moe_blocks", tuple(moe))
        tasks = self.tasks
        if not isinstance(tasks, (tuple, list)) or not tasks:
            raise ConfigError("tasks", tasks, "must be a non-empty sequence of TaskConfig")
        for task in tasks:
            if not isinstance(task, TaskConfig):
                raise ConfigError("tasks", tasks, "every entry must be a TaskConfig")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ConfigError("tasks", tuple(names), "task names must be unique")
        object.__setattr__(self, "tasks", tuple(tasks))

    # Derived dimensions -------------------------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """Tokens per image, the cls token included."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: the patch embedding's K."""
        return self.in_channels * self.patch_size ** 2

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def upsample_stages(self) -> int:
        """Bilinear ×2 stages of each task head: log2(patch_size)."""
        return self.patch_size.bit_length() - 1

    def is_moe(self, block: int) -> bool:
        return block in self.moe_blocks

    def task_index(self, task: int | str) -> int:
        """The index of `task`, given by index or name; `ConfigError` if there is no such task."""
        names = ", ".join(f"{i}: {t.name}" for i, t in enumerate(self.tasks))
        if isinstance(task, str):
            for index, candidate in enumerate(self.tasks):
                if candidate.name == task:
                    return index
            raise ConfigError("task", task, f"no such task in {self.name} (tasks: {names})")
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise ConfigError("task", task, f"must be a task index in [0, {self.num_tasks}) (tasks: {names})")
        return task

    def head_layers(self, task: int | str) -> list["HeadConv"]:
        """The convolutions of `task`'s head in order, each with the feature-map size it runs at."""
        height, width = self.grid
        channels = self.embed_dim
        layers = []
        between, _ = self.head_upsamples()
        for index in range(self.head_convs):
            layers.append(HeadConv(f"conv_{index}", 3, channels, self.head_channels, height, width))
            channels = self.head_channels
            if index < between:
                height, width = 2 * height, 2 * width
        classes = self.tasks[self.task_index(task)].classes
        layers.append(HeadConv(f"conv_{self.head_convs}", 1, channels, classes, height, width))
        return layers

    def head_upsamples(self) -> tuple[int, int]:
        """(×2 stages between the 3×3 convolutions, ×2 stages after the classifier)."""
        between = min(self.head_convs - 1, self.upsample_stages)
        return between, self.upsample_stages - between

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        data["moe_blocks"] = list(self.moe_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["tasks"] = tuple(TaskConfig(**task) for task in data.get("tasks", ()))
        return cls(**data)


@dataclass(frozen=True)
class AcceleratorConfig:
    """Dimensions of the accelerator (see docs/architecture.md for what each one sizes).

    The systolic array is weight-stationary: `array_rows` (R) is the K extent of the stationary tile and
    `array_cols` (C) its N extent; tokens stream through it R operands per cycle and leave C results per cycle.
    """

    name: str
    array_rows: int
    array_cols: int
    operand_width: int = 8                # bits of both array operands
    accumulator_width: int = 32           # bits of the array's and the GEMM engine's accumulators
    weight_feed_bytes: int | None = None  # bytes per cycle into the array's stationary registers (default C)
    weight_buffers: int = 2               # ping/pong (or more) expert weight slab buffers
    weight_buffer_bytes: int = 72 * 1024  # one slab buffer
    token_block: int | None = None        # query rows of an attention-score block (None: all tokens)
    dram_data_width: int = 128            # bits of the AXI4 read data bus
    dram_max_burst: int = 16              # beats per AXI4 INCR burst
    dram_outstanding: int = 2             # AXI4 read bursts in flight
    router_macs_per_cycle: int = 128      # router multiply-accumulates per cycle
    router_weights_resident: bool = True  # every MoE layer's router weights on chip (else two layers' at once)
    residual_width: int = 16              # bits of the residual stream, LayerNorm input and router input
    vector_lanes: int = 16                # elements per cycle of LayerNorm / softmax / GELU / combine units
    requant_lanes: int = 4                # GELU lanes in the GEMM engine's output path (values per cycle)
    drain_lanes: int | None = None        # columns the GEMM engine's drain requantizes a cycle (default C: a row)
    requant_multiplier_width: int = 16    # bits of the requantization multiplier

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", self.name, "must be a non-empty string")
        for name in ("array_rows", "array_cols", "weight_buffers", "weight_buffer_bytes", "dram_max_burst",
                     "dram_outstanding", "router_macs_per_cycle", "vector_lanes", "requant_lanes"):
            _int(name, getattr(self, name))
        for name in ("array_rows", "array_cols"):
            if getattr(self, name) > MAX_ARRAY_SIDE:
                raise ConfigError(name, getattr(self, name), f"must be at most {MAX_ARRAY_SIDE} (the generator's cap: "
                                  f"{MAX_ARRAY_SIDE}×{MAX_ARRAY_SIDE} multipliers are several times the largest FPGA's)")
        _int("operand_width", self.operand_width, minimum=2)
        if self.operand_width > 16:
            raise ConfigError("operand_width", self.operand_width, "must be at most 16 bits")
        _int("accumulator_width", self.accumulator_width, minimum=2 * self.operand_width)
        if self.accumulator_width > 64:
            raise ConfigError("accumulator_width", self.accumulator_width, "must be at most 64 bits")
        _int("requant_multiplier_width", self.requant_multiplier_width, minimum=2)
        if self.requant_multiplier_width > 32:
            raise ConfigError("requant_multiplier_width", self.requant_multiplier_width, "must be at most 32 bits")
        _int("residual_width", self.residual_width, minimum=self.operand_width)
        if self.residual_width != ops.RESIDUAL_BITS:
            raise ConfigError("residual_width", self.residual_width,
                              f"the numerics fix the residual stream at {ops.RESIDUAL_BITS} bits (docs/numerics.md, "
                              "section 1); the golden model, LayerNorm and the router are built for that")
        if self.requant_multiplier_width != ops.MULTIPLIER_BITS + 1:
            raise ConfigError("requant_multiplier_width", self.requant_multiplier_width,
                              f"the numerics' multipliers lie in [2^{ops.MULTIPLIER_BITS - 1}, 2^{ops.MULTIPLIER_BITS}): "
                              f"a {ops.MULTIPLIER_BITS + 1}-bit signed field (docs/numerics.md, section 2)")
        if self.weight_buffers < 2:
            raise ConfigError("weight_buffers", self.weight_buffers,
                              "must be at least 2 so loading overlaps compute (ping/pong)")
        if self.weight_feed_bytes is None:
            object.__setattr__(self, "weight_feed_bytes", self.array_cols)
        if self.drain_lanes is None:
            object.__setattr__(self, "drain_lanes", self.array_cols)
        _int("drain_lanes", self.drain_lanes)
        if self.array_cols % self.drain_lanes:
            raise ConfigError("drain_lanes", self.drain_lanes,
                              f"must divide array_cols ({self.array_cols}): a row drains in whole chunks of lanes")
        _int("weight_feed_bytes", self.weight_feed_bytes)
        row_bytes = self.array_cols * self.operand_width // 8
        if self.operand_width % 8 or self.weight_feed_bytes % row_bytes \
                or self.weight_feed_bytes > self.array_rows * row_bytes:
            raise ConfigError("weight_feed_bytes", self.weight_feed_bytes,
                              f"must be a whole number of array rows ({row_bytes} bytes each), "
                              f"from 1 to array_rows ({self.array_rows}) of them")
        if self.dram_data_width not in (64, 128, 256):
            raise ConfigError("dram_data_width", self.dram_data_width, "must be 64, 128 or 256 bits")
        if self.dram_max_burst > 256:
            raise ConfigError("dram_max_burst", self.dram_max_burst, "AXI4 INCR bursts are at most 256 beats")
        if self.token_block is not None:
            _int("token_block", self.token_block)
        if not isinstance(self.router_weights_resident, bool):
            raise ConfigError("router_weights_resident", self.router_weights_resident, "must be a bool")

    @property
    def macs_per_cycle(self) -> int:
        return self.array_rows * self.array_cols

    @property
    def dram_bytes_per_beat(self) -> int:
        return self.dram_data_width // 8

    @property
    def weight_load_cycles(self) -> int:
        """Cycles to fill the array's stationary registers with one R×C tile."""
        return math.ceil(self.array_rows * self.array_cols * self.operand_width // 8 / self.weight_feed_bytes)

    def tokens_per_block(self, model: ModelConfig) -> int:
        return model.num_tokens if self.token_block is None else min(self.token_block, model.num_tokens)

    def router_layers_held(self, model: ModelConfig) -> int:
        """The MoE layers whose router weights (every task's) the router holds at once: all of them when
        `router_weights_resident`, else two, MoE layer j in set j mod 2 (loaded while the layer before routes)."""
        layers = max(1, len(model.moe_blocks))
        return layers if self.router_weights_resident else min(2, layers)

    def replace(self, **changes) -> "AcceleratorConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AcceleratorConfig":
        return cls(**data)


# Compatibility of a model and an accelerator --------------------------------------------------------------

def _weight_reductions(model: ModelConfig) -> list[tuple[int, str]]:
    """The reduction length K of every weight matrix (its rows), with what it is."""
    candidates = [
        (model.patch_dim, "patch embedding"),
        (model.embed_dim, "qkv / projection / fc1 / router"),
        (model.mlp_hidden, "dense fc2"),
        (model.expert_hidden, "expert fc2"),
    ]
    return candidates + [(conv.kernel ** 2 * conv.in_channels, f"task head {conv.name}")
                         for conv in model.head_layers(0)]


def largest_dot_product(model: ModelConfig) -> tuple[int, str]:
    """The longest reduction (K) of any matrix product of one inference, and which product it is."""
    return max(_weight_reductions(model) + [(model.head_dim, "attention Q·Kᵀ"),
                                            (model.num_tokens, "attention·V")])


def accumulator_bits_needed(k: int, operand_width: int) -> int:
    """Signed bits that hold any sum of `k` products of two signed `operand_width`-bit operands."""
    largest = k * (1 << (2 * operand_width - 2))  # (−2^(w−1))² is the largest product magnitude
    return largest.bit_length() + 1


def check_compatible(model: ModelConfig, accel: AcceleratorConfig) -> None:
    """Raise `ConfigError` if `accel` cannot run `model` exactly, whatever the target."""
    k, where = largest_dot_product(model)
    needed = accumulator_bits_needed(k, accel.operand_width)
    if accel.accumulator_width < needed:
        raise ConfigError("accumulator_width", accel.accumulator_width,
                          f"too narrow for {model.name}: its largest dot product ({where}, K = {k}) of "
                          f"{accel.operand_width}-bit operands needs {needed} bits")
    k, where = max(_weight_reductions(model))
    slab = k * accel.array_cols * accel.operand_width // 8
    if accel.weight_buffer_bytes < slab:
        raise ConfigError("weight_buffer_bytes", accel.weight_buffer_bytes,
                          f"smaller than the narrowest slab of {model.name}: {where} has K = {k} rows, "
                          f"× {accel.array_cols} columns = {slab} bytes")
    if accel.dram_max_burst * accel.dram_bytes_per_beat > 4096:
        raise ConfigError("dram_max_burst", accel.dram_max_burst,
                          f"a burst of {accel.dram_max_burst} × {accel.dram_bytes_per_beat} bytes crosses 4 KiB")


def config_hash(model: ModelConfig, accel: AcceleratorConfig) -> int:
    """32 bits that name the hardware the pair builds (the first four bytes of the SHA-256 of their canonical
    JSON, big-endian): the hardware reports the hash it was generated from (`CONFIG_HASH`), the driver refuses a
    program and a DRAM image built for another. What only labels or restates a value is left out, so that two
    configurations of the same hardware share their hash (and so their Verilog): the two `name`s, and
    `token_block` is taken as the rows a block holds (`tokens_per_block`: None and any value from the model's
    tokens up are the same)."""
    hardware = {"model": model.to_dict(), "accelerator": accel.to_dict()}
    for part in hardware.values():
        del part["name"]
    hardware["accelerator"]["token_block"] = accel.tokens_per_block(model)
    text = json.dumps(hardware, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


# Presets --------------------------------------------------------------------------------------------------

def _tasks(*pairs: tuple[str, int]) -> tuple[TaskConfig, ...]:
    return tuple(TaskConfig(name, classes) for name, classes in pairs)


MODEL_PRESETS: dict[str, ModelConfig] = {
    config.name: config for config in [
        # Small enough that a whole backbone inference simulates in the Python simulator.
        ModelConfig(name="tiny", image_size=(32, 32), patch_size=8, embed_dim=32, depth=4, num_heads=2,
                    mlp_hidden=128, num_experts=4, top_k=2, expert_hidden=64,
                    tasks=_tasks(("semseg", 4), ("depth", 1)), head_channels=16),
        ModelConfig(name="m3vit-tiny-cityscapes", image_size=(128, 256), patch_size=16, embed_dim=192, depth=12,
                    num_heads=3, mlp_hidden=768, num_experts=16, top_k=2, expert_hidden=384,
                    tasks=_tasks(("semseg", 7), ("depth", 1))),
        ModelConfig(name="m3vit-small-nyud", image_size=(480, 640), patch_size=16, embed_dim=384, depth=12,
                    num_heads=12, mlp_hidden=1536, num_experts=16, top_k=2, expert_hidden=768,
                    tasks=_tasks(("semseg", 40), ("depth", 1))),
        ModelConfig(name="m3vit-small-pascal", image_size=(512, 512), patch_size=16, embed_dim=384, depth=12,
                    num_heads=12, mlp_hidden=1536, num_experts=16, top_k=2, expert_hidden=768,
                    tasks=_tasks(("semseg", 21), ("human_parts", 7), ("saliency", 1), ("normals", 3),
                                 ("edge", 1))),
    ]
}
DEFAULT_MODEL_PRESET = "m3vit-tiny-cityscapes"

ACCELERATOR_PRESETS: dict[str, AcceleratorConfig] = {
    config.name: config for config in [
        # ULX3S-85F class: small slabs, tokens in blocks of 32 rows; the vector units take one value a cycle and
        # GELU one or two (beside a 4×4 or 8×8 array their share of a block stays at a few per cent, the softmax
        # hidden behind Q·Kᵀ, and their logic is what the FPGA has left after the array).
        AcceleratorConfig(name="4x4", array_rows=4, array_cols=4, weight_buffer_bytes=16 * 1024,
                          token_block=32, dram_data_width=64, router_macs_per_cycle=16, vector_lanes=1,
                          requant_lanes=2),
        # 8×8: what m3vit-tiny-cityscapes needs to fit the ULX3S-85F's 208 DP16KD (181 by the plan, beside
        # the units' own tables): 18 KiB slabs (the floor the heads' conv_3 sets), query blocks of 16 rows and
        # the routers' weights two MoE layers at a time; by the cycle model 0.2 % more cycles than 36 KiB slabs,
        # blocks of 32 and every router resident. And less logic, without which no 8×8 top routes there: a drain
        # of 4 lanes, 8 router MACs and one GELU lane (34 MULT18X18D and 6,500 flip-flops fewer; 0.5 % more cycles
        # than 8, 32 and 2); the tiny model's top then routes or nearly, m3vit-tiny-cityscapes' needs fewer block
        # RAMs too (docs/architecture.md, section 13).
        AcceleratorConfig(name="8x8", array_rows=8, array_cols=8, weight_buffer_bytes=18 * 1024,
                          token_block=16, dram_data_width=64, router_macs_per_cycle=8, vector_lanes=1,
                          requant_lanes=1, drain_lanes=4, router_weights_resident=False),
        # ZCU104 class: a whole m3vit-tiny expert matrix per slab, all of its 129 tokens in one block; four
        # bursts in flight cover the DRAM latency at a full 32 bytes per cycle (a 256-bit port: at a 150 MHz
        # fabric clock, 4.8 GB/s, which one 128-bit HP port at 300 MHz behind a width converter carries).
        # Two array rows a weight feed word: an expert with fewer than 16 tokens waits 8 cycles for its next
        # weight tile, not 16 (m3vit-tiny's experts take 1-51 tokens), and its weights stream in at the same
        # pace (72 KiB in 2,304 cycles).
        AcceleratorConfig(name="16x16", array_rows=16, array_cols=16, weight_buffer_bytes=72 * 1024,
                          token_block=192, dram_data_width=256, dram_outstanding=4, router_macs_per_cycle=128,
                          vector_lanes=16, requant_lanes=8, weight_feed_bytes=32),
        AcceleratorConfig(name="32x32", array_rows=32, array_cols=32, weight_buffer_bytes=144 * 1024,
                          token_block=192, dram_data_width=256, dram_outstanding=4, router_macs_per_cycle=128,
                          vector_lanes=32, requant_lanes=16),
    ]
}
DEFAULT_ACCELERATOR_PRESET = "16x16"


def _preset(kind: str, presets: dict, name: str):
    if name not in presets:
        raise ConfigError(f"{kind} preset", name, f"unknown; choose one of {', '.join(presets)}")
    return presets[name]


def model_preset(name: str) -> ModelConfig:
    return _preset("model", MODEL_PRESETS, name)


def accelerator_preset(name: str) -> AcceleratorConfig:
    """A preset by name, or an `RxC` array with the defaults of the nearest preset (e.g. `3x5`)."""
    if name in ACCELERATOR_PRESETS:
        return ACCELERATOR_PRESETS[name]
    rows, sep, cols = name.partition("x")
    if sep and rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0:
        base = min(ACCELERATOR_PRESETS.values(),
                   key=lambda c: abs(c.macs_per_cycle - int(rows) * int(cols)))
        return base.replace(name=name, array_rows=int(rows), array_cols=int(cols), weight_feed_bytes=None,
                            drain_lanes=None)
    return _preset("accelerator", ACCELERATOR_PRESETS, name)
