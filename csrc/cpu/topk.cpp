// Lowest-importance token selection on the CPU: MSD radix select over an adaptive key range.
//
// Every valid slot becomes a word (key << 32 | slot), where key is an order-preserving
// 32-bit image of the value (ascending keys = ascending floats, -0.0 == +0.0), so ordering
// words orders by (value, slot) and ties need no extra care. Per row:
//   1. the valid words, in slot order;
//   2. a histogram over the row's own key range [lo, hi] (at most 2048 bins, so it stays in
//      L1) finds the bin t holding the count-th smallest word; words in bins < t are
//      scattered (stably) into their bucket of the output, bin t's words become the
//      candidates, and the loop repeats on them for the rest of the count;
//   3. every output bucket is sorted by the same radix scheme, down to insertion sort for
//      small buckets; all-equal buckets are already in slot order.
// Each row is validated (NaN at a valid slot, index < -1, k > valid count) in the same pass
// that finds its key range. Rows are spread over the threads; when there are fewer rows
// than threads, a long row is split into one chunk per thread: per-chunk statistics and
// histograms, then each chunk owns a run of buckets that it scatters (from the whole row,
// in slot order), sorts and writes. Pieces of work are fixed, so the result does not depend
// on the thread count; see for_chunks for how they are handed out.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "kernels.h"
#include "vec_math.h"

namespace cagul::cpu {
namespace {

constexpr int kMaxBinBits = 11;
constexpr int64_t kMaxBins = int64_t{1} << kMaxBinBits;
constexpr int64_t kSmall = 32;      // insertion sort up to this many words
constexpr int64_t kMinChunk = 32768;  // smallest row chunk worth a thread
constexpr int64_t kMinParallel = 32768;  // fewer slots in all: one thread (as ATen's grain)

// The float's bits -> a key with ascending keys <-> ascending floats; -0.0 ties with +0.0.
inline uint32_t order_key(uint32_t u) {
  u &= -static_cast<uint32_t>((u & 0x7fffffffu) != 0);
  return u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
}

inline uint32_t float_bits(const float* p) {
  uint32_t u;
  std::memcpy(&u, p, sizeof(u));
  return u;
}

inline uint32_t key_of(uint64_t word) { return static_cast<uint32_t>(word >> 32); }

inline int bit_length(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

// Bins over the key range [lo, hi] for m words: about m / 4 of them (at least 16 when the
// range allows), at most 2^11, so that a histogram stays in L1.
struct Range {
  uint32_t lo;
  int shift;
  int64_t bins;

  Range(uint32_t lo_, uint32_t hi, int64_t m) : lo(lo_) {
    const int want = std::clamp(bit_length(m) - 2, 4, kMaxBinBits);
    shift = std::max(0, bit_length(hi - lo) - want);
    bins = static_cast<int64_t>((hi - lo) >> shift) + 1;
  }
  uint32_t bin(uint64_t word) const { return (key_of(word) - lo) >> shift; }
};

inline std::pair<int64_t, int64_t> chunk_range(int64_t c, int64_t chunks, int64_t n) {
  return {n * c / chunks, n * (c + 1) / chunks};
}

// Runs fn(c) for every piece c in [0, n), each a fixed share of the work, so the result does
// not depend on which thread runs which piece. Pieces 1.. are offered to ATen's inter-op
// thread pool; the caller runs piece 0, then every piece no pool thread has claimed yet.
// A fork-join region would wait for every worker to be scheduled, which on a loaded
// machine can take milliseconds; here the caller never waits for a worker that has not
// started, only for one already running its piece.
template <typename F>
void for_chunks(int64_t n, const F& fn) {
  if (n == 1) {
    fn(0);
    return;
  }
  struct Piece {
    std::atomic<bool> claimed{false}, done{false};
  };
  // Shared with the pool tasks, which may start after this function has returned; fn is
  // only used by a task that claimed its piece, and then this function waits for it.
  const std::shared_ptr<Piece[]> pieces(new Piece[n]);
  for (int64_t c = 1; c < n; ++c) {
    at::launch([pieces, c, &fn] {
      if (pieces[c].claimed.exchange(true)) return;
      fn(c);
      pieces[c].done.store(true, std::memory_order_release);
    });
  }
  fn(0);
  for (int64_t c = 1; c < n; ++c) {
    if (!pieces[c].claimed.exchange(true)) {
      fn(c);
      continue;
    }
    while (!pieces[c].done.load(std::memory_order_acquire)) std::this_thread::yield();
  }
}

void insertion_sort(uint64_t* w, int64_t m) {
  for (int64_t i = 1; i < m; ++i) {
    const uint64_t x = w[i];
    int64_t j = i;
    for (; j > 0 && w[j - 1] > x; --j) w[j] = w[j - 1];
    w[j] = x;
  }
}

void key_range(const uint64_t* w, int64_t m, uint32_t* lo, uint32_t* hi) {
  uint32_t a = 0xffffffffu, b = 0;
  for (int64_t i = 0; i < m; ++i) {
    a = std::min(a, key_of(w[i]));
    b = std::max(b, key_of(w[i]));
  }
  *lo = a;
  *hi = b;
}

// Sorts w[0, m) ascending; scratch holds m words.
void sort_words(uint64_t* w, int64_t m, uint64_t* scratch) {
  if (m <= kSmall) {
    insertion_sort(w, m);
    return;
  }
  uint32_t lo, hi;
  key_range(w, m, &lo, &hi);
  if (lo == hi) return;  // equal keys: already in slot order
  const Range r(lo, hi, m);
  uint32_t end[kMaxBins + 1];
  std::fill(end, end + r.bins + 1, 0u);
  for (int64_t i = 0; i < m; ++i) ++end[r.bin(w[i]) + 1];
  for (int64_t t = 0; t < r.bins; ++t) end[t + 1] += end[t];
  for (int64_t i = 0; i < m; ++i) scratch[end[r.bin(w[i])]++] = w[i];  // end[t]: bucket t's end
  std::memcpy(w, scratch, m * sizeof(uint64_t));
  for (int64_t t = 0, start = 0; t < r.bins; start = end[t++])
    if (end[t] - start > 1) sort_words(w + start, end[t] - start, scratch + start);
}

// out[0, need) = the need smallest of the words w[0, m), sorted (1 <= need <= m); w and
// scratch (m words) are clobbered.
void select_words(uint64_t* w, int64_t m, int64_t need, uint64_t* out, uint64_t* scratch) {
  while (true) {
    if (need == m || m <= kSmall) {
      sort_words(w, m, scratch);
      std::memcpy(out, w, need * sizeof(uint64_t));
      return;
    }
    uint32_t lo, hi;
    key_range(w, m, &lo, &hi);
    if (lo == hi) {  // equal keys: the first words in slot order
      std::memcpy(out, w, need * sizeof(uint64_t));
      return;
    }
    const Range r(lo, hi, m);
    uint32_t hist[kMaxBins];
    std::fill(hist, hist + r.bins, 0u);
    for (int64_t i = 0; i < m; ++i) ++hist[r.bin(w[i])];
    uint32_t below = 0, t = 0, end[kMaxBins];  // end[b]: end of output bucket b < t
    for (; below + hist[t] < need; ++t) end[t] = below += hist[t];
    uint32_t pos[kMaxBins], cand = 0;
    for (uint32_t b = 0; b < t; ++b) pos[b] = end[b] - hist[b];
    for (int64_t i = 0; i < m; ++i) {
      const uint64_t x = w[i];
      const uint32_t b = r.bin(x);
      if (b < t) out[pos[b]++] = x;
      else if (b == t) scratch[cand++] = x;
    }
    for (uint32_t b = 0, start = 0; b < t; start = end[b++])
      if (end[b] - start > 1) sort_words(out + start, end[b] - start, w + start);
    std::swap(w, scratch);
    need -= below;
    out += below;
    m = cand;
  }
}

template <typename T>
struct Buffer {
  std::unique_ptr<T[]> data;
  int64_t size = 0;
  T* get(int64_t n) {
    if (n > size) {
      data.reset(new T[n]);
      size = n;
    }
    return data.get();
  }
  void release() {
    data.reset();
    size = 0;
  }
};

// Per (row, chunk): valid slots (visual_index >= 0) and the range of their keys, NaN at a
// valid slot, index below -1.
struct Stats {
  int64_t valid = 0;
  uint32_t lo = 0xffffffffu, hi = 0;
  bool nan = false, bad_index = false;
};

// A thread's buffers, kept between calls (a call on a short row would otherwise spend a
// good part of its time in malloc), up to kKeepWords words each.
struct Workspace {
  static constexpr int64_t kKeepWords = int64_t{1} << 14;  // 128 KiB per buffer
  Buffer<uint64_t> words, scratch, out, tmp;
  Buffer<uint32_t> hist;
  Buffer<int64_t> start;
  std::vector<Stats> stats;
  std::vector<int64_t> first, own;

  void trim() {
    for (Buffer<uint64_t>* b : {&words, &scratch, &out, &tmp})
      if (b->size > kKeepWords) b->release();
    if (hist.size > kKeepWords) hist.release();
  }
  static Workspace& of_this_thread() {
    thread_local Workspace ws;
    return ws;
  }
};

// Branch-free so that it vectorises.
CAGUL_CPU_CLONES
Stats chunk_stats(const float* values, const int64_t* vidx, int64_t lo, int64_t hi) {
  int64_t padded = 0, bad = 0;
  uint32_t key_lo = 0xffffffffu, key_hi = 0, nan = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const uint32_t u = float_bits(values + i);
    const int64_t idx = vidx[i];
    const uint32_t ok = idx >= 0 ? 0xffffffffu : 0u;
    const uint32_t key = order_key(u);
    padded -= idx >> 63;
    key_lo = std::min(key_lo, key | ~ok);
    key_hi = std::max(key_hi, key & ok);
    nan |= ok & ((u & 0x7fffffffu) > 0x7f800000u);
    bad |= idx < -1;
  }
  return {(hi - lo) - padded, key_lo, key_hi, nan != 0, bad != 0};
}

inline uint64_t word_of(const float* values, int64_t i) {
  return static_cast<uint64_t>(order_key(float_bits(values + i))) << 32 | static_cast<uint64_t>(i);
}

// dst[0, hi - lo) = the words of slots [lo, hi), every one valid (vectorises).
CAGUL_CPU_CLONES
void all_words(const float* values, int64_t lo, int64_t hi, uint64_t* dst) {
  for (int64_t i = lo; i < hi; ++i) dst[i - lo] = word_of(values, i);
}

// Validates, selects and writes one row (count = k, or from ratio, up to width slots, the
// rest -1); its passes over the whole row run on `chunks` threads. Returns the count, or -1
// (writing nothing) when the row is invalid.
struct RowTask {
  const float* values;  // [Nv]
  const int64_t* vidx;  // [Nv]
  int64_t nv, k;
  double ratio;
  int64_t width, chunks;
  int64_t* slots;      // [width]
  int64_t* positions;  // [width]

  void write(const uint64_t* out, int64_t count, int64_t lo, int64_t hi) const {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t slot = i < count ? static_cast<int64_t>(out[i] & 0xffffffffu) : -1;
      slots[i] = slot;
      positions[i] = slot >= 0 ? vidx[slot] : -1;
    }
  }

  int64_t run(Workspace& ws) const {
    std::vector<Stats>& stats = ws.stats;
    stats.assign(chunks, Stats{});
    for_chunks(chunks, [&](int64_t c) {
      auto [a, e] = chunk_range(c, chunks, nv);
      stats[c] = chunk_stats(values, vidx, a, e);
    });
    int64_t m = 0;
    uint32_t lo = 0xffffffffu, hi = 0;
    std::vector<int64_t>& first = ws.first;  // chunk c's words start after chunks < c
    first.assign(chunks + 1, 0);
    for (int64_t c = 0; c < chunks; ++c) {
      if (stats[c].nan || stats[c].bad_index) return -1;
      first[c + 1] = m += stats[c].valid;
      lo = std::min(lo, stats[c].lo);
      hi = std::max(hi, stats[c].hi);
    }
    const int64_t count = ratio > 0 ? ratio_count(ratio, m) : k;
    if (count > m) return -1;
    uint64_t* words = ws.words.get(m);
    uint64_t* scratch = ws.scratch.get(m);
    uint64_t* out = ws.out.get(count);
    uint64_t* tmp = ws.tmp.get(count);
    const bool radix = count > 0 && count < m && m > kSmall && lo < hi;
    const Range r(lo, hi, m);
    uint32_t* hist = ws.hist.get(chunks * kMaxBins);
    // Pass 1: the valid words in slot order, and per-chunk histograms.
    for_chunks(chunks, [&](int64_t c) {
      auto [a, e] = chunk_range(c, chunks, nv);
      uint64_t* dst = words + first[c];
      if (stats[c].valid == e - a) {
        all_words(values, a, e, dst);
        dst += e - a;
      } else {
        for (int64_t i = a; i < e; ++i)
          if (vidx[i] >= 0) *dst++ = word_of(values, i);
      }
      if (!radix) return;
      uint32_t* h = hist + c * kMaxBins;
      std::fill(h, h + r.bins, 0u);
      for (const uint64_t* w = words + first[c]; w < dst; ++w) ++h[r.bin(*w)];
    });
    if (!radix) {
      if (count > 0) select_words(words, m, count, out, scratch);
      write(out, count, 0, width);
      return count;
    }
    // Bin t holds the count-th word; output bucket b < t is [start[b], start[b + 1]).
    int64_t* start = ws.start.get(r.bins + 1);
    start[0] = 0;
    int64_t t = 0;
    for (;; ++t) {
      int64_t n = 0;
      for (int64_t c = 0; c < chunks; ++c) n += hist[c * kMaxBins + t];
      start[t + 1] = start[t] + n;
      if (start[t + 1] >= count) break;
    }
    // Pass 2: chunk c owns the buckets [own[c], own[c + 1]) (about equal in size): it
    // scatters their words from the whole row in slot order, sorts and writes them. The
    // last chunk also collects bin t's words, the candidates for the rest of the count.
    std::vector<int64_t>& own = ws.own;
    own.assign(chunks + 1, t);
    own[0] = 0;
    for (int64_t c = 1, b = 0; c < chunks; ++c) {
      while (b < t && start[b] * chunks < c * start[t]) ++b;
      own[c] = b;
    }
    int64_t n_cand = 0;
    for_chunks(chunks, [&](int64_t c) {
      const uint32_t b0 = own[c], n_own = own[c + 1] - own[c];
      const bool last = c == chunks - 1;
      uint32_t* pos = hist + c * kMaxBins;
      for (uint32_t b = 0; b < n_own; ++b) pos[b] = start[b0 + b];
      int64_t nc = 0;
      for (int64_t i = 0; i < m; ++i) {
        const uint64_t x = words[i];
        const uint32_t b = r.bin(x);
        if (b - b0 < n_own) out[pos[b - b0]++] = x;
        else if (last && b == t) scratch[nc++] = x;
      }
      if (last) n_cand = nc;
      for (uint32_t b = b0; b < b0 + n_own; ++b)
        if (start[b + 1] - start[b] > 1)
          sort_words(out + start[b], start[b + 1] - start[b], tmp + start[b]);
      write(out, count, start[b0], start[b0 + n_own]);
    });
    select_words(scratch, n_cand, count - start[t], out + start[t], words);
    write(out, count, start[t], width);
    return count;
  }
};

// Raises the first error in row order, naming the row and slot.
void raise_first_error(const float* values, const int64_t* vidx, int64_t b_size, int64_t nv,
                       int64_t k, double ratio) {
  for (int64_t b = 0; b < b_size; ++b) {
    int64_t valid = 0;
    for (int64_t j = 0; j < nv; ++j) {
      const int64_t idx = vidx[b * nv + j];
      TORCH_CHECK_VALUE(idx >= -1, "select_low_importance: visual_index entries must be -1 ",
                        "(padding) or >= 0, found ", idx, " at row ", b, ", slot ", j);
      const float v = values[b * nv + j];
      TORCH_CHECK_VALUE(idx < 0 || v == v, "select_low_importance: importance is NaN at row ",
                        b, ", slot ", j, " (a valid visual token)");
      valid += idx >= 0;
    }
    TORCH_CHECK_VALUE(ratio > 0 || k <= valid, "select_low_importance: k=", k, " exceeds the ",
                      valid, " valid visual tokens of row ", b);
  }
}

}  // namespace

int64_t ratio_count(double ratio, int64_t n_valid) {
  const double x = ratio * static_cast<double>(n_valid);
  const double r = std::nearbyint(x);
  return static_cast<int64_t>(std::abs(x - r) <= 1e-9 * x ? r : std::ceil(x));
}

std::tuple<at::Tensor, at::Tensor> select_low_importance(const at::Tensor& importance_in,
                                                         const at::Tensor& visual_index_in,
                                                         int64_t k, double ratio) {
  // The kernel reads fp32 values and int64 indices; other dtypes are converted (exactly).
  auto as = [](const at::Tensor& t, at::ScalarType type) {
    return t.scalar_type() == type && t.is_contiguous() ? t : t.to(type).contiguous();
  };
  const at::Tensor importance = as(importance_in, at::kFloat);
  const at::Tensor visual_index = as(visual_index_in, at::kLong);
  const int64_t b_size = importance.size(0), nv = importance.size(1);
  TORCH_CHECK(nv < (int64_t{1} << 32), "select_low_importance: at most 2^32 - 1 slots per row");
  const float* values = importance.const_data_ptr<float>();
  const int64_t* vidx = visual_index.const_data_ptr<int64_t>();
  // Room for the largest possible count; narrowed below when every row is shorter.
  const int64_t cap = ratio > 0 ? ratio_count(ratio, nv) : k;
  at::Tensor slots = at::empty({b_size, cap}, visual_index.options());
  at::Tensor positions = at::empty({b_size, cap}, visual_index.options());
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = b_size < threads ? std::clamp<int64_t>(nv / kMinChunk, 1, threads) : 1;
  std::vector<int64_t> counts(b_size);
  // Few long rows: one at a time, each split over the threads; else rows over threads.
  const bool row_parallel = chunks == 1 && b_size > 1 && b_size * nv >= kMinParallel;
  const int64_t row_pieces = row_parallel ? std::min(b_size, threads) : 1;
  for_chunks(row_pieces, [&](int64_t piece) {
    auto [begin, end] = chunk_range(piece, row_pieces, b_size);
    Workspace& ws = Workspace::of_this_thread();
    for (int64_t b = begin; b < end; ++b) {
      const RowTask row{values + b * nv, vidx + b * nv, nv, k, ratio, cap, chunks,
                        slots.data_ptr<int64_t>() + b * cap,
                        positions.data_ptr<int64_t>() + b * cap};
      counts[b] = row.run(ws);
    }
    ws.trim();
  });
  if (std::any_of(counts.begin(), counts.end(), [](int64_t c) { return c < 0; }))
    raise_first_error(values, vidx, b_size, nv, k, ratio);
  const int64_t width =
      ratio > 0 ? (b_size > 0 ? *std::max_element(counts.begin(), counts.end()) : 0) : k;
  if (width == cap) return {slots, positions};
  return {slots.narrow(1, 0, width).contiguous(), positions.narrow(1, 0, width).contiguous()};
}

}  // namespace cagul::cpu
