// transform_scatter on CUDA: raw-pointer kernels, fp32 accumulation, no torch headers.
//
// Forward, one block per (sample b, 16 slots):
//   1. z = x W1 + b1 on the gathered rows, the D reduction in 16-wide chunks staged in shared
//      memory (A tile [16, 16], W1 tile [16, R]); h = act(z) kept in shared memory [16, R].
//   2. each thread owns output columns n: out[m] = sum_r h[m, r] W2[r, n] (W2 reads coalesced,
//      h broadcast), then y[b, p_m, n] = x[b, p_m, n] + g (out[m] + b2[n]). Only the selected
//      rows are touched, so in place (y == x) moves O(K D) bytes.
// Backward:
//   rows kernel (same grid): dh = (g dy) W2^T by step 1 with W2^T, dz = dh * act'(z) (stored),
//     dx rows += dz W1^T by step 2 with W1^T;
//   weights kernel, grid (D / 16 column blocks, splits): a block owns dW1[cols, :],
//     dW2[:, cols], db2[cols] (and db1 in column block 0) in registers and loops over its
//     fixed range of row blocks in order; one partial per split, summed in split order.
// No floating-point atomics: results are bitwise reproducible for a given shape.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "launchers.h"

namespace cagul::cuda {
namespace {

constexpr int BM = 16;        // slots per block
constexpr int BK = 16;        // reduction chunk of the [rows, D] x [D, R] product
constexpr int BN = 16;        // weight-gradient columns per block
constexpr int THREADS = 256;
constexpr int MAX_RANK = static_cast<int>(kTransformScatterMaxRank);
constexpr int PER_THREAD = BM * MAX_RANK / THREADS;  // [BM, R] (and [BN, R]) outputs per thread
static_assert(BM * BK == THREADS && BM * BN == THREADS && BM == BN, "tile shapes");

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kGeluTanh2C = 1.5957691216057308f;  // 2 sqrt(2 / pi)
constexpr float kGeluTanhA = 0.044715f;

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

// act in the order of ACTIVATIONS: gelu (erf), gelu_tanh, silu, relu.
__device__ __forceinline__ float act_value(float z, int act) {
  switch (act) {
    case 0: return 0.5f * z * (1.0f + erff(z * kSqrtHalf));
    case 1: return z * sigmoid(kGeluTanh2C * (z + kGeluTanhA * z * z * z));
    case 2: return z * sigmoid(z);
    default: return fmaxf(z, 0.0f);
  }
}

__device__ __forceinline__ float act_grad(float z, int act) {
  switch (act) {
    case 0: return 0.5f * (1.0f + erff(z * kSqrtHalf)) + z * expf(-0.5f * z * z) * kInvSqrt2Pi;
    case 1: {
      const float s = sigmoid(kGeluTanh2C * (z + kGeluTanhA * z * z * z));
      return s + z * s * (1.0f - s) * kGeluTanh2C * (1.0f + 3.0f * kGeluTanhA * z * z);
    }
    case 2: {
      const float s = sigmoid(z);
      return s * (1.0f + z * (1.0f - s));
    }
    default: return z > 0.0f ? 1.0f : 0.0f;
  }
}

// pos_s[m] = positions[b, m0 + m] for the block's slots (-1 for padding, slots past K and
// samples with gate 0). Returns whether any slot is selected (block-uniform; a barrier).
__device__ bool load_block_rows(const int64_t* positions, const float* gate, int64_t b, int64_t m0,
                                int64_t k, int64_t* pos_s) {
  int64_t p = -1;
  if (threadIdx.x < BM) {
    const int64_t i = m0 + threadIdx.x;
    if (i < k && gate[b] != 0.0f) p = positions[b * k + i];
    pos_s[threadIdx.x] = p;
  }
  return __syncthreads_or(p >= 0) != 0;
}

// fn(t, e, m, r) for each element e = threadIdx.x + t * THREADS = m * R + r < BM * R of a
// [BM, R] tile that this thread owns (t < PER_THREAD, unrolled).
template <typename F>
__device__ __forceinline__ void for_tile_elements(int r_size, F&& fn) {
#pragma unroll
  for (int t = 0; t < PER_THREAD; ++t) {
    const int e = threadIdx.x + t * THREADS;
    if (e < BM * r_size) fn(t, e, e / r_size, e % r_size);
  }
}

// acc[t] for output e = threadIdx.x + t * THREADS = m * R + r (e < BM * R):
// sum_k scale * src[b, pos_s[m], k] * w[k, r], with w a [D, R] fp32 row-major matrix.
template <typename T>
__device__ void rows_times_dr(const T* src, const int64_t* stride, int64_t b, const int64_t* pos_s,
                              float scale, const float* w, int64_t d, int r_size, float* a_s,
                              float* w_s, float (&acc)[PER_THREAD]) {
#pragma unroll
  for (int t = 0; t < PER_THREAD; ++t) acc[t] = 0.0f;
  for (int64_t k0 = 0; k0 < d; k0 += BK) {
    {
      const int m = threadIdx.x / BK, kk = threadIdx.x % BK;
      const int64_t p = pos_s[m], k = k0 + kk;
      a_s[threadIdx.x] =
          (p >= 0 && k < d) ? scale * to_float(src[b * stride[0] + p * stride[1] + k * stride[2]]) : 0.0f;
    }
    for (int e = threadIdx.x; e < BK * r_size; e += THREADS) {
      const int64_t k = k0 + e / r_size;
      w_s[e] = k < d ? w[k * r_size + e % r_size] : 0.0f;
    }
    __syncthreads();
    for_tile_elements(r_size, [&](int t, int, int m, int r) {
      float s = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) s += a_s[m * BK + kk] * w_s[kk * r_size + r];
      acc[t] += s;
    });
    __syncthreads();
  }
}

// For every column n (one per thread and stride): out[m] = sum_r h_s[m, r] * w[r, n], with
// w a [R, D] fp32 row-major matrix; then epilogue(n, out).
template <typename Epilogue>
__device__ void rank_times_rd(const float* h_s, const float* w, int64_t d, int r_size, Epilogue epilogue) {
  for (int64_t n = threadIdx.x; n < d; n += THREADS) {
    float out[BM];
#pragma unroll
    for (int m = 0; m < BM; ++m) out[m] = 0.0f;
    for (int r = 0; r < r_size; ++r) {
      const float c = w[r * d + n];
#pragma unroll
      for (int m = 0; m < BM; ++m) out[m] += h_s[m * r_size + r] * c;
    }
    epilogue(n, out);
  }
}

// A row-kernel block: sample b, slots [m0, m0 + BM), rank r_size, and its dynamic shared
// memory: pos_s [BM] int64 (the slots' positions), then floats a_s [BM, BK], w_s [BK, R],
// h_s [BM, R]. `selected`: whether any slot is (block-uniform; else the block returns).
struct RowBlock {
  int64_t b, m0;
  int r_size;
  bool selected;
  int64_t* pos_s;
  float *a_s, *w_s, *h_s;
};

size_t rows_smem_bytes(int64_t r) { return BM * sizeof(int64_t) + (BM * BK + BK * r + BM * r) * sizeof(float); }

// This block's RowBlock, with pos_s loaded (a barrier).
__device__ RowBlock row_block(unsigned char* smem, const TransformScatterRows& a) {
  const int64_t tiles = (a.slots + BM - 1) / BM;
  RowBlock blk;
  blk.b = blockIdx.x / tiles;
  blk.m0 = (blockIdx.x % tiles) * BM;
  blk.r_size = static_cast<int>(a.rank);
  blk.pos_s = reinterpret_cast<int64_t*>(smem);
  blk.a_s = reinterpret_cast<float*>(blk.pos_s + BM);
  blk.w_s = blk.a_s + BM * BK;
  blk.h_s = blk.w_s + BK * blk.r_size;
  blk.selected = load_block_rows(a.positions, a.gate, blk.b, blk.m0, a.slots, blk.pos_s);
  return blk;
}

template <typename T>
__global__ void __launch_bounds__(THREADS) forward_kernel(TransformScatterForwardArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const RowBlock blk = row_block(smem, a);
  if (!blk.selected) return;
  const T* x = static_cast<const T*>(a.x);
  float acc[PER_THREAD];
  rows_times_dr(x, a.x_stride, blk.b, blk.pos_s, 1.0f, a.w1, a.dim, blk.r_size, blk.a_s, blk.w_s, acc);
  float* h_s = blk.h_s;
  for_tile_elements(blk.r_size, [&](int t, int e, int m, int r) {
    const float zv = acc[t] + a.b1[r];
    const bool selected = blk.pos_s[m] >= 0;
    if (selected && a.z != nullptr) a.z[(blk.b * a.slots + blk.m0 + m) * blk.r_size + r] = zv;
    h_s[e] = selected ? act_value(zv, a.activation) : 0.0f;
  });
  __syncthreads();
  const float g = a.gate[blk.b];
  T* y = static_cast<T*>(a.y);
  rank_times_rd(h_s, a.w2, a.dim, blk.r_size, [&](int64_t n, const float* out) {
    const float bias = a.b2[n];
#pragma unroll
    for (int m = 0; m < BM; ++m) {
      const int64_t p = blk.pos_s[m];
      if (p < 0) continue;
      const float xv = to_float(x[blk.b * a.x_stride[0] + p * a.x_stride[1] + n * a.x_stride[2]]);
      y[blk.b * a.y_stride[0] + p * a.y_stride[1] + n * a.y_stride[2]] = from_float<T>(xv + g * (out[m] + bias));
    }
  });
}

template <typename T>
__global__ void __launch_bounds__(THREADS) backward_rows_kernel(TransformScatterBackwardArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const RowBlock blk = row_block(smem, a);
  if (!blk.selected) return;
  float acc[PER_THREAD];
  rows_times_dr(static_cast<const T*>(a.dy), a.dy_stride, blk.b, blk.pos_s, a.gate[blk.b], a.w2t, a.dim,
                blk.r_size, blk.a_s, blk.w_s, acc);
  float* dz_s = blk.h_s;
  for_tile_elements(blk.r_size, [&](int t, int e, int m, int r) {
    float dz = 0.0f;
    if (blk.pos_s[m] >= 0) {
      const int64_t slot = (blk.b * a.slots + blk.m0 + m) * blk.r_size + r;
      dz = acc[t] * act_grad(a.z[slot], a.activation);
      a.dz[slot] = dz;
    }
    dz_s[e] = dz;
  });
  __syncthreads();
  if (a.dx == nullptr) return;
  T* dx = static_cast<T*>(a.dx);
  rank_times_rd(dz_s, a.w1t, a.dim, blk.r_size, [&](int64_t n, const float* out) {
#pragma unroll
    for (int m = 0; m < BM; ++m) {
      const int64_t p = blk.pos_s[m];
      if (p < 0) continue;
      T* dst = dx + (blk.b * a.seq + p) * a.dim + n;
      *dst = from_float<T>(to_float(*dst) + out[m]);
    }
  });
}

// Dynamic shared memory of the weights kernel: pos_s [BM] int64, x_s and g_s [BM, BN],
// h_s and dz_s [BM, R] floats.
size_t weights_smem_bytes(int64_t r) { return BM * sizeof(int64_t) + (2 * BM * BN + 2 * BM * r) * sizeof(float); }

template <typename T>
__global__ void __launch_bounds__(THREADS)
    backward_weights_kernel(TransformScatterBackwardArgs a, int64_t tiles_per_split) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int r_size = static_cast<int>(a.rank);
  int64_t* pos_s = reinterpret_cast<int64_t*>(smem);
  float* x_s = reinterpret_cast<float*>(pos_s + BM);
  float* g_s = x_s + BM * BN;
  float* h_s = g_s + BM * BN;
  float* dz_s = h_s + BM * r_size;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const int64_t d = a.dim, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t k_tiles = (a.slots + BM - 1) / BM, n_tiles = a.batch * k_tiles;
  const int64_t begin = blockIdx.y * tiles_per_split;
  const int64_t end = begin + tiles_per_split < n_tiles ? begin + tiles_per_split : n_tiles;
  const bool first_cols = blockIdx.x == 0;
  // This thread's weight-gradient outputs: column n0 + col, ranks row0 + t * (THREADS / BN).
  const int col = threadIdx.x % BN, row0 = threadIdx.x / BN;
  float acc_w1[PER_THREAD], acc_w2[PER_THREAD];
#pragma unroll
  for (int t = 0; t < PER_THREAD; ++t) acc_w1[t] = acc_w2[t] = 0.0f;
  float acc_b2 = 0.0f, acc_b1 = 0.0f;
  for (int64_t tile = begin; tile < end; ++tile) {
    const int64_t b = tile / k_tiles, m0 = (tile % k_tiles) * BM;
    if (load_block_rows(a.positions, a.gate, b, m0, a.slots, pos_s)) {
      const float g = a.gate[b];
      {
        const int m = threadIdx.x / BN, c = threadIdx.x % BN;
        const int64_t p = pos_s[m], n = n0 + c;
        const bool ok = p >= 0 && n < d;
        x_s[threadIdx.x] = ok ? to_float(x[b * a.x_stride[0] + p * a.x_stride[1] + n * a.x_stride[2]]) : 0.0f;
        g_s[threadIdx.x] = ok ? g * to_float(dy[b * a.dy_stride[0] + p * a.dy_stride[1] + n * a.dy_stride[2]])
                              : 0.0f;
      }
      for (int e = threadIdx.x; e < BM * r_size; e += THREADS) {
        const int m = e / r_size;
        const bool ok = pos_s[m] >= 0;
        const int64_t slot = (b * a.slots + m0 + m) * r_size + e % r_size;
        h_s[e] = ok ? act_value(a.z[slot], a.activation) : 0.0f;
        dz_s[e] = ok ? a.dz[slot] : 0.0f;
      }
      __syncthreads();
      for (int m = 0; m < BM; ++m) {
        const float xv = x_s[m * BN + col], gv = g_s[m * BN + col];
#pragma unroll
        for (int t = 0; t < PER_THREAD; ++t) {
          const int r = row0 + t * (THREADS / BN);
          if (r < r_size) {
            acc_w1[t] += xv * dz_s[m * r_size + r];
            acc_w2[t] += h_s[m * r_size + r] * gv;
          }
        }
      }
      if (threadIdx.x < BN) {
        for (int m = 0; m < BM; ++m) acc_b2 += g_s[m * BN + threadIdx.x];
      }
      if (first_cols && threadIdx.x < r_size) {
        for (int m = 0; m < BM; ++m) acc_b1 += dz_s[m * r_size + threadIdx.x];
      }
    }
    __syncthreads();  // before the next tile overwrites pos_s and the tiles
  }
  const int64_t total = 2 * d * r_size + d + r_size;
  float* part = a.partials + static_cast<int64_t>(blockIdx.y) * total;
  const int64_t n = n0 + col;
#pragma unroll
  for (int t = 0; t < PER_THREAD; ++t) {
    const int r = row0 + t * (THREADS / BN);
    if (r >= r_size || n >= d) continue;
    part[n * r_size + r] = acc_w1[t];
    part[d * r_size + r * d + n] = acc_w2[t];
  }
  if (threadIdx.x < BN && n0 + threadIdx.x < d) part[2 * d * r_size + n0 + threadIdx.x] = acc_b2;
  if (first_cols && threadIdx.x < r_size) part[2 * d * r_size + d + threadIdx.x] = acc_b1;
}

__global__ void sum_partials_kernel(const float* parts, float* out, int64_t n_parts, int64_t total) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int64_t i = 0; i < n_parts; ++i) s += parts[i * total + e];  // fixed order
    out[e] = s;
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Row blocks per split of the weight-gradient reduction: about 1024 blocks in the grid, at
// most 32 splits. Depends on the shapes only.
int64_t tiles_per_split(int64_t batch, int64_t slots, int64_t dim) {
  const int64_t n_tiles = batch * cdiv(slots, BM);
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>(32, cdiv(1024, cdiv(dim, BN))));
  return std::max<int64_t>(1, cdiv(n_tiles, want));
}

template <template <typename> class Launch, typename... Args>
cudaError_t dispatch(ScalarType dtype, Args&&... args) {
  switch (dtype) {
    case ScalarType::Float32: Launch<float>::run(args...); break;
    case ScalarType::Float16: Launch<__half>::run(args...); break;
    case ScalarType::BFloat16: Launch<__nv_bfloat16>::run(args...); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
struct LaunchForward {
  static void run(const TransformScatterForwardArgs& a, dim3 grid, cudaStream_t stream) {
    forward_kernel<T><<<grid, THREADS, rows_smem_bytes(a.rank), stream>>>(a);
  }
};

template <typename T>
struct LaunchBackward {
  static void run(const TransformScatterBackwardArgs& a, dim3 rows_grid, dim3 weights_grid, int64_t per_split,
                  cudaStream_t stream) {
    backward_rows_kernel<T><<<rows_grid, THREADS, rows_smem_bytes(a.rank), stream>>>(a);
    backward_weights_kernel<T><<<weights_grid, THREADS, weights_smem_bytes(a.rank), stream>>>(a, per_split);
  }
};

}  // namespace

cudaError_t transform_scatter_forward(const TransformScatterForwardArgs& a, cudaStream_t stream) {
  if (a.rank < 1 || a.rank > kTransformScatterMaxRank) return cudaErrorInvalidValue;
  const int64_t blocks = a.batch * cdiv(a.slots, BM);
  if (blocks == 0 || a.dim == 0) return cudaSuccess;
  return dispatch<LaunchForward>(a.dtype, a, dim3(static_cast<unsigned>(blocks)), stream);
}

int64_t transform_scatter_backward_splits(int64_t batch, int64_t slots, int64_t dim) {
  return cdiv(batch * cdiv(slots, BM), tiles_per_split(batch, slots, dim));
}

cudaError_t transform_scatter_backward(const TransformScatterBackwardArgs& a, cudaStream_t stream) {
  if (a.rank < 1 || a.rank > kTransformScatterMaxRank) return cudaErrorInvalidValue;
  const int64_t row_blocks = a.batch * cdiv(a.slots, BM);
  if (row_blocks == 0 || a.dim == 0) return cudaSuccess;
  const int64_t per_split = tiles_per_split(a.batch, a.slots, a.dim);
  const int64_t splits = cdiv(row_blocks, per_split);
  const dim3 weights_grid(static_cast<unsigned>(cdiv(a.dim, BN)), static_cast<unsigned>(splits));
  const cudaError_t err =
      dispatch<LaunchBackward>(a.dtype, a, dim3(static_cast<unsigned>(row_blocks)), weights_grid, per_split, stream);
  if (err != cudaSuccess) return err;
  const int64_t total = 2 * a.dim * a.rank + a.dim + a.rank;
  const unsigned reduce_blocks = static_cast<unsigned>(std::min<int64_t>(cdiv(total, THREADS), 4096));
  sum_partials_kernel<<<reduce_blocks, THREADS, 0, stream>>>(a.partials, a.grads, splits, total);
  return cudaGetLastError();
}

}  // namespace cagul::cuda
