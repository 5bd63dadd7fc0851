// Cross-modal attention importance on NVIDIA GPUs (sm_80 and newer).
//
// Thread block = (block of kBlockN = 64 visual slots, kv head g, sample b), 256 threads. The
// block gathers its K tile (rows visual_index) into shared memory once and reuses it for every
// query head of the kv group and every chunk of kBlockM = 64 query rows (rows query_index,
// staged in shared memory too). Scores of a chunk:
//   fp16/bf16: tensor cores (wmma 16x16x16, fp32 accumulation) on the 16-bit tiles; each of
//              the 8 warps computes a 16 x 32 strip into an fp32 score tile in shared memory;
//   fp32:      SIMT FMAs on fp32 tiles (exact fp32 products, which TF32 would not give);
//              thread (ty, tx) of the 16 x 16 thread grid computes its 4 x 4 scores from
//              float4 shared-memory reads.
// Thread (ty, tx) then adds exp2(s * scale * log2(e) - lse * log2(e)) of rows ty + 16 r to
// the fp32 sums of its columns tx + 16 c (causal and padding masks applied). Chunks whose rows
// see none of the block's keys are skipped. The 16 partial sums of each column are added in
// ty order and written once per (head or kv group): no atomics, so results are deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "launchers.h"

namespace cagul::cuda {
namespace {

constexpr int kBlockN = 64;  // visual slots per thread block
constexpr int kBlockM = 64;  // query rows per staged chunk
constexpr int kLanes = 16;   // the thread grid is kLanes x kLanes
constexpr int kTile = 4;     // each thread owns kTile x kTile scores of the chunk
constexpr int kThreads = kLanes * kLanes;
constexpr int kWarps = kThreads / 32;
static_assert(kLanes * kTile == kBlockN && kLanes * kTile == kBlockM, "tile shape");
constexpr int kMma = 16;               // wmma tile edge
constexpr int kScoreLd = kBlockN + 16;  // row stride of the fp32 score tile: conflict-free reads
static_assert(kWarps * kMma * 2 * kMma == kBlockM * kBlockN, "8 warps x (16 x 32) strips");
constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kNoKey = INT64_MAX;  // position of a padded key slot: visible to no row

template <typename T>
constexpr bool kTensorCores = !std::is_same_v<T, float>;

__host__ __device__ constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Shared memory: key_idx, row_pos, row_limit (int64 x 64 each), row_lse (float x 64),
// col_part (float x 16 x 64), then the K tile, the Q tile and (tensor cores) the score tile.
constexpr size_t kHeaderBytes = align128(sizeof(int64_t) * (kBlockN + 2 * kBlockM) +
                                         sizeof(float) * (kBlockM + kLanes * kBlockN));

template <typename T>
struct SmemLayout {
  // Tiles hold the input type for the tensor cores, fp32 for the SIMT path.
  using Staged = std::conditional_t<kTensorCores<T>, T, float>;
  int dp;  // D zero-padded to a multiple of 16 (wmma k-steps) or 8 (float4 steps)
  // Row stride in elements. 16-bit: dp + 8, so rows are 16 bytes apart modulo 128 (the 8 rows
  // of a wmma load phase hit distinct banks) and 32-byte aligned every 16 rows. fp32: dp + 4,
  // so ld / 4 is odd and float4 reads of 8 consecutive rows hit 8 disjoint bank groups.
  int ld;
  size_t q_off, s_off, bytes;

  __host__ __device__ explicit SmemLayout(int d)
      : dp(kTensorCores<T> ? (d + 15) / 16 * 16 : (d + 7) / 8 * 8),
        ld(kTensorCores<T> ? dp + 8 : dp + 4),
        q_off(kHeaderBytes + align128(sizeof(Staged) * kBlockN * ld)),
        s_off(q_off + align128(sizeof(Staged) * kBlockM * ld)),
        bytes(s_off + (kTensorCores<T> ? sizeof(float) * kBlockM * kScoreLd : 0)) {}
};

// dst[r][c] = src[pos[r] * row_stride + c] (times mul on the fp32 path; 16-bit values are
// copied exactly) for c < d; zero for padded rows (pos < 0) and for c in [d, dp). One warp per
// row: coalesced global reads.
template <typename T>
__device__ __forceinline__ void stage_rows(typename SmemLayout<T>::Staged* dst, int ld, int dp,
                                           const T* src, int64_t row_stride, const int64_t* pos,
                                           int rows, int d, float mul) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < rows; r += kWarps) {
    const int64_t p = pos[r];
    for (int c = lane; c < dp; c += 32) {
      const bool valid = p >= 0 && c < d;
      if constexpr (kTensorCores<T>) {
        dst[r * ld + c] = valid ? src[p * row_stride + c] : T{};
      } else {
        dst[r * ld + c] = valid ? src[p * row_stride + c] * mul : 0.0f;
      }
    }
  }
}

// s[r][c] = q_tile row (ty + 16 r) . k_tile row (tx + 16 c), for thread (ty, tx).
template <typename T, typename Staged>
__device__ __forceinline__ void chunk_scores(float (&s)[kTile][kTile], const Staged* q_tile,
                                             const Staged* k_tile, float* s_tile,
                                             const SmemLayout<T>& lay) {
  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
  if constexpr (kTensorCores<T>) {
    namespace wmma = nvcuda::wmma;
    const int warp = threadIdx.x / 32;
    const int m0 = (warp / 2) * kMma, n0 = (warp % 2) * 2 * kMma;  // 16 x 32 strip
    wmma::fragment<wmma::accumulator, kMma, kMma, kMma, float> acc0, acc1;
    wmma::fill_fragment(acc0, 0.0f);
    wmma::fill_fragment(acc1, 0.0f);
    wmma::fragment<wmma::matrix_a, kMma, kMma, kMma, T, wmma::row_major> a;
    // K^T as a col-major [D, N] matrix is the row-major [N, D] K tile.
    wmma::fragment<wmma::matrix_b, kMma, kMma, kMma, T, wmma::col_major> b0, b1;
    for (int c0 = 0; c0 < lay.dp; c0 += kMma) {
      wmma::load_matrix_sync(a, q_tile + m0 * lay.ld + c0, lay.ld);
      wmma::load_matrix_sync(b0, k_tile + n0 * lay.ld + c0, lay.ld);
      wmma::load_matrix_sync(b1, k_tile + (n0 + kMma) * lay.ld + c0, lay.ld);
      wmma::mma_sync(acc0, a, b0, acc0);
      wmma::mma_sync(acc1, a, b1, acc1);
    }
    wmma::store_matrix_sync(s_tile + m0 * kScoreLd + n0, acc0, kScoreLd, wmma::mem_row_major);
    wmma::store_matrix_sync(s_tile + m0 * kScoreLd + n0 + kMma, acc1, kScoreLd,
                            wmma::mem_row_major);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kTile; ++r) {
#pragma unroll
      for (int c = 0; c < kTile; ++c) s[r][c] = s_tile[(ty + kLanes * r) * kScoreLd + tx + kLanes * c];
    }
  } else {
    for (auto& row : s) {
      for (float& v : row) v = 0.0f;
    }
#pragma unroll 1
    for (int c0 = 0; c0 < lay.dp; c0 += 4) {
      float4 qv[kTile], kv[kTile];
#pragma unroll
      for (int r = 0; r < kTile; ++r)
        qv[r] = *reinterpret_cast<const float4*>(q_tile + (ty + kLanes * r) * lay.ld + c0);
#pragma unroll
      for (int c = 0; c < kTile; ++c)
        kv[c] = *reinterpret_cast<const float4*>(k_tile + (tx + kLanes * c) * lay.ld + c0);
#pragma unroll
      for (int r = 0; r < kTile; ++r) {
#pragma unroll
        for (int c = 0; c < kTile; ++c) {
          float v = s[r][c];
          v = fmaf(qv[r].x, kv[c].x, v);
          v = fmaf(qv[r].y, kv[c].y, v);
          v = fmaf(qv[r].z, kv[c].z, v);
          s[r][c] = fmaf(qv[r].w, kv[c].w, v);
        }
      }
    }
  }
}

// out[j0 + j] = sum over ty (in order) of the threads' accumulators of column j.
__device__ __forceinline__ void write_columns(const float (&acc)[kTile], float* col_part,
                                              float* out, int64_t j0, int64_t nv) {
  const int tx = threadIdx.x % kLanes, ty = threadIdx.x / kLanes;
#pragma unroll
  for (int c = 0; c < kTile; ++c) col_part[ty * kBlockN + tx + kLanes * c] = acc[c];
  __syncthreads();
  const int j = threadIdx.x;
  if (j < kBlockN && j0 + j < nv) {
    float sum = 0.0f;
    for (int t = 0; t < kLanes; ++t) sum += col_part[t * kBlockN + j];
    out[j0 + j] = sum;
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 3) importance_kernel(const ImportanceArgs a) {
  using Staged = typename SmemLayout<T>::Staged;
  extern __shared__ __align__(128) unsigned char smem[];
  const int d = static_cast<int>(a.d);
  const SmemLayout<T> lay(d);
  int64_t* key_idx = reinterpret_cast<int64_t*>(smem);  // [kBlockN] visual_index (-1 = pad)
  int64_t* row_pos = key_idx + kBlockN;                 // [kBlockM] query_index of the chunk
  int64_t* row_limit = row_pos + kBlockM;               // [kBlockM] row sees keys <= limit
  float* row_lse = reinterpret_cast<float*>(row_limit + kBlockM);  // [kBlockM] lse * log2(e)
  float* col_part = row_lse + kBlockM;                  // [kLanes][kBlockN]
  Staged* k_tile = reinterpret_cast<Staged*>(smem + kHeaderBytes);  // [kBlockN][ld]
  Staged* q_tile = reinterpret_cast<Staged*>(smem + lay.q_off);     // [kBlockM][ld]
  float* s_tile = reinterpret_cast<float*>(smem + lay.s_off);       // [kBlockM][kScoreLd]
  // The fp32 path folds scale * log2(e) into the staged q; 16-bit tiles stay exact.
  const float q_mul = kTensorCores<T> ? 1.0f : a.scale * kLog2e;
  const float s_mul = kTensorCores<T> ? a.scale * kLog2e : 1.0f;

  const int tid = threadIdx.x, tx = tid % kLanes, ty = tid / kLanes;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kBlockN;
  const int64_t g = blockIdx.y, b = blockIdx.z;
  const int64_t group = a.hq / a.hkv;

  if (tid < kBlockN) key_idx[tid] = j0 + tid < a.nv ? a.visual_index[b * a.nv + j0 + tid] : -1;
  __syncthreads();
  stage_rows(k_tile, lay.ld, lay.dp,
             static_cast<const T*>(a.k) + b * a.k_stride_b + g * a.k_stride_h, a.k_stride_s,
             key_idx, kBlockN, d, 1.0f);
  int64_t my_key[kTile];  // positions of this thread's columns tx + kLanes * c
#pragma unroll
  for (int c = 0; c < kTile; ++c) {
    const int64_t p = key_idx[tx + kLanes * c];
    my_key[c] = p < 0 ? kNoKey : p;
  }
  int64_t min_key = kNoKey;
  for (int j = 0; j < kBlockN; ++j) {
    const int64_t p = key_idx[j];
    if (p >= 0 && p < min_key) min_key = p;
  }

  float acc[kTile] = {};
  for (int64_t hh = 0; hh < group; ++hh) {
    const int64_t h = g * group + hh;
    const T* q = static_cast<const T*>(a.q) + b * a.q_stride_b + h * a.q_stride_h;
    const float* lse = a.lse + b * a.lse_stride_b + h * a.lse_stride_h;
    for (int64_t i0 = 0; i0 < a.nq; i0 += kBlockM) {
      bool sees_keys = false;
      if (tid < kBlockM) {
        const int64_t p = i0 + tid < a.nq ? a.query_index[b * a.nq + i0 + tid] : -1;
        const int64_t limit = p < 0 ? -1 : (a.causal ? p : kNoKey - 1);
        row_pos[tid] = p;
        row_limit[tid] = limit;
        row_lse[tid] = p < 0 ? 0.0f : lse[p * a.lse_stride_s] * kLog2e;
        sees_keys = limit >= min_key;
      }
      // Barrier: publishes the row data (and, the first time, the K tile).
      if (!__syncthreads_or(sees_keys)) continue;
      stage_rows(q_tile, lay.ld, lay.dp, q, a.q_stride_s, row_pos, kBlockM, d, q_mul);
      __syncthreads();

      float s[kTile][kTile];
      chunk_scores(s, q_tile, k_tile, s_tile, lay);
#pragma unroll
      for (int r = 0; r < kTile; ++r) {
        const int row = ty + kLanes * r;
        const int64_t limit = row_limit[row];
        const float l = row_lse[row];
#pragma unroll
        for (int c = 0; c < kTile; ++c)
          acc[c] += my_key[c] <= limit ? exp2f(s[r][c] * s_mul - l) : 0.0f;
      }
      __syncthreads();  // the tiles and the row data are rewritten by the next chunk
    }
    if (a.per_head) {
      write_columns(acc, col_part, a.out + (b * a.hq + h) * a.nv, j0, a.nv);
#pragma unroll
      for (int c = 0; c < kTile; ++c) acc[c] = 0.0f;
    }
  }
  if (!a.per_head) write_columns(acc, col_part, a.out + (b * a.hkv + g) * a.nv, j0, a.nv);
}

template <typename T>
cudaError_t launch(const ImportanceArgs& a, cudaStream_t stream) {
  const size_t smem = SmemLayout<T>(static_cast<int>(a.d)).bytes;
  cudaError_t err = cudaFuncSetAttribute(
      importance_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((a.nv + kBlockN - 1) / kBlockN),
                  static_cast<unsigned>(a.hkv), static_cast<unsigned>(a.batch));
  importance_kernel<T><<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_cross_modal_importance(const ImportanceArgs& args, ScalarType dtype,
                                          cudaStream_t stream) {
  if (args.d < 1 || args.d > kImportanceMaxHeadDim || args.hkv < 1 || args.hq % args.hkv != 0)
    return cudaErrorInvalidValue;
  if (args.batch == 0 || args.nv == 0) return cudaSuccess;
  if ((args.nv + kBlockN - 1) / kBlockN > INT32_MAX || args.hkv > 65535 || args.batch > 65535)
    return cudaErrorInvalidConfiguration;
  switch (dtype) {
    case ScalarType::Float32:
      return launch<float>(args, stream);
    case ScalarType::Float16:
      return launch<__half>(args, stream);
    case ScalarType::BFloat16:
      return launch<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cagul::cuda
