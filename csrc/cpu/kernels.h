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

}  // namespace cagul::cpu
