// CUDA fused injection kernel. The specification is mcgr/ops/inject.py inject_ref; the algorithm is
// the CPU kernel's (csrc/inject/inject_cpu.cpp):
//   prepass (one block per primitive): window, discrete volume sum of area-averaged chords -> scale;
//   binning: (tile, primitive) keys written at per-primitive offsets, radix-sorted (stable, so each
//   tile's list is in primitive order and sums are deterministic), tile starts by binary search;
//   one block per 16x16 output tile: A on tile + PSF halo in shared memory from the tile's primitives,
//   separable blur, L = (G_l * B) / (G_l * 1) over the bounding box of nonzero A_b only, then
//   I = clamp(B + c (1 - L)^gamma (1 - B)(1 - exp(-A_b)) [+ noise sqrt(I) n], 0, 1) and
//   M = [popcount(OR of inside-sample bits) * 2 >= S^2] | centre pixels.
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <stdexcept>
#include <string>
#include <vector>

#include "inject/inject.h"

namespace mcgr {
namespace {

#define MCGR_CUDA_CHECK(call)                                                                              \
  do {                                                                                                     \
    cudaError_t err_ = (call);                                                                             \
    if (err_ != cudaSuccess)                                                                               \
      throw std::runtime_error(std::string("inject_cuda: ") + #call + " failed: " + cudaGetErrorString(err_)); \
  } while (0)

#define MCGR_CUDA_LAUNCHED(name)                                                                           \
  do {                                                                                                     \
    cudaError_t err_ = cudaGetLastError();                                                                 \
    if (err_ != cudaSuccess)                                                                               \
      throw std::runtime_error(std::string("inject_cuda: launch of ") + name + " failed: " + cudaGetErrorString(err_)); \
  } while (0)

constexpr int kTile = 16;
constexpr int kThreads = kTile * kTile;
constexpr int kPrepassThreads = 128;
constexpr int kHaloSide = kTile + 2 * kInjectMaxPsfRadius;
// One shared buffer holds A on the haloed tile, then the column pass of the local mean
// (at most kTile rows of kTile + 2 * Rl columns).
constexpr int kShared = kHaloSide * kHaloSide;
static_assert(kShared >= kTile * (kTile + 2 * kInjectMaxLocalRadius), "shared buffer too small for the local mean");
static_assert(kShared * 4 + kTile * kHaloSide * 4 + kThreads * 9 + 64 <= 48 * 1024, "static shared memory over 48 KiB");
static_assert(kInjectMaxSupersample * kInjectMaxSupersample <= 64, "coverage bits must fit a uint64");

struct Taps {
  float psf[2 * kInjectMaxPsfRadius + 1];
  float local[2 * kInjectMaxLocalRadius + 1];
};

struct PrimDev {
  InjectPrim g;
  int active;
  int miss;
  float scale;    // val = (mu * chord) * scale
  float deposit;  // mu * V at the centre pixel when no sample hits
  int ty0, ty1, tx0, tx1;
};

struct KernelArgs {
  const float* bg;
  const float* calcs;
  float* out;
  uint8_t* mask;
  int B, H, W, N;
  int nty, ntx;
  int S, Rp, Rl;
  float mu, contrast, gamma, noise;
  uint32_t seed;
};

__global__ void inject_prepass_kernel(KernelArgs a, PrimDev* prims, uint32_t* counts) {
  const int n = blockIdx.x;
  __shared__ double red[kPrepassThreads];
  const float* row = a.calcs + static_cast<int64_t>(n) * kInjectCalcFields;
  const bool valid = inject_row_valid(row, a.B);
  InjectPrim g;
  if (valid) g = inject_prim(row);
  // window clipped to the image plus the PSF halo; nothing outside it can reach the output
  const bool active = valid && g.i0 < a.H + a.Rp && g.i0 + g.nh > -a.Rp && g.j0 < a.W + a.Rp && g.j0 + g.nw > -a.Rp;
  double s = 0.0;
  if (active) {
    const int npx = g.nh * g.nw;
    for (int k = threadIdx.x; k < npx; k += blockDim.x) {
      uint64_t bits;
      s += inject_pixel_chord(g, g.i0 + k / g.nw, g.j0 + k % g.nw, a.S, &bits);
    }
  }
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = kPrepassThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  PrimDev p;
  p.g = g;
  p.active = active;
  p.miss = 0;
  p.scale = 0.0f;
  p.deposit = 0.0f;
  p.ty0 = p.tx0 = 0;
  p.ty1 = p.tx1 = -1;
  uint32_t cnt = 0;
  if (active) {
    const float disc = static_cast<float>(red[0]);
    if (disc > 0.0f) {
      p.scale = g.vol / disc;
    } else {
      p.miss = 1;
      p.deposit = a.mu * g.vol;
    }
    const int si0 = max(g.i0, -a.Rp), si1 = min(g.i0 + g.nh, a.H + a.Rp);
    const int sj0 = max(g.j0, -a.Rp), sj1 = min(g.j0 + g.nw, a.W + a.Rp);
    // floor division of possibly negative numbers by kTile
    auto fdiv = [](int x) { return x >= 0 ? x / kTile : -((-x + kTile - 1) / kTile); };
    p.ty0 = max(0, fdiv(si0 - a.Rp));
    p.ty1 = min(a.nty - 1, fdiv(si1 - 1 + a.Rp));
    p.tx0 = max(0, fdiv(sj0 - a.Rp));
    p.tx1 = min(a.ntx - 1, fdiv(sj1 - 1 + a.Rp));
    if (p.ty1 >= p.ty0 && p.tx1 >= p.tx0) cnt = static_cast<uint32_t>((p.ty1 - p.ty0 + 1) * (p.tx1 - p.tx0 + 1));
  }
  prims[n] = p;
  counts[n] = cnt;
}

// Key (tile << 32 | primitive) of every (tile, primitive) pair, primitive n's at offsets[n]...
__global__ void inject_fill_kernel(KernelArgs a, const PrimDev* prims, const uint32_t* offsets, uint64_t* keys) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= a.N) return;
  const PrimDev& p = prims[n];
  if (!p.active) return;
  uint32_t o = offsets[n];
  const uint64_t base = static_cast<uint64_t>(p.g.b) * a.nty * a.ntx;
  for (int ty = p.ty0; ty <= p.ty1; ++ty)
    for (int tx = p.tx0; tx <= p.tx1; ++tx)
      keys[o++] = ((base + static_cast<uint64_t>(ty) * a.ntx + tx) << 32) | static_cast<uint64_t>(n);
}

// start[t] = first index of sorted keys whose tile is >= t (t in [0, ntiles]).
__global__ void inject_tile_start_kernel(const uint64_t* keys, uint32_t total, int64_t ntiles, uint32_t* start) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t > ntiles) return;
  const uint64_t key = static_cast<uint64_t>(t) << 32;
  uint32_t lo = 0, hi = total;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < key) lo = mid + 1; else hi = mid;
  }
  start[t] = lo;
}

__device__ __forceinline__ float clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

__global__ void __launch_bounds__(kThreads) inject_tile_kernel(KernelArgs a, Taps taps, const PrimDev* prims,
                                                               const uint64_t* keys, const uint32_t* start) {
  __shared__ float sA[kShared];
  __shared__ float sV[kTile * kHaloSide];
  __shared__ uint64_t sBits[kThreads];
  __shared__ uint8_t sCentre[kThreads];
  __shared__ int sBox[4];

  const int64_t t = blockIdx.x;
  const int64_t per_image = static_cast<int64_t>(a.nty) * a.ntx;
  const int b = static_cast<int>(t / per_image);
  const int rem = static_cast<int>(t % per_image);
  const int R0 = (rem / a.ntx) * kTile, C0 = (rem % a.ntx) * kTile;
  const int th = min(kTile, a.H - R0), tw = min(kTile, a.W - C0);
  const int r = threadIdx.x / kTile, c = threadIdx.x % kTile;
  const bool own = r < th && c < tw;
  const int64_t plane = static_cast<int64_t>(a.H) * a.W;
  const float* bimg = a.bg + b * plane;
  const int64_t pix = static_cast<int64_t>(R0 + r) * a.W + (C0 + c);
  const uint32_t l0 = start[t], l1 = start[t + 1];
  const int SS = a.S * a.S;

  float Bv = own ? bimg[pix] : 0.0f;
  float value = Bv;
  bool m = false;
  bool touched = false;
  float Ab = 0.0f;

  if (l1 > l0) {
    const int hh = th + 2 * a.Rp, hw = tw + 2 * a.Rp;
    const int hr0 = R0 - a.Rp, hc0 = C0 - a.Rp;
    sBits[threadIdx.x] = 0;
    sCentre[threadIdx.x] = 0;
    if (threadIdx.x == 0) {
      sBox[0] = kTile; sBox[1] = -1; sBox[2] = kTile; sBox[3] = -1;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < hh * hw; k += kThreads) {
      const int gi = hr0 + k / hw, gj = hc0 + k % hw;
      const bool in_tile = gi >= R0 && gi < R0 + th && gj >= C0 && gj < C0 + tw;
      const int tk = (gi - R0) * kTile + (gj - C0);
      float acc = 0.0f;
      uint64_t bits = 0;
      bool centre = false;
      for (uint32_t e = l0; e < l1; ++e) {
        const PrimDev& p = prims[static_cast<uint32_t>(keys[e] & 0xffffffffu)];
        const InjectPrim& g = p.g;
        if (!p.miss) {
          if (gi >= g.i0 && gi < g.i0 + g.nh && gj >= g.j0 && gj < g.j0 + g.nw) {
            uint64_t pb;
            const float ch = inject_pixel_chord(g, gi, gj, a.S, &pb);
            const float val = (a.mu * ch) * p.scale;
            if (val != 0.0f) acc += val;
            bits |= pb;
          }
        } else if (gi == g.ci && gj == g.cj) {
          acc += p.deposit;
        }
        centre |= gi == g.ci && gj == g.cj;
      }
      sA[k] = acc;
      if (in_tile) {
        sBits[tk] = bits;
        sCentre[tk] = centre;
      }
    }
    __syncthreads();
    // separable PSF blur: rows of the haloed tile, then columns
    for (int k = threadIdx.x; k < th * hw; k += kThreads) {
      const int rr = k / hw, cc = k % hw;
      float v = 0.0f;
      for (int d = 0; d <= 2 * a.Rp; ++d) v += taps.psf[d] * sA[(rr + d) * hw + cc];
      sV[rr * hw + cc] = v;
    }
    __syncthreads();
    if (own) {
      for (int d = 0; d <= 2 * a.Rp; ++d) Ab += taps.psf[d] * sV[r * hw + c + d];
      m = (__popcll(sBits[threadIdx.x]) * 2 >= SS) || sCentre[threadIdx.x];
      if (Ab != 0.0f) {
        atomicMin(&sBox[0], r);
        atomicMax(&sBox[1], r);
        atomicMin(&sBox[2], c);
        atomicMax(&sBox[3], c);
      }
    }
    __syncthreads();
    const int r0 = sBox[0], r1 = sBox[1] + 1, c0 = sBox[2], c1 = sBox[3] + 1;
    if (r1 > r0) {
      // local mean over the bounding box: columns of G_l * B (zero-padded) into sA, then rows
      const int aw = (c1 - c0) + 2 * a.Rl;
      const int gc0 = C0 + c0 - a.Rl;
      for (int k = threadIdx.x; k < (r1 - r0) * aw; k += kThreads) {
        const int rr = k / aw, cc = k % aw;
        const int gi = R0 + r0 + rr, gj = gc0 + cc;
        float v = 0.0f;
        if (gj >= 0 && gj < a.W) {
          const int i_lo = max(0, gi - a.Rl), i_hi = min(a.H - 1, gi + a.Rl);
          for (int ii = i_lo; ii <= i_hi; ++ii) v += taps.local[ii - gi + a.Rl] * bimg[static_cast<int64_t>(ii) * a.W + gj];
        }
        sA[k] = v;
      }
      __syncthreads();
      if (own && r >= r0 && r < r1 && c >= c0 && c < c1) {
        float num = 0.0f;
        const float* rowp = sA + (r - r0) * aw + (c - c0);
        for (int d = 0; d <= 2 * a.Rl; ++d) num += taps.local[d] * rowp[d];
        const int gi = R0 + r, gj = C0 + c;
        float dv = 0.0f, dh = 0.0f;
        for (int d = max(-a.Rl, -gi); d <= min(a.Rl, a.H - 1 - gi); ++d) dv += taps.local[d + a.Rl];
        for (int d = max(-a.Rl, -gj); d <= min(a.Rl, a.W - 1 - gj); ++d) dh += taps.local[d + a.Rl];
        const float L = num / (dv * dh);
        const float mm = a.contrast * powf(fmaxf(1.0f - L, 0.0f), a.gamma);
        value = Bv + (mm * (1.0f - Bv)) * (1.0f - expf(-Ab));
        touched = true;
      }
    }
  }
  if (!own) return;
  if (a.noise > 0.0f) {
    const uint32_t counter = static_cast<uint32_t>(static_cast<uint64_t>(b) * static_cast<uint64_t>(plane) +
                                                   static_cast<uint64_t>(pix));
    value = clamp01(value + (a.noise * sqrtf(fmaxf(value, 0.0f))) * rng_normal(a.seed, counter));
  } else if (touched) {
    value = clamp01(value);
  }
  a.out[b * plane + pix] = value;
  a.mask[b * plane + pix] = m ? 1 : 0;
}

// Stream-ordered scratch, freed when the launcher returns or throws.
struct DeviceScratch {
  cudaStream_t stream;
  std::vector<void*> ptrs;
  explicit DeviceScratch(cudaStream_t s) : stream(s) {}
  template <typename T>
  T* alloc(size_t n) {
    void* p = nullptr;
    MCGR_CUDA_CHECK(cudaMallocAsync(&p, n ? n * sizeof(T) : 16, stream));
    ptrs.push_back(p);
    return static_cast<T*>(p);
  }
  ~DeviceScratch() {
    for (void* p : ptrs) cudaFreeAsync(p, stream);
  }
};

void check_device_pointer(uintptr_t ptr, const char* name) {
  cudaPointerAttributes attr;
  MCGR_CUDA_CHECK(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)));
  MCGR_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, "inject_cuda: ", name,
             " is not a device pointer");
}

}  // namespace

void inject_cuda(uintptr_t background, uintptr_t calcs, uintptr_t image, uintptr_t mask, int64_t B, int64_t H,
                 int64_t W, int64_t N, const InjectParams& params, uintptr_t stream_handle) {
  inject_check_args(background, calcs, image, mask, B, H, W, N, params);
  check_device_pointer(background, "background");
  check_device_pointer(image, "image");
  check_device_pointer(mask, "mask");
  if (N > 0) check_device_pointer(calcs, "calcs");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);

  KernelArgs a;
  a.bg = reinterpret_cast<const float*>(background);
  a.calcs = reinterpret_cast<const float*>(calcs);
  a.out = reinterpret_cast<float*>(image);
  a.mask = reinterpret_cast<uint8_t*>(mask);
  a.B = static_cast<int>(B);
  a.H = static_cast<int>(H);
  a.W = static_cast<int>(W);
  a.N = static_cast<int>(N);
  a.nty = static_cast<int>((H + kTile - 1) / kTile);
  a.ntx = static_cast<int>((W + kTile - 1) / kTile);
  a.S = params.supersample;
  a.Rp = inject_psf_radius(params.psf_sigma);
  a.Rl = inject_local_radius(params.local_sigma);
  a.mu = static_cast<float>(params.mu);
  a.contrast = static_cast<float>(params.contrast);
  a.gamma = static_cast<float>(params.gamma);
  a.noise = static_cast<float>(params.noise);
  a.seed = params.seed;
  MCGR_CHECK(a.Rp <= kInjectMaxPsfRadius && a.Rl <= kInjectMaxLocalRadius, "inject_cuda: filter radii too large");
  const int64_t ntiles = B * static_cast<int64_t>(a.nty) * a.ntx;
  MCGR_CHECK(ntiles < (int64_t(1) << 31) - 1, "inject_cuda: too many tiles (", ntiles, ")");
  MCGR_CHECK(B * H * W < (int64_t(1) << 40), "inject_cuda: image too large");

  Taps taps{};
  const std::vector<float> gp = inject_gaussian_taps(params.psf_sigma, a.Rp);
  const std::vector<float> gl = inject_gaussian_taps(params.local_sigma, a.Rl);
  std::copy(gp.begin(), gp.end(), taps.psf);
  std::copy(gl.begin(), gl.end(), taps.local);

  DeviceScratch scratch(stream);
  PrimDev* prims = scratch.alloc<PrimDev>(static_cast<size_t>(N));
  uint32_t* counts = scratch.alloc<uint32_t>(static_cast<size_t>(N) + 1);
  uint32_t* offsets = scratch.alloc<uint32_t>(static_cast<size_t>(N) + 1);
  uint32_t* start = scratch.alloc<uint32_t>(static_cast<size_t>(ntiles) + 1);
  uint32_t total = 0;
  uint64_t* sorted = nullptr;
  if (N > 0) {
    inject_prepass_kernel<<<static_cast<unsigned>(N), kPrepassThreads, 0, stream>>>(a, prims, counts);
    MCGR_CUDA_LAUNCHED("inject_prepass_kernel");
    MCGR_CUDA_CHECK(cudaMemsetAsync(counts + N, 0, sizeof(uint32_t), stream));
    size_t temp_bytes = 0;
    MCGR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, counts, offsets, static_cast<int>(N + 1), stream));
    void* temp = scratch.alloc<uint8_t>(temp_bytes);
    MCGR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, counts, offsets, static_cast<int>(N + 1), stream));
    // the list length sizes the sort: one small copy back (the only host synchronisation)
    MCGR_CUDA_CHECK(cudaMemcpyAsync(&total, offsets + N, sizeof(uint32_t), cudaMemcpyDeviceToHost, stream));
    MCGR_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  if (total > 0) {
    uint64_t* keys = scratch.alloc<uint64_t>(total);
    sorted = scratch.alloc<uint64_t>(total);
    inject_fill_kernel<<<static_cast<unsigned>((N + 255) / 256), 256, 0, stream>>>(a, prims, offsets, keys);
    MCGR_CUDA_LAUNCHED("inject_fill_kernel");
    int end_bit = 32;
    while (end_bit < 64 && (uint64_t(1) << (end_bit - 32)) <= static_cast<uint64_t>(ntiles)) ++end_bit;
    size_t temp_bytes = 0;
    MCGR_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, keys, sorted, static_cast<int>(total), 0,
                                                   end_bit, stream));
    void* temp = scratch.alloc<uint8_t>(temp_bytes);
    MCGR_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp, temp_bytes, keys, sorted, static_cast<int>(total), 0, end_bit,
                                                   stream));
    inject_tile_start_kernel<<<static_cast<unsigned>((ntiles + 1 + 255) / 256), 256, 0, stream>>>(sorted, total, ntiles,
                                                                                                 start);
    MCGR_CUDA_LAUNCHED("inject_tile_start_kernel");
  } else {
    MCGR_CUDA_CHECK(cudaMemsetAsync(start, 0, sizeof(uint32_t) * (static_cast<size_t>(ntiles) + 1), stream));
    sorted = scratch.alloc<uint64_t>(1);
  }
  inject_tile_kernel<<<static_cast<unsigned>(ntiles), kThreads, 0, stream>>>(a, taps, prims, sorted, start);
  MCGR_CUDA_LAUNCHED("inject_tile_kernel");
}

}  // namespace mcgr
