"""Where a hard negative's mined detection lands in a training patch (SynthPairs' hard_centre) and the
generator's decoy seed placed there."""
import pytest
import torch

from mcgr.synth.augment import turned_point
from mcgr.synth.dataset import SynthPairs
from mcgr.train.trainer import _with_hard_decoys


@pytest.mark.parametrize("augment", [None, {"speck_probability": 0.0}])
def test_hard_centre_follows_crop_resampling_turns_and_flips(augment):
    P = 32
    hn = torch.full((5, 64, 64), 0.2)
    hn[:, 32, 32] = 1.0  # the mined detection: the source patch's centre pixel, the brightest by far
    ds = SynthPairs(patch_size=P, batch_size=8, seed=3, hard_negatives=hn, hard_fraction=1.0, mc_free_fraction=1.0,
                    augment=augment)
    for k in range(3):
        b = ds.batch(k)
        for j in range(8):
            y, x = divmod(int(b["image"][j, 0].argmax()), P)
            cy, cx = b["hard_centre"][j].tolist()
            assert abs(y - cy) <= 1.5 and abs(x - cx) <= 1.5, (k, j, (y, x), (cy, cx))


def test_patches_not_cut_from_hard_negatives_have_no_centre():
    b = SynthPairs(patch_size=16, batch_size=4, seed=0).batch(0)
    assert torch.isnan(b["hard_centre"]).all()


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flipped", [False, True])
def test_turned_point_is_torch_rot90_and_flip(k, flipped):
    x = torch.zeros(7, 7)
    x[1, 5] = 1
    y = torch.rot90(x, k, (0, 1))
    if flipped:
        y = y.flip(1)
    assert divmod(int(y.argmax()), 7) == tuple(int(v) for v in turned_point(1, 5, 7, k, flipped))


def test_hard_decoy_added_at_centre_unless_a_calcification_is_near():
    dec = [torch.zeros(0, 2), torch.zeros(0, 2), torch.tensor([[3.0, 3.0]])]
    centres = torch.tensor([[10.2, 20.7], [10.0, 10.0], [float("nan"), float("nan")]])
    mask = torch.zeros(3, 1, 32, 32)
    mask[1, 0, 14, 12] = 1  # 4 px from the second centre: no decoy there
    out = _with_hard_decoys(dec, centres, mask, min_dist=8)
    assert out[0].tolist() == [[10.0, 21.0]]
    assert out[1].shape == (0, 2)
    assert out[2].tolist() == [[3.0, 3.0]]
