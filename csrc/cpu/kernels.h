// CPU kernels of cagul_kernels (ATen tensors in, ATen tensors out). See the Python ops in
// cagul_kernels/ops for the semantics; arguments are validated there.
#pragma once

#include <ATen/ATen.h>

namespace cagul::cpu {

// q [B, Hq, S, D], k [B, Hkv, S, D] (any strides, fp32/fp16/bf16), lse [B, Hq, S] fp32,
// query_index [B, Nq], visual_index [B, Nv] contiguous int64 with -1 padding.
// Returns [B, Hq, Nv] (per_head) or [B, Nv] fp32.
at::Tensor cross_modal_importance(const at::Tensor& q, const at::Tensor& k, const at::Tensor& lse,
                                  const at::Tensor& query_index, const at::Tensor& visual_index,
                                  double scale, bool causal, bool mean, bool per_head);

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
