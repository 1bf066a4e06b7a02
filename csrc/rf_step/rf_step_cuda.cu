// rf_step on CUDA: a grid-stride elementwise kernel, float4 loads and stores when every buffer is
// 16-byte aligned, scalar otherwise. Built with --fmad=false, so the products and sums round
// exactly as the PyTorch reference's; the noise is rng_normal of common.h (logf, cospif).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common.h"
#include "rf_step/rf_step.h"

namespace mcgr {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("rf_step_cuda: ") + what + ": " + cudaGetErrorString(err));
}

// One element: the math of rf_step.h, equal to rf_start_ref / rf_step_ref.
template <int MODE>
__device__ __forceinline__ float rf_element(float x, float v, float w, float a, float b, uint32_t seed, uint32_t counter) {
  if (MODE == RF_START) return x * a + rng_normal(seed, counter) * b;
  if (MODE == RF_EULER) return x + v * a;
  return x + (w + v) * a;
}

template <int MODE>
__global__ void rf_step_scalar_kernel(float* out, const float* x, const float* v, const float* w, int64_t n,
                                      RfStepParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float vi = MODE == RF_START ? 0.0f : v[i];
    const float wi = MODE == RF_HEUN ? w[i] : 0.0f;
    out[i] = rf_element<MODE>(x[i], vi, wi, p.a, p.b, p.seed, p.offset + static_cast<uint32_t>(i));
  }
}

template <int MODE>
__global__ void rf_step_vec4_kernel(float4* out, const float4* x, const float4* v, const float4* w, int64_t n4,
                                    RfStepParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n4; k += stride) {
    const float4 xk = x[k];
    const float4 vk = MODE == RF_START ? make_float4(0.f, 0.f, 0.f, 0.f) : v[k];
    const float4 wk = MODE == RF_HEUN ? w[k] : make_float4(0.f, 0.f, 0.f, 0.f);
    const uint32_t c = p.offset + static_cast<uint32_t>(4 * k);
    float4 r;
    r.x = rf_element<MODE>(xk.x, vk.x, wk.x, p.a, p.b, p.seed, c);
    r.y = rf_element<MODE>(xk.y, vk.y, wk.y, p.a, p.b, p.seed, c + 1u);
    r.z = rf_element<MODE>(xk.z, vk.z, wk.z, p.a, p.b, p.seed, c + 2u);
    r.w = rf_element<MODE>(xk.w, vk.w, wk.w, p.a, p.b, p.seed, c + 3u);
    out[k] = r;
  }
}

constexpr int kThreads = 256;

int grid_for(int64_t items) {
  // Enough blocks to fill any current GPU several times over; the grid-stride loop does the rest.
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

template <int MODE>
void launch(float* out, const float* x, const float* v, const float* w, int64_t n, const RfStepParams& p,
            cudaStream_t stream) {
  auto aligned = [](const void* ptr) { return ptr == nullptr || reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  if (aligned(out) && aligned(x) && aligned(v) && aligned(w) && n >= 4) {
    const int64_t n4 = n / 4;
    rf_step_vec4_kernel<MODE><<<grid_for(n4), kThreads, 0, stream>>>(
        reinterpret_cast<float4*>(out), reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(v),
        reinterpret_cast<const float4*>(w), n4, p);
    check_cuda(cudaGetLastError(), "vec4 kernel launch");
    const int64_t done = 4 * n4;
    if (done < n) {
      RfStepParams tail = p;
      tail.offset = p.offset + static_cast<uint32_t>(done);
      rf_step_scalar_kernel<MODE><<<1, kThreads, 0, stream>>>(out + done, x + done, v ? v + done : nullptr,
                                                             w ? w + done : nullptr, n - done, tail);
      check_cuda(cudaGetLastError(), "tail kernel launch");
    }
    return;
  }
  rf_step_scalar_kernel<MODE><<<grid_for(n), kThreads, 0, stream>>>(out, x, v, w, n, p);
  check_cuda(cudaGetLastError(), "scalar kernel launch");
}

}  // namespace

void rf_step_cuda(std::uintptr_t out_p, std::uintptr_t x_p, std::uintptr_t v_p, std::uintptr_t w_p, int64_t n,
                  const RfStepParams& p, std::uintptr_t stream_p) {
  MCGR_CHECK(n >= 0, "rf_step_cuda: n must be >= 0, got ", n);
  MCGR_CHECK(p.mode == RF_START || p.mode == RF_EULER || p.mode == RF_HEUN,
             "rf_step_cuda: mode must be 0 (start), 1 (euler) or 2 (heun), got ", p.mode);
  if (n == 0) return;
  MCGR_CHECK(out_p != 0 && x_p != 0, "rf_step_cuda: out and x must be non-null");
  MCGR_CHECK(p.mode == RF_START || v_p != 0, "rf_step_cuda: v must be non-null for euler and heun");
  MCGR_CHECK(p.mode != RF_HEUN || w_p != 0, "rf_step_cuda: v_prev (w) must be non-null for heun");
  MCGR_CHECK(out_p % 4 == 0 && x_p % 4 == 0 && v_p % 4 == 0 && w_p % 4 == 0,
             "rf_step_cuda: pointers must be float-aligned");
  MCGR_CHECK(std::isfinite(p.a) && std::isfinite(p.b), "rf_step_cuda: coefficients must be finite");
  float* out = reinterpret_cast<float*>(out_p);
  const float* x = reinterpret_cast<const float*>(x_p);
  const float* v = p.mode == RF_START ? nullptr : reinterpret_cast<const float*>(v_p);
  const float* w = p.mode == RF_HEUN ? reinterpret_cast<const float*>(w_p) : nullptr;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_p);
  if (p.mode == RF_START) {
    launch<RF_START>(out, x, v, w, n, p, stream);
  } else if (p.mode == RF_EULER) {
    launch<RF_EULER>(out, x, v, w, n, p, stream);
  } else {
    launch<RF_HEUN>(out, x, v, w, n, p, stream);
  }
}

}  // namespace mcgr
