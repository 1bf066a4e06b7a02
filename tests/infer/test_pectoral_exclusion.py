"""The pipeline keeps detections off the pectoral muscle and says so in the JSON and the overlay."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mcgr import MODEL_SPACING_MM, Pipeline
from mcgr.io.pectoral import find_pectoral
from mcgr.io.reader import Mammogram
from mcgr.io.writers import write_outputs
from mcgr.synth.phantom import breast_phantom


@pytest.fixture(scope="module")
def mlo():
    for seed in range(10):
        ph = breast_phantom(1024, 768, seed=seed, anatomy=True)
        if find_pectoral(ph.image.numpy(), ph.breast.numpy(), MODEL_SPACING_MM).found:
            return ph
    pytest.fail("no phantom with a pectoral muscle found in 10 seeds")


def test_no_detection_on_the_pectoral_and_its_record(mlo, tmp_path):
    torch.set_num_threads(1)
    pipe = Pipeline.from_pretrained()
    res = pipe(mlo.image, spacing=MODEL_SPACING_MM, refine=False)
    assert res.pectoral["found"] and len(res.pectoral["boundary"]) > 10
    pec = find_pectoral(mlo.image.numpy(), res.breast_mask.numpy(), MODEL_SPACING_MM).mask
    assert not (res.mask.numpy() & pec).any()
    for d in res.detections:
        assert not pec[int(round(d["y"])), int(round(d["x"]))]
    off = Pipeline.from_pretrained(exclude_pectoral=False)(mlo.image, spacing=MODEL_SPACING_MM, refine=False)
    assert off.pectoral is None
    mammo = Mammogram(image=mlo.image.numpy(), spacing_mm=MODEL_SPACING_MM, laterality="L", view="MLO",
                      source="phantom", source_shape=tuple(mlo.image.shape), flipped=False, spacing_source="argument")
    paths = write_outputs(tmp_path, "mlo", mammo, res.prob, res.mask, res.detections, res.clusters,
                          excluded={"pectoral": res.pectoral})
    doc = json.loads(open(paths["json"]).read())
    b = np.asarray(doc["excluded"]["pectoral"]["boundary_rowcol"])
    assert doc["excluded"]["pectoral"]["found"] and b.shape[1] == 2
    np.testing.assert_allclose(b, np.asarray(res.pectoral["boundary"]), atol=0.06)  # unflipped, same grid
    ov = np.asarray(Image.open(paths["overlay"]).convert("RGB"))
    assert ((ov[..., 0] == 60) & (ov[..., 1] == 220) & (ov[..., 2] == 90)).sum() > 50
