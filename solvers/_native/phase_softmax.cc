// Phase rollouts of the softmax transformer layer (issue 11, target 4; benchmarks/README.md says
// what was measured and why): whole-time rollouts of many small systems (n tokens of dimension d,
// dense n x n Gram matrices), each (beta, system) pair kept in L1 for all its steps, with the
// phase-diagram statistics recorded at the save points and the tokens after the last step
// returned. The layer (docs/theory.md) is
// x_i <- normalize(x_i + h sum_j A_ij x_j), A = softmax_j(beta <x_i, x_j>), as in solvers/dense.py;
// only the order of floating-point operations differs (tests/solvers/test_native.py). The
// exponentials use the symmetry of the Gram matrix (n (n + 1) / 2 instead of n^2 per step) and the
// vectorisable exp of simd.h.
//
// L (beta, system) pairs advance together, one per lane of a vector (simd.h): no reductions across
// lanes and no masked remainders, whatever n and d are. A group's state (n d vectors: 16 KB for
// n = 32, d = 8, double) stays in L1 for all its steps.
//
// Exported: MeanfieldPhaseRolloutF32 / F64 (XLA FFI handlers; solvers/native.py registers them).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One save's statistics, per lane (lanes [0, valid) are written; entry l at pairs[l * stride],
// clusters[l * stride], order[l * stride]): pairs = ordered pairs i != j with g_ij > pt; clusters =
// connected components of g_ij > ct (the same number as the label propagation of
// solvers/dense.py); order = |mean token|.
template <typename T>
struct SaveTo {
  T pt, ct;
  int valid;
  int32_t* pairs;
  int32_t* clusters;
  T* order;
  int64_t stride;
};

template <typename T>
struct PhaseGroup {
  using V = typename Vec<T>::V;
  using I = decltype(V{} > V{});  // lane masks: integer vectors of -1 / 0
  static constexpr int L = Vec<T>::L;

  // The group: L systems of n tokens in d dimensions, lane l at inverse temperature beta[l].
  int n, d;
  V beta;
  std::vector<V> x, y;     // the state (n d, token-major) and the next one
  std::vector<V> acc, rs;  // layer_any: the sums sum_j W_ij x_j (n d) and sum_j W_ij (n)
  std::vector<V> w;        // layer_w: the weights W (n n)
  // The statistics of one save, accumulated pair by pair (stats_begin, stats_pair, stats_end).
  // With n <= lane bits (words), one adjacency word per token and lane, built with vector
  // operations, then a breadth-first search on bitsets per lane; otherwise union-find (parent).
  bool words;
  I np{};  // per lane: the pairs i < j with g_ij > pt
  std::vector<I> adj;
  std::vector<int> parent;
  int32_t comps[L];

  PhaseGroup(int n_, int d_)
      : n(n_), d(d_), x(n_ * d_), y(n_ * d_), acc(n_ * d_), rs(n_), w(n_ * n_),
        words(n_ <= static_cast<int>(8 * sizeof(T))), adj(n_), parent(L * n_) {}

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
  // With STATS, the statistics of x (the state before the step) go to *save.
  template <bool STATS>
  void layer_any(T h, const SaveTo<T>* save) {
    std::fill(acc.begin(), acc.end(), V{});
    std::fill(rs.begin(), rs.end(), V{});
    if (STATS) stats_begin();
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
        if (STATS) stats_pair(i, j, a, *save);
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
    if (STATS) stats_end(*save);
    for (int i = 0; i < n; ++i) output_row(i, d, h / rs[i], &acc[i * d]);
    x.swap(y);
  }

  // The same step for d known at compile time, in two passes: the pairs i <= j write W_ij = W_ji
  // (n x n vectors, in L2), then every row's sums are taken from W with register accumulators. It
  // trades the scatter into row j's sums (d loads and d stores per pair) for two stores and two
  // loads (measured 1.3-1.4x faster; a one-pass variant that uses row i's weights at once was slower).
  template <int D, bool STATS>
  void layer_w(T h, const SaveTo<T>* save) {
    static_assert(D > 0, "compile-time d only");
    if (STATS) stats_begin();
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
        if (STATS) stats_pair(i, j, a, *save);
        const V e = vexp(beta * (a - T(1)));
        w[i * n + j] = e;
        w[j * n + i] = e;
      }
    }
    if (STATS) stats_end(*save);
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

  template <bool STATS>
  void layer_d(T h, const SaveTo<T>* save) {
    if (d == 8)
      layer_w<8, STATS>(h, save);
    else if (d == 4)
      layer_w<4, STATS>(h, save);
    else if (d == 16)
      layer_w<16, STATS>(h, save);
    else
      layer_any<STATS>(h, save);
  }

  // One step. With save != nullptr, the statistics of the state before the step (a save) are taken
  // from the step's own dot products and written to *save.
  void layer(T h, const SaveTo<T>* save) {
    if (save)
      layer_d<true>(h, save);
    else
      layer_d<false>(h, save);
  }

  // The statistics of the current state x, written to save (the last save, or one that no step follows).
  void statistics(const SaveTo<T>& save) {
    stats_begin();
    for (int i = 0; i < n; ++i) {
      const V* xi = &x[i * d];
      for (int j = i + 1; j < n; ++j) {
        const V* xj = &x[j * d];
        V a = xi[0] * xj[0];
        for (int k = 1; k < d; ++k) a += xi[k] * xj[k];
        stats_pair(i, j, a, save);
      }
    }
    stats_end(save);
  }

  // The statistics in three parts, so that a step can take the pairs from its own dot products:
  // stats_begin(); stats_pair(i, j, <x_i, x_j>) for every i < j; stats_end() (which also takes the
  // order parameter of x and writes all three).
  void stats_begin() {
    np = I{};
    for (int l = 0; l < L; ++l) {
      comps[l] = n;
      if (!words)
        for (int i = 0; i < n; ++i) parent[l * n + i] = i;
    }
    if (words) std::fill(adj.begin(), adj.end(), I{});
  }

  static int find(int* parent, int a) {
    while (parent[a] != a) a = parent[a] = parent[parent[a]];
    return a;
  }

  inline void stats_pair(int i, int j, V a, const SaveTo<T>& save) {
    np -= a > save.pt;
    const I joined = a > save.ct;
    if (words) {
      using S = typename std::remove_reference<decltype(joined[0])>::type;
      adj[i] |= joined & static_cast<S>(static_cast<uint64_t>(1) << j);
      adj[j] |= joined & static_cast<S>(static_cast<uint64_t>(1) << i);
      return;
    }
    for (int l = 0; l < save.valid; ++l) {
      if (!joined[l]) continue;
      int* par = &parent[l * n];
      const int u = find(par, i), v = find(par, j);
      if (u != v) {
        par[std::max(u, v)] = std::min(u, v);
        --comps[l];
      }
    }
  }

  // Lane l's connected components from the adjacency words: breadth-first searches on bitsets.
  int components_from_words(int l) const {
    const uint64_t all = n == 64 ? ~static_cast<uint64_t>(0) : (static_cast<uint64_t>(1) << n) - 1;
    uint64_t todo = all;
    int c = 0;
    while (todo) {
      uint64_t comp = todo & (~todo + 1), front = comp;  // lowest unvisited token
      while (front) {
        uint64_t next = 0;
        for (uint64_t f = front; f; f &= f - 1) next |= static_cast<uint64_t>(adj[__builtin_ctzll(f)][l]) & all;
        front = next & ~comp;
        comp |= front;
      }
      todo &= ~comp;
      ++c;
    }
    return c;
  }

  void stats_end(const SaveTo<T>& save) {
    if (words)
      for (int l = 0; l < save.valid; ++l) comps[l] = components_from_words(l);
    V m2 = V{};
    for (int k = 0; k < d; ++k) {
      V s = V{};
      for (int i = 0; i < n; ++i) s += x[i * d + k];
      s /= T(n);
      m2 += s * s;
    }
    for (int l = 0; l < save.valid; ++l) {
      save.pairs[l * save.stride] = static_cast<int32_t>(2 * np[l]);
      save.clusters[l * save.stride] = comps[l];
      save.order[l * save.stride] = std::sqrt(m2[l]);
    }
  }
};

// The rollout's inputs and outputs, as PhaseRolloutImpl received them: nb betas x B systems
// (x0: B x n x d), S saves after seg[0], seg[1], ... steps; outputs (nb, B, S) and the final
// tokens xf (nb, B, n, d), the state after the last step.
template <typename T>
struct Rollout {
  int64_t B, nb;
  int n, d, S;
  const T* x0;
  const T* betas;
  T h, pt, ct;
  const int32_t* seg;
  int32_t* pairs;
  int32_t* clusters;
  T* order;
  T* xf;
};

// Loads group q: lane l takes the (beta, system) pair q L + l (padding lanes repeat the last pair;
// their results are dropped). Returns the number of valid lanes.
template <typename T>
int load_group(PhaseGroup<T>& grp, const Rollout<T>& r, int64_t q) {
  constexpr int L = Vec<T>::L;
  const int64_t p0 = q * L;
  const int valid = static_cast<int>(std::min<int64_t>(L, r.nb * r.B - p0));
  for (int l = 0; l < L; ++l) {
    const int64_t p = p0 + std::min(l, valid - 1);
    grp.beta[l] = r.betas[p / r.B];
    const T* src = r.x0 + (p % r.B) * r.n * r.d;
    for (int i = 0; i < r.n; ++i)
      for (int k = 0; k < r.d; ++k) grp.x[i * r.d + k][l] = src[i * r.d + k];
  }
  return valid;
}

// Writes group q's state to the final tokens of its valid lanes (pair p at xf + p n d).
template <typename T>
void store_group(const PhaseGroup<T>& grp, const Rollout<T>& r, int64_t q, int valid) {
  constexpr int L = Vec<T>::L;
  for (int l = 0; l < valid; ++l) {
    T* dst = r.xf + (q * L + l) * r.n * r.d;
    for (int i = 0; i < r.n; ++i)
      for (int k = 0; k < r.d; ++k) dst[i * r.d + k] = grp.x[i * r.d + k][l];
  }
}

// Groups start, start + stride, ... of the rollout, each rolled out for all its steps.
template <typename T>
void roll_groups(const Rollout<T>& r, int64_t start, int64_t stride) {
  constexpr int L = Vec<T>::L;
  const int64_t groups = (r.nb * r.B + L - 1) / L;
  PhaseGroup<T> grp(r.n, r.d);
  for (int64_t q = start; q < groups; q += stride) {
    const int valid = load_group(grp, r, q);
    const int64_t o = q * L * r.S;
    // the statistics of save s come from the first step after it when there is one
    SaveTo<T> due{};
    bool pending = false;
    for (int s = 0; s < r.S; ++s) {
      for (int32_t t = 0; t < r.seg[s]; ++t) {
        grp.layer(r.h, pending ? &due : nullptr);
        pending = false;
      }
      const SaveTo<T> save{r.pt, r.ct, valid, r.pairs + o + s, r.clusters + o + s, r.order + o + s, r.S};
      if (s + 1 < r.S && r.seg[s + 1] > 0) {
        due = save;
        pending = true;
      } else {
        grp.statistics(save);
      }
    }
    store_group(grp, r, q, valid);
  }
}

template <ffi::DataType DT>
ffi::Error PhaseRolloutImpl(ffi::Buffer<DT> x0, ffi::Buffer<DT> betas, ffi::Buffer<DT> params,
                            ffi::Buffer<ffi::S32> segments, int32_t threads,
                            ffi::ResultBuffer<ffi::S32> pairs, ffi::ResultBuffer<ffi::S32> clusters,
                            ffi::ResultBuffer<DT> order, ffi::ResultBuffer<DT> xf) {
  using T = ffi::NativeType<DT>;
  constexpr int L = Vec<T>::L;
  auto dims = x0.dimensions();
  if (dims.size() != 3) return ffi::Error::InvalidArgument("PhaseRollout: x0 must be (B, n, d)");
  if (params.element_count() != 3) return ffi::Error::InvalidArgument("PhaseRollout: params must be (h, pt, ct)");
  const T* prm = params.typed_data();
  const Rollout<T> r{dims[0], static_cast<int64_t>(betas.element_count()), static_cast<int>(dims[1]),
                     static_cast<int>(dims[2]), static_cast<int>(segments.element_count()), x0.typed_data(),
                     betas.typed_data(), prm[0], prm[1], prm[2], segments.typed_data(), pairs->typed_data(),
                     clusters->typed_data(), order->typed_data(), xf->typed_data()};
  const int64_t groups = (r.nb * r.B + L - 1) / L;
  // thread t takes the groups t, t + nt, ...
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, groups)));
  run_threads(nt, [&r, nt](int t) { roll_groups(r, t, nt); });
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
                                    .Ret<ffi::Buffer<DT>>()                                         \
                                    .Ret<ffi::Buffer<DT>>());

MEANFIELD_PHASE(MeanfieldPhaseRolloutF32, ffi::F32)
MEANFIELD_PHASE(MeanfieldPhaseRolloutF64, ffi::F64)
