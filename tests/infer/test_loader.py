"""One model folder, one pipeline: ``mcgr demo``, ``mcgr eval``, ``mcgr infer``,
``python -m mcgr.train.validate_real`` and ``Pipeline.from_pretrained`` run a folder's models at the
operating threshold its segmentor's config.json records, whether the folder is the shipped one
(named or not) or a copy of it elsewhere."""
from __future__ import annotations

import json
import shutil

import pytest

from mcgr.cli import main
from mcgr.infer.pipeline import Pipeline
from mcgr.models import WEIGHTS_DIR

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "seg" / "model.safetensors").is_file()
                                or not (WEIGHTS_DIR / "rf" / "model.safetensors").is_file(),
                                reason="no shipped weights in mcgr/weights")


class Built(Exception):
    """Raised once a command has built its pipeline: the test stops the command there."""


@pytest.fixture
def threshold_of(monkeypatch):
    """``threshold_of(call)``: the threshold of the first pipeline ``call()`` builds."""
    real = Pipeline.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        raise Built(self.config.threshold)

    monkeypatch.setattr(Pipeline, "__init__", spy)

    def run(call) -> float:
        with pytest.raises(Built) as got:
            call()
        return got.value.args[0]

    return run


def _written_threshold(folder) -> float:
    """The operating threshold the folder's segmentor config records, read directly."""
    return float(json.loads((folder / "seg" / "config.json").read_text())["operating_threshold"])


def _copy(dst, threshold: float | None = None):
    for kind in ("seg", "rf"):
        shutil.copytree(WEIGHTS_DIR / kind, dst / kind)
    if threshold is not None:  # config.json only: the weights (and their recorded digest) are unchanged
        cfg = json.loads((dst / "seg" / "config.json").read_text())
        cfg["operating_threshold"] = threshold
        (dst / "seg" / "config.json").write_text(json.dumps(cfg))
    return dst


def _thresholds(threshold_of, tmp_path, models: str | None, seg_folder: str) -> dict:
    """The threshold of each command's pipeline for the model folder ``models`` (None: not named,
    the shipped weights); ``seg_folder``: the same segmentor as validate_real names it."""
    from mcgr.train.validate_real import load_pipe

    named = ["--models", models] if models is not None else []
    npy = tmp_path / "a.npy"
    return {
        "demo": threshold_of(lambda: main(["demo", "--out", str(tmp_path / "demo"), "--size", "256x192", *named])),
        "eval": threshold_of(lambda: main(["eval", "--synthetic", "1", "--size", "192x160", "--methods", "base,ttgpr",
                                           "--out", str(tmp_path / "eval"), "--quiet", *named])),
        "eval base": threshold_of(lambda: main(["eval", "--synthetic", "1", "--size", "192x160", "--methods", "base",
                                                "--out", str(tmp_path / "eval"), "--quiet", *named])),
        "infer": threshold_of(lambda: main(["infer", str(npy), "--out", str(tmp_path / "infer"), "--spacing", "0.07",
                                            "--device", "cpu", "--quiet", *named])),
        "infer --no-refine": threshold_of(lambda: main(["infer", str(npy), "--out", str(tmp_path / "infer"),
                                                        "--spacing", "0.07", "--device", "cpu", "--quiet",
                                                        "--no-refine", *named])),
        "validate_real": threshold_of(lambda: load_pipe(seg_folder)),
        "from_pretrained": threshold_of(lambda: Pipeline.from_pretrained(models)),
    }


@pytest.mark.parametrize("where", ["shipped", "shipped, named", "copy", "copy with its own threshold"])
def test_every_command_runs_a_folder_at_its_written_threshold(threshold_of, tmp_path, where):
    if where == "shipped":
        folder, models, seg_folder = WEIGHTS_DIR, None, "shipped"
    elif where == "shipped, named":
        folder, models, seg_folder = WEIGHTS_DIR, str(WEIGHTS_DIR), str(WEIGHTS_DIR / "seg")
    else:
        folder = _copy(tmp_path / "models", 0.93 if where.endswith("threshold") else None)
        models, seg_folder = str(folder), str(folder / "seg")
    want = _written_threshold(folder)
    assert want != 0.5  # not TTGPRConfig's default: the test tells a folder's threshold from none
    got = _thresholds(threshold_of, tmp_path, models, seg_folder)
    assert got == {k: pytest.approx(want) for k in got}


def test_an_explicit_threshold_wins(threshold_of, tmp_path):
    folder = _copy(tmp_path / "models")
    assert threshold_of(lambda: Pipeline.from_pretrained(folder, threshold=0.7)) == pytest.approx(0.7)
    assert threshold_of(lambda: main(["eval", "--synthetic", "1", "--size", "192x160", "--methods", "base,ttgpr",
                                      "--ttgpr", "threshold=0.7", "--models", str(folder),
                                      "--out", str(tmp_path / "eval"), "--quiet"])) == pytest.approx(0.7)


def test_models_folder_errors_name_the_folder(tmp_path):
    from mcgr.infer.loader import ModelFolderError, load_models

    with pytest.raises(ModelFolderError, match="no such folder"):
        load_models(tmp_path / "nope")
    (tmp_path / "m" / "seg").mkdir(parents=True)
    with pytest.raises(ModelFolderError, match=r"no seg model in .*m[/\\]seg") as e:
        load_models(tmp_path / "m", refine=False)
    assert e.value.missing == ("seg",)
    folder = _copy(tmp_path / "c")
    shutil.rmtree(folder / "rf")
    with pytest.raises(ModelFolderError, match="no rf model"):
        load_models(folder)
    assert load_models(folder, refine=False).rf is None  # the segmentor alone needs no generator
    assert load_models(folder / "seg", refine=False).threshold == pytest.approx(_written_threshold(folder))


def test_teacher_keyword_names_the_packaged_width16_segmentor(tmp_path, monkeypatch):
    from mcgr.infer.loader import ModelFolderError, load_models, model_folders
    from mcgr.models import TEACHER_DIR

    if not (TEACHER_DIR / "model.safetensors").is_file():
        pytest.skip("no packaged teacher")
    monkeypatch.chdir(tmp_path)
    folders = model_folders("teacher")
    assert folders == {"seg": TEACHER_DIR, "rf": WEIGHTS_DIR / "rf"}
    loaded = load_models("teacher", refine=False)
    teacher_cfg = json.loads((TEACHER_DIR / "config.json").read_text())
    assert loaded.seg.cfg.width == teacher_cfg["model"]["width"]
    assert loaded.threshold == pytest.approx(teacher_cfg["operating_threshold"])
    (tmp_path / "teacher").mkdir()  # a folder of that name here: refused, not guessed
    with pytest.raises(ModelFolderError, match="./teacher/"):
        model_folders("teacher")
    shutil.copytree(TEACHER_DIR, tmp_path / "teacher" / "seg")
    assert model_folders("./teacher/", refine=False)["seg"] == tmp_path.joinpath("teacher", "seg").relative_to(tmp_path)
