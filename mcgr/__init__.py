"""mcgr: label-free breast microcalcification segmentation (MC-GenRef) with fused kernels."""
__version__ = "0.1.0"

MODEL_SPACING_MM = 0.07

__all__ = ["MODEL_SPACING_MM", "Pipeline", "TTGPRConfig", "__version__"]


def __getattr__(name):  # lazy: `import mcgr` stays light, `from mcgr import Pipeline` works
    if name == "Pipeline":
        from mcgr.infer.pipeline import Pipeline

        return Pipeline
    if name == "TTGPRConfig":
        from mcgr.infer.ttgpr import TTGPRConfig

        return TTGPRConfig
    raise AttributeError(f"module 'mcgr' has no attribute {name!r}")
