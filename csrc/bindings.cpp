// mcgr._C: the C++/OpenMP and CUDA kernels, torch-free. Pointers travel as integers (data_ptr()),
// sizes as int64, parameters as structs, the CUDA stream as an integer handle.
#include <pybind11/pybind11.h>

#include "common.h"

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
}
