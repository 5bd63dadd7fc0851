// CPU kernels of cagul_kernels (ATen tensors in, ATen tensors out). See the Python ops in
// cagul_kernels/ops for the semantics; arguments are validated there.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "../importance_args.h"

namespace cagul::cpu {

// Adds the importance column sums of `args` (csrc/importance_args.h) into args.out; q is the
// tensor args.q points to (fp32/fp16/bf16, S < 2^31).
void cross_modal_importance(const ImportanceArgs& args, const at::Tensor& q);

// transform_scatter: x [B, S, D] (any strides; fp32/fp16/bf16/fp64), positions [B, K]
// contiguous int64 (-1 = padding, no repeats in a row, validated in Python), w1 [D, R],
// b1 [R], w2 [R, D], b2 [D] (dtype of x), gate [B] contiguous float32, activation = index in
// ACTIVATIONS of cagul_kernels/ops/transform_scatter.py. Returns {y, z} (y contiguous,
// z [B, K, R] pre-activations in fp32, fp64 for fp64 x), or {} with inplace (x is written).
std::vector<at::Tensor> transform_scatter(const at::Tensor& x, const at::Tensor& positions,
                                          const at::Tensor& w1, const at::Tensor& b1,
                                          const at::Tensor& w2, const at::Tensor& b2,
                                          const at::Tensor& gate, int64_t activation, bool inplace);

// Gradients from dy [B, S, D] (dtype of x, any strides) and the forward's z: {dx, dw1, db1,
// dw2, db2}; dx is contiguous (an empty tensor unless need_dx). Deterministic.
std::vector<at::Tensor> transform_scatter_backward(const at::Tensor& dy, const at::Tensor& x,
                                                   const at::Tensor& positions, const at::Tensor& z,
                                                   const at::Tensor& w1, const at::Tensor& w2,
                                                   const at::Tensor& gate, int64_t activation,
                                                   bool need_dx);

// importance [B, Nv] (fp32/fp16/bf16), visual_index [B, Nv] (int32/int64, -1 padding).
// Per row, the count smallest-importance valid slots ordered by (importance, slot):
// count = k, or ratio_count(ratio, valid slots) when ratio > 0 (then k is ignored and the
// width is the largest count). Returns (slots, positions) [B, width] int64, -1 past the
// row's count. Raises ValueError on NaN at a valid slot, indices below -1, k > valid count.
std::tuple<at::Tensor, at::Tensor> select_low_importance(const at::Tensor& importance,
                                                         const at::Tensor& visual_index,
                                                         int64_t k, double ratio);

// ceil(ratio * n_valid), where a product within 1e-9 (relative) of an integer counts as
// that integer, so 0.7 * 10 -> 7 (not 8 from 7.000000000000001).
int64_t ratio_count(double ratio, int64_t n_valid);

}  // namespace cagul::cpu
