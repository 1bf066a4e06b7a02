"""Tolerances per op and output, as data: (atol, rtol) for float32 outputs against the reference."""
TOLERANCES = {
    ("inject", "image"): (2e-5, 1e-5),
    # boolean mask: a sample that lies within float rounding of a primitive's boundary may flip
    # between backends; at most this fraction of pixels may differ
    ("inject", "mask_fraction"): 1e-4,
}
