// rf_step: one rectified-flow ODE update, or the noisy start, fused into one elementwise pass.
// The specification is mcgr/ops/rf_step.py (rf_start_ref, rf_step_ref); the modes are
//   RF_START: out[i] = a * x[i] + b * rng_normal(seed, offset + i)   (x = y, a = t0, b = 1 - t0)
//   RF_EULER: out[i] = x[i] + a * v[i]                                (a = dt)
//   RF_HEUN:  out[i] = x[i] + a * (w[i] + v[i])                       (a = dt / 2, w = v_prev)
// i is the row-major linear index of a contiguous float32 tensor of n elements; offset + i is
// taken modulo 2**32. out may be the same buffer as x, v or w (never a partial overlap).
#pragma once
#include <cstdint>

namespace mcgr {

enum RfStepMode : int32_t { RF_START = 0, RF_EULER = 1, RF_HEUN = 2 };

struct RfStepParams {
  int32_t mode = RF_EULER;
  float a = 0.0f;
  float b = 0.0f;
  uint32_t seed = 0;
  uint32_t offset = 0;
};

// Pointers are addresses of contiguous float32 buffers of n elements; v and w may be 0 where the
// mode does not read them.
void rf_step_cpu(std::uintptr_t out, std::uintptr_t x, std::uintptr_t v, std::uintptr_t w, int64_t n,
                 const RfStepParams& p);

#ifdef MCGR_WITH_CUDA
// Same, on device pointers, launched on `stream` (a cudaStream_t as an integer; 0 = default).
void rf_step_cuda(std::uintptr_t out, std::uintptr_t x, std::uintptr_t v, std::uintptr_t w, int64_t n,
                  const RfStepParams& p, std::uintptr_t stream);
#endif

}  // namespace mcgr
