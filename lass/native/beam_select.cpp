// The search's beam choice in C++ (lass.sampling's beam search, two sources on a CPU),
// lass_search::beam_select. Built on first use by lass.native (torch.utils.cpp_extension, as
// the prior step of priors.native); lass.sampling falls back to its tensor code where it does
// not build.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

using at::Tensor;

namespace {

// One step of beam search over candidates that every beam of a mixture shares (lass.sampling
// with a counted likelihood), float32 on a CPU, without the (batch, width, C) scores:
//   score[b, w, c] = total[b, w] + ((lp1[b w, first[b, c]] + lp2[b w, second[b, c]])
//                                   + ll[b, c])
// (summed in the order the tensor code sums), the best `width` per mixture (ties to the lower
// flat index w C + c; fewer than `width` candidates: padded with -inf at index 0), each
// placed as lass.sampling._keep_slots places them (a survivor's first child in its parent's
// row, the others in the rows of beams without children, in order). Returns the new totals
// (batch, width), each row's parent within its mixture (batch, width) and the row's two
// tokens (batch width,) each.
std::vector<Tensor> beam_select(Tensor lp1, Tensor lp2, Tensor first, Tensor second, Tensor ll,
                                Tensor total) {
  TORCH_CHECK(lp1.scalar_type() == at::kFloat && lp2.scalar_type() == at::kFloat &&
                  ll.scalar_type() == at::kFloat && total.scalar_type() == at::kFloat &&
                  first.scalar_type() == at::kLong && second.scalar_type() == at::kLong,
              "lass_search::beam_select: float32 scores and int64 tokens");
  TORCH_CHECK(lp1.device().is_cpu() && lp1.dim() == 2 && lp2.sizes() == lp1.sizes() &&
                  total.dim() == 2 && first.dim() == 2 && second.sizes() == first.sizes() &&
                  ll.sizes() == first.sizes() && first.size(0) == total.size(0) &&
                  lp1.size(0) == total.numel(),
              "lass_search::beam_select: bad shapes");
  lp1 = lp1.contiguous();
  lp2 = lp2.contiguous();
  total = total.contiguous();
  const int64_t batch = total.size(0), width = total.size(1), k = lp1.size(1);
  const int64_t c_n = first.size(1);
  const float* p1 = lp1.data_ptr<float>();
  const float* p2 = lp2.data_ptr<float>();
  const float* tot = total.data_ptr<float>();
  const int64_t* fi = first.data_ptr<int64_t>();
  const int64_t* se = second.data_ptr<int64_t>();
  const float* lv = ll.data_ptr<float>();
  const int64_t fs0 = first.stride(0), fs1 = first.stride(1);
  const int64_t ss0 = second.stride(0), ss1 = second.stride(1);
  const int64_t ls0 = ll.stride(0), ls1 = ll.stride(1);
  Tensor out_total = at::empty({batch, width}, total.options());
  Tensor out_parent = at::empty({batch, width}, first.options());
  Tensor tok1 = at::empty({batch * width}, first.options());
  Tensor tok2 = at::empty({batch * width}, first.options());
  float* ot = out_total.data_ptr<float>();
  int64_t* op = out_parent.data_ptr<int64_t>();
  int64_t* t1 = tok1.data_ptr<int64_t>();
  int64_t* t2 = tok2.data_ptr<int64_t>();
  std::vector<float> val(width);
  std::vector<int64_t> idx(width), slot(width), later;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* fb = fi + b * fs0;
    const int64_t* sb = se + b * ss0;
    const float* lb = lv + b * ls0;
    int64_t count = 0;
    for (int64_t w = 0; w < width; ++w) {
      const float tw = tot[b * width + w];
      if (count == width && !(tw > -INFINITY)) continue;  // a dead beam: all -inf
      const float* r1 = p1 + (b * width + w) * k;
      const float* r2 = p2 + (b * width + w) * k;
      for (int64_t c = 0; c < c_n; ++c) {
        const float v = tw + ((r1[fb[c * fs1]] + r2[sb[c * ss1]]) + lb[c * ls1]);
        if (count == width && !(v > val[width - 1])) continue;
        // insert after the equal values (lower flat indices first)
        int64_t at = count < width ? count : width - 1;
        while (at > 0 && v > val[at - 1]) {
          if (at < width) {
            val[at] = val[at - 1];
            idx[at] = idx[at - 1];
          }
          --at;
        }
        val[at] = v;
        idx[at] = w * c_n + c;
        if (count < width) ++count;
      }
    }
    for (int64_t j = count; j < width; ++j) {
      val[j] = -INFINITY;
      idx[j] = 0;
    }
    // slots: a parent's first child stays in its row; the others fill childless rows
    std::fill(slot.begin(), slot.end(), -1);
    later.clear();
    for (int64_t j = 0; j < width; ++j) {
      const int64_t parent = c_n > 0 ? idx[j] / c_n : 0;
      if (slot[parent] < 0) slot[parent] = j;
      else later.push_back(j);
    }
    size_t next = 0;
    for (int64_t s = 0; s < width && next < later.size(); ++s)
      if (slot[s] < 0) slot[s] = later[next++];
    for (int64_t s = 0; s < width; ++s) {
      const int64_t j = slot[s];
      const int64_t parent = c_n > 0 ? idx[j] / c_n : 0;
      const int64_t pick = c_n > 0 ? idx[j] % c_n : 0;
      ot[b * width + s] = val[j];
      op[b * width + s] = parent;
      t1[b * width + s] = c_n > 0 ? fb[pick * fs1] : 0;
      t2[b * width + s] = c_n > 0 ? sb[pick * ss1] : 0;
    }
  }
  return {out_total, out_parent, tok1, tok2};
}

}  // namespace

TORCH_LIBRARY(lass_search, m) {
  m.def("beam_select(Tensor lp1, Tensor lp2, Tensor first, Tensor second, Tensor ll, "
        "Tensor total) -> Tensor[]",
        beam_select);
}
