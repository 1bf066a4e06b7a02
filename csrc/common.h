// Shared by every mcgr kernel: argument checks that raise (never crash) and the counter-based RNG.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <cmath>

#if defined(__CUDACC__)
#define MCGR_HD __host__ __device__ __forceinline__
#else
#define MCGR_HD inline
#endif

namespace mcgr {
namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
inline void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
template <typename... Args>
inline std::string concat(const Args&... args) {
  std::ostringstream os;
  append(os, args...);
  return os.str();
}
}  // namespace detail
}  // namespace mcgr

// A violated precondition raises std::invalid_argument, which pybind11 turns into ValueError.
#define MCGR_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond)) throw std::invalid_argument(::mcgr::detail::concat(__VA_ARGS__));    \
  } while (0)

namespace mcgr {

// Counter-based RNG (the specification is mcgr/ops/_rng.py): lowbias32 hash of the counter mixed
// with the seed, two 24-bit uniforms, Box-Muller. Identical integers on every backend.
MCGR_HD uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

MCGR_HD uint32_t rng_mix(uint32_t seed, uint32_t counter) {
  return hash32(counter ^ hash32(seed ^ 0x9E3779B9u));
}

// Standard normal number `counter` of the stream `seed`.
MCGR_HD float rng_normal(uint32_t seed, uint32_t counter) {
  const uint32_t a = rng_mix(seed, counter * 2u);
  const uint32_t b = rng_mix(seed, counter * 2u + 1u);
  const float u1 = static_cast<float>(a >> 8) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;  // (0,1)
  const float u2 = static_cast<float>(b >> 8) * 5.9604644775390625e-08f;                              // [0,1)
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
#else
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
#endif
}

}  // namespace mcgr
