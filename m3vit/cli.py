"""`m3vit`: the command line. Each subcommand parses its arguments and calls a library function that the
tests call too; errors in what the user gave (an argument out of range, a missing or unwritable path, a bad
preset, a configuration that does not fit, a malformed file) are printed as one line and exit with status 2,
before any long work. Progress of long steps goes to standard error; outputs are written whole or not at all."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from golden.config import (ACCELERATOR_PRESETS, DEFAULT_ACCELERATOR_PRESET, DEFAULT_MODEL_PRESET, MODEL_PRESETS,
                           ConfigError, accelerator_preset, check_compatible, model_preset)
from firmware.sweep import AXES
from golden.costs import model_info
from golden.images import ImageError, load_images
from golden.quantize import QuantizationError
from golden.quantized import QuantizedFileError
from golden.scenes import SceneError
from hw.board.top import DEFAULT_CLOCK_HZ
from hw.flow.fit import TARGETS, FitError, fit_report, target
from hw.flow.formal import PROOFS, FormalError
from hw.control.isa import IsaError
from hw.control.memories import check_top_level
from hw.flow.synth import PLACE_AND_ROUTE_TARGETS, SynthError

from golden.errors import CheckpointError
from firmware.board import LinkError
from firmware.compiler import CompileError
from firmware.driver import DriverError
from golden.files import atomic_open

USER_ERRORS = (ConfigError, FitError, CheckpointError, QuantizedFileError, QuantizationError, SynthError, ImageError,
               IsaError, LinkError, DriverError, SceneError, CompileError)
MAX_SEED = 2 ** 32 - 1


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


# --- argument types: each checks its value when the arguments are parsed, before any work ------------------

def _integer(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bounds}")
    return value


def _count(text: str) -> int:
    return _integer(text, 1, 100_000)


def _counts(text: str) -> list[int]:
    return [_count(item) for item in text.split(",")]


def _seed(text: str) -> int:
    return _integer(text, 0, MAX_SEED)


def _latency(text: str) -> int:
    return _integer(text, 1, 10_000)


def _real(text: str, low: float, high: float, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value:g} {unit} is out of range: must be from {low:g} to {high:g}")
    return value


def _frequency(text: str) -> float:
    return _real(text, 1, 1000, "MHz")


def _minutes(text: str) -> float:
    return _real(text, 0.01, 7 * 24 * 60, "minutes")


def _existing(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return text


def _existing_file(text: str) -> str:
    if not Path(_existing(text)).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text


def _writable_directory(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _output_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory: give a file name")
    parent = path.parent
    if not _writable_directory(parent):
        raise argparse.ArgumentTypeError(f"{text}: cannot write into {parent}/ (missing or not writable)")
    return text


def _output_directory(text: str) -> str:
    path = Path(text)
    if path.exists():
        if not _writable_directory(path):
            raise argparse.ArgumentTypeError(f"{text}: not a writable directory")
        return text
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not _writable_directory(existing):
        raise argparse.ArgumentTypeError(f"{text}: cannot create it in {existing}/ (not writable)")
    return text


def _format_info(info: dict) -> str:
    config = info["config"]
    lines = [
        f"M³ViT preset {info['preset']}",
        f"  image {config['image_size'][0]}×{config['image_size'][1]}×{config['in_channels']}, "
        f"patch {config['patch_size']}, {info['tokens']} tokens (cls included)",
        f"  embed {config['embed_dim']}, depth {config['depth']}, {config['num_heads']} heads of "
        f"{info['head_dim']}, dense MLP hidden {config['mlp_hidden']}",
        f"  MoE blocks {config['moe_blocks']}: {config['num_experts']} experts of hidden "
        f"{config['expert_hidden']}, top-{config['top_k']}, gate {config['gate']}",
        "  tasks " + ", ".join(f"{t['name']} ({t['classes']})" for t in config["tasks"])
        + f"; heads {config['head_convs']} convs of {config['head_channels']} channels",
        "Per single-task inference (multiply-accumulates):",
        f"  backbone                 {info['backbone_macs']:>16,}",
    ]
    lines += [f"    {kind:<22} {macs:>16,}" for kind, macs in info["backbone_macs_by_kind"].items()]
    lines += [
        f"  backbone, all experts    {info['backbone_macs_all_experts']:>16,}",
        f"  task head ({info['head_task']:<8})     {info['head_macs']:>16,}",
        f"Parameters                 {info['params']:>16,}  (backbone {info['params_backbone']:,}, "
        f"heads {info['params_heads']:,})",
        f"Backbone int8 weight bytes {info['weight_bytes']:>16,}",
        f"One expert's weight bytes  {info['expert_weight_bytes']:>16,}  (both layers)",
    ]
    return "\n".join(lines)


def _format_fit(report: dict) -> str:
    lines = [f"{report['model']} on accelerator {report['accel']}, target {report['target']}: "
             + ("fits" if report["fits"] else "does NOT fit")]
    for memory in report["memories"]:
        lines.append(f"  {memory['name']:<15} {memory['count']}× {memory['depth']:>6} × {memory['width']:>4} bit "
                     f"{memory['bytes']:>10,} B  {memory['blocks']:>4} {memory['block']}")
    used = ", ".join(f"{n} {u}/{report['blocks_available'][n]}" for n, u in report["blocks_used"].items())
    lines.append(f"  memory blocks: {used}; on-chip {report['onchip_bytes']:,} bytes")
    units = ", ".join(f"{unit} {count}" for unit, count in report["multipliers"].items())
    lines.append(f"  {report['multiplier_name']}: {report['multipliers_total']}/{report['multipliers_available']} "
                 f"({units})")
    lines += [f"  problem: {problem}" for problem in report["problems"]]
    return "\n".join(lines)


def fit_table() -> str:
    """Markdown table of every model preset × accelerator preset × target (docs/architecture.md)."""
    rows = ["| model | accel | target | on-chip KiB | memory blocks used / available | multipliers | fits |",
            "|---|---|---|---:|---|---|---|"]
    for model_name, model in MODEL_PRESETS.items():
        for accel_name, accel in ACCELERATOR_PRESETS.items():
            for target_name, fpga in TARGETS.items():
                try:
                    report = fit_report(model, accel, fpga)
                    check_top_level(model, accel)
                except ConfigError as error:     # a preset the accelerator cannot run at all
                    rows.append(f"| {model_name} | {accel_name} | {target_name} | — | — | — | "
                                f"no: `{error.parameter}` = {error.value}, {error.rule} |")
                    continue
                blocks = ", ".join(f"{kind} {used}/{report.blocks_available[kind]}"
                                   for kind, used in report.blocks_used.items())
                rows.append(f"| {model_name} | {accel_name} | {target_name} | {report.onchip_bytes / 1024:,.0f} | "
                            f"{blocks} | {report.multipliers.total}/{report.multipliers_available} "
                            f"{report.multiplier_name} | {'yes' if report.fits else 'no'} |")
    return "\n".join(rows)


def cmd_info(args) -> int:
    info = model_info(model_preset(args.preset), args.task)
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0


def cmd_fit(args) -> int:
    if args.table:
        print(fit_table())
        return 0
    model, accel = model_preset(args.preset), accelerator_preset(args.accel)
    report = fit_report(model, accel, target(args.target))
    check_top_level(model, accel)
    print(json.dumps(report.to_dict(), indent=2) if args.json else _format_fit(report.to_dict()))
    return 0 if report.fits else 1


def cmd_bench_float(args) -> int:
    from golden.float_model import time_inference
    result = time_inference(model_preset(args.preset), task=args.task, repeats=args.repeats, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['preset']} task {result['task']}: float forward {result['float_seconds'] * 1e3:.1f} ms "
              f"(best of {result['repeats']}, {result['threads']} threads)")
    return 0


def _snr_and_agreement(figures: dict) -> str:
    worst = figures["worst_layer"]
    return (f"snr_db {figures['snr_db']:.1f}   router_agreement {figures['router_agreement']:.3f}"
            + (f" (worst: block {worst['block']}, {worst['task']})" if worst else ""))


def _format_golden(report: dict) -> str:
    lines = [f"{report['preset']}: integer golden model against float ({report['test_images']} held-out images, "
             f"{report['calibration_images']} calibration images, seed {report['seed']})"]
    if report["checkpoint_report"]:
        lines.append(f"  {report['checkpoint_report']}")
    lines += [f"  {_snr_and_agreement(report)}   head_snr_db {report['head_snr_db']:.1f}",
              f"  golden {report['golden_seconds'] * 1e3:.0f} ms, float {report['float_seconds'] * 1e3:.0f} ms "
              f"per inference: {report['time_ratio']:.2f}×"]
    if report["weights_floor"]:
        lines.append(f"  int8 weights alone (every activation float): {_snr_and_agreement(report['weights_floor'])}")
    bins = report["margin_bins"]
    for task, figures in report["tasks"].items():
        lines.append(f"  task {task}: SNR per block " + " ".join(f"{x:.1f}" for x in figures["snr_db_per_block"])
                     + f"; head {figures['head_snr_db']:.1f} dB")
        lines.append("    MoE block  agreement  margin median  margins in " + " ".join(
            f"[{lo},{hi})" for lo, hi in zip(bins, bins[1:])))
        for block, agreement in figures["router_agreement"].items():
            histogram = figures["margin_histogram"].get(block, [])
            lines.append(f"    {block:>9}  {agreement:9.3f}  {figures['margin_median'].get(block, 0):13.3f}  "
                         + " ".join(f"{count:>5}" for count in histogram))
    return "\n".join(lines)


def _images(args, which: str, config):
    source = getattr(args, which)
    return None if source is None else load_images(source, config, args.normalize)


def cmd_golden(args) -> int:
    from golden.fidelity import measure
    config = model_preset(args.preset)
    tasks = None if args.task is None else [args.task]
    report = measure(config, tasks=tasks, seed=args.seed, checkpoint=args.checkpoint,
                     backbone_only=args.backbone_only, calibration=_images(args, "calibration", config),
                     test=_images(args, "test", config), test_images=args.images, weights_floor=args.weights_floor)
    if args.json or "snr_db" not in report:
        print(json.dumps(report, indent=2))
    else:
        print(_format_golden(report))
    return 0


def cmd_quantize(args) -> int:
    from golden.fidelity import CALIBRATION_SEED, load_float
    from golden.float_model import quantize_model
    from golden.images import natural_images
    config = model_preset(args.preset)
    network, loaded = load_float(config, args.seed, args.checkpoint, args.backbone_only)
    calibration = _images(args, "calibration", config)
    if calibration is None:
        calibration = natural_images(config, args.images, CALIBRATION_SEED + args.seed)
    quantized = quantize_model(network, calibration)
    quantized.save(args.output)
    source = "the seeded trained-like model" if args.checkpoint is None else args.checkpoint
    print(f"wrote {args.output}: {config.name} from {source}, calibrated on {len(calibration)} images, "
          f"{len(quantized.arrays)} arrays")
    if loaded is not None:
        print(loaded.summary())
    return 0


def _progress_bar(label: str, unit: str = "step"):
    """A progress callback (step, fraction, losses) drawing one line on standard error: redrawn in place on a
    terminal, else printed every 30 s."""
    import time
    terminal, last = sys.stderr.isatty(), [0.0]

    def show(step, fraction, losses):
        now = time.monotonic()
        if not terminal and now - last[0] < 30 and fraction < 1:
            return
        last[0] = now
        filled = round(20 * fraction)
        text = (f"{label} [{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} {unit} {step:,}  "
                + "  ".join(f"{name} {value:.4f}" for name, value in losses.items()))
        print(("\r" + text + ("\n" if fraction >= 1 else "")) if terminal else text, end="" if terminal else "\n",
              file=sys.stderr, flush=True)
    return show


def cmd_train(args) -> int:
    """Train the float model on the procedural scenes; write its checkpoint and print its held-out scores."""
    from golden.scenes import check_labels
    from golden.train import train
    config = model_preset(args.preset)
    check_labels(config)                    # refuses a preset whose tasks the scenes do not label, before any work
    result = train(config, minutes=args.minutes, steps=args.steps, seed=args.seed,
                   progress=_progress_bar(f"training {config.name}"))
    result.model.save(args.output)
    report = {"preset": config.name, "checkpoint": args.output, **result.report}
    report["depth_error_ratio"] = (report["depth_error"] / report["constant_depth_error"]
                                   if "depth_error" in report else None)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"wrote {args.output}: {config.name} trained {report['steps']:,} steps in {report['train_seconds']:.0f} s "
          f"(seed {args.seed}); held-out scenes:")
    if "miou" in report:
        print(f"  segmentation mIoU {report['miou']:.3f} (per class "
              + " ".join(f"{iou:.2f}" for iou in report["iou_per_class"]) + ")")
    if "depth_error" in report:
        print(f"  depth error {report['depth_error']:.4f} against a constant's {report['constant_depth_error']:.4f} "
              f"({report['depth_error_ratio']:.2f}×)")
    print(f"  least-used expert: {report['min_expert_share']:.3f} of the assignments (uniform: "
          f"{1 / config.num_experts:.3f}); per layer and task:")
    for block, tasks in report["expert_shares"].items():
        for task, shares in tasks.items():
            print(f"    block {block} {task:<8} " + " ".join(f"{share:.2f}" for share in shares))
    return 0


def cmd_demo(args) -> int:
    """A trained model's predictions and routing on one image, through the simulated accelerator, as PNGs."""
    from firmware.demo import demo
    from golden.fidelity import load_float
    from golden.float_model import M3ViT, read_checkpoint
    from golden.scenes import check_labels
    data = read_checkpoint(args.checkpoint)
    if isinstance(data, dict) and "format" in data and args.preset is None:
        network = M3ViT.load(args.checkpoint)
        config = network.config
    else:
        config = model_preset(args.preset or "tiny")
        network, _ = load_float(config, 0, args.checkpoint)
    accel = accelerator_preset(args.accel)
    check_compatible(config, accel)
    check_top_level(config, accel)
    check_labels(config)                      # the scenes label its tasks (calibration, the default image)
    image = load_images(args.image, config)[0] if args.image is not None else None
    report = demo(network, accel, args.output, image=image, seed=args.seed, simulator=args.sim)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        source = args.image or f"a held-out scene (seed {args.seed})"
        print(f"{config.name} on {accel.name} ({args.sim}), {source}:")
        for name, task in report["tasks"].items():
            print(f"  {name:<8} {task['cycles']:>10,} cycles, accelerator "
                  f"{'equals' if task['accelerator_equals_golden'] else 'DIFFERS FROM'} the golden model")
        more = f"; on {report['held_out_scenes']} more held-out scenes"
        if "pixel_agreement_float" in report:
            print(f"  segmentation: golden agrees with float on {report['pixel_agreement_float']:.1%} of the pixels"
                  f"{more} {report['held_out_pixel_agreement_float']:.1%}")
        if "depth_snr_db" in report:
            print(f"  depth: golden against float {report['depth_snr_db']:.1f} dB{more} "
                  f"{report['held_out_depth_snr_db']:.1f} dB")
        print("wrote " + ", ".join(report["files"]))
    return 0 if report["accelerator_equals_golden"] else 1


UNITS = ("gemm", "loader", "router", "gelu", "layernorm", "softmax", "residual")


def _unit(args):
    """The unit the arguments name, sized for the model preset and the accelerator, and its module name."""
    from hw.compute.gemm import GemmEngine
    from hw.memory.loader import WeightPath
    from hw.vector.gelu import Gelu
    from hw.vector.layernorm import LayerNorm
    from hw.vector.residual import ResidualAdd
    from hw.moe.router import Router
    from hw.vector.softmax import Softmax
    model, accel = model_preset(args.preset), accelerator_preset(args.array)
    units = {"gemm": lambda: GemmEngine.for_model(model, accel), "loader": lambda: WeightPath.for_config(model, accel),
             "router": lambda: Router.for_model(model, accel), "gelu": lambda: Gelu(accel.vector_lanes),
             "layernorm": lambda: LayerNorm.for_model(model, accel), "softmax": lambda: Softmax.for_model(model, accel),
             "residual": lambda: ResidualAdd.for_model(model, accel)}
    return units[args.unit](), f"{args.unit}_{accel.array_rows}x{accel.array_cols}", model


def cmd_elaborate(args) -> int:
    from hw.flow.export import to_rtlil, to_verilog
    from hw.flow.synth import platform
    board = platform(args.target) if args.target else None
    component, name, model = _unit(args)
    logging.getLogger("hw").info(f"elaborating {name}")
    texts = {f"{name}.v": to_verilog(component, name, platform=board),
             f"{name}.il": to_rtlil(component, name, platform=board)}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for file_name, text in texts.items():
        with atomic_open(output / file_name, "w") as file:
            file.write(text)
    print(f"wrote {output / name}.v and .il ({args.unit} for {model.name} on a {args.array} array"
          f"{f', primitives of {args.target}' if args.target else ''})")
    return 0


def cmd_synth(args) -> int:
    from hw.flow.synth import platform, synthesize
    platform(args.target)   # an unknown target fails before the unit is built
    if not args.no_fit_check:
        report = fit_report(model_preset(args.preset), accelerator_preset(args.array), target(args.target))
        if not report.fits:
            raise FitError(report, "--no-fit-check synthesizes the unit alone anyway")
    component, name, model = _unit(args)
    result = synthesize(component, name, args.target, args.freq, seed=args.seed, keep=args.output)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    verdict = "meets" if result.fmax_mhz >= args.freq else "misses"
    print(f"{name} ({model.name}) on {args.target}, out of context: Fmax {result.fmax_mhz:.2f} MHz "
          f"({verdict} {args.freq:g} MHz)")
    print("  cells: " + ", ".join(f"{cell} {count:,}" for cell, count in result.cells.items() if count))
    print("  placed: " + ", ".join(f"{kind} {value['used']:,}/{value['available']:,}"
                                   for kind, value in result.utilization.items()))
    print("  critical path: " + " → ".join(f"{kind} {delay:.2f} ns ({where})"
                                           for delay, kind, where in result.critical_path))
    return 0


def cmd_build(args) -> int:
    if args.estimate:
        return _estimate(args)
    from hw.flow.board import DEFAULT_SEED, build_board
    model, accel = model_preset(args.preset or "tiny"), accelerator_preset(args.accel)
    result = build_board(model, accel, args.board, clock_hz=args.clock * 1e6,
                         seed=DEFAULT_SEED if args.seed is None else args.seed, directory=args.output)
    if args.program:
        program = os.environ.get("OPENFPGALOADER", "openFPGALoader")
        subprocess.run([program, "-b", "ulx3s", result.bitstream], check=True)
    print(json.dumps({k: v for k, v in result.__dict__.items()}, indent=2) if args.json else result.text())
    return 0


def _estimate(args) -> int:
    """`m3vit build --estimate DEVICE`: the synthesis estimate, and with -o the files a Vivado user wraps."""
    from firmware.header import c_header
    from hw.flow.xilinx import device, estimate, vivado_top
    device(args.estimate)
    model, accel = model_preset(args.preset or "m3vit-tiny-cityscapes"), accelerator_preset(args.accel)
    check_compatible(model, accel)
    output = Path(args.output) if args.output else None
    result = estimate(model, accel, args.estimate, directory=output)
    if output is not None:
        for name, text in (("m3vit_accelerator.v", vivado_top(model, accel)), ("m3vit_accelerator.h",
                           c_header(model, accel)), ("report.json", json.dumps(result.to_dict(), indent=2)),
                           ("report.txt", result.text() + "\n")):
            with atomic_open(output / name, "w") as file:
                file.write(text)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0


def cmd_interfaces(args) -> int:
    from hw.flow.interfaces import instruction_table, interface_rows, interface_table
    model, accel = model_preset(args.preset), accelerator_preset(args.array)
    if args.instructions:
        print(instruction_table(model, accel))
    elif args.json:
        print(json.dumps([dict(zip(("unit", "port", "kind", "payload"), row)) for row in interface_rows(model, accel)],
                         indent=2))
    else:
        print(interface_table(model, accel))
    return 0


def cmd_header(args) -> int:
    from firmware.header import c_header
    model, accel = model_preset(args.preset), accelerator_preset(args.accel)
    check_compatible(model, accel)
    text = c_header(model, accel)
    with atomic_open(args.output, "w") as file:
        file.write(text)
    print(f"wrote {args.output}: instruction set, host registers and DRAM layout of {model.name} on {accel.name}")
    return 0


def _backbone_inputs(args):
    """The model, accelerator, tasks, quantized model and image of `m3vit run` and the benches that share its
    options."""
    model, accel = model_preset(args.preset), accelerator_preset(args.accel)
    check_compatible(model, accel)
    check_top_level(model, accel)
    tasks = list(range(model.num_tasks)) if args.task == "all" else [model.task_index(args.task)]
    return (model, accel, tasks) + _quantized_and_image(args, model)


def _quantized_and_image(args, model):
    """The quantized model (`--quantized`, or the synthetic one of `--seed`) and the built-in image of
    `--image-seed`, quantized."""
    from golden.images import natural_images
    from golden.quantize import quantize_image
    if args.quantized is not None:
        from golden.quantized import QuantizedModel
        quantized = QuantizedModel.load(args.quantized, expect=model)
    else:
        from golden.fidelity import CALIBRATION_SEED, load_float
        from golden.float_model import quantize_model
        network, _ = load_float(model, args.seed, None)
        quantized = quantize_model(network, natural_images(model, 16, CALIBRATION_SEED + args.seed))
    return quantized, quantize_image(quantized, natural_images(model, 1, args.image_seed)[0])


def _exact(report: dict) -> bool:
    return report["bit_exact"] and report.get("output_bit_exact", True)


def _write_predictions(path: str, reports: list[dict], model) -> list[str]:
    """The host's predictions as .npy: segmentation (several classes) as class indices after the argmax, a
    one-channel task as its map in real units (the output's scale); one file, or one per task named after it."""
    import numpy as np
    written = []
    for report in reports:
        prediction = report.pop("prediction")
        scale = report.pop("output_scale")
        values = prediction.argmax(0) if len(prediction) > 1 else (prediction[0] * scale).astype(np.float32)
        target = Path(path)
        if len(reports) > 1:
            target = target.with_name(f"{target.stem}.{report['task_name']}{target.suffix or '.npy'}")
        np.save(target, values)
        written.append(f"task {report['task']}: prediction {values.shape} {values.dtype} in {target}")
    return written


def cmd_run(args) -> int:
    """A whole inference per task (backbone, then the task's head unless --backbone-only) on the simulated
    accelerator against the golden model; exit status 1 if a task is not bit-exact."""
    from firmware.board import Board
    from firmware.run import run_inference
    from firmware.sim import SimulatedBoard
    if args.board is not None:
        where = Board(args.board, clock_hz=args.clock * 1e6)
    elif args.sim == "board":
        where = SimulatedBoard(clock_hz=args.clock * 1e6, preload=True)
    else:
        where = args.sim
    args.sim = str(where)
    model, accel, tasks, quantized, image = _backbone_inputs(args)
    heads = not args.backbone_only
    summary = run_inference(quantized, accel, image, tasks, simulator=where, latency=args.latency, heads=heads,
                            predictions=args.output is not None)
    reports, start_up, switch = summary["tasks"], summary["start_up"], summary["switch"]
    written = _write_predictions(args.output, reports, model) if args.output is not None else []
    rows = [{**report, "result": "PASS" if _exact(report) else "FAIL",
             **{f"{unit}_share": cycles / report["cycles"] for unit, cycles in report["busy"].items()},
             "read": f"{report['dram_read_bytes']:,}/{report['expected_read_bytes']:,}"} for report in reports]
    footer = [f"task {report['task']}: first mismatch: {report['first_mismatch']}" for report in reports
              if "first_mismatch" in report]
    footer += [f"task {report['task']}: GEMM idle {report['cycles'] - report['busy']['gemm']:,} cycles (" + ", ".join(
        f"{unit} {cycles:,}" for unit, cycles in report["exposed"].items()) + f"), GEMM beyond the floor "
        f"{report['gemm_overhead_cycles']:,}" for report in reports]
    footer += [f"task {report['task']}: head {report['head_cycles']:,} cycles (floor {report['head_floor_cycles']:,}, "
               f"util {report['head_utilization']:.3f}), output {'bit-exact' if report['output_bit_exact'] else 'DIFFERS'}"
               f", read {report['head_dram_read_bytes']:,}/{report['head_expected_read_bytes']:,} B, written "
               f"{report['head_dram_write_bytes']:,}/{report['head_expected_write_bytes']:,} B, DRAM stalls "
               f"{report['head_dram_stall_cycles']:,}; whole inference {report['inference_cycles']:,} cycles, util "
               f"{report['inference_utilization']:.3f}" for report in reports if "head_cycles" in report]
    footer += written
    if start_up:
        footer.append(f"start-up (resident router weights, once): {start_up['cycles']:,} cycles, "
                      f"read {start_up['dram_read_bytes']:,}/{start_up['expected_read_bytes']:,} B")
    if switch:
        again = "bit-exact" if switch["bit_exact_again"] else "NOT bit-exact"
        footer.append(f"switch from task {switch['from']} back to task {switch['to']}: {switch['switch_cycles']:,} "
                      f"cycles beyond the task's own ({switch['switch_fraction']:.5%}); its second run "
                      f"{switch['cycles_again']:,} cycles, {again}")
    result = {"preset": model.name, "accel": accel.name, "simulator": args.sim, "tasks": reports,
              "start_up": start_up, "switch": switch, "switch_cycles": switch and switch["switch_cycles"],
              "switch_fraction": switch and switch["switch_fraction"]}
    _report(args, result,
            f"{model.name} {'inference' if heads else 'backbone'} on {accel.name} ({args.sim}, DRAM latency "
            f"{args.latency}): each task against the golden model, bit for bit (backbone columns; the head below)", [
                ("task", "task_name", "<8"), ("result", "result", "<6"), ("cycles", "cycles", ">10,"),
                ("floor", "floor_cycles", ">10,"), ("util", "utilization", ">5.3f"),
                ("gemm", "gemm_share", ">5.2f"), ("loader", "loader_share", ">6.2f"),
                ("router", "router_share", ">6.2f"), ("vector", "vector_share", ">6.2f"),
                ("read/expected B", "read", ">22"), ("written B", "dram_write_bytes", ">9,"),
                ("wall s", "wall_seconds", ">7.1f")], rows, footer)
    return 0 if all(_exact(report) for report in reports) and (not switch or switch["bit_exact_again"]) else 1


def cmd_bench_model(args) -> int:
    """The cycle model against the RTL (Verilator) per array and task: every layer's cycles and the whole
    inference's."""
    from firmware.cycles import compare
    model = model_preset(args.preset)
    tasks = list(range(model.num_tasks)) if args.task == "all" else [model.task_index(args.task)]
    arrays = []
    for name in args.arrays.split(","):
        accel = accelerator_preset(name.strip())
        check_compatible(model, accel)
        check_top_level(model, accel)
        arrays.append((name.strip(), accel))
    quantized, image = _quantized_and_image(args, model)
    rows = []
    for name, accel in arrays:
        for task in tasks:
            logging.getLogger("hw").info(f"{name}, task {task}: the RTL in Verilator, then the model")
            result = compare(quantized, accel, image, task, latency=args.latency, head=not args.backbone_only)
            worst = max((layer for run in result["runs"].values() for layer in run["layers"]),
                        key=lambda layer: abs(layer["error"]))
            rows.append({"array": name, **result, "worst_layer": worst["layer"]})
            logging.getLogger("hw").info(f"{name}, task {task}: RTL {result['cycles']:,} cycles, model "
                                         f"{result['model_cycles']:,} ({result['total_error']:+.3%}), largest "
                                         f"layer error {result['max_layer_error']:.3%} ({worst['layer']})")
    return _report(args, {"preset": model.name, "latency": args.latency, "rows": rows},
                   f"Cycle model against the RTL, {model.name} (Verilator, DRAM latency {args.latency}; errors "
                   f"(model − RTL) / RTL)", [
                       ("array", "array", "<6"), ("task", "task_name", "<8"), ("RTL cycles", "cycles", ">12,"),
                       ("model", "model_cycles", ">12,"), ("total err", "total_error", ">+10.3%"),
                       ("max layer err", "max_layer_error", ">13.3%"), ("worst layer", "worst_layer", "<22")],
                   rows)


def cmd_report(args) -> int:
    """One configuration's performance report: every task's inference simulated (Verilator) and modelled."""
    from firmware.report import performance_report
    from hw.flow.fit import target
    model = model_preset(args.preset)
    accel = accelerator_preset(args.accel)
    check_compatible(model, accel)
    check_top_level(model, accel)
    target(args.target)
    tasks = list(range(model.num_tasks)) if args.task == "all" else [model.task_index(args.task)]
    quantized, image = _quantized_and_image(args, model)
    report = performance_report(quantized, accel, image, tasks, args.output, clock_mhz=args.clock,
                                target_name=args.target, latency=args.latency)
    rows = [{"task": t["task_name"], "cycles": t["cycles"], "model_cycles": t["model_cycles"],
             "ms": t["latency_ms"], "fps": t["frames_per_s"], "read": t["dram_read_bytes"]["this_design"],
             "token": t["dram_read_bytes"]["token_by_token"], "dense": t["dram_read_bytes"]["dense_multitask"]}
            for t in report["tasks"]]
    footer = [f"{Path(args.output) / 'report.md'}, report.json and the plots"]
    return _report(args, report, f"{model.name} on {accel.name} at {args.clock:g} MHz (RTL simulated; the model "
                   "beside it)", [("task", "task", "<8"), ("cycles", "cycles", ">12,"),
                                  ("model", "model_cycles", ">12,"),
                                  ("ms", "ms", ">8.2f"), ("frames/s", "fps", ">8.1f"), ("DRAM B", "read", ">12,"),
                                  ("token-by-token", "token", ">14,"), ("dense", "dense", ">12,")], rows, footer)


def cmd_sweep(args) -> int:
    """The design space on the analytic model, cached point by point, on a Dask cluster; its Pareto front, with
    --verify simulated in Verilator against the model."""
    import time
    from firmware.plots import pareto_plot
    from firmware.sweep import grid, pareto, run_sweep, select, synthesize, verify
    presets = [name.strip() for name in args.preset.split(",")]
    models = [model_preset(name) for name in presets]
    task = models[0].task_index(args.task)
    from hw.flow.fit import target
    target(args.target)
    axes = {"array": args.arrays, "weight_buffer_bytes": [kib * 1024 for kib in args.buffers],
            "dram_data_width": args.buses, "vector_lanes": args.lanes, "requant_lanes": args.gelu_lanes}
    points = select(grid(presets, axes, task=task, target=args.target, latency=args.latency), args.points)
    out = Path(args.output)
    start = time.perf_counter()
    records = run_sweep(points, out, scheduler=args.scheduler, workers=args.workers,
                        progress=_step_progress(f"sweep of {len(points)} points"))
    seconds = time.perf_counter() - start
    front = sorted(pareto(records), key=lambda record: record["cycles"])
    result = {"presets": presets, "task": task, "target": args.target, "points": len(points),
              "errors": sum("error" in record for record in records), "seconds": round(seconds, 1),
              "workers": None if args.scheduler else args.workers, "scheduler": args.scheduler,
              "pareto": [record["key"] for record in front], "records": records}
    if args.verify:
        quantized = {}
        for model in models:
            path = out / f"quantized-{model.name}.npz"
            if not path.exists():
                args.preset, args.quantized = model.name, None
                _quantized_and_image(args, model)[0].save(path)
            quantized[model.name] = str(path)
        chosen = select(front, args.verify)
        start = time.perf_counter()
        result["verified"] = verify(chosen, quantized, out, scheduler=args.scheduler, workers=args.workers,
                                    head=args.verify_heads, image_seed=args.image_seed,
                                    progress=_step_progress(f"Verilator on {len(chosen)} Pareto points"))
        result["verify_seconds"] = round(time.perf_counter() - start, 1)
    if args.synth:
        chosen = select([record for record in front if record["fits"]], args.synth)
        result["synthesized"] = synthesize(chosen, out, scheduler=args.scheduler, workers=args.workers,
                                           progress=_step_progress(f"synthesis of {len(chosen)} Pareto points"))
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    pareto_plot(records, front, out / "pareto.png", f"{', '.join(presets)}: {len(points)} configurations, "
                f"task {task}, target {args.target}", result.get("synthesized", []))
    rows = [{"key": r["key"], **r["point"], "cycles": r["cycles"], "multipliers": r["multipliers"],
             "memory_mbit": r["memory_bits"] / 1e6, "fits": r["fits"]} for r in front]
    footer = [f"{len(points)} points ({result['errors']} not buildable) in {seconds:.1f} s; "
              f"{out / 'sweep.json'}, {out / 'pareto.png'}"]
    for verified in result.get("verified", []):
        footer.append(f"Verilator {verified['key']}: total error {verified['total_error']:+.3%}, largest layer "
                      f"error {verified['max_layer_error']:.3%} ({verified['seconds']} s)")
    for synthesized in result.get("synthesized", []):
        footer.append(f"synthesis {synthesized['key']}: " + (synthesized["error"] if "error" in synthesized else
                      f"{synthesized['luts']:,.0f} LUTs, {synthesized['ffs']:,.0f} FFs, {synthesized['multipliers']:,} "
                      f"multipliers" + (f", Fmax {synthesized['fmax_mhz']:.1f} MHz" if synthesized["fmax_mhz"] else "")
                      + f" ({synthesized['seconds']:.0f} s)"))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "records"}, indent=2))
        return 0
    return _report(args, result, f"Pareto front (cycles, multipliers, on-chip memory) of {', '.join(presets)}", [
        ("array", "array", ">5"), ("buffer B", "weight_buffer_bytes", ">9,"), ("bus", "dram_data_width", ">4"),
        ("vec", "vector_lanes", ">3"), ("gelu", "requant_lanes", ">4"), ("cycles", "cycles", ">12,"),
        ("mult", "multipliers", ">6,"), ("Mbit", "memory_mbit", ">6.2f"), ("fits", "fits", ">5")], rows, footer)


def _step_progress(label: str):
    show = _progress_bar(label, unit="done")
    return lambda done, total: show(done, done / total if total else 1.0, {})


def cmd_bench_sim(args) -> int:
    from firmware.run import simulator_speed
    model, accel, tasks, quantized, image = _backbone_inputs(args)
    result = simulator_speed(quantized, accel, image, args.cycles, tasks[0], args.latency)
    title = (f"{model.name} on {accel.name}, task {result['task']}: the first {result['cycles']:,} cycles of a "
             f"backbone run in each simulator")
    return _report(args, result, title, [
        ("pysim cycles/s", "pysim_cycles_per_s", ">14,.0f"), ("fast cycles/s", "fast_cycles_per_s", ">14,.0f"),
        ("ratio", "ratio", ">7.0f"), ("fast set-up s", "fast_setup_seconds", ">13.1f"),
        ("counters agree", "counters_agree", ">14")], [result])


def cmd_prove(args) -> int:
    """Exit status 1 if a rule fails (its trace kept with -o)."""
    from hw.flow.formal import prove_unit
    for unit in PROOFS if args.unit == "all" else [args.unit]:
        try:
            result = prove_unit(unit, args.depth, keep=None if args.output is None else Path(args.output) / unit)
        except FormalError as error:
            print(f"m3vit: {error}", file=sys.stderr)
            return 1
        reach = (f"all {result.covers} output stalls reached" if result.covers_reached == result.covers else
                 f"{result.covers_reached} of {result.covers} output stalls reached (the others hold vacuously "
                 "at this depth)")
        print(f"{unit}: handshake rules hold to depth {result.depth} ({reach}; {result.seconds:.0f} s)")
    return 0


def _report(args, result: dict, title: str, columns, rows, footer=()) -> int:
    """`result` as JSON with --json; else `title`, `rows` (dicts) as a table of `columns` ((heading, key,
    format spec) each; the spec's alignment and width set the heading's), and `footer` lines."""
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    def cell(value, spec):
        return format(str(value) if isinstance(value, bool) else value, spec)

    print(title)
    print("  " + " ".join(format(heading, re.match(r"[<>]?\d*", spec).group()) for heading, _, spec in columns))
    for row in rows:
        print("  " + " ".join(cell(row[key], spec) for _, key, spec in columns))
    for line in footer:
        print("  " + line)
    return 0


def cmd_bench_gemm(args) -> int:
    from hw.sim.bench import bench_gemm
    model = model_preset(args.preset)
    accel = accelerator_preset(args.array)
    if args.weight_feed is not None:
        accel = accel.replace(weight_feed_bytes=args.weight_feed)
    result = bench_gemm(model, accel, task=model.task_index(args.task))
    return _report(
        args, result,
        f"GEMM engine on a {result['array']} array ({result['weight_feed_bytes']} weight bytes per cycle), "
        f"{result['preset']} backbone (task {result['task']}), cycles from the fast simulator",
        [("name", "name", "<16"), ("M", "m", ">5"), ("K", "k", ">5"), ("N", "n", ">5"), ("count", "count", ">5"),
         ("cycles", "cycles", ">8"), ("floor", "floor", ">8"), ("bound", "bound", ">8"),
         ("util", "utilization", ">6.3f"), ("exact", "bit_exact", ">5")],
        result["shapes"],
        [f"backbone: {result['backbone_cycles']:,} cycles, overall utilization {result['overall_utilization']:.3f}"])


def cmd_bench_loader(args) -> int:
    from hw.sim.bench import bench_loader
    model, accel = model_preset(args.preset), accelerator_preset(args.array)
    result = bench_loader(model, accel, task=model.task_index(args.task), latency=args.latency)
    return _report(
        args, result,
        f"Weight path on a {result['array']} accelerator, {result['preset']} MoE layer (task {result['task']}, "
        f"experts {result['active_experts']}), DRAM latency {result['latency']} cycles, "
        f"{result['outstanding']} bursts in flight; cycles from the fast simulator",
        [("B/cycle", "bandwidth", ">7"), ("bus", "bus_bytes", ">4"), ("cycles", "cycles", ">8"),
         ("ideal", "ideal_cycles", ">8"), ("ratio", "ratio", ">6.4f"), ("compute", "compute_cycles", ">8"),
         ("load", "load_cycles", ">8"), ("bytes read", "bytes_read", ">10"),
         ("active bytes", "active_expert_bytes", ">12")],
        result["rows"],
        [f"on-chip weight buffers: {result['weight_buffer_bytes']:,} bytes; all of a layer's experts: "
         f"{result['all_experts_bytes']:,} bytes"])


def cmd_bench_router(args) -> int:
    from hw.sim.bench import bench_router
    model, accel = model_preset(args.preset), accelerator_preset(args.array)
    result = bench_router(model, accel, task=model.task_index(args.task))
    return _report(
        args, result,
        f"Router for {result['preset']} (task {result['task']}): {result['tokens']} tokens of one MoE layer, "
        f"against {result['expert_cycles']:,} cycles of expert compute on a {result['array']} array "
        f"(fast simulator)",
        [("MACs/cycle", "macs_per_cycle", ">10"), ("cycles", "cycles", ">8"),
         ("per token", "cycles_per_token", ">9.1f"), ("fraction", "fraction_of_moe_layer", ">8.3f"),
         ("exact", "bit_exact", ">5")],
        result["rows"])


def cmd_bench_vector(args) -> int:
    from hw.sim.bench import bench_vector
    model, accel = model_preset(args.preset), accelerator_preset(args.array)
    synth_accel = None if args.no_synth else accelerator_preset(args.synth_array)
    result = bench_vector(model, accel, task=model.task_index(args.task), synth_accel=synth_accel)
    footer = [f"{block} block: {work['gemm']:,} GEMM cycles, {work['total']:,} in all"
              for block, work in result["blocks"].items()]
    footer.append("bit-exact: " + ", ".join(f"{name} {ok}" for name, ok in result["bit_exact"].items()))
    if "synthesis" in result:
        synthesis = result["synthesis"]
        footer.append(f"synth_ecp5 ({synthesis['target']}, {synthesis['array']} preset, "
                      f"{synthesis['lanes']} vector lanes; GELU, inside the engine, at its requant_lanes):")
        for name, cells in synthesis["cells"].items():
            footer.append(f"  {name:<12} " + ", ".join(f"{cell} {count:,}" for cell, count in cells.items()
                                                      if count))
        footer.append(f"softmax + GELU + LayerNorm: {synthesis['softmax_gelu_layernorm_lut4']:,} LUT4, "
                      f"{synthesis['fraction_of_engine_lut4']:.2f} of the engine's")
    return _report(
        args, result,
        f"Vector units for {result['preset']} at {result['lanes']} lanes, against the block's GEMMs on a "
        f"{result['array']} array (task {result['task']}; GEMMs in the fast simulator, units in the Python one)",
        [("block", "block", "<6"), ("op", "op", "<21"), ("cycles", "cycles", ">8"),
         ("exposed", "exposed_cycles", ">8"), ("fraction", "fraction_of_block", ">8.4f"),
         ("overlapped", "overlapped", ">10")],
        result["rows"], footer)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="m3vit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def preset_args(sub):
        sub.add_argument("--preset", default=DEFAULT_MODEL_PRESET,
                         help=f"model preset: {', '.join(MODEL_PRESETS)} (default {DEFAULT_MODEL_PRESET})")
        sub.add_argument("--json", action="store_true", help="print JSON")

    info = commands.add_parser("info", help="model dimensions, multiply-accumulates, parameters, weight bytes")
    preset_args(info)
    info.add_argument("--task", default=0, help="task (index or name) whose head is counted (default 0)")
    info.set_defaults(run=cmd_info)

    fit = commands.add_parser("fit", help="check that a model and an accelerator fit a target FPGA")
    preset_args(fit)
    fit.add_argument("--accel", default=DEFAULT_ACCELERATOR_PRESET,
                     help=f"accelerator preset ({', '.join(ACCELERATOR_PRESETS)}) or RxC")
    fit.add_argument("--target", default="zcu104", help=f"target: {', '.join(TARGETS)}")
    fit.add_argument("--table", action="store_true", help="markdown table of every preset on every target")
    fit.set_defaults(run=cmd_fit)

    def model_source_args(sub):
        sub.add_argument("--seed", type=_seed, default=0, help=f"seed of the synthetic model (0 … {MAX_SEED})")
        sub.add_argument("--checkpoint", type=_existing_file, default=None,
                         help="float checkpoint (official names, a training checkpoint, or `M3ViT.save`); "
                              "golden also takes a quantized .npz file")
        sub.add_argument("--backbone-only", action="store_true",
                         help="the checkpoint holds the backbone only: the task heads get seeded random weights")
        sub.add_argument("--calibration", type=_existing, default=None,
                         help="calibration images: a .npy of float images [N, 3, H, W] or a directory of "
                              "PNG/JPEG files (default: built-in natural images)")
        sub.add_argument("--normalize", default="none", choices=("none", "imagenet"),
                         help="how the user's images are normalised before the model (default none: [0, 1])")

    golden = commands.add_parser("golden", help="fidelity and speed of the integer golden model against float")
    preset_args(golden)
    golden.add_argument("--task", default=None, help="task index or name (default: every task)")
    model_source_args(golden)
    golden.add_argument("--test", type=_existing, default=None, help="held-out test images, as --calibration")
    golden.add_argument("--images", type=_count, default=8, help="built-in held-out images per task (default 8)")
    golden.add_argument("--weights-floor", action="store_true",
                        help="also the int8 weights alone: the float model with the quantized weights, every "
                             "activation float (what no activation format wins back)")
    golden.set_defaults(run=cmd_golden)

    quantize = commands.add_parser("quantize", help="quantize the seeded trained-like model or a checkpoint")
    preset_args(quantize)
    model_source_args(quantize)
    quantize.add_argument("--images", type=_count, default=16, help="built-in calibration images (default 16)")
    quantize.add_argument("-o", "--output", type=_output_file, required=True, help="the quantized model (.npz)")
    quantize.set_defaults(run=cmd_quantize)

    elaborate = commands.add_parser("elaborate", help="write a unit's Verilog and RTLIL")
    elaborate.add_argument("unit", choices=UNITS)
    elaborate.add_argument("--preset", default=DEFAULT_MODEL_PRESET, help="model preset sizing the unit")
    elaborate.add_argument("--array", default=DEFAULT_ACCELERATOR_PRESET, help="accelerator preset or RxC")
    elaborate.add_argument("-o", "--output", type=_output_directory, required=True, help="output directory")
    elaborate.add_argument("--target", default=None,
                           help=f"use the DSP primitives of a target ({', '.join(PLACE_AND_ROUTE_TARGETS)}); "
                                "default: portable logic")
    elaborate.set_defaults(run=cmd_elaborate)

    synth = commands.add_parser("synth", help="synthesize, place and route a unit out of context: Fmax, resources")
    synth.add_argument("unit", choices=UNITS)
    synth.add_argument("--preset", default=DEFAULT_MODEL_PRESET, help="model preset sizing the unit")
    synth.add_argument("--array", default=DEFAULT_ACCELERATOR_PRESET, help="accelerator preset or RxC")
    synth.add_argument("--target", default="ulx3s-85f", help=f"target: {', '.join(PLACE_AND_ROUTE_TARGETS)}")
    synth.add_argument("--freq", type=_frequency, default=125.0, help="clock constraint in MHz (default 125)")
    synth.add_argument("--seed", type=_seed, default=1, help="nextpnr's placement seed (default 1)")
    synth.add_argument("-o", "--output", type=_output_directory, default=None,
                       help="keep the netlists and logs in this directory")
    synth.add_argument("--no-fit-check", action="store_true",
                       help="synthesize the unit even if the whole accelerator does not fit the target")
    synth.add_argument("--json", action="store_true", help="print JSON")
    synth.set_defaults(run=cmd_synth)

    build = commands.add_parser("build", help="a board's bitstream: the accelerator on its SDRAM, driven over USB "
                                              "serial; or --estimate: a Zynq UltraScale+ synthesis estimate")
    build.add_argument("--board", default="ulx3s-85f", help="board (default ulx3s-85f)")
    build.add_argument("--estimate", metavar="DEVICE", default=None,
                       help="instead of a board build: the accelerator's resources on DEVICE (xczu7ev: the ZCU104's) "
                            "from Yosys synth_xilinx, no placement; with -o also its Verilog for Vivado and C header")
    build.add_argument("--preset", default=None,
                       help="model preset (default tiny, or m3vit-tiny-cityscapes with --estimate)")
    build.add_argument("--accel", default="4x4", help="accelerator preset or RxC (default 4x4)")
    build.add_argument("--clock", type=_frequency, default=DEFAULT_CLOCK_HZ / 1e6,
                       help=f"accelerator clock in MHz (default {DEFAULT_CLOCK_HZ / 1e6:g})")
    build.add_argument("--seed", type=_seed,
                       help="nextpnr's placement seed (default: DEFAULT_SEED of hw.flow.board, 2)")
    build.add_argument("-o", "--output", type=_output_directory, default=None,
                       help="build directory (a board build needs one)")
    build.add_argument("--program", action="store_true", help="program the board with openFPGALoader afterwards")
    build.add_argument("--json", action="store_true", help="print JSON")
    build.set_defaults(run=cmd_build)

    interfaces = commands.add_parser("interfaces", help="every unit's ports, read from their signatures (markdown)")
    preset_args(interfaces)
    interfaces.add_argument("--array", default="16x16", help="accelerator preset or RxC (default 16x16)")
    interfaces.add_argument("--instructions", action="store_true",
                            help="the instruction set and the host registers instead (markdown)")
    interfaces.set_defaults(run=cmd_interfaces)

    header = commands.add_parser("header", help="the C header of a configuration: instructions, registers, DRAM layout")
    header.add_argument("--preset", default=DEFAULT_MODEL_PRESET, help="model preset")
    header.add_argument("--accel", default=DEFAULT_ACCELERATOR_PRESET, help="accelerator preset or RxC")
    header.add_argument("-o", "--output", type=_output_file, required=True, help="the header file (.h)")
    header.set_defaults(run=cmd_header)

    def simulated_inputs(sub):
        """What a simulated inference runs on: the model, the image, the DRAM's latency."""
        sub.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic trained-like model")
        sub.add_argument("--quantized", type=_existing_file, default=None,
                         help="a quantized model (.npz from `m3vit quantize`) instead of the synthetic one")
        sub.add_argument("--image-seed", type=_seed, default=1, help="seed of the built-in input image")
        sub.add_argument("--latency", type=_latency, default=10, help="DRAM cycles to a burst's first beat")

    def run_args(sub, preset, accel, task="all"):
        sub.add_argument("--preset", default=preset, help=f"model preset (default {preset})")
        sub.add_argument("--accel", default=accel, help=f"accelerator preset or RxC (default {accel})")
        if task == "all":
            sub.add_argument("--task", default="all", help="task index or name, or all (default all)")
            sub.add_argument("--sim", default="verilator", choices=("pysim", "verilator", "board"),
                             help="simulator (default verilator; board: the whole board, driven over its UART)")
            sub.add_argument("--board", metavar="PORT", default=None,
                             help="run on a board (`m3vit build --program`) on this serial port instead")
            sub.add_argument("--clock", type=_frequency, default=DEFAULT_CLOCK_HZ / 1e6,
                             help=f"the board's clock in MHz, as built (default {DEFAULT_CLOCK_HZ / 1e6:g})")
        else:
            sub.add_argument("--task", default=task, help=f"task index or name (default {task})")
        simulated_inputs(sub)
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.add_argument("--backbone-only", action="store_true", help="run the backbone alone, not the task heads")
        sub.add_argument("--output", type=_output_file, default=None,
                         help="write the prediction (.npy: class indices for segmentation, a map for one channel; "
                              "one file per task, named after it, for several tasks)")
        sub.set_defaults(run=cmd_run)

    run = commands.add_parser("run", help="a whole backbone inference per task on the simulated accelerator, "
                                          "against the golden model bit for bit")
    run_args(run, "tiny", "4x4")

    train = commands.add_parser("train", help="train a float M³ViT on procedural scenes on the CPU (needs torch)")
    train.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    train.add_argument("--minutes", type=_minutes, default=10.0, help="wall-time budget (default 10)")
    train.add_argument("--steps", type=_count, default=None, help="train this many steps instead (reproducible)")
    train.add_argument("--seed", type=_seed, default=0, help="seed of the initial weights and of the scenes")
    train.add_argument("-o", "--output", type=_output_file, required=True, help="the checkpoint (.pt) to write")
    train.add_argument("--json", action="store_true", help="print JSON")
    train.set_defaults(run=cmd_train)

    demo = commands.add_parser("demo", help="a trained model's predictions and expert routing on one image through "
                                            "the simulated accelerator, as pictures (needs torch)")
    demo.add_argument("--checkpoint", type=_existing_file, required=True,
                      help="float checkpoint (`m3vit train`'s, or official names with --preset)")
    demo.add_argument("--preset", default=None, help="model preset (default: the checkpoint's, else tiny)")
    demo.add_argument("--accel", default="4x4", help="accelerator preset or RxC (default 4x4)")
    demo.add_argument("--image", type=_existing, default=None,
                      help="a PNG/JPEG file or a .npy of float images (the first is used; default: a held-out scene)")
    demo.add_argument("--sim", default="verilator", choices=("pysim", "verilator"),
                      help="simulator (default verilator; pysim takes about 20 minutes for tiny)")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the calibration and held-out scenes (as trained)")
    demo.add_argument("-o", "--output", type=_output_directory, required=True, help="directory for the pictures")
    demo.add_argument("--json", action="store_true", help="print JSON")
    demo.set_defaults(run=cmd_demo)

    prove = commands.add_parser("prove", help="bounded proofs of a unit's handshake rules (SymbiYosys, Boolector)")
    prove.add_argument("unit", choices=(*PROOFS, "all"), help="the unit, at its smallest configuration")
    prove.add_argument("--depth", type=_count, default=24, help="cycles from reset (default 24, as in CI)")
    prove.add_argument("-o", "--output", type=_output_directory, default=None,
                       help="keep the proof's files (and a failure's trace) in this directory")
    prove.set_defaults(run=cmd_prove)

    report = commands.add_parser("report", help="one configuration's performance: Markdown, JSON and plots (cycles per "
                                                "layer and unit, DRAM bytes against other orders, routing, resources)")
    preset_args(report)
    report.add_argument("--accel", default=DEFAULT_ACCELERATOR_PRESET, help="accelerator preset or RxC")
    report.add_argument("--task", default="all", help="task index or name, or all (default)")
    report.add_argument("--clock", type=_frequency, default=150.0, help="clock in MHz for latency and frames/s "
                        "(default 150, stated, not measured)")
    report.add_argument("--target", default="zcu104", help="FPGA of the fit plan (default zcu104)")
    simulated_inputs(report)
    report.add_argument("-o", "--output", type=_output_directory, required=True, help="directory for the report")
    report.set_defaults(run=cmd_report)

    sweep = commands.add_parser("sweep", help="the design space on the analytic cycle model and the fit plan, on a "
                                              "Dask cluster: a JSON table and a Pareto plot")
    sweep.add_argument("--preset", default=DEFAULT_MODEL_PRESET, help="model presets, commas between (default "
                       f"{DEFAULT_MODEL_PRESET})")
    sweep.add_argument("--points", type=_count, default=None, help="this many points spread over the grid "
                       "(default all)")
    for flag, axis, scale, what in (("--arrays", "array", 1, "array sides (R = C)"),
                                    ("--buffers", "weight_buffer_bytes", 1024, "slab buffer KiB"),
                                    ("--buses", "dram_data_width", 1, "DRAM bus bits"),
                                    ("--lanes", "vector_lanes", 1, "vector lanes"),
                                    ("--gelu-lanes", "requant_lanes", 1, "GELU lanes")):
        default = [value // scale for value in AXES[axis]]
        sweep.add_argument(flag, type=_counts, default=default,
                           help=f"{what}, commas between (default {','.join(map(str, default))})")
    sweep.add_argument("--task", default=0, help="task whose inference (backbone and head) is counted (default 0)")
    sweep.add_argument("--target", default="zcu104", help="FPGA of the fit plan (default zcu104)")
    sweep.add_argument("--latency", type=_latency, default=10, help="DRAM cycles to a burst's first beat")
    sweep.add_argument("--workers", type=_count, default=2, help="local cluster's worker processes (default 2)")
    sweep.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="an existing Dask scheduler (tcp://host:8786) instead of a local cluster")
    sweep.add_argument("--verify", type=_count, nargs="?", const=6, default=None, metavar="N",
                       help="simulate N points of the Pareto front (default 6) in Verilator against the model")
    sweep.add_argument("--verify-heads", action="store_true", help="with --verify, the task's head too (long)")
    sweep.add_argument("--synth", type=_count, nargs="?", const=3, default=None, metavar="N",
                       help="N Pareto points that fit (default 3) through the target's open flow: LUTs and FFs "
                            "(zcu104: Yosys synth_xilinx, no placement; ulx3s-85f: the board top placed and routed)")
    sweep.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic model --verify runs")
    sweep.add_argument("--image-seed", type=_seed, default=1, help="seed of the built-in image --verify runs")
    sweep.add_argument("-o", "--output", type=_output_directory, required=True,
                       help="directory: sweep.json, pareto.png, and the cache of every point (an interrupted "
                            "sweep resumes from it)")
    sweep.add_argument("--json", action="store_true", help="print JSON")
    sweep.set_defaults(run=cmd_sweep)

    bench = commands.add_parser("bench", help="benchmarks (not tests)")
    benches = bench.add_subparsers(dest="bench", required=True)
    def hardware_bench(name, help, run, array=DEFAULT_ACCELERATOR_PRESET):
        """A bench of one unit: model preset, accelerator, the task whose routing fixture sizes the experts."""
        sub = benches.add_parser(name, help=help)
        preset_args(sub)
        sub.add_argument("--array", default=array, help=f"accelerator preset or RxC (default {array})")
        sub.add_argument("--task", default=0, help="task whose routing fixture sizes the experts")
        sub.set_defaults(run=run)
        return sub

    gemm_bench = hardware_bench("gemm", "cycles and utilization of every backbone GEMM (fast simulator)",
                                cmd_bench_gemm)
    gemm_bench.add_argument("--weight-feed", type=_count, default=None,
                            help="weight bytes per cycle into the array (default: the preset's)")
    loader_bench = hardware_bench("loader", "the expert weight loader against the ideal double-buffered schedule "
                                            "at 8, 16, 32 bytes per cycle (fast simulator)", cmd_bench_loader, "16x16")
    loader_bench.add_argument("--latency", type=_latency, default=24, help="DRAM cycles to a burst's first beat")
    hardware_bench("router", "cycles to route one MoE layer at 16, 64, 128 MACs per cycle against the layer's "
                             "expert compute (fast simulator)", cmd_bench_router, "16x16")
    vector_bench = hardware_bench("vector", "cycles of the vector units per dense and MoE block against the block's "
                                            "GEMMs, and their cells after synth_ecp5 beside the GEMM engine's",
                                  cmd_bench_vector, "16x16")
    vector_bench.add_argument("--synth-array", default="8x8", help="accelerator preset synthesized (default 8x8)")
    vector_bench.add_argument("--no-synth", action="store_true", help="cycles only")
    run_args(benches.add_parser("run", help="`m3vit run` on a realistic configuration: cycles, utilization, DRAM "
                                            "bytes and busy shares per task (fast simulator)"),
             "m3vit-tiny-cityscapes", "16x16")
    model_bench = benches.add_parser("model", help="the analytic cycle model against the RTL per layer and for the "
                                                   "whole inference, per array and task (fast simulator)")
    preset_args(model_bench)
    model_bench.set_defaults(preset="m3vit-tiny-cityscapes")
    model_bench.add_argument("--arrays", default="8x8,16x16,32x32", help="accelerator presets or RxC, commas between "
                             "(default 8x8,16x16,32x32)")
    model_bench.add_argument("--task", default="all", help="task index or name, or all (default)")
    simulated_inputs(model_bench)
    model_bench.add_argument("--backbone-only", action="store_true", help="the backbone alone, not the task heads")
    model_bench.set_defaults(run=cmd_bench_model)
    sim_bench = benches.add_parser("sim", help="the fast simulator against Amaranth's over the first cycles of a "
                                               "backbone inference: cycles per second, ratio")
    run_args(sim_bench, "tiny", "4x4", task="0")
    sim_bench.add_argument("--cycles", type=_count, default=20_000, help="cycles simulated (default 20000)")
    sim_bench.set_defaults(run=cmd_bench_sim)
    float_bench = benches.add_parser("float", help="wall time of one float-model inference (needs torch)")
    preset_args(float_bench)
    float_bench.add_argument("--task", default=0)
    float_bench.add_argument("--repeats", type=_count, default=3)
    float_bench.add_argument("--seed", type=_seed, default=0)
    float_bench.set_defaults(run=cmd_bench_float)
    return parser


class _Progress(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _show_progress():
    """Progress of the libraries' long steps (their `logging` INFO records) on standard error."""
    handler = _Progress()
    handler.setFormatter(logging.Formatter("m3vit: %(message)s"))
    for name in ("golden", "hw"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is cmd_build:
        if args.estimate is None and args.output is None:
            parser.error("build: a board build needs -o/--output DIR")
        if args.estimate is not None and args.program:
            parser.error("build: --program takes a board build, not --estimate")
    if isinstance(getattr(args, "task", None), str) and args.task.isdigit():
        args.task = int(args.task)
    _show_progress()
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"m3vit: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:          # a path the checks could not foresee (permissions changed, disk full)
        if isinstance(error, BrokenPipeError):   # the reader went away (`| head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        print(f"m3vit: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        print("m3vit: error: this command needs torch: install the optional group with `pdm install -G float`",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
