// Host emulation of the CUDA built-ins used by csrc/cuda kernels, to run the real kernel
// code on the CPU in tests (no GPU here). One std::thread per CUDA thread; blocks run one
// after another; __syncthreads is a std::barrier; nvcuda::wmma works on whole 16 x 16 tiles
// (every lane computes the full tile, lane 0 stores it) and checks the API's pointer
// alignment and ldm rules. Kernel launches `k<<<cfg>>>(args)` are rewritten by the test to
// `emulate_launch(k, EmuConfig{cfg}, args)`. It checks indexing, masking, reductions, tile
// layouts and barrier placement, not warp-level timing or memory-model behaviour.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cmath>  // fmaf, exp2f, ... (device math functions)
#include <barrier>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#undef __global__
#undef __shared__
#undef __align__
#define __global__
#define __shared__
#define __align__(n)
#define __launch_bounds__(...)

// Dynamic shared memory: kernels declare `extern __shared__ unsigned char smem[]` at block
// scope inside `namespace cagul::cuda { namespace { ... } }`, which names this array.
namespace cagul::cuda {
namespace {
alignas(128) unsigned char smem[1 << 20];
}  // namespace
}  // namespace cagul::cuda

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local int emu_or_calls = 0;
inline std::barrier<>* emu_barrier = nullptr;
inline std::atomic<int> emu_or_flags[3];

// A broken CUDA rule is recorded (the emulation carries on, so no thread is left waiting at
// a barrier) and reported by emu_error() after the launch.
inline std::atomic<const char*> emu_failure{nullptr};
inline void emu_fail(const char* what) {
  const char* none = nullptr;
  emu_failure.compare_exchange_strong(none, what);
}
extern "C" const char* emu_error() { return emu_failure.load(); }

inline void __syncthreads() { emu_barrier->arrive_and_wait(); }

// Flag k % 3 serves call k; the flag of call k + 2 is cleared once every thread is past call k.
inline int __syncthreads_or(int pred) {
  const int k = emu_or_calls++ % 3;
  if (pred) emu_or_flags[k] = 1;
  emu_barrier->arrive_and_wait();
  const int any = emu_or_flags[k].load();
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) emu_or_flags[(k + 2) % 3] = 0;
  return any;
}

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// The whole M x N (accumulator), M x K (matrix_a) or K x N (matrix_b) tile, row-major, fp32.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  float x[rows * cols];
};

inline void emu_check(const void* p, unsigned ldm, size_t elem_bytes) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu_fail("wmma: pointer not 32-byte aligned");
  if (ldm * elem_bytes % 16 != 0) emu_fail("wmma: ldm not a multiple of 16 bytes");
}

inline float emu_float(float v) { return v; }
inline float emu_float(__half v) { return __half2float(v); }
inline float emu_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  emu_check(p, ldm, sizeof(T));
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int i = 0; i < F::rows; ++i)
    for (int j = 0; j < F::cols; ++j)
      f.x[i * F::cols + j] = emu_float(std::is_same_v<Layout, row_major> ? p[i * ldm + j] : p[i + j * ldm]);
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (float& e : f.x) e = v;
}

template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  emu_check(p, ldm, sizeof(float));
  if (threadIdx.x % 32 != 0) return;  // one lane writes the tile the warp stores together
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) (layout == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = f.x[i * N + j];
}
}  // namespace nvcuda::wmma

extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }
template <typename T>
cudaError_t cudaFuncSetAttribute(T*, cudaFuncAttribute, int) {
  return cudaSuccess;
}

struct EmuConfig {
  dim3 grid, block;
  size_t smem_bytes = 0;
  cudaStream_t stream = nullptr;
};

template <typename Kernel, typename... Args>
void emulate_launch(Kernel kernel, EmuConfig cfg, const Args&... args) {
  using cagul::cuda::smem;
  emu_failure = nullptr;
  if (cfg.smem_bytes > sizeof(smem)) return emu_fail("emulated shared memory too small");
  const unsigned threads = cfg.block.x * cfg.block.y * cfg.block.z;
  for (unsigned z = 0; z < cfg.grid.z; ++z)
    for (unsigned y = 0; y < cfg.grid.y; ++y)
      for (unsigned x = 0; x < cfg.grid.x; ++x) {
        std::memset(smem, 0xFF, cfg.smem_bytes);  // NaN-poisoned: kernels must write first
        for (auto& flag : emu_or_flags) flag = 0;
        std::barrier<> barrier(threads);
        emu_barrier = &barrier;
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = dim3(t % cfg.block.x, t / cfg.block.x % cfg.block.y,
                             t / (cfg.block.x * cfg.block.y));
            blockIdx = dim3(x, y, z);
            blockDim = cfg.block;
            gridDim = cfg.grid;
            emu_or_calls = 0;
            kernel(args...);
          });
        for (auto& th : pool) th.join();
      }
}
