"""The report's and the sweep's figures (matplotlib, drawn off screen into PNG files)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["pareto_plot", "stacked_bars", "bars"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def pareto_plot(records: list[dict], front: list[dict], path: str | Path, title: str,
                synthesized: list[dict] = ()) -> None:
    """Cycles against multipliers and against on-chip memory: every point, the Pareto front marked; with
    `synthesized` (`firmware.sweep.synthesize`'s results), a third panel: cycles against their LUTs."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter
    good = [record for record in records if "error" not in record]
    keys = {record["key"] for record in front}
    luts = {result["key"]: result["luts"] for result in synthesized if "error" not in result}
    panels = [("multipliers", "multiplier blocks (fit plan)", 1),
              ("memory_bits", "on-chip memory blocks (Mbit, fit plan)", 1e6)]
    figure, axes = plt.subplots(1, 2 + bool(luts), figsize=(5.5 * (2 + bool(luts)), 4.5), constrained_layout=True)
    for axis, (key, label, scale) in zip(axes, panels):
        for fits, colour, name in ((True, "tab:blue", "fits the target"), (False, "tab:grey", "does not fit")):
            chosen = [r for r in good if r["fits"] == fits]
            if not chosen:
                continue
            axis.scatter([r[key] / scale for r in chosen], [r["cycles"] for r in chosen], s=10, c=colour,
                         alpha=0.5, label=name)
        ordered = sorted((r for r in good if r["key"] in keys), key=lambda r: r[key])
        axis.plot([r[key] / scale for r in ordered], [r["cycles"] for r in ordered], "o", c="tab:red",
                  mfc="none", label="Pareto front (cycles, multipliers, memory)")
        axis.set_xlabel(label)
    if luts:
        chosen = sorted((r for r in good if r["key"] in luts), key=lambda r: luts[r["key"]])
        axes[2].plot([luts[r["key"]] for r in chosen], [r["cycles"] for r in chosen], "o-", c="tab:red")
        axes[2].set_xlabel("LUTs (synthesis of Pareto points)")
    for axis in axes:
        if good:
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_ylabel("cycles per inference (analytic model)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def stacked_bars(labels: list[str], series: dict[str, list[float]], path: str | Path, title: str,
                 ylabel: str) -> None:
    """One bar per label, stacked by series (in order)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) + 2), 4.5), constrained_layout=True)
    bottom = [0.0] * len(labels)
    for name, values in series.items():
        axis.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.tick_params(axis="x", labelrotation=60, labelsize=8)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def bars(labels: list[str], values: dict[str, list[float]], path: str | Path, title: str, ylabel: str,
         log: bool = False) -> None:
    """Grouped bars: per label one bar of each series."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) * len(values) + 2), 4.5),
                                constrained_layout=True)
    width = 0.8 / len(values)
    for index, (name, series) in enumerate(values.items()):
        axis.bar([i + index * width for i in range(len(labels))], series, width, label=name)
    axis.set_xticks([i + width * (len(values) - 1) / 2 for i in range(len(labels))], labels, fontsize=8,
                    rotation=30)
    if log:
        axis.set_yscale("log")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
