// Raw-pointer launchers of the CUDA kernels (csrc/cuda/*.cu). No torch headers here or in the
// .cu files, so nvcc compiles them anywhere; csrc/bindings.cpp turns tensors into pointers.
// Every launcher enqueues on `stream` and returns the launch status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cagul::cuda {

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

}  // namespace cagul::cuda
