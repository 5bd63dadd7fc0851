// Launchers of the CUDA kernels of cagul_kernels: raw pointers and element strides, no torch
// headers, so that nvcc compiles csrc/cuda/*.cu on any machine. The tensor -> pointer glue
// (checks, allocation, streams) lives in csrc/bindings.cpp under CAGUL_WITH_CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cagul::cuda {

enum class ScalarType { Float32, Float16, BFloat16 };

// Largest head dimension the importance kernel stages in shared memory.
constexpr int64_t kImportanceMaxHeadDim = 256;

// cross_modal_importance: q [B, Hq, S, D], k [B, Hkv, S, D] (element strides below, unit
// stride along D), lse [B, Hq, S] fp32, query_index [B, Nq] / visual_index [B, Nv] contiguous
// int64 with -1 padding (validated by the caller). Writes every element of out, contiguous
// fp32: [B, Hq, Nv] column sums per query head when per_head, else [B, Hkv, Nv] sums over the
// query heads of each kv group (the caller reduces them over kv heads in order).
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

cudaError_t launch_cross_modal_importance(const ImportanceArgs& args, ScalarType dtype,
                                          cudaStream_t stream);

}  // namespace cagul::cuda
