"""Change between two benchmark result files, per (op, backend, shape); non-zero exit on a regression.

    python -m benchmarks.compare OLD.json NEW.json [--threshold 0.10] [--metric median_ms]

A row regresses when its time grows by more than ``threshold`` (0.10 = 10 % slower), or when it had
a time before and now only a note (the provider failed or disappeared from a run that still has
the row). Rows present in one file only are listed and do not fail the comparison. Exit status:
0 no regression, 1 regression, 2 unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

Key = tuple  # (op, backend, shape)


def load_rows(path) -> tuple[dict, dict[Key, dict]]:
    """``(machine, {(op, backend, shape): row})`` of a result file; the last row of a key wins."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ValueError(f"{path}: not a benchmark result file (expected {{'machine': ..., 'rows': [...]}})")
    rows = {}
    for r in doc["rows"]:
        try:
            rows[(r["op"], r["backend"], r["shape"])] = r
        except (KeyError, TypeError):
            raise ValueError(f"{path}: a row without op/backend/shape: {r!r}") from None
    return doc.get("machine", {}), rows


def compare(old: dict[Key, dict], new: dict[Key, dict], threshold: float = 0.10,
            metric: str = "median_ms") -> list[dict]:
    """One entry per key in either file: ``{"key", "old", "new", "change", "status"}``, where change
    is new/old - 1 and status one of ok, faster, slower (within threshold), REGRESSION, FAILED,
    removed, added, untimed."""
    out = []
    for key in list(old) + [k for k in new if k not in old]:
        o = old.get(key, {}).get(metric) if key in old else None
        n = new.get(key, {}).get(metric) if key in new else None
        entry = {"key": key, "old": o, "new": n, "change": None}
        if key not in new:
            entry["status"] = "removed"
        elif key not in old:
            entry["status"] = "added"
        elif o is None and n is None:
            entry["status"] = "untimed"
        elif n is None:
            entry["status"] = "FAILED"
            entry["note"] = new[key].get("note", "")
        elif o is None or o <= 0:
            entry["status"] = "added"
        else:
            change = n / o - 1.0
            entry["change"] = change
            if change > threshold:
                entry["status"] = "REGRESSION"
            elif change < -threshold:
                entry["status"] = "faster"
            else:
                entry["status"] = "ok"
        out.append(entry)
    return out


def regressions(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["status"] in ("REGRESSION", "FAILED")]


def format_report(entries: list[dict], metric: str = "median_ms") -> str:
    lines = [f"{'op':<9}{'backend':<10}{'shape':<34}{'old ' + metric:>16}{'new ' + metric:>16}{'change':>9}  status"]
    for e in entries:
        op, backend, shape = e["key"]
        fmt = lambda v: f"{v:.4g}" if v is not None else "-"  # noqa: E731
        ch = f"{100 * e['change']:+.1f}%" if e["change"] is not None else "-"
        extra = f"  ({e['note']})" if e.get("note") else ""
        lines.append(f"{op:<9}{backend:<10}{shape:<34}{fmt(e['old']):>16}{fmt(e['new']):>16}{ch:>9}  {e['status']}{extra}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="baseline result JSON")
    ap.add_argument("new", help="result JSON to check")
    ap.add_argument("--threshold", type=float, default=0.10, help="allowed slowdown as a fraction (default 0.10)")
    ap.add_argument("--metric", default="median_ms", choices=("median_ms", "min_ms"),
                    help="time to compare (min_ms is steadier on a shared machine)")
    args = ap.parse_args(argv)
    if not args.threshold >= 0:
        print(f"compare: --threshold must be >= 0, got {args.threshold}", file=sys.stderr)
        return 2
    try:
        m_old, old = load_rows(args.old)
        m_new, new = load_rows(args.new)
    except (OSError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    for k in ("host", "processor", "gpu", "device"):
        if m_old.get(k) != m_new.get(k):
            print(f"warning: machine {k} differs: {m_old.get(k)!r} vs {m_new.get(k)!r}")
    entries = compare(old, new, args.threshold, args.metric)
    print(format_report(entries, args.metric))
    bad = regressions(entries)
    print(f"\n{len(bad)} regression(s) beyond {100 * args.threshold:.0f}% "
          f"({sum(e['status'] == 'ok' for e in entries)} ok, {sum(e['status'] == 'faster' for e in entries)} faster)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
