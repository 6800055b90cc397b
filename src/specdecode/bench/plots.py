"""Bench plots (PNG), drawn with matplotlib's Agg canvas; pyplot and its global state are not used."""

from __future__ import annotations

from pathlib import Path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _title(result: dict, what: str) -> str:
    meta = result.get("meta", {})
    bits = [what, str(meta.get("model", "")), f"{meta.get('device', '')} {meta.get('dtype', '')}".strip()]
    if result.get("interrupted") or result.get("complete") is False:
        bits.append("partial")
    return " - ".join(b for b in bits if b)


def plot_speedup(result: dict, path: str | Path) -> Path | None:
    """Grouped bars: speedup over the baseline per method, overall and per category."""
    summary = result.get("summary", {})
    categories = result.get("categories", {})
    methods = [m for m, s in summary.items() if s.get("speedup") is not None]
    if not methods:
        return None
    groups = ["overall"] + [c for c in categories if len(categories) > 1]
    values = {
        m: [summary[m].get("speedup")] + [categories[c].get(m, {}).get("speedup") for c in groups[1:]]
        for m in methods
    }
    fig = _figure(max(6.0, 1.0 + 0.35 * len(groups) * len(methods)), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values[m]]
        bars = ax.bar(xs, ys, width=width, label=m)
        for b, v in zip(bars, values[m], strict=True):
            if v is not None:
                ax.annotate(
                    f"{v:.2f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel(f"speedup vs {result.get('meta', {}).get('baseline') or 'baseline'}")
    ax.set_title(_title(result, "speedup"), fontsize=10)
    ax.legend(fontsize=8, ncol=min(len(methods), 4))
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_acceptance(result: dict, path: str | Path) -> Path | None:
    """One histogram per method: share of decoding steps that committed k tokens."""
    summary = result.get("summary", {})
    hists = {
        m: {int(k): v for k, v in s["accept_histogram"].items()}
        for m, s in summary.items()
        if s.get("accept_histogram")
    }
    if not hists:
        return None
    n = len(hists)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = _figure(3.6 * cols, 2.8 * rows + 0.4)
    max_len = max(max(h) for h in hists.values())
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for i, (m, h) in enumerate(hists.items()):
        ax = axes[i]
        total = sum(h.values()) or 1
        ks = list(range(1, max_len + 1))
        ax.bar(ks, [h.get(k, 0) / total for k in ks], color=f"C{i % 10}")
        mean = summary[m].get("mean_accepted")
        ax.set_title(f"{m} (mean {mean:.2f})" if mean is not None else m, fontsize=9)
        ax.set_xlabel("tokens per step", fontsize=8)
        ax.set_ylabel("share of steps", fontsize=8)
        ax.tick_params(labelsize=7)
        if max_len <= 16:
            ax.set_xticks(ks)
    fig.suptitle(_title(result, "accepted tokens per target forward"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_latency(curve: dict | None, path: str | Path, title: str = "") -> Path | None:
    """The target's forward latency t(n) against tokens scored n, and t(n)/t(1)."""
    if not curve or not curve.get("ns") or not curve.get("seconds"):
        return None
    ns, secs = curve["ns"], curve["seconds"]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ns, [1000 * s for s in secs], marker="o")
    ax.set_xlabel("tokens scored in one forward (n)")
    ax.set_ylabel("ms per forward")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    # The right axis reads the same line as t(n) / t(1).
    ax2 = ax.twinx()
    lo, hi = ax.get_ylim()
    ax2.set_ylim(lo / (1000 * secs[0]), hi / (1000 * secs[0]))
    ax2.set_ylabel("t(n) / t(1)")
    head = title or f"{curve.get('model_key', '')} {curve.get('device', '')} {curve.get('dtype', '')}"
    ax.set_title(f"target forward latency - {head.strip()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _curve_title(result: dict) -> str:
    meta, curve = result.get("meta", {}), result.get("latency_curve") or {}
    return f"{meta.get('model', '')} {curve.get('device', '')} {curve.get('dtype', '')}".strip()


def write_plots(result: dict, json_path: str | Path) -> list[Path]:
    """FILE-speedup.png, FILE-accept.png and (with a latency curve) FILE-latency.png beside FILE.json."""
    json_path = Path(json_path)
    stem = json_path.with_suffix("")
    written = []
    for suffix, fn in (
        ("speedup", lambda p: plot_speedup(result, p)),
        ("accept", lambda p: plot_acceptance(result, p)),
        ("latency", lambda p: plot_latency(result.get("latency_curve"), p, title=_curve_title(result))),
    ):
        p = fn(Path(f"{stem}-{suffix}.png"))
        if p is not None:
            written.append(p)
    return written
