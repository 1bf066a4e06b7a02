// The CPU kernel of group_norm_silu.h. Pass 1 sums x and x^2 per channel over blocks of pixels (float32
// partials, float64 totals), pass 2 applies the folded per-(sample, channel) affine map, adds the
// residual and takes SiLU with a vectorisable exp. The hot loops are compiled for AVX-512, AVX2
// and the baseline, and the loader picks the widest the CPU has (GCC target_clones).
#include "group_norm_silu/group_norm_silu.h"

#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MCGR_NA_AVX512 1
#endif

#ifdef MCGR_WITH_OPENMP
#include <omp.h>
#endif

#include "common.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MCGR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MCGR_CLONES
#endif

namespace mcgr {
namespace {

constexpr int64_t kBlock = 1024;  // pixels per work item

inline float bf16_to_f32(uint16_t h) { return __builtin_bit_cast(float, static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  const uint32_t u = __builtin_bit_cast(uint32_t, f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// exp(x) for x in float32: 2^k * e^r, |r| <= ln2/2, degree-6 polynomial (relative error ~2e-7);
// inputs are clamped to [-87.3, 88.7] (exp underflows to ~1e-38 / stays finite).
inline float exp_poly(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // round to nearest by the 1.5 * 2^23 shift (exact for |x log2 e| < 2^22; no libm call, so it vectorises)
  const float kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - kf * 0.693359375f) + kf * 2.12194440e-4f;
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, p) + (static_cast<uint32_t>(k) << 23));
}

#ifdef NOSILU
inline float silu(float v) { return v; }
#else
inline float silu(float v) { return v / (1.0f + exp_poly(-v)); }
#endif

template <typename T> inline float load(const T* p, int64_t i);
template <> inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <> inline float load<uint16_t>(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
template <typename T> inline void store(T* p, int64_t i, float v);
template <> inline void store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <> inline void store<uint16_t>(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

// ---- pass 1: per-channel sums of one block (channels-last: m pixels of c channels; else: m values of one channel)
// channel sums of m pixels of c <= 256 channels: local accumulators, one vector loop per pixel
inline void sums_cl(const float* __restrict x, int64_t m, int64_t c, float* __restrict s, float* __restrict q) {
  float as[256], aq[256];
  for (int64_t j = 0; j < c; ++j) as[j] = aq[j] = 0.0f;
  for (int64_t i = 0; i < m; ++i) {
    const float* __restrict row = x + i * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const float v = row[j];
      as[j] += v;
      aq[j] += v * v;
    }
  }
  for (int64_t j = 0; j < c; ++j) {
    s[j] = as[j];
    q[j] = aq[j];
  }
}

template <typename T>
inline void sums_cf(const T* __restrict x, int64_t m, float* s, float* q) {
  float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < m; ++i) {
    const float v = load(x, i);
    a += v;
    b += v * v;
  }
  *s = a;
  *q = b;
}

// ---- pass 2: y = silu(a x + b [+ r]) over one block
template <typename T>
inline void apply_cl(const T* __restrict x, const T* __restrict r, T* out, int64_t m, int64_t c,
                     const float* __restrict a, const float* __restrict b) {
  for (int64_t i = 0; i < m; ++i) {
    const T* xr = x + i * c;
    T* orow = out + i * c;
    if (r) {
      const T* rr = r + i * c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) store(orow, j, silu(load(xr, j) * a[j] + b[j] + load(rr, j)));
    } else {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) store(orow, j, silu(load(xr, j) * a[j] + b[j]));
    }
  }
}

template <typename T>
inline void apply_cf(const T* __restrict x, const T* __restrict r, T* out, int64_t m, float a, float b) {
  if (r) {
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) store(out, i, silu(load(x, i) * a + b + load(r, i)));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) store(out, i, silu(load(x, i) * a + b));
  }
}

// bfloat16 blocks go through float32 scratch (kScratch elements at a time), so that every hot loop
// is a plain float32 loop or a plain conversion loop, both of which GCC vectorises.
constexpr int64_t kScratch = 4096;

// Integer loops through a may_alias view of the float buffer: GCC vectorises these, not a loop of
// __builtin_bit_cast calls.
typedef uint32_t __attribute__((may_alias)) u32_alias;

MCGR_CLONES void cvt_in(const uint16_t* __restrict h, float* __restrict f, int64_t n) {
  u32_alias* u = reinterpret_cast<u32_alias*>(f);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) u[i] = static_cast<uint32_t>(h[i]) << 16;
}
MCGR_CLONES void cvt_out(const float* __restrict f, uint16_t* __restrict h, int64_t n) {
  const u32_alias* u = reinterpret_cast<const u32_alias*>(f);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t v = u[i];
    const uint32_t rounded = (v + 0x7fffu + ((v >> 16) & 1u)) >> 16;
    const uint32_t nan = (v >> 16) | 0x40u;
    h[i] = static_cast<uint16_t>((v & 0x7fffffffu) > 0x7f800000u ? nan : rounded);  // round to nearest even
  }
}

// Instantiations with one clone set each (target_clones does not apply to templates).
MCGR_CLONES void sums_cl_f32(const float* x, int64_t m, int64_t c, float* s, float* q) { sums_cl(x, m, c, s, q); }
MCGR_CLONES void sums_cf_f32(const float* x, int64_t m, float* s, float* q) { sums_cf(x, m, s, q); }
MCGR_CLONES void apply_cl_f32(const float* x, const float* r, float* o, int64_t m, int64_t c, const float* a, const float* b) {
  apply_cl(x, r, o, m, c, a, b);
}
MCGR_CLONES void apply_cf_f32(const float* x, const float* r, float* o, int64_t m, float a, float b) { apply_cf(x, r, o, m, a, b); }

// channels-last: m pixels of c channels; NCHW: c == 1 and m values of one channel (a, b scalars)
void sums_block(const void* x, int32_t dt, int64_t m, int64_t c, float* s, float* q) {
  if (dt != NA_BFLOAT16) {
    if (c == 1) sums_cf_f32(static_cast<const float*>(x), m, s, q);
    else sums_cl_f32(static_cast<const float*>(x), m, c, s, q);
    return;
  }
  float buf[kScratch], ts[256], tq[256];
  const int64_t step = std::max<int64_t>(1, kScratch / c);
  for (int64_t j = 0; j < c; ++j) s[j] = q[j] = 0.0f;
  for (int64_t i0 = 0; i0 < m; i0 += step) {
    const int64_t k = std::min(step, m - i0);
    cvt_in(static_cast<const uint16_t*>(x) + i0 * c, buf, k * c);
    if (c == 1) sums_cf_f32(buf, k, ts, tq);
    else sums_cl_f32(buf, k, c, ts, tq);
    for (int64_t j = 0; j < c; ++j) {
      s[j] += ts[j];
      q[j] += tq[j];
    }
  }
}

void apply_block(const void* x, const void* r, void* o, int32_t dt, int64_t m, int64_t c, const float* a, const float* b) {
  if (dt != NA_BFLOAT16) {
    const float* xf = static_cast<const float*>(x);
    const float* rf = static_cast<const float*>(r);
    float* of = static_cast<float*>(o);
    if (c == 1) apply_cf_f32(xf, rf, of, m, a[0], b[0]);
    else apply_cl_f32(xf, rf, of, m, c, a, b);
    return;
  }
  float bx[kScratch], br[kScratch];
  const int64_t step = std::max<int64_t>(1, kScratch / c);
  for (int64_t i0 = 0; i0 < m; i0 += step) {
    const int64_t k = std::min(step, m - i0), n = k * c;
    cvt_in(static_cast<const uint16_t*>(x) + i0 * c, bx, n);
    if (r) cvt_in(static_cast<const uint16_t*>(r) + i0 * c, br, n);
    if (c == 1) apply_cf_f32(bx, r ? br : nullptr, bx, k, a[0], b[0]);
    else apply_cl_f32(bx, r ? br : nullptr, bx, k, c, a, b);
    cvt_out(bx, static_cast<uint16_t*>(o) + i0 * c, n);
  }
}

#ifdef MCGR_NA_AVX512
// ---- AVX-512 (F, BW, VL) versions of the two block functions, taken when the CPU has them. Same
// arithmetic as the portable loops (float32 throughout, exp by the same reduction and polynomial,
// bfloat16 rounded to nearest even by the same integer steps), with FMA in the polynomial.
#define MCGR_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

MCGR_AVX512 inline __m512 load16(const void* p, int32_t dt, __mmask16 k) {
  if (dt == NA_BFLOAT16) {
    const __m256i h = _mm256_maskz_loadu_epi16(k, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_maskz_loadu_ps(k, p);
}

MCGR_AVX512 inline void store16(void* p, int32_t dt, __m512 v, __mmask16 k) {
  if (dt == NA_BFLOAT16) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(r));
    return;
  }
  _mm512_mask_storeu_ps(p, k, v);
}

MCGR_AVX512 inline __m512 silu16(__m512 v) {
  __m512 x = _mm512_sub_ps(_mm512_setzero_ps(), v);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
  const __m512 kf = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_add_ps(_mm512_sub_ps(x, _mm512_mul_ps(kf, _mm512_set1_ps(0.693359375f))),
                                 _mm512_mul_ps(kf, _mm512_set1_ps(2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.3981999507e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512 e = _mm512_scalef_ps(p, kf);
  return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// channels-last block (m pixels of c channels, c % 16 == 0) or NCHW run (c == 1, m values)
MCGR_AVX512 void sums_block512(const void* x, int32_t dt, int64_t m, int64_t c, float* s, float* q) {
  const int esz = dt == NA_BFLOAT16 ? 2 : 4;
  const char* b = static_cast<const char*>(x);
  if (c == 1) {
    __m512 as = _mm512_setzero_ps(), aq = _mm512_setzero_ps();
    for (int64_t i = 0; i < m; i += 16) {
      const __mmask16 k = m - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (m - i)) - 1u);
      const __m512 v = load16(b + i * esz, dt, k);
      as = _mm512_add_ps(as, v);
      aq = _mm512_fmadd_ps(v, v, aq);
    }
    *s = _mm512_reduce_add_ps(as);
    *q = _mm512_reduce_add_ps(aq);
    return;
  }
  for (int64_t j = 0; j < c; j += 16) {
    __m512 as0 = _mm512_setzero_ps(), aq0 = _mm512_setzero_ps(), as1 = as0, aq1 = aq0;
    int64_t i = 0;
    for (; i + 1 < m; i += 2) {  // two pixels per step: two independent chains
      const __m512 v0 = load16(b + (i * c + j) * esz, dt, 0xffff);
      const __m512 v1 = load16(b + ((i + 1) * c + j) * esz, dt, 0xffff);
      as0 = _mm512_add_ps(as0, v0);
      aq0 = _mm512_fmadd_ps(v0, v0, aq0);
      as1 = _mm512_add_ps(as1, v1);
      aq1 = _mm512_fmadd_ps(v1, v1, aq1);
    }
    if (i < m) {
      const __m512 v0 = load16(b + (i * c + j) * esz, dt, 0xffff);
      as0 = _mm512_add_ps(as0, v0);
      aq0 = _mm512_fmadd_ps(v0, v0, aq0);
    }
    _mm512_storeu_ps(s + j, _mm512_add_ps(as0, as1));
    _mm512_storeu_ps(q + j, _mm512_add_ps(aq0, aq1));
  }
}

MCGR_AVX512 void apply_block512(const void* x, const void* r, void* o, int32_t dt, int64_t m, int64_t c,
                                const float* a, const float* bb) {
  const int esz = dt == NA_BFLOAT16 ? 2 : 4;
  const char* xb = static_cast<const char*>(x);
  const char* rb = static_cast<const char*>(r);
  char* ob = static_cast<char*>(o);
  if (c == 1) {
    const __m512 va = _mm512_set1_ps(a[0]), vb = _mm512_set1_ps(bb[0]);
    for (int64_t i = 0; i < m; i += 16) {
      const __mmask16 k = m - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (m - i)) - 1u);
      __m512 y = _mm512_add_ps(_mm512_mul_ps(load16(xb + i * esz, dt, k), va), vb);
      if (rb) y = _mm512_add_ps(y, load16(rb + i * esz, dt, k));
      store16(ob + i * esz, dt, silu16(y), k);
    }
    return;
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < c; j += 16) {
      const int64_t off = (i * c + j) * esz;
      __m512 y = _mm512_add_ps(_mm512_mul_ps(load16(xb + off, dt, 0xffff), _mm512_loadu_ps(a + j)), _mm512_loadu_ps(bb + j));
      if (rb) y = _mm512_add_ps(y, load16(rb + off, dt, 0xffff));
      store16(ob + off, dt, silu16(y), 0xffff);
    }
  }
}

bool have_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
  return ok;
}
#endif

}  // namespace

void group_norm_silu_cpu(std::uintptr_t x_, std::uintptr_t gamma_, std::uintptr_t beta_, std::uintptr_t scale_,
                         std::uintptr_t shift_, std::uintptr_t residual_, std::uintptr_t out_, const NormActParams& p) {
  MCGR_CHECK(p.n >= 0 && p.c >= 1 && p.hw >= 0, "group_norm_silu: need n >= 0, c >= 1, hw >= 0, got n=", p.n,
             " c=", p.c, " hw=", p.hw);
  MCGR_CHECK(p.groups >= 1 && p.c % p.groups == 0, "group_norm_silu: groups (", p.groups, ") must divide c (", p.c, ")");
  MCGR_CHECK(p.dtype == NA_FLOAT32 || p.dtype == NA_BFLOAT16, "group_norm_silu: unknown dtype code ", p.dtype);
  MCGR_CHECK(std::isfinite(p.eps) && p.eps > 0.0f, "group_norm_silu: eps must be finite and > 0, got ", p.eps);
  if (p.n == 0 || p.hw == 0) return;
  MCGR_CHECK(x_ != 0 && out_ != 0, "group_norm_silu: x and out must be given");
  const int64_t N = p.n, C = p.c, HW = p.hw, G = p.groups, CG = C / G;
  const int esz = p.dtype == NA_BFLOAT16 ? 2 : 4;
  const char* x = reinterpret_cast<const char*>(x_);
  const char* res = reinterpret_cast<const char*>(residual_);
  char* out = reinterpret_cast<char*>(out_);
  const float* gamma = reinterpret_cast<const float*>(gamma_);
  const float* beta = reinterpret_cast<const float*>(beta_);
  const float* scale = reinterpret_cast<const float*>(scale_);
  const float* shift = reinterpret_cast<const float*>(shift_);
  const int64_t nb = (HW + kBlock - 1) / kBlock;  // pixel blocks per sample
  const bool cl = p.channels_last != 0;

#ifdef MCGR_NA_AVX512
  const bool wide = have_avx512() && (!cl || C % 16 == 0);
#define SUMS(...) (wide ? sums_block512(__VA_ARGS__) : sums_block(__VA_ARGS__))
#define APPLY(...) (wide ? apply_block512(__VA_ARGS__) : apply_block(__VA_ARGS__))
#else
#define SUMS sums_block
#define APPLY apply_block
#endif
  // pass 1: partial sums per (sample, block, channel); the layout's natural work item
  MCGR_CHECK(!cl || C <= 256, "group_norm_silu: channels-last takes at most 256 channels, got ", C);
  std::vector<float> ps(static_cast<size_t>(N * nb * C)), pq(ps.size());
  const int64_t items = cl ? N * nb : N * C * nb;
#ifdef MCGR_WITH_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (int64_t it = 0; it < items; ++it) {
    if (cl) {
      const int64_t n = it / nb, b = it % nb, p0 = b * kBlock, m = std::min(kBlock, HW - p0);
      SUMS(x + ((n * HW + p0) * C) * esz, p.dtype, m, C, &ps[(n * nb + b) * C], &pq[(n * nb + b) * C]);
    } else {
      const int64_t nc = it / nb, b = it % nb, n = nc / C, c = nc % C, p0 = b * kBlock, m = std::min(kBlock, HW - p0);
      SUMS(x + (nc * HW + p0) * esz, p.dtype, m, 1, &ps[(n * nb + b) * C + c], &pq[(n * nb + b) * C + c]);
    }
  }
  // group statistics in float64, folded with the affine map and the modulation into a, b per (n, c)
  std::vector<float> A(static_cast<size_t>(N * C)), B(A.size());
  const double cnt = static_cast<double>(CG) * static_cast<double>(HW);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      double s = 0.0, q = 0.0;
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
          s += ps[(n * nb + b) * C + c];
          q += pq[(n * nb + b) * C + c];
        }
      const double mean = s / cnt;
      const double var = std::max(q / cnt - mean * mean, 0.0);
      const float meanf = static_cast<float>(mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(p.eps)));
      for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
        const float gm = gamma ? gamma[c] : 1.0f, bt = beta ? beta[c] : 0.0f;
        const float k = scale ? 1.0f + scale[n * C + c] : 1.0f;
        const float sh = shift ? shift[n * C + c] : 0.0f;
        const float a = rstd * gm;
        A[n * C + c] = a * k;
        B[n * C + c] = (bt - meanf * a) * k + sh;
      }
    }
  }
  // pass 2
#ifdef MCGR_WITH_OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (int64_t it = 0; it < items; ++it) {
    if (cl) {
      const int64_t n = it / nb, b = it % nb, p0 = b * kBlock, m = std::min(kBlock, HW - p0);
      const int64_t off = (n * HW + p0) * C * esz;
      APPLY(x + off, res ? res + off : nullptr, out + off, p.dtype, m, C, &A[n * C], &B[n * C]);
    } else {
      const int64_t nc = it / nb, b = it % nb, p0 = b * kBlock, m = std::min(kBlock, HW - p0);
      const int64_t off = (nc * HW + p0) * esz;
      APPLY(x + off, res ? res + off : nullptr, out + off, p.dtype, m, 1, &A[nc], &B[nc]);
    }
  }
}

}  // namespace mcgr
