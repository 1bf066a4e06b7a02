"""mcgr adapt: its validation counts, its operating point, and the command end to end (--quick)."""
import json

import numpy as np
import pytest

from mcgr.cli import main
from mcgr.infer.loader import operating_point
from mcgr.infer.pipeline import Pipeline
from mcgr.train.adapt_validate import THRESHOLDS, cluster_counts, operating_threshold


def _blob(p, y, x, v, r=1):
    p[y - r:y + r + 1, x - r:x + r + 1] = v


def test_cluster_counts_match_clusters_by_their_members():
    p = np.zeros((400, 400), np.float32)
    centres, cluster = [], []
    for i, (y, x) in enumerate([(100, 100), (104, 110), (110, 104), (98, 115)]):  # true cluster 0, all found
        _blob(p, y, x, 0.9)
        centres.append((y, x))
        cluster.append(0)
    for y, x in [(300, 300), (305, 310), (310, 300)]:  # true cluster 1, only faintly found
        _blob(p, y, x, 0.3)
        centres.append((y, x))
        cluster.append(1)
    for y, x in [(100, 300), (106, 306), (96, 310)]:  # a false cluster (no truth there)
        _blob(p, y, x, 0.8)
    c = cluster_counts(p, np.array(centres, float), np.array(cluster), thresholds=(0.2, 0.5, 0.85))
    assert c["n_truth"] == 2
    assert c["found"] == [2, 1, 1]
    assert c["false"] == [1, 1, 0]


def test_operating_threshold_is_lowest_under_the_rate():
    froc = {"thresholds": [0.5, 0.9, 0.99], "fp_per_image": [12.0, 3.0, 0.4]}
    assert operating_threshold(froc, 5) == 0.9
    assert operating_threshold(froc, 0.4) == 0.99
    assert operating_threshold(froc, 0.1) == 0.99  # none qualifies: the highest
    assert THRESHOLDS[-1] == pytest.approx(1 - 1e-7)  # the grid reaches the last decades before float32 1


class _Seg:
    def __init__(self, config):
        self.config = config


def test_operating_point_reads_the_calibration_curve():
    seg = _Seg({"operating_threshold": 0.97, "operating_points": {"thresholds": [0.5, 0.8, 0.95, 0.99],
                                                                    "fp_per_image": [20.0, 6.0, 1.5, 0.3]}})
    assert operating_point(seg) == {"threshold": 0.97, "source": "weights"}
    assert operating_point(seg, 2)["threshold"] == 0.95
    assert operating_point(seg, 6)["threshold"] == 0.8
    with pytest.raises(ValueError, match="calibration curve"):
        operating_point(_Seg({"operating_threshold": 0.99}), 1.0)
    with pytest.raises(ValueError, match="fp_per_image"):
        operating_point(seg, -1)


@pytest.fixture(scope="module")
def negatives(tmp_path_factory):
    from mcgr.synth.phantom import breast_phantom

    d = tmp_path_factory.mktemp("negatives")
    for k in range(2):
        ph = breast_phantom(640, 512, seed=70 + k, clusters=(0, 0), isolated=(0, 0))
        np.save(d / f"normal{k}.npy", ph.image.numpy())
    return d


@pytest.fixture(scope="module")
def adapted(negatives, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "model"
    assert main(["adapt", str(negatives), "--spacing", "0.07", "--out", str(out), "--quick", "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_quick_adaptation_writes_a_drop_in_model_folder(adapted):
    for kind in ("seg", "rf"):
        assert (adapted / kind / "model.safetensors").is_file()
        card = (adapted / kind / "card.md").read_text()
        assert "site (mcgr.train.site)" in card and "spot guard" in card
    cfg = json.loads((adapted / "seg" / "config.json").read_text())
    pts = cfg["operating_points"]
    assert len(pts["thresholds"]) == len(pts["fp_per_image"]) == len(THRESHOLDS)
    assert cfg["operating_threshold"] == operating_threshold(pts, 1.0)
    seg_card = (adapted / "seg" / "card.md").read_text()
    assert "Independent injector" in seg_card and "Training injector" in seg_card and "DoG" in seg_card
    val = json.loads((adapted / "validation.json").read_text())
    assert len(val["folds"]) == 2 and {tuple(f["held_out"]) for f in val["folds"]} == {("normal0",), ("normal1",)}
    state = json.loads((adapted / "work" / "state.json").read_text())
    assert all(state["stages"][s]["done"] for s in ("harvest", "site", "mine", "seg", "rf", "validate", "write"))
    pipe = Pipeline.from_pretrained(adapted)
    assert pipe.config.threshold == cfg["operating_threshold"]


@pytest.mark.slow
def test_infer_uses_the_adapted_models_and_says_so(adapted, negatives, tmp_path):
    out = tmp_path / "res"
    rc = main(["infer", str(negatives / "normal0.npy"), "--spacing", "0.07", "--models", str(adapted),
               "--fp-per-image", "5", "--no-refine", "--out", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads((out / "normal0" / "normal0.json").read_text())
    assert doc["model"]["models"]["seg"]["source"] == str((adapted / "seg").resolve())
    pts = json.loads((adapted / "seg" / "config.json").read_text())["operating_points"]
    assert doc["model"]["operating_point"]["threshold"] == operating_threshold(pts, 5.0)
    assert doc["model"]["operating_point"]["source"] == "calibration"


@pytest.mark.slow
def test_resume_continues_and_refuses_other_inputs(negatives, tmp_path, capsys):
    from mcgr.train.adapt import Adaptation, AdaptError, Plan, list_inputs

    items = list_inputs([str(negatives)], 0.07)
    out = tmp_path / "m"
    Adaptation(out, items, Plan.quick(), progress=False, log=lambda *_: None).run(stop_after="site")
    state = json.loads((out / "work" / "state.json").read_text())
    assert set(state["stages"]) == {"harvest", "site"}
    with pytest.raises(AdaptError, match="--resume"):
        Adaptation(out, list_inputs([str(negatives)], 0.07), Plan.quick(), progress=False).run()
    with pytest.raises(AdaptError, match="other inputs"):
        Adaptation(out, list_inputs([str(negatives / "normal0.npy")], 0.07), Plan.quick(), progress=False).run(resume=True)
    lines = []
    Adaptation(out, list_inputs([str(negatives)], 0.07), Plan.quick(), progress=False,
               log=lines.append).run(resume=True, stop_after="mine")
    assert any("harvest: done earlier" in s for s in lines) and any("site: done earlier" in s for s in lines)
    assert json.loads((out / "work" / "state.json").read_text())["stages"]["mine"]["done"]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["adapt", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o"), "--quick"]) != 0
    assert "mcgr adapt: error:" in capsys.readouterr().err
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "x.txt").write_text("user file")
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "a.npy", np.random.default_rng(0).random((300, 300)).astype(np.float32))
    assert main(["adapt", str(d), "--spacing", "0.07", "--out", str(tmp_path / "o2"), "--quick"]) != 0
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "o2" / "x.txt").read_text() == "user file"


def test_device_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "a.npy", np.random.default_rng(0).random((300, 300)).astype(np.float32))
    assert main(["adapt", str(d), "--spacing", "0.07", "--out", str(tmp_path / "o"), "--quick", "--device", "cuda"]) != 0
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_fold_models_follow_the_written_models_schedule_unless_shortened():
    from mcgr.train.adapt import Plan

    assert Plan().fold_schedule == Plan().seg_steps == 2000
    assert Plan(seg_steps=50).fold_schedule == 50
    assert Plan(seg_steps=50, fold_steps=7).fold_schedule == 7
    assert Plan.quick().fold_schedule == Plan.quick().seg_steps


@pytest.mark.slow
def test_fine_tunes_the_architecture_it_starts_from(adapted):
    # --init shipped starts from the width-8 segmentor; the preset's model (width 16) must not win
    from mcgr.models import WEIGHTS_DIR, load_model
    from mcgr.models.unet import UNet
    from mcgr.train.adapt import Adaptation, Plan

    shipped = json.loads((WEIGHTS_DIR / "seg" / "config.json").read_text())["model"]
    for init, want in (("shipped", shipped), (str(adapted), json.loads((adapted / "seg" / "config.json").read_text())["model"])):
        items = [{"key": f.stem} for f in sorted((adapted / "work" / "harvest").glob("*.npy"))]
        a = Adaptation(adapted, items, Plan.quick(), init=init, progress=False)
        cfg = a.seg_config(5)
        assert cfg.model.to_dict() == want
        model = UNet(cfg.model)  # the trainer's init loads into exactly this
        model.load_state_dict(load_model(cfg.init, kind="seg").state_dict())
