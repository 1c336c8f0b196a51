// The per-token step of a Llama prior (priors.llama.kernels.token_step) as one C++ operator,
// lass_native::token_step: float32 on a CPU, one key/value head. Built on first use by
// priors.native (torch.utils.cpp_extension); priors.llama falls back to the TorchScript
// step where it does not build.
//
// The products by the weights are oneDNN's batch-reduce GEMM kernel where it runs (else its
// packed linear, or torch.mm; see Products); everything else runs as loops over the rows
// here (where it took some 100 tensor operations per step): the RMS divisors, the rotary
// embedding, the key/value writes, SiLU times the up projection, the row copies for rows
// with equal pasts, and the attention. The attention
// runs for the computed rows only (rows with equal pasts attend alike), in parallel over
// them (at::parallel_for, so torch's OpenMP threads), each row over its family's shared
// past and then its own positions with one softmax per head; with AVX-512, a group of 4
// query heads against one key row at a time in registers (a head width of 16, 32 or 64).
// It was some 50-70 batched products of 4-row blocks per step before, which ran at a few
// GFLOP/s. The same computation as token_step up to float rounding: the exponential is a
// polynomial (about 2 ulp), the norms, the rotation and the attention sum in another order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

using at::Tensor;

namespace {

// How the products by the weights run: at::mm (plain (in, out) weights), oneDNN's packed
// linear (mkldnn::_linear_pointwise, weights packed by mkldnn::_reorder_linear_weight), or
// oneDNN's batch-reduce GEMM kernel (at::native::cpublas::brgemm, plain contiguous (in,
// out) weights) over blocks of 32 output columns in parallel. For the few rows of a search
// step the last is about 1.3-2x faster than the packed linear here, which spends some 10
// us per call outside the product.
enum Products : int64_t { kMm = 0, kPacked = 1, kBrgemm = 2 };

constexpr int64_t kBlock = 32;

// out (= or +=) x @ w for x: (m, k) and w: (k, n) contiguous, out: (m, n) contiguous.
void brgemm_into(const Tensor& x, const Tensor& w, Tensor& out, bool add) {
  const int64_t m = x.size(0), k = x.size(1), n = w.size(1);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kBlock;
      at::native::cpublas::brgemm(m, std::min(kBlock, n - n0), k, k, n, n, add, xp, wp + n0,
                                  op + n0, false);
    }
  });
}

Tensor product(const Tensor& x, const Tensor& w, int64_t how) {
  if (how == kMm) return at::mm(x, w);
  if (how == kBrgemm) {
    Tensor out = at::empty({x.size(0), w.size(1)}, x.options());
    brgemm_into(x, w, out, false);
    return out;
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                     c10::string_view, c10::List<std::optional<c10::Scalar>>,
                                     std::optional<c10::string_view>)>();
  return op.call(x, w, std::nullopt, "none", c10::List<std::optional<c10::Scalar>>(),
                 c10::string_view(""));
}

// acc + x @ w (the same as torch.mm(x, w).add_(acc) with at::mm).
Tensor product_add(const Tensor& acc, const Tensor& x, const Tensor& w, int64_t how) {
  if (how == kMm) return at::mm(x, w).add_(acc);
  if (how == kBrgemm) {
    Tensor out = acc.contiguous().clone();
    brgemm_into(x, w, out, true);
    return out;
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                     const std::optional<Tensor>&, c10::string_view)>();
  return op.call(x, acc, w, std::nullopt, "add");
}

// Whether at::native::cpublas::brgemm runs here for float32 and gives at::mm's products (it
// needs oneDNN's micro-kernels, which some builds and CPUs lack).
bool brgemm_works() {
  try {
    Tensor x = at::randn({3, 40}, at::kFloat), w = at::randn({40, 70}, at::kFloat);
    Tensor acc = at::randn({3, 70}, at::kFloat);
    const bool plain = at::allclose(product(x, w, kBrgemm), at::mm(x, w), 1e-4, 1e-4);
    const bool added =
        at::allclose(product_add(acc, x, w, kBrgemm), at::mm(x, w) + acc, 1e-4, 1e-4);
    return plain && added;
  } catch (const std::exception&) {
    return false;
  }
}

// exp(x) for float32 to about 2 ulp (Cody-Waite reduction, Cephes' polynomial), written so
// that the compiler vectorises the loops that call it.
inline float exp_approx(float x) {
  x = std::min(88.3762626647949f, std::max(-87.3365447505531f, x));
  // round to nearest (std::floor keeps GCC from vectorising the loops)
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// a[p] = exp(a[p] - m) for p < n; returns their sum.
__attribute__((noinline)) float exp_shifted(float* __restrict a, int64_t n, float m) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t p = 0; p < n; ++p) {
    const float e = exp_approx(a[p] - m);
    a[p] = e;
    sum += e;
  }
  return sum;
}

float max_of(const float* __restrict a, int64_t n, float m) {
#pragma omp simd reduction(max : m)
  for (int64_t p = 0; p < n; ++p) m = std::max(m, a[p]);
  return m;
}

void scale(float* __restrict a, int64_t n, float f) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) a[p] *= f;
}

// out[c] = silu(g[c] / div) * (u[c] / div) for c < n.
__attribute__((noinline)) void silu_mul(const float* __restrict g, const float* __restrict u,
                                        float div, int64_t n, float* __restrict out) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const float gate = g[c] / div;
    out[c] = gate / (1.f + exp_approx(-gate)) * (u[c] / div);
  }
}

// (rows,) sqrt(|x_r|^2 + width eps) of x: (rows, width) (eps_root = sqrt(width eps)).
void rms_divisors(const float* x, int64_t rows, int64_t width, float eps_root, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < width; ++c) acc += xr[c] * xr[c];
    out[r] = std::hypot(std::sqrt(acc), eps_root);
  }
}

// out = rotary(src / div): [a, b] -> [a cos - b sin, b cos + a sin] over halves of d.
inline void rotate(const float* src, float div, const float* cos, const float* sin, int64_t d,
                   float* out) {
  const int64_t half = d / 2;
#pragma omp simd
  for (int64_t c = 0; c < half; ++c) {
    const float a = src[c] / div, b = src[c + half] / div;
    out[c] = a * cos[c] - b * sin[c];
    out[c + half] = b * cos[c] + a * sin[c];
  }
}

// The attention of one computed row: its queries q: (heads, d) against positions [0, lo) of
// its family's shared past (pk, pv; rows of stride ps) and positions [lo, lo + own) of its
// own (ok_, ov; stride os_), one softmax per head over both; out: (heads, d). scratch holds
// heads * (lo + own) floats.
void attend(const float* __restrict q, int64_t heads, int64_t d, const float* pk,
            const float* pv, int64_t ps, int64_t lo, const float* ok_, const float* ov,
            int64_t os_, int64_t own, float* __restrict scratch, float* __restrict out) {
  const int64_t n = lo + own;
  for (int64_t p = 0; p < n; ++p) {
    const float* __restrict k = p < lo ? pk + p * ps : ok_ + (p - lo) * os_;
    for (int64_t h = 0; h < heads; ++h) {
      const float* __restrict qh = q + h * d;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < d; ++c) acc += qh[c] * k[c];
      scratch[h * n + p] = acc;
    }
  }
  for (int64_t h = 0; h < heads; ++h) {
    float* s = scratch + h * n;
    const float m = max_of(s, n, -INFINITY);
    const float inv = 1.f / exp_shifted(s, n, m);
    scale(s, n, inv);
  }
  std::fill(out, out + heads * d, 0.f);
  for (int64_t p = 0; p < n; ++p) {
    const float* __restrict v = p < lo ? pv + p * ps : ov + (p - lo) * os_;
    for (int64_t h = 0; h < heads; ++h) {
      const float w = scratch[h * n + p];
      float* __restrict o = out + h * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[c] += w * v[c];
    }
  }
}

#if defined(__AVX512F__)
#include <immintrin.h>
// The sums of four vectors, in lanes 0, 4, 8 and 12.
inline __m512 sums4(__m512 a, __m512 b, __m512 c, __m512 e) {
  // halves: [a lo + a hi | b lo + b hi] (8 lanes each)
  const __m512 ab =
      _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  const __m512 ce =
      _mm512_add_ps(_mm512_shuffle_f32x4(c, e, 0x44), _mm512_shuffle_f32x4(c, e, 0xEE));
  // quarters: [a | b | c | e], 4 lanes each
  __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, ce, 0x88), _mm512_shuffle_f32x4(ab, ce, 0xDD));
  s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4E));  // + the other pair of each quarter
  return _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1));  // + the neighbour
}

// attend() for heads H (a multiple of 4) and head width 16 J, in AVX-512 registers.
template <int H, int J>
void attend_fast(const float* __restrict q, const float* pk, const float* pv, int64_t ps,
                 int64_t lo, const float* ok_, const float* ov, int64_t os_, int64_t own,
                 float* __restrict scratch, float* __restrict out) {
  const int64_t n = lo + own;
  __m512 qv[H][J];
  for (int h = 0; h < H; ++h)
    for (int j = 0; j < J; ++j) qv[h][j] = _mm512_loadu_ps(q + (h * J + j) * 16);
  alignas(64) float lanes[16];
  for (int64_t p = 0; p < n; ++p) {
    const float* k = p < lo ? pk + p * ps : ok_ + (p - lo) * os_;
    __m512 kv[J];
    for (int j = 0; j < J; ++j) kv[j] = _mm512_loadu_ps(k + j * 16);
    for (int h0 = 0; h0 < H; h0 += 4) {
      __m512 t[4];
      for (int g = 0; g < 4; ++g) {
        t[g] = _mm512_mul_ps(qv[h0 + g][0], kv[0]);
        for (int j = 1; j < J; ++j) t[g] = _mm512_fmadd_ps(qv[h0 + g][j], kv[j], t[g]);
      }
      _mm512_store_ps(lanes, sums4(t[0], t[1], t[2], t[3]));
      for (int g = 0; g < 4; ++g) scratch[(h0 + g) * n + p] = lanes[4 * g];
    }
  }
  for (int h = 0; h < H; ++h) {
    float* s = scratch + h * n;
    const float m = max_of(s, n, -INFINITY);
    scale(s, n, 1.f / exp_shifted(s, n, m));
  }
  __m512 acc[H][J];
  for (int h = 0; h < H; ++h)
    for (int j = 0; j < J; ++j) acc[h][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < n; ++p) {
    const float* v = p < lo ? pv + p * ps : ov + (p - lo) * os_;
    __m512 vv[J];
    for (int j = 0; j < J; ++j) vv[j] = _mm512_loadu_ps(v + j * 16);
    for (int h = 0; h < H; ++h) {
      const __m512 w = _mm512_set1_ps(scratch[h * n + p]);
      for (int j = 0; j < J; ++j) acc[h][j] = _mm512_fmadd_ps(w, vv[j], acc[h][j]);
    }
  }
  for (int h = 0; h < H; ++h)
    for (int j = 0; j < J; ++j) _mm512_storeu_ps(out + (h * J + j) * 16, acc[h][j]);
}
#endif

// attend() with AVX-512 registers where the shape allows.
void attend_row(const float* q, int64_t heads, int64_t d, const float* pk, const float* pv,
                int64_t ps, int64_t lo, const float* ok_, const float* ov, int64_t os_,
                int64_t own, float* scratch, float* out) {
#if defined(__AVX512F__)
  if (heads == 4 && d == 64)
    return attend_fast<4, 4>(q, pk, pv, ps, lo, ok_, ov, os_, own, scratch, out);
  if (heads == 4 && d == 32)
    return attend_fast<4, 2>(q, pk, pv, ps, lo, ok_, ov, os_, own, scratch, out);
  if (heads == 4 && d == 16)
    return attend_fast<4, 1>(q, pk, pv, ps, lo, ok_, ov, os_, own, scratch, out);
  if (heads == 8 && d == 64)
    return attend_fast<8, 4>(q, pk, pv, ps, lo, ok_, ov, os_, own, scratch, out);
#endif
  attend(q, heads, d, pk, pv, ps, lo, ok_, ov, os_, own, scratch, out);
}

// The arguments in three groups, as priors.llama.kernels.token_step's: the network (weights,
// head, eps_root, sizes = heads, kv_heads, inner, products), the step (views, prefix, rot,
// where = pos, lo, fam) and the rows computed (keep, spread, family_shared).
Tensor token_step(Tensor x, std::vector<Tensor> weights, Tensor head, Tensor eps_root,
                  std::vector<int64_t> sizes, std::vector<Tensor> views,
                  std::vector<Tensor> prefix, Tensor rot, std::vector<int64_t> where,
                  std::optional<Tensor> keep, std::optional<Tensor> spread,
                  std::optional<Tensor> family_shared) {
  TORCH_CHECK(sizes.size() == 4 && where.size() == 3,
              "lass_native::token_step: sizes (heads, kv_heads, inner, products) and where "
              "(pos, lo, fam)");
  const int64_t heads = sizes[0], kv_heads = sizes[1], inner = sizes[2], products = sizes[3];
  const int64_t pos = where[0], lo = where[1], fam = where[2];
  TORCH_CHECK(kv_heads == 1, "lass_native::token_step: one key/value head only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "lass_native::token_step: float32 on a CPU only");
  TORCH_CHECK(weights.size() % 4 == 0 && views.size() == weights.size() / 2,
              "lass_native::token_step: 4 weights and 2 views per layer");
  const int64_t layers = static_cast<int64_t>(weights.size()) / 4;
  const int64_t rows = views[0].size(0);
  const int64_t d = rot.size(0), half = d / 2;
  const int64_t width = x.size(1);
  const int64_t qkv_width = (heads + 2) * d;
  const float eps = eps_root.item<float>();
  x = x.contiguous();
  int64_t unique = x.size(0);

  // cos and sin of the position, from its rotation matrix (x @ rot rotates x)
  Tensor rot_c = rot.to(at::kFloat).contiguous();
  std::vector<float> cos(half), sin(half);
  for (int64_t c = 0; c < half; ++c) {
    cos[c] = rot_c.data_ptr<float>()[c * d + c];
    sin[c] = rot_c.data_ptr<float>()[c * d + c + half];
  }
  std::vector<int64_t> src_row(rows), kept;
  if (spread) {
    Tensor s = spread->to(at::kLong).contiguous();
    std::memcpy(src_row.data(), s.data_ptr<int64_t>(), rows * sizeof(int64_t));
  } else {
    for (int64_t r = 0; r < rows; ++r) src_row[r] = r;
  }
  if (keep) {
    Tensor k = keep->to(at::kLong).contiguous();
    kept.assign(k.data_ptr<int64_t>(), k.data_ptr<int64_t>() + k.numel());
  } else {
    kept.resize(rows);
    for (int64_t r = 0; r < rows; ++r) kept[r] = r;
  }
  TORCH_CHECK(static_cast<int64_t>(kept.size()) == unique,
              "lass_native::token_step: keep does not match x");
  const auto opts = x.options();
  std::vector<float> divs(unique);
  Tensor q = at::empty({unique, heads, d}, opts);
  Tensor out_kept = at::empty({unique, heads * d}, opts);
  // each family's shared past: lo for all, or family_shared: (rows / fam,) one per family
  std::vector<int64_t> family_lo;
  if (family_shared) {
    Tensor s = family_shared->to(at::kLong).contiguous();
    family_lo.assign(s.data_ptr<int64_t>(), s.data_ptr<int64_t>() + s.numel());
  }
  int64_t longest = lo;
  for (const int64_t v : family_lo) {
    TORCH_CHECK(v >= 0 && v <= pos, "lass_native::token_step: bad family_shared");
    longest = std::max(longest, v);
  }
  TORCH_CHECK(lo >= 0 && lo <= pos, "lass_native::token_step: bad lo");
  if (longest > 0 || !family_lo.empty()) {
    TORCH_CHECK(fam > 0 && rows % fam == 0, "lass_native::token_step: bad families");
    TORCH_CHECK(family_lo.empty() || static_cast<int64_t>(family_lo.size()) == rows / fam,
                "lass_native::token_step: family_shared does not match the families");
  }
  if (longest > 0)
    TORCH_CHECK(static_cast<int64_t>(prefix.size()) == 2 * layers,
                "lass_native::token_step: a shared past needs its prefix views");
  for (int64_t i = 0; i < unique; ++i)
    TORCH_CHECK(kept[i] >= 0 && kept[i] < rows, "lass_native::token_step: bad keep");
  Tensor act = at::empty({unique, inner}, opts);

  for (int64_t li = 0; li < layers; ++li) {
    const Tensor& k_view = views[2 * li];
    const Tensor& v_view = views[2 * li + 1];
    TORCH_CHECK(k_view.stride(3) == 1 && v_view.stride(3) == 1,
                "lass_native::token_step: key/value rows must be contiguous");
    float* kb = k_view.data_ptr<float>();
    float* vb = v_view.data_ptr<float>();
    const int64_t ks0 = k_view.stride(0), ks2 = k_view.stride(2);
    const int64_t vs0 = v_view.stride(0), vs2 = v_view.stride(2);

    // projections; queries and the new key rotated, key and value into the buffer
    rms_divisors(x.data_ptr<float>(), unique, width, eps, divs.data());
    Tensor qkv = product(x, weights[4 * li], products).contiguous();
    const float* qp = qkv.data_ptr<float>();
    float* qd = q.data_ptr<float>();
    for (int64_t i = 0; i < unique; ++i)
      for (int64_t h = 0; h < heads; ++h)
        rotate(qp + i * qkv_width + h * d, divs[i], cos.data(), sin.data(), d,
               qd + (i * heads + h) * d);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = src_row[r];
      const float* src = qp + s * qkv_width;
      const float div = divs[s];
      rotate(src + heads * d, div, cos.data(), sin.data(), d, kb + r * ks0 + pos * ks2);
      const float* v_src = src + (heads + 1) * d;
      float* v_dst = vb + r * vs0 + pos * vs2;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) v_dst[c] = v_src[c] / div;
    }

    // attention, for the computed rows only: rows with equal pasts attend alike
    const float* pk = nullptr;
    const float* pv = nullptr;
    int64_t ps0 = 0, ps = 0;
    if (longest > 0) {
      const Tensor& pkt = prefix[2 * li];
      const Tensor& pvt = prefix[2 * li + 1];
      TORCH_CHECK(pkt.stride(3) == 1 && pvt.stride(3) == 1 && pkt.stride(0) == pvt.stride(0)
                  && pkt.stride(2) == pvt.stride(2),
                  "lass_native::token_step: bad shared past");
      pk = pkt.data_ptr<float>();
      pv = pvt.data_ptr<float>();
      ps0 = pkt.stride(0);
      ps = pkt.stride(2);
    }
    TORCH_CHECK(ks2 == vs2, "lass_native::token_step: keys and values differ in layout");
    float* ok = out_kept.data_ptr<float>();  // (unique, heads * d)
    at::parallel_for(0, unique, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(heads * (pos + 1));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r = kept[i];
        const int64_t f = fam > 0 ? r / fam : 0;
        const int64_t row_lo = family_lo.empty() ? lo : family_lo[f];
        const float* a_pk = pk ? pk + f * ps0 : nullptr;
        const float* a_pv = pv ? pv + f * ps0 : nullptr;
        attend_row(qd + i * heads * d, heads, d, a_pk, a_pv, ps, row_lo,
                   kb + r * ks0 + row_lo * ks2, vb + r * vs0 + row_lo * vs2, ks2,
                   pos + 1 - row_lo, scratch.data(), ok + i * heads * d);
      }
    });
    x = product_add(x, out_kept, weights[4 * li + 1], products).contiguous();

    // MLP
    rms_divisors(x.data_ptr<float>(), unique, width, eps, divs.data());
    Tensor gu = product(x, weights[4 * li + 2], products).contiguous();
    const float* g = gu.data_ptr<float>();
    float* ad = act.data_ptr<float>();
    at::parallel_for(0, unique, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* gr = g + r * 2 * inner;
        silu_mul(gr, gr + inner, divs[r], inner, ad + r * inner);
      }
    });
    x = product_add(x, act, weights[4 * li + 3], products).contiguous();
  }
  rms_divisors(x.data_ptr<float>(), unique, width, eps, divs.data());
  Tensor logits = product(x, head, products).contiguous();
  const int64_t k = logits.size(1);
  Tensor result = spread ? at::empty({rows, k}, opts) : logits;
  const float* lp = logits.data_ptr<float>();
  float* rp = result.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = src_row[r];
    const float div = divs[s];
#pragma omp simd
    for (int64_t c = 0; c < k; ++c) rp[r * k + c] = lp[s * k + c] / div;
  }
  return result;
}

// Positions [lo, n) of row src[i] copied over those of row dst[i], in place, for data:
// (rows, blocks..., capacity, width) contiguous on a CPU (a key/value buffer); no dst may be
// a src (the caller checks). One memcpy per row and block: no temporary, no other rows.
void copy_rows(Tensor data, std::vector<int64_t> dst, std::vector<int64_t> src, int64_t lo,
               int64_t n, int64_t capacity) {
  TORCH_CHECK(data.device().is_cpu() && data.is_contiguous(),
              "lass_native::copy_rows: a contiguous CPU buffer only");
  TORCH_CHECK(dst.size() == src.size(), "lass_native::copy_rows: dst and src differ in size");
  const int64_t rows = data.size(0);
  TORCH_CHECK(data.dim() >= 3 && data.size(-2) == capacity && 0 <= lo && lo <= n &&
                  n <= capacity,
              "lass_native::copy_rows: bad positions");
  if (n == lo || dst.empty()) return;
  const int64_t width = data.size(-1);
  const int64_t blocks = data.numel() / (rows * capacity * width);
  const int64_t item = data.element_size();
  const int64_t row_bytes = blocks * capacity * width * item;
  const int64_t block_bytes = capacity * width * item;
  char* base = static_cast<char*>(data.data_ptr());
  for (size_t i = 0; i < dst.size(); ++i) {
    TORCH_CHECK(0 <= dst[i] && dst[i] < rows && 0 <= src[i] && src[i] < rows,
                "lass_native::copy_rows: bad row");
    char* to = base + dst[i] * row_bytes + lo * width * item;
    const char* from = base + src[i] * row_bytes + lo * width * item;
    for (int64_t b = 0; b < blocks; ++b)
      std::memcpy(to + b * block_bytes, from + b * block_bytes, (n - lo) * width * item);
  }
}

}  // namespace

TORCH_LIBRARY(lass_native, m) {
  m.def("brgemm_works() -> bool", brgemm_works);
  m.def("copy_rows(Tensor(a!) data, int[] dst, int[] src, int lo, int n, int capacity) -> ()",
        copy_rows);
  m.def(
      "token_step(Tensor x, Tensor[] weights, Tensor head, Tensor eps_root, int[] sizes, "
      "Tensor[] views, Tensor[] prefix, Tensor rot, int[] where, Tensor? keep, "
      "Tensor? spread, Tensor? family_shared) -> Tensor",
      token_step);
}
