// The linear kernel's step on the feature-major state (issue 11, target 6; benchmarks/README.md
// says what was measured and why): one pass over x (d, N) per step that reads x, writes
// y = step(x) and accumulates the key moments of y for the next step (the XLA program of
// solvers/feature_major.py needs three passes). The field is F(x) = (1/M)(m + alpha Sigma x)
// (docs/theory.md, Eq. 3), given by the caller as F = K x + b from the moments of x; only the order
// of floating-point operations differs from the XLA program (tests/solvers/test_native.py).
//
// Each group of L columns (one vector per feature row, simd.h) is loaded once, stepped in
// registers, stored, and its shifted moments are added to register accumulators that are flushed
// to float64 totals every kFlush groups. D = d at compile time (2..8, 16); other d take the same
// code with a run-time d (D = 0) and arrays in memory.
//
// Exported: MeanfieldLinearMomentsF32 / F64 and MeanfieldLinearStepF32 / F64 (XLA FFI handlers;
// solvers/native.py registers them).

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kFlush = 32;
constexpr int64_t kMinThreadColumns = 1 << 16;

#define MF_INLINE inline __attribute__((always_inline))

// What a pass over the columns does. kLayer and kEuler are the values of LinearStep's "scheme"
// attribute (solvers/native.py: SCHEME_CODES, checked by tests/solvers/test_native_source.py):
//   kLayer:  y = normalize(x + h F)
//   kEuler:  y = normalize((1 - h <x, F>) x + h F)
// kMoments is LinearMoments' pass: no step, the moments (and the squared norms' range) of x.
enum class Scheme : int32_t { kMoments = -1, kLayer = 0, kEuler = 1 };

// One system's pass: the state x (d, N), the new state y (written unless kMoments) and the step
// F = K x + b (K: d x d, b: d) with step size h.
template <typename T>
struct Pass {
  int d;
  int64_t N;
  const T* x;
  T* y;
  const T* K;
  const T* b;
  T h;
  Scheme scheme;
};

// A pass's results: the float64 sums s1 = sum_j (z_j - c), s2 = sum_j (z_j - c)(z_j - c)^T (upper
// triangle, d x d) of the columns z of y (of x for kMoments), the shift c = z[:, 0], and for
// kMoments the range [lo, hi] of the squared column norms (lo, hi start at +inf, -inf).
template <typename T>
struct Sums {
  double* s1;
  double* s2;
  T* c;
  T lo, hi;
};

// Moment accumulators of single columns (the N mod L columns after the last group), and lane_sum.
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
inline void step_values(int d, const W* x, W* y, const T* K, const T* bv, T h, Scheme scheme) {
  constexpr int DM = D > 0 ? D : 64;
  const int dd = D > 0 ? D : d;
  W f[DM];
  for (int k = 0; k < dd; ++k) {
    W a = x[0] * K[k * dd] + bv[k];
    for (int l = 1; l < dd; ++l) a += x[l] * K[k * dd + l];
    f[k] = a;
  }
  W coef = W{} + T(1);
  if (scheme == Scheme::kEuler) {
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

// One thread's vector accumulators: the shifted sums of its column groups in the working precision
// (flushed to float64 every kFlush groups) and the squared norms' range.
template <typename T, int D>
struct GroupSums {
  using V = typename Vec<T>::V;
  static constexpr int L = Vec<T>::L;
  static constexpr int DM = D > 0 ? D : 64;
  V a1[DM], a2[DM * (DM + 1) / 2];
  V vlo = V{} + std::numeric_limits<T>::infinity(), vhi = V{} - std::numeric_limits<T>::infinity();

  MF_INLINE void clear(int d) {
    for (int k = 0; k < d; ++k) a1[k] = V{};
    for (int q = 0; q < d * (d + 1) / 2; ++q) a2[q] = V{};
  }
  // z (d vectors: a group's columns) shifted by c, added to the sums
  MF_INLINE void add(int d, V* z, const T* c) {
    for (int k = 0; k < d; ++k) {
      z[k] -= c[k];
      a1[k] += z[k];
    }
    int q = 0;
    for (int k = 0; k < d; ++k)
      for (int l = k; l < d; ++l) a2[q++] += z[k] * z[l];
  }
  MF_INLINE void add_norm(V n2) {
    vlo = n2 < vlo ? n2 : vlo;
    vhi = n2 > vhi ? n2 : vhi;
  }
  MF_INLINE void flush(int d, double* u1, double* u2) {
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
  }
  MF_INLINE void range(T& lo, T& hi) const {
    for (int l = 0; l < L; ++l) {
      lo = std::min(lo, vlo[l]);
      hi = std::max(hi, vhi[l]);
    }
  }
};

// Column groups [g0, g1) of L columns: stepped (unless kMoments) and their shifted sums added to u1,
// u2 (float64), the squared norms' range (kMoments) to rlo, rhi.
template <typename T, int D>
void column_range(const Pass<T>& p, const T* c, int64_t g0, int64_t g1, double* u1, double* u2, T& rlo, T& rhi) {
  using V = typename Vec<T>::V;
  using U = typename Unaligned<T>::V;
  constexpr int L = Vec<T>::L;
  constexpr int DM = D > 0 ? D : 64;
  const int d = D > 0 ? D : p.d;
  const int64_t N = p.N;
  const T* xb = p.x;
  T* yb = p.y;
  const T h = p.h;
  const Scheme scheme = p.scheme;
  const bool step = scheme != Scheme::kMoments;
  GroupSums<T, D> acc;  // register accumulators (fixed D: fully unrolled)
  acc.clear(d);
  // local copies: the stores to y could alias the caller's arrays, which would force reloads
  T cl[DM], kl[D > 0 ? DM * DM : 1], bl[DM];
  const T* kp = D > 0 ? kl : p.K;
  for (int k = 0; k < d; ++k) {
    cl[k] = c[k];
    bl[k] = step ? p.b[k] : T(0);
    if (D > 0 && step)
      for (int l = 0; l < d; ++l) kl[k * d + l] = p.K[k * d + l];
  }
  for (int64_t g0b = g0; g0b < g1; g0b += kFlush) {
    const int64_t g1b = std::min(g1, g0b + kFlush);
    if (step) {
      for (int64_t g = g0b; g < g1b; ++g) {
        V xv[DM], yv[DM];
        for (int k = 0; k < d; ++k) xv[k] = *reinterpret_cast<const U*>(xb + k * N + g * L);
        step_values<T, V, D>(d, xv, yv, kp, bl, h, scheme);
        for (int k = 0; k < d; ++k) *reinterpret_cast<U*>(yb + k * N + g * L) = yv[k];
        acc.add(d, yv, cl);
      }
    } else {
      for (int64_t g = g0b; g < g1b; ++g) {
        V xv[DM];
        for (int k = 0; k < d; ++k) xv[k] = *reinterpret_cast<const U*>(xb + k * N + g * L);
        V n2 = xv[0] * xv[0];
        for (int k = 1; k < d; ++k) n2 += xv[k] * xv[k];
        acc.add_norm(n2);
        acc.add(d, xv, cl);
      }
    }
    acc.flush(d, u1, u2);
  }
  acc.range(rlo, rhi);
}

// The shift: the first column of the state whose moments are taken (of y = step(x), or of x).
template <typename T, int D>
void shift_column(const Pass<T>& p, T* c) {
  constexpr int DM = D > 0 ? D : 64;
  const int d = D > 0 ? D : p.d;
  T x0[DM], y0[DM];
  for (int k = 0; k < d; ++k) x0[k] = p.x[k * p.N];
  if (p.scheme != Scheme::kMoments) {
    step_values<T, T, D>(d, x0, y0, p.K, p.b, p.h, p.scheme);
    for (int k = 0; k < d; ++k) c[k] = y0[k];
  } else {
    for (int k = 0; k < d; ++k) c[k] = x0[k];
  }
}

// The remaining N mod L columns, one at a time.
template <typename T, int D>
void tail_columns(const Pass<T>& p, int64_t j0, Sums<T>& out) {
  constexpr int DM = D > 0 ? D : 64;
  const int d = D > 0 ? D : p.d;
  const int64_t N = p.N;
  Columns<T, T, D> ss(d);
  for (int64_t j = j0; j < N; ++j) {
    T xs[DM], ys[DM];
    for (int k = 0; k < d; ++k) xs[k] = p.x[k * N + j];
    if (p.scheme != Scheme::kMoments) {
      step_values<T, T, D>(d, xs, ys, p.K, p.b, p.h, p.scheme);
      for (int k = 0; k < d; ++k) p.y[k * N + j] = ys[k];
      ss.add(ys, out.c);
    } else {
      T n2 = 0;
      for (int k = 0; k < d; ++k) n2 += xs[k] * xs[k];
      out.lo = std::min(out.lo, n2);
      out.hi = std::max(out.hi, n2);
      ss.add(xs, out.c);
    }
  }
  ss.flush(out.s1, out.s2, 1);
}

// One system's pass (one step, or only the moments for kMoments) into out.
template <typename T, int D>
void linear_pass(const Pass<T>& p, Sums<T>& out, int threads) {
  constexpr int L = Vec<T>::L;
  const int d = D > 0 ? D : p.d;
  shift_column<T, D>(p, out.c);
  for (int k = 0; k < d; ++k) out.s1[k] = 0;
  for (int q = 0; q < d * d; ++q) out.s2[q] = 0;
  const int64_t nv = p.N / L;
  // threads share the column groups in contiguous ranges (fixed for a given thread count, so the
  // sums are reproducible); below kMinThreadColumns columns per thread one thread does all
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, nv * L / kMinThreadColumns)));
  if (nt == 1) {
    column_range<T, D>(p, out.c, 0, nv, out.s1, out.s2, out.lo, out.hi);
  } else {
    std::vector<double> p1(nt * d, 0.0), p2(nt * d * d, 0.0);
    std::vector<T> plo(nt, out.lo), phi(nt, out.hi);
    run_threads(nt, [&](int t) {
      column_range<T, D>(p, out.c, nv * t / nt, nv * (t + 1) / nt, &p1[t * d], &p2[t * d * d], plo[t], phi[t]);
    });
    for (int t = 0; t < nt; ++t) {
      for (int k = 0; k < d; ++k) out.s1[k] += p1[t * d + k];
      for (int q = 0; q < d * d; ++q) out.s2[q] += p2[t * d * d + q];
      out.lo = std::min(out.lo, plo[t]);
      out.hi = std::max(out.hi, phi[t]);
    }
  }
  tail_columns<T, D>(p, nv * L, out);
}

template <typename T>
void linear_dispatch(const Pass<T>& p, Sums<T>& out, int threads) {
  switch (p.d) {
#define MF_CASE(DD) \
  case DD:          \
    return linear_pass<T, DD>(p, out, threads);
    MF_CASE(2) MF_CASE(3) MF_CASE(4) MF_CASE(5) MF_CASE(6) MF_CASE(7) MF_CASE(8) MF_CASE(16)
#undef MF_CASE
    default:
      return linear_pass<T, 0>(p, out, threads);
  }
}

template <typename T>
void write_sums(int d, const Sums<T>& s, T* o1, T* o2, T* oc) {
  for (int k = 0; k < d; ++k) {
    o1[k] = static_cast<T>(s.s1[k]);
    oc[k] = s.c[k];
    for (int l = 0; l < d; ++l) o2[k * d + l] = static_cast<T>(k <= l ? s.s2[k * d + l] : s.s2[l * d + k]);
  }
}

// The (d, N) shape of x (..., d, N) and its batch size, or an error naming the kernel.
ffi::Error columns_shape(const char* name, ffi::Span<const int64_t> dims, int64_t count, int& d, int64_t& N,
                         int64_t& batch) {
  if (dims.size() < 2) return ffi::Error::InvalidArgument(std::string(name) + ": x must be (..., d, N)");
  d = static_cast<int>(dims[dims.size() - 2]);
  N = dims[dims.size() - 1];
  if (d < 1 || d > 64 || N < 1)
    return ffi::Error::InvalidArgument(std::string(name) + ": needs 1 <= d <= 64 and N >= 1");
  batch = count / (d * N);
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error LinearMomentsImpl(ffi::Buffer<DT> x, int32_t threads, ffi::ResultBuffer<DT> s1o, ffi::ResultBuffer<DT> s2o,
                             ffi::ResultBuffer<DT> co, ffi::ResultBuffer<DT> nrm) {
  using T = ffi::NativeType<DT>;
  int d;
  int64_t N, batch;
  ffi::Error err = columns_shape("LinearMoments", x.dimensions(), x.element_count(), d, N, batch);
  if (err.failure()) return err;
  std::vector<double> s1(d), s2(d * d);
  std::vector<T> c(d);
  for (int64_t b = 0; b < batch; ++b) {
    const Pass<T> p{d, N, x.typed_data() + b * d * N, nullptr, nullptr, nullptr, T(0), Scheme::kMoments};
    Sums<T> out{s1.data(), s2.data(), c.data(), std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity()};
    linear_dispatch<T>(p, out, threads);
    write_sums(d, out, s1o->typed_data() + b * d, s2o->typed_data() + b * d * d, co->typed_data() + b * d);
    nrm->typed_data()[2 * b] = out.lo;
    nrm->typed_data()[2 * b + 1] = out.hi;
  }
  return ffi::Error::Success();
}

// One step (Scheme) of the linear kernel on x (d, N), the field F = K x + b given by the caller from
// the moments of x (solvers/feature_major.py), and the shifted sums of y (shift c = y[:, 0]) for the
// next step's moments.
template <ffi::DataType DT>
ffi::Error LinearStepImpl(ffi::Buffer<DT> x, ffi::Buffer<DT> kmat, ffi::Buffer<DT> bvec, ffi::Buffer<DT> hbuf,
                          int32_t scheme, int32_t threads, ffi::ResultBuffer<DT> yo, ffi::ResultBuffer<DT> s1o,
                          ffi::ResultBuffer<DT> s2o, ffi::ResultBuffer<DT> co) {
  using T = ffi::NativeType<DT>;
  int d;
  int64_t N, batch;
  ffi::Error err = columns_shape("LinearStep", x.dimensions(), x.element_count(), d, N, batch);
  if (err.failure()) return err;
  if (scheme != static_cast<int32_t>(Scheme::kLayer) && scheme != static_cast<int32_t>(Scheme::kEuler))
    return ffi::Error::InvalidArgument("LinearStep: scheme must be 0 (layer) or 1 (euler)");
  std::vector<double> s1(d), s2(d * d);
  std::vector<T> c(d);
  for (int64_t b = 0; b < batch; ++b) {
    const Pass<T> p{d, N, x.typed_data() + b * d * N, yo->typed_data() + b * d * N, kmat.typed_data() + b * d * d,
                    bvec.typed_data() + b * d, hbuf.typed_data()[b], static_cast<Scheme>(scheme)};
    Sums<T> out{s1.data(), s2.data(), c.data(), T(0), T(0)};
    linear_dispatch<T>(p, out, threads);
    write_sums(d, out, s1o->typed_data() + b * d, s2o->typed_data() + b * d * d, co->typed_data() + b * d);
  }
  return ffi::Error::Success();
}

}  // namespace

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

MEANFIELD_MOMENTS(MeanfieldLinearMomentsF32, ffi::F32)
MEANFIELD_MOMENTS(MeanfieldLinearMomentsF64, ffi::F64)
MEANFIELD_STEP(MeanfieldLinearStepF32, ffi::F32)
MEANFIELD_STEP(MeanfieldLinearStepF64, ffi::F64)
