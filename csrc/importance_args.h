// Arguments of the cross_modal_importance kernels, CPU (csrc/cpu/importance.cpp) and CUDA
// (csrc/cuda/importance.cu), without torch or CUDA headers: csrc/ops.cpp fills them once for
// either device.
#pragma once

#include <cstdint>

namespace cagul {

// q [B, Hq, S, D], k [B, Hkv, S, D] (element strides below, unit stride along D), lse [B, Hq, S]
// fp32, query_index [B, Nq] / visual_index [B, Nv] contiguous int64 with -1 padding (validated
// by the caller). out: contiguous fp32, zero-initialised, receives the column sums of
// exp(scale q.k - lse) over the valid (causally visible) query rows: [B, Hq, Nv] per query head
// when per_head, else [B, Hkv, Nv] summed over the query heads of each kv group (the caller
// reduces them over kv heads in order).
struct ImportanceArgs {
  const void* q;
  const void* k;
  const float* lse;
  const int64_t* query_index;
  const int64_t* visual_index;
  float* out;
  int64_t batch, hq, hkv, d, nq, nv;
  int64_t q_stride_b, q_stride_h, q_stride_s;
  int64_t k_stride_b, k_stride_h, k_stride_s;
  int64_t lse_stride_b, lse_stride_h, lse_stride_s;
  float scale;
  bool causal;
  bool per_head;
};

}  // namespace cagul
