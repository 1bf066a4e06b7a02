// Fused microcalcification injection (docs/design.md, method M2; the specification is mcgr/ops/inject.py inject_ref).
// Shared by the CPU and CUDA kernels: the parameter struct and the per-primitive float32 geometry,
// written operation for operation like the reference so that sample positions, windows and
// inside tests round the same way on every backend.
#pragma once
#include <cstdint>
#include <cmath>
#include <vector>

#include "common.h"

namespace mcgr {

struct InjectParams {
  double mu = 1.2;           // attenuation per mm of chord (1/mm)
  double psf_sigma = 0.6;    // PSF Gaussian sigma (px), 0 = no blur
  double local_sigma = 8.0;  // sigma (px) of the local background mean L
  double contrast = 0.8;     // c in m = c (1 - L)^gamma
  double gamma = 1.0;
  double noise = 0.0;        // I += noise sqrt(I) n
  uint32_t seed = 0;         // noise stream
  int supersample = 4;       // S: samples per pixel side (1..8)
};

// Normalised sampled Gaussian, computed in double and cast as mcgr.ops.inject.gaussian_taps
// (host code: both launchers build their filter taps with it).
inline std::vector<float> inject_gaussian_taps(double sigma, int radius) {
  std::vector<double> w(2 * radius + 1);
  double s = 0.0;
  for (int k = 0; k <= 2 * radius; ++k) {
    const double d = k - radius;
    w[k] = (sigma <= 0.0 || radius == 0) ? (d == 0.0 ? 1.0 : 0.0) : std::exp(-(d * d) / (2.0 * sigma * sigma));
    s += w[k];
  }
  std::vector<float> out(w.size());
  for (size_t k = 0; k < w.size(); ++k) out[k] = static_cast<float>(w[k] / s);
  return out;
}

constexpr int kInjectCalcFields = 8;
constexpr float kInjectMaxRadius = 64.0f;
constexpr double kInjectPsfTruncate = 4.0;
constexpr double kInjectLocalTruncate = 3.0;
constexpr int kInjectMaxSupersample = 8;
// psf_sigma <= 8 and local_sigma <= 64 (InjectParams.validated) bound the filter radii.
constexpr int kInjectMaxPsfRadius = 32;
constexpr int kInjectMaxLocalRadius = 192;

// Filter radii exactly as Python's int(truncate * sigma + 0.5) in double.
MCGR_HD int inject_psf_radius(double sigma) { return static_cast<int>(kInjectPsfTruncate * sigma + 0.5); }
MCGR_HD int inject_local_radius(double sigma) { return static_cast<int>(kInjectLocalTruncate * sigma + 0.5); }

// One primitive's geometry in float32, as mcgr/ops/inject.py computes it.
struct InjectPrim {
  float cy, cx, ry, rx, ca, sa, t;
  int capsule;
  int b;
  int i0, j0, nh, nw;  // pixel window (primitive_window)
  int ci, cj;          // pixel holding the centre
  float vol;           // analytic volume (px^2 mm)
};

MCGR_HD float inject_floor(float x) {
#if defined(__CUDA_ARCH__)
  return floorf(x);
#else
  return std::floor(x);
#endif
}

// True when a row of calcs holds a primitive the kernels can rasterise safely (the public
// function validates with messages; the kernels re-check so that a bad row never indexes out of bounds).
MCGR_HD bool inject_row_valid(const float* c, int64_t B) {
  for (int k = 0; k < kInjectCalcFields; ++k)
    if (!(c[k] == c[k]) || c[k] > 3.0e38f || c[k] < -3.0e38f) return false;
  const float b = c[0];
  if (!(b >= 0.0f) || !(b < static_cast<float>(B)) || b != inject_floor(b)) return false;
  if (!(c[3] > 0.0f && c[3] <= kInjectMaxRadius && c[4] > 0.0f && c[4] <= kInjectMaxRadius)) return false;
  if (!(c[6] >= 0.0f)) return false;
  if (!(c[7] == 0.0f || c[7] == 1.0f)) return false;
  if (!(c[1] >= -1.0e6f && c[1] <= 1.0e6f && c[2] >= -1.0e6f && c[2] <= 1.0e6f)) return false;
  return true;
}

MCGR_HD InjectPrim inject_prim(const float* c) {
  InjectPrim p;
  p.b = static_cast<int>(c[0]);
  p.cy = c[1];
  p.cx = c[2];
  p.ry = c[3];
  p.rx = c[4];
  p.t = c[6];
  p.capsule = c[7] == 1.0f;
#if defined(__CUDA_ARCH__)
  p.ca = cosf(c[5]);
  p.sa = sinf(c[5]);
  const float ac = fabsf(p.ca), as = fabsf(p.sa);
#else
  p.ca = std::cos(c[5]);
  p.sa = std::sin(c[5]);
  const float ac = std::fabs(p.ca), as = std::fabs(p.sa);
#endif
  float hx, hy;
  if (p.capsule) {
    hx = p.rx * ac + p.ry;
    hy = p.rx * as + p.ry;
  } else {
    const float a = p.rx * ac, b = p.ry * as, d = p.rx * as, e = p.ry * ac;
#if defined(__CUDA_ARCH__)
    hx = sqrtf(a * a + b * b);
    hy = sqrtf(d * d + e * e);
#else
    hx = std::sqrt(a * a + b * b);
    hy = std::sqrt(d * d + e * e);
#endif
  }
  const int i0 = static_cast<int>(inject_floor(p.cy - hy + 0.5f)) - 1;
  const int i1 = static_cast<int>(inject_floor(p.cy + hy + 0.5f)) + 1;
  const int j0 = static_cast<int>(inject_floor(p.cx - hx + 0.5f)) - 1;
  const int j1 = static_cast<int>(inject_floor(p.cx + hx + 0.5f)) + 1;
  p.i0 = i0;
  p.j0 = j0;
  p.nh = i1 - i0 + 1;
  p.nw = j1 - j0 + 1;
  p.ci = static_cast<int>(inject_floor(p.cy + 0.5f));
  p.cj = static_cast<int>(inject_floor(p.cx + 0.5f));
  const float two_thirds_pi = static_cast<float>((2.0 / 3.0) * 3.141592653589793);
  const float pi = static_cast<float>(3.141592653589793);
  if (p.capsule)
    p.vol = pi * p.rx * p.ry * p.t + two_thirds_pi * p.ry * p.ry * p.t;
  else
    p.vol = two_thirds_pi * p.rx * p.ry * p.t;
  return p;
}

// rho^2 of the sample at (y, x): ellipsoid (u/rx)^2 + (v/ry)^2; capsule (max(|u|-rx,0)^2 + v^2) / ry^2.
MCGR_HD float inject_rho2(const InjectPrim& p, float y, float x) {
  const float dy = y - p.cy, dx = x - p.cx;
  const float u = dx * p.ca + dy * p.sa;
  const float v = dy * p.ca - dx * p.sa;
  if (p.capsule) {
    float ue = (u < 0.0f ? -u : u) - p.rx;
    ue = ue > 0.0f ? ue : 0.0f;
    return (ue * ue + v * v) / (p.ry * p.ry);
  }
  const float a = u / p.rx, b = v / p.ry;
  return a * a + b * b;
}

// Sample offset k (0..S-1) from the pixel centre: (k + 0.5) / S - 0.5, in float32 as the reference.
MCGR_HD float inject_sub(int k, int S) {
  return (static_cast<float>(k) + 0.5f) / static_cast<float>(S) - 0.5f;
}

// Area-averaged chord of pixel (i, j) and its inside-sample bitmask (bit ky * S + kx).
MCGR_HD float inject_pixel_chord(const InjectPrim& p, int i, int j, int S, uint64_t* bits) {
  float sum = 0.0f;
  uint64_t m = 0;
  for (int ky = 0; ky < S; ++ky) {
    const float y = static_cast<float>(i) + inject_sub(ky, S);
    for (int kx = 0; kx < S; ++kx) {
      const float x = static_cast<float>(j) + inject_sub(kx, S);
      const float r2 = inject_rho2(p, y, x);
      if (r2 < 1.0f) {
        const float q = 1.0f - r2;
#if defined(__CUDA_ARCH__)
        sum += p.t * sqrtf(q > 0.0f ? q : 0.0f);
#else
        sum += p.t * std::sqrt(q > 0.0f ? q : 0.0f);
#endif
        m |= uint64_t(1) << (ky * S + kx);
      }
    }
  }
  *bits = m;
  return sum / static_cast<float>(S * S);
}

// background [B,H,W] float32, calcs [N,8] float32 -> image [B,H,W] float32, mask [B,H,W] uint8/bool.
// Pointers are addresses (torch data_ptr()); all arrays are contiguous.
void inject_cpu(uintptr_t background, uintptr_t calcs, uintptr_t image, uintptr_t mask, int64_t B, int64_t H,
                int64_t W, int64_t N, const InjectParams& params);

#ifdef MCGR_WITH_CUDA
// Same contract on device pointers; runs on `stream` (a cudaStream_t as an integer, 0 = default).
void inject_cuda(uintptr_t background, uintptr_t calcs, uintptr_t image, uintptr_t mask, int64_t B, int64_t H,
                 int64_t W, int64_t N, const InjectParams& params, uintptr_t stream);
#endif

// Checks shared by both entry points; raises ValueError (std::invalid_argument) on violation.
void inject_check_args(uintptr_t background, uintptr_t calcs, uintptr_t image, uintptr_t mask, int64_t B,
                       int64_t H, int64_t W, int64_t N, const InjectParams& params);

}  // namespace mcgr
