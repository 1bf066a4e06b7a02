// rf_step on the CPU: OpenMP over contiguous chunks, a SIMD loop inside each chunk.
// The noise uses the integers of rng_normal (common.h) with branch-free polynomial log and cos
// (Cephes) so the loop vectorises; they agree with std::log / std::cos to a few ulp.
#include "rf_step/rf_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"

namespace mcgr {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per OpenMP work item (128 KiB of float32)

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Natural log of a normal float x > 0 (Cephes logf: x = m 2^e, m in [sqrt(1/2), sqrt(2))).
inline float log_poly(float x) {
  const uint32_t ix = float_bits(x);
  int32_t e = static_cast<int32_t>(ix >> 23) - 126;                 // x = m 2^e, m in [0.5, 1)
  const float m = bits_float((ix & 0x007fffffu) | 0x3f000000u);
  const int32_t low = m < 0.707106781186547524f;
  e -= low;
  // Selects are written as arithmetic and bit masks: GCC turns float ?: into branches it then
  // cannot vectorise (the float operations could trap).
  const float f = m * static_cast<float>(1 + low) - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return (f + y) + 0.693359375f * fe;
}

// cos(2 pi u) for u in [0, 1): u is k / 2^24, so the quarter-turn reduction is exact.
inline float cos_2pi(float u) {
  const float q = 4.0f * u;                                    // exact, in [0, 4)
  const int32_t j = static_cast<int32_t>(q + 0.5f);            // nearest quarter turn, 0..4
  const float t = (q - static_cast<float>(j)) * 1.57079632679489662f;  // in [-pi/4, pi/4]
  const float z = t * t;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * t + t;
  const float c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                  0.5f * z + 1.0f;
  const uint32_t quad = static_cast<uint32_t>(j) & 3u;
  const uint32_t odd = 0u - (quad & 1u);
  const float r = bits_float((float_bits(s) & odd) | (float_bits(c) & ~odd));
  return bits_float(float_bits(r) ^ (((quad + 1u) & 2u) << 30));  // negative in quadrants 1 and 2
}

// rng_normal(seed, counter) of common.h with key = hash32(seed ^ 0x9E3779B9) hoisted.
inline float normal_simd(uint32_t key, uint32_t counter) {
  const uint32_t ha = hash32((counter * 2u) ^ key);
  const uint32_t hb = hash32((counter * 2u + 1u) ^ key);
  const float u1 = static_cast<float>(static_cast<int32_t>(ha >> 8)) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;
  const float u2 = static_cast<float>(static_cast<int32_t>(hb >> 8)) * 5.9604644775390625e-08f;
  return std::sqrt(-2.0f * log_poly(u1)) * cos_2pi(u2);
}

// The noise is compute-bound (two hashes, a log and a cos per element): wider vectors pay, so the
// loop is compiled for AVX-512 and AVX2 besides the baseline and picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MCGR_WIDE_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MCGR_WIDE_SIMD
#endif

MCGR_WIDE_SIMD void start_chunk(float* out, const float* y, int64_t i0, int64_t i1, float a, float b, uint32_t key, uint32_t off) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const float eps = normal_simd(key, off + static_cast<uint32_t>(i));
    out[i] = y[i] * a + eps * b;
  }
}

void euler_chunk(float* out, const float* x, const float* v, int64_t i0, int64_t i1, float a) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) out[i] = x[i] + v[i] * a;
}

void heun_chunk(float* out, const float* x, const float* v, const float* w, int64_t i0, int64_t i1, float a) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) out[i] = x[i] + (w[i] + v[i]) * a;
}

}  // namespace

void rf_step_cpu(std::uintptr_t out_p, std::uintptr_t x_p, std::uintptr_t v_p, std::uintptr_t w_p, int64_t n,
                 const RfStepParams& p) {
  MCGR_CHECK(n >= 0, "rf_step_cpu: n must be >= 0, got ", n);
  MCGR_CHECK(p.mode == RF_START || p.mode == RF_EULER || p.mode == RF_HEUN,
             "rf_step_cpu: mode must be 0 (start), 1 (euler) or 2 (heun), got ", p.mode);
  if (n == 0) return;
  MCGR_CHECK(out_p != 0 && x_p != 0, "rf_step_cpu: out and x must be non-null");
  MCGR_CHECK(p.mode == RF_START || v_p != 0, "rf_step_cpu: v must be non-null for euler and heun");
  MCGR_CHECK(p.mode != RF_HEUN || w_p != 0, "rf_step_cpu: v_prev (w) must be non-null for heun");
  MCGR_CHECK(out_p % alignof(float) == 0 && x_p % alignof(float) == 0 && v_p % alignof(float) == 0 &&
                 w_p % alignof(float) == 0,
             "rf_step_cpu: pointers must be float-aligned");
  MCGR_CHECK(std::isfinite(p.a) && std::isfinite(p.b), "rf_step_cpu: coefficients must be finite");
  float* out = reinterpret_cast<float*>(out_p);
  const float* x = reinterpret_cast<const float*>(x_p);
  const float* v = reinterpret_cast<const float*>(v_p);
  const float* w = reinterpret_cast<const float*>(w_p);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const uint32_t key = hash32(p.seed ^ 0x9E3779B9u);
  // One chunk runs on the calling thread: waking the pool costs more than the work.
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk;
    const int64_t i1 = std::min(n, i0 + kChunk);
    if (p.mode == RF_START) {
      start_chunk(out, x, i0, i1, p.a, p.b, key, p.offset);
    } else if (p.mode == RF_EULER) {
      euler_chunk(out, x, v, i0, i1, p.a);
    } else {
      heun_chunk(out, x, v, w, i0, i1, p.a);
    }
  }
}

}  // namespace mcgr
