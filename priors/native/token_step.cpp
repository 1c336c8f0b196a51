// The per-token step of a Llama prior (priors.fast_llama.token_step) as one C++ operator,
// lass_native::token_step: float32 on a CPU, one key/value head. Built on first use by
// priors.native (torch.utils.cpp_extension); priors.fast_llama falls back to the TorchScript
// step where it does not build.
//
// The products by the weights stay oneDNN's packed linear (or torch.mm), and the attention
// products stay batched products (the family's shared past, each row's own positions);
// everything between them (RMS divisors, the rotary embedding, the key/value writes, one
// softmax over both parts, SiLU times the up projection, the row copies for rows with equal
// pasts) runs as loops over the rows here, where it took some 100 tensor operations per
// step. The same computation as token_step up to float rounding: the exponential is a
// polynomial (about 2 ulp), the norms and the rotation sum in another order.
#include <ATen/ATen.h>
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

Tensor product(const Tensor& x, const Tensor& w, bool packed) {
  if (!packed) return at::mm(x, w);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                     c10::string_view, c10::List<std::optional<c10::Scalar>>,
                                     std::optional<c10::string_view>)>();
  return op.call(x, w, std::nullopt, "none", c10::List<std::optional<c10::Scalar>>(),
                 c10::string_view(""));
}

// acc + x @ w (the same as torch.mm(x, w).add_(acc) unpacked).
Tensor product_add(const Tensor& acc, const Tensor& x, const Tensor& w, bool packed) {
  if (!packed) return at::mm(x, w).add_(acc);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                       .typed<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                     const std::optional<Tensor>&, c10::string_view)>();
  return op.call(x, acc, w, std::nullopt, "add");
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

Tensor token_step(Tensor x, std::vector<Tensor> weights, Tensor head, std::vector<Tensor> views,
                  std::vector<Tensor> prefix, Tensor rot, int64_t pos, int64_t lo, int64_t fam,
                  int64_t heads, int64_t kv_heads, int64_t inner, Tensor eps_root, bool packed,
                  std::optional<Tensor> keep, std::optional<Tensor> spread) {
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
  const int64_t own = pos + 1 - lo;
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
  Tensor q = at::empty({rows, heads, d}, opts);
  Tensor out_kept = at::empty({unique, heads * d}, opts);
  // the computed rows' places in their families' blocks of queries for the shared past:
  // families x most (the most computed rows of a family), unused places zero
  const int64_t families = lo > 0 ? rows / fam : 0;
  int64_t most = 0;
  std::vector<int64_t> place(unique);
  if (lo > 0) {
    TORCH_CHECK(fam > 0 && rows % fam == 0, "lass_native::token_step: bad families");
    std::vector<int64_t> count(families, 0);
    for (int64_t i = 0; i < unique; ++i) {
      TORCH_CHECK(kept[i] >= 0 && kept[i] < rows, "lass_native::token_step: bad keep");
      most = std::max(most, ++count[kept[i] / fam]);
    }
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < unique; ++i) {
      const int64_t f = kept[i] / fam;
      place[i] = f * most + count[f]++;
    }
  }
  Tensor q_fam = at::zeros({families, most, heads, d}, opts);
  Tensor own_scores = at::empty({rows, heads, own}, opts);
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
    Tensor qkv = product(x, weights[4 * li], packed).contiguous();
    const float* qp = qkv.data_ptr<float>();
    float* qd = q.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = src_row[r];
      const float* src = qp + s * qkv_width;
      const float div = divs[s];
      for (int64_t h = 0; h < heads; ++h)
        rotate(src + h * d, div, cos.data(), sin.data(), d, qd + (r * heads + h) * d);
      rotate(src + heads * d, div, cos.data(), sin.data(), d, kb + r * ks0 + pos * ks2);
      const float* v_src = src + (heads + 1) * d;
      float* v_dst = vb + r * vs0 + pos * vs2;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) v_dst[c] = v_src[c] / div;
    }

    // scores: each row's own positions (one batched product over the rows), and the
    // family's shared past (one over the families, for the rows computed only: rows with
    // equal pasts have equal attention)
    Tensor k_own = k_view.select(1, 0).narrow(1, lo, own);  // (rows, own, d)
    Tensor v_own = v_view.select(1, 0).narrow(1, lo, own);
    float* os = own_scores.data_ptr<float>();  // (rows * heads, own)
    at::bmm_out(own_scores, q, k_own.transpose(1, 2));
    Tensor pre_scores;
    float* pre = nullptr;  // (families * most * heads, lo)
    if (lo > 0) {
      float* qf = q_fam.data_ptr<float>();
      for (int64_t i = 0; i < unique; ++i)
        std::memcpy(qf + place[i] * heads * d, qd + kept[i] * heads * d,
                    heads * d * sizeof(float));
      Tensor k_pre = prefix[2 * li].select(1, 0).narrow(1, 0, lo);  // (families, lo, d)
      pre_scores = at::bmm(q_fam.view({families, most * heads, d}), k_pre.transpose(1, 2));
      pre = pre_scores.data_ptr<float>();
    }
    // one softmax over both parts of every computed query
    for (int64_t i = 0; i < unique; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        float* a = pre ? pre + (place[i] * heads + h) * lo : nullptr;
        float* b = os + (kept[i] * heads + h) * own;
        float m = max_of(b, own, a ? max_of(a, lo, -INFINITY) : -INFINITY);
        const float sum = (a ? exp_shifted(a, lo, m) : 0.f) + exp_shifted(b, own, m);
        const float inv = 1.f / sum;
        if (a) scale(a, lo, inv);
        scale(b, own, inv);
      }
    // values (rows not computed get values of unnormalised scores: never read)
    Tensor own_out = at::bmm(own_scores, v_own);  // (rows, heads, d)
    const float* oo = own_out.data_ptr<float>();
    float* ok = out_kept.data_ptr<float>();  // (unique, heads * d)
    if (lo > 0) {
      Tensor v_pre = prefix[2 * li + 1].select(1, 0).narrow(1, 0, lo);
      Tensor pre_out = at::bmm(pre_scores.view({families, most * heads, lo}), v_pre);
      const float* po = pre_out.data_ptr<float>();
      for (int64_t i = 0; i < unique; ++i) {
        const float* x1 = po + place[i] * heads * d;
        const float* x2 = oo + kept[i] * heads * d;
        float* o = ok + i * heads * d;
#pragma omp simd
        for (int64_t c = 0; c < heads * d; ++c) o[c] = x1[c] + x2[c];
      }
    } else {
      for (int64_t i = 0; i < unique; ++i)
        std::memcpy(ok + i * heads * d, oo + kept[i] * heads * d, heads * d * sizeof(float));
    }
    x = product_add(x, out_kept, weights[4 * li + 1], packed).contiguous();

    // MLP
    rms_divisors(x.data_ptr<float>(), unique, width, eps, divs.data());
    Tensor gu = product(x, weights[4 * li + 2], packed).contiguous();
    const float* g = gu.data_ptr<float>();
    float* ad = act.data_ptr<float>();
    for (int64_t r = 0; r < unique; ++r) {
      const float* gr = g + r * 2 * inner;
      silu_mul(gr, gr + inner, divs[r], inner, ad + r * inner);
    }
    x = product_add(x, act, weights[4 * li + 3], packed).contiguous();
  }
  rms_divisors(x.data_ptr<float>(), unique, width, eps, divs.data());
  Tensor logits = product(x, head, packed).contiguous();
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

}  // namespace

TORCH_LIBRARY(lass_native, m) {
  m.def(
      "token_step(Tensor x, Tensor[] weights, Tensor head, Tensor[] views, Tensor[] prefix, "
      "Tensor rot, int pos, int lo, int fam, int heads, int kv_heads, int inner, "
      "Tensor eps_root, bool packed, Tensor? keep, Tensor? spread) -> Tensor",
      token_step);
}
