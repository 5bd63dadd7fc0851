// Launchers of the CUDA kernels (csrc/cuda/*.cu): raw pointers and element strides, no torch
// headers, so nvcc compiles the kernels anywhere. The tensor -> pointer glue lives in
// csrc/ops.cpp under CAGUL_WITH_CUDA; arguments are validated before that.
// Every launcher enqueues on `stream` and returns the launch status (cudaGetLastError).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../importance_args.h"

namespace cagul::cuda {

// Element type of the activation tensors handed to a launcher.
enum class ScalarType { Float32, Float16, BFloat16 };

// ---- cross_modal_importance (cagul_kernels/ops/importance.py) -----------------------------

// Largest head dimension the importance kernel stages in shared memory.
constexpr int64_t kImportanceMaxHeadDim = 256;

// cross_modal_importance (cagul::ImportanceArgs); the kernel writes every element of out.
cudaError_t launch_cross_modal_importance(const ImportanceArgs& args, ScalarType dtype,
                                          cudaStream_t stream);

// ---- select_low_importance (cagul_kernels/ops/topk.py) ------------------------------------

// select_low_importance: slots sorted per chunk of kSelectChunk, then ranked by binary search.
constexpr int64_t kSelectChunk = 2048;

// Workspace words per row: nv rounded up to a whole chunk.
inline int64_t select_row_words(int64_t nv) {
  return (nv + kSelectChunk - 1) / kSelectChunk * kSelectChunk;
}

// importance [batch, nv] fp32 and visual_index [batch, nv] int64 (unit stride along nv, row
// strides given), counts [batch] int64 (validated: <= the row's valid slots). Writes the
// counts[b] lowest-importance valid slots of row b, ordered by (importance, slot), and their
// visual_index entries into slots / positions [batch, width] (which the caller fills with -1).
// words: batch * select_row_words(nv) scratch words. batch <= 65535.
cudaError_t select_low_importance(const float* importance, int64_t importance_row_stride,
                                  const int64_t* visual_index, int64_t visual_index_row_stride,
                                  const int64_t* counts, int64_t batch, int64_t nv, int64_t width,
                                  uint64_t* words, int64_t* slots, int64_t* positions,
                                  cudaStream_t stream);


// ---- transform_scatter (cagul_kernels/ops/transform_scatter.py) ----------------------------

// Largest rank R the kernels take (they keep [16, R] fp32 tiles in shared memory).
constexpr int64_t kTransformScatterMaxRank = 256;

// What both transform_scatter kernels read: the selected rows of x and how to transform them.
struct TransformScatterRows {
  ScalarType dtype;
  const void* x;                  // [B, S, D]
  int64_t x_stride[3];            // element strides
  const int64_t* positions;       // [B, K] contiguous, -1 = padding, no repeats in a row
  const float* gate;              // [B]
  int64_t batch, slots, dim, rank;  // B, K, D, R
  int activation;                 // index in ACTIVATIONS: gelu, gelu_tanh, silu, relu
};

// y[b, p] = x[b, p] + gate[b] * (act(x[b, p] w1 + b1) w2 + b2) for p = positions[b, i] >= 0
// and gate[b] != 0. Only those rows of y are written (y == x: in place).
struct TransformScatterForwardArgs : TransformScatterRows {
  void* y;                        // [B, S, D], may equal x
  int64_t y_stride[3];
  const float* w1;                // [D, R] fp32 contiguous
  const float* b1;                // [R]
  const float* w2;                // [R, D]
  const float* b2;                // [D]
  float* z;                       // [B, K, R] pre-activations written on selected slots, or nullptr
};
cudaError_t transform_scatter_forward(const TransformScatterForwardArgs& args, cudaStream_t stream);

// Gradients of transform_scatter. dx (if not null) must hold dy on entry; its selected rows get
// dz w1^T added. grads receives [dW1 (D x R) | dW2 (R x D) | db2 (D) | db1 (R)], reduced
// deterministically through `partials` (no floating-point atomics).
struct TransformScatterBackwardArgs : TransformScatterRows {
  const void* dy;                 // [B, S, D]
  int64_t dy_stride[3];
  void* dx;                       // contiguous [B, S, D] or nullptr
  const float* z;                 // [B, K, R] from the forward
  const float* w1t;               // W1^T [R, D] fp32 contiguous
  const float* w2t;               // W2^T [D, R] fp32 contiguous
  float* dz;                      // [B, K, R] zero-initialised scratch
  float* partials;                // [transform_scatter_backward_splits(B, K, D), 2DR + D + R] scratch
  float* grads;                   // [2DR + D + R] zero-initialised output
  int64_t seq;                    // S
};
// Number of row splits of the weight-gradient reduction (a function of the shapes only).
int64_t transform_scatter_backward_splits(int64_t batch, int64_t slots, int64_t dim);
cudaError_t transform_scatter_backward(const TransformScatterBackwardArgs& args, cudaStream_t stream);

}  // namespace cagul::cuda
