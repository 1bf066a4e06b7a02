"""Install a finished training run as the package's shipped weights, with its model card.

``python -m mcgr.train.ship seg runs/seg-default [--command "..."] [--machine "..."]``

copies ``<run>/model/{model.safetensors, config.json}`` into ``mcgr/weights/<kind>/``, runs the
evaluation of :mod:`mcgr.train.evaluate` on them (for ``rf`` through the shipped segmentor, so ship
``seg`` first) and writes ``card.md``: the command that produced the weights, data source, steps,
wall time, machine, the validation figures and the command that recomputes them.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from mcgr.models import WEIGHTS_DIR


def _wall_s(run: Path) -> float | None:
    last = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "elapsed_s" in r:
            last = r
    return None if last is None else last["elapsed_s"]


def write_card(kind: str, run: Path, command: str, machine: str, figures: dict, eval_cmd: str) -> str:
    cfg = json.loads((run / "model" / "config.json").read_text())
    t = cfg["train"]
    bg = t["data"]["backgrounds"] or "procedural power-law texture (mcgr.synth, no real data)"
    wall = _wall_s(run)
    lines = [
        f"# mcgr {kind} weights", "",
        f"- produced by: `{command}`",
        f"- data: on-the-fly synthetic pairs (mcgr.synth.dataset.SynthPairs), backgrounds: {bg}; "
        f"patch {t['data']['patch_size']} px, batch {t['data']['batch_size']}, seed {t['seed']}",
        f"- steps: {t['optim']['steps']}; EMA: {cfg.get('ema')}; model: `{json.dumps(cfg['model'])}`",
        f"- wall time of the last segment (a resumed run restarts this clock): "
        f"{'n/a' if wall is None else f'{wall / 60:.1f} min'}",
        f"- machine: {machine}",
        "", "## Validation (held-out synthetic set, fixed seed)", "",
        f"recompute with: `{eval_cmd}`", "",
    ]
    if kind == "rf":
        lines += [
            "Rise of the frozen segmentor's probability at seeds, through projections at t0 0.5, N 4, "
            "M 4 (module doc of mcgr.train.evaluate). Headline figures: 64 px patches, the window in "
            "which TT-GPR runs the generator; `at_256px`: the same on 256 px patches. Issue 4 asks "
            "for a rise at faint true seeds and far less at decoys.", "",
        ]
    lines += ["```json", json.dumps(figures, indent=2), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcgr.train.ship", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("seg", "rf"))
    p.add_argument("run", type=Path, help="the training run's --out directory")
    p.add_argument("--command", default=None, help="the exact training command (default: mcgr train KIND --config default --out RUN)")
    p.add_argument("--machine", default=f"{platform.processor() or platform.machine()}, 2-core CPU dev box, torch threads 1")
    a = p.parse_args(argv)
    src = a.run / "model"
    for f in ("model.safetensors", "config.json"):
        if not (src / f).is_file():
            print(f"{src / f}: missing (has the run finished?)", file=sys.stderr)
            return 2
    dst = WEIGHTS_DIR / a.kind
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "config.json"):
        shutil.copyfile(src / f, dst / f)
    eval_cmd = f"python -m mcgr.train.evaluate {a.kind}"
    res = subprocess.run([sys.executable, "-m", "mcgr.train.evaluate", a.kind], capture_output=True, text=True)
    if res.returncode:
        print(res.stderr, file=sys.stderr)
        return res.returncode
    figures = json.loads(res.stdout)
    command = a.command or f"mcgr train {a.kind} --config default --out {a.run} --threads 1"
    (dst / "card.md").write_text(write_card(a.kind, a.run, command, a.machine, figures, eval_cmd))
    print(f"shipped {dst}: {json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
