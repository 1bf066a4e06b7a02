"""The mcgr command: synth writes readable shards and previews, demo writes its PNG, bad input gives
one clear line and a non-zero status (never a traceback)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mcgr.cli import main
from mcgr.synth.dataset import SynthPairs
from mcgr.synth.shards import load_shard


def test_synth_writes_readable_shards_and_previews(tmp_path, capsys):
    out = tmp_path / "pairs"
    rc = main(["synth", "--out", str(out), "-n", "5", "--patch", "40", "--shard-size", "2",
               "--previews", "2", "--batch-size", "4", "--seed", "3", "--quiet"])
    assert rc == 0
    assert "wrote 5 pairs" in capsys.readouterr().out
    shards = sorted(out.glob("shard_*.npz"))
    assert [p.name for p in shards] == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["n"] == 5 and [s["n"] for s in man["shards"]] == [2, 2, 1]
    # the files hold samples 0..4 of the stream they name
    ds = SynthPairs(patch_size=40, batch_size=4, seed=3)
    ref = [ds.batch(0), ds.batch(1)]
    row = 0
    for p in shards:
        with np.load(p) as z:
            assert z["image"].dtype == np.uint16 and z["mask"].dtype == np.uint8
            assert z["image"].shape[1:] == (40, 40) and z["mask"].shape == z["image"].shape
            offs = z["centres_offsets"]
            for j in range(z["image"].shape[0]):
                b, i = divmod(row, 4)
                assert int(z["index"][j]) == row
                expect = ref[b]["image"][i, 0].numpy()
                assert np.abs(z["image"][j] / 65535.0 - expect).max() <= 0.5 / 65535 + 1e-7
                assert np.array_equal(z["mask"][j], ref[b]["mask"][i, 0].numpy().astype(np.uint8))
                assert np.array_equal(z["centres"][offs[j]:offs[j + 1]], ref[b]["centres"][i].numpy())
                row += 1
    loaded = load_shard(shards[0])
    assert loaded["image"].shape == (2, 1, 40, 40) and loaded["image"].dtype == torch.float32
    previews = sorted((out / "previews").glob("*.png"))
    assert len(previews) == 2
    with Image.open(previews[0]) as im:
        assert im.size == (2 * 40 + 4, 40) and im.mode == "RGB"


def test_synth_refuses_a_non_empty_dir_unless_forced(tmp_path, capsys):
    out = tmp_path / "pairs"
    out.mkdir()
    (out / "shard_00007.npz").write_bytes(b"stale")
    (out / "notes.txt").write_text("keep me")
    rc = main(["synth", "--out", str(out), "-n", "1", "--patch", "32", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "not empty" in err and "--force" in err and "Traceback" not in err
    rc = main(["synth", "--out", str(out), "-n", "1", "--patch", "32", "--previews", "0", "--quiet", "--force"])
    assert rc == 0
    assert not (out / "shard_00007.npz").exists(), "stale shards of an earlier run are removed"
    assert (out / "notes.txt").exists(), "files mcgr did not write are left alone"
    assert (out / "shard_00000.npz").exists()


@pytest.mark.parametrize(
    "argv, rc, match",
    [
        (["synth", "-n", "3"], 2, "--out"),
        (["synth", "--out", "X", "-n", "0"], 2, "positive integer"),
        (["synth", "--out", "X", "-n", "2", "--patch", "abc"], 2, "positive integer"),
        (["synth", "--out", "X", "-n", "2", "--spacing", "-1"], 2, "positive"),
        (["synth", "--out", "X", "-n", "2", "--mc-free-fraction", "2"], 2, r"\[0, 1\]"),
        (["synth", "--out", "X", "-n", "2", "--patch", "8"], 1, "cannot hold"),
        (["synth", "--out", "X", "-n", "2", "--backgrounds", "missing.npy"], 1, "cannot read --backgrounds"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "COMMAND"),
    ],
)
def test_bad_arguments_give_a_clear_message(tmp_path, monkeypatch, capsys, argv, rc, match):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert __import__("re").search(match, err), err


def test_demo_scores_base_and_ttgpr_against_the_phantom_truth(tmp_path, capsys):
    import json

    import numpy as np
    import torch

    from mcgr.eval.metrics import pixel_metrics
    from mcgr.models import save_model
    from mcgr.models.rf import generator_config
    from mcgr.models.segmentor import segmentor_config
    from mcgr.models.unet import UNet
    from mcgr.synth.phantom import breast_phantom

    torch.manual_seed(0)
    save_model(UNet(segmentor_config(width=4, depth=2, groups=2)), tmp_path / "m" / "seg", kind="seg")
    save_model(UNet(generator_config(width=4, depth=2, groups=2)), tmp_path / "m" / "rf", kind="rf")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "256x192", "--models", str(tmp_path / "m"), "--refine"]) == 0
    printed = capsys.readouterr().out
    assert "Dice" in printed and "TT-GPR" in printed
    summary = json.loads((out / "demo.json").read_text())
    for name in ("phantom.compare.png", "phantom.overlay.png", "phantom.mask.png", "phantom.prob.png", "phantom.json"):
        assert (out / name).is_file(), name
    # the printed TT-GPR Dice is the Dice of the written mask against the phantom's own truth
    ph = breast_phantom(256, 192, seed=0, faint=True)
    mask = np.asarray(Image.open(out / "phantom.mask.png")) > 0
    expected = pixel_metrics(mask, ph.truth.numpy(), region=ph.breast.numpy())["dice"]
    assert summary["ttgpr"]["dice"] == pytest.approx(expected, abs=1e-9)
    # without --refine the demo is the base segmentor alone, as mcgr infer runs: its written mask is scored
    base_out = tmp_path / "demo-base"
    assert main(["demo", "--out", str(base_out), "--size", "256x192", "--models", str(tmp_path / "m")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[next(i for i, ln in enumerate(lines) if ln.startswith("Dice")) - 1]
    assert header.split() == ["base"]  # one column: no TT-GPR score
    base_summary = json.loads((base_out / "demo.json").read_text())
    mask = np.asarray(Image.open(base_out / "phantom.mask.png")) > 0
    expected = pixel_metrics(mask, ph.truth.numpy(), region=ph.breast.numpy())["dice"]
    assert "ttgpr" not in base_summary and base_summary["base"]["dice"] == pytest.approx(expected, abs=1e-9)
    assert base_summary["base"] == summary["base"]  # the same base model either way


def test_python_dash_m_mcgr():
    r = subprocess.run([sys.executable, "-m", "mcgr", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "synth" in r.stdout and "demo" in r.stdout


def test_demo_threads_option(tmp_path, capsys, monkeypatch):
    import torch

    import mcgr.demo as demo

    assert main(["demo", "--threads", "0", "--out", str(tmp_path / "d")]) == 2
    assert "expected a positive integer" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: None)
    assert main(["demo", "--threads", "1", "--out", str(tmp_path / "d")]) == 0
    assert seen == [1]
