// y[M, N] = x[M, K] @ w[K, N] in float32 for a few rows (M ≤ 8), reading w from memory once.
//
// Why: a verify call multiplies γ + 1 rows by every weight matrix. XLA's CPU backend streams the
// weights at full bandwidth for one row (a matrix-vector product) but switches to a packed
// general matrix product for 2-8 rows, which costs up to twice as much per weight byte
// (bench/RESULTS.md, "What one SpecDecode block costs"); on a CPU the verify call then costs ~2
// one-token steps and speculation cannot pay off. Here every weight vector loaded feeds all M
// rows from registers, so the call costs about what its weight traffic costs.
//
// Access order: w is row-major [K, N]. Walking one column block down all K rows would touch a
// new page per row (prefetchers stop at page boundaries), so K is cut into panels of kPanel
// rows: within a panel, each column block reads kPanel short sequential streams, and the
// partial sums of a block go through y (L1/L2-resident) between panels.
//
// Built at run time by spec_cascade/models/cpu_kernels.py with the host compiler
// (-O3 -march=native); needs AVX2 and FMA.
#include <immintrin.h>

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Matrix = ffi::Buffer<ffi::F32, 2>;  // (a macro argument cannot hold the comma)
constexpr int64_t kPanel = 8;

// Vectors of 8 columns per block for M rows: M × NV accumulators + NV weight vectors + one
// broadcast must fit AVX2's 16 registers with the weights kept in registers.
constexpr int BlockVectors(int m) {
  return m <= 1 ? 8 : m == 2 ? 4 : m == 3 ? 3 : m <= 6 ? 2 : 1;
}

// Adds x[:, k0:k1] @ w[k0:k1, n0 : n0 + 8 NV] into y (or stores it, for the first panel).
template <int M, int NV>
inline void Block(const float* __restrict x, const float* __restrict w, float* __restrict y,
                  int64_t K, int64_t N, int64_t n0, int64_t k0, int64_t k1) {
  __m256 acc[M * NV];
#pragma GCC unroll 64
  for (int i = 0; i < M * NV; ++i) acc[i] = _mm256_setzero_ps();
  const float* wp = w + k0 * N + n0;
  const float* xp = x + k0;
  for (int64_t k = k0; k < k1; ++k, wp += N, ++xp) {
    __m256 wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = _mm256_loadu_ps(wp + 8 * v);
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
      _mm256_storeu_ps(out, k0 == 0 ? acc[m * NV + v]
                                    : _mm256_add_ps(_mm256_loadu_ps(out), acc[m * NV + v]));
    }
  }
}

template <int M>
void Rows(const float* x, const float* w, float* y, int64_t K, int64_t N) {
  constexpr int NV = BlockVectors(M);
  const int64_t n8 = N / 8 * 8;
  for (int64_t k0 = 0; k0 < K; k0 += kPanel) {
    const int64_t k1 = k0 + kPanel < K ? k0 + kPanel : K;
    int64_t n = 0;
    for (; n + 8 * NV <= n8; n += 8 * NV) Block<M, NV>(x, w, y, K, N, n, k0, k1);
    for (; n < n8; n += 8) Block<M, 1>(x, w, y, K, N, n, k0, k1);
  }
  for (int64_t n = n8; n < N; ++n) {  // the last N mod 8 columns
    for (int m = 0; m < M; ++m) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * w[k * N + n];
      y[m * N + n] = s;
    }
  }
}

ffi::Error FewRowsImpl(Matrix x, Matrix w, ffi::Result<Matrix> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const int64_t M = xd[0], K = xd[1], N = wd[1];
  if (wd[0] != K) return ffi::Error::InvalidArgument("few_rows: x and w disagree on K");
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  if (K == 0) {
    for (int64_t i = 0; i < M * N; ++i) yp[i] = 0.f;
    return ffi::Error::Success();
  }
  // One thread: splitting the columns over XLA's pool measured no faster (a task's start-up
  // is as long as a 256 × 256 product), and XLA already runs independent products at once.
  switch (M) {
    case 1: Rows<1>(xp, wp, yp, K, N); break;
    case 2: Rows<2>(xp, wp, yp, K, N); break;
    case 3: Rows<3>(xp, wp, yp, K, N); break;
    case 4: Rows<4>(xp, wp, yp, K, N); break;
    case 5: Rows<5>(xp, wp, yp, K, N); break;
    case 6: Rows<6>(xp, wp, yp, K, N); break;
    case 7: Rows<7>(xp, wp, yp, K, N); break;
    case 8: Rows<8>(xp, wp, yp, K, N); break;
    default: return ffi::Error::InvalidArgument("few_rows: x must have 1 to 8 rows");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecCascadeFewRows, FewRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Matrix>()
                                  .Arg<Matrix>()
                                  .Ret<Matrix>());
