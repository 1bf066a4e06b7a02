"""Bar chart of each provider's speed-up over the reference, one panel per op.

    python -m benchmarks.plot RESULT.json [--out chart.png]

Bars are ``ratio_vs_ref`` (reference time / provider time, log scale; 1 = as fast as the reference),
grouped by shape and coloured by provider. Rows without a time (skipped or failed) are left out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

COLOURS = {"ref": "#999999", "compiled": "#e69f00", "cpu": "#0072b2", "triton": "#009e73", "cuda": "#d55e00"}


def plot_ratios(rows: Sequence[dict], path, title: str = "") -> Path | None:
    """Write the chart of ``rows`` (shared schema) to ``path``; None when no row has a ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("ratio_vs_ref") and r.get("median_ms") is not None]
    ops = list(dict.fromkeys(r["op"] for r in timed))
    if not ops:
        return None
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 2.6 * len(ops) + 0.6), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        op_rows = [r for r in timed if r["op"] == op]
        shapes = list(dict.fromkeys(r["shape"] for r in op_rows))
        provs = [p for p in COLOURS if any(r["backend"] == p for r in op_rows)]
        provs += sorted({r["backend"] for r in op_rows} - set(provs))
        width = 0.8 / max(len(provs), 1)
        for j, prov in enumerate(provs):
            xs, ys = [], []
            for i, shape in enumerate(shapes):
                r = next((r for r in op_rows if r["shape"] == shape and r["backend"] == prov), None)
                if r is not None:
                    xs.append(i + (j - (len(provs) - 1) / 2) * width)
                    ys.append(r["ratio_vs_ref"])
            bars = ax.bar(xs, ys, width, label=prov, color=COLOURS.get(prov, None))
            for b, y in zip(bars, ys):
                ax.annotate(f"{y:.1f}" if y < 100 else f"{y:.0f}", (b.get_x() + b.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, fontsize=8)
        ax.set_ylabel("x vs ref")
        ax.set_title(op, fontsize=10, loc="left")
        ax.legend(fontsize=7, ncol=len(provs), loc="upper left")
        ax.margins(y=0.25)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="a result file of the shared schema")
    ap.add_argument("--out", help="PNG path (default: the JSON path with .png)")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.json).read_text())
    out = args.out or str(Path(args.json).with_suffix(".png"))
    if plot_ratios(doc.get("rows", []), out, title=Path(args.json).stem) is None:
        print(f"{args.json}: no row with a ratio to the reference", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
