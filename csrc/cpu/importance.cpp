// Cross-modal attention importance on the CPU.
//
// Work item = (sample b, kv head g, block of BLOCK_N visual slots). For each query head of
// the group and each block of BLOCK_M valid query rows, the tile S = (scale*Q) K^T is one
// BLAS call on gathered fp32 copies; exp(S - lse) is summed down the columns with a
// vectorised exp and the causal mask. Per-thread scratch is three tiles. Every output
// element is summed by one thread in a fixed order (query heads, then query blocks, then
// rows): results are deterministic and independent of the thread count. The caller reduces
// the kv-group sums and normalises (cagul_kernels/ops/importance.py).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <vector>

#include "kernels.h"
#include "vec_math.h"

namespace cagul::cpu {
namespace {

constexpr int64_t BLOCK_N = 256;  // visual slots per work item
constexpr int64_t BLOCK_M = 128;  // query rows per tile

// acc[j] += sum_i exp(s[i, j] - lse[i]) * (key_pos[j] <= row_limit[i]); padded keys have
// key_pos = INT32_MAX, and row_limit is the query position (causal) or INT32_MAX - 1.
// Positions are int32 here so that the mask vectorises alongside the float lanes.
CAGUL_CPU_CLONES
void accumulate_probs(const float* __restrict__ s, int64_t ld_s, int64_t rows, int64_t cols,
                      const float* __restrict__ row_lse, const int32_t* __restrict__ row_limit,
                      const int32_t* __restrict__ key_pos, float* __restrict__ acc) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* srow = s + i * ld_s;
    const float l = row_lse[i];
    const int32_t limit = row_limit[i];
    for (int64_t j = 0; j < cols; ++j) {
      const float e = exp_fast(srow[j] - l);
      acc[j] += key_pos[j] <= limit ? e : 0.0f;
    }
  }
}

template <typename scalar_t>
struct ImportanceKernel {
  ImportanceArgs a;  // a copy: its fields are read in the inner loops
  const scalar_t* q = static_cast<const scalar_t*>(a.q);
  const scalar_t* k = static_cast<const scalar_t*>(a.k);

  // Adds the block's column sums into out (per query head: out_per_head[h][j]; else out[j]).
  void run_block(int64_t b, int64_t g, int64_t j0, float* out_sum, float* out_per_head,
                 int64_t out_head_stride, float* kt, float* qt, float* st, float* row_lse,
                 int32_t* row_limit, int32_t* key_pos) const {
    const int64_t n = std::min(BLOCK_N, a.nv - j0);
    const int64_t* vidx = a.visual_index + b * a.nv + j0;
    // K^T tile [d, BLOCK_N] (padded slots -> zero columns), key positions, smallest position.
    int64_t min_key = INT64_MAX;
    int64_t valid_keys = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t pos = vidx[j];
      key_pos[j] = pos < 0 ? INT32_MAX : static_cast<int32_t>(pos);
      if (pos < 0) {
        for (int64_t c = 0; c < a.d; ++c) kt[c * BLOCK_N + j] = 0.0f;
        continue;
      }
      ++valid_keys;
      min_key = std::min(min_key, pos);
      const scalar_t* row = k + b * a.k_stride_b + g * a.k_stride_h + pos * a.k_stride_s;
      for (int64_t c = 0; c < a.d; ++c) kt[c * BLOCK_N + j] = static_cast<float>(row[c]);
    }
    if (valid_keys == 0) return;
    const int64_t group = a.hq / a.hkv;
    const int64_t* qidx = a.query_index + b * a.nq;
    for (int64_t hh = 0; hh < group; ++hh) {
      const int64_t h = g * group + hh;
      float* acc = out_per_head != nullptr ? out_per_head + hh * out_head_stride : out_sum;
      for (int64_t i0 = 0; i0 < a.nq; i0 += BLOCK_M) {
        // Gather the valid query rows of this block that can see at least one key.
        int64_t m = 0;
        for (int64_t i = i0; i < std::min(a.nq, i0 + BLOCK_M); ++i) {
          const int64_t pos = qidx[i];
          if (pos < 0 || (a.causal && pos < min_key)) continue;
          const scalar_t* row = q + b * a.q_stride_b + h * a.q_stride_h + pos * a.q_stride_s;
          float* dst = qt + m * a.d;
          for (int64_t c = 0; c < a.d; ++c) dst[c] = static_cast<float>(row[c]) * a.scale;
          row_lse[m] = a.lse[b * a.lse_stride_b + h * a.lse_stride_h + pos * a.lse_stride_s];
          row_limit[m] = a.causal ? static_cast<int32_t>(pos) : INT32_MAX - 1;
          ++m;
        }
        if (m == 0) continue;
        at::native::cpublas::brgemm(m, n, a.d, a.d, BLOCK_N, BLOCK_N, false, qt, kt, st, false);
        accumulate_probs(st, BLOCK_N, m, n, row_lse, row_limit, key_pos, acc);
      }
    }
  }
};

}  // namespace

void cross_modal_importance(const ImportanceArgs& args, const at::Tensor& q) {
  TORCH_CHECK(q.size(2) < INT32_MAX, "sequence length must fit in int32");
  if (args.nq == 0 || args.nv == 0) return;
  const int64_t group = args.hq / args.hkv;
  const int64_t n_blocks = (args.nv + BLOCK_N - 1) / BLOCK_N;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "cross_modal_importance_cpu", [&] {
    const ImportanceKernel<scalar_t> kernel{args};
    const int64_t hq = args.hq, hkv = args.hkv, nv = args.nv, d = args.d;
    at::parallel_for(0, args.batch * hkv * n_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> kt(d * BLOCK_N), qt(BLOCK_M * d), st(BLOCK_M * BLOCK_N), row_lse(BLOCK_M);
      std::vector<int32_t> row_limit(BLOCK_M), key_pos(BLOCK_N);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t blk = item % n_blocks, g = (item / n_blocks) % hkv, b = item / (n_blocks * hkv);
        const int64_t j0 = blk * BLOCK_N;
        float* sum_dst = args.per_head ? nullptr : args.out + (b * hkv + g) * nv + j0;
        float* head_dst = args.per_head ? args.out + (b * hq + g * group) * nv + j0 : nullptr;
        kernel.run_block(b, g, j0, sum_dst, head_dst, nv, kt.data(), qt.data(), st.data(),
                         row_lse.data(), row_limit.data(), key_pos.data());
      }
    });
  });
}

}  // namespace cagul::cpu
