// refine on the CPU. The math (the reference is refine_ref in mcgr/ops/refine.py), per plane:
//   w_ij = exp(-(y_i - y_j)^2 / (2 sigma_e^2)) over 4-neighbour pairs inside the plane,
//   z_i <- z_i - eta [sigmoid(z_i) - q_i + lambda_a (z_i - z0_i)
//                     + lambda_e sum_{j in N(i)} w_ij (z_i - z_j) + lambda_o (z_i - zbar_i)],
// every neighbour taken from the previous step.
//
// Temporal blocking: a pass runs up to kStepsPerPass steps over a block of rows with one read of
// the inputs and one write of out. Rows stream top to bottom; at row t step 1 produces row t,
// step 2 row t - 1, ..., step K row t - K + 1, each step keeping the last three rows of its
// predecessor in a ring (L1/L2-resident), so intermediate steps never touch memory. A block
// recomputes K - k rows of step k beyond each of its edges (its halo), so blocks are independent.
// The edge weights are computed once per row and pass, into a ring of K + 2 rows shared by all steps.
// In place (out == z) the rows a step still needs are first copied: the block's own rows into a
// three-row ring just before they are read, the halo rows other blocks own into a snapshot taken
// before any block writes.
#include "refine/refine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef MCGR_WITH_OPENMP
#include <omp.h>
#endif

#include "common.h"

// The loops are plain float arithmetic that GCC vectorises; clones for AVX-512 and AVX2 are picked
// at load time (ifunc), so the build stays portable without -march flags. No code here reads the
// floating-point exception flags, so compares need not be kept as trapping branches (with them GCC
// cannot if-convert the clamps in exp_approx and leaves the loops scalar below AVX-512).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MCGR_VEC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MCGR_VEC_CLONES
#endif

namespace mcgr {
namespace {

constexpr int kStepsPerPass = 8;

// exp(x) to ~2 ulp (Cephes expf polynomial), branch-free so that it vectorises; NaN propagates.
// n = round(x / ln 2) by the 1.5 * 2^23 trick (no floor call, no float-to-int conversion). Outside
// [-87, 88] the result is 0 or inf, as float32 exp rounds there (near enough: exp(-87) = 1.6e-38),
// so the kernel never makes denormals and the limits of the sigmoid are exact.
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline float exp_approx(float x0) {
  float x = x0 > 88.0f ? 88.0f : x0;  // NaN passes both clamps
  x = x < -87.0f ? -87.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const float t = x * 1.44269504088896341f + magic;
  const float fx = t - magic;
  int32_t tb;
  std::memcpy(&tb, &t, sizeof(tb));
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (tb - 0x4B400000 + 127) << 23;  // 0x4B400000: the bits of `magic`
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = p * scale;
  return x0 < -87.0f ? 0.0f : (x0 > 88.0f ? __builtin_inff() : e);
}

// Vertical weights between rows a and b (wv) and horizontal weights within row a (wh, w - 1 pairs).
MCGR_VEC_CLONES void weights_rows(const float* __restrict ya, const float* __restrict yb, float* __restrict wv,
                                  float* __restrict wh, int64_t w, float k) {
  if (yb != nullptr) {
    for (int64_t c = 0; c < w; ++c) {
      const float d = yb[c] - ya[c];
      wv[c] = exp_approx(-(d * d) * k);
    }
  }
  for (int64_t c = 0; c + 1 < w; ++c) {
    const float d = ya[c + 1] - ya[c];
    wh[c] = exp_approx(-(d * d) * k);
  }
}

// One step for one row. zu, zc, zd: the previous step's rows above, at and below (zu/zd = zc with
// a zero weight row where the neighbour does not exist). fh: scratch of w + 1 floats.
template <bool kZbar>
MCGR_VEC_CLONES void step_row(const float* zu, const float* zc, const float* zd, const float* wvu, const float* wvd,
                              const float* wh, const float* q, const float* z0, const float* zb,
                              float* __restrict fh, float* __restrict out, int64_t w, RefineParams p) {
  // fh[c + 1] = w (z_c - z_{c+1}): the flux of pair (c, c + 1); fh[0] = fh[w] = 0 (no pair)
  fh[0] = 0.0f;
  fh[w] = 0.0f;
  for (int64_t c = 0; c + 1 < w; ++c) fh[c + 1] = wh[c] * (zc[c] - zc[c + 1]);
  const float la = p.lambda_a, le = p.lambda_e, lo = p.lambda_o, eta = p.eta;
  for (int64_t c = 0; c < w; ++c) {
    const float z = zc[c];
    const float fd = wvd[c] * (z - zd[c]);
    const float fu = wvu[c] * (zu[c] - z);
    const float lap = ((fd - fu) + fh[c + 1]) - fh[c];
    const float s = 1.0f / (1.0f + exp_approx(-z));
    float g = (s - q[c]) + la * (z - z0[c]);
    g = g + le * lap;
    if (kZbar) g = g + lo * (z - zb[c]);
    out[c] = z - eta * g;
  }
}

// RefineInput bits of the inputs holding NaN or inf in one row (x * 0 is NaN exactly for those).
MCGR_VEC_CLONES int nonfinite_row(const float* z, const float* q, const float* z0, const float* y, const float* zb,
                                  int64_t w) {
  float a = 0.0f, b = 0.0f, c0 = 0.0f, d = 0.0f, e = 0.0f;
#pragma omp simd reduction(+ : a, b, c0, d)
  for (int64_t c = 0; c < w; ++c) {
    a += z[c] * 0.0f;
    b += q[c] * 0.0f;
    c0 += z0[c] * 0.0f;
    d += y[c] * 0.0f;
  }
  if (zb != nullptr) {
#pragma omp simd reduction(+ : e)
    for (int64_t c = 0; c < w; ++c) e += zb[c] * 0.0f;
  }
  return (a != a ? kRefineZ : 0) | (b != b ? kRefineQ : 0) | (c0 != c0 ? kRefineZ0 : 0) | (d != d ? kRefineY : 0) |
         (e != e ? kRefineZbar : 0);
}

struct Plane {
  const float* p;
  int64_t sn, sh;
  const float* row(int64_t i, int64_t r) const { return p + i * sn + r * sh; }
};

struct Block {
  int64_t plane, r0, r1;
};

struct Pass {
  Plane src, q, z0, y, zb;  // zb.p == nullptr: no overlap term
  float* dst;
  int64_t dsn, dsh;
  int64_t h, w;
  int steps;
  bool check;    // report non-finite inputs (the first pass)
  bool aliased;  // dst is src: read src only through copies
};

// Per-thread scratch, reused across calls (the thread pool persists) so the hot path never maps
// fresh pages.
std::vector<float>& thread_scratch() {
  thread_local std::vector<float> buf;
  return buf;
}

int64_t padded(int64_t w) { return (w + 16) & ~int64_t(15); }

// Runs one pass over one block; `halo` holds the block's snapshot rows (aliased passes): the K rows
// above r0, then the K rows from r1.
template <bool kZbar>
int run_block(const Pass& ps, const Block& b, const RefineParams& p, const float* halo) {
  const int K = ps.steps;
  const int64_t H = ps.h, W = ps.w, Wp = padded(W), R = K + 2;
  const int64_t n = b.plane, r0 = b.r0, r1 = b.r1;
  std::vector<float>& buf = thread_scratch();
  const size_t need = size_t(Wp) * size_t(3 * (K - 1) + 3 + 2 * R + 2) + 16;
  if (buf.size() < need) buf.assign(need, 0.0f);
  float* ring = buf.data();                   // steps 1..K-1, three rows each
  float* ring0 = ring + 3 * (K - 1) * Wp;     // copies of src rows (aliased)
  float* wv = ring0 + 3 * Wp;                 // R rows: weights between row r and r + 1 at slot r % R
  float* wh = wv + R * Wp;                    // R rows: weights within row r at slot r % R
  float* fh = wh + R * Wp;                    // w + 1 floats
  float* zero = fh + Wp;                      // a row of zero weights for missing neighbours
  std::fill(zero, zero + W, 0.0f);

  int64_t lo64[kStepsPerPass + 1], hi64[kStepsPerPass + 1];
  for (int k = 1; k <= K; ++k) {
    lo64[k] = std::max<int64_t>(0, r0 - (K - k));
    hi64[k] = std::min<int64_t>(H, r1 + (K - k));
  }
  auto src_row = [&](int64_t r) -> const float* {
    if (!ps.aliased) return ps.src.row(n, r);
    return ring0 + (r % 3) * Wp;
  };
  auto load0 = [&](int64_t r) {  // aliased: copy src row r before anything can overwrite it
    const float* from;
    if (r < r0)
      from = halo + (r - (r0 - K)) * W;
    else if (r >= r1)
      from = halo + (K + (r - r1)) * W;
    else
      from = ps.src.row(n, r);
    std::memcpy(ring0 + (r % 3) * Wp, from, size_t(W) * sizeof(float));
  };
  auto level_row = [&](int k, int64_t r) -> const float* {  // step k's row r (k = 0: src)
    return k == 0 ? src_row(r) : ring + ((k - 1) * 3 + r % 3) * Wp;
  };
  auto weights = [&](int64_t r) {  // wv for pair (r, r + 1) and wh within row r
    const float* ya = ps.y.row(n, r);
    const float* yb = r + 1 < H ? ps.y.row(n, r + 1) : nullptr;
    weights_rows(ya, yb, wv + (r % R) * Wp, wh + (r % R) * Wp, W, p.inv_two_sigma2);
  };

  int flags = 0;
  const int64_t lo1 = lo64[1], hi1 = hi64[1];
  if (ps.aliased) {
    if (lo1 > 0) load0(lo1 - 1);
    load0(lo1);
  }
  if (lo1 > 0) {
    const float* ya = ps.y.row(n, lo1 - 1);
    const float* yb = ps.y.row(n, lo1);
    weights_rows(ya, yb, wv + ((lo1 - 1) % R) * Wp, fh, W, p.inv_two_sigma2);  // wh of row lo1 - 1 is unused
  }
  for (int64_t t = lo1; t < r1 + K - 1; ++t) {
    if (t < hi1) {
      if (ps.aliased && t + 1 < H) load0(t + 1);
      if (ps.check && t >= r0 && t < r1)
        flags |= nonfinite_row(ps.src.row(n, t), ps.q.row(n, t), ps.z0.row(n, t), ps.y.row(n, t),
                               kZbar ? ps.zb.row(n, t) : nullptr, W);
      weights(t);
    }
    for (int k = 1; k <= K; ++k) {
      const int64_t r = t - (k - 1);
      if (r < lo64[k] || r >= hi64[k]) continue;
      const float* zc = level_row(k - 1, r);
      const float* zu = r > 0 ? level_row(k - 1, r - 1) : zc;
      const float* zd = r + 1 < H ? level_row(k - 1, r + 1) : zc;
      const float* wvu = r > 0 ? wv + ((r - 1) % R) * Wp : zero;
      const float* wvd = r + 1 < H ? wv + (r % R) * Wp : zero;
      float* o = k == K ? ps.dst + n * ps.dsn + r * ps.dsh : ring + ((k - 1) * 3 + r % 3) * Wp;
      step_row<kZbar>(zu, zc, zd, wvu, wvd, wh + (r % R) * Wp, ps.q.row(n, r), ps.z0.row(n, r),
                      kZbar ? ps.zb.row(n, r) : nullptr, fh, o, W, p);
    }
  }
  return flags;
}

int run_pass(const Pass& ps, int64_t planes, const RefineParams& p) {
  const int64_t H = ps.h, W = ps.w, K = ps.steps;
  int threads = 1;
#ifdef MCGR_WITH_OPENMP
  threads = omp_get_max_threads();
#endif
  // about 8 blocks per thread, so that a thread the OS preempts on a shared machine holds up the
  // others for one short block only; at least 16 rows per step, so the recomputed halo (K - 1 rows
  // per edge on average) stays a few percent
  const int64_t per_plane =
      std::max<int64_t>(1, std::min<int64_t>((8 * threads + planes - 1) / planes, H / (16 * K)));
  const int64_t rows = (H + per_plane - 1) / per_plane;
  std::vector<Block> blocks;
  for (int64_t i = 0; i < planes; ++i)
    for (int64_t r = 0; r < H; r += rows) blocks.push_back({i, r, std::min(H, r + rows)});
  const int64_t nb = static_cast<int64_t>(blocks.size());

  // below ~0.3 ms of single-core work, waking the thread team costs more than it saves (and on a
  // busy machine a descheduled team member stalls the barrier for a whole time slice)
  const bool parallel = threads > 1 && planes * H * W * K >= (int64_t(1) << 17);
  std::vector<float> halo;
  const int64_t halo_rows = 2 * K;
  if (ps.aliased) {
    halo.resize(size_t(nb) * size_t(halo_rows) * size_t(W));
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t j = 0; j < nb; ++j) {
      const Block& b = blocks[j];
      float* h = halo.data() + j * halo_rows * W;
      for (int64_t i = 0; i < K; ++i) {
        const int64_t above = b.r0 - K + i, below = b.r1 + i;
        if (above >= 0) std::memcpy(h + i * W, ps.src.row(b.plane, above), size_t(W) * sizeof(float));
        if (below < H) std::memcpy(h + (K + i) * W, ps.src.row(b.plane, below), size_t(W) * sizeof(float));
      }
    }
  }
  int flags = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : flags) if (parallel)
  for (int64_t j = 0; j < nb; ++j) {
    const float* h = ps.aliased ? halo.data() + j * halo_rows * W : nullptr;
    flags |= ps.zb.p != nullptr ? run_block<true>(ps, blocks[j], p, h) : run_block<false>(ps, blocks[j], p, h);
  }
  return flags;
}

// Byte range [lo, hi) of a [n, h, w] array with strides (sn, sh, 1).
void span(std::uintptr_t ptr, int64_t sn, int64_t sh, int64_t n, int64_t h, int64_t w, std::uintptr_t& lo,
          std::uintptr_t& hi) {
  lo = ptr;
  hi = ptr + std::uintptr_t(((n - 1) * sn + (h - 1) * sh + w) * int64_t(sizeof(float)));
}

}  // namespace

int refine_cpu(std::uintptr_t z, std::uintptr_t q, std::uintptr_t z0, std::uintptr_t y, std::uintptr_t zbar,
               std::uintptr_t out, const std::vector<int64_t>& strides, int64_t n, int64_t h, int64_t w,
               const RefineParams& p, int64_t steps) {
  MCGR_CHECK(z != 0 && q != 0 && z0 != 0 && y != 0 && out != 0, "refine: null data pointer");
  MCGR_CHECK(n >= 1 && h >= 1 && w >= 1, "refine: planes must be non-empty, got ", n, " x ", h, " x ", w);
  MCGR_CHECK(h <= (int64_t(1) << 30) && w <= (int64_t(1) << 30), "refine: plane of ", h, " x ", w, " is too large");
  MCGR_CHECK(steps >= 1, "refine: steps must be >= 1, got ", steps);
  MCGR_CHECK(strides.size() == 12, "refine: strides must hold 12 values (plane and row stride of 6 arrays), got ",
             strides.size());
  for (size_t i = 0; i < 12; ++i) MCGR_CHECK(strides[i] >= 0, "refine: negative stride ", strides[i]);
  MCGR_CHECK(std::isfinite(p.eta) && std::isfinite(p.lambda_a) && std::isfinite(p.lambda_e) &&
                 std::isfinite(p.lambda_o) && std::isfinite(p.inv_two_sigma2) && p.inv_two_sigma2 >= 0.0f,
             "refine: parameters must be finite");
  const std::uintptr_t ptrs[6] = {z, q, z0, y, zbar, out};
  std::uintptr_t olo, ohi;
  span(out, strides[10], strides[11], n, h, w, olo, ohi);
  const char* names[5] = {"z", "q", "z0", "y", "zbar"};
  const bool in_place = out == z && strides[0] == strides[10] && strides[1] == strides[11];
  for (int i = 0; i < 5; ++i) {
    if (ptrs[i] == 0 || (i == 0 && in_place)) continue;
    std::uintptr_t lo, hi;
    span(ptrs[i], strides[2 * i], strides[2 * i + 1], n, h, w, lo, hi);
    MCGR_CHECK(ohi <= lo || hi <= olo, "refine: out overlaps ", names[i], " (only out == z, in place, is allowed)");
  }

  auto plane = [&](std::uintptr_t ptr, int i) { return Plane{reinterpret_cast<const float*>(ptr), strides[2 * i], strides[2 * i + 1]}; };
  Pass ps{plane(z, 0), plane(q, 1), plane(z0, 2), plane(y, 3), plane(zbar, 4), reinterpret_cast<float*>(out),
          strides[10], strides[11], h, w, 0, true, in_place};
  const Plane dst_plane{reinterpret_cast<const float*>(out), strides[10], strides[11]};
  const int64_t passes = (steps + kStepsPerPass - 1) / kStepsPerPass;
  int flags = 0;
  for (int64_t i = 0; i < passes; ++i) {
    ps.steps = static_cast<int>(steps / passes + (i < steps % passes ? 1 : 0));
    flags |= run_pass(ps, n, p);
    // later passes continue from out, in place
    ps.src = dst_plane;
    ps.check = false;
    ps.aliased = true;
  }
  return flags;
}

}  // namespace mcgr
