// The `cagul` operator library: schemas (TORCH_LIBRARY) and the native CPU / CUDA kernels
// (TORCH_LIBRARY_IMPL), so graphs holding these ops run through torch.export and AOTInductor
// without Python. Fake (meta) implementations, autograd formulas and the Triton / reference
// twins of every op are registered from Python (cagul_kernels/ops). Argument shapes and dtypes
// are checked in Python before the op is called (select_low_importance, whose call costs a few
// microseconds, leaves them to check_select_args here); the checks every kernel relies on (all
// tensors on one device, index ranges, finite LSE, no repeated positions) run here, so direct
// and exported calls get them too, raising ValueError.
//
// CPU kernels take ATen tensors directly (csrc/cpu). CUDA kernels (csrc/cuda) are
// raw-pointer launchers without torch headers; the glue below turns tensors into pointers.
// The importance kernels of both devices take one argument block (csrc/importance_args.h).
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "cpu/kernels.h"

#ifdef CAGUL_WITH_CUDA
// c10's stream/guard headers (not ATen/cuda/CUDAContext.h): the current stream without
// pulling in the cuBLAS/cuSPARSE headers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launchers.h"
#endif

namespace {

// ---- argument and value checks shared by the CPU and CUDA kernels --------------------------

// An index whose entries span [lo, hi] holds only -1 (padding) and values in [0, upper).
void check_index_range(const char* op, const char* name, int64_t lo, int64_t hi, int64_t upper) {
  TORCH_CHECK_VALUE(lo >= -1 && hi < upper, op, ": ", name,
                    " entries must be -1 (padding) or in [0, ", upper, "), found values in [", lo,
                    ", ", hi, "]");
}

// Every entry of `index` is -1 (padding) or in [0, upper).
void check_index_values(const char* op, const char* name, const at::Tensor& index, int64_t upper) {
  if (index.numel() == 0) return;
  check_index_range(op, name, index.min().item<int64_t>(), index.max().item<int64_t>(), upper);
}

// `row` of positions holds `position` (its smallest repeated one) more than once.
void refuse_repeated_position(const char* op, int64_t row, int64_t position) {
  TORCH_CHECK_VALUE(false, op, ": positions must not repeat within a row, but row ", row,
                    " holds position ", position, " more than once");
}

// Python's spelling of a shape ("(2, 3)", "(5,)"), a dtype ("torch.float32") and a float, so
// that the messages below read exactly as those of the Python checks.
std::string python_shape(const at::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + (t.dim() == 1 ? ",)" : ")");
}

std::string python_dtype(at::ScalarType type) {
  return "torch." + std::string(c10::getDtypeNames(type).first);
}

// Python's repr of a float: the shortest digits that read back as x, "2.0" for integers.
std::string python_float(double x) {
  if (std::isfinite(x) && x == std::trunc(x) && std::abs(x) < 1e16)
    return (std::signbit(x) && x == 0 ? "-" : "") + std::to_string(static_cast<int64_t>(x)) + ".0";
  char text[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, x);
    if (std::strtod(text, nullptr) == x) break;
  }
  return text;
}

// check_tensor of _checks.py: `name` is `ndim`-D with a dtype in `dtypes`.
void check_tensor(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                  std::initializer_list<at::ScalarType> dtypes, const char* shape_hint) {
  TORCH_CHECK_VALUE(t.dim() == ndim, op, ": ", name, " must be ", ndim, "-D ", shape_hint,
                    ", got shape ", python_shape(t));
  if (std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) != dtypes.end()) return;
  std::string names;
  for (const at::ScalarType type : dtypes)
    names += (names.empty() ? "" : ", ") + std::string(c10::getDtypeNames(type).first);
  TORCH_CHECK_TYPE(false, op, ": ", name, " must have dtype in (", names, "), got ",
                   python_dtype(t.scalar_type()));
}

// Every named tensor on the device of the first, with the message of the Python checks. The
// dispatcher picks the kernel by the highest-priority device among an op's tensors, so a mixed
// call (direct or from an exported graph) would hand the kernel another device's pointers.
void check_one_device(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const auto& [first_name, first] = *tensors.begin();
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK_VALUE(t->device() == first->device(), op, ": all tensors must be on one device, but ",
                      first_name, " is on ", first->device(), " and ", name, " is on ", t->device());
  }
}

// The argument checks of select_low_importance in cagul_kernels/ops/topk.py, which leaves
// them to this op: a direct or exported call is checked the same way. `k` counts unless
// `ratio` is given.
void check_select_args(const at::Tensor& importance, const at::Tensor& visual_index, int64_t k,
                       std::optional<double> ratio) {
  constexpr const char* op = "select_low_importance";
  check_tensor(op, "importance", importance, 2, {at::kFloat, at::kHalf, at::kBFloat16}, "[B, Nv]");
  check_tensor(op, "visual_index", visual_index, 2, {at::kInt, at::kLong}, "[B, Nv]");
  check_one_device(op, {{"importance", &importance}, {"visual_index", &visual_index}});
  TORCH_CHECK_VALUE(importance.sizes() == visual_index.sizes(), op, ": importance ",
                    python_shape(importance), " and visual_index ", python_shape(visual_index),
                    " must have the same shape [B, Nv]");
  if (ratio) {
    TORCH_CHECK_VALUE(*ratio > 0 && *ratio <= 1, op, ": ratio must be in (0, 1], got ",
                      python_float(*ratio));
    return;
  }
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be >= 0, got ", k);
  TORCH_CHECK_VALUE(k <= importance.size(1), op, ": k=", k, " exceeds the Nv=", importance.size(1),
                    " visual slots of visual_index");
}

// q, k, lse and the indices on one device; lse [B, Hq, S] finite at every valid query position.
void check_importance_values(const at::Tensor& q, const at::Tensor& k, const at::Tensor& lse,
                             const at::Tensor& query_index, const at::Tensor& visual_index) {
  constexpr const char* op = "cross_modal_importance";
  check_one_device(op, {{"q", &q}, {"k", &k}, {"lse", &lse}, {"query_index", &query_index},
                        {"visual_index", &visual_index}});
  const int64_t b = lse.size(0), hq = lse.size(1), s = lse.size(2);
  check_index_values(op, "query_index", query_index, s);
  check_index_values(op, "visual_index", visual_index, s);
  const at::Tensor rows =
      lse.gather(2, query_index.clamp_min(0).unsqueeze(1).expand({b, hq, query_index.size(1)}));
  TORCH_CHECK_VALUE(rows.isfinite().logical_or(query_index.lt(0).unsqueeze(1)).all().item<bool>(),
                    op, ": lse must be finite at every valid query position");
}

// The positions checks of check_scatter_inputs for CPU positions, in loops over them instead of
// a sort: the ATen ops (min, max, sort, compare) cost ~20 us a call, the loops ~2 us for K = 1024.
void check_positions_cpu(const char* op, const at::Tensor& positions, int64_t seq_len) {
  if (positions.numel() == 0) return;
  const at::Tensor index = positions.to(at::kLong).contiguous();
  const int64_t* values = index.const_data_ptr<int64_t>();
  const int64_t rows = index.size(0), k = index.size(1);
  const auto [lo, hi] = std::minmax_element(values, values + index.numel());
  check_index_range(op, "positions", *lo, *hi, seq_len);
  std::vector<bool> seen(seq_len);  // the positions of the current row, cleared after it
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t *begin = values + row * k, *end = begin + k;
    int64_t repeated = seq_len;  // the smallest repeated position of this row, as the sort finds
    for (const int64_t* p = begin; p != end; ++p) {
      if (*p < 0) continue;
      if (seen[*p]) repeated = std::min(repeated, *p);
      seen[*p] = true;
    }
    for (const int64_t* p = begin; p != end; ++p) {
      if (*p >= 0) seen[*p] = false;
    }
    if (repeated != seq_len) refuse_repeated_position(op, row, repeated);
  }
}

// transform_scatter's tensors on one device; positions [B, K] in [0, S) or -1 for x [B, S, D],
// no position twice in one row.
void check_scatter_inputs(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& w1,
                          const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                          const at::Tensor& gate) {
  constexpr const char* op = "transform_scatter";
  check_one_device(op, {{"x", &x}, {"positions", &positions}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2},
                        {"b2", &b2}, {"gate", &gate}});
  const int64_t seq_len = x.size(1);
  if (positions.is_cpu()) return check_positions_cpu(op, positions, seq_len);
  check_index_values(op, "positions", positions, seq_len);
  if (positions.size(1) < 2) return;
  const at::Tensor ordered = std::get<0>(positions.sort(1));
  const at::Tensor tail = ordered.narrow(1, 1, ordered.size(1) - 1);
  const at::Tensor repeated = tail.eq(ordered.narrow(1, 0, ordered.size(1) - 1)).logical_and(tail.ge(0));
  if (!repeated.any().item<bool>()) return;
  const at::Tensor first = repeated.nonzero()[0].cpu();
  const int64_t row = first[0].item<int64_t>(), i = first[1].item<int64_t>();
  refuse_repeated_position(op, row, tail[row][i].item<int64_t>());
}

// The kernels receive the activation as its index in ACTIVATIONS of
// cagul_kernels/ops/transform_scatter.py.
int64_t activation_index(std::string_view activation) {
  constexpr std::array<std::string_view, 4> names{"gelu", "gelu_tanh", "silu", "relu"};
  const auto it = std::find(names.begin(), names.end(), activation);
  TORCH_CHECK_VALUE(it != names.end(), "transform_scatter: unknown activation '", activation, "'");
  return it - names.begin();
}

// Kernel column sums -> importance: summed over head groups in a fixed order, divided by the
// valid query count (and Hq when heads are summed) with `mean`.
at::Tensor finish_importance(const at::Tensor& sums, const at::Tensor& query_index, int64_t hq,
                             bool mean, bool per_head) {
  const at::Tensor out = per_head ? sums : sums.sum(1);
  if (!mean) return out;
  const at::Tensor n_valid = query_index.ge(0).sum(1).clamp_min(1).to(at::kFloat);
  return per_head ? out / n_valid.view({-1, 1, 1}) : out / (n_valid.unsqueeze(1) * hq);
}

// ---- device-generic op bodies around a device's kernels ------------------------------------

// Adds the column sums of args into args.out; q: the tensor args.q points to.
using ImportanceKernel = void (*)(const cagul::ImportanceArgs& args, const at::Tensor& q);
using ScatterKernel = std::vector<at::Tensor> (*)(const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, int64_t, bool);
using ScatterBackwardKernel = std::vector<at::Tensor> (*)(const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, int64_t, bool);

template <ImportanceKernel kernel>
at::Tensor cross_modal_importance(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& lse,
                                  const at::Tensor& query_index, const at::Tensor& visual_index,
                                  double scale, bool causal, bool mean, bool per_head) {
  check_importance_values(q_in, k_in, lse, query_index, visual_index);
  const at::Tensor qi = query_index.contiguous(), vi = visual_index.contiguous();
  // The kernels read rows with unit stride along D ([B, S, H, D] views qualify).
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const int64_t b = q.size(0), hq = q.size(1), hkv = k.size(1), nv = vi.size(1);
  at::Tensor sums = at::zeros({b, per_head ? hq : hkv, nv}, q.options().dtype(at::kFloat));
  const cagul::ImportanceArgs args{
      q.const_data_ptr(), k.const_data_ptr(), lse.const_data_ptr<float>(),
      qi.const_data_ptr<int64_t>(), vi.const_data_ptr<int64_t>(), sums.mutable_data_ptr<float>(),
      b, hq, hkv, q.size(3), qi.size(1), nv, q.stride(0), q.stride(1), q.stride(2), k.stride(0),
      k.stride(1), k.stride(2), lse.stride(0), lse.stride(1), lse.stride(2), static_cast<float>(scale),
      causal, per_head};
  kernel(args, q);
  return finish_importance(sums, qi, hq, mean, per_head);
}

template <ScatterKernel kernel>
std::tuple<at::Tensor, at::Tensor> transform_scatter(const at::Tensor& x, const at::Tensor& positions,
                                                     const at::Tensor& w1, const at::Tensor& b1,
                                                     const at::Tensor& w2, const at::Tensor& b2,
                                                     const at::Tensor& gate, c10::string_view activation) {
  check_scatter_inputs(x, positions, w1, b1, w2, b2, gate);
  const std::vector<at::Tensor> yz = kernel(x, positions.contiguous(), w1, b1, w2, b2,
                                            gate.to(at::kFloat).contiguous(),
                                            activation_index(activation), false);
  return {yz[0], yz[1]};
}

template <ScatterKernel kernel>
void transform_scatter_(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& w1,
                        const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                        const at::Tensor& gate, c10::string_view activation) {
  check_scatter_inputs(x, positions, w1, b1, w2, b2, gate);
  kernel(x, positions.contiguous(), w1, b1, w2, b2, gate.to(at::kFloat).contiguous(),
         activation_index(activation), true);
}

template <ScatterBackwardKernel kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> transform_scatter_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& positions, const at::Tensor& z,
    const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& gate, c10::string_view activation,
    bool need_dx) {
  check_one_device("transform_scatter_backward", {{"dy", &dy}, {"x", &x}, {"positions", &positions}, {"z", &z},
                                                  {"w1", &w1}, {"w2", &w2}, {"gate", &gate}});
  const std::vector<at::Tensor> g = kernel(dy, x, positions.contiguous(), z, w1, w2,
                                           gate.to(at::kFloat).contiguous(),
                                           activation_index(activation), need_dx);
  return {g[0], g[1], g[2], g[3], g[4]};
}

using SelectKernel = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&, const at::Tensor&,
                                                           int64_t, std::optional<double>);

template <SelectKernel kernel>
std::tuple<at::Tensor, at::Tensor> select_low_importance(const at::Tensor& importance,
                                                         const at::Tensor& visual_index, int64_t k,
                                                         std::optional<double> ratio) {
  check_select_args(importance, visual_index, k, ratio);
  return kernel(importance, visual_index, k, ratio);
}

std::tuple<at::Tensor, at::Tensor> select_low_importance_cpu(const at::Tensor& importance,
                                                             const at::Tensor& visual_index,
                                                             int64_t k, std::optional<double> ratio) {
  // The C++ kernel checks its values itself (NaN, indices below -1, k > valid count).
  return cagul::cpu::select_low_importance(importance, visual_index, k, ratio.value_or(0.0));
}

#ifdef CAGUL_WITH_CUDA

cagul::cuda::ScalarType cuda_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cagul::cuda::ScalarType::Float32;
    case at::kHalf: return cagul::cuda::ScalarType::Float16;
    case at::kBFloat16: return cagul::cuda::ScalarType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor fp32_contiguous(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

void cross_modal_importance_cuda(const cagul::ImportanceArgs& args, const at::Tensor& q) {
  TORCH_CHECK_VALUE(args.d <= cagul::cuda::kImportanceMaxHeadDim,
                    "cross_modal_importance: the CUDA kernel supports head dim <= ",
                    cagul::cuda::kImportanceMaxHeadDim, ", got ", args.d);
  const c10::cuda::CUDAGuard guard(q.device());
  check_launch(cagul::cuda::launch_cross_modal_importance(args, cuda_dtype(q),
                                                         c10::cuda::getCurrentCUDAStream()),
               "cross_modal_importance");
}

// Value checks of the CPU kernel, then the per-row counts [B] (k, or ceil(ratio * valid)) and
// the output width (their maximum).
std::tuple<at::Tensor, int64_t> select_row_counts(const at::Tensor& importance,
                                                  const at::Tensor& visual_index, int64_t k,
                                                  std::optional<double> ratio) {
  constexpr const char* op = "select_low_importance";
  const at::Tensor below = visual_index.lt(-1);
  if (below.any().item<bool>()) {
    const at::Tensor at = below.nonzero()[0].cpu();
    const int64_t b = at[0].item<int64_t>(), j = at[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, op, ": visual_index entries must be -1 (padding) or >= 0, found ",
                      visual_index[b][j].item<int64_t>(), " at row ", b, ", slot ", j);
  }
  const at::Tensor valid = visual_index.ge(0);
  const at::Tensor nan = importance.isnan().logical_and(valid);
  if (nan.any().item<bool>()) {
    const at::Tensor at = nan.nonzero()[0].cpu();
    TORCH_CHECK_VALUE(false, op, ": importance is NaN at row ", at[0].item<int64_t>(), ", slot ",
                      at[1].item<int64_t>(), " (a valid visual token)");
  }
  const at::Tensor n_valid = valid.sum(1).cpu();
  at::Tensor counts = at::empty_like(n_valid);
  const auto n = n_valid.accessor<int64_t, 1>();
  auto count = counts.accessor<int64_t, 1>();
  int64_t width = ratio ? 0 : k;
  for (int64_t b = 0; b < n.size(0); ++b) {
    TORCH_CHECK_VALUE(ratio || n[b] >= k, op, ": k=", k, " exceeds the ", n[b],
                      " valid visual tokens of row ", b);
    count[b] = ratio ? cagul::cpu::ratio_count(*ratio, n[b]) : k;
    width = std::max(width, count[b]);
  }
  return {counts.to(visual_index.device()), width};
}

std::tuple<at::Tensor, at::Tensor> select_low_importance_cuda(const at::Tensor& importance_in,
                                                              const at::Tensor& visual_index_in,
                                                              int64_t k, std::optional<double> ratio) {
  const c10::cuda::CUDAGuard guard(importance_in.device());
  const at::Tensor importance = fp32_contiguous(importance_in);
  const at::Tensor visual_index = visual_index_in.to(at::kLong).contiguous();
  const auto [counts, width] = select_row_counts(importance, visual_index, k, ratio);
  const int64_t batch = importance.size(0), nv = importance.size(1);
  const auto opts = visual_index.options();
  at::Tensor slots = at::full({batch, width}, -1, opts);
  at::Tensor positions = at::full({batch, width}, -1, opts);
  at::Tensor words = at::empty({batch, cagul::cuda::select_row_words(nv)}, opts);
  check_launch(cagul::cuda::select_low_importance(
                   importance.const_data_ptr<float>(), importance.stride(0),
                   visual_index.const_data_ptr<int64_t>(), visual_index.stride(0),
                   counts.const_data_ptr<int64_t>(), batch, nv, width,
                   reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>()),
                   slots.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
                   c10::cuda::getCurrentCUDAStream()),
               "select_low_importance");
  return {slots, positions};
}

// The selected rows of x [B, S, D] at positions [B, K] with gate [B] (fp32), rank R.
cagul::cuda::TransformScatterRows scatter_rows(const at::Tensor& x, const at::Tensor& pos,
                                               const at::Tensor& gate, int64_t rank, int64_t activation) {
  return {cuda_dtype(x), x.data_ptr(), {x.stride(0), x.stride(1), x.stride(2)},
          pos.const_data_ptr<int64_t>(), gate.const_data_ptr<float>(), x.size(0), pos.size(1),
          x.size(2), rank, static_cast<int>(activation)};
}

// See cagul::cpu::transform_scatter for the contract; weights are handed over as fp32.
std::vector<at::Tensor> transform_scatter_cuda(const at::Tensor& x, const at::Tensor& pos,
                                               const at::Tensor& w1, const at::Tensor& b1,
                                               const at::Tensor& w2, const at::Tensor& b2,
                                               const at::Tensor& gate, int64_t activation, bool inplace) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w1f = fp32_contiguous(w1), b1f = fp32_contiguous(b1);
  const at::Tensor w2f = fp32_contiguous(w2), b2f = fp32_contiguous(b2);
  const int64_t r = w1.size(1);
  at::Tensor y = inplace ? x : at::empty(x.sizes(), x.options()).copy_(x);
  at::Tensor z = inplace ? at::Tensor() : at::zeros({x.size(0), pos.size(1), r}, x.options().dtype(at::kFloat));
  const cagul::cuda::TransformScatterForwardArgs args{
      scatter_rows(x, pos, gate, r, activation), y.data_ptr(), {y.stride(0), y.stride(1), y.stride(2)},
      w1f.const_data_ptr<float>(), b1f.const_data_ptr<float>(), w2f.const_data_ptr<float>(),
      b2f.const_data_ptr<float>(), inplace ? nullptr : z.data_ptr<float>()};
  check_launch(cagul::cuda::transform_scatter_forward(args, c10::cuda::getCurrentCUDAStream()),
               "transform_scatter");
  if (inplace) return {};
  return {y, z};
}

std::vector<at::Tensor> transform_scatter_backward_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                        const at::Tensor& pos, const at::Tensor& z,
                                                        const at::Tensor& w1, const at::Tensor& w2,
                                                        const at::Tensor& gate, int64_t activation,
                                                        bool need_dx) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK_VALUE(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
                    "transform_scatter: dy must match x in shape and dtype");
  const at::Tensor w1t = w1.to(at::kFloat).t().contiguous(), w2t = w2.to(at::kFloat).t().contiguous();
  const at::Tensor zf = fp32_contiguous(z);
  const int64_t b_size = x.size(0), k = pos.size(1), d = x.size(2), r = w1.size(1);
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = need_dx ? at::empty(x.sizes(), x.options()).copy_(dy) : at::empty({0}, x.options());
  const int64_t total = 2 * d * r + d + r;
  const int64_t splits = cagul::cuda::transform_scatter_backward_splits(b_size, k, d);
  at::Tensor dz = at::zeros({b_size, k, r}, f32);
  at::Tensor partials = at::empty({std::max<int64_t>(splits, 1), total}, f32);
  at::Tensor grads = at::zeros({total}, f32);
  const cagul::cuda::TransformScatterBackwardArgs args{
      scatter_rows(x, pos, gate, r, activation), dy.data_ptr(), {dy.stride(0), dy.stride(1), dy.stride(2)},
      need_dx ? dx.data_ptr() : nullptr, zf.const_data_ptr<float>(), w1t.const_data_ptr<float>(),
      w2t.const_data_ptr<float>(), dz.data_ptr<float>(), partials.data_ptr<float>(),
      grads.data_ptr<float>(), x.size(1)};
  check_launch(cagul::cuda::transform_scatter_backward(args, c10::cuda::getCurrentCUDAStream()),
               "transform_scatter_backward");
  const std::vector<at::Tensor> parts = grads.split_with_sizes({d * r, d * r, d, r});
  return {dx, parts[0].view({d, r}).to(w1.scalar_type(), false, true), parts[3].to(w1.scalar_type(), false, true),
          parts[1].view({r, d}).to(w2.scalar_type(), false, true), parts[2].to(w2.scalar_type(), false, true)};
}

#endif  // CAGUL_WITH_CUDA

}  // namespace

// The schemas. Python adds `<name>_triton` and `<name>_reference` twins with the same schema
// (cagul_kernels/ops/_backend.py); the public functions pick one per `backend=`.
TORCH_LIBRARY(cagul, m) {
  m.def("cross_modal_importance(Tensor q, Tensor k, Tensor lse, Tensor query_index, "
        "Tensor visual_index, float scale, bool causal, bool mean, bool per_head) -> Tensor");
  m.def("select_low_importance(Tensor importance, Tensor visual_index, int k, float? ratio) "
        "-> (Tensor, Tensor)");
  m.def("transform_scatter(Tensor x, Tensor positions, Tensor w1, Tensor b1, Tensor w2, "
        "Tensor b2, Tensor gate, str activation) -> (Tensor, Tensor)");
  m.def("transform_scatter_(Tensor(a!) x, Tensor positions, Tensor w1, Tensor b1, Tensor w2, "
        "Tensor b2, Tensor gate, str activation) -> ()");
  m.def("transform_scatter_backward(Tensor dy, Tensor x, Tensor positions, Tensor z, Tensor w1, "
        "Tensor w2, Tensor gate, str activation, bool need_dx) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cagul, CPU, m) {
  m.impl("cross_modal_importance", &cross_modal_importance<&cagul::cpu::cross_modal_importance>);
  m.impl("select_low_importance", &select_low_importance<&select_low_importance_cpu>);
  m.impl("transform_scatter", &transform_scatter<&cagul::cpu::transform_scatter>);
  m.impl("transform_scatter_", &transform_scatter_<&cagul::cpu::transform_scatter>);
  m.impl("transform_scatter_backward",
         &transform_scatter_backward<&cagul::cpu::transform_scatter_backward>);
}

#ifdef CAGUL_WITH_CUDA
TORCH_LIBRARY_IMPL(cagul, CUDA, m) {
  m.impl("cross_modal_importance", &cross_modal_importance<&cross_modal_importance_cuda>);
  m.impl("select_low_importance", &select_low_importance<&select_low_importance_cuda>);
  m.impl("transform_scatter", &transform_scatter<&transform_scatter_cuda>);
  m.impl("transform_scatter_", &transform_scatter_<&transform_scatter_cuda>);
  m.impl("transform_scatter_backward", &transform_scatter_backward<&transform_scatter_backward_cuda>);
}
#endif

// `import cagul_kernels._C` loads this library (and so registers the ops); the module itself
// is empty.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "cagul operator library", -1, nullptr};
  return PyModule_Create(&module);
}
