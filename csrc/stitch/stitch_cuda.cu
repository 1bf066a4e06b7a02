// stitch on CUDA. The math (the reference is stitch_ref in mcgr/ops/stitch.py):
//   canvas[b, y, x] = sum_p w[y - y0_p, x - x0_p] tiles[b, p, y - y0_p, x - x0_p] / sum_p w[...]
// over the tiles p covering (y, x), 0 where none does. One CTA owns a kBX x kBY block of one canvas:
// it scans the origins in chunks, compacts the tiles that overlap its block into shared memory (in
// index order, so the sum order is fixed), and every thread accumulates numerator and denominator of
// its pixels in registers, then writes each pixel once. Tiles are read once (coalesced along x), the
// canvas written once; no atomics, no weight-sum canvas, no host-side lookup table.
#include <cuda_runtime.h>

#include <algorithm>

#include <stdexcept>
#include <string>

#include "common.h"
#include "stitch/stitch.h"

namespace mcgr {
namespace {

constexpr int kBX = 64;                     // block width (px): two warps along a row
constexpr int kThreads = 256;               // = chunk of origins scanned per step
constexpr int kRowsPerPass = kThreads / kBX;  // 4 rows per pass
constexpr int kPix = 8;                     // pixels per thread (rows)
constexpr int kBY = kRowsPerPass * kPix;    // block height (px) = 32

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("stitch: ") + what + ": " + cudaGetErrorString(e));
}

__global__ void __launch_bounds__(kThreads) _stitch_kernel(const float* __restrict__ tiles,
                                                           const int64_t* __restrict__ origins,
                                                           const float* __restrict__ weights,
                                                           float* __restrict__ out, int64_t P, int64_t T, int64_t H,
                                                           int64_t W) {
  __shared__ int s_tile[kThreads];
  __shared__ int s_y0[kThreads];
  __shared__ int s_x0[kThreads];
  __shared__ int s_warp[kThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t bx0 = int64_t(blockIdx.x) * kBX, by0 = int64_t(blockIdx.y) * kBY, b = blockIdx.z;
  const int64_t x = bx0 + (tid % kBX);
  const int64_t yb = by0 + (tid / kBX);
  float num[kPix], den[kPix];
#pragma unroll
  for (int k = 0; k < kPix; ++k) num[k] = den[k] = 0.0f;

  for (int64_t base = 0; base < P; base += kThreads) {
    const int64_t p = base + tid;
    int64_t y0 = 0, x0 = 0;
    bool hit = false;
    if (p < P) {
      y0 = origins[2 * p];
      x0 = origins[2 * p + 1];
      hit = y0 < by0 + kBY && y0 + T > by0 && x0 < bx0 + kBX && x0 + T > bx0;
    }
    const unsigned m = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) s_warp[warp] = __popc(m);
    __syncthreads();
    int offset = 0, n = 0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) {
      offset += w < warp ? s_warp[w] : 0;
      n += s_warp[w];
    }
    if (hit) {
      const int slot = offset + __popc(m & ((1u << lane) - 1u));
      s_tile[slot] = int(p - base);
      s_y0[slot] = int(y0);
      s_x0[slot] = int(x0);
    }
    __syncthreads();
    for (int k = 0; k < n; ++k) {
      const int64_t t = base + s_tile[k];
      const int64_t ty0 = s_y0[k], j = x - s_x0[k];
      if (j < 0 || j >= T || x >= W) continue;
      const float* trow = tiles + ((b * P + t) * T) * T + j;
      const float* wrow = weights + j;
#pragma unroll
      for (int r = 0; r < kPix; ++r) {
        const int64_t y = yb + r * kRowsPerPass;
        const int64_t i = y - ty0;
        if (i >= 0 && i < T && y < H) {
          const float w = __ldg(wrow + i * T);
          num[r] = __fadd_rn(num[r], __fmul_rn(w, __ldg(trow + i * T)));
          den[r] = __fadd_rn(den[r], w);
        }
      }
    }
    __syncthreads();  // s_* are rewritten by the next chunk
  }
  if (x < W) {
#pragma unroll
    for (int r = 0; r < kPix; ++r) {
      const int64_t y = yb + r * kRowsPerPass;
      if (y < H) out[(b * H + y) * W + x] = den[r] > 0.0f ? __fdiv_rn(num[r], den[r]) : 0.0f;
    }
  }
}

// tiles[b, p, i, j] = canvas[b, y0_p + i, x0_p + j], 0 outside the canvas (gather_tiles_ref).
// A block copies whole tile rows (coalesced along x); the row's indices are decoded once per row.
__global__ void _gather_tiles_kernel(const float* __restrict__ canvas, const int64_t* __restrict__ origins,
                                     float* __restrict__ tiles, int64_t B, int64_t P, int64_t T, int64_t H,
                                     int64_t W) {
  const int64_t rows = B * P * T;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t i = r % T, p = (r / T) % P, b = r / (T * P);
    const int64_t y = origins[2 * p] + i, x0 = origins[2 * p + 1];
    const float* src = canvas + (b * H + y) * W + x0;
    float* dst = tiles + r * T;
    for (int64_t j = threadIdx.x; j < T; j += blockDim.x) dst[j] = (y < H && x0 + j < W) ? __ldg(src + j) : 0.0f;
  }
}

}  // namespace

void stitch_cuda(std::uintptr_t tiles, std::uintptr_t origins, std::uintptr_t weights, std::uintptr_t out,
                 const StitchParams& p, std::uintptr_t stream) {
  stitch_check(p, tiles, origins, out);
  MCGR_CHECK(weights != 0, "stitch: null weights pointer");
  MCGR_CHECK(p.height < (int64_t(1) << 31) && p.width < (int64_t(1) << 31), "stitch: canvas too large");
  MCGR_CHECK(p.batch <= 65535, "stitch_cuda: batch must be <= 65535, got ", p.batch);
  const dim3 grid(unsigned((p.width + kBX - 1) / kBX), unsigned((p.height + kBY - 1) / kBY), unsigned(p.batch));
  MCGR_CHECK(grid.y <= 65535, "stitch_cuda: canvas height ", p.height, " is too large");
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  _stitch_kernel<<<grid, kThreads, 0, s>>>(reinterpret_cast<const float*>(tiles),
                                           reinterpret_cast<const int64_t*>(origins),
                                           reinterpret_cast<const float*>(weights), reinterpret_cast<float*>(out),
                                           p.num_tiles, p.tile, p.height, p.width);
  cuda_check(cudaGetLastError(), "_stitch_kernel launch");
}

void gather_tiles_cuda(std::uintptr_t canvas, std::uintptr_t origins, std::uintptr_t tiles, const StitchParams& p,
                       std::uintptr_t stream) {
  stitch_check(p, canvas, origins, tiles);
  const int64_t rows = p.batch * p.num_tiles * p.tile;
  const int threads = int(std::min<int64_t>(256, (p.tile + 31) / 32 * 32));
  const int64_t blocks = std::min<int64_t>(rows, int64_t(1) << 20);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  _gather_tiles_kernel<<<unsigned(blocks), threads, 0, s>>>(reinterpret_cast<const float*>(canvas),
                                                            reinterpret_cast<const int64_t*>(origins),
                                                            reinterpret_cast<float*>(tiles), p.batch, p.num_tiles,
                                                            p.tile, p.height, p.width);
  cuda_check(cudaGetLastError(), "_gather_tiles_kernel launch");
}

}  // namespace mcgr
