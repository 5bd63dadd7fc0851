// Small vectorisable math helpers for the CPU kernels. Plain loops over these compile to
// SIMD code (the hot functions are cloned per ISA with CAGUL_CPU_CLONES).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Compile a hot function for AVX-512, AVX2+FMA and baseline x86-64, picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CAGUL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CAGUL_CPU_CLONES
#endif

namespace cagul::cpu {

// exp(x) for x in float range, Cephes' expf scheme (~1 ulp): x = n*ln2 + r, |r| <= ln2/2,
// exp(r) by a degree-6 polynomial, 2^n through the exponent bits. Branch-free; the clamps are
// ternaries because std::fmin/fmax (NaN rules) block GCC's vectoriser.
static inline float exp_fast(float x) {
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return p * two_n;
}

}  // namespace cagul::cpu
