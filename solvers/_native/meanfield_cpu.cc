// Hand-fused CPU kernels for two workloads XLA:CPU runs far below the machine's speed
// (issue 11, targets 4 and 6; benchmarks/README.md says what was measured and why).
// Compiled on first use by solvers/native.py (g++ -O3 -march=native) and registered as XLA FFI
// custom-call targets on the CPU platform; every caller keeps the pure-JAX path for GPU/TPU and for
// machines without a C++ compiler. Both kernels compute the same quantities as the JAX code they
// replace (solvers/dense.py, solvers/feature_major.py); only the order of floating-point operations
// differs, so results agree to round-off (tests/solvers/test_native.py). docs/theory.md gives the
// model: the softmax transformer layer x_i <- normalize(x_i + h sum_j A_ij x_j) and the linear
// kernel's field F(x) = (1/M)(m + alpha Sigma x) (Eq. 3).
//
// 1. PhaseRollout: whole-time rollouts of many small systems (n tokens of dimension d, dense
//    n x n Gram matrices), each (beta, system) pair kept in L1 for all its steps, with the
//    phase-diagram statistics recorded at the save points. The exponentials use the symmetry of
//    the Gram matrix (n (n + 1) / 2 instead of n^2 per step) and a vectorisable exp.
// 2. LinearStep / LinearMoments: one pass over the feature-major state (d, N) per step: read x,
//    write y = step(x), and accumulate the key moments of y for the next step (the XLA program
//    needs three passes).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---------------------------------------------------------------------- phase rollouts
// L (beta, system) pairs advance together, one per lane of a 512-bit vector (GCC vector
// extensions: 8 doubles or 16 floats): every operation on a V below is one vector instruction, with
// no reductions across lanes and no masked remainders, whatever n and d are. A group's state
// (n d vectors: 16 KB for n = 32, d = 8, double) stays in L1 for all its steps.
typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

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

template <typename T>
struct PhaseGroup {
  using V = typename Vec<T>::V;
  static constexpr int L = Vec<T>::L;
  int n, d;
  std::vector<V> x, y, acc, rs, w;
  std::vector<int> parent;
  std::vector<decltype(V{} > V{})> adj;
  V beta;
  PhaseGroup(int n_, int d_) : n(n_), d(d_), x(n_ * d_), y(n_ * d_), acc(n_ * d_), rs(n_), w(n_ * n_), parent(L * n_), adj(n_) {}

  // Row i of the new state: y_i = normalize(x_i + scale * a_i), a_i = sum_j W_ij x_j.
  inline void output_row(int i, int dd, V scale, const V* ai) {
    const V* xi = &x[i * dd];
    V* yi = &y[i * dd];
    V s2 = V{};
    for (int k = 0; k < dd; ++k) {
      yi[k] = xi[k] + scale * ai[k];
      s2 += yi[k] * yi[k];
    }
    V r;
    for (int l = 0; l < L; ++l) r[l] = T(1) / std::sqrt(s2[l]);
    for (int k = 0; k < dd; ++k) yi[k] *= r;
  }

  // The diagonal weight exp(beta (|x_i|^2 - 1)) as 1 + beta (|x_i|^2 - 1): |x_i|^2 - 1 is a few ulp
  // for unit tokens, so this is exp to rounding (the quadratic term is < 1e-24 for beta < 1e5).
  inline V diagonal_weight(V sq) const { return T(1) + beta * (sq - T(1)); }

  // x <- normalize(x + h sum_j W_ij x_j / sum_j W_ij), W = exp(beta (G - 1)) (solvers/dense.py:
  // the shift by beta replaces the max pass for unit tokens and cancels in the quotient).
  // G and W are symmetric, so each pair i < j is visited once: one dot product, one exponential,
  // and W_ij x_j, W_ij x_i added to both rows' sums (no n x n array is stored). The sums over k run
  // in the same order for (i, j) and (j, i), as in the einsum, whose G is symmetric too.
  // This form takes any d at run time; layer_w below is faster for small fixed d.
  template <bool STATS>
  void layer_any(T h) {
    std::fill(acc.begin(), acc.end(), V{});
    std::fill(rs.begin(), rs.end(), V{});
    for (int i = 0; i < n; ++i) {
      const V* xi = &x[i * d];
      V* ai = &acc[i * d];
      V a = xi[0] * xi[0];
      for (int k = 1; k < d; ++k) a += xi[k] * xi[k];
      const V ei = diagonal_weight(a);
      V rsi = rs[i] + ei;
      for (int k = 0; k < d; ++k) ai[k] += ei * xi[k];
      for (int j = i + 1; j < n; ++j) {
        const V* xj = &x[j * d];
        a = xi[0] * xj[0];
        for (int k = 1; k < d; ++k) a += xi[k] * xj[k];
        if (STATS) stats_pair(i, j, a);
        const V e = vexp(beta * (a - T(1)));
        rsi += e;
        rs[j] += e;
        V* aj = &acc[j * d];
        for (int k = 0; k < d; ++k) {
          ai[k] += e * xj[k];
          aj[k] += e * xi[k];
        }
      }
      rs[i] = rsi;
    }
    if (STATS) stats_end(pending_pairs, pending_clusters, pending_order, pending_stride);
    for (int i = 0; i < n; ++i) output_row(i, d, h / rs[i], &acc[i * d]);
    x.swap(y);
  }

  // The same step for d known at compile time, in two passes: the pairs i <= j write W_ij = W_ji
  // (n x n vectors, in L2), then every row's sums are taken from W with register accumulators. It
  // trades the scatter into row j's sums (d loads and d stores per pair) for two stores and two
  // loads (measured 1.3-1.4x faster; a one-pass variant that uses row i's weights at once was slower).
  template <int D, bool STATS>
  void layer_w(T h) {
    static_assert(D > 0, "compile-time d only");
    for (int i = 0; i < n; ++i) {
      const V* xi = &x[i * D];
      V xr[D];
      for (int k = 0; k < D; ++k) xr[k] = xi[k];
      {
        V a = xr[0] * xr[0];
        for (int k = 1; k < D; ++k) a += xr[k] * xr[k];
        w[i * n + i] = diagonal_weight(a);
      }
      for (int j = i + 1; j < n; ++j) {
        const V* xj = &x[j * D];
        V a = xr[0] * xj[0];
        for (int k = 1; k < D; ++k) a += xr[k] * xj[k];
        if (STATS) stats_pair(i, j, a);
        const V e = vexp(beta * (a - T(1)));
        w[i * n + j] = e;
        w[j * n + i] = e;
      }
    }
    if (STATS) stats_end(pending_pairs, pending_clusters, pending_order, pending_stride);
    for (int i = 0; i < n; ++i) {
      const V* wi = &w[i * n];
      V ai[D], rsi = V{};
      for (int k = 0; k < D; ++k) ai[k] = V{};
      for (int j = 0; j < n; ++j) {
        const V e = wi[j];
        const V* xj = &x[j * D];
        rsi += e;
        for (int k = 0; k < D; ++k) ai[k] += e * xj[k];
      }
      output_row(i, D, h / rsi, ai);
    }
    x.swap(y);
  }

  // One step; with stats = true the statistics of the state before the step (a save) are taken
  // from the step's own dot products and written where stats_to() said.
  template <bool STATS>
  void layer_d(T h) {
    if (d == 8)
      layer_w<8, STATS>(h);
    else if (d == 4)
      layer_w<4, STATS>(h);
    else if (d == 16)
      layer_w<16, STATS>(h);
    else
      layer_any<STATS>(h);
  }
  void layer(T h, bool stats = false) {
    if (stats)
      layer_d<true>(h);
    else
      layer_d<false>(h);
  }
  int32_t *pending_pairs = nullptr, *pending_clusters = nullptr;
  T* pending_order = nullptr;
  int64_t pending_stride = 0;
  void stats_to(T pt, T ct, int valid, int32_t* pairs, int32_t* clusters, T* order, int64_t stride) {
    stats_begin(pt, ct, valid);
    pending_pairs = pairs;
    pending_clusters = clusters;
    pending_order = order;
    pending_stride = stride;
  }

  static int find(int* parent, int a) {
    while (parent[a] != a) a = parent[a] = parent[parent[a]];
    return a;
  }

  // Per lane: pairs = ordered pairs i != j with g_ij > pt; clusters = connected components of
  // g_ij > ct (union-find: the same number as the label propagation of solvers/dense.py);
  // order = |mean token|. Written for lanes [0, valid), entry l at pairs[l * stride] etc.
  // The statistics in three parts, so that a step can take the pairs from its own dot products:
  // stats_begin(); stats_pair(i, j, <x_i, x_j>) for every i < j; stats_end(...).
  using I = decltype(V{} > V{});  // lane masks: integer vectors of -1 / 0
  I np{};
  int32_t comps[L];
  T pt_, ct_;
  bool words;
  int valid_;

  void stats_begin(T pt, T ct, int valid) {
    pt_ = pt;
    ct_ = ct;
    valid_ = valid;
    np = I{};
    // clusters: with n <= lane bits, one adjacency word per token and lane, built with vector
    // operations, then a breadth-first search on bitsets per lane; otherwise union-find.
    words = n <= static_cast<int>(8 * sizeof(T));
    for (int l = 0; l < L; ++l) {
      comps[l] = n;
      if (!words)
        for (int i = 0; i < n; ++i) parent[l * n + i] = i;
    }
    if (words) std::fill(adj.begin(), adj.end(), I{});
  }

  inline void stats_pair(int i, int j, V a) {
    np -= a > pt_;
    const I joined = a > ct_;
    if (words) {
      using S = typename std::remove_reference<decltype(joined[0])>::type;
      adj[i] |= joined & static_cast<S>(static_cast<uint64_t>(1) << j);
      adj[j] |= joined & static_cast<S>(static_cast<uint64_t>(1) << i);
      return;
    }
    for (int l = 0; l < valid_; ++l) {
      if (!joined[l]) continue;
      int* par = &parent[l * n];
      const int u = find(par, i), v = find(par, j);
      if (u != v) {
        par[std::max(u, v)] = std::min(u, v);
        --comps[l];
      }
    }
  }

  // Per lane: pairs = ordered pairs i != j with g_ij > pt; clusters = connected components of
  // g_ij > ct (the same number as the label propagation of solvers/dense.py); order = |mean
  // token|, all of the current state x. Written for lanes [0, valid), entry l at pairs[l * stride].
  void statistics(T pt, T ct, int valid, int32_t* pairs, int32_t* clusters, T* order, int64_t stride) {
    stats_begin(pt, ct, valid);
    for (int i = 0; i < n; ++i) {
      const V* xi = &x[i * d];
      for (int j = i + 1; j < n; ++j) {
        const V* xj = &x[j * d];
        V a = xi[0] * xj[0];
        for (int k = 1; k < d; ++k) a += xi[k] * xj[k];
        stats_pair(i, j, a);
      }
    }
    stats_end(pairs, clusters, order, stride);
  }

  void stats_end(int32_t* pairs, int32_t* clusters, T* order, int64_t stride) {
    const int valid = valid_;
    if (words)
      for (int l = 0; l < valid; ++l) {
        uint64_t todo = n == 64 ? ~static_cast<uint64_t>(0) : (static_cast<uint64_t>(1) << n) - 1;
        int c = 0;
        while (todo) {
          uint64_t comp = todo & (~todo + 1), front = comp;  // lowest unvisited token
          while (front) {
            uint64_t next = 0;
            for (uint64_t f = front; f; f &= f - 1)
              next |= static_cast<uint64_t>(adj[__builtin_ctzll(f)][l]) & (n == 64 ? ~0ull : (1ull << n) - 1);
            front = next & ~comp;
            comp |= front;
          }
          todo &= ~comp;
          ++c;
        }
        comps[l] = c;
      }
    V m2 = V{};
    for (int k = 0; k < d; ++k) {
      V s = V{};
      for (int i = 0; i < n; ++i) s += x[i * d + k];
      s /= T(n);
      m2 += s * s;
    }
    for (int l = 0; l < valid; ++l) {
      pairs[l * stride] = static_cast<int32_t>(2 * np[l]);
      clusters[l * stride] = comps[l];
      order[l * stride] = std::sqrt(m2[l]);
    }
  }
};

template <ffi::DataType DT>
ffi::Error PhaseRolloutImpl(ffi::Buffer<DT> x0, ffi::Buffer<DT> betas, ffi::Buffer<DT> params,
                            ffi::Buffer<ffi::S32> segments, int32_t threads,
                            ffi::ResultBuffer<ffi::S32> pairs, ffi::ResultBuffer<ffi::S32> clusters,
                            ffi::ResultBuffer<DT> order) {
  using T = ffi::NativeType<DT>;
  constexpr int L = Vec<T>::L;
  auto dims = x0.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("PhaseRollout: x0 must be (B, n, d)");
  const int64_t B = dims[0];
  const int n = static_cast<int>(dims[1]), d = static_cast<int>(dims[2]);
  const int64_t nb = static_cast<int64_t>(betas.element_count());
  const int S = static_cast<int>(segments.element_count());
  if (params.element_count() != 3) return ffi::Error::InvalidArgument("PhaseRollout: params must be (h, pt, ct)");
  const T* px = x0.typed_data();
  const T* pb = betas.typed_data();
  const T h = params.typed_data()[0], pt = params.typed_data()[1], ct = params.typed_data()[2];
  const int32_t* seg = segments.typed_data();
  int32_t* op = pairs->typed_data();
  int32_t* oc = clusters->typed_data();
  T* om = order->typed_data();
  const int64_t total = nb * B;
  const int64_t groups = (total + L - 1) / L;

  auto work = [&](int64_t start, int64_t stride) {
    PhaseGroup<T> grp(n, d);
    for (int64_t q = start; q < groups; q += stride) {
      const int64_t p0 = q * L;
      const int valid = static_cast<int>(std::min<int64_t>(L, total - p0));
      for (int l = 0; l < L; ++l) {  // padding lanes repeat the last pair; their results are dropped
        const int64_t p = p0 + std::min(l, valid - 1);
        grp.beta[l] = pb[p / B];
        const T* src = px + (p % B) * n * d;
        for (int i = 0; i < n; ++i)
          for (int k = 0; k < d; ++k) grp.x[i * d + k][l] = src[i * d + k];
      }
      // the statistics of save s come from the first step after it when there is one
      bool pending = false;
      for (int s = 0; s < S; ++s) {
        for (int32_t t = 0; t < seg[s]; ++t) {
          grp.layer(h, pending);
          pending = false;
        }
        if (s + 1 < S && seg[s + 1] > 0) {
          grp.stats_to(pt, ct, valid, op + p0 * S + s, oc + p0 * S + s, om + p0 * S + s, S);
          pending = true;
        } else {
          grp.statistics(pt, ct, valid, op + p0 * S + s, oc + p0 * S + s, om + p0 * S + s, S);
        }
      }
    }
  };
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, groups)));
  if (nt == 1) {
    work(0, 1);
  } else {
    std::vector<std::thread> pool;
    for (int t = 0; t < nt; ++t) pool.emplace_back(work, t, nt);
    for (auto& th : pool) th.join();
  }
  return ffi::Error::Success();
}

// ------------------------------------------------------------------ linear feature-major
// One pass over the columns of x (d, N): each group of L columns (one vector per feature row) is
// loaded once, stepped in registers, stored, and its shifted moments are added to register
// accumulators that are flushed to float64 totals every kFlush groups. D = d at compile time
// (2..8, 16); other d take the same code with a run-time d (D = 0) and arrays in memory.
constexpr int64_t kFlush = 32;
constexpr int64_t kMinThreadColumns = 1 << 16;

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

// Per-call constants of the step and the moment accumulators (register-resident for fixed D).
template <typename T, typename W, int D>
struct Columns {
  static constexpr int DM = D > 0 ? D : 64;  // run-time d: arrays sized for d <= 64 (checked)
  int d;
  W s1[DM], s2[DM * (DM + 1) / 2];
  Columns(int d_) : d(D > 0 ? D : d_) { clear(); }
  void clear() {
    for (int k = 0; k < d; ++k) s1[k] = W{};
    for (int q = 0; q < d * (d + 1) / 2; ++q) s2[q] = W{};
  }
  // y (d values of type W, one column or one vector of columns) shifted by c, added to the sums
  void add(const W* y, const T* c) {
    W z[DM];
    for (int k = 0; k < d; ++k) {
      z[k] = y[k] - c[k];
      s1[k] += z[k];
    }
    int q = 0;
    for (int k = 0; k < d; ++k)
      for (int l = k; l < d; ++l) s2[q++] += z[k] * z[l];
  }
  void flush(double* t1, double* t2, int lanes) {
    for (int k = 0; k < d; ++k) t1[k] += lane_sum(s1[k], lanes);
    int q = 0;
    for (int k = 0; k < d; ++k)
      for (int l = k; l < d; ++l) t2[k * d + l] += lane_sum(s2[q++], lanes);
    clear();
  }
  static double lane_sum(const W& v, int lanes) {
    if constexpr (std::is_same<W, T>::value) {
      return static_cast<double>(v);
    } else {
      double t = 0;
      for (int l = 0; l < lanes; ++l) t += static_cast<double>(v[l]);
      return t;
    }
  }
};

// The step of one column group: x (d values of type W) -> y, written to y.
template <typename T, typename W, int D>
inline void step_values(int d, const W* x, W* y, const T* K, const T* bv, T h, int scheme) {
  constexpr int DM = D > 0 ? D : 64;
  const int dd = D > 0 ? D : d;
  W f[DM];
  for (int k = 0; k < dd; ++k) {
    W a = x[0] * K[k * dd] + bv[k];
    for (int l = 1; l < dd; ++l) a += x[l] * K[k * dd + l];
    f[k] = a;
  }
  W coef = W{} + T(1);
  if (scheme == 1) {
    W sx = x[0] * f[0];
    for (int k = 1; k < dd; ++k) sx += x[k] * f[k];
    coef = T(1) - h * sx;
  }
  W n2 = W{};
  for (int k = 0; k < dd; ++k) {
    y[k] = coef * x[k] + h * f[k];
    n2 += y[k] * y[k];
  }
  const W r = inv_sqrt(n2);
  for (int k = 0; k < dd; ++k) y[k] *= r;
}

// One step (scheme >= 0) or only the moments (scheme < 0: y is not written, the moments are those
// of x, and the squared column norms' range goes to lo/hi) of one system.
template <typename T, int D>
void linear_pass(int d_, int64_t N, const T* xb, T* yb, const T* K, const T* bv, T h, int scheme, double* t1,
                 double* t2, T* c, T& lo, T& hi, int threads) {
  using V = typename Vec<T>::V;
  using U = typename Unaligned<T>::V;
  constexpr int L = Vec<T>::L;
  constexpr int DM = D > 0 ? D : 64;
  const int d = D > 0 ? D : d_;
  const bool step = scheme >= 0;
  // the shift: the first column of the state whose moments are taken
  {
    T x0[DM], y0[DM];
    for (int k = 0; k < d; ++k) x0[k] = xb[k * N];
    if (step) {
      step_values<T, T, D>(d, x0, y0, K, bv, h, scheme);
      for (int k = 0; k < d; ++k) c[k] = y0[k];
    } else {
      for (int k = 0; k < d; ++k) c[k] = x0[k];
    }
  }
  for (int k = 0; k < d; ++k) t1[k] = 0;
  for (int q = 0; q < d * d; ++q) t2[q] = 0;
  const int64_t nv = N / L;
  // groups [g0, g1) of L columns; sums into u1, u2 (float64), norm range into rlo, rhi
  auto run = [&](int64_t g0, int64_t g1, double* u1, double* u2, T& rlo, T& rhi) {
    constexpr int QM = DM * (DM + 1) / 2;
    V a1[DM], a2[QM];  // register accumulators (fixed D: fully unrolled), flushed every kFlush groups
    const int nq = d * (d + 1) / 2;
    auto flush = [&]() {
      for (int k = 0; k < d; ++k) {
        u1[k] += Columns<T, V, D>::lane_sum(a1[k], L);
        a1[k] = V{};
      }
      int q = 0;
      for (int k = 0; k < d; ++k)
        for (int l = k; l < d; ++l) {
          u2[k * d + l] += Columns<T, V, D>::lane_sum(a2[q], L);
          a2[q++] = V{};
        }
    };
    for (int k = 0; k < d; ++k) a1[k] = V{};
    for (int q = 0; q < nq; ++q) a2[q] = V{};
    // local copies: the stores to y could alias the caller's arrays, which would force reloads
    T cl[DM], kl[D > 0 ? DM * DM : 1], bl[DM];
    const T* kp = D > 0 ? kl : K;
    for (int k = 0; k < d; ++k) {
      cl[k] = c[k];
      bl[k] = step ? bv[k] : T(0);
      if (D > 0 && step)
        for (int l = 0; l < d; ++l) kl[k * d + l] = K[k * d + l];
    }
    V vlo = V{} + std::numeric_limits<T>::infinity(), vhi = V{} - std::numeric_limits<T>::infinity();
    for (int64_t g0b = g0; g0b < g1; g0b += kFlush) {
      const int64_t g1b = std::min(g1, g0b + kFlush);
      if (step) {
        for (int64_t g = g0b; g < g1b; ++g) {
          V xv[DM], yv[DM];
          for (int k = 0; k < d; ++k) xv[k] = *reinterpret_cast<const U*>(xb + k * N + g * L);
          step_values<T, V, D>(d, xv, yv, kp, bl, h, scheme);
          for (int k = 0; k < d; ++k) {
            *reinterpret_cast<U*>(yb + k * N + g * L) = yv[k];
            yv[k] -= cl[k];
            a1[k] += yv[k];
          }
          int q = 0;
          for (int k = 0; k < d; ++k)
            for (int l = k; l < d; ++l) a2[q++] += yv[k] * yv[l];
        }
      } else {
        for (int64_t g = g0b; g < g1b; ++g) {
          V xv[DM];
          for (int k = 0; k < d; ++k) xv[k] = *reinterpret_cast<const U*>(xb + k * N + g * L);
          V n2 = xv[0] * xv[0];
          for (int k = 1; k < d; ++k) n2 += xv[k] * xv[k];
          vlo = n2 < vlo ? n2 : vlo;
          vhi = n2 > vhi ? n2 : vhi;
          for (int k = 0; k < d; ++k) {
            xv[k] -= cl[k];
            a1[k] += xv[k];
          }
          int q = 0;
          for (int k = 0; k < d; ++k)
            for (int l = k; l < d; ++l) a2[q++] += xv[k] * xv[l];
        }
      }
      flush();
    }
    for (int l = 0; l < L; ++l) {
      rlo = std::min(rlo, vlo[l]);
      rhi = std::max(rhi, vhi[l]);
    }
  };
  // threads share the column groups in contiguous ranges (fixed for a given thread count, so the
  // sums are reproducible); below kMinThreadColumns columns per thread one thread does all
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, nv * L / kMinThreadColumns)));
  if (nt == 1) {
    run(0, nv, t1, t2, lo, hi);
  } else {
    std::vector<double> p1(nt * d, 0.0), p2(nt * d * d, 0.0);
    std::vector<T> plo(nt, lo), phi(nt, hi);
    std::vector<std::thread> pool;
    for (int t = 1; t < nt; ++t)
      pool.emplace_back(run, nv * t / nt, nv * (t + 1) / nt, &p1[t * d], &p2[t * d * d], std::ref(plo[t]),
                        std::ref(phi[t]));
    run(0, nv / nt, &p1[0], &p2[0], plo[0], phi[0]);
    for (auto& th : pool) th.join();
    for (int t = 0; t < nt; ++t) {
      for (int k = 0; k < d; ++k) t1[k] += p1[t * d + k];
      for (int q = 0; q < d * d; ++q) t2[q] += p2[t * d * d + q];
      lo = std::min(lo, plo[t]);
      hi = std::max(hi, phi[t]);
    }
  }
  Columns<T, T, D> ss(d);  // the remaining N mod L columns, one at a time
  for (int64_t j = nv * L; j < N; ++j) {
    T xs[DM], ys[DM];
    for (int k = 0; k < d; ++k) xs[k] = xb[k * N + j];
    if (step) {
      step_values<T, T, D>(d, xs, ys, K, bv, h, scheme);
      for (int k = 0; k < d; ++k) yb[k * N + j] = ys[k];
      ss.add(ys, c);
    } else {
      T n2 = 0;
      for (int k = 0; k < d; ++k) n2 += xs[k] * xs[k];
      lo = std::min(lo, n2);
      hi = std::max(hi, n2);
      ss.add(xs, c);
    }
  }
  ss.flush(t1, t2, 1);
}

template <typename T>
void linear_dispatch(int d, int64_t N, const T* xb, T* yb, const T* K, const T* bv, T h, int scheme, double* t1,
                     double* t2, T* c, T& lo, T& hi, int threads) {
  switch (d) {
#define MF_CASE(DD) \
  case DD:          \
    return linear_pass<T, DD>(d, N, xb, yb, K, bv, h, scheme, t1, t2, c, lo, hi, threads);
    MF_CASE(2) MF_CASE(3) MF_CASE(4) MF_CASE(5) MF_CASE(6) MF_CASE(7) MF_CASE(8) MF_CASE(16)
#undef MF_CASE
    default:
      return linear_pass<T, 0>(d, N, xb, yb, K, bv, h, scheme, t1, t2, c, lo, hi, threads);
  }
}

template <typename T>
void write_sums(int d, const double* s1, const double* s2, const T* c, T* o1, T* o2, T* oc) {
  for (int k = 0; k < d; ++k) {
    o1[k] = static_cast<T>(s1[k]);
    oc[k] = c[k];
    for (int l = 0; l < d; ++l) o2[k * d + l] = static_cast<T>(k <= l ? s2[k * d + l] : s2[l * d + k]);
  }
}

template <ffi::DataType DT>
ffi::Error LinearMomentsImpl(ffi::Buffer<DT> x, int32_t threads, ffi::ResultBuffer<DT> s1o, ffi::ResultBuffer<DT> s2o,
                             ffi::ResultBuffer<DT> co, ffi::ResultBuffer<DT> nrm) {
  using T = ffi::NativeType<DT>;
  auto dims = x.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("LinearMoments: x must be (..., d, N)");
  const int d = static_cast<int>(dims[dims.size() - 2]);
  const int64_t N = dims[dims.size() - 1];
  if (d < 1 || d > 64 || N < 1) return ffi::Error::InvalidArgument("LinearMoments: needs 1 <= d <= 64 and N >= 1");
  const int64_t batch = static_cast<int64_t>(x.element_count()) / (d * N);
  std::vector<double> s1(d), s2(d * d);
  std::vector<T> c(d);
  for (int64_t b = 0; b < batch; ++b) {
    T lo = std::numeric_limits<T>::infinity(), hi = -lo;
    linear_dispatch<T>(d, N, x.typed_data() + b * d * N, nullptr, nullptr, nullptr, T(0), -1, s1.data(), s2.data(),
                       c.data(), lo, hi, threads);
    write_sums(d, s1.data(), s2.data(), c.data(), s1o->typed_data() + b * d, s2o->typed_data() + b * d * d,
               co->typed_data() + b * d);
    nrm->typed_data()[2 * b] = lo;
    nrm->typed_data()[2 * b + 1] = hi;
  }
  return ffi::Error::Success();
}

// One step of the linear kernel on x (d, N), the field F = K x + b given by the caller from the
// moments of x (solvers/feature_major.py):
//   scheme 0, "layer":  y = normalize(x + h F)
//   scheme 1, "euler":  y = normalize((1 - h <x, F>) x + h F)
// and the shifted sums of y (shift c = y[:, 0]) for the next step's moments.
template <ffi::DataType DT>
ffi::Error LinearStepImpl(ffi::Buffer<DT> x, ffi::Buffer<DT> kmat, ffi::Buffer<DT> bvec, ffi::Buffer<DT> hbuf,
                          int32_t scheme, int32_t threads, ffi::ResultBuffer<DT> yo, ffi::ResultBuffer<DT> s1o,
                          ffi::ResultBuffer<DT> s2o, ffi::ResultBuffer<DT> co) {
  using T = ffi::NativeType<DT>;
  auto dims = x.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("LinearStep: x must be (..., d, N)");
  if (scheme != 0 && scheme != 1) return ffi::Error::InvalidArgument("LinearStep: scheme must be 0 or 1");
  const int d = static_cast<int>(dims[dims.size() - 2]);
  const int64_t N = dims[dims.size() - 1];
  if (d < 1 || d > 64 || N < 1) return ffi::Error::InvalidArgument("LinearStep: needs 1 <= d <= 64 and N >= 1");
  const int64_t batch = static_cast<int64_t>(x.element_count()) / (d * N);
  std::vector<double> s1(d), s2(d * d);
  std::vector<T> c(d);
  for (int64_t b = 0; b < batch; ++b) {
    T lo = 0, hi = 0;
    linear_dispatch<T>(d, N, x.typed_data() + b * d * N, yo->typed_data() + b * d * N, kmat.typed_data() + b * d * d,
                       bvec.typed_data() + b * d, hbuf.typed_data()[b], scheme, s1.data(), s2.data(), c.data(), lo,
                       hi, threads);
    write_sums(d, s1.data(), s2.data(), c.data(), s1o->typed_data() + b * d, s2o->typed_data() + b * d * d,
               co->typed_data() + b * d);
  }
  return ffi::Error::Success();
}

}  // namespace

#define MEANFIELD_PHASE(NAME, DT)                                                                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, PhaseRolloutImpl<DT>,                                         \
                                ffi::Ffi::Bind()                                                    \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Arg<ffi::Buffer<ffi::S32>>()                                   \
                                    .Attr<int32_t>("threads")                                       \
                                    .Ret<ffi::Buffer<ffi::S32>>()                                   \
                                    .Ret<ffi::Buffer<ffi::S32>>()                                   \
                                    .Ret<ffi::Buffer<DT>>());

#define MEANFIELD_MOMENTS(NAME, DT)                                                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, LinearMomentsImpl<DT>,                                        \
                                ffi::Ffi::Bind()                                                    \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Attr<int32_t>("threads")                                       \
                                    .Ret<ffi::Buffer<DT>>()                                         \
                                    .Ret<ffi::Buffer<DT>>()                                         \
                                    .Ret<ffi::Buffer<DT>>()                                         \
                                    .Ret<ffi::Buffer<DT>>());

#define MEANFIELD_STEP(NAME, DT)                                                                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, LinearStepImpl<DT>,                                           \
                                ffi::Ffi::Bind()                                                    \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Arg<ffi::Buffer<DT>>()                                         \
                                    .Attr<int32_t>("scheme")                                        \
                                    .Attr<int32_t>("threads")                                       \
                                    .Ret<ffi::Buffer<DT>>()                                         \
                                    .Ret<ffi::Buffer<DT>>()                                         \
                                    .Ret<ffi::Buffer<DT>>()                                         \
                                    .Ret<ffi::Buffer<DT>>());

MEANFIELD_PHASE(MeanfieldPhaseRolloutF32, ffi::F32)
MEANFIELD_PHASE(MeanfieldPhaseRolloutF64, ffi::F64)
MEANFIELD_MOMENTS(MeanfieldLinearMomentsF32, ffi::F32)
MEANFIELD_MOMENTS(MeanfieldLinearMomentsF64, ffi::F64)
MEANFIELD_STEP(MeanfieldLinearStepF32, ffi::F32)
MEANFIELD_STEP(MeanfieldLinearStepF64, ffi::F64)
