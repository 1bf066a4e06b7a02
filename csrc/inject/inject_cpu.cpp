// C++/OpenMP fused injection kernel. The specification is mcgr/ops/inject.py inject_ref:
//   A = mu * (chords scaled per primitive to its analytic volume; misses deposit V at the centre pixel)
//   A_b = G_psf * A,  L = (G_l * B) / (G_l * 1) within the image,
//   I = clamp(B + c (1 - L)^gamma (1 - B)(1 - exp(-A_b)) [+ noise sqrt(I) n], 0, 1),
//   M = [popcount(OR of inside-sample bits) * 2 >= S^2] | centre pixels.
// Plan: (1) per-primitive prepass (window, discrete volume -> scale) storing only the part of each
// primitive's window that lies on the image plus the PSF halo; (2) primitives binned per output tile;
// (3) per tile, A on the tile + halo in a thread-local buffer from the binned primitives only,
// separable blur, L only over the bounding box of nonzero A_b, then I and the mask. T, A and A_b
// never exist over the whole image.
#include "inject/inject.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace mcgr {
namespace {

constexpr int kTile = 32;

struct PrimWork {
  InjectPrim g;
  int active = 0;              // its window meets the image plus halo
  int si0 = 0, sj0 = 0, sh = 0, sw = 0;  // stored rect: window clipped to the haloed image
  int64_t off = 0;             // offset of the stored rect in the scratch stores
  float deposit = 0.0f;        // mu * V at the centre pixel when no sample hits it
  int miss = 0;
  int ty0 = 0, ty1 = -1, tx0 = 0, tx1 = -1;  // tiles whose halo it touches
};

inline int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Scratch reused across calls (a fresh allocation >= 32 MiB costs page faults on every call).
struct CallScratch {
  std::vector<PrimWork> prims;
  std::vector<float> chord;
  std::vector<uint64_t> bits;
  std::vector<int64_t> tile_start;
  std::vector<int32_t> tile_list;
  std::vector<float> den_v, den_h;
};

struct ThreadScratch {
  std::vector<float> xs, cs, rowc;
  std::vector<uint8_t> ins;
  std::vector<uint64_t> rowb;
  std::vector<float> A, V, Ab, acc, num;
  std::vector<uint64_t> bits;
  std::vector<uint8_t> centre;
};

CallScratch& call_scratch() {
  static thread_local CallScratch s;
  return s;
}
ThreadScratch& thread_scratch() {
  static thread_local ThreadScratch s;
  return s;
}

template <typename T>
void ensure(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// Rasterise one primitive over its whole window (for the discrete volume) and keep the stored rect.
void rasterise(PrimWork& w, int S, float mu, float* chord_store, uint64_t* bits_store, ThreadScratch& ts) {
  const InjectPrim& p = w.g;
  const int nwS = p.nw * S;
  ensure(ts.xs, nwS);
  ensure(ts.cs, nwS);
  ensure(ts.ins, nwS);
  ensure(ts.rowc, p.nw);
  ensure(ts.rowb, p.nw);
  float* xs = ts.xs.data();
  float* cs = ts.cs.data();
  uint8_t* ins = ts.ins.data();
  float* rowc = ts.rowc.data();
  uint64_t* rowb = ts.rowb.data();
  float sub[kInjectMaxSupersample];
  for (int k = 0; k < S; ++k) sub[k] = inject_sub(k, S);
  for (int q = 0; q < nwS; ++q) xs[q] = (static_cast<float>(p.j0 + q / S) + sub[q % S]) - p.cx;
  const float ca = p.ca, sa = p.sa, rx = p.rx, ry = p.ry, ry2 = p.ry * p.ry, t = p.t;
  const float n_samples = static_cast<float>(S * S);
  double disc = 0.0;
  for (int ii = 0; ii < p.nh; ++ii) {
    const int i = p.i0 + ii;
    std::fill(rowc, rowc + p.nw, 0.0f);
    std::fill(rowb, rowb + p.nw, uint64_t(0));
    for (int ky = 0; ky < S; ++ky) {
      const float dy = (static_cast<float>(i) + sub[ky]) - p.cy;
      const float dysa = dy * sa, dyca = dy * ca;
      if (p.capsule) {
        for (int q = 0; q < nwS; ++q) {
          const float u = xs[q] * ca + dysa;
          const float v = dyca - xs[q] * sa;
          const float ue = std::max(std::fabs(u) - rx, 0.0f);
          const float r2 = (ue * ue + v * v) / ry2;
          const float one = 1.0f - r2;
          ins[q] = r2 < 1.0f;
          cs[q] = r2 < 1.0f ? t * std::sqrt(std::max(one, 0.0f)) : 0.0f;
        }
      } else {
        for (int q = 0; q < nwS; ++q) {
          const float u = xs[q] * ca + dysa;
          const float v = dyca - xs[q] * sa;
          const float a = u / rx, b = v / ry;
          const float r2 = a * a + b * b;
          const float one = 1.0f - r2;
          ins[q] = r2 < 1.0f;
          cs[q] = r2 < 1.0f ? t * std::sqrt(std::max(one, 0.0f)) : 0.0f;
        }
      }
      for (int jj = 0; jj < p.nw; ++jj) {
        float s = rowc[jj];
        uint64_t m = rowb[jj];
        for (int kx = 0; kx < S; ++kx) {
          s += cs[jj * S + kx];
          m |= uint64_t(ins[jj * S + kx]) << (ky * S + kx);
        }
        rowc[jj] = s;
        rowb[jj] = m;
      }
    }
    for (int jj = 0; jj < p.nw; ++jj) {
      rowc[jj] /= n_samples;
      disc += rowc[jj];
    }
    if (i >= w.si0 && i < w.si0 + w.sh) {
      const int r = i - w.si0, c0 = w.sj0 - p.j0;
      std::memcpy(chord_store + w.off + static_cast<int64_t>(r) * w.sw, rowc + c0, sizeof(float) * w.sw);
      std::memcpy(bits_store + w.off + static_cast<int64_t>(r) * w.sw, rowb + c0, sizeof(uint64_t) * w.sw);
    }
  }
  const float discf = static_cast<float>(disc);
  float* st = chord_store + w.off;
  const int64_t n = static_cast<int64_t>(w.sh) * w.sw;
  if (discf > 0.0f) {
    const float scale = p.vol / discf;
    for (int64_t k = 0; k < n; ++k) st[k] = (mu * st[k]) * scale;
    w.miss = 0;
    w.deposit = 0.0f;
  } else {
    w.miss = 1;
    w.deposit = mu * p.vol;
  }
}

inline float noisy(float v, float noise, uint32_t seed, uint32_t counter) {
  return v + (noise * std::sqrt(std::max(v, 0.0f))) * rng_normal(seed, counter);
}

inline float clamp01(float v) { return std::min(std::max(v, 0.0f), 1.0f); }

}  // namespace

void inject_check_args(uintptr_t background, uintptr_t calcs, uintptr_t image, uintptr_t mask, int64_t B,
                       int64_t H, int64_t W, int64_t N, const InjectParams& p) {
  MCGR_CHECK(B >= 1 && H >= 1 && W >= 1, "inject: sizes B, H, W must be >= 1, got ", B, ", ", H, ", ", W);
  MCGR_CHECK(N >= 0, "inject: N (number of primitives) must be >= 0, got ", N);
  MCGR_CHECK(H <= (int64_t(1) << 30) && W <= (int64_t(1) << 30) && B <= (int64_t(1) << 30),
             "inject: sizes too large: B=", B, " H=", H, " W=", W);
  MCGR_CHECK(N < (int64_t(1) << 31), "inject: too many primitives: ", N);
  MCGR_CHECK(background != 0, "inject: background pointer is null");
  MCGR_CHECK(image != 0, "inject: image pointer is null");
  MCGR_CHECK(mask != 0, "inject: mask pointer is null");
  MCGR_CHECK(N == 0 || calcs != 0, "inject: calcs pointer is null with N=", N);
  MCGR_CHECK(p.mu > 0.0 && p.mu <= 100.0, "inject: params.mu must be in (0, 100], got ", p.mu);
  MCGR_CHECK(p.psf_sigma >= 0.0 && p.psf_sigma <= 8.0, "inject: params.psf_sigma must be in [0, 8], got ", p.psf_sigma);
  MCGR_CHECK(p.local_sigma >= 0.25 && p.local_sigma <= 64.0, "inject: params.local_sigma must be in [0.25, 64], got ",
             p.local_sigma);
  MCGR_CHECK(p.contrast >= 0.0 && p.contrast <= 1.0, "inject: params.contrast must be in [0, 1], got ", p.contrast);
  MCGR_CHECK(p.gamma >= 0.0 && p.gamma <= 16.0, "inject: params.gamma must be in [0, 16], got ", p.gamma);
  MCGR_CHECK(p.noise >= 0.0 && p.noise <= 1.0, "inject: params.noise must be in [0, 1], got ", p.noise);
  MCGR_CHECK(p.supersample >= 1 && p.supersample <= kInjectMaxSupersample,
             "inject: params.supersample must be in 1..8, got ", p.supersample);
}

void inject_cpu(uintptr_t background, uintptr_t calcs, uintptr_t image, uintptr_t mask, int64_t B, int64_t H,
                int64_t W, int64_t N, const InjectParams& params) {
  inject_check_args(background, calcs, image, mask, B, H, W, N, params);
  const float* bg = reinterpret_cast<const float*>(background);
  const float* cl = reinterpret_cast<const float*>(calcs);
  float* out = reinterpret_cast<float*>(image);
  uint8_t* msk = reinterpret_cast<uint8_t*>(mask);
  const int S = params.supersample;
  const int Rp = inject_psf_radius(params.psf_sigma);
  const int Rl = inject_local_radius(params.local_sigma);
  const float mu = static_cast<float>(params.mu);
  const float contrast = static_cast<float>(params.contrast);
  const float gamma = static_cast<float>(params.gamma);
  const float noise = static_cast<float>(params.noise);
  const uint32_t seed = params.seed;
  const int Hi = static_cast<int>(H), Wi = static_cast<int>(W);
  const int nty = (Hi + kTile - 1) / kTile, ntx = (Wi + kTile - 1) / kTile;
  const int64_t tiles_per_image = static_cast<int64_t>(nty) * ntx;
  const int64_t ntiles = B * tiles_per_image;

  CallScratch& cs = call_scratch();
  // (1) geometry, validity, stored rects and tile ranges (serial: a few operations per primitive)
  ensure(cs.prims, static_cast<size_t>(N));
  int64_t store = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* row = cl + n * kInjectCalcFields;
    MCGR_CHECK(inject_row_valid(row, B), "inject: calcs[", n, "] = (", row[0], ", ", row[1], ", ", row[2], ", ", row[3],
               ", ", row[4], ", ", row[5], ", ", row[6], ", ", row[7],
               ") is not a valid primitive (batch index in [0, ", B, "), radii in (0, 64], thickness >= 0, shape 0/1)");
    PrimWork& w = cs.prims[n];
    w = PrimWork();
    w.g = inject_prim(row);
    const InjectPrim& g = w.g;
    const int si0 = std::max(g.i0, -Rp), si1 = std::min(g.i0 + g.nh, Hi + Rp);
    const int sj0 = std::max(g.j0, -Rp), sj1 = std::min(g.j0 + g.nw, Wi + Rp);
    if (si0 >= si1 || sj0 >= sj1) continue;
    w.active = 1;
    w.si0 = si0;
    w.sj0 = sj0;
    w.sh = si1 - si0;
    w.sw = sj1 - sj0;
    w.off = store;
    store += static_cast<int64_t>(w.sh) * w.sw;
    w.ty0 = std::max(0, floor_div(si0 - Rp, kTile));
    w.ty1 = std::min(nty - 1, floor_div(si1 - 1 + Rp, kTile));
    w.tx0 = std::max(0, floor_div(sj0 - Rp, kTile));
    w.tx1 = std::min(ntx - 1, floor_div(sj1 - 1 + Rp, kTile));
  }
  ensure(cs.chord, static_cast<size_t>(store));
  ensure(cs.bits, static_cast<size_t>(store));
  float* chord_store = cs.chord.data();
  uint64_t* bits_store = cs.bits.data();
  PrimWork* prims = cs.prims.data();

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t n = 0; n < N; ++n) {
    if (prims[n].active) rasterise(prims[n], S, mu, chord_store, bits_store, thread_scratch());
  }

  // (2) bin primitives per tile (counting sort, primitive order kept within a tile)
  cs.tile_start.assign(static_cast<size_t>(ntiles + 1), 0);
  int64_t* start = cs.tile_start.data();
  for (int64_t n = 0; n < N; ++n) {
    const PrimWork& w = prims[n];
    if (!w.active) continue;
    for (int ty = w.ty0; ty <= w.ty1; ++ty)
      for (int tx = w.tx0; tx <= w.tx1; ++tx) ++start[w.g.b * tiles_per_image + ty * ntx + tx + 1];
  }
  for (int64_t t = 0; t < ntiles; ++t) start[t + 1] += start[t];
  ensure(cs.tile_list, static_cast<size_t>(start[ntiles]));
  int32_t* list = cs.tile_list.data();
  std::vector<int64_t> cursor(start, start + ntiles);
  for (int64_t n = 0; n < N; ++n) {
    const PrimWork& w = prims[n];
    if (!w.active) continue;
    for (int ty = w.ty0; ty <= w.ty1; ++ty)
      for (int tx = w.tx0; tx <= w.tx1; ++tx) list[cursor[w.g.b * tiles_per_image + ty * ntx + tx]++] = static_cast<int32_t>(n);
  }

  // (3) filters: PSF taps, local-mean taps and the normalisation G_l * 1 (separable) within the image
  const std::vector<float> gp = inject_gaussian_taps(params.psf_sigma, Rp);
  const std::vector<float> gl = inject_gaussian_taps(params.local_sigma, Rl);
  ensure(cs.den_v, static_cast<size_t>(Hi));
  ensure(cs.den_h, static_cast<size_t>(Wi));
  for (int i = 0; i < Hi; ++i) {
    float s = 0.0f;
    for (int d = std::max(-Rl, -i); d <= std::min(Rl, Hi - 1 - i); ++d) s += gl[d + Rl];
    cs.den_v[i] = s;
  }
  for (int j = 0; j < Wi; ++j) {
    float s = 0.0f;
    for (int d = std::max(-Rl, -j); d <= std::min(Rl, Wi - 1 - j); ++d) s += gl[d + Rl];
    cs.den_h[j] = s;
  }
  const float* den_v = cs.den_v.data();
  const float* den_h = cs.den_h.data();
  const float* gpp = gp.data();
  const float* glp = gl.data();
  const int SS = S * S;

#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t t = 0; t < ntiles; ++t) {
    const int b = static_cast<int>(t / tiles_per_image);
    const int rem = static_cast<int>(t % tiles_per_image);
    const int R0 = (rem / ntx) * kTile, C0 = (rem % ntx) * kTile;
    const int th = std::min(kTile, Hi - R0), tw = std::min(kTile, Wi - C0);
    const float* bimg = bg + static_cast<int64_t>(b) * H * W;
    float* oimg = out + static_cast<int64_t>(b) * H * W;
    uint8_t* mimg = msk + static_cast<int64_t>(b) * H * W;
    const uint32_t cbase = static_cast<uint32_t>(static_cast<uint64_t>(b) * static_cast<uint64_t>(H * W));
    const int64_t l0 = start[t], l1 = start[t + 1];
    int r0 = th, r1 = 0, c0 = tw, c1 = 0;  // bounding box of nonzero A_b (tile-local)
    ThreadScratch& ts = thread_scratch();
    if (l1 > l0) {
      const int hh = th + 2 * Rp, hw = tw + 2 * Rp;
      ensure(ts.A, static_cast<size_t>(hh) * hw);
      ensure(ts.V, static_cast<size_t>(th) * hw);
      ensure(ts.Ab, static_cast<size_t>(kTile) * kTile);
      ensure(ts.bits, static_cast<size_t>(kTile) * kTile);
      ensure(ts.centre, static_cast<size_t>(kTile) * kTile);
      float* A = ts.A.data();
      float* V = ts.V.data();
      float* Ab = ts.Ab.data();
      uint64_t* bits = ts.bits.data();
      uint8_t* centre = ts.centre.data();
      std::fill(A, A + static_cast<size_t>(hh) * hw, 0.0f);
      std::fill(bits, bits + th * tw, uint64_t(0));
      std::fill(centre, centre + th * tw, uint8_t(0));
      const int hr0 = R0 - Rp, hc0 = C0 - Rp;  // image coordinates of A[0][0]
      for (int64_t e = l0; e < l1; ++e) {
        const PrimWork& w = prims[list[e]];
        const InjectPrim& g = w.g;
        // attenuation on the tile + halo
        const int ai0 = std::max(w.si0, hr0), ai1 = std::min(w.si0 + w.sh, hr0 + hh);
        const int aj0 = std::max(w.sj0, hc0), aj1 = std::min(w.sj0 + w.sw, hc0 + hw);
        if (!w.miss) {
          for (int i = ai0; i < ai1; ++i) {
            const float* src = chord_store + w.off + static_cast<int64_t>(i - w.si0) * w.sw - w.sj0;
            float* dst = A + static_cast<int64_t>(i - hr0) * hw - hc0;
            for (int j = aj0; j < aj1; ++j) dst[j] += src[j];
          }
          // coverage samples on the tile itself
          const int mi0 = std::max(w.si0, R0), mi1 = std::min(w.si0 + w.sh, R0 + th);
          const int mj0 = std::max(w.sj0, C0), mj1 = std::min(w.sj0 + w.sw, C0 + tw);
          for (int i = mi0; i < mi1; ++i) {
            const uint64_t* src = bits_store + w.off + static_cast<int64_t>(i - w.si0) * w.sw - w.sj0;
            uint64_t* dst = bits + (i - R0) * tw - C0;
            for (int j = mj0; j < mj1; ++j) dst[j] |= src[j];
          }
        } else if (g.ci >= hr0 && g.ci < hr0 + hh && g.cj >= hc0 && g.cj < hc0 + hw) {
          A[(g.ci - hr0) * hw + (g.cj - hc0)] += w.deposit;
        }
        if (g.ci >= R0 && g.ci < R0 + th && g.cj >= C0 && g.cj < C0 + tw) centre[(g.ci - R0) * tw + (g.cj - C0)] = 1;
      }
      // separable PSF blur: rows, then columns (valid part of the haloed tile)
      for (int r = 0; r < th; ++r) {
        float* v = V + r * hw;
        std::fill(v, v + hw, 0.0f);
        for (int d = 0; d <= 2 * Rp; ++d) {
          const float gd = gpp[d];
          const float* a = A + (r + d) * hw;
          for (int c = 0; c < hw; ++c) v[c] += gd * a[c];
        }
      }
      for (int r = 0; r < th; ++r) {
        float* o = Ab + r * tw;
        std::fill(o, o + tw, 0.0f);
        const float* v = V + r * hw;
        for (int d = 0; d <= 2 * Rp; ++d) {
          const float gd = gpp[d];
          for (int c = 0; c < tw; ++c) o[c] += gd * v[c + d];
        }
        for (int c = 0; c < tw; ++c) {
          if (o[c] != 0.0f) {
            r0 = std::min(r0, r);
            r1 = std::max(r1, r + 1);
            c0 = std::min(c0, c);
            c1 = std::max(c1, c + 1);
          }
        }
      }
      for (int r = 0; r < th; ++r) {
        uint8_t* m = mimg + static_cast<int64_t>(R0 + r) * W + C0;
        for (int c = 0; c < tw; ++c)
          m[c] = static_cast<uint8_t>((__builtin_popcountll(bits[r * tw + c]) * 2 >= SS) | centre[r * tw + c]);
      }
    } else {
      for (int r = 0; r < th; ++r) std::memset(mimg + static_cast<int64_t>(R0 + r) * W + C0, 0, tw);
    }
    for (int r = 0; r < th; ++r)
      std::memcpy(oimg + static_cast<int64_t>(R0 + r) * W + C0, bimg + static_cast<int64_t>(R0 + r) * W + C0,
                  sizeof(float) * tw);
    if (r1 > r0) {
      // local mean L over the bounding box only: columns of G_l * B (zero-padded), then rows
      const int gc0 = C0 + c0 - Rl;  // image column of acc[0]
      const int aw = (c1 - c0) + 2 * Rl;
      const int vc0 = std::max(0, gc0), vc1 = std::min(Wi, gc0 + aw);
      ensure(ts.acc, static_cast<size_t>(aw));
      ensure(ts.num, static_cast<size_t>(c1 - c0));
      float* acc = ts.acc.data();
      float* num = ts.num.data();
      const float* Ab = ts.Ab.data();
      for (int r = r0; r < r1; ++r) {
        const int gi = R0 + r;
        std::fill(acc, acc + aw, 0.0f);
        for (int ii = std::max(0, gi - Rl); ii <= std::min(Hi - 1, gi + Rl); ++ii) {
          const float gd = glp[ii - gi + Rl];
          const float* src = bimg + static_cast<int64_t>(ii) * W + gc0;  // src[c] is image column gc0 + c
          for (int c = vc0 - gc0; c < vc1 - gc0; ++c) acc[c] += gd * src[c];
        }
        std::fill(num, num + (c1 - c0), 0.0f);
        for (int d = 0; d <= 2 * Rl; ++d) {
          const float gd = glp[d];
          for (int c = 0; c < c1 - c0; ++c) num[c] += gd * acc[c + d];
        }
        const float* brow = bimg + static_cast<int64_t>(gi) * W + C0;
        float* orow = oimg + static_cast<int64_t>(gi) * W + C0;
        const float dv = den_v[gi];
        for (int c = c0; c < c1; ++c) {
          const float L = num[c - c0] / (dv * den_h[C0 + c]);
          const float m = contrast * std::pow(std::max(1.0f - L, 0.0f), gamma);
          const float Bv = brow[c];
          const float v = Bv + (m * (1.0f - Bv)) * (1.0f - std::exp(-Ab[r * tw + c]));
          orow[c] = noise > 0.0f ? v : clamp01(v);  // with noise, the clamp follows the noise below
        }
      }
    }
    if (noise > 0.0f) {
      for (int r = 0; r < th; ++r) {
        float* orow = oimg + static_cast<int64_t>(R0 + r) * W + C0;
        const uint32_t c_row = cbase + static_cast<uint32_t>(static_cast<uint64_t>(R0 + r) * W + C0);
        for (int c = 0; c < tw; ++c) orow[c] = clamp01(noisy(orow[c], noise, seed, c_row + static_cast<uint32_t>(c)));
      }
    }
  }
}

}  // namespace mcgr
