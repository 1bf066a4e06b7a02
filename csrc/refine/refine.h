// refine: gradient steps of TT-GPR's regularised logit energy (docs/design.md, method M4), fused.
// The specification is refine_ref in mcgr/ops/refine.py.
#pragma once
#include <cstdint>
#include <vector>

namespace mcgr {

// Energy weights and step. inv_two_sigma2 = 1 / (2 sigma_e^2), so w_ij = exp(-(y_i - y_j)^2 * inv_two_sigma2).
struct RefineParams {
  float eta = 1.0f;
  float lambda_a = 0.05f;
  float lambda_e = 0.1f;
  float lambda_o = 0.25f;
  float inv_two_sigma2 = 200.0f;
};

// Bits of the returned / written non-finite flags: which input held NaN or inf.
enum RefineInput : int { kRefineZ = 1, kRefineQ = 2, kRefineZ0 = 4, kRefineY = 8, kRefineZbar = 16 };

// Planes [n, h, w] of float32; each array's element (i, r, c) lies at ptr + i * sn + r * sh + c, with
// strides = {z.sn, z.sh, q.sn, q.sh, z0.sn, z0.sh, y.sn, y.sh, zbar.sn, zbar.sh, out.sn, out.sh}
// (elements, >= 0). zbar == 0: no overlap term. out may be z itself (same pointer and strides: in
// place) but must not overlap q, z0, y or zbar. Runs `steps` >= 1 gradient steps; returns the
// RefineInput bits of the inputs that hold NaN or inf (out is written regardless).
int refine_cpu(std::uintptr_t z, std::uintptr_t q, std::uintptr_t z0, std::uintptr_t y, std::uintptr_t zbar,
               std::uintptr_t out, const std::vector<int64_t>& strides, int64_t n, int64_t h, int64_t w,
               const RefineParams& p, int64_t steps);

#ifdef MCGR_WITH_CUDA
// As refine_cpu on device pointers, on `stream`. scratch: a buffer shaped and strided like out, needed
// (non-zero) when the steps take more than one launch or out is z; flags: a device int32 that gets
// the RefineInput bits OR-ed in (the caller zeroes it and reads it after the stream).
void refine_cuda(std::uintptr_t z, std::uintptr_t q, std::uintptr_t z0, std::uintptr_t y, std::uintptr_t zbar,
                 std::uintptr_t out, std::uintptr_t scratch, std::uintptr_t flags,
                 const std::vector<int64_t>& strides, int64_t n, int64_t h, int64_t w, const RefineParams& p,
                 int64_t steps, std::uintptr_t stream);
#endif

}  // namespace mcgr
