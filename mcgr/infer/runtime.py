"""Where the segmentor's network runs: PyTorch, or ONNX Runtime on the CPU.

``--runtime`` of ``mcgr infer`` and ``mcgr demo`` (``Pipeline(runtime=...)``):

- ``torch``: PyTorch eager (bf16 autocast + channels-last where the machine runs bf16 natively,
  float32 NCHW elsewhere; :func:`cpu_has_bf16`);
- ``onnxruntime``: the same weights exported to ONNX (opset 17, float32, batch and tile size
  dynamic) and run by ONNX Runtime's CPU execution provider with as many threads as torch has; the
  export happens once per network and process (a few seconds; cached by the weights' bytes). CPU
  only; needs the optional packages ``onnx`` and ``onnxruntime`` (``pip install 'mcgr[runtimes]'``).
  The logits equal PyTorch float32's to ~1e-5 (``tests/infer/test_runtime.py``);
- ``auto`` (the default of the CLI and of ``Pipeline``): ``onnxruntime`` on a CPU without native bf16 when both packages are
  installed, where it measured faster than PyTorch float32 with the same answer; ``torch`` everywhere
  else (on a CPU with AVX512-BF16, PyTorch bf16 measured faster than ONNX Runtime float32; ONNX
  Runtime's CPU provider has no bf16 convolution). The figures are in ``docs/benchmarks.md``.

Only the segmentor moves: the generator of TT-GPR stays on PyTorch.
"""
from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
import torch

RUNTIMES = ("auto", "torch", "onnxruntime")
_EXPORTS: dict[str, bytes] = {}  # sha256 of the weights and input shape -> ONNX bytes (this process)


class RuntimeUnavailable(ValueError):
    """A runtime that cannot run here (package missing, or a device it does not serve)."""


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN's AVX512-BF16 / AMX check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def onnxruntime_missing() -> str | None:
    """Why ``onnxruntime`` cannot run here (the packages it needs that are not installed), or None."""
    missing = []
    for mod in ("onnx", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
                f"(pip install 'mcgr[runtimes]', or pip install onnx onnxruntime)")
    return None


def resolve_runtime(name: str, device="cpu") -> str:
    """``torch`` or ``onnxruntime`` for the runtime asked for (``auto``: see the module doc) on
    ``device``; :class:`RuntimeUnavailable` for ``onnxruntime`` off the CPU or without its packages."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
    dev = torch.device(device)
    if name == "torch":
        return "torch"
    if name == "onnxruntime":
        if dev.type != "cpu":
            raise RuntimeUnavailable(f"runtime onnxruntime runs on the CPU only, not on {dev}: use runtime torch there")
        why = onnxruntime_missing()
        if why:
            raise RuntimeUnavailable(f"runtime onnxruntime: {why}")
        return "onnxruntime"
    if dev.type == "cpu" and not cpu_has_bf16() and onnxruntime_missing() is None:
        return "onnxruntime"
    return "torch"


def _weights_key(seg, channels: int) -> str:
    h = hashlib.sha256(f"{type(seg).__name__}:{channels}".encode())
    for name, t in sorted(seg.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def export_onnx(seg) -> bytes:
    """``seg`` (a U-Net segmentor) as ONNX bytes: float32, input ``x`` ``[B, C, H, W]`` with B, H, W
    dynamic (H and W multiples of ``2 ** depth``: :class:`OnnxSegmentor` pads), output ``logits``."""
    import copy

    from mcgr.models.unet import config_of

    cfg = config_of(seg)
    channels = int(getattr(cfg, "in_channels", 1))
    key = _weights_key(seg, channels)
    if key not in _EXPORTS:
        model = copy.deepcopy(seg).float().eval().to(memory_format=torch.contiguous_format).cpu()
        buf = io.BytesIO()
        axes = {0: "batch", 2: "height", 3: "width"}
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")  # tracer warnings on the U-Net's shape checks (exported at 256 px)
            torch.onnx.export(model, (torch.zeros(1, channels, 256, 256),), buf, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": axes, "logits": axes}, opset_version=17,
                              dynamo=False)
        _EXPORTS[key] = buf.getvalue()
    return _EXPORTS[key]


class OnnxSegmentor(torch.nn.Module):
    """``seg`` run by ONNX Runtime (CPU, float32): takes the network input ``[B, C, H, W]`` (any H, W:
    padded as the U-Net pads, then cropped back) and returns float32 logits ``[B, 1, H, W]`` on the
    CPU. Carries ``seg``'s ``cfg`` and ``config`` (its input scale, operating threshold, card), so
    the pipeline treats it as ``seg``."""

    def __init__(self, seg, threads: int | None = None):
        super().__init__()
        why = onnxruntime_missing()
        if why:
            raise RuntimeUnavailable(f"runtime onnxruntime: {why}")
        import onnxruntime as ort

        from mcgr.models.unet import config_of

        self.cfg = config_of(seg)
        self.config = getattr(seg, "config", None)
        self.multiple = 2 ** int(getattr(self.cfg, "depth", 0))
        self.threads = int(threads or torch.get_num_threads())
        self.onnx = export_onnx(seg)
        self.session = self._session()
        self.version = ort.__version__

    def _session(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return ort.InferenceSession(self.onnx, so, providers=["CPUExecutionProvider"])

    # copied and pickled (copy.deepcopy of a pipeline's segmentor) as the ONNX bytes; the session is rebuilt
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.session = self._session()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mcgr.models.unet import pad_to_multiple

        if x.dim() != 4:
            raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x.detach().float().cpu(), self.multiple)
        out = self.session.run(None, {"x": np.ascontiguousarray(xp.numpy())})[0]
        return torch.from_numpy(out)[..., :h, :w]
