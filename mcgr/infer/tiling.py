"""Tile grids live in :mod:`mcgr.ops._tiling`, beside the ops that gather and stitch them; the names stay
importable from here for the pipeline's callers."""
from mcgr.ops._tiling import TileGrid, axis_origins, gaussian_weights, tile_grid

__all__ = ["TileGrid", "tile_grid", "gaussian_weights", "axis_origins"]
