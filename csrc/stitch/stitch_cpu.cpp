// stitch on the CPU. The math (the reference is stitch_ref in mcgr/ops/stitch.py):
//   canvas[b, y, x] = sum_p w[y - y0_p, x - x0_p] tiles[b, p, y - y0_p, x - x0_p] / sum_p w[...]
// over the tiles p covering (y, x), 0 where none does. One pass, no atomics: each thread owns whole
// canvas rows. A row splits into column segments over which the set of covering tiles is constant
// (recomputed only when the set of tiles covering the row changes); within a segment numerator and
// denominator of a few pixels live in registers while the covering tiles' rows stream past, and
// each pixel is written once. Tiles are read once, the canvas written once, nothing canvas-sized
// is allocated. Tiles are summed in the order of their y0 (stable), as every backend may.
// Speed (memory-bound): the next rows of the tiles are prefetched in software, and a canvas larger
// than the caches is written with streaming stores.
#include "stitch/stitch.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define MCGR_HAVE_STREAM 1
#endif

#include "common.h"

namespace mcgr {

void stitch_check(const StitchParams& p, std::uintptr_t a, std::uintptr_t b, std::uintptr_t c) {
  MCGR_CHECK(p.batch >= 1, "stitch: batch must be >= 1, got ", p.batch);
  MCGR_CHECK(p.num_tiles >= 1, "stitch: num_tiles must be >= 1, got ", p.num_tiles);
  MCGR_CHECK(p.tile >= 1, "stitch: tile must be >= 1, got ", p.tile);
  MCGR_CHECK(p.height >= 1 && p.width >= 1, "stitch: canvas must be non-empty, got ", p.height, " x ", p.width);
  MCGR_CHECK(p.tile <= (int64_t(1) << 20) && p.height <= (int64_t(1) << 30) && p.width <= (int64_t(1) << 30),
             "stitch: sizes out of range");
  MCGR_CHECK(a != 0 && b != 0 && c != 0, "stitch: null data pointer");
}

namespace {

// Tile indices sorted by y0 (stable, so ties keep index order), and the sorted y0.
void sort_by_row(const int64_t* org, int64_t P, std::vector<int64_t>& order, std::vector<int64_t>& ys) {
  order.resize(P);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [org](int64_t a, int64_t b) { return org[2 * a] < org[2 * b]; });
  ys.resize(P);
  for (int64_t k = 0; k < P; ++k) ys[k] = org[2 * order[k]];
}

void check_origins(const int64_t* org, const StitchParams& p) {
  for (int64_t k = 0; k < p.num_tiles; ++k) {
    MCGR_CHECK(org[2 * k] >= 0 && org[2 * k] < p.height && org[2 * k + 1] >= 0 && org[2 * k + 1] < p.width,
               "stitch: origins[", k, "] = (", org[2 * k], ", ", org[2 * k + 1], ") lies outside the ", p.height,
               " x ", p.width, " canvas");
  }
}

// Column segments of the rows whose covering tiles are order[lo, hi): [x_begin, x_end) with the
// covering tiles' positions in order[] listed in seg_tiles[first, first + count).
struct RowPlan {
  int64_t lo = -1, hi = -1;
  std::vector<int64_t> x_begin, x_end, first, count, seg_tiles, breaks;
};

void plan_row(RowPlan& plan, int64_t lo, int64_t hi, const std::vector<int64_t>& order, const int64_t* org,
              int64_t T, int64_t W) {
  plan.lo = lo;
  plan.hi = hi;
  plan.breaks.clear();
  plan.breaks.push_back(0);
  plan.breaks.push_back(W);
  for (int64_t k = lo; k < hi; ++k) {
    const int64_t x0 = org[2 * order[k] + 1];
    plan.breaks.push_back(x0);
    plan.breaks.push_back(std::min(x0 + T, W));
  }
  std::sort(plan.breaks.begin(), plan.breaks.end());
  plan.breaks.erase(std::unique(plan.breaks.begin(), plan.breaks.end()), plan.breaks.end());
  plan.x_begin.clear();
  plan.x_end.clear();
  plan.first.clear();
  plan.count.clear();
  plan.seg_tiles.clear();
  for (size_t s = 0; s + 1 < plan.breaks.size(); ++s) {
    const int64_t a = plan.breaks[s], b = plan.breaks[s + 1];
    plan.x_begin.push_back(a);
    plan.x_end.push_back(b);
    plan.first.push_back(int64_t(plan.seg_tiles.size()));
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t x0 = org[2 * order[k] + 1];
      if (x0 <= a && std::min(x0 + T, W) >= b) plan.seg_tiles.push_back(k);
    }
    plan.count.push_back(int64_t(plan.seg_tiles.size()) - plan.first.back());
  }
}

constexpr int64_t kPrefetchRows = 2;
// Below this many elements moved, waking a thread team costs more than the work (tens of us, and
// milliseconds on a loaded machine).
constexpr int64_t kParallelElements = int64_t(1) << 18;
constexpr int64_t kStreamBytes = int64_t(16) << 20;  // canvases larger than this bypass the caches
constexpr int kChunk = 32;  // pixels whose numerator and denominator stay in registers

#if defined(__GNUC__) && defined(__x86_64__)
#define MCGR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MCGR_CLONES
#endif

// dst[j] = sum_k w_k[j] t_k[j] / sum_k w_k[j] for j < len, k < m (m >= 1), summed in k order.
// One to four covering tiles (every pixel of a regular grid) get a straight loop each.
MCGR_CLONES
void blend_segment(float* __restrict dst, const float* const* tp, const float* const* wp, int64_t m, int64_t len) {
  if (m == 1) {
    const float *__restrict t0 = tp[0], *__restrict w0 = wp[0];
    for (int64_t j = 0; j < len; ++j) dst[j] = (w0[j] * t0[j]) / w0[j];
    return;
  }
  if (m == 2) {
    const float *__restrict t0 = tp[0], *__restrict w0 = wp[0], *__restrict t1 = tp[1], *__restrict w1 = wp[1];
    for (int64_t j = 0; j < len; ++j) dst[j] = (w0[j] * t0[j] + w1[j] * t1[j]) / (w0[j] + w1[j]);
    return;
  }
  if (m == 3) {
    const float *__restrict t0 = tp[0], *__restrict w0 = wp[0], *__restrict t1 = tp[1], *__restrict w1 = wp[1];
    const float *__restrict t2 = tp[2], *__restrict w2 = wp[2];
    for (int64_t j = 0; j < len; ++j)
      dst[j] = (w0[j] * t0[j] + w1[j] * t1[j] + w2[j] * t2[j]) / (w0[j] + w1[j] + w2[j]);
    return;
  }
  if (m == 4) {
    const float *__restrict t0 = tp[0], *__restrict w0 = wp[0], *__restrict t1 = tp[1], *__restrict w1 = wp[1];
    const float *__restrict t2 = tp[2], *__restrict w2 = wp[2], *__restrict t3 = tp[3], *__restrict w3 = wp[3];
    for (int64_t j = 0; j < len; ++j)
      dst[j] = (w0[j] * t0[j] + w1[j] * t1[j] + w2[j] * t2[j] + w3[j] * t3[j]) / (w0[j] + w1[j] + w2[j] + w3[j]);
    return;
  }
  int64_t j0 = 0;
  for (; j0 + kChunk <= len; j0 += kChunk) {
    float num[kChunk], den[kChunk];
    const float* __restrict t0 = tp[0] + j0;
    const float* __restrict w0 = wp[0] + j0;
    for (int j = 0; j < kChunk; ++j) {
      num[j] = w0[j] * t0[j];
      den[j] = w0[j];
    }
    for (int64_t k = 1; k < m; ++k) {
      const float* __restrict tk = tp[k] + j0;
      const float* __restrict wk = wp[k] + j0;
      for (int j = 0; j < kChunk; ++j) {
        num[j] += wk[j] * tk[j];
        den[j] += wk[j];
      }
    }
    for (int j = 0; j < kChunk; ++j) dst[j0 + j] = num[j] / den[j];
  }
  for (int64_t j = j0; j < len; ++j) {
    float num = wp[0][j] * tp[0][j], den = wp[0][j];
    for (int64_t k = 1; k < m; ++k) {
      num += wp[k][j] * tp[k][j];
      den += wp[k][j];
    }
    dst[j] = num / den;
  }
}

// Copies a finished row to a canvas larger than the caches with non-temporal stores: the canvas is
// not read back before it would be evicted, and streaming skips each line's read-for-ownership
// (a third of the memory traffic otherwise).
void stream_row(float* __restrict dst, const float* __restrict src, int64_t n) {
#ifdef MCGR_HAVE_STREAM
  int64_t j = 0;
  for (; j < n && (reinterpret_cast<std::uintptr_t>(dst + j) & 15u) != 0; ++j) dst[j] = src[j];
  for (; j + 4 <= n; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
  for (; j < n; ++j) dst[j] = src[j];
#else
  std::memcpy(dst, src, sizeof(float) * n);
#endif
}

}  // namespace

void stitch_cpu(std::uintptr_t tiles_ptr, std::uintptr_t origins_ptr, std::uintptr_t weights_ptr, std::uintptr_t out_ptr,
                const StitchParams& p) {
  stitch_check(p, tiles_ptr, origins_ptr, out_ptr);
  MCGR_CHECK(weights_ptr != 0, "stitch: null weights pointer");
  const float* tiles = reinterpret_cast<const float*>(tiles_ptr);
  const int64_t* org = reinterpret_cast<const int64_t*>(origins_ptr);
  const float* weights = reinterpret_cast<const float*>(weights_ptr);
  float* out = reinterpret_cast<float*>(out_ptr);
  check_origins(org, p);
  const int64_t B = p.batch, P = p.num_tiles, T = p.tile, H = p.height, W = p.width;
  std::vector<int64_t> order, ys;
  sort_by_row(org, P, order, ys);
  const bool stream = B * H * W * int64_t(sizeof(float)) > kStreamBytes;
  const bool parallel = B * (P * T * T + H * W) > kParallelElements;

#pragma omp parallel if (parallel)
  {
    RowPlan plan;  // per thread: the consecutive rows of a chunk mostly share one plan
    std::vector<const float*> tp(P), wp(P);
    std::vector<float> row_buf(stream ? W : 0);
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < B * H; ++r) {
      const int64_t b = r / H, y = r % H;
      float* dst = stream ? row_buf.data() : out + r * W;
      // tiles covering row y: y - T < y0 <= y
      const int64_t lo = std::lower_bound(ys.begin(), ys.end(), y - T + 1) - ys.begin();
      const int64_t hi = std::upper_bound(ys.begin(), ys.end(), y) - ys.begin();
      if (lo == hi) {
        std::memset(out + r * W, 0, sizeof(float) * W);
        continue;
      }
      if (lo != plan.lo || hi != plan.hi) plan_row(plan, lo, hi, order, org, T, W);
      for (size_t s = 0; s < plan.x_begin.size(); ++s) {
        const int64_t a = plan.x_begin[s], len = plan.x_end[s] - a, m = plan.count[s];
        if (m == 0) {
          std::memset(dst + a, 0, sizeof(float) * len);
          continue;
        }
        for (int64_t k = 0; k < m; ++k) {
          const int64_t t = order[plan.seg_tiles[plan.first[s] + k]];
          const int64_t i = y - org[2 * t], j = a - org[2 * t + 1];
          tp[k] = tiles + ((b * P + t) * T + i) * T + j;
          wp[k] = weights + i * T + j;
          // the same span of this tile kPrefetchRows canvas rows below: dozens of tiles are read
          // side by side, more streams than the hardware prefetcher follows
          if (i + kPrefetchRows < T) {
            for (int64_t x = 0; x < len; x += 16) __builtin_prefetch(tp[k] + kPrefetchRows * T + x);
          }
        }
        blend_segment(dst + a, tp.data(), wp.data(), m, len);
      }
      if (stream) stream_row(out + r * W, dst, W);
    }
#ifdef MCGR_HAVE_STREAM
    if (stream) _mm_sfence();  // streamed stores are weakly ordered: publish them before returning
#endif
  }
}

void gather_tiles_cpu(std::uintptr_t canvas_ptr, std::uintptr_t origins_ptr, std::uintptr_t tiles_ptr,
                      const StitchParams& p) {
  stitch_check(p, canvas_ptr, origins_ptr, tiles_ptr);
  const float* canvas = reinterpret_cast<const float*>(canvas_ptr);
  const int64_t* org = reinterpret_cast<const int64_t*>(origins_ptr);
  float* tiles = reinterpret_cast<float*>(tiles_ptr);
  check_origins(org, p);
  const int64_t B = p.batch, P = p.num_tiles, T = p.tile, H = p.height, W = p.width;
  // one task per tile row: its source is one contiguous canvas span (or nothing past the border)
#pragma omp parallel for schedule(static) if (B * P * T * T > kParallelElements)
  for (int64_t r = 0; r < B * P * T; ++r) {
    const int64_t i = r % T, t = (r / T) % P, b = r / (T * P);
    const int64_t y = org[2 * t] + i, x0 = org[2 * t + 1];
    float* dst = tiles + r * T;
    const int64_t n = y < H ? std::min(T, W - x0) : 0;
    if (n > 0) std::memcpy(dst, canvas + (b * H + y) * W + x0, sizeof(float) * n);
    if (n < T) std::memset(dst + n, 0, sizeof(float) * (T - n));
  }
}

}  // namespace mcgr
