// C entry point of the emulated importance kernel, for ctypes (tests/test_importance_cuda_emulated.py).
// "importance_kernel.inc" is csrc/cuda/importance.cu with its launch rewritten for emu.h.
#include "emu.h"
// clang-format off
#include "importance_kernel.inc"
// clang-format on

// dims: batch, hq, hkv, d, nq, nv, then the B/H/S element strides of q, k and lse.
extern "C" int run_importance(const void* q, const void* k, const float* lse,
                              const int64_t* query_index, const int64_t* visual_index, float* out,
                              const int64_t* dims, float scale, int causal, int per_head,
                              int dtype) {
  const cagul::ImportanceArgs args{
      q, k, lse, query_index, visual_index, out, dims[0], dims[1], dims[2], dims[3], dims[4],
      dims[5], dims[6], dims[7], dims[8], dims[9], dims[10], dims[11], dims[12], dims[13],
      dims[14], scale, causal != 0, per_head != 0};
  return static_cast<int>(cagul::cuda::launch_cross_modal_importance(
      args, static_cast<cagul::cuda::ScalarType>(dtype), nullptr));
}
