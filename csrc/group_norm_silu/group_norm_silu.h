// group_norm_silu: GroupNorm, a per-sample channel modulation, a residual and SiLU fused into two passes
// over the activations (one to gather the group statistics, one to write the output). The
// specification is mcgr/ops/group_norm_silu.py (group_norm_silu_ref):
//   y[n,c,p] = silu( ((x[n,c,p] - mean[n,g]) * rstd[n,g] * gamma[c] + beta[c]) * (1 + scale[n,c])
//                    + shift[n,c] + residual[n,c,p] ),   g = c / (C / G),
// mean / rstd over the C/G channels and H*W pixels of group g of sample n (biased variance, eps
// inside the square root), every step in float32 (statistics accumulated in float64), the output
// rounded once to its dtype (bfloat16: round to nearest even).
#pragma once
#include <cstdint>

namespace mcgr {

enum NormActDtype : int32_t { NA_FLOAT32 = 0, NA_BFLOAT16 = 1 };

struct NormActParams {
  int64_t n = 0;          // samples
  int64_t c = 0;          // channels
  int64_t hw = 0;         // pixels per channel (H * W)
  int64_t groups = 1;     // divides c
  float eps = 1e-5f;
  int32_t dtype = NA_FLOAT32;   // of x, residual and out
  int32_t channels_last = 0;    // 1: memory [N, H*W, C]; 0: [N, C, H*W]
};

// x, residual (0: none), out: buffers of n*c*hw elements of `dtype` in the layout the params give;
// gamma, beta: float32 [c] (0: 1 and 0); scale, shift: float32 [n, c] (0: none). out may be x or
// residual (in place: every element is read before it is written, by the same thread).
void group_norm_silu_cpu(std::uintptr_t x, std::uintptr_t gamma, std::uintptr_t beta, std::uintptr_t scale,
                         std::uintptr_t shift, std::uintptr_t residual, std::uintptr_t out, const NormActParams& p);

}  // namespace mcgr
