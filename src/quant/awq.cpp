// quant/awq.cpp — AWQ scale statistics, search, folding and clipping (quant/awq.h).
#include "quant/awq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/threads.h"
#include "quant/rtn.h"

namespace llmc {

void AbsMeanAccumulator::add(const float* x, int64_t rows) {
  const int64_t n = int64_t(sum_.size());
  if (rows <= 0 || n == 0) return;
  // Column sums split over column ranges (each thread owns its columns).
  parallel_for(0, size_t(n), 64, [&](size_t c0, size_t c1) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * n;
      for (size_t c = c0; c < c1; ++c) sum_[c] += std::fabs(double(xr[c]));
    }
  });
  count_ += rows;
}

void AbsMeanAccumulator::add(const backend::MatView& x) {
  if (x.rows <= 0 || sum_.empty()) return;
  if (x.cols != int64_t(sum_.size()))
    fail("AbsMeanAccumulator: input has ", x.cols, " columns, expected ", sum_.size());
  if (!x.on_device()) return add(x.data, x.rows);
  backend::dev::col_abs_sum(x.data, x.rows, x.cols, sum_.data());
  count_ += x.rows;
}

std::vector<float> AbsMeanAccumulator::mean() const {
  std::vector<float> m(sum_.size(), 0.0f);
  if (count_ == 0) return m;
  for (size_t c = 0; c < sum_.size(); ++c) m[c] = float(sum_[c] / double(count_));
  return m;
}

std::vector<float> awq_weight_mean(const std::vector<const std::vector<float>*>& ws, int64_t in,
                                   int64_t group) {
  const int64_t gs = group > 0 ? group : in;
  std::vector<double> acc(size_t(in), 0.0);
  int64_t rows = 0;
  for (const auto* w : ws) {
    LLMC_CHECK(int64_t(w->size()) % in == 0, "awq weight width");
    const int64_t out = int64_t(w->size()) / in;
    for (int64_t r = 0; r < out; ++r) {
      const float* wr = w->data() + r * in;
      for (int64_t c0 = 0; c0 < in; c0 += gs) {
        const int64_t len = std::min(gs, in - c0);
        float amax = 0.0f;
        for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(wr[c0 + i]));
        if (amax > 0.0f)
          for (int64_t i = 0; i < len; ++i) acc[size_t(c0 + i)] += std::fabs(wr[c0 + i]) / amax;
      }
    }
    rows += out;
  }
  std::vector<float> m(size_t(in), 0.0f);
  if (rows > 0)
    for (int64_t c = 0; c < in; ++c) m[size_t(c)] = float(acc[size_t(c)] / double(rows));
  return m;
}

std::vector<float> awq_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                              double alpha, bool duo) {
  LLMC_CHECK(x_mean.size() == w_mean.size() || !duo, "awq statistics sizes");
  const size_t n = x_mean.size();
  std::vector<double> s(n);
  double mx = 0, mn = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) {
    double v = std::pow(std::max(double(x_mean[i]), 0.0), alpha);
    if (duo) v /= std::pow(std::max(double(w_mean[i]), 0.0), 1.0 - alpha) + 1e-4;
    if (!std::isfinite(v)) v = 1e-4;
    v = std::max(v, 1e-4);
    s[i] = v;
    mx = std::max(mx, v);
    mn = std::min(mn, v);
  }
  std::vector<float> out(n, 1.0f);
  const double norm = std::sqrt(mx * mn);
  if (!(norm > 0) || !std::isfinite(norm)) return out;
  for (size_t i = 0; i < n; ++i) out[i] = float(s[i] / norm);
  return out;
}

AwqSearchResult awq_grid_search_batched(const std::vector<float>& x_mean,
                                        const std::vector<float>& w_mean, int grid, bool duo,
                                        const AwqBatchLoss& loss) {
  std::vector<std::vector<float>> cands;
  cands.emplace_back(x_mean.size(), 1.0f);
  for (int k = 0; k < grid; ++k) cands.push_back(awq_scales(x_mean, w_mean, double(k) / grid, duo));
  const std::vector<double> l = loss(cands);
  LLMC_CHECK(l.size() == cands.size(), "awq batch loss: ", l.size(), " losses for ", cands.size(),
             " candidates");
  AwqSearchResult r;
  r.scales = cands[0];
  r.loss_identity = r.loss = l[0];
  for (int k = 0; k < grid; ++k) {
    r.losses.push_back(l[size_t(k + 1)]);
    if (l[size_t(k + 1)] < r.loss) {
      r.loss = l[size_t(k + 1)];
      r.alpha = double(k) / grid;
      r.scales = cands[size_t(k + 1)];
    }
  }
  return r;
}

AwqSearchResult awq_grid_search(const std::vector<float>& x_mean,
                                const std::vector<float>& w_mean, int grid, bool duo,
                                const std::function<double(const std::vector<float>&)>& loss) {
  AwqSearchResult r;
  r.scales.assign(x_mean.size(), 1.0f);
  r.loss_identity = loss(r.scales);
  r.loss = r.loss_identity;
  for (int k = 0; k < grid; ++k) {
    const double alpha = double(k) / grid;
    std::vector<float> s = awq_scales(x_mean, w_mean, alpha, duo);
    const double l = loss(s);
    r.losses.push_back(l);
    if (l < r.loss) {
      r.loss = l;
      r.alpha = alpha;
      r.scales = std::move(s);
    }
  }
  return r;
}

void scale_columns(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s) {
  LLMC_CHECK(int64_t(s.size()) == in && int64_t(w.size()) == out * in, "scale_columns sizes");
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) w[size_t(r * in + c)] *= s[size_t(c)];
}

void divide_rows(std::vector<float>& w, std::vector<float>& bias, int64_t out, int64_t in,
                 const std::vector<float>& s) {
  LLMC_CHECK(int64_t(s.size()) == out && int64_t(w.size()) == out * in, "divide_rows sizes");
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t c = 0; c < in; ++c) w[size_t(r * in + c)] /= s[size_t(r)];
    if (!bias.empty()) bias[size_t(r)] /= s[size_t(r)];
  }
}

void divide_norm(std::vector<float>& norm, const std::vector<float>& s) {
  LLMC_CHECK(norm.size() == s.size(), "divide_norm sizes");
  for (size_t i = 0; i < s.size(); ++i) norm[i] /= s[i];
}

std::vector<double> scale_hessian(const std::vector<double>& H, const std::vector<float>& s) {
  const size_t n = s.size();
  LLMC_CHECK(H.size() == n * n, "scale_hessian sizes");
  std::vector<double> r(H.size());
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) r[i * n + j] = H[i * n + j] / (double(s[i]) * double(s[j]));
  return r;
}

std::vector<float> awq_fake_quant_scaled(const float* w, int64_t out, int64_t in,
                                         const std::vector<float>& s, int64_t group,
                                         const QuantGrid& g) {
  std::vector<float> ws(w, w + size_t(out * in));
  scale_columns(ws, out, in, s);
  QuantGrid plain = g;
  plain.search_steps = 0;
  std::vector<float> d = quantize_grid_rtn(ws.data(), out, in, group, plain).dequantize();
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) d[size_t(r * in + c)] /= s[size_t(c)];
  return d;
}

bool awq_can_fold_vo(const ModelConfig& cfg) {
  return int64_t(cfg.num_kv_heads) * cfg.head_dim == int64_t(cfg.num_heads) * cfg.head_dim;
}

namespace {

DenseLinear& dense_of(BlockWeights& w, LinearSlot s) {
  auto* d = dynamic_cast<DenseLinear*>(w.linear[int(s)].get());
  if (!d) fail("AWQ folding: ", "linear ", int(s), " is not a dense (unquantized) layer");
  return *d;
}

void fold_columns(BlockWeights& w, LinearSlot slot, const std::vector<float>& s) {
  DenseLinear& d = dense_of(w, slot);
  if (int64_t(s.size()) != d.in_features())
    fail("AWQ folding: ", "linear ", int(slot), " has ", d.in_features(), " inputs, scales ",
         s.size());
  scale_columns(d.weight(), d.out_features(), d.in_features(), s);
}

void fold_rows(BlockWeights& w, LinearSlot slot, const std::vector<float>& s) {
  DenseLinear& d = dense_of(w, slot);
  if (int64_t(s.size()) != d.out_features())
    fail("AWQ folding: ", "linear ", int(slot), " has ", d.out_features(), " outputs, scales ",
         s.size());
  std::vector<float> wt = d.weight(), b = d.bias();
  divide_rows(wt, b, d.out_features(), d.in_features(), s);
  w.linear[int(slot)] =
      std::make_shared<DenseLinear>(std::move(wt), d.out_features(), d.in_features(), std::move(b));
}

}  // namespace

void apply_awq_fold(BlockWeights& w, const AwqFold& f, const ModelConfig& cfg,
                    const BlockLayout* layout) {
  std::vector<int> qkv = {int(LinearSlot::Q), int(LinearSlot::K), int(LinearSlot::V)};
  std::vector<int> mlp = {int(LinearSlot::Gate), int(LinearSlot::Up)};
  if (layout) {  // every consumer of each norm, from the block description
    qkv.clear();
    mlp.clear();
    for (const InputGroup& g : layout->groups)
      for (int m : g.members) {
        if (g.source == InputGroup::Source::InputNorm) qkv.push_back(m);
        if (g.source == InputGroup::Source::PostNorm) mlp.push_back(m);
      }
  }
  if (!f.qkv.empty()) {
    if (f.qkv.size() != w.input_norm.size()) fail("AWQ folding: input norm / scales size mismatch");
    divide_norm(w.input_norm, f.qkv);
    for (int s : qkv) fold_columns(w, LinearSlot(s), f.qkv);
  }
  if (!f.vo.empty()) {
    if (!awq_can_fold_vo(cfg)) fail("AWQ folding: v -> o scaling is impossible under GQA");
    fold_rows(w, LinearSlot::V, f.vo);
    fold_columns(w, LinearSlot::O, f.vo);
  }
  if (!f.mlp.empty()) {
    if (f.mlp.size() != w.post_norm.size()) fail("AWQ folding: post norm / scales size mismatch");
    divide_norm(w.post_norm, f.mlp);
    for (int s : mlp) fold_columns(w, LinearSlot(s), f.mlp);
  }
  if (!f.down.empty()) {
    fold_rows(w, LinearSlot::Up, f.down);
    fold_columns(w, LinearSlot::Down, f.down);
  }
  for (const auto& [e, sc] : f.expert_down) {
    if (!layout) fail("AWQ folding: expert scales need the block layout");
    const int up = layout->find(ModuleRole::Up, e), down = layout->find(ModuleRole::Down, e);
    if (up < 0 || down < 0) fail("AWQ folding: the block has no expert ", e);
    fold_rows(w, LinearSlot(up), sc);
    fold_columns(w, LinearSlot(down), sc);
  }
}

namespace {

backend::GridParams grid_params(const QuantGrid& g) {
  backend::GridParams p;
  p.fp8 = g.kind == QKind::FP8;
  p.bits = g.bits;
  p.symmetric = g.symmetric;
  p.sym_full_range = g.sym_full_range;
  p.fp16_scales = g.fp16_scales;
  return p;
}

// The clipping losses of every (candidate k, row, group) on the GPU: residuals of all
// candidates, one batched GEMM over the groups with their diagonal blocks of H, fp64 dots.
// best_k[r · ng + g] = the first k of least loss (as the CPU loop: strict <, NaN never wins).
void clip_search_gpu(const float* w, int64_t out, int64_t in, int64_t gs, const QuantGrid& g,
                     const double* H, int steps, double max_shrink, std::vector<int>& best_k) {
  const int64_t ng = in / gs;
  std::vector<float> hg(size_t(ng * gs * gs));
  for (int64_t gi = 0; gi < ng; ++gi)
    for (int64_t a = 0; a < gs; ++a)
      for (int64_t b = 0; b < gs; ++b)
        hg[size_t((gi * gs + a) * gs + b)] = float(H[size_t((gi * gs + a) * in + gi * gs + b)]);
  backend::DeviceArray dw(out * in), dh(int64_t(hg.size()));
  dw.upload(w, out * in);
  dh.upload(hg.data(), int64_t(hg.size()));
  const int ncand = steps + 1;
  const int kc = int(std::clamp<int64_t>((int64_t(256) << 20) / std::max<int64_t>(out * in, 1), 1,
                                         ncand));
  backend::DeviceArray D(int64_t(kc) * out * in), M(int64_t(kc) * out * in);
  std::vector<double> best(size_t(out * ng), std::numeric_limits<double>::infinity());
  best_k.assign(size_t(out * ng), 0);
  std::vector<double> e(size_t(int64_t(kc) * out * ng));
  const backend::GridParams gp = grid_params(g);
  for (int k0 = 0; k0 < ncand; k0 += kc) {
    const int n = std::min(kc, ncand - k0);
    backend::dev::shrink_residuals(dw.data(), out, in, gs, gp, steps, max_shrink, k0, n, D.data());
    // Row-major M_g [n·out, gs] = D_g [n·out, gs] (ld in) · H_gg, batched over the groups.
    backend::dev::gemm_batched(false, n * out, gs, gs, D.data(), in, gs, dh.data(), gs, gs * gs,
                               M.data(), in, gs, int(ng));
    backend::dev::seg_sums(backend::dev::SegOp::Dot, D.data(), gs, M.data(), gs, gs,
                           int64_t(n) * out * ng, e.data());
    for (int kk = 0; kk < n; ++kk)
      for (int64_t i = 0; i < out * ng; ++i) {
        const double v = e[size_t(kk * out * ng + i)];
        if (v < best[size_t(i)]) best[size_t(i)] = v, best_k[size_t(i)] = k0 + kk;
      }
  }
}

}  // namespace

QuantizedWeight awq_clip_quantize(const float* w, int64_t out, int64_t in, int64_t group,
                                  const QuantGrid& g, const double* H, int steps,
                                  double max_shrink) {
  QuantGrid plain = g;
  plain.search_steps = 0;
  QuantizedWeight qw = quantize_grid_rtn(w, out, in, group, plain);
  if (steps <= 0) return qw;
  cpu::blas_init();
  const int64_t gs = group > 0 ? group : in;
  const int64_t ng = qw.n_groups();
  // The codes of row r, group gi at `shrink`.
  auto apply = [&](int64_t r, size_t gi, double shrink) {
    const int64_t c0 = int64_t(gi) * gs, len = std::min(gs, in - c0);
    const float* v = w + r * in + c0;
    float s;
    int32_t z;
    group_params_shrink(plain, v, len, shrink, &s, &z);
    qw.scales[size_t(r * ng) + gi] = s;
    if (!g.symmetric) qw.zeros[size_t(r * ng) + gi] = z;
    for (int64_t i = 0; i < len; ++i) {
      const int32_t q = int_quantize_value(v[i], s, z, g.bits, g.symmetric);
      if (g.symmetric) qw.q8[size_t(r * in + c0 + i)] = int8_t(q);
      else qw.qu[size_t(r * in + c0 + i)] = uint8_t(q);
    }
  };
  if (H && in % gs == 0 && backend::device() == backend::Device::CUDA) {
    std::vector<int> best_k;
    clip_search_gpu(w, out, in, gs, g, H, steps, max_shrink, best_k);
    parallel_for(0, size_t(out), 16, [&](size_t r0, size_t r1) {
      for (size_t r = r0; r < r1; ++r)
        for (size_t gi = 0; gi < size_t(ng); ++gi)
          apply(int64_t(r), gi, 1.0 - max_shrink * best_k[r * size_t(ng) + gi] / steps);
    });
    return qw;
  }
  parallel_for(0, size_t(ng), 1, [&](size_t g0, size_t g1) {
    for (size_t gi = g0; gi < g1; ++gi) {
      const int64_t c0 = int64_t(gi) * gs, len = std::min(gs, in - c0);
      std::vector<float> hg;
      if (H) {
        hg.resize(size_t(len * len));
        for (int64_t a = 0; a < len; ++a)
          for (int64_t b = 0; b < len; ++b)
            hg[size_t(a * len + b)] = float(H[size_t((c0 + a) * in + c0 + b)]);
      }
      std::vector<float> D(size_t(out * len)), M(H ? size_t(out * len) : 0);
      std::vector<double> best(size_t(out), std::numeric_limits<double>::infinity());
      std::vector<double> best_shrink(size_t(out), 1.0);
      for (int k = 0; k <= steps; ++k) {
        const double shrink = 1.0 - max_shrink * k / steps;
        for (int64_t r = 0; r < out; ++r) {
          const float* v = w + r * in + c0;
          float s;
          int32_t z;
          group_params_shrink(plain, v, len, shrink, &s, &z);
          float* dr = D.data() + r * len;
          for (int64_t i = 0; i < len; ++i) {
            const int32_t q = int_quantize_value(v[i], s, z, g.bits, g.symmetric);
            dr[i] = float(q - z) * s - v[i];
          }
        }
        if (H) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(out), int(len), int(len),
                      1.0f, D.data(), int(len), hg.data(), int(len), 0.0f, M.data(), int(len));
        }
        for (int64_t r = 0; r < out; ++r) {
          double e = 0;
          const float* dr = D.data() + r * len;
          const float* mr = H ? M.data() + r * len : dr;
          for (int64_t i = 0; i < len; ++i) e += double(dr[i]) * double(mr[i]);
          if (e < best[size_t(r)]) {
            best[size_t(r)] = e;
            best_shrink[size_t(r)] = shrink;
          }
        }
      }
      for (int64_t r = 0; r < out; ++r) apply(r, gi, best_shrink[size_t(r)]);
    }
  });
  return qw;
}

}  // namespace llmc
