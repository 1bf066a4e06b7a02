"""Full-field inference (DESIGN.md 5): tiling of the breast, batched segmentation, stitching, TT-GPR."""
