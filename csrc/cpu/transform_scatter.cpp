// transform_scatter on the CPU: y[b,p] = x[b,p] + g_b (act(x[b,p] W1 + b1) W2 + b2) on the
// selected rows, every other row of y a copy of x.
//
// The selected rows (valid position, gate != 0) are listed once, in (b, slot) order.
// Forward: work item = a tile of listed rows, taken in groups of up to GROUP_TILES tiles per
// thread: each tile's rows are gathered into a per-thread fp32 tile (never a [B, K, D] tensor) for
// the first GEMM, the group's hidden rows get one activation call, then each tile's second GEMM
// result is added to the output rows, which hold x (out of place, y starts as one copy of x).
// The pre-activations z [B, K, R] (R/D of the gathered rows' size) are kept for backward.
//
// Backward, two phases without floating-point atomics or thread-count-dependent sums:
//   1. per row tile: dh = (g dy) W2^T, dz = dh * act'(z); dx rows = dy + dz W1^T; act(z)
//      and dz are stored transposed, [R, N] for the N listed rows (small: R/D of [N, D]).
//   2. per column chunk [c0, c0 + DC) of the weights: dW1^T[:, chunk] += dz^T x[:, chunk],
//      dW2[:, chunk] += act(z)^T (g dy)[:, chunk], db2 = column sums, looping over the row
//      tiles in order. Each weight-gradient element is summed by one work item in a fixed
//      order, so results do not depend on the number of threads.
// fp16/bf16 inputs are widened to fp32 tiles; float64 (for gradcheck) uses plain loops.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "kernels.h"

namespace cagul::cpu {
namespace {

constexpr int64_t WEIGHT_COLS = 128;  // columns of a weight-gradient chunk (phase 2)
constexpr int64_t WEIGHT_ROWS = 256;  // rows per GEMM in phase 2

// Forward tiles per activation call: an ATen call costs ~13 us (fp32 GELU goes through oneDNN),
// about what the scalar loop took over one [64, 64] tile.
constexpr int64_t GROUP_TILES = 8;

// Rows per forward / phase-1 tile: 64 (the weights are re-read once per tile), fewer for
// D > 8192 to bound the per-thread scratch (2 MiB per [rows, D] tile).
int64_t tile_rows(int64_t d) { return std::clamp<int64_t>(524288 / std::max<int64_t>(d, 1), 16, 64); }

// at::parallel_for grain: work items worth at least ~4 MFLOP per task, so that small problems
// run on the calling thread instead of paying for a parallel region.
int64_t grain(int64_t flops_per_item) { return std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(flops_per_item, 1)); }

// C[M, N] (+)= A[M, K] B[K, N], row-major with leading dimensions.
inline void tile_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c);
}

inline void tile_gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                      int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    double* ci = c + i * ldc;
    if (!accumulate) std::fill(ci, ci + n, 0.0);
    for (int64_t p = 0; p < k; ++p) {
      const double aip = a[i * lda + p];
      const double* bp = b + p * ldb;
      for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
    }
  }
}

// Activations, in the order of ACTIVATIONS in cagul_kernels/ops/transform_scatter.py:
// value / grad per element (backward), apply_ in place on a whole tile through ATen's
// vectorized kernel (forward: the scalar std::erf loop, which the compiler does not
// vectorize, took ~15% of the forward's time at D = 1024, R = 64).
template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}
struct GeluErf {
  static void apply_(at::Tensor& h) { at::gelu_(h); }
  template <typename T>
  static T value(T z) { return T(0.5) * z * (T(1) + std::erf(z * T(M_SQRT1_2))); }
  template <typename T>
  static T grad(T z) {
    return T(0.5) * (T(1) + std::erf(z * T(M_SQRT1_2))) + z * std::exp(T(-0.5) * z * z) * T(0.3989422804014327);
  }
};
struct GeluTanh {  // z * sigmoid(2u), u = c (z + a z^3)
  static constexpr double c = 0.7978845608028654, a = 0.044715;
  static void apply_(at::Tensor& h) { at::gelu_(h, "tanh"); }
  template <typename T>
  static T value(T z) { return z * sigmoid(T(2 * c) * (z + T(a) * z * z * z)); }
  template <typename T>
  static T grad(T z) {
    const T s = sigmoid(T(2 * c) * (z + T(a) * z * z * z));
    return s + z * s * (T(1) - s) * T(2 * c) * (T(1) + T(3 * a) * z * z);
  }
};
struct Silu {
  static void apply_(at::Tensor& h) { at::silu_(h); }
  template <typename T>
  static T value(T z) { return z * sigmoid(z); }
  template <typename T>
  static T grad(T z) {
    const T s = sigmoid(z);
    return s * (T(1) + z * (T(1) - s));
  }
};
struct Relu {
  static void apply_(at::Tensor& h) { at::relu_(h); }
  template <typename T>
  static T value(T z) { return z > T(0) ? z : T(0); }
  template <typename T>
  static T grad(T z) { return z > T(0) ? T(1) : T(0); }
};

template <typename F>
void with_activation(int64_t act, F&& fn) {
  switch (act) {
    case 0: return fn(GeluErf{});
    case 1: return fn(GeluTanh{});
    case 2: return fn(Silu{});
    case 3: return fn(Relu{});
    default: TORCH_CHECK(false, "transform_scatter: unknown activation code ", act);
  }
}

struct Row {
  int64_t batch, slot, pos;
};

// Valid positions of samples whose gate is not zero, in (batch, slot) order.
std::vector<Row> selected_rows(const at::Tensor& positions, const at::Tensor& gate) {
  const int64_t b_size = positions.size(0), k = positions.size(1);
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  const float* g = gate.const_data_ptr<float>();
  std::vector<Row> rows;
  for (int64_t b = 0; b < b_size; ++b) {
    if (g[b] == 0.0f) continue;
    for (int64_t i = 0; i < k; ++i) {
      if (pos[b * k + i] >= 0) rows.push_back({b, i, pos[b * k + i]});
    }
  }
  return rows;
}

// A [B, S, D] tensor read or written row by row (element strides).
template <typename T>
struct RowView {
  T* data;
  int64_t sb, ss, sd;
  T* row(const Row& r) const { return data + r.batch * sb + r.pos * ss; }
};

template <typename T>
RowView<T> row_view(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// dst[c] = scale * src[c * stride], widened to the accumulation type.
template <typename src_t, typename acc_t>
inline void load_row(const src_t* src, int64_t stride, int64_t n, acc_t scale, acc_t* dst) {
  if (stride == 1) {
    for (int64_t c = 0; c < n; ++c) dst[c] = scale * static_cast<acc_t>(src[c]);
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = scale * static_cast<acc_t>(src[c * stride]);
  }
}

// Requests a row's cache lines ahead of its use. The listed rows are scattered over the
// tensor, so the hardware prefetcher restarts at each one; asking for row i + 1 while row i is
// copied halved the forward's gather and scatter times at D = 1024.
template <typename T>
inline void prefetch_row(const T* row, int64_t stride, int64_t n) {
  if (stride != 1) return;
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < n * int64_t{sizeof(T)}; offset += 64) __builtin_prefetch(bytes + offset);
}

// dst[i, :n] = columns [c0, c0 + n) of the listed row rows[i], i < m, widened and times
// gate[rows[i].batch] (1 when gate is nullptr).
template <typename T, typename acc_t>
inline void gather_rows(const RowView<T>& v, const Row* rows, int64_t m, int64_t c0, int64_t n,
                        const float* gate, acc_t* dst) {
  for (int64_t i = 0; i < m; ++i) {
    if (i + 1 < m) prefetch_row(v.row(rows[i + 1]) + c0 * v.sd, v.sd, n);
    const acc_t scale = gate == nullptr ? acc_t(1) : static_cast<acc_t>(gate[rows[i].batch]);
    load_row(v.row(rows[i]) + c0 * v.sd, v.sd, n, scale, dst + i * n);
  }
}

template <typename scalar_t>
struct ForwardKernel {
  using acc_t = at::opmath_type<scalar_t>;
  RowView<const scalar_t> x;
  RowView<scalar_t> y;
  const Row* rows;
  const float* gate;
  const acc_t *w1, *b1, *w2, *b2;  // [D, R], [R], [R, D], [D]
  acc_t* z;                        // [B, K, R] pre-activations, or nullptr
  int64_t k, d, r, act;

  // Listed rows [r0, r0 + m), m <= GROUP_TILES * bm: the first GEMM tile by tile (rows gathered
  // into xt [bm, D]) into ht [m, R], one activation call for the whole group, then the second GEMM
  // tile by tile into ot [bm, D], added to the output rows, which hold x.
  void group(int64_t r0, int64_t m, int64_t bm, acc_t* xt, acc_t* ht, acc_t* ot) const {
    for (int64_t t = 0; t < m; t += bm) {
      const int64_t mt = std::min(bm, m - t);
      gather_rows(x, rows + r0 + t, mt, 0, d, nullptr, xt);
      tile_gemm(mt, r, d, xt, d, w1, r, ht + t * r, r, false);
    }
    for (int64_t i = 0; i < m; ++i) {
      acc_t* h = ht + i * r;
      for (int64_t j = 0; j < r; ++j) h[j] += b1[j];
      if (z != nullptr) std::copy(h, h + r, z + (rows[r0 + i].batch * k + rows[r0 + i].slot) * r);
    }
    at::Tensor hidden = at::from_blob(ht, {m * r}, c10::CppTypeToScalarType<acc_t>::value);
    with_activation(act, [&](auto f) { f.apply_(hidden); });
    for (int64_t t = 0; t < m; t += bm) {
      const int64_t mt = std::min(bm, m - t);
      tile_gemm(mt, d, r, ht + t * r, r, w2, d, ot, d, false);
      for (int64_t i = 0; i < mt; ++i) {
        const acc_t g = gate[rows[r0 + t + i].batch];
        const acc_t* oi = ot + i * d;
        scalar_t* dst = y.row(rows[r0 + t + i]);
        if (i + 1 < mt) prefetch_row(y.row(rows[r0 + t + i + 1]), y.sd, d);
        const auto add = [&](scalar_t& v, int64_t c) {
          v = static_cast<scalar_t>(static_cast<acc_t>(v) + g * (oi[c] + b2[c]));
        };
        if (y.sd == 1) {
          for (int64_t c = 0; c < d; ++c) add(dst[c], c);
        } else {
          for (int64_t c = 0; c < d; ++c) add(dst[c * y.sd], c);
        }
      }
    }
  }
};

template <typename scalar_t>
struct BackwardKernel {
  using acc_t = at::opmath_type<scalar_t>;
  RowView<const scalar_t> x, dy;
  scalar_t* dx;  // contiguous [B, S, D] holding dy, or nullptr
  const Row* rows;
  const float* gate;
  const acc_t* z;                  // [B, K, R]
  const acc_t *w1t, *w2t;          // W1^T [R, D], W2^T [D, R]
  acc_t *hidden_t, *dz_t;          // [R, N]: act(z)^T and dz^T of the listed rows
  int64_t n, s, k, d, r, act;

  // Phase 1 on listed rows [r0, r0 + m): gt [m, D], dh [m, R], dxt [m, D] scratch.
  void rows_tile(int64_t r0, int64_t m, acc_t* gt, acc_t* dh, acc_t* dxt) const {
    gather_rows(dy, rows + r0, m, 0, d, gate, gt);
    tile_gemm(m, r, d, gt, d, w2t, r, dh, r, false);
    with_activation(act, [&](auto f) {
      for (int64_t i = 0; i < m; ++i) {
        const acc_t* zi = z + (rows[r0 + i].batch * k + rows[r0 + i].slot) * r;
        for (int64_t j = 0; j < r; ++j) {
          const acc_t dz = dh[i * r + j] * f.grad(zi[j]);
          dh[i * r + j] = dz;
          dz_t[j * n + r0 + i] = dz;
          hidden_t[j * n + r0 + i] = f.value(zi[j]);
        }
      }
    });
    if (dx == nullptr) return;
    tile_gemm(m, d, r, dh, r, w1t, d, dxt, d, false);
    for (int64_t i = 0; i < m; ++i) {
      scalar_t* dst = dx + (rows[r0 + i].batch * s + rows[r0 + i].pos) * d;
      if (i + 1 < m) prefetch_row(dx + (rows[r0 + i + 1].batch * s + rows[r0 + i + 1].pos) * d, 1, d);
      const acc_t* upd = dxt + i * d;
      for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<scalar_t>(static_cast<acc_t>(dst[c]) + upd[c]);
    }
  }

  // Phase 2 on weight columns [c0, c0 + dc): accumulates into dw1t [R, D], dw2 [R, D], db2.
  void weight_chunk(int64_t c0, int64_t dc, acc_t* xt, acc_t* gt, acc_t* dw1t, acc_t* dw2, acc_t* db2) const {
    for (int64_t r0 = 0; r0 < n; r0 += WEIGHT_ROWS) {
      const int64_t m = std::min(WEIGHT_ROWS, n - r0);
      gather_rows(x, rows + r0, m, c0, dc, nullptr, xt);
      gather_rows(dy, rows + r0, m, c0, dc, gate, gt);
      tile_gemm(r, dc, m, dz_t + r0, n, xt, dc, dw1t + c0, d, true);
      tile_gemm(r, dc, m, hidden_t + r0, n, gt, dc, dw2 + c0, d, true);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t c = 0; c < dc; ++c) db2[c0 + c] += gt[i * dc + c];
      }
    }
  }
};

at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_common(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& gate) {
  TORCH_CHECK(x.dim() == 3, "transform_scatter: x must be [B, S, D]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() &&
                  positions.dim() == 2 && positions.size(0) == x.size(0),
              "transform_scatter: positions must be contiguous int64 [B, K]");
  TORCH_CHECK(gate.scalar_type() == at::kFloat && gate.is_contiguous() && gate.numel() == x.size(0),
              "transform_scatter: gate must be contiguous float32 [B]");
}

}  // namespace

std::vector<at::Tensor> transform_scatter(const at::Tensor& x, const at::Tensor& positions,
                                          const at::Tensor& w1, const at::Tensor& b1,
                                          const at::Tensor& w2, const at::Tensor& b2,
                                          const at::Tensor& gate, int64_t activation, bool inplace) {
  check_common(x, positions, gate);
  const at::ScalarType acc = acc_type(x);
  const at::Tensor w1c = w1.to(acc).contiguous(), b1c = b1.to(acc).contiguous();
  const at::Tensor w2c = w2.to(acc).contiguous(), b2c = b2.to(acc).contiguous();
  const int64_t b_size = x.size(0), k = positions.size(1), d = x.size(2), r = w1c.size(1);
  const std::vector<Row> rows = selected_rows(positions, gate);
  const int64_t n = static_cast<int64_t>(rows.size());
  at::Tensor y = inplace ? x : at::empty(x.sizes(), x.options()).copy_(x);
  at::Tensor z = inplace ? at::Tensor() : at::zeros({b_size, k, r}, x.options().dtype(acc));
  const int64_t bm = tile_rows(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "transform_scatter_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ForwardKernel<scalar_t> kernel{
        row_view<const scalar_t>(x), row_view<scalar_t>(y), rows.data(), gate.const_data_ptr<float>(),
        w1c.const_data_ptr<acc_t>(), b1c.const_data_ptr<acc_t>(), w2c.const_data_ptr<acc_t>(),
        b2c.const_data_ptr<acc_t>(), inplace ? nullptr : z.data_ptr<acc_t>(), k, d, r, activation};
    at::parallel_for(0, (n + bm - 1) / bm, grain(4 * bm * d * r), [&](int64_t begin, int64_t end) {
      // Scratch left uninitialised: zero-filling it (std::vector) cost more than the row gather.
      const auto xt = std::make_unique_for_overwrite<acc_t[]>(bm * d);
      const auto ht = std::make_unique_for_overwrite<acc_t[]>(GROUP_TILES * bm * r);
      const auto ot = std::make_unique_for_overwrite<acc_t[]>(bm * d);
      for (int64_t t = begin; t < end; t += GROUP_TILES) {
        const int64_t r0 = t * bm, m = std::min(std::min(GROUP_TILES, end - t) * bm, n - r0);
        kernel.group(r0, m, bm, xt.get(), ht.get(), ot.get());
      }
    });
  });
  if (inplace) return {};
  return {y, z};
}

std::vector<at::Tensor> transform_scatter_backward(const at::Tensor& dy, const at::Tensor& x,
                                                   const at::Tensor& positions, const at::Tensor& z_in,
                                                   const at::Tensor& w1, const at::Tensor& w2,
                                                   const at::Tensor& gate, int64_t activation,
                                                   bool need_dx) {
  check_common(x, positions, gate);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "transform_scatter: dy must match x in shape and dtype");
  const at::ScalarType acc = acc_type(x);
  const at::Tensor z = z_in.to(acc).contiguous();
  const at::Tensor w1t = w1.to(acc).t().contiguous(), w2t = w2.to(acc).t().contiguous();
  const int64_t s = x.size(1), k = positions.size(1), d = x.size(2), r = w1.size(1);
  const std::vector<Row> rows = selected_rows(positions, gate);
  const int64_t n = static_cast<int64_t>(rows.size());
  at::Tensor dx = need_dx ? at::empty(x.sizes(), x.options()).copy_(dy) : at::empty({0}, x.options());
  const at::TensorOptions acc_opts = x.options().dtype(acc);
  at::Tensor transposed = at::empty({2, r, n}, acc_opts);  // act(z)^T, dz^T
  at::Tensor dw1t = at::zeros({r, d}, acc_opts), dw2 = at::zeros({r, d}, acc_opts);
  at::Tensor db1 = at::empty({r}, acc_opts), db2 = at::zeros({d}, acc_opts);
  const int64_t bm = tile_rows(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "transform_scatter_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* hidden_t = transposed.data_ptr<acc_t>();
    const BackwardKernel<scalar_t> kernel{
        row_view<const scalar_t>(x), row_view<const scalar_t>(dy),
        need_dx ? dx.data_ptr<scalar_t>() : nullptr, rows.data(), gate.const_data_ptr<float>(),
        z.const_data_ptr<acc_t>(), w1t.const_data_ptr<acc_t>(), w2t.const_data_ptr<acc_t>(),
        hidden_t, hidden_t + r * n, n, s, k, d, r, activation};
    at::parallel_for(0, (n + bm - 1) / bm, grain(4 * bm * d * r), [&](int64_t begin, int64_t end) {
      const auto gt = std::make_unique_for_overwrite<acc_t[]>(bm * d);
      const auto dh = std::make_unique_for_overwrite<acc_t[]>(bm * r);
      const auto dxt = std::make_unique_for_overwrite<acc_t[]>(need_dx ? bm * d : 0);
      for (int64_t t = begin; t < end; ++t) {
        kernel.rows_tile(t * bm, std::min(bm, n - t * bm), gt.get(), dh.get(), dxt.get());
      }
    });
    const int64_t dc = std::max<int64_t>(1, std::min(WEIGHT_COLS, d));  // a divisor: never 0
    at::parallel_for(0, (d + dc - 1) / dc, grain(4 * n * dc * r), [&](int64_t begin, int64_t end) {
      const auto xt = std::make_unique_for_overwrite<acc_t[]>(WEIGHT_ROWS * dc);
      const auto gt = std::make_unique_for_overwrite<acc_t[]>(WEIGHT_ROWS * dc);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        kernel.weight_chunk(chunk * dc, std::min(dc, d - chunk * dc), xt.get(), gt.get(),
                            dw1t.data_ptr<acc_t>(), dw2.data_ptr<acc_t>(), db2.data_ptr<acc_t>());
      }
    });
    acc_t* db1_ptr = db1.data_ptr<acc_t>();
    at::parallel_for(0, r, grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        acc_t sum = 0;
        for (int64_t i = 0; i < n; ++i) sum += hidden_t[(r + j) * n + i];  // row j of dz^T
        db1_ptr[j] = sum;
      }
    });
  });
  return {dx, dw1t.t().to(w1.scalar_type()).contiguous(), db1.to(w1.scalar_type()),
          dw2.to(w2.scalar_type()), db2.to(w2.scalar_type())};
}

}  // namespace cagul::cpu
