// y[M, N] = x[M, K] @ w[K, N] in float32 for a few rows (M ≤ 8; any M for tiled bfloat16 w,
// which `cpu_kernels` sends up to 64 rows and any decode call),
// reading w from memory once.
//
// Why: a verify call multiplies γ + 1 rows by every weight matrix. XLA's CPU backend streams the
// weights at full bandwidth for one row (a matrix-vector product) but switches to a packed
// general matrix product for 2-8 rows, which costs up to twice as much per weight byte
// (bench/RESULTS.md, "What one SpecDecode block costs"); on a CPU the verify call then costs ~2
// one-token steps and speculation cannot pay off. Here every weight vector loaded feeds all M
// rows from registers, so the call costs about what its weight traffic costs.
//
// Access order: float32 w is row-major [K, N]. Walking one column block down all K rows would
// touch a new page per row (prefetchers stop at page boundaries), so K is cut into panels of
// kPanel rows: within a panel, each column block reads kPanel short sequential streams, and
// the partial sums of a block go through y (L1/L2-resident) between panels. bfloat16 w (our
// own copy, `cpu_kernels.pack_bf16`) is stored in tiles of 64 columns whose K rows are
// contiguous, so each tile is one sequential stream and its sums stay in registers
// (`TiledRows`).
//
// Two threads: one core streams weights at ~17-36 GB/s on the CPUs measured, and a few-row
// product there is as much compute as traffic, so a helper thread takes half of w: the second
// half of the tiles of tiled bfloat16 w (writing its columns of y itself), or the second half
// of K of row-major w (the caller adds the two partial products). Products last 5-50 µs, less
// than a sleeping thread takes to wake, so the helper polls for work; but only for kSpin
// (300 µs) after its last product — it rides out a drafter's turn between verify calls, but
// does not hold for long the second core that XLA's own threads need. A product that finds
// it asleep runs alone, in the same order of sums, and wakes it for the next ones.
// (bench/RESULTS.md, issue 17 session 17: polling with sched_yield, or for milliseconds, lost
// end to end; session 21: splitting tiles instead of K, and 300 µs instead of 50.)
//
// Built at run time by spec_cascade/models/cpu_kernels.py with the host compiler
// (-O3 -march=native); needs AVX2 and FMA.
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <sched.h>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Matrix = ffi::Buffer<ffi::F32, 2>;  // (a macro argument cannot hold the comma)
using Bf16Matrix = ffi::Buffer<ffi::BF16, 2>;
constexpr int64_t kPanel = 8;

// Vectors of 8 columns per block for M rows: M × NV accumulators + NV weight vectors + one
// broadcast must fit the 16 AVX2 registers with the weights kept in registers. Packed
// bfloat16 weights come two vectors per load, so their blocks hold an even number of vectors
// (at 7-8 rows that is 19 registers: AVX-512 CPUs have 32, AVX2 ones spill a few).
template <typename W>
constexpr int BlockVectors(int m) {
  if (sizeof(W) == 2) return m <= 1 ? 8 : m == 2 ? 4 : 2;
  return m <= 1 ? 8 : m == 2 ? 4 : m == 3 ? 3 : m <= 6 ? 2 : 1;
}
// Columns one weight load covers: 8 float32, or 16 packed bfloat16.
template <typename W>
constexpr int64_t Unit() { return sizeof(W) == 2 ? 16 : 8; }

// The NV weight vectors of one block row (8 columns each) as float32.
// float32: as stored. Packed bfloat16 (`cpu_kernels.pack_bf16`): each 16 columns are stored
// as 8 pairs (column i, column i + 8), so one 32-byte load holds both vectors and widening
// them exactly is one shift (the low halves, columns 0-7) and one mask (the high halves,
// columns 8-15) — half the instructions of widening 8 bfloat16 at a time (8-row products
// ran 1.1-1.3x faster, 1-4 rows the same within noise: bench/RESULTS.md).
template <int NV>
inline void LoadRow(const float* p, __m256* wv) {
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) wv[v] = _mm256_loadu_ps(p + 8 * v);
}
template <int NV>
inline void LoadRow(const uint16_t* p, __m256* wv) {
  static_assert(NV % 2 == 0, "packed bfloat16 blocks hold pairs of vectors");
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
#pragma GCC unroll 16
  for (int g = 0; g < NV / 2; ++g) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * g));
    wv[2 * g] = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    wv[2 * g + 1] = _mm256_castsi256_ps(_mm256_and_si256(pairs, high));
  }
}
inline float Load1(const float* p) { return *p; }
inline float Load1(const uint16_t* p) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

// Adds x[:, k0:k1] @ w[k0:k1, n0 : n0 + 8 NV] into y (or stores it, for the first panel).
template <int M, int NV, typename W>
inline void Block(const float* __restrict x, const W* __restrict w, float* __restrict y,
                  int64_t K, int64_t N, int64_t n0, int64_t k0, int64_t k1, bool first) {
  __m256 acc[M * NV];
#pragma GCC unroll 64
  for (int i = 0; i < M * NV; ++i) acc[i] = _mm256_setzero_ps();
  const W* wp = w + k0 * N + n0;
  const float* xp = x + k0;
  for (int64_t k = k0; k < k1; ++k, wp += N, ++xp) {
    __m256 wv[NV];
    LoadRow<NV>(wp, wv);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m256 a = _mm256_broadcast_ss(xp + m * K);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[m * NV + v] = _mm256_fmadd_ps(a, wv[v], acc[m * NV + v]);
    }
  }
  float* yp = y + n0;
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      float* out = yp + m * N + 8 * v;
      _mm256_storeu_ps(out, first ? acc[m * NV + v]
                                    : _mm256_add_ps(_mm256_loadu_ps(out), acc[m * NV + v]));
    }
  }
}

// y[:, :] = x[:, kb:ke] @ w[kb:ke, :] (x and w indexed with the full K).
template <int M, typename W>
void Rows(const float* x, const W* w, float* y, int64_t K, int64_t N, int64_t kb,
          int64_t ke) {
  constexpr int NV = BlockVectors<W>(M);
  constexpr int64_t unit = Unit<W>();
  const int64_t nu = N / unit * unit;
  for (int64_t k0 = kb; k0 < ke; k0 += kPanel) {
    const int64_t k1 = k0 + kPanel < ke ? k0 + kPanel : ke;
    int64_t n = 0;
    for (; n + 8 * NV <= nu; n += 8 * NV) Block<M, NV, W>(x, w, y, K, N, n, k0, k1, k0 == kb);
    for (; n < nu; n += unit) Block<M, unit / 8, W>(x, w, y, K, N, n, k0, k1, k0 == kb);
  }
  for (int64_t n = nu; n < N; ++n) {  // the last N mod 8 (16) columns, stored as they are
    for (int m = 0; m < M; ++m) {
      float s = 0.f;
      for (int64_t k = kb; k < ke; ++k) s += x[m * K + k] * Load1(w + k * N + n);
      y[m * N + n] = s;
    }
  }
}

template <typename W>
void PanelRows(const float* x, const W* w, float* y, int64_t M, int64_t K, int64_t N,
               int64_t kb, int64_t ke) {
  switch (M) {
    case 1: Rows<1>(x, w, y, K, N, kb, ke); break;
    case 2: Rows<2>(x, w, y, K, N, kb, ke); break;
    case 3: Rows<3>(x, w, y, K, N, kb, ke); break;
    case 4: Rows<4>(x, w, y, K, N, kb, ke); break;
    case 5: Rows<5>(x, w, y, K, N, kb, ke); break;
    case 6: Rows<6>(x, w, y, K, N, kb, ke); break;
    case 7: Rows<7>(x, w, y, K, N, kb, ke); break;
    default: Rows<8>(x, w, y, K, N, kb, ke); break;
  }
}

// Packed bfloat16 weights are tiled (`cpu_kernels.pack_bf16`): the first N / kTile * kTile
// columns as tiles of kTile columns, each tile's K rows contiguous ([N / kTile][K][kTile]),
// then the last N mod kTile columns as a [K, N mod kTile] panel matrix. A product then reads
// each tile as one sequential stream, which the hardware prefetcher follows across pages,
// and sums all of K in registers; with the row-major panels above, the products of a
// decoder step that spilled out of the caches ran at 13-16 GB/s, the tiles at 25-45
// (bench/RESULTS.md, "Tiled bfloat16 twins").
constexpr int64_t kTile = 64;
// Rows go through all tiles kRowBlock at a time, so that the rows of x the passes over a tile
// read stay in the core's caches (64 rows at once ran 1.3x slower than two blocks of 32).
constexpr int64_t kRowBlock = 32;
// Rows per pass over a tile and columns per pass: 2 rows of 64 columns take 16 accumulators
// and 8 weight vectors, which AVX-512's 32 registers hold; AVX2's 16 hold 2 rows of 32.
#ifdef __AVX512VL__
constexpr int kPassCols = 64;
#else
constexpr int kPassCols = 32;
#endif

// y[:R, n0 + c0 : n0 + c0 + kPassCols] = x[:R, kb:ke] @ (those columns of the tile), where
// `tile` points at a tile's row 0; x and y rows are K and ldy apart.
template <int R>
inline void TilePass(const float* __restrict x, const uint16_t* __restrict tile,
                     float* __restrict y, int64_t K, int64_t ldy, int64_t c0, int64_t kb,
                     int64_t ke) {
  constexpr int NV = kPassCols / 8;
  __m256 acc[R * NV];
#pragma GCC unroll 64
  for (int i = 0; i < R * NV; ++i) acc[i] = _mm256_setzero_ps();
  const uint16_t* wp = tile + kb * kTile + c0;
  for (int64_t k = kb; k < ke; ++k, wp += kTile) {
    __m256 wv[NV];
    LoadRow<NV>(wp, wv);
#pragma GCC unroll 16
    for (int m = 0; m < R; ++m) {
      const __m256 a = _mm256_broadcast_ss(x + m * K + k);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[m * NV + v] = _mm256_fmadd_ps(a, wv[v], acc[m * NV + v]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < R; ++m) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(y + m * ldy + c0 + 8 * v, acc[m * NV + v]);
  }
}

// y[:, the columns of tiles t0 .. t1 − 1, and with_tail the last N mod 64] = x @ w for tiled
// bfloat16 w, each column summed over all of K in one chain. Rows go through each tile two at
// a time (the tile stays in L1/L2 for the next pair), so every row's sums run in the same
// order whatever M is, and whichever thread computes which tiles.
void TiledRows(const float* x, const uint16_t* w, float* y, int64_t M, int64_t K, int64_t N,
               int64_t t0, int64_t t1, bool with_tail) {
  const int64_t tiles = N / kTile, tail = N - tiles * kTile;
  for (int64_t mb = 0; mb < M; mb += kRowBlock) {
    const int64_t me = mb + kRowBlock < M ? mb + kRowBlock : M;
    for (int64_t t = t0; t < t1; ++t) {
      const uint16_t* tile = w + t * K * kTile;
      for (int64_t c0 = 0; c0 < kTile; c0 += kPassCols) {
        int64_t m = mb;
        for (; m + 2 <= me; m += 2)
          TilePass<2>(x + m * K, tile, y + m * N + t * kTile, K, N, c0, 0, K);
        if (m < me) TilePass<1>(x + m * K, tile, y + m * N + t * kTile, K, N, c0, 0, K);
      }
    }
  }
  if (with_tail && tail > 0) {  // the last N mod kTile columns: a [K, tail] panel matrix
    thread_local std::vector<float> part;
    part.resize(M * tail);
    for (int64_t m0 = 0; m0 < M; m0 += 8)  // the panel code takes at most 8 rows at a time
      PanelRows(x + m0 * K, w + tiles * K * kTile, part.data() + m0 * tail,
                M - m0 < 8 ? M - m0 : 8, K, tail, 0, K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < tail; ++n) y[m * N + tiles * kTile + n] = part[m * tail + n];
  }
}

// bfloat16 rows × bfloat16 weights, products exact and summed in float32 (AVX512-BF16's
// VDPBF16PS: each instruction multiplies 16 columns by two consecutive k at once). This is
// `matmul_dtype='bfloat16'`, TPU-style mixed precision: one instruction does the work of four
// float32 multiply-adds and the widening of the weights, so verify calls of 2-8 rows and
// encoders, compute-bound in float32 here, cost what their weight traffic costs
// (bench/RESULTS.md, "bfloat16 matmul inputs", issue 17 session 22). Weights are our own copy
// (`cpu_kernels.pack_k_pairs`): tiles of 64 columns, N padded to whole tiles with zero
// columns and K to even with a zero row, each tile stored as [K / 2][64 columns][2 k], so one
// 64-byte load holds 16 columns' (w[2p, c], w[2p + 1, c]).
#ifdef __AVX512BF16__
constexpr int64_t kPairTileCols = 64;

// y[:R, 0:valid] = x[:R, :] @ tile for one tile (`pairs` of its K / 2 rows of pairs); x rows
// are ldx bfloat16 apart (ldx even), y rows ldy floats apart.
template <int R>
inline void PairPass(const uint16_t* __restrict x, int64_t ldx, const uint16_t* __restrict tile,
                     int64_t pairs, float* __restrict y, int64_t ldy, int64_t valid) {
  __m512 acc[R * 4];
#pragma GCC unroll 16
  for (int i = 0; i < R * 4; ++i) acc[i] = _mm512_setzero_ps();
  const uint16_t* wp = tile;
  for (int64_t p = 0; p < pairs; ++p, wp += 2 * kPairTileCols) {
    __m512bh wv[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) wv[v] = (__m512bh)_mm512_loadu_si512(wp + 32 * v);
#pragma GCC unroll 4
    for (int m = 0; m < R; ++m) {
      int32_t two;  // (x[m, 2p], x[m, 2p + 1]) as one 32-bit lane
      __builtin_memcpy(&two, x + m * ldx + 2 * p, sizeof(two));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(two);
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[m * 4 + v] = _mm512_dpbf16_ps(acc[m * 4 + v], a, wv[v]);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < R; ++m) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int64_t left = valid - 16 * v;
      if (left >= 16) {
        _mm512_storeu_ps(y + m * ldy + 16 * v, acc[m * 4 + v]);
      } else if (left > 0) {
        _mm512_mask_storeu_ps(y + m * ldy + 16 * v, static_cast<__mmask16>((1u << left) - 1),
                              acc[m * 4 + v]);
      }
    }
  }
}

// y[:, the columns of tiles t0 .. t1 − 1] = x @ w for paired w ([tiles][pairs][64][2]); each
// row's sums run in one order whatever M is and whichever thread takes which tiles.
void PairedRows(const uint16_t* x, const uint16_t* w, float* y, int64_t M, int64_t K2,
                int64_t N, int64_t t0, int64_t t1) {
  const int64_t ldx = 2 * K2;
  for (int64_t mb = 0; mb < M; mb += kRowBlock) {
    const int64_t me = mb + kRowBlock < M ? mb + kRowBlock : M;
    for (int64_t t = t0; t < t1; ++t) {
      const uint16_t* tile = w + t * K2 * 2 * kPairTileCols;
      const int64_t c0 = t * kPairTileCols;
      const int64_t valid = N - c0 < kPairTileCols ? N - c0 : kPairTileCols;
      int64_t m = mb;
      for (; m + 4 <= me; m += 4)
        PairPass<4>(x + m * ldx, ldx, tile, K2, y + m * N + c0, N, valid);
      switch (me - m) {
        case 3: PairPass<3>(x + m * ldx, ldx, tile, K2, y + m * N + c0, N, valid); break;
        case 2: PairPass<2>(x + m * ldx, ldx, tile, K2, y + m * N + c0, N, valid); break;
        case 1: PairPass<1>(x + m * ldx, ldx, tile, K2, y + m * N + c0, N, valid); break;
        default: break;
      }
    }
  }
}
#endif  // __AVX512BF16__

// The helper thread. One caller at a time: a product that finds it busy (XLA running two
// independent products at once) does all of its work alone.
class Helper {
 public:
  static Helper& Get() {
    static Helper* helper = new Helper();  // never destroyed: the thread runs for the process
    return *helper;
  }
  std::mutex& busy() { return busy_; }
  // Runs part = x[:, kb:ke] @ w[kb:ke, :] (row-major w) on the helper thread; Wait() returns
  // part.
  template <typename W>
  void PostRows(const float* x, const W* w, int64_t M, int64_t K, int64_t N, int64_t kb,
                int64_t ke) {
    if (part_.size() < static_cast<size_t>(M * N)) part_.resize(M * N);
    Start({x, w, sizeof(W) == 2, M, K, N, kb, ke});
  }
  // Runs fn(arg, begin, end) on the helper thread.
  void PostRange(void (*fn)(const void*, int64_t, int64_t), const void* arg, int64_t begin,
                 int64_t end) {
    Job job{};
    job.kb = begin;
    job.ke = end;
    job.fn = fn;
    job.arg = arg;
    Start(job);
  }
  const float* Wait() {
    const uint64_t want = posted_.load();
    for (int polls = 1; done_.load(std::memory_order_acquire) != want; ++polls) {
      _mm_pause();
      if (polls % 1024 == 0) sched_yield();  // the helper may be waiting for a core
    }
    return part_.data();
  }
  // Whether the helper is polling for work (not asleep): only then is a split worth it.
  bool Awake() const { return !sleeping_.load(); }
  void Nudge() {
    std::lock_guard<std::mutex> lock(sleep_mu_);
    nudged_ = true;
    wake_.notify_one();
  }

 private:
  // Row-major jobs: rows kb .. ke − 1 of w into part_.
  struct Job {
    const float* x;
    const void* w;
    bool bf16;
    int64_t M, K, N, kb, ke;
    void (*fn)(const void*, int64_t, int64_t) = nullptr;  // any other work: fn(arg, kb, ke)
    const void* arg = nullptr;
  };
  // 300 µs, not 50: on a VM the helper's vCPU is descheduled now and then, and each time it
  // came back past 50 µs it went to sleep mid-step; the products then ran alone until a
  // wake-up reached it. With 300 the verifier's step ran 1.4x faster and a 64-token encoder
  // 1.3x (bench/RESULTS.md, issue 17 session 21); 1-2 ms lost again.
  static constexpr auto kSpin = std::chrono::microseconds(300);
  void Start(const Job& job) {
    job_ = job;
    posted_.fetch_add(1);
    if (sleeping_.load()) {
      std::lock_guard<std::mutex> lock(sleep_mu_);
      wake_.notify_one();
    }
  }
  Helper() { std::thread([this] { Loop(); }).detach(); }
  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      auto idle_since = std::chrono::steady_clock::now();
      while (posted_.load(std::memory_order_acquire) == seen) {
        _mm_pause();  // not sched_yield: a system call per poll made each hand-over ~7 µs
        if (std::chrono::steady_clock::now() - idle_since > kSpin) {
          std::unique_lock<std::mutex> lock(sleep_mu_);
          sleeping_.store(true);
          wake_.wait(lock, [&] { return posted_.load() != seen || nudged_; });
          nudged_ = false;
          sleeping_.store(false);
          idle_since = std::chrono::steady_clock::now();
        }
      }
      seen = posted_.load(std::memory_order_acquire);
      const Job j = job_;
      if (j.fn != nullptr) {
        j.fn(j.arg, j.kb, j.ke);
      } else if (j.bf16) {
        PanelRows(j.x, static_cast<const uint16_t*>(j.w), part_.data(), j.M, j.K, j.N, j.kb, j.ke);
      } else {
        PanelRows(j.x, static_cast<const float*>(j.w), part_.data(), j.M, j.K, j.N, j.kb, j.ke);
      }
      done_.store(seen, std::memory_order_release);
    }
  }
  std::mutex busy_, sleep_mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> posted_{0}, done_{0};
  std::atomic<bool> sleeping_{false};
  bool nudged_ = false;  // guarded by sleep_mu_
  Job job_{};
  std::vector<float> part_;
};

// Weights below this many floats are one thread's work: a hand-over costs ~1-2 µs, and the
// drafter's 128-wide products (≤ 32k weights) ran faster unsplit.
constexpr int64_t kSplitMin = 65536;

// y += part (M × N floats).
inline void AddPart(float* y, const float* part, int64_t n) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8)
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(part + i)));
  for (int64_t i = n8; i < n; ++i) y[i] += part[i];
}

// The helper if it is free and awake (then `lock` holds it); nullptr otherwise, having woken it
// for the next product (waking takes longer than a product).
Helper* FreeHelper(std::unique_lock<std::mutex>& lock) {
  Helper& helper = Helper::Get();
  lock = std::unique_lock<std::mutex>(helper.busy(), std::try_to_lock);
  if (!lock.owns_lock()) return nullptr;
  if (helper.Awake()) return &helper;
  helper.Nudge();
  return nullptr;
}

// fn(arg, 0, n) in two halves, fn(arg, split, n) on the helper thread and fn(arg, 0, split) on
// the caller, where threads ≥ 2, 0 < split < n and the helper is free and awake; otherwise all
// of it on the caller. fn must give each index the same result whichever thread runs it.
void SplitRange(void (*fn)(const void*, int64_t, int64_t), const void* arg, int64_t n,
                int64_t split, int32_t threads) {
  std::unique_lock<std::mutex> lock;
  Helper* helper = threads >= 2 && split > 0 && split < n ? FreeHelper(lock) : nullptr;
  if (helper == nullptr) {
    fn(arg, 0, n);
    return;
  }
  helper->PostRange(fn, arg, split, n);
  fn(arg, 0, split);
  helper->Wait();
}

// Tiled weights: the helper takes the second half of the tiles (a contiguous block of w, one
// stream per thread) and writes its columns of y itself. Every column is summed over all of K
// by one thread in one chain, so results do not depend on the thread count, the row count or
// the helper's timing.
struct TiledArgs {
  const float* x;
  const uint16_t* w;
  float* y;
  int64_t M, K, N;
};

// Tiles t0 .. t1 − 1; the range that starts at 0 (the caller's) also does the ragged tail.
void TiledTiles(const void* raw, int64_t t0, int64_t t1) {
  const TiledArgs& a = *static_cast<const TiledArgs*>(raw);
  TiledRows(a.x, a.w, a.y, a.M, a.K, a.N, t0, t1, t0 == 0);
}

void TiledProduct(const float* x, const uint16_t* w, float* y, int64_t M, int64_t K, int64_t N,
                  int32_t threads) {
  const int64_t tiles = N / kTile;
  const TiledArgs args{x, w, y, M, K, N};
  SplitRange(TiledTiles, &args, tiles, K * N >= kSplitMin ? tiles / 2 : 0, threads);
}

// Row-major weights: the helper takes the second half of K (a contiguous block of w) and the
// caller adds the two partial products. Without a free helper the caller sums both halves
// itself the same way: the order of the sums depends only on the shapes and the thread count,
// never on the helper's timing.
template <typename W>
void SplitKProduct(const float* x, const W* w, float* y, int64_t M, int64_t K, int64_t N,
                   int32_t threads) {
  const int64_t half = K / 2 / kPanel * kPanel;
  if (threads < 2 || K * N < kSplitMin || half == 0) {
    PanelRows(x, w, y, M, K, N, 0, K);
    return;
  }
  std::unique_lock<std::mutex> lock;
  if (Helper* helper = FreeHelper(lock)) {
    helper->PostRows(x, w, M, K, N, half, K);
    PanelRows(x, w, y, M, K, N, 0, half);
    AddPart(y, helper->Wait(), M * N);
    return;
  }
  thread_local std::vector<float> part;
  part.resize(M * N);
  PanelRows(x, w, y, M, K, N, 0, half);
  PanelRows(x, w, part.data(), M, K, N, half, K);
  AddPart(y, part.data(), M * N);
}

template <typename W>
void Product(const float* x, const W* w, float* y, int64_t M, int64_t K, int64_t N,
             int32_t threads, bool tiled) {
  if constexpr (sizeof(W) == 2) {
    if (tiled) {
      TiledProduct(x, w, y, M, K, N, threads);
      return;
    }
  }
  SplitKProduct(x, w, y, M, K, N, threads);
}

#ifdef __AVX512BF16__
struct PairedArgs {
  const uint16_t *x, *w;
  float* y;
  int64_t M, K2, N;
};

void PairedTiles(const void* raw, int64_t t0, int64_t t1) {
  const PairedArgs& a = *static_cast<const PairedArgs*>(raw);
  PairedRows(a.x, a.w, a.y, a.M, a.K2, a.N, t0, t1);
}

// Paired weights: the helper takes the second half of the tiles, as in TiledProduct.
void PairedProduct(const uint16_t* x, const uint16_t* w, float* y, int64_t M, int64_t K2,
                   int64_t N, int64_t tiles, int32_t threads) {
  const PairedArgs args{x, w, y, M, K2, N};
  SplitRange(PairedTiles, &args, tiles, 2 * K2 * N >= kSplitMin ? tiles / 2 : 0, threads);
}
#endif

using PairedWeights = ffi::Buffer<ffi::BF16, 4>;

// x bfloat16 [M, 2 K2], w [tiles, K2, 64, 2] bfloat16 (`pack_k_pairs`) → y float32 [M, N].
ffi::Error PairedImpl(Bf16Matrix x, PairedWeights w, ffi::Result<Matrix> y, int32_t threads) {
#ifdef __AVX512BF16__
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const auto yd = y->dimensions();
  const int64_t M = xd[0], K = xd[1], tiles = wd[0], K2 = wd[1], N = yd[1];
  if (wd[2] != kPairTileCols || wd[3] != 2 || K != 2 * K2 || yd[0] != M ||
      N > tiles * kPairTileCols || N <= (tiles - 1) * kPairTileCols)
    return ffi::Error::InvalidArgument("few_rows_paired: x, w and y disagree on K or N");
  if (M < 1) return ffi::Error::InvalidArgument("few_rows_paired: x has no rows");
  float* yp = y->typed_data();
  if (K2 == 0) {
    for (int64_t i = 0; i < M * N; ++i) yp[i] = 0.f;
  } else {
    PairedProduct(reinterpret_cast<const uint16_t*>(x.typed_data()),
                  reinterpret_cast<const uint16_t*>(w.typed_data()), yp, M, K2, N, tiles,
                  threads);
  }
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("few_rows_paired: built for a CPU without AVX512-BF16");
#endif
}

template <typename Weights, bool kTiled>
ffi::Error FewRowsImpl(Matrix x, Weights w, ffi::Result<Matrix> y, int32_t threads) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const int64_t M = xd[0], K = xd[1], N = wd[1];
  if (wd[0] != K) return ffi::Error::InvalidArgument("few_rows: x and w disagree on K");
  // Row-major weights take 1-8 rows (the panels' register blocks); tiled ones any number
  // (rows go through a tile two at a time, kRowBlock rows at a time through all tiles).
  if (M < 1 || (!kTiled && M > 8))
    return ffi::Error::InvalidArgument(kTiled ? "few_rows: x has no rows"
                                              : "few_rows: x must have 1 to 8 rows");
  float* yp = y->typed_data();
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) yp[i] = 0.f;
  } else {
    Product(x.typed_data(), w.typed_data(), yp, M, K, N, threads, kTiled);
  }
  return ffi::Error::Success();
}

}  // namespace

// `SplitRange` for few_tokens.cc.
void SpecCascadeSplitRange(void (*fn)(const void*, int64_t, int64_t), const void* arg,
                           int64_t n, int64_t split, int32_t threads) {
  SplitRange(fn, arg, n, split, threads);
}

// x float32 [M, K], w float32 or packed bfloat16 [K, N] → y float32 [M, N]; bfloat16 weights
// are widened exactly, so the result is the float32 product of the same values at half the
// traffic.
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecCascadeFewRows, (FewRowsImpl<Matrix, false>),
                              ffi::Ffi::Bind()
                                  .Arg<Matrix>()
                                  .Arg<Matrix>()
                                  .Ret<Matrix>()
                                  .Attr<int32_t>("threads"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecCascadeFewRowsBf16, (FewRowsImpl<Bf16Matrix, true>),
                              ffi::Ffi::Bind()
                                  .Arg<Matrix>()
                                  .Arg<Bf16Matrix>()
                                  .Ret<Matrix>()
                                  .Attr<int32_t>("threads"));
// The same for bfloat16 weights packed without tiles (`pack_bf16(w, tiled=False)`).
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecCascadeFewRowsBf16Untiled, (FewRowsImpl<Bf16Matrix, false>),
                              ffi::Ffi::Bind()
                                  .Arg<Matrix>()
                                  .Arg<Bf16Matrix>()
                                  .Ret<Matrix>()
                                  .Attr<int32_t>("threads"));
// bfloat16 x × paired bfloat16 w, float32 sums (`matmul_dtype='bfloat16'`; AVX512-BF16 only).
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecCascadeFewRowsPaired, PairedImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Bf16Matrix>()
                                  .Arg<PairedWeights>()
                                  .Ret<Matrix>()
                                  .Attr<int32_t>("threads"));
