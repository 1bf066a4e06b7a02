"""The shipped segmentor in bf16 (the pipeline's CPU/CUDA mode) scores the Dice of float32 within 0.005."""
import pytest
import torch

from mcgr.eval.bf16 import compare, pooled_dice
from mcgr.models import WEIGHTS_DIR, load_pretrained
from mcgr.synth.dataset import validation_set


def test_pooled_dice_is_the_set_overlap_ratio():
    prob = torch.tensor([[0.9, 0.6, 0.2], [0.7, 0.1, 0.5]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    # predicted {0, 1, 3, 5}, truth {0, 2, 3}: 2 * 2 / (4 + 3)
    assert pooled_dice(prob, mask) == pytest.approx(4 / 7)
    assert pooled_dice(torch.zeros(4), torch.zeros(4)) == 1.0


@pytest.mark.skipif(not (WEIGHTS_DIR / "seg" / "model.safetensors").is_file(), reason="no shipped segmentor weights")
def test_shipped_segmentor_bf16_dice_within_0005_of_float32():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = compare(load_pretrained("seg").eval(), validation_set(8, patch_size=256, seed=12345))
    finally:
        torch.set_num_threads(threads)
    assert res["patches"] == 8 and 0.0 < res["dice_float32"] <= 1.0
    assert res["dice_gap"] <= 0.005, res
