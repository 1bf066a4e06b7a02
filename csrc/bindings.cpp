// mcgr._C: the C++/OpenMP and CUDA kernels, torch-free. Pointers travel as integers (data_ptr()),
// sizes as int64, parameters as structs, the CUDA stream as an integer handle.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "inject/inject.h"
#include "stitch/stitch.h"
#include "rf_step/rf_step.h"
#include "refine/refine.h"
#include "group_norm_silu/group_norm_silu.h"

namespace py = pybind11;

static py::dict build_info() {
  py::dict d;
#ifdef MCGR_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = MCGR_CUDA_ARCHS;
  d["cuda_version"] = MCGR_CUDA_VERSION;
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
  d["cuda_version"] = "";
#endif
#ifdef MCGR_WITH_OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["compiler"] = MCGR_CXX_COMPILER;
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "mcgr fused kernels (C++/OpenMP and CUDA)";
  m.def("build_info", &build_info, "build metadata: CUDA on/off, architectures, OpenMP, compiler");

  py::class_<mcgr::InjectParams>(m, "InjectParams", "parameters of the fused inject kernels (mcgr.ops.inject.InjectParams)")
      .def(py::init<>())
      .def_readwrite("mu", &mcgr::InjectParams::mu)
      .def_readwrite("psf_sigma", &mcgr::InjectParams::psf_sigma)
      .def_readwrite("local_sigma", &mcgr::InjectParams::local_sigma)
      .def_readwrite("contrast", &mcgr::InjectParams::contrast)
      .def_readwrite("gamma", &mcgr::InjectParams::gamma)
      .def_readwrite("noise", &mcgr::InjectParams::noise)
      .def_readwrite("seed", &mcgr::InjectParams::seed)
      .def_readwrite("supersample", &mcgr::InjectParams::supersample);
  m.def("inject_cpu", &mcgr::inject_cpu, py::arg("background"), py::arg("calcs"), py::arg("image"), py::arg("mask"),
        py::arg("B"), py::arg("H"), py::arg("W"), py::arg("N"), py::arg("params"),
        py::call_guard<py::gil_scoped_release>(),
        "fused MC injection on CPU: background [B,H,W] f32, calcs [N,8] f32 -> image [B,H,W] f32, mask [B,H,W] bool");
#ifdef MCGR_WITH_CUDA
  m.def("inject_cuda", &mcgr::inject_cuda, py::arg("background"), py::arg("calcs"), py::arg("image"), py::arg("mask"),
        py::arg("B"), py::arg("H"), py::arg("W"), py::arg("N"), py::arg("params"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "fused MC injection on CUDA (device pointers, stream as an integer handle)");
#endif
  // stitch: tiles to canvas (weighted sum and normalisation in one pass) and its inverse gather
  py::class_<mcgr::StitchParams>(m, "StitchParams")
      .def(py::init<>())
      .def_readwrite("batch", &mcgr::StitchParams::batch)
      .def_readwrite("num_tiles", &mcgr::StitchParams::num_tiles)
      .def_readwrite("tile", &mcgr::StitchParams::tile)
      .def_readwrite("height", &mcgr::StitchParams::height)
      .def_readwrite("width", &mcgr::StitchParams::width);
  m.def("stitch_cpu", &mcgr::stitch_cpu, py::call_guard<py::gil_scoped_release>(),
        "stitch(tiles, origins, weights, out, params): canvas = sum w t / sum w over covering tiles");
  m.def("gather_tiles_cpu", &mcgr::gather_tiles_cpu, py::call_guard<py::gil_scoped_release>(),
        "gather_tiles(canvas, origins, tiles, params): tiles cut from the canvas, 0 outside");
#ifdef MCGR_WITH_CUDA
  m.def("stitch_cuda", &mcgr::stitch_cuda, py::call_guard<py::gil_scoped_release>(),
        "stitch on CUDA: (tiles, origins, weights, out, params, stream)");
  m.def("gather_tiles_cuda", &mcgr::gather_tiles_cuda, py::call_guard<py::gil_scoped_release>(),
        "gather_tiles on CUDA: (canvas, origins, tiles, params, stream)");
#endif
  // rf_step: the rectified-flow noisy start and the Euler / Heun updates, one elementwise pass each
  py::class_<mcgr::RfStepParams>(m, "RfStepParams", "rf_step kernel parameters (mcgr.ops.rf_step.RfStepParams)")
      .def(py::init<>())
      .def_readwrite("mode", &mcgr::RfStepParams::mode)
      .def_readwrite("a", &mcgr::RfStepParams::a)
      .def_readwrite("b", &mcgr::RfStepParams::b)
      .def_readwrite("seed", &mcgr::RfStepParams::seed)
      .def_readwrite("offset", &mcgr::RfStepParams::offset);
  m.def("rf_step_cpu", &mcgr::rf_step_cpu, py::arg("out"), py::arg("x"), py::arg("v"), py::arg("w"), py::arg("n"),
        py::arg("params"), py::call_guard<py::gil_scoped_release>(),
        "rf_step on CPU: out = a x + b eps (start), x + a v (euler), x + a (w + v) (heun); n float32 elements");
#ifdef MCGR_WITH_CUDA
  m.def("rf_step_cuda", &mcgr::rf_step_cuda, py::arg("out"), py::arg("x"), py::arg("v"), py::arg("w"), py::arg("n"),
        py::arg("params"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "rf_step on CUDA (device pointers, stream as an integer handle)");
#endif
  // refine: gradient steps of TT-GPR's logit energy (data, anchor, edge-aware smoothness, overlap)
  py::class_<mcgr::RefineParams>(m, "RefineParams")
      .def(py::init<>())
      .def_readwrite("eta", &mcgr::RefineParams::eta)
      .def_readwrite("lambda_a", &mcgr::RefineParams::lambda_a)
      .def_readwrite("lambda_e", &mcgr::RefineParams::lambda_e)
      .def_readwrite("lambda_o", &mcgr::RefineParams::lambda_o)
      .def_readwrite("inv_two_sigma2", &mcgr::RefineParams::inv_two_sigma2);
  m.def("refine_cpu", &mcgr::refine_cpu, py::arg("z"), py::arg("q"), py::arg("z0"), py::arg("y"), py::arg("zbar"),
        py::arg("out"), py::arg("strides"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("params"),
        py::arg("steps"), py::call_guard<py::gil_scoped_release>(),
        "refine on CPU: `steps` fused gradient steps; returns the bits of the inputs holding NaN or inf");
#ifdef MCGR_WITH_CUDA
  m.def("refine_cuda", &mcgr::refine_cuda, py::arg("z"), py::arg("q"), py::arg("z0"), py::arg("y"), py::arg("zbar"),
        py::arg("out"), py::arg("scratch"), py::arg("flags"), py::arg("strides"), py::arg("n"), py::arg("h"),
        py::arg("w"), py::arg("params"), py::arg("steps"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "refine on CUDA (device pointers, stream as an integer handle); non-finite input bits OR-ed into *flags");
#endif
  // group_norm_silu: GroupNorm + per-sample modulation + residual + SiLU in two passes (the U-Net's blocks)
  py::class_<mcgr::NormActParams>(m, "NormActParams", "group_norm_silu kernel parameters (mcgr.ops.group_norm_silu)")
      .def(py::init<>())
      .def_readwrite("n", &mcgr::NormActParams::n)
      .def_readwrite("c", &mcgr::NormActParams::c)
      .def_readwrite("hw", &mcgr::NormActParams::hw)
      .def_readwrite("groups", &mcgr::NormActParams::groups)
      .def_readwrite("eps", &mcgr::NormActParams::eps)
      .def_readwrite("dtype", &mcgr::NormActParams::dtype)
      .def_readwrite("channels_last", &mcgr::NormActParams::channels_last);
  m.def("group_norm_silu_cpu", &mcgr::group_norm_silu_cpu, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("scale"), py::arg("shift"), py::arg("residual"), py::arg("out"), py::arg("params"),
        py::call_guard<py::gil_scoped_release>(),
        "silu(group_norm(x) * (1 + scale) + shift + residual) on CPU; float32 or bfloat16, NCHW or channels-last");
}
