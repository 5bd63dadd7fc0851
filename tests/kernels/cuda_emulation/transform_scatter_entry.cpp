// C entry points of the emulated transform_scatter kernels, for ctypes
// (tests/test_transform_scatter_cuda_emulated.py). "transform_scatter_kernel.inc" is
// csrc/cuda/transform_scatter.cu with its launches rewritten for emu.h.
#include "emu.h"
// clang-format off
#include "transform_scatter_kernel.inc"
// clang-format on

using cagul::cuda::ScalarType;

// dims: batch, slots, dim, rank.
extern "C" int ts_forward(int dtype, const void* x, const int64_t* x_stride, void* y, const int64_t* y_stride,
                          const int64_t* positions, const float* gate, const float* w1, const float* b1,
                          const float* w2, const float* b2, float* z, const int64_t* dims, int activation) {
  cagul::cuda::TransformScatterForwardArgs a{};
  a.dtype = static_cast<ScalarType>(dtype);
  a.x = x;
  a.y = y;
  for (int i = 0; i < 3; ++i) {
    a.x_stride[i] = x_stride[i];
    a.y_stride[i] = y_stride[i];
  }
  a.positions = positions;
  a.gate = gate;
  a.w1 = w1;
  a.b1 = b1;
  a.w2 = w2;
  a.b2 = b2;
  a.z = z;
  a.batch = dims[0];
  a.slots = dims[1];
  a.dim = dims[2];
  a.rank = dims[3];
  a.activation = activation;
  return static_cast<int>(cagul::cuda::transform_scatter_forward(a, nullptr));
}

extern "C" int64_t ts_splits(int64_t batch, int64_t slots, int64_t dim) {
  return cagul::cuda::transform_scatter_backward_splits(batch, slots, dim);
}

// dims: batch, seq, slots, dim, rank.
extern "C" int ts_backward(int dtype, const void* x, const int64_t* x_stride, const void* dy,
                           const int64_t* dy_stride, void* dx, const int64_t* positions, const float* gate,
                           const float* z, const float* w1t, const float* w2t, float* dz, float* partials,
                           float* grads, const int64_t* dims, int activation) {
  cagul::cuda::TransformScatterBackwardArgs a{};
  a.dtype = static_cast<ScalarType>(dtype);
  a.x = x;
  a.dy = dy;
  for (int i = 0; i < 3; ++i) {
    a.x_stride[i] = x_stride[i];
    a.dy_stride[i] = dy_stride[i];
  }
  a.dx = dx;
  a.positions = positions;
  a.gate = gate;
  a.z = z;
  a.w1t = w1t;
  a.w2t = w2t;
  a.dz = dz;
  a.partials = partials;
  a.grads = grads;
  a.batch = dims[0];
  a.seq = dims[1];
  a.slots = dims[2];
  a.dim = dims[3];
  a.rank = dims[4];
  a.activation = activation;
  return static_cast<int>(cagul::cuda::transform_scatter_backward(a, nullptr));
}
