// The ops of a decode step or verify call that cost XLA's CPU backend far more than their
// arithmetic, each as one call: the attention of a few queries over a decoder's cached keys
// and values, and the embedding lookup of a few tokens.
//
// Attention: a step's attention is little arithmetic (4 heads x 56 slots x 64 dims per query
// for the committed verifier), but XLA runs it as 6-8 thunks per layer (transpose q, the
// logits dot, the bias add, max, exp, sum, divide, the output dot, transpose back), and for
// the 2-8 queries of a verify call the dots become library fusions with copies around them.
// Here one call reads q and writes the output in the model's [B, Q, H, D] layout and k, v in
// the cache's ([B, H, D, L], [B, H, L, D]). Each query's result comes from the same sequence
// of operations whatever else shares the call (sums over D and over L run in one fixed
// order), so a verify call scores a position exactly as a one-token step does.
//
// Lookup: XLA split the 2-8 row gather of a verify call's embeddings across its threads, and
// that one op cost up to a quarter of a one-token step; here it is a copy per row.
// (bench/RESULTS.md, "Few-token kernels", issue 17 session 21.)
//
// Built at run time with few_rows.cc by spec_cascade/models/cpu_kernels.py (-O3
// -march=native); needs AVX2 and FMA.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// few_rows.cc: runs fn over [0, n) as two halves on the caller and its helper thread.
void SpecCascadeSplitRange(void (*fn)(const void*, int64_t, int64_t), const void* arg,
                           int64_t n, int64_t split, int32_t threads);

namespace {

using Tensor4 = ffi::Buffer<ffi::F32, 4>;  // (a macro argument cannot hold the comma)
using Table = ffi::Buffer<ffi::F32, 2>;
using Ids = ffi::Buffer<ffi::S32, 1>;

// exp(x) for 8 floats: 2^n · p(r) with x = n ln2 + r, |r| ≤ ln2 / 2, p a degree-6
// polynomial (relative error < 2 ulp); inputs below -87.3 give 0, as masked logits must.
inline __m256 Exp(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 below = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x − n ln2 with ln2 split in two so that n · ln2_hi is exact.
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  // 2^n: n (in [-127, 128]) added to the exponent field of 1.0.
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 out = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(below, out);
}

// The first `valid` (≤ 8) lanes.
inline __m256i LaneMask(int64_t valid) {
  alignas(32) int32_t m[8];
  for (int i = 0; i < 8; ++i) m[i] = i < valid ? -1 : 0;
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(m));
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Slots (and output dims) are summed kGroup vectors at a time for two queries at once: each
// accumulator is a chain of dependent multiply-adds, and 8 independent chains keep both FMA
// pipes busy (one chain alone waits on each add's latency: 4x slower), while each loaded
// vector of k or v feeds both queries. Every slot's (dim's) sum still runs over d (l) in
// order, so a query's result does not depend on whether it was paired.
constexpr int kGroup = 4;

template <int NQ, int NV>
inline void Zero(__m256 (&acc)[NQ][NV]) {
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_setzero_ps();
}

// For NQ queries: logits[i][l0 : l0 + 8 NV] = q[i] · k[:, l0 : ...] + bias[i], the lanes past
// L set to -1e30 (only the group's last vector can be partial: `tail` is its lane mask);
// best[i] takes each query's running maximum.
template <int NQ, int NV, bool kPartial>
inline void LogitsGroup(const float* const* q, const float* __restrict k,
                        const float* const* bias, float* const* logits, int64_t D, int64_t L,
                        int64_t l0, __m256i tail, __m256* best) {
  __m256 acc[NQ][NV];
  Zero(acc);
  const float* kp = k + l0;
  for (int64_t d = 0; d < D; ++d, kp += L) {
    __m256 kv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j)
      kv[j] = (kPartial && j == NV - 1) ? _mm256_maskload_ps(kp + 8 * j, tail)
                                        : _mm256_loadu_ps(kp + 8 * j);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      const __m256 qd = _mm256_broadcast_ss(q[i] + d);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(qd, kv[j], acc[i][j]);
    }
  }
  const __m256 masked = _mm256_set1_ps(-1e30f);
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      const float* bp = bias[i] + l0 + 8 * j;
      __m256 lg;
      if (kPartial && j == NV - 1) {
        lg = _mm256_blendv_ps(masked, _mm256_add_ps(acc[i][j], _mm256_maskload_ps(bp, tail)),
                              _mm256_castsi256_ps(tail));
      } else {
        lg = _mm256_add_ps(acc[i][j], _mm256_loadu_ps(bp));
      }
      _mm256_storeu_ps(logits[i] + l0 + 8 * j, lg);
      best[i] = _mm256_max_ps(best[i], lg);
    }
  }
}

// For NQ queries: out[i][d0 : d0 + 8 NV] = Σ_l w[i][l] v[l, d0 : ...], summed over l in order.
template <int NQ, int NV>
inline void OutputGroup(const float* const* w, const float* __restrict v, float* const* out,
                        int64_t D, int64_t L, int64_t d0) {
  __m256 acc[NQ][NV];
  Zero(acc);
  const float* vp = v + d0;
  for (int64_t l = 0; l < L; ++l, vp += D) {
    __m256 vv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) vv[j] = _mm256_loadu_ps(vp + 8 * j);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      const __m256 wl = _mm256_broadcast_ss(w[i] + l);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(wl, vv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(out[i] + d0 + 8 * j, acc[i][j]);
}

template <int NQ, int NV>
inline void Logits(bool partial, const float* const* q, const float* k, const float* const* bias,
                   float* const* logits, int64_t D, int64_t L, int64_t l0, __m256i tail,
                   __m256* best) {
  if (partial) {
    LogitsGroup<NQ, NV, true>(q, k, bias, logits, D, L, l0, tail, best);
  } else {
    LogitsGroup<NQ, NV, false>(q, k, bias, logits, D, L, l0, tail, best);
  }
}

// NQ (1 or 2) queries of one head: out[i][:D] = softmax(q[i] · k + bias[i]) · v.
// q[i] [D]; k [D, L] (row stride L); v [L, D]; bias[i] [L]; scratch[i] holds ≥ L rounded up
// to 8 floats.
template <int NQ>
void AttendHead(const float* const* q, const float* __restrict k, const float* __restrict v,
                const float* const* bias, float* const* out, int64_t D, int64_t L,
                float* const* scratch) {
  const int64_t vectors = (L + 7) / 8;
  const __m256i tail = LaneMask(L - 8 * (vectors - 1));
  const bool ragged = L % 8 != 0;
  __m256 best[NQ];
  for (int i = 0; i < NQ; ++i) best[i] = _mm256_set1_ps(-1e30f);
  for (int64_t g = 0; g < vectors; g += kGroup) {
    const int nv = static_cast<int>(vectors - g < kGroup ? vectors - g : kGroup);
    const bool partial = ragged && g + nv == vectors;
    switch (nv) {
      case 1: Logits<NQ, 1>(partial, q, k, bias, scratch, D, L, 8 * g, tail, best); break;
      case 2: Logits<NQ, 2>(partial, q, k, bias, scratch, D, L, 8 * g, tail, best); break;
      case 3: Logits<NQ, 3>(partial, q, k, bias, scratch, D, L, 8 * g, tail, best); break;
      default: Logits<NQ, 4>(partial, q, k, bias, scratch, D, L, 8 * g, tail, best); break;
    }
  }
  for (int i = 0; i < NQ; ++i) {
    float* w = scratch[i];
    const __m256 top = _mm256_set1_ps(HorizontalMax(best[i]));
    __m256 total = _mm256_setzero_ps();
    for (int64_t l = 0; l < 8 * vectors; l += 8) {
      const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(w + l), top));
      _mm256_storeu_ps(w + l, e);
      total = _mm256_add_ps(total, e);
    }
    const __m256 inv = _mm256_set1_ps(1.f / HorizontalSum(total));
    for (int64_t l = 0; l < 8 * vectors; l += 8)
      _mm256_storeu_ps(w + l, _mm256_mul_ps(_mm256_loadu_ps(w + l), inv));
  }
  const int64_t dvectors = D / 8;
  for (int64_t g = 0; g < dvectors; g += kGroup) {
    switch (dvectors - g < kGroup ? dvectors - g : kGroup) {
      case 1: OutputGroup<NQ, 1>(scratch, v, out, D, L, 8 * g); break;
      case 2: OutputGroup<NQ, 2>(scratch, v, out, D, L, 8 * g); break;
      case 3: OutputGroup<NQ, 3>(scratch, v, out, D, L, 8 * g); break;
      default: OutputGroup<NQ, 4>(scratch, v, out, D, L, 8 * g); break;
    }
  }
  for (int i = 0; i < NQ; ++i)
    for (int64_t d = 8 * dvectors; d < D; ++d) {  // the last D mod 8 dims
      float acc = 0.f;
      for (int64_t l = 0; l < L; ++l) acc = __builtin_fmaf(scratch[i][l], v[l * D + d], acc);
      out[i][d] = acc;
    }
}

struct AttendArgs {
  const float *q, *k, *v, *bias;
  float* out;
  int64_t Q, H, D, Hkv, L, groups, sq, sh, sb;  // sq, sh, sb: the bias's strides
};

// Below this many multiply-adds per product (B·Q·H·D·L) a call stays on one thread: a
// hand-over to the helper costs ~1-2 µs.
constexpr int64_t kSplitWork = 1 << 15;

// (batch row, head) units u0 .. u1 − 1 of `AttendImpl`, unit u = b · H + h: every query of
// head h in row b.
void AttendHeads(const void* raw, int64_t u0, int64_t u1) {
  const AttendArgs& a = *static_cast<const AttendArgs*>(raw);
  const int64_t Q = a.Q, H = a.H, D = a.D, L = a.L;
  const int64_t width = (L + 7) / 8 * 8;
  thread_local std::vector<float> scratch;
  scratch.resize(2 * width);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t b = u / H, h = u % H;
    const float* kh = a.k + (b * a.Hkv + h / a.groups) * D * L;
    const float* vh = a.v + (b * a.Hkv + h / a.groups) * L * D;
    for (int64_t i = 0; i < Q; i += 2) {
      const float* qs[2];
      const float* biases[2];
      float* outs[2];
      float* ws[2] = {scratch.data(), scratch.data() + width};
      for (int j = 0; j < 2 && i + j < Q; ++j) {
        const int64_t row = ((b * Q + i + j) * H + h) * D;
        qs[j] = a.q + row;
        biases[j] = a.bias + b * a.sb + h * a.sh + (i + j) * a.sq;
        outs[j] = a.out + row;
      }
      if (i + 1 < Q) {
        AttendHead<2>(qs, kh, vh, biases, outs, D, L, ws);
      } else {
        AttendHead<1>(qs, kh, vh, biases, outs, D, L, ws);
      }
    }
  }
}

// q [B, Q, H, D], k [B, Hkv, D, L], v [B, Hkv, L, D], bias [B or 1, H or 1, Q or 1, L]
// → out [B, Q, H, D]; query head h reads key/value head h / (H / Hkv) (grouped-query
// attention; Hkv = H for T5).
ffi::Error AttendImpl(Tensor4 q, Tensor4 k, Tensor4 v, Tensor4 bias,
                      ffi::Result<Tensor4> out, int32_t threads) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(),
             bd = bias.dimensions();
  const int64_t B = qd[0], Q = qd[1], H = qd[2], D = qd[3], Hkv = kd[1], L = kd[3];
  if (kd[0] != B || Hkv < 1 || H % Hkv != 0 || kd[2] != D)
    return ffi::Error::InvalidArgument(
        "attend: k must be [B, Hkv, D, L] for q [B, Q, H, D], Hkv dividing H");
  if (vd[0] != B || vd[1] != Hkv || vd[2] != L || vd[3] != D)
    return ffi::Error::InvalidArgument("attend: v must be [B, Hkv, L, D]");
  const int64_t groups = H / Hkv;  // query head h reads key/value head h / groups
  if ((bd[0] != 1 && bd[0] != B) || (bd[1] != 1 && bd[1] != H) || (bd[2] != 1 && bd[2] != Q) ||
      bd[3] != L)
    return ffi::Error::InvalidArgument("attend: bias must be [B|1, H|1, Q|1, L]");
  if (L == 0) return ffi::Error::InvalidArgument("attend: no keys");
  // Strides of the bias; 0 along its broadcast dimensions.
  const int64_t sq = bd[2] == 1 ? 0 : L, sh = bd[1] == 1 ? 0 : bd[2] * L,
                sb = bd[0] == 1 ? 0 : bd[1] * bd[2] * L;
  const AttendArgs args{q.typed_data(), k.typed_data(), v.typed_data(), bias.typed_data(),
                        out->typed_data(), Q, H, D, Hkv, L, groups, sq, sh, sb};
  // (row, head) units split between two threads — at batch 1 too, where a verifier's cross-
  // attention streams a few MB of keys and values per call — each query computed whole by one
  // thread, so the result does not depend on the split, where there is enough work to pay a
  // hand-over.
  const int64_t work = B * Q * H * D * L, units = B * H;
  SpecCascadeSplitRange(AttendHeads, &args, units,
                        work >= kSplitWork && units >= 2 ? units / 2 : 0, threads);
  return ffi::Error::Success();
}

// table [V, d], ids [N] → out [N, d]: row ids[i] of the table (ids in [-V, 0) count from
// the end, as jnp.take's; others give NaN rows, as its default "fill" mode does).
ffi::Error TakeRowsImpl(Table table, Ids ids, ffi::Result<Table> out) {
  const int64_t V = table.dimensions()[0], d = table.dimensions()[1];
  const int64_t N = ids.dimensions()[0];
  if (out->dimensions()[0] != N || out->dimensions()[1] != d)
    return ffi::Error::InvalidArgument("take_rows: out must be [N, d]");
  const float* tp = table.typed_data();
  const int32_t* ip = ids.typed_data();
  float* op = out->typed_data();
  for (int64_t i = 0; i < N; ++i) {
    int64_t id = ip[i];
    if (id < 0) id += V;
    if (id < 0 || id >= V) {
      std::fill(op + i * d, op + (i + 1) * d, std::numeric_limits<float>::quiet_NaN());
    } else {
      std::memcpy(op + i * d, tp + id * d, d * sizeof(float));
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecCascadeTakeRows, TakeRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Table>()
                                  .Arg<Ids>()
                                  .Ret<Table>());

// q [B, Q, H, D], k [B, Hkv, D, L], v [B, Hkv, L, D], bias [B|1, H|1, Q|1, L] → [B, Q, H, D].
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecCascadeAttend, AttendImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Tensor4>()
                                  .Arg<Tensor4>()
                                  .Arg<Tensor4>()
                                  .Arg<Tensor4>()
                                  .Ret<Tensor4>()
                                  .Attr<int32_t>("threads"));
