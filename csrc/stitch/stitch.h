// stitch: Gaussian-weighted blending of tiles into a canvas (and its inverse gather).
// The specification is mcgr/ops/stitch.py (stitch_ref, gather_tiles_ref).
#pragma once
#include <cstdint>

namespace mcgr {

// Sizes of one stitch / gather call. tiles [batch, num_tiles, tile, tile], origins int64
// [num_tiles, 2] (y0, x0) with 0 <= y0 < height and 0 <= x0 < width, canvas [batch, height, width].
struct StitchParams {
  int64_t batch = 1;
  int64_t num_tiles = 0;
  int64_t tile = 0;
  int64_t height = 0;
  int64_t width = 0;
};

// Checks sizes and pointers; raises std::invalid_argument (ValueError) when they are unusable.
void stitch_check(const StitchParams& p, std::uintptr_t a, std::uintptr_t b, std::uintptr_t c);

// canvas = sum_p w t_p / sum_p w over covering tiles, 0 where none covers (every pixel written).
void stitch_cpu(std::uintptr_t tiles, std::uintptr_t origins, std::uintptr_t weights, std::uintptr_t out,
                const StitchParams& p);
// tiles_p(i, j) = canvas(y0 + i, x0 + j), 0 outside the canvas (every tile pixel written).
void gather_tiles_cpu(std::uintptr_t canvas, std::uintptr_t origins, std::uintptr_t tiles, const StitchParams& p);

#ifdef MCGR_WITH_CUDA
void stitch_cuda(std::uintptr_t tiles, std::uintptr_t origins, std::uintptr_t weights, std::uintptr_t out,
                 const StitchParams& p, std::uintptr_t stream);
void gather_tiles_cuda(std::uintptr_t canvas, std::uintptr_t origins, std::uintptr_t tiles, const StitchParams& p,
                       std::uintptr_t stream);
#endif

}  // namespace mcgr
