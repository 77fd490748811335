"""A run's results as plots (``plot``: the six panels of benchmarks.png, with matplotlib, the
``bench`` extra)."""

from __future__ import annotations

from benchmarks.common import OPS, _find


def _label(ax, title, xlabel, ylabel, xscale=None, yscale=None, **legend):
    """Title, axis labels and scales, and a small legend, of one panel of the plot."""
    if xscale:
        ax.set_xscale(xscale)
    if yscale:
        ax.set_yscale(yscale)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, **legend)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    hot = res["hot_path"]["rows"]
    procs = res["meta"]["config"]["procs"]
    colors = {
        "redis": "tab:red",
        "bare": "tab:gray",
        "pickleddb": "tab:blue",
        "ephemeraldb": "tab:green",
    }
    labels = {
        "redis": "ours",
        "bare": "bare EVALSHA",
        "pickleddb": "Legacy+PickledDB",
        "ephemeraldb": "Legacy+EphemeralDB",
    }
    ax = axes[0][0]
    width = 0.2
    for j, backend in enumerate(colors):
        vals = [
            (_find(hot, backend=backend, procs=1, op=op) or {}).get("median_us") or 0 for op in OPS
        ]
        ax.bar(
            [i + (j - 1.5) * width for i in range(len(OPS))],
            vals,
            width,
            color=colors[backend],
            label=labels[backend],
        )
    ax.set_xticks(range(len(OPS)), [op.replace("_", "\n", 1) for op in OPS], fontsize=7)
    _label(ax, "Hot-path latency", None, "median latency, 1 process (µs)", yscale="log")
    ax = axes[0][1]
    for backend in ("redis", "bare", "pickleddb"):
        for op, style in zip(OPS, ("-", "--", ":", "-.", (0, (1, 3)))):
            vals = [
                (_find(hot, backend=backend, procs=p, op=op) or {}).get("throughput_per_s")
                for p in procs
            ]
            ax.plot(
                procs,
                vals,
                linestyle=style,
                marker="o",
                markersize=3,
                color=colors[backend],
                label=f"{labels[backend]}" if op == OPS[0] else None,
            )
    ax.set_xscale("log", base=2)
    _label(ax, "Throughput (line style = call)", "processes", "aggregate calls/s", yscale="log")
    ax = axes[0][2]
    fetch = res["fetch_trials"]["rows"]
    for backend, kind, style in (
        ("redis", "cold", "o-"),
        ("redis", "repeated, 1% changed", "s-"),
        ("redis", "repeated, unchanged", "^:"),
        ("ephemeraldb", "cold", "o--"),
    ):
        pts = sorted(
            (r["trials"], r["median_us"] / 1e3)
            for r in fetch
            if r["backend"] == backend and r["kind"] == kind
        )
        if pts:
            ax.plot(*zip(*pts), style, color=colors[backend], label=f"{labels[backend]} {kind}")
    _label(
        ax,
        "fetch_trials",
        "trials in the experiment",
        "fetch_trials median (ms)",
        xscale="log",
        yscale="log",
    )
    ax = axes[1][0]
    growth = res["per_call_growth"]["rows"]
    for op in dict.fromkeys(r["op"] for r in growth):
        pts = sorted((r["trials"], r["median_us"]) for r in growth if r["op"] == op)
        ax.plot(*zip(*pts), "o-", label=op)
    _label(
        ax,
        "Per-call cost vs experiment size",
        "trials in the experiment",
        "median µs per call",
        xscale="log",
        yscale="log",
    )
    ax = axes[1][1]
    samples = res["lock_handoff"]["handoff_samples_ms"]
    if samples:
        ax.hist(samples, bins=60, color="tab:red")
    ax.axvline(5.0, color="black", linestyle="--", label="target median 5 ms")
    _label(
        ax,
        f"Algorithm-lock hand-off, {res['lock_handoff']['procs']} processes",
        "hand-off delay (ms)",
        "count",
    )
    ax = axes[1][2]
    fleet, bound = res["fleet"], res["fleet_bound"]
    ax.bar(
        ["ours", "Legacy+PickledDB"],
        [
            fleet["redis"]["first_k_trials_per_s"] or 0,
            fleet["pickleddb"]["first_k_trials_per_s"] or 0,
        ],
        color=[colors["redis"], colors["pickleddb"]],
    )
    ax.axhline(
        bound["ceiling_trials_per_s"]["ephemeraldb"],
        color="black",
        linestyle="--",
        label=f"lock ceiling, zero-I/O storage ({bound['anatomy_trials']} trials)",
    )
    _label(
        ax,
        f"Fleet of {fleet['redis']['workers']} `orion hunt` workers",
        None,
        f"trials/s over the first {fleet['redis']['first_k']} trials",
        loc="lower right",
    )
    cpu = fleet["profile"].get("cpu")
    if cpu:
        ax.text(
            0.98,
            0.95,
            f"storage = {cpu['storage_share']:.1%} of a worker's CPU",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    fig.suptitle(
        f"orion-track-redis benchmarks ({res['meta']['mode']} run, "
        f"{res['meta']['machine']['nproc']} CPUs, Redis "
        f"{res['meta']['redis']['version']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
