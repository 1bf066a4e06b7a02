// refine on CUDA. The math (the reference is refine_ref in mcgr/ops/refine.py), per plane:
//   w_ij = exp(-(y_i - y_j)^2 / (2 sigma_e^2)) over 4-neighbour pairs inside the plane,
//   z_i <- z_i - eta [sigmoid(z_i) - q_i + lambda_a (z_i - z0_i)
//                     + lambda_e sum_{j in N(i)} w_ij (z_i - z_j) + lambda_o (z_i - zbar_i)],
// every neighbour taken from the previous step.
//
// One CTA owns a kTile x kTile block of one plane and loads it with a halo of S pixels (S <= kMaxSteps
// steps fused per launch) into shared memory: z, q, z0, zbar once, y only to compute the edge weights
// once per launch. Step s updates the region shrunk by s pixels on each side (ping-pong between two
// shared buffers), so after S steps the owned block is exact and is written once. Pixels outside the
// plane are zeros joined by zero weights, so they never reach a pixel inside it. More steps than
// kMaxSteps take several launches that ping-pong between out and a scratch buffer (a launch never
// reads the buffer it writes: its neighbours' halos still need the previous values).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "refine/refine.h"

namespace mcgr {
namespace {

constexpr int kTile = 32;                       // owned block: kTile x kTile pixels
constexpr int kMaxSteps = 4;                    // steps fused per launch (halo width)
constexpr int kRegion = kTile + 2 * kMaxSteps;  // shared row stride
constexpr int kThreads = 256;

struct Strides {
  long long sn[6], sh[6];  // z (source), q, z0, y, zbar, dst
};

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("refine: ") + what + ": " + cudaGetErrorString(e));
}

__device__ __forceinline__ int nonfinite(float v) { return !(fabsf(v) <= 3.402823466e38f); }

template <bool kZbar>
__global__ void __launch_bounds__(kThreads) _refine_kernel(const float* __restrict__ src, const float* __restrict__ q,
                                                           const float* __restrict__ z0, const float* __restrict__ y,
                                                           const float* __restrict__ zb, float* __restrict__ dst,
                                                           Strides st, int N, int H, int W, RefineParams p, int S,
                                                           int* __restrict__ flags) {
  __shared__ float s_a[kRegion * kRegion];
  __shared__ float s_b[kRegion * kRegion];
  __shared__ float s_q[kRegion * kRegion];
  __shared__ float s_z0[kRegion * kRegion];
  __shared__ float s_zb[kZbar ? kRegion * kRegion : 1];
  __shared__ float s_wv[kRegion * kRegion];  // weight of the pair (i, j)-(i + 1, j); 0 where it does not exist
  __shared__ float s_wh[kRegion * kRegion];  // weight of the pair (i, j)-(i, j + 1)
  const int tid = threadIdx.x;
  const int RH = kTile + 2 * S, RW = kTile + 2 * S;
  const int r_base = int(blockIdx.y) * kTile - S, c_base = int(blockIdx.x) * kTile - S;
  int bits = 0;
  for (int n = blockIdx.z; n < N; n += gridDim.z) {
    const long long nn = n;
    for (int idx = tid; idx < RH * RW; idx += kThreads) {
      const int i = idx / RW, j = idx - (idx / RW) * RW, o = i * kRegion + j;
      const int r = r_base + i, c = c_base + j;
      if (r >= 0 && r < H && c >= 0 && c < W) {
        const float vz = src[nn * st.sn[0] + r * st.sh[0] + c];
        const float vq = q[nn * st.sn[1] + r * st.sh[1] + c];
        const float vz0 = z0[nn * st.sn[2] + r * st.sh[2] + c];
        const float vy = y[nn * st.sn[3] + r * st.sh[3] + c];
        const float vzb = kZbar ? zb[nn * st.sn[4] + r * st.sh[4] + c] : 0.0f;
        s_a[o] = vz;
        s_q[o] = vq;
        s_z0[o] = vz0;
        s_b[o] = vy;  // s_b holds y until the weights are made
        if (kZbar) s_zb[o] = vzb;
        if (flags != nullptr && i >= S && i < S + kTile && j >= S && j < S + kTile) {
          bits |= (nonfinite(vz) ? kRefineZ : 0) | (nonfinite(vq) ? kRefineQ : 0) | (nonfinite(vz0) ? kRefineZ0 : 0) |
                  (nonfinite(vy) ? kRefineY : 0) | (kZbar && nonfinite(vzb) ? kRefineZbar : 0);
        }
      } else {
        s_a[o] = 0.0f;
        s_q[o] = 0.0f;
        s_z0[o] = 0.0f;
        s_b[o] = 0.0f;
        if (kZbar) s_zb[o] = 0.0f;
      }
    }
    __syncthreads();
    for (int idx = tid; idx < RH * RW; idx += kThreads) {
      const int i = idx / RW, j = idx - (idx / RW) * RW, o = i * kRegion + j;
      const int r = r_base + i, c = c_base + j;
      const bool in = r >= 0 && r < H && c >= 0 && c < W;
      float wv = 0.0f, wh = 0.0f;
      if (in && i + 1 < RH && r + 1 < H) {
        const float d = s_b[o + kRegion] - s_b[o];
        wv = expf(-(d * d) * p.inv_two_sigma2);
      }
      if (in && j + 1 < RW && c + 1 < W) {
        const float d = s_b[o + 1] - s_b[o];
        wh = expf(-(d * d) * p.inv_two_sigma2);
      }
      s_wv[o] = wv;
      s_wh[o] = wh;
    }
    __syncthreads();
    float* cur = s_a;
    float* nxt = s_b;
    for (int s = 1; s <= S; ++s) {
      const int ww = RW - 2 * s, cnt = (RH - 2 * s) * ww;
      for (int idx = tid; idx < cnt; idx += kThreads) {
        const int i = s + idx / ww, j = s + (idx - (idx / ww) * ww), o = i * kRegion + j;
        const float z = cur[o];
        const float fd = s_wv[o] * (z - cur[o + kRegion]);
        const float fu = s_wv[o - kRegion] * (cur[o - kRegion] - z);
        const float fr = s_wh[o] * (z - cur[o + 1]);
        const float fl = s_wh[o - 1] * (cur[o - 1] - z);
        const float lap = ((fd - fu) + fr) - fl;
        const float sg = 1.0f / (1.0f + expf(-z));
        float g = (sg - s_q[o]) + p.lambda_a * (z - s_z0[o]);
        g = g + p.lambda_e * lap;
        if (kZbar) g = g + p.lambda_o * (z - s_zb[o]);
        const float zn = z - p.eta * g;
        if (s == S) {
          const int r = r_base + i, c = c_base + j;
          if (r < H && c < W) dst[nn * st.sn[5] + r * st.sh[5] + c] = zn;
        } else {
          nxt[o] = zn;
        }
      }
      __syncthreads();
      float* t = cur;
      cur = nxt;
      nxt = t;
    }
  }
  if (bits != 0) atomicOr(flags, bits);
}

void launch(const float* src, const float* q, const float* z0, const float* y, const float* zb, float* dst,
            const Strides& st, int N, int H, int W, const RefineParams& p, int S, int* flags, cudaStream_t stream) {
  const dim3 grid((W + kTile - 1) / kTile, (H + kTile - 1) / kTile, N < 65535 ? N : 65535);
  if (zb != nullptr)
    _refine_kernel<true><<<grid, kThreads, 0, stream>>>(src, q, z0, y, zb, dst, st, N, H, W, p, S, flags);
  else
    _refine_kernel<false><<<grid, kThreads, 0, stream>>>(src, q, z0, y, zb, dst, st, N, H, W, p, S, flags);
  cuda_check(cudaGetLastError(), "kernel launch");
}

}  // namespace

void refine_cuda(std::uintptr_t z, std::uintptr_t q, std::uintptr_t z0, std::uintptr_t y, std::uintptr_t zbar,
                 std::uintptr_t out, std::uintptr_t scratch, std::uintptr_t flags,
                 const std::vector<int64_t>& strides, int64_t n, int64_t h, int64_t w, const RefineParams& p,
                 int64_t steps, std::uintptr_t stream) {
  MCGR_CHECK(z != 0 && q != 0 && z0 != 0 && y != 0 && out != 0 && flags != 0, "refine: null data pointer");
  MCGR_CHECK(n >= 1 && h >= 1 && w >= 1, "refine: planes must be non-empty, got ", n, " x ", h, " x ", w);
  MCGR_CHECK(n <= (int64_t(1) << 30) && h <= int64_t(65535) * kTile && w <= (int64_t(1) << 30),
             "refine: ", n, " x ", h, " x ", w, " is too large for the CUDA grid");
  MCGR_CHECK(steps >= 1, "refine: steps must be >= 1, got ", steps);
  MCGR_CHECK(strides.size() == 12, "refine: strides must hold 12 values, got ", strides.size());
  for (size_t i = 0; i < 12; ++i) MCGR_CHECK(strides[i] >= 0, "refine: negative stride ", strides[i]);
  const int64_t launches = (steps + kMaxSteps - 1) / kMaxSteps;
  const bool in_place = out == z;
  MCGR_CHECK(scratch != 0 || (launches == 1 && !in_place),
             "refine: a scratch buffer is needed for more than ", kMaxSteps, " steps or in place");
  Strides st;
  for (int i = 0; i < 6; ++i) {
    st.sn[i] = strides[2 * i];
    st.sh[i] = strides[2 * i + 1];
  }
  Strides st_out = st;  // launches after the first read a buffer laid out like out
  st_out.sn[0] = st.sn[5];
  st_out.sh[0] = st.sh[5];
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  float* A = reinterpret_cast<float*>(out);
  float* B = reinterpret_cast<float*>(scratch);
  // the last launch writes out; before it the targets alternate, so no launch writes what it reads
  std::vector<float*> dsts(size_t(launches), nullptr);
  for (int64_t i = launches - 1, k = 0; i >= 0; --i, ++k) dsts[size_t(i)] = (k % 2 == 0) ? A : B;
  const bool copy_back = in_place && dsts[0] == A;
  if (copy_back)  // in place with an odd launch count: end in scratch, then copy into out
    for (int64_t i = 0; i < launches; ++i) dsts[size_t(i)] = dsts[size_t(i)] == A ? B : A;
  const float* src = reinterpret_cast<const float*>(z);
  for (int64_t i = 0; i < launches; ++i) {
    const int S = int(steps / launches + (i < steps % launches ? 1 : 0));
    launch(src, reinterpret_cast<const float*>(q), reinterpret_cast<const float*>(z0),
           reinterpret_cast<const float*>(y), reinterpret_cast<const float*>(zbar), dsts[size_t(i)], i == 0 ? st : st_out,
           int(n), int(h), int(w), p, S, i == 0 ? reinterpret_cast<int*>(flags) : nullptr, s);
    src = dsts[size_t(i)];
  }
  if (copy_back) {
    // scratch shares out's layout (the launcher allocates it with out's strides); rows only, so
    // memory between out's rows (a view into a larger array) is left alone
    const size_t pitch = size_t(st.sh[5]) * sizeof(float), row = size_t(w) * sizeof(float);
    if (n == 1 || st.sn[5] == h * st.sh[5]) {
      cuda_check(cudaMemcpy2DAsync(A, pitch, B, pitch, row, size_t(n * h), cudaMemcpyDeviceToDevice, s), "copy back");
    } else {
      for (int64_t i = 0; i < n; ++i)
        cuda_check(cudaMemcpy2DAsync(A + i * st.sn[5], pitch, B + i * st.sn[5], pitch, row, size_t(h),
                                     cudaMemcpyDeviceToDevice, s),
                   "copy back");
    }
  }
}

}  // namespace mcgr
