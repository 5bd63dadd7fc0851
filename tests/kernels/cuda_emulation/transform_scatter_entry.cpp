// C entry points of the emulated transform_scatter kernels, for ctypes
// (tests/test_transform_scatter_cuda_emulated.py). "transform_scatter_kernel.inc" is
// csrc/cuda/transform_scatter.cu with its launches rewritten for emu.h.
#include "emu.h"
// clang-format off
#include "transform_scatter_kernel.inc"
// clang-format on

using namespace cagul::cuda;

// dims: batch, slots, dim, rank (the backward's also seq).
static TransformScatterRows rows(int dtype, const void* x, const int64_t* x_stride, const int64_t* positions,
                                 const float* gate, const int64_t* dims, int activation) {
  return {static_cast<ScalarType>(dtype), x, {x_stride[0], x_stride[1], x_stride[2]}, positions, gate,
          dims[0], dims[1], dims[2], dims[3], activation};
}

extern "C" int ts_forward(int dtype, const void* x, const int64_t* x_stride, void* y, const int64_t* y_stride,
                          const int64_t* positions, const float* gate, const float* w1, const float* b1,
                          const float* w2, const float* b2, float* z, const int64_t* dims, int activation) {
  const TransformScatterForwardArgs a{rows(dtype, x, x_stride, positions, gate, dims, activation),
                                      y, {y_stride[0], y_stride[1], y_stride[2]}, w1, b1, w2, b2, z};
  return static_cast<int>(transform_scatter_forward(a, nullptr));
}

extern "C" int64_t ts_splits(int64_t batch, int64_t slots, int64_t dim) {
  return transform_scatter_backward_splits(batch, slots, dim);
}

extern "C" int ts_backward(int dtype, const void* x, const int64_t* x_stride, const void* dy,
                           const int64_t* dy_stride, void* dx, const int64_t* positions, const float* gate,
                           const float* z, const float* w1t, const float* w2t, float* dz, float* partials,
                           float* grads, const int64_t* dims, int activation) {
  const TransformScatterBackwardArgs a{rows(dtype, x, x_stride, positions, gate, dims, activation),
                                       dy, {dy_stride[0], dy_stride[1], dy_stride[2]}, dx, z, w1t, w2t, dz,
                                       partials, grads, dims[4]};
  return static_cast<int>(transform_scatter_backward(a, nullptr));
}
