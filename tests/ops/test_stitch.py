"""stitch / gather_tiles: every backend against stitch_ref, stitch_ref against a plain loop over tiles,
closed-form properties (constants, round trips) and the argument checks."""
import numpy as np
import pytest
import torch

from conftest import backend_or_skip
from helpers import assert_close
from tolerances import TOLERANCES

from mcgr.ops._tiling import TileGrid, gaussian_weights, tile_grid
from mcgr.ops import gather_tiles, gather_tiles_ref, stitch, stitch_ref

BACKENDS = ("cpu", "triton", "cuda")
ATOL, RTOL = TOLERANCES[("stitch", "canvas")]
GATOL, GRTOL = TOLERANCES[("stitch", "gather")]


def loop_stitch(tiles, origins, weights, shape):
    """The sliding-window average written out: a Python loop over tiles, float64 accumulators."""
    t = tiles.double().cpu()
    w = weights.double().cpu()
    squeeze = t.dim() == 3
    t = t.unsqueeze(0) if squeeze else t
    H, W = shape
    num = torch.zeros(t.shape[0], H, W, dtype=torch.float64)
    den = torch.zeros(H, W, dtype=torch.float64)
    T = t.shape[-1]
    for p, (y0, x0) in enumerate(origins.tolist()):
        h, wd = min(T, H - y0), min(T, W - x0)
        num[:, y0:y0 + h, x0:x0 + wd] += w[:h, :wd] * t[:, p, :h, :wd]
        den[y0:y0 + h, x0:x0 + wd] += w[:h, :wd]
    out = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
    return out[0] if squeeze else out


def random_origins(gen, n, H, W):
    ys = torch.randint(0, H, (n,), generator=gen)
    xs = torch.randint(0, W, (n,), generator=gen)
    return torch.stack([ys, xs], 1)


def skipped(grid: TileGrid, gen, keep=0.6) -> TileGrid:
    """The grid with a random ~keep fraction of its tiles (an irregular, breast-only-like grid)."""
    m = torch.rand(grid.num_tiles, generator=gen) < keep
    m[0] = True
    return TileGrid(grid.tile, grid.stride, grid.origins[m].contiguous(), grid.image_shape)


def case(name, gen):
    """(tiles, origins, weights, shape) for the named odd grid."""
    if name == "7x129":
        g = tile_grid((7, 129), tile=16, overlap=0.5)
    elif name == "255x257":
        g = tile_grid((255, 257), tile=64, overlap=0.25)
    elif name == "one_tile":
        g = tile_grid((40, 52), tile=64)
    elif name == "tile_gt_image":
        g = tile_grid((10, 13), tile=24)
    elif name == "skipped":
        g = skipped(tile_grid((130, 97), tile=32, overlap=0.25), gen)
    elif name == "random_origins":
        o = random_origins(gen, 9, 61, 75)
        g = TileGrid(20, 20, o, (61, 75))
    elif name == "stacked":  # many tiles over one wide segment: the kernels' general (m > 4) path
        o = torch.tensor([[0, 0], [1, 0], [2, 0], [3, 1], [4, 0], [5, 2], [9, 0]])
        g = TileGrid(64, 1, o, (70, 80))
    elif name == "batched":
        g = skipped(tile_grid((45, 70), tile=16, stride=11), gen, keep=0.7)
    else:
        raise KeyError(name)
    B = 3 if name == "batched" else None
    T = g.tile
    shape = (g.num_tiles, T, T) if B is None else (B, g.num_tiles, T, T)
    tiles = torch.randn(*shape, generator=gen) * 3.0
    weights = gaussian_weights(T) if name != "random_origins" else torch.rand(T, T, generator=gen) + 0.05
    return tiles, g, weights


CASES = ("7x129", "255x257", "one_tile", "tile_gt_image", "skipped", "random_origins", "stacked", "batched")


@pytest.mark.parametrize("name", CASES)
def test_ref_equals_loop_over_tiles(name):
    gen = torch.Generator().manual_seed(1)
    tiles, g, w = case(name, gen)
    got = stitch_ref(tiles, g.origins, w, g.image_shape)
    assert_close(got, loop_stitch(tiles, g.origins, w, g.image_shape), atol=2e-6, rtol=2e-6, name=f"stitch_ref {name}")


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_ref(backend, name, device):
    backend_or_skip("stitch", backend, device)
    gen = torch.Generator().manual_seed(2)
    tiles, g, w = case(name, gen)
    tiles, w = tiles.to(device), w.to(device)
    expected = stitch_ref(tiles, g.origins, w, g.image_shape)
    got = stitch(tiles, g, w, g.image_shape, backend=backend)
    assert got.device == tiles.device and got.dtype == torch.float32
    assert_close(got, expected, atol=ATOL, rtol=RTOL, name=f"stitch {backend} {name}")
    t_back = gather_tiles(expected, g, backend=backend)
    assert_close(t_back, gather_tiles_ref(expected, g.origins, g.tile), atol=GATOL, rtol=GRTOL,
                 name=f"gather_tiles {backend} {name}")


@pytest.mark.parametrize("backend", ("cpu", "cuda"))
def test_canvas_larger_than_the_caches(backend, device):
    # the cpu kernel streams canvases over 16 MiB past the caches: a sparse grid over a big canvas
    backend_or_skip("stitch", backend, device)
    gen = torch.Generator().manual_seed(7)
    H, W, T = 2111, 2105, 64
    o = torch.cat([random_origins(gen, 40, H, W), torch.tensor([[H - 1, W - 1], [0, W - 33], [H - 10, 0]])])
    tiles = torch.randn(o.shape[0], T, T, generator=gen).to(device)
    w = (torch.rand(T, T, generator=gen) + 0.01).to(device)
    out = torch.full((H, W), float("nan"), device=device)
    stitch(tiles, o, w, (H, W), out=out, backend=backend)
    assert_close(out, stitch_ref(tiles, o, w, (H, W)), atol=ATOL, rtol=RTOL, name=f"stitch {backend} large canvas")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_views_and_out(backend, device):
    backend_or_skip("stitch", backend, device)
    gen = torch.Generator().manual_seed(3)
    g = skipped(tile_grid((53, 77), tile=16, overlap=0.25), gen)
    big = torch.randn(2, g.num_tiles, 16, 16, generator=gen).to(device)
    tiles = big[1].transpose(-1, -2)  # a strided view of the data
    assert not tiles.is_contiguous()
    w = gaussian_weights(16, device=device)
    out = torch.full((53, 77), float("nan"), device=device)
    got = stitch(tiles, g, w, out=out, backend=backend)
    assert got is out
    assert_close(out, stitch_ref(tiles, g.origins, w, (53, 77)), atol=ATOL, rtol=RTOL, name=f"stitch {backend} view")
    canvas = torch.randn(2, 3, 53, 77, generator=gen).to(device)[:, 1]  # non-contiguous [B, H, W]
    tout = torch.empty(2, g.num_tiles, 16, 16, device=device)
    assert gather_tiles(canvas, g, out=tout, backend=backend) is tout
    assert_close(tout, gather_tiles_ref(canvas, g.origins, 16), atol=0, rtol=0, name=f"gather {backend} view")


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_constant_map_stitches_to_the_constant(backend, device):
    backend_or_skip("stitch", backend, device)
    gen = torch.Generator().manual_seed(4)
    g = skipped(tile_grid((150, 111), tile=32, overlap=0.25), gen, keep=0.5)
    c = -1.7345
    tiles = torch.full((g.num_tiles, 32, 32), c, device=device)
    got = stitch(tiles, g, gaussian_weights(32, device=device), backend=backend).cpu()
    covered = torch.zeros(150, 111, dtype=torch.bool)
    for y0, x0 in g.origins.tolist():
        covered[y0:y0 + 32, x0:x0 + 32] = True
    assert bool((~covered).any()), "the case must leave pixels uncovered"
    assert_close(got[covered], torch.full((int(covered.sum()),), c), atol=0, rtol=4e-7, name=f"constant {backend}")
    assert bool((got[~covered] == 0).all()), "uncovered pixels must be 0"


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_gather_of_stitch_of_a_consistent_canvas_returns_the_tiles(backend, device):
    backend_or_skip("stitch", backend, device)
    gen = torch.Generator().manual_seed(5)
    H, W = 97, 130
    g = tile_grid((H, W), tile=32, overlap=0.5)
    canvas = torch.randn(H, W, generator=gen).to(device)
    tiles = gather_tiles(canvas, g, backend=backend)
    # closed form: a tile is the canvas window; every pixel is covered, so stitching gives the canvas
    y0, x0 = g.origins[3].tolist()
    assert torch.equal(tiles[3].cpu(), canvas[y0:y0 + 32, x0:x0 + 32].cpu())
    w = gaussian_weights(32, device=device)
    back = stitch(tiles, g, w, backend=backend)
    assert_close(back, canvas, atol=1e-6, rtol=1e-6, name=f"stitch(gather) {backend}")
    again = gather_tiles(back, g, backend=backend)
    assert_close(again, tiles, atol=1e-6, rtol=1e-6, name=f"gather(stitch(tiles)) {backend}")


@pytest.mark.parametrize("backend", ("reference",) + BACKENDS)
def test_tiles_past_the_border_are_zero_padded_and_clipped(backend, device):
    backend_or_skip("stitch", backend, device)
    canvas = torch.arange(5 * 6, dtype=torch.float32).view(5, 6).to(device)
    g = tile_grid((5, 6), tile=8)
    tiles = gather_tiles(canvas, g, backend=backend).cpu()
    expected = torch.zeros(1, 8, 8)
    expected[0, :5, :6] = canvas.cpu()
    assert torch.equal(tiles, expected)
    back = stitch(tiles.to(device), g, gaussian_weights(8, device=device), backend=backend)
    assert_close(back, canvas, atol=1e-6, rtol=1e-6, name="tile > image")


def test_no_tiles_gives_zeros_and_numpy_round_trip():
    g = TileGrid(16, 12, torch.zeros(0, 2, dtype=torch.int64), (20, 30))
    got = stitch(torch.zeros(0, 16, 16), g, gaussian_weights(16))
    assert got.shape == (20, 30) and bool((got == 0).all())
    gen = torch.Generator().manual_seed(6)
    g = tile_grid((20, 30), tile=16, overlap=0.25)
    tiles = torch.randn(g.num_tiles, 16, 16, generator=gen)
    out = stitch(tiles.numpy(), g, gaussian_weights(16).numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert_close(torch.from_numpy(out), stitch_ref(tiles, g.origins, gaussian_weights(16), (20, 30)), atol=ATOL, rtol=RTOL)


def test_bad_arguments_name_the_argument():
    g = tile_grid((40, 50), tile=16, overlap=0.25)
    P = g.num_tiles
    t = torch.rand(P, 16, 16)
    w = gaussian_weights(16)
    bad = g.origins.clone()
    bad[2, 0] = 40
    with pytest.raises(ValueError, match=r"origins\[2\].*outside"):
        stitch(t, bad, w, (40, 50))
    bad = g.origins.clone()
    bad[0, 1] = -1
    with pytest.raises(ValueError, match=r"origins\[0\].*outside"):
        stitch(t, bad, w, (40, 50))
    with pytest.raises(ValueError, match="origins .*\\[P, 2\\]"):
        stitch(t, torch.zeros(P, 3, dtype=torch.int64), w, (40, 50))
    with pytest.raises(TypeError, match="origins must be integer"):
        stitch(t, g.origins.float(), w, (40, 50))
    with pytest.raises(ValueError, match=f"origins has {P - 1} rows"):
        stitch(t, g.origins[1:], w, (40, 50))
    with pytest.raises(ValueError, match="tiles must be"):
        stitch(torch.rand(16, 16), g, w)
    with pytest.raises(ValueError, match="tiles must be"):
        stitch(torch.rand(P, 16, 15), g, w)
    with pytest.raises(TypeError, match="tiles must be float32"):
        stitch(t.double(), g, w)
    with pytest.raises(ValueError, match="weights must be \\[T, T\\]"):
        stitch(t, g, gaussian_weights(15))
    with pytest.raises(ValueError, match="weights must be \\[T, T\\]"):
        stitch(t, g, w[None])
    for v in (0.0, -0.5, float("nan"), float("inf")):
        w2 = w.clone()
        w2[3, 4] = v
        with pytest.raises(ValueError, match="weights must be finite and > 0"):
            stitch(t, g, w2)
    w3 = w.clone()
    stitch(t, g, w3)
    w3[5, 5] = -1.0  # changed in place after a call that found it valid: checked again
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        stitch(t, g, w3)
    with pytest.raises(ValueError, match="out_shape"):
        stitch(t, g, w, (41, 50))
    with pytest.raises(ValueError, match="out_shape .* is required"):
        stitch(t, g.origins, w)
    with pytest.raises(ValueError, match="out must have shape"):
        stitch(t, g, w, out=torch.empty(40, 51))
    with pytest.raises(ValueError, match="grid.tile"):
        stitch(torch.rand(P, 8, 8), g, gaussian_weights(8))
    with pytest.raises(ValueError, match="canvas must be"):
        gather_tiles(torch.rand(40), g)
    with pytest.raises(ValueError, match=r"origins\[1\].*outside"):
        gather_tiles(torch.rand(40, 50), torch.tensor([[0, 0], [0, 50]]), 16)
    with pytest.raises(ValueError, match="tile .* required"):
        gather_tiles(torch.rand(40, 50), g.origins)
    with pytest.raises(ValueError, match="canvas is"):
        gather_tiles(torch.rand(41, 50), g)


def test_native_kernels_check_their_own_preconditions():
    backend_or_skip("stitch", "cpu", "cpu")
    from mcgr._backends import native

    C = native()
    p = C.StitchParams()
    p.batch, p.num_tiles, p.tile, p.height, p.width = 1, 1, 4, 5, 5
    t = torch.rand(1, 4, 4)
    w = torch.ones(4, 4)
    out = torch.empty(5, 5)
    bad = torch.tensor([[5, 0]])
    with pytest.raises(ValueError, match="origins\\[0\\]"):
        C.stitch_cpu(t.data_ptr(), bad.data_ptr(), w.data_ptr(), out.data_ptr(), p)
    with pytest.raises(ValueError, match="null"):
        C.stitch_cpu(0, bad.data_ptr(), w.data_ptr(), out.data_ptr(), p)
    p.tile = 0
    with pytest.raises(ValueError, match="tile"):
        C.gather_tiles_cpu(out.data_ptr(), bad.data_ptr(), t.data_ptr(), p)
