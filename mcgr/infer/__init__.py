"""Full-field inference (docs/design.md, method M5): tiling of the breast, batched segmentation, stitching, TT-GPR."""
