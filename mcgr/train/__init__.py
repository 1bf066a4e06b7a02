"""Training of the segmentor and the RF generator (`mcgr train seg|rf`)."""
