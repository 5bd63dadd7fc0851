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
  const scalar_t* q;
  const scalar_t* k;
  const float* lse;
  const int64_t* query_index;
  const int64_t* visual_index;
  int64_t hq, hkv, d, nq, nv;
  int64_t q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, l_sb, l_sh, l_ss;  // element strides (last dim 1 for q, k)
  float scale;
  bool causal;

  // Adds the block's column sums into out (per query head: out_per_head[h][j]; else out[j]).
  void run_block(int64_t b, int64_t g, int64_t j0, float* out_sum, float* out_per_head,
                 int64_t out_head_stride, float* kt, float* qt, float* st, float* row_lse,
                 int32_t* row_limit, int32_t* key_pos) const {
    const int64_t n = std::min(BLOCK_N, nv - j0);
    const int64_t* vidx = visual_index + b * nv + j0;
    // K^T tile [d, BLOCK_N] (padded slots -> zero columns), key positions, smallest position.
    int64_t min_key = INT64_MAX;
    int64_t valid_keys = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t pos = vidx[j];
      key_pos[j] = pos < 0 ? INT32_MAX : static_cast<int32_t>(pos);
      if (pos < 0) {
        for (int64_t c = 0; c < d; ++c) kt[c * BLOCK_N + j] = 0.0f;
        continue;
      }
      ++valid_keys;
      min_key = std::min(min_key, pos);
      const scalar_t* row = k + b * k_sb + g * k_sh + pos * k_ss;
      for (int64_t c = 0; c < d; ++c) kt[c * BLOCK_N + j] = static_cast<float>(row[c]);
    }
    if (valid_keys == 0) return;
    const int64_t group = hq / hkv;
    const int64_t* qidx = query_index + b * nq;
    for (int64_t hh = 0; hh < group; ++hh) {
      const int64_t h = g * group + hh;
      float* acc = out_per_head != nullptr ? out_per_head + hh * out_head_stride : out_sum;
      for (int64_t i0 = 0; i0 < nq; i0 += BLOCK_M) {
        // Gather the valid query rows of this block that can see at least one key.
        int64_t m = 0;
        for (int64_t i = i0; i < std::min(nq, i0 + BLOCK_M); ++i) {
          const int64_t pos = qidx[i];
          if (pos < 0 || (causal && pos < min_key)) continue;
          const scalar_t* row = q + b * q_sb + h * q_sh + pos * q_ss;
          float* dst = qt + m * d;
          for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<float>(row[c]) * scale;
          row_lse[m] = lse[b * l_sb + h * l_sh + pos * l_ss];
          row_limit[m] = causal ? static_cast<int32_t>(pos) : INT32_MAX - 1;
          ++m;
        }
        if (m == 0) continue;
        at::native::cpublas::brgemm(m, n, d, d, BLOCK_N, BLOCK_N, false, qt, kt, st, false);
        accumulate_probs(st, BLOCK_N, m, n, row_lse, row_limit, key_pos, acc);
      }
    }
  }
};

}  // namespace

at::Tensor cross_modal_importance(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& lse,
                                  const at::Tensor& query_index, const at::Tensor& visual_index,
                                  double scale, bool causal, bool per_head) {
  TORCH_CHECK(query_index.is_contiguous() && visual_index.is_contiguous(), "indices must be contiguous");
  TORCH_CHECK(query_index.scalar_type() == at::kLong && visual_index.scalar_type() == at::kLong,
              "indices must be int64");
  TORCH_CHECK(lse.scalar_type() == at::kFloat, "lse must be float32");
  TORCH_CHECK(q_in.size(2) < INT32_MAX, "sequence length must fit in int32");
  // The tile gathers read rows with unit stride along D.
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const int64_t b_size = q.size(0), hq = q.size(1), d = q.size(3), hkv = k.size(1);
  const int64_t nq = query_index.size(1), nv = visual_index.size(1);
  const int64_t group = hq / hkv;
  const int64_t n_blocks = (nv + BLOCK_N - 1) / BLOCK_N;

  // Per-head column sums, or per-kv-group sums (the op reduces them over groups in order).
  at::Tensor out = at::zeros(per_head ? std::vector<int64_t>{b_size, hq, nv}
                                      : std::vector<int64_t>{b_size, hkv, nv},
                             q.options().dtype(at::kFloat));
  float* out_ptr = out.data_ptr<float>();
  if (nq > 0 && nv > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "cross_modal_importance_cpu", [&] {
      const ImportanceKernel<scalar_t> kernel{
          q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), lse.const_data_ptr<float>(),
          query_index.const_data_ptr<int64_t>(), visual_index.const_data_ptr<int64_t>(),
          hq, hkv, d, nq, nv,
          q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
          lse.stride(0), lse.stride(1), lse.stride(2),
          static_cast<float>(scale), causal};
      at::parallel_for(0, b_size * hkv * n_blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> kt(d * BLOCK_N), qt(BLOCK_M * d), st(BLOCK_M * BLOCK_N), row_lse(BLOCK_M);
        std::vector<int32_t> row_limit(BLOCK_M), key_pos(BLOCK_N);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t blk = item % n_blocks, g = (item / n_blocks) % hkv, b = item / (n_blocks * hkv);
          const int64_t j0 = blk * BLOCK_N;
          float* sum_dst = per_head ? nullptr : out_ptr + (b * hkv + g) * nv + j0;
          float* head_dst = per_head ? out_ptr + (b * hq + g * group) * nv + j0 : nullptr;
          kernel.run_block(b, g, j0, sum_dst, head_dst, nv, kt.data(), qt.data(), st.data(),
                           row_lse.data(), row_limit.data(), key_pos.data());
        }
      });
    });
  }
  return out;
}

}  // namespace cagul::cpu
