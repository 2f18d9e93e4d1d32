"""What the accelerator sees, as pictures (`demo`): a float M³ViT quantized on training scenes, one image through
the simulated accelerator (the whole inference: the backbone and each task's head), against the golden model bit
for bit and against the float model, drawn as PNG files with Pillow.

Files written to the output directory:
- `input.png`: the image;
- `<task>.png` per task: the float model's, the golden model's and the accelerator's predictions side by side (and
  the true labels first when the image is a procedural scene): classes in `CLASS_COLOURS`, depth near bright, far
  dark;
- `routing_<block>_<task>.png` per MoE layer and task: the image with each patch tinted by the first expert its
  token goes to (the expert's number written in the patch);
- `experts.png`: tokens per expert, per MoE layer and task, as bars;
- `summary.png`: the predictions of every task and the first MoE layer's routing of each, in one picture.
"""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import numpy as np

from golden.config import AcceleratorConfig
from golden.fidelity import snr_db
from golden.float_model import M3ViT, float_output, quantize_model
from golden.model import run as golden_run
from golden.quantize import quantize_image
from golden.scenes import Scenes, labelled_scenes
from golden.train import HELD_OUT_SEED

from .run import run_inference

log = logging.getLogger(__name__)

__all__ = ["demo", "CALIBRATION_SCENES", "CLASS_COLOURS"]

CALIBRATION_SCENES = 16                 # training scenes the demo calibrates on (the training pool's seed)
CLASS_COLOURS = np.array([(40, 40, 40), (230, 60, 60), (70, 200, 80), (70, 110, 240), (240, 200, 50),
                          (200, 80, 220), (60, 210, 220), (250, 140, 40)], np.uint8)
DEMO_CANDIDATES = 16                    # held-out scenes the default image is chosen from
AGREEMENT_SCENES = 32                   # held-out scenes the golden model is held against the float one on
SCALE_TO = 256                          # pictures are enlarged (nearest) to at least this many pixels high
_DEPTH_STOPS = np.array([(20, 20, 60), (50, 90, 170), (60, 170, 160), (190, 220, 80), (255, 250, 190)], np.float64)


def _enlarged(picture: np.ndarray, factor: int) -> np.ndarray:
    return picture.repeat(factor, 0).repeat(factor, 1)


def _rgb(image: np.ndarray) -> np.ndarray:
    """A float image [C, H, W] in [0, 1] → uint8 [H, W, 3] (one channel repeated)."""
    picture = np.clip(image.transpose(1, 2, 0), 0, 1) * 255
    return np.repeat(picture, 3, 2).astype(np.uint8) if picture.shape[2] == 1 else picture[..., :3].astype(np.uint8)


def _depth_colours(depth: np.ndarray, low: float, high: float) -> np.ndarray:
    """Depth [H, W] → uint8 [H, W, 3]: near (`low`) bright, far (`high`) dark."""
    position = (1 - np.clip((depth - low) / max(high - low, 1e-9), 0, 1)) * (len(_DEPTH_STOPS) - 1)
    index = np.minimum(position.astype(int), len(_DEPTH_STOPS) - 2)
    fraction = (position - index)[..., None]
    return (_DEPTH_STOPS[index] * (1 - fraction) + _DEPTH_STOPS[index + 1] * fraction).astype(np.uint8)


def _expert_colours(experts: int) -> np.ndarray:
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(e / experts, 0.75, 0.95)]
                     for e in range(experts)], np.uint8)


def _panels(pictures: list[tuple[str, np.ndarray]], factor: int):
    """Pictures side by side, each enlarged by `factor` and captioned."""
    from PIL import Image, ImageDraw

    caption, gap = 14, 6
    height, width = pictures[0][1].shape[:2]
    canvas = Image.new("RGB", (len(pictures) * (width * factor + gap) - gap, height * factor + caption), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (title, picture) in enumerate(pictures):
        left = index * (width * factor + gap)
        canvas.paste(Image.fromarray(_enlarged(picture, factor)), (left, caption))
        draw.text((left + 2, 1), title, fill="black")
    return canvas


def _stacked(pictures):
    """Pictures one above the other, left-aligned."""
    from PIL import Image

    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height + 6 for p in pictures) - 6), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height + 6
    return canvas


def _routing_picture(image: np.ndarray, first: np.ndarray, grid: tuple[int, int], experts: int, factor: int):
    """The image with patch p tinted by the colour of expert `first[p]`, its number written in the patch."""
    from PIL import Image, ImageDraw

    picture = _enlarged(_rgb(image), factor).astype(np.float64)
    rows, cols = grid
    patch_h, patch_w = picture.shape[0] // rows, picture.shape[1] // cols
    tint = _expert_colours(experts)[first.reshape(rows, cols)]
    tint = tint.repeat(patch_h, 0).repeat(patch_w, 1).astype(np.float64)
    canvas = Image.fromarray((0.45 * picture + 0.55 * tint).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for r in range(rows):
        for c in range(cols):
            box = (c * patch_w, r * patch_h, (c + 1) * patch_w - 1, (r + 1) * patch_h - 1)
            draw.rectangle(box, outline=(255, 255, 255))
            if patch_w >= 16 and patch_h >= 12:
                draw.text((box[0] + 2, box[1] + 1), str(int(first[r * cols + c])), fill="black")
    return canvas


def _expert_bars(counts: dict[int, np.ndarray], task_names: list[str]):
    """Bars of tokens per expert [tasks, E] for each MoE layer (a panel per layer, a colour per task)."""
    from PIL import Image, ImageDraw

    tasks = len(task_names)
    experts = next(iter(counts.values())).shape[1]
    bar = max(4, 96 // (experts * tasks))
    gap, plot_height, caption, legend = bar, 120, 16, 16 * (tasks + 1)
    panel = experts * (tasks * bar + gap) + gap
    canvas = Image.new("RGB", (max(len(counts) * (panel + 12) + 12, 300), caption + plot_height + 16 + legend),
                       "white")
    draw = ImageDraw.Draw(canvas)
    tallest = max(int(count.max()) for count in counts.values()) or 1
    colours = [tuple(int(v) for v in colour) for colour in _expert_colours(2 * max(tasks, 2))[::2]]
    base = caption + plot_height
    for index, (block, count) in enumerate(counts.items()):
        left = 12 + index * (panel + 12)
        draw.text((left, 1), f"MoE block {block}", fill="black")
        draw.line((left, base, left + panel, base), fill="black")
        for expert in range(experts):
            x = left + gap + expert * (tasks * bar + gap)
            for task in range(tasks):
                top = base - round(plot_height * count[task, expert] / tallest)
                draw.rectangle((x + task * bar, top, x + (task + 1) * bar - 1, base), fill=colours[task])
            draw.text((x, base + 2), str(expert), fill="black")
    draw.text((12, base + 18), f"tokens per expert (the tallest bar: {tallest})", fill="black")
    for task, name in enumerate(task_names):
        y = base + 34 + 16 * task
        draw.rectangle((12, y + 2, 22, y + 11), fill=colours[task])
        draw.text((28, y), name, fill="black")
    return canvas


def _held_out_agreement(network: M3ViT, quantized, seed: int, scenes: int = AGREEMENT_SCENES) -> dict:
    """The golden model (which the accelerator equals bit for bit) against the float model on `scenes` held-out
    scenes: the segmentation's pixel agreement and the depth map's SNR, over all of them."""
    config = network.config
    images = labelled_scenes(config, scenes, seed + HELD_OUT_SEED + 1).images
    report = {"held_out_scenes": scenes}
    for task, spec in enumerate(config.tasks):
        golden = np.stack([golden_run(quantized, quantize_image(quantized, image), task).output for image in images])
        reference = np.stack([float_output(network, image, task) for image in images])
        if spec.name == "semseg":
            report["held_out_pixel_agreement_float"] = float((golden.argmax(1) == reference.argmax(1)).mean())
        else:
            scale = quantized.scales.get(f"heads.{task}.output", 1.0)
            report["held_out_depth_snr_db"] = snr_db(reference, golden.astype(np.float64) * scale)
    return report


def demo(network: M3ViT, accel: AcceleratorConfig, out: str | Path, *, image: np.ndarray | None = None,
         seed: int = 0, simulator: str = "verilator") -> dict:
    """Quantize `network` (calibrated on `CALIBRATION_SCENES` procedural scenes of `seed`, as `golden.train` trains
    on), run `image` (float [C, H, W]; default: of the first `DEMO_CANDIDATES` held-out scenes of `seed`, the first
    with the most classes in it) through the simulated accelerator for every task, and write the pictures of the
    module's doc into `out`. Returns `accelerator_equals_golden` (every task's backbone, routing and head output
    bit-exact), `pixel_agreement_float` (the golden segmentation against the float one), `depth_snr_db` (golden
    against float), the same over `AGREEMENT_SCENES` more held-out scenes (`held_out_pixel_agreement_float`,
    `held_out_depth_snr_db`), per task its cycles, and the `files` written."""
    config = network.config
    scene: Scenes | None = None
    if image is None:                   # of the first held-out scenes, the first with the most classes in it
        candidates = labelled_scenes(config, DEMO_CANDIDATES, seed + HELD_OUT_SEED)
        pick = int(np.argmax([len(np.unique(labels)) for labels in candidates.labels]))
        scene = Scenes(*(array[pick:pick + 1] for array in (candidates.images, candidates.labels, candidates.depth)))
        image = scene.images[0]
    log.info(f"quantizing {config.name}, calibrated on {CALIBRATION_SCENES} training scenes")
    quantized = quantize_model(network, labelled_scenes(config, CALIBRATION_SCENES, seed).images)
    integer_image = quantize_image(quantized, image)
    tasks = list(range(config.num_tasks))
    log.info(f"running the image through the simulated accelerator ({simulator}, {accel.name})")
    summary = run_inference(quantized, accel, integer_image, tasks, simulator=simulator, predictions=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    factor = max(1, -(-SCALE_TO // config.image_size[0]))
    files = {"input.png": _panels([("input", _rgb(image))], factor)}
    report = {"preset": config.name, "accel": accel.name, "simulator": simulator, "tasks": {}}
    counts = {block: np.zeros((len(tasks), config.num_experts), int) for block in config.moe_blocks}
    for task, run in zip(tasks, summary["tasks"]):
        name = config.tasks[task].name
        golden = golden_run(quantized, integer_image, task)
        reference = float_output(network, image, task)
        golden_float = golden.output.astype(np.float64) * run["output_scale"]
        accelerated = run["prediction"].astype(np.float64) * run["output_scale"]
        equal = bool(run["bit_exact"] and run["output_bit_exact"])     # backbone, routing and head output
        pictures = []
        if name == "semseg":
            maps = [reference.argmax(0), golden.output.argmax(0), run["prediction"].argmax(0)]
            colour = lambda labels: CLASS_COLOURS[labels % len(CLASS_COLOURS)]  # noqa: E731
            report["pixel_agreement_float"] = float((maps[0] == maps[1]).mean())
            if scene is not None:
                pictures.append(("truth", colour(scene.labels[0])))
        else:
            maps = [reference[0], golden_float[0], accelerated[0]]
            low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
            colour = lambda depth: _depth_colours(depth, low, high)  # noqa: E731
            report["depth_snr_db"] = snr_db(reference, golden_float)
            if scene is not None:
                pictures.append(("truth", colour(scene.depth[0])))
        pictures += [(title, colour(m)) for title, m in zip(("float", "golden", "accelerator"), maps)]
        files[f"{name}.png"] = _panels(pictures, factor)
        for block, routing in golden.routing.items():
            first = routing.expert_ids[1:, 0]                       # each patch's token (not the cls token)
            files[f"routing_{block}_{name}.png"] = _routing_picture(image, first, config.grid, config.num_experts,
                                                                     factor)
            counts[block][task] = np.bincount(routing.expert_ids.ravel(), minlength=config.num_experts)
        report["tasks"][name] = {"accelerator_equals_golden": equal, "cycles": run.get("inference_cycles",
                                                                                     run["cycles"])}
    report.update(_held_out_agreement(network, quantized, seed))
    if counts:
        files["experts.png"] = _expert_bars(counts, [task.name for task in config.tasks])
    routing = [(f"routing: {task.name}, MoE block {block}", np.asarray(files[f"routing_{block}_{task.name}.png"]))
               for block in config.moe_blocks[:1] for task in config.tasks]
    files["summary.png"] = _stacked([files[f"{task.name}.png"] for task in config.tasks]
                                    + ([_panels(routing, 1)] if routing else []))
    for filename, picture in files.items():
        picture.save(out / filename)
    report["accelerator_equals_golden"] = all(task["accelerator_equals_golden"] for task in report["tasks"].values())
    report["files"] = [str(out / filename) for filename in files]
    return report
