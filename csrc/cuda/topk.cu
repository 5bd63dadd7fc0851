// Lowest-importance token selection on the GPU (the scheme of cagul_kernels/triton/topk.py).
//
// Every slot becomes a word (key << slot_bits | slot): key is an order-preserving image of
// the value (ascending keys = ascending floats, -0.0 == +0.0, padded slots above +inf), so
// comparing words compares (value, slot) and the words of a row are distinct.
//   1. sort_chunks: one block per (chunk of kSelectChunk slots, row) sorts its words with
//      cub::BlockRadixSort over the used bits into a workspace;
//   2. rank: one thread per word finds the number of smaller words of the row (its local
//      position plus a binary search in every other chunk) and, if that rank is below the
//      row's count, writes slot and position there.
// Each output element has exactly one writer: the result is deterministic.
#include <cub/block/block_radix_sort.cuh>

#include "launchers.h"

namespace cagul::cuda {
namespace {

constexpr int kSortThreads = 256;
constexpr int kSortItems = static_cast<int>(kSelectChunk) / kSortThreads;
constexpr int kRankThreads = 256;
static_assert(kSortThreads * kSortItems == kSelectChunk, "chunk = threads * items");

__device__ __forceinline__ uint64_t order_key(float v) {
  uint32_t u = __float_as_uint(v);
  if ((u & 0x7fffffffu) == 0) u = 0;  // -0.0 ties with +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(kSortThreads)
    sort_chunks(const float* __restrict__ importance, int64_t importance_row_stride,
                const int64_t* __restrict__ visual_index, int64_t visual_index_row_stride,
                int64_t nv, int slot_bits, int64_t row_words, uint64_t* __restrict__ words) {
  using Sort = cub::BlockRadixSort<uint64_t, kSortThreads, kSortItems>;
  __shared__ typename Sort::TempStorage temp;
  const int64_t row = blockIdx.y;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kSelectChunk;
  const float* values = importance + row * importance_row_stride;
  const int64_t* index = visual_index + row * visual_index_row_stride;
  uint64_t w[kSortItems];
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) {  // striped: coalesced loads (order does not matter)
    const int64_t slot = first + i * kSortThreads + threadIdx.x;
    const uint64_t key = slot < nv && index[slot] >= 0 ? order_key(values[slot]) : 0xffffffffull;
    w[i] = key << slot_bits | static_cast<uint64_t>(slot);
  }
  Sort(temp).SortBlockedToStriped(w, 0, 32 + slot_bits);
  uint64_t* out = words + row * row_words + first;
#pragma unroll
  for (int i = 0; i < kSortItems; ++i) out[i * kSortThreads + threadIdx.x] = w[i];
}

__global__ void __launch_bounds__(kRankThreads)
    rank(const uint64_t* __restrict__ words, const int64_t* __restrict__ visual_index,
         int64_t visual_index_row_stride, const int64_t* __restrict__ counts, int slot_bits,
         int64_t row_words, int64_t width, int64_t* __restrict__ slots,
         int64_t* __restrict__ positions) {
  const int64_t row = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRankThreads + threadIdx.x;
  if (i >= row_words) return;
  const uint64_t* row_ptr = words + row * row_words;
  const uint64_t w = row_ptr[i];
  const int64_t count = counts[row];
  const int64_t own = i / kSelectChunk;
  int64_t r = i - own * kSelectChunk;  // smaller words in the own (sorted) chunk
  // Padded slots and words already past the count in their own chunk are never selected.
  if ((w >> slot_bits) == 0xffffffffull || r >= count) return;
  for (int64_t c = 0; c < row_words / kSelectChunk && r < count; ++c) {
    if (c == own) continue;
    const uint64_t* chunk = row_ptr + c * kSelectChunk;
    int64_t pos = 0;  // binary lifting: largest pos <= chunk - 1 with chunk[pos - 1] < w
#pragma unroll
    for (int64_t step = kSelectChunk / 2; step >= 1; step /= 2)
      if (chunk[pos + step - 1] < w) pos += step;
    r += pos + (chunk[kSelectChunk - 1] < w);
  }
  if (r >= count) return;
  const int64_t slot = static_cast<int64_t>(w & ((uint64_t{1} << slot_bits) - 1));
  slots[row * width + r] = slot;
  positions[row * width + r] = visual_index[row * visual_index_row_stride + slot];
}

}  // namespace

cudaError_t select_low_importance(const float* importance, int64_t importance_row_stride,
                                  const int64_t* visual_index, int64_t visual_index_row_stride,
                                  const int64_t* counts, int64_t batch, int64_t nv, int64_t width,
                                  uint64_t* words, int64_t* slots, int64_t* positions,
                                  cudaStream_t stream) {
  if (batch == 0 || width == 0) return cudaSuccess;
  if (batch > 65535) return cudaErrorInvalidConfiguration;  // rows are grid.y
  const int64_t row_words = select_row_words(nv);
  int slot_bits = 1;
  while ((int64_t{1} << slot_bits) < row_words) ++slot_bits;
  sort_chunks<<<dim3(static_cast<unsigned>(row_words / kSelectChunk), static_cast<unsigned>(batch)),
                kSortThreads, 0, stream>>>(importance, importance_row_stride, visual_index,
                                           visual_index_row_stride, nv, slot_bits, row_words,
                                           words);
  const unsigned rank_blocks = static_cast<unsigned>((row_words + kRankThreads - 1) / kRankThreads);
  rank<<<dim3(rank_blocks, static_cast<unsigned>(batch)), kRankThreads, 0, stream>>>(
      words, visual_index, visual_index_row_stride, counts, slot_bits, row_words, width, slots,
      positions);
  return cudaGetLastError();
}

}  // namespace cagul::cuda
