"""The segmentor's shipped operating threshold reaches the pipeline's config (and an explicit config wins)."""
import types

from mcgr.infer.loader import operating_config
from mcgr.infer.ttgpr import TTGPRConfig


def test_operating_threshold_from_the_weights_config():
    seg = types.SimpleNamespace(config={"operating_threshold": 0.8})
    assert operating_config(seg).threshold == 0.8
    cfg = TTGPRConfig(refine_steps=7)
    got = operating_config(seg, cfg)
    assert got.threshold == 0.8 and got.refine_steps == 7 and cfg.threshold == 0.5
    assert operating_config(types.SimpleNamespace(config={})).threshold == TTGPRConfig().threshold
    assert operating_config(object()).threshold == TTGPRConfig().threshold
