// Shared by the kernels of solvers/_native (phase_softmax.cc, linear.cc; built into one library by
// solvers/native.py): the 512-bit vector types, the lane-wise exp and 1/sqrt, and the thread helper.
//
// A V below is one 512-bit vector (GCC vector extensions: 8 doubles or 16 floats); every operation
// on it is one vector instruction. Each kernel keeps its own helpers in its own file; what is here
// is what both use (or what belongs with the vector types).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {  // internal linkage: each kernel's file gets its own copy, as when they were one file

typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

// The vector type of T and its number of lanes.
template <typename T>
struct Vec;
template <>
struct Vec<double> {
  using V = v8d;
  static constexpr int L = 8;
};
template <>
struct Vec<float> {
  using V = v16f;
  static constexpr int L = 16;
};

// The same vectors with the alignment of T: loads and stores at any column offset.
template <typename T>
struct Unaligned;
template <>
struct Unaligned<double> {
  typedef double V __attribute__((vector_size(64), aligned(8)));
};
template <>
struct Unaligned<float> {
  typedef float V __attribute__((vector_size(64), aligned(4)));
};

// exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln(2) / 2, lane-wise, with a Taylor polynomial
// whose truncation error is below one ulp (degree 13 for double: 0.347^14 / 14! = 4e-18; degree 7
// for float: 0.347^8 / 8! = 5e-9); the portable version (vexp below picks the AVX-512 one).
// Arguments are clamped to the normal range: below it the result is the smallest normal number
// instead of a subnormal or zero (an absolute error < 2.3e-308 / 1.2e-38 on weights whose row sum is
// >= ~1 here), above it the result overflows as exp would.
inline v8d vexp_generic(v8d x) {
  x = x < -708.0 ? -708.0 : x;
  x = x > 709.0 ? 709.0 : x;
  const v8d t = x * 1.4426950408889634 + 6755399441055744.0;
  const v8d k = t - 6755399441055744.0;
  v8d r = x - k * 6.93147180369123816490e-01;
  r = r - k * 1.90821492927058770002e-10;
  v8d p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const v8l bits = (__builtin_convertvector(k, v8l) + 1023) << 52;
  return p * reinterpret_cast<const v8d&>(bits);
}

inline v16f vexp_generic(v16f x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const v16f t = x * 1.44269504088896341f + 12582912.0f;
  const v16f k = t - 12582912.0f;
  v16f r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  v16f p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v16i bits = (__builtin_convertvector(k, v16i) + 127) << 23;
  return p * reinterpret_cast<const v16f&>(bits);
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// AVX-512: exp(x) = 2^m 2^(j/16) exp(r), x = (16 m + j) ln2/16 + r, |r| <= ln2/32. The 16 values
// 2^(j/16) are one two-register table lookup (vpermt2pd), 2^m is applied by vscalefpd (which
// also gives the correct underflow to subnormals and zero, and overflow to inf), and exp(r) needs
// a degree-7 Taylor polynomial (truncation 0.0217^8 / 8! = 1.2e-18): 18 instructions instead of 30.
// Arguments are clamped to |x| <= 1e5 only to keep the rounding trick exact.
struct ExpTables {
  alignas(64) double d[16];
  alignas(64) float f[16];
  ExpTables() {
    for (int j = 0; j < 16; ++j) {
      d[j] = std::exp2(j / 16.0);
      f[j] = static_cast<float>(d[j]);
    }
  }
};
static const ExpTables kExp;

inline v8d vexp(v8d xv) {
  __m512d x = _mm512_max_pd(_mm512_min_pd((__m512d)xv, _mm512_set1_pd(1e5)), _mm512_set1_pd(-1e5));
  const __m512d magic = _mm512_set1_pd(6755399441055744.0);
  const __m512d t = _mm512_fmadd_pd(x, _mm512_set1_pd(16.0 * 1.4426950408889634), magic);
  const __m512d k = _mm512_sub_pd(t, magic);
  __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(6.93147180369123816490e-01 / 16), x);
  r = _mm512_fnmadd_pd(k, _mm512_set1_pd(1.90821492927058770002e-10 / 16), r);
  const __m512d tab = _mm512_permutex2var_pd(_mm512_load_pd(kExp.d), _mm512_castpd_si512(t), _mm512_load_pd(kExp.d + 8));
  const __m512d m = _mm512_roundscale_pd(_mm512_mul_pd(k, _mm512_set1_pd(1.0 / 16)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512d p = _mm512_fmadd_pd(r, _mm512_set1_pd(1.0 / 5040), _mm512_set1_pd(1.0 / 720));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 120));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 24));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 6));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
  return (v8d)_mm512_scalef_pd(_mm512_mul_pd(p, tab), m);
}

inline v16f vexp(v16f xv) {
  __m512 x = _mm512_max_ps(_mm512_min_ps((__m512)xv, _mm512_set1_ps(1e4f)), _mm512_set1_ps(-1e4f));
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(16.0f * 1.44269504088896341f), magic);
  const __m512 k = _mm512_sub_ps(t, magic);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f / 16), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f / 16), r);
  const __m512 tab = _mm512_permutexvar_ps(_mm512_castps_si512(t), _mm512_load_ps(kExp.f));
  const __m512 m = _mm512_roundscale_ps(_mm512_mul_ps(k, _mm512_set1_ps(1.0f / 16)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 6), _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return (v16f)_mm512_scalef_ps(_mm512_mul_ps(p, tab), m);
}
#else
inline v8d vexp(v8d x) { return vexp_generic(x); }
inline v16f vexp(v16f x) { return vexp_generic(x); }
#endif

// 1 / sqrt(a): with AVX-512 the 14-bit estimate vrsqrt14 refined by Newton steps (one for float,
// two for double; each squares the relative error: 2^-28 and 2^-56 before rounding), about 1 ulp,
// at a fraction of the cost of a square root and a division.
inline v8d inv_sqrt(v8d a) {
#if defined(__AVX512F__)
  v8d r = (v8d)_mm512_rsqrt14_pd((__m512d)a);
  r = r * (1.5 - 0.5 * a * r * r);
  r = r * (1.5 - 0.5 * a * r * r);
  return r;
#else
  v8d r;
  for (int l = 0; l < 8; ++l) r[l] = 1.0 / std::sqrt(a[l]);
  return r;
#endif
}
inline v16f inv_sqrt(v16f a) {
#if defined(__AVX512F__)
  v16f r = (v16f)_mm512_rsqrt14_ps((__m512)a);
  return r * (1.5f - 0.5f * a * r * r);
#else
  v16f r;
  for (int l = 0; l < 16; ++l) r[l] = 1.0f / std::sqrt(a[l]);
  return r;
#endif
}
inline double inv_sqrt(double a) { return 1.0 / std::sqrt(a); }
inline float inv_sqrt(float a) { return 1.0f / std::sqrt(a); }

// work(t) for t = 0 .. nt - 1, t = 0 on the calling thread and the others on their own OS threads;
// returns when all are done. Each kernel gives every t a fixed share of its work, so the results of
// a given thread count do not depend on the scheduling.
template <typename F>
void run_threads(int nt, F work) {
  std::vector<std::thread> pool;
  for (int t = 1; t < nt; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

}  // namespace
