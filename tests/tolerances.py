"""Tolerances per op and output, as data: (atol, rtol) for float32 outputs against the reference."""
TOLERANCES = {
    ("inject", "image"): (2e-5, 1e-5),
    # boolean mask: a sample that lies within float rounding of a primitive's boundary may flip
    # between backends; at most this fraction of pixels may differ
    ("inject", "mask_fraction"): 1e-4,
    # physics checks (relative to the expected value): float32 sums of -log(1 - I) over the image
    ("inject", "mass_rel"): 2e-4,
    # point-source profile against scipy.ndimage.gaussian_filter, relative to the peak
    ("inject", "profile_rel"): 1e-4,
    # rf_step start: eps = rng_normal differs between backends only in log/sqrt/cos (a few ulp of
    # |eps| <= 6); the Euler and Heun updates round exactly as the reference (bitwise equal)
    ("rf_step", "start"): (4e-6, 1e-6),
    ("rf_step", "step"): (0.0, 0.0),
    # stitch: backends sum the covering tiles in another order than index_add (a few ulp of the
    # weighted mean); gather is a copy (exact)
    ("stitch", "canvas"): (2e-6, 2e-6),
    ("stitch", "gather"): (0.0, 0.0),
    # refine: sums in the reference's order, but exp/sigmoid differ by a few ulp between backends
    # (the CPU kernel's polynomial exp, CUDA expf); logits of magnitude ~10, errors stay ~1e-6
    ("refine", "z"): (2e-5, 2e-5),
}
