// quant/method_awq.cpp — AWQ as a BlockQuantizer (quant/method_awq.h).
#include "quant/method_awq.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "quant/awq.h"
#include "quant/layouts.h"
#include "quant/method_gptq.h"

namespace llmc {

namespace {

using S = LinearSlot;

// A linear whose output is zero (disables the MLP inside a block run); its dense form (all
// zeros) lets the GPU block runner run it too.
class ZeroLinear : public Linear {
 public:
  ZeroLinear(int64_t out, int64_t in) : out_(out), in_(in) {}
  DenseForm dense_form() const override {
    if (zeros_.empty()) zeros_.assign(size_t(out_ * in_), 0.0f);
    return {zeros_.data()};
  }
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const float*, int64_t rows, float* y) const override {
    std::fill(y, y + rows * out_, 0.0f);
  }
  uint64_t bytes_held() const override { return 0; }

 private:
  int64_t out_, in_;
  mutable std::vector<float> zeros_;
};

struct AwqOptions {
  QuantGrid grid;
  int64_t group = 128;
  int grid_points = 20;
  bool duo = true;
  int clip_steps = 20;
  double max_shrink = 0.5;
  int64_t loss_tokens = 2048;
  bool module_loss = true;  // false: sum of the mapping's linear output errors (from H)
  bool gptq = false;
  GptqBlockOptions gptq_opts;
};

double mse(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    s += d * d;
  }
  return a.empty() ? 0.0 : s / double(a.size());
}

// Per-input statistics collected in one calibration run of the block.
struct InputStats {
  AbsMeanAccumulator absmean;
  HessianAccumulator hessian;
  explicit InputStats(int64_t n) : absmean(n), hessian(n) {}
};

struct MappingResult {
  std::vector<float> scales;  // empty: mapping not applied
  double alpha = -1, loss = 0, loss_identity = 0;
};

// ---- the scale grid's losses on the GPU (--device cuda), all candidates in batches ----

bool on_gpu() { return backend::device() == backend::Device::CUDA; }

backend::GridParams device_grid(const QuantGrid& g) {
  backend::GridParams p;
  p.bits = g.bits;
  p.symmetric = g.symmetric;
  p.sym_full_range = g.sym_full_range;
  p.fp16_scales = g.fp16_scales;
  return p;
}

backend::DeviceArray to_device(const float* p, int64_t n) {
  backend::DeviceArray d(n);
  d.upload(p, n);
  return d;
}

// Candidates per batch so that `per` floats each stay within ~1 GiB.
int64_t batch_of(int64_t per, size_t n) {
  return std::clamp<int64_t>((int64_t(1) << 28) / std::max<int64_t>(per, 1), 1, int64_t(n));
}

// Σ over `ls` of tr(ΔW H ΔWᵀ), ΔW = Q(W·diag(s))·diag(1/s) − W, per candidate s: the CPU's
// hessian_loss (fake quantization bit for bit, the quadratic form by one GEMM per batch).
std::vector<double> hessian_losses_gpu(const std::vector<const DenseLinear*>& ls,
                                       const std::vector<double>& H, int64_t group,
                                       const QuantGrid& g,
                                       const std::vector<std::vector<float>>& cands) {
  std::vector<double> loss(cands.size(), 0.0);
  if (ls.empty()) return loss;
  const int64_t in = ls[0]->in_features();
  std::vector<float> hf(H.begin(), H.end());
  const backend::DeviceArray dh = to_device(hf.data(), in * in);
  for (const DenseLinear* d : ls) {
    const int64_t out = d->out_features(), sz = out * in;
    const backend::DeviceArray dw = to_device(d->weight().data(), sz);
    const int64_t B = batch_of(2 * sz, cands.size());
    backend::DeviceArray dd(B * sz), dm(B * sz), ds(B * in);
    std::vector<double> t(static_cast<size_t>(B));
    for (size_t c0 = 0; c0 < cands.size(); c0 += size_t(B)) {
      const int64_t n = std::min<int64_t>(B, int64_t(cands.size() - c0));
      for (int64_t b = 0; b < n; ++b) {
        ds.upload(cands[c0 + size_t(b)].data(), in, b * in);
        backend::dev::fake_quant_scaled(dw.data(), out, in, ds.data() + b * in, group,
                                        device_grid(g), true, dd.data() + b * sz);
      }
      backend::dev::gemm_batched(false, n * out, in, in, dd.data(), in, 0, dh.data(), in, 0,
                                 dm.data(), in, 0, 1);
      backend::dev::seg_sums(backend::dev::SegOp::Dot, dd.data(), sz, dm.data(), sz, sz, n,
                             t.data());
      for (int64_t b = 0; b < n; ++b) loss[c0 + size_t(b)] += t[size_t(b)];
    }
  }
  return loss;
}

// The MLP's output MSE against the unquantized MLP on the rows x [rows, hidden], per candidate
// scaling of gate/up (the CPU's module loss of the mlp mapping): gate and up of a batch of
// candidates in one GEMM each, down as one strided-batched GEMM.
std::vector<double> mlp_losses_gpu(const std::vector<float>& x, int64_t rows,
                                   const DenseLinear& g, const DenseLinear& u,
                                   const DenseLinear& dn, bool quant_g, bool quant_u,
                                   int64_t group, const QuantGrid& grid,
                                   const std::vector<std::vector<float>>& cands) {
  const int64_t F = g.out_features(), Hd = g.in_features(), O = dn.out_features();
  std::vector<double> loss(cands.size(), 0.0);
  if (rows <= 0) return loss;
  const backend::DeviceArray dx = to_device(x.data(), rows * Hd);
  const backend::DeviceArray dg = to_device(g.weight().data(), F * Hd);
  const backend::DeviceArray du = to_device(u.weight().data(), F * Hd);
  const backend::DeviceArray dd = to_device(dn.weight().data(), O * F);
  const int64_t B = batch_of(2 * F * Hd + 2 * rows * F + rows * O, cands.size() + 1);
  backend::DeviceArray wg(B * F * Hd), wu(B * F * Hd), a(rows * B * F), bb(rows * B * F),
      y(B * rows * O), ref(rows * O), ds(B * Hd);
  // y_b = silu(x · Gq_bᵀ) ⊙ (x · Uq_bᵀ) · Wdᵀ for the n stacked candidates.
  auto run = [&](int64_t n, float* yout) {
    backend::dev::gemm_batched(true, rows, n * F, Hd, dx.data(), Hd, 0, wg.data(), Hd, 0,
                               a.data(), n * F, 0, 1);
    backend::dev::gemm_batched(true, rows, n * F, Hd, dx.data(), Hd, 0, wu.data(), Hd, 0,
                               bb.data(), n * F, 0, 1);
    backend::dev::silu_mul(a.data(), bb.data(), a.data(), rows * n * F);
    backend::dev::gemm_batched(true, rows, O, F, a.data(), n * F, F, dd.data(), F, 0, yout, O,
                               rows * O, int(n));
  };
  backend::dev::copy(wg.data(), dg.data(), F * Hd);
  backend::dev::copy(wu.data(), du.data(), F * Hd);
  run(1, ref.data());
  std::vector<double> t(static_cast<size_t>(B));
  for (size_t c0 = 0; c0 < cands.size(); c0 += size_t(B)) {
    const int64_t n = std::min<int64_t>(B, int64_t(cands.size() - c0));
    for (int64_t b = 0; b < n; ++b) {
      ds.upload(cands[c0 + size_t(b)].data(), Hd, b * Hd);
      const float* sc = ds.data() + b * Hd;
      if (quant_g)
        backend::dev::fake_quant_scaled(dg.data(), F, Hd, sc, group, device_grid(grid), false,
                                        wg.data() + b * F * Hd);
      else backend::dev::copy(wg.data() + b * F * Hd, dg.data(), F * Hd);
      if (quant_u)
        backend::dev::fake_quant_scaled(du.data(), F, Hd, sc, group, device_grid(grid), false,
                                        wu.data() + b * F * Hd);
      else backend::dev::copy(wu.data() + b * F * Hd, du.data(), F * Hd);
    }
    run(n, y.data());
    backend::dev::seg_sums(backend::dev::SegOp::SqDiff, y.data(), rows * O, ref.data(), 0,
                           rows * O, n, t.data());
    for (int64_t b = 0; b < n; ++b) loss[c0 + size_t(b)] = t[size_t(b)] / double(rows * O);
  }
  return loss;
}

class AwqQuantizer : public BlockQuantizer {
 public:
  explicit AwqQuantizer(const QuantSpec& spec) : spec_(spec) {
    check_method_options(find_method(spec.method), spec.extra);  // types and ranges: the row
    o_.grid.bits = spec.bits;
    o_.grid.symmetric = spec.symmetric;
    o_.grid.fp16_scales =
        !spec.layout.empty() && find_layout(spec.layout).scale_dtype == DType::F16;
    o_.group = spec.group;
    if (o_.group == 0) fail("method ", spec.method, ": AWQ needs a group size > 0 or -1");
    o_.grid_points = method_opt<int>(spec, "grid");
    o_.clip_steps = method_opt<int>(spec, "clip_steps");
    o_.max_shrink = method_opt<double>(spec, "max_shrink");
    o_.loss_tokens = method_opt<int64_t>(spec, "loss_tokens");
    o_.module_loss = method_opt<std::string>(spec, "loss") == "module";
    o_.duo = method_opt<bool>(spec, "duo");
    o_.gptq = method_opt<std::string>(spec, "solver") == "gptq";
    if (o_.gptq) o_.gptq_opts = gptq_block_options(spec);
  }

  void quantize_block(BlockJob& job) override;
  void awq_moe_block(BlockJob& job);

  void finish(nlohmann::json& summary) override {
    nlohmann::json j = {{"linears", linears_},
                        {"mean_rel_error", linears_ ? sum_rel_ / linears_ : 0.0},
                        {"mean_rel_error_rtn", linears_ ? sum_rel_rtn_ / linears_ : 0.0},
                        {"solver", o_.gptq ? "gptq" : "clip"},
                        {"alphas", alphas_}};
    if (o_.gptq) j["gptq"] = gstats_.to_json();
    summary["awq"] = j;
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "awq: %d linears, mean relative output error %.5f (RTN %.5f), solver %s",
                  linears_, linears_ ? sum_rel_ / linears_ : 0.0,
                  linears_ ? sum_rel_rtn_ / linears_ : 0.0, o_.gptq ? "gptq" : "clip");
    log_info(buf);
  }

 private:
  QuantSpec spec_;
  AwqOptions o_;
  int linears_ = 0;
  double sum_rel_ = 0, sum_rel_rtn_ = 0;
  nlohmann::json alphas_ = nlohmann::json::object();
  GptqRunStats gstats_;
};

void AwqQuantizer::quantize_block(BlockJob& job) {
  LLMC_CHECK(job.has_inputs(), "AWQ needs calibration inputs");
  const ModelConfig& cfg = job.config();
  BlockWeights& bw = job.weights;
  if (job.layout().moe()) {
    awq_moe_block(job);
    return;
  }
  auto quantized = [&](S s) { return !job.ignored(s); };
  auto any = [&](std::initializer_list<S> l) {
    return std::any_of(l.begin(), l.end(), [&](S s) { return quantized(s); });
  };
  for (int s = 0; s < job.num_modules(); ++s)
    if (quantized(S(s))) job.check_finite(S(s));

  // ---- 1. statistics ----
  // Attention loss: the first m whole windows; MLP loss: every stride-th row of all windows.
  const int m = int(std::clamp<int64_t>((o_.loss_tokens + job.seq - 1) / job.seq, 1,
                                        job.n_samples));
  const int64_t stride = std::max<int64_t>(1, job.rows() / o_.loss_tokens);
  int64_t seen_rows = 0;
  std::map<int, InputStats> st;
  for (S k : {S::Q, S::O, S::Gate, S::Down})
    st.emplace(int(k), InputStats(job.dense(k).in_features()));
  std::vector<float> mlp_x;  // MLP inputs (post-norm) of the first m windows
  mlp_x.reserve(size_t((job.rows() / stride + 1) * job.hidden()));
  {
    LinearHook hook = [&](int, S s, const backend::MatView& v) {
      auto it = st.find(int(s));
      if (it == st.end()) return;
      it->second.absmean.add(v);
      it->second.hessian.add(v);
      if (s == S::Gate && o_.module_loss) {
        const int64_t rows = v.rows, cols = v.cols;
        const int64_t first = (stride - seen_rows % stride) % stride;  // seen % stride == 0
        if (v.on_device()) {
          backend::dev::gather_rows(v.data, rows, cols, first, stride, &mlp_x);
        } else {
          for (int64_t r = first; r < rows; r += stride)
            mlp_x.insert(mlp_x.end(), v.data + r * cols, v.data + (r + 1) * cols);
        }
        seen_rows += rows;
      }
    };
    job.run(&hook);
  }
  std::map<int, std::vector<double>> H;
  for (auto& [k, v] : st) H[k] = v.hessian.hessian();

  // Original weights (for RTN's error in the report).
  std::map<int, std::vector<float>> orig;
  for (int s = 0; s < job.num_modules(); ++s)
    if (quantized(S(s))) orig[s] = job.dense(S(s)).weight();

  auto fq = [&](S s, const std::vector<float>& sc) {
    const DenseLinear& d = job.dense(s);
    return awq_fake_quant_scaled(d.weight().data(), d.out_features(), d.in_features(), sc,
                                 o_.group, o_.grid);
  };
  auto wmean = [&](std::initializer_list<S> l) {
    std::vector<const std::vector<float>*> ws;
    for (S s : l) ws.push_back(&job.dense(s).weight());
    return awq_weight_mean(ws, job.dense(*l.begin()).in_features(), o_.group);
  };
  auto search = [&](const std::vector<float>& xm, const std::vector<float>& wm,
                    const std::function<double(const std::vector<float>&)>& loss) {
    AwqSearchResult r = awq_grid_search(xm, wm, o_.grid_points, o_.duo, loss);
    MappingResult mr;
    mr.scales = std::move(r.scales);
    mr.alpha = r.alpha;
    mr.loss = r.loss;
    mr.loss_identity = r.loss_identity;
    return mr;
  };
  auto search_batched = [&](const std::vector<float>& xm, const std::vector<float>& wm,
                            const AwqBatchLoss& loss) {
    AwqSearchResult r = awq_grid_search_batched(xm, wm, o_.grid_points, o_.duo, loss);
    MappingResult mr;
    mr.scales = std::move(r.scales);
    mr.alpha = r.alpha;
    mr.loss = r.loss;
    mr.loss_identity = r.loss_identity;
    return mr;
  };
  // The Hessian loss of the quantized ones of `l` (sharing one input), all candidates at once
  // on the GPU.
  auto hessian_search_gpu = [&](std::initializer_list<S> l, const std::vector<double>& h,
                                const std::vector<float>& xm, const std::vector<float>& wm) {
    std::vector<const DenseLinear*> ls;
    for (S s : l)
      if (quantized(s)) ls.push_back(&job.dense(s));
    return search_batched(xm, wm, [&](const std::vector<std::vector<float>>& c) {
      return hessian_losses_gpu(ls, h, o_.group, o_.grid, c);
    });
  };
  // Loss of a single linear from its input Hessian: tr(ΔW H ΔWᵀ).
  auto hessian_loss = [&](S s, const std::vector<double>& h) {
    const double* hp = h.data();
    return [&, s, hp](const std::vector<float>& sc) {
      const DenseLinear& d = job.dense(s);
      std::vector<float> dq = fq(s, sc);
      for (size_t i = 0; i < dq.size(); ++i) dq[i] -= d.weight()[i];
      return hessian_quad_trace(dq.data(), d.out_features(), d.in_features(), hp);
    };
  };

  AwqFold fold;
  std::map<std::string, MappingResult> maps;

  // ---- 2a. input_layernorm -> q/k/v (attention output) ----
  auto linear_sum_loss = [&](std::initializer_list<S> l, const std::vector<double>& h) {
    std::vector<std::function<double(const std::vector<float>&)>> parts;
    for (S s : l)
      if (quantized(s)) parts.push_back(hessian_loss(s, h));
    return [parts](const std::vector<float>& sc) {
      double t = 0;
      for (const auto& f : parts) t += f(sc);
      return t;
    };
  };
  if (any({S::Q, S::K, S::V}) && !o_.module_loss && on_gpu()) {
    maps["qkv"] = hessian_search_gpu({S::Q, S::K, S::V}, H.at(int(S::Q)),
                                     st.at(int(S::Q)).absmean.mean(), wmean({S::Q, S::K, S::V}));
    fold.qkv = maps["qkv"].scales;
  } else if (any({S::Q, S::K, S::V}) && !o_.module_loss) {
    maps["qkv"] = search(st.at(int(S::Q)).absmean.mean(), wmean({S::Q, S::K, S::V}),
                         linear_sum_loss({S::Q, S::K, S::V}, H.at(int(S::Q))));
    fold.qkv = maps["qkv"].scales;
  } else if (any({S::Q, S::K, S::V})) {
    std::vector<std::shared_ptr<Linear>> saved = bw.linear;
    for (S s : {S::Gate, S::Up, S::Down})
      bw.linear[int(s)] = std::make_shared<ZeroLinear>(saved[int(s)]->out_features(),
                                                       saved[int(s)]->in_features());
    std::vector<float> ref, cur;
    try {
      job.run(nullptr, &ref, nullptr, 0, m);
      auto loss = [&](const std::vector<float>& sc) {
        for (S s : {S::Q, S::K, S::V}) {
          if (!quantized(s)) continue;
          const auto* d = static_cast<const DenseLinear*>(saved[int(s)].get());
          bw.linear[int(s)] = std::make_shared<DenseLinear>(
              awq_fake_quant_scaled(d->weight().data(), d->out_features(), d->in_features(), sc,
                                    o_.group, o_.grid),
              d->out_features(), d->in_features(), d->bias());
        }
        job.run(nullptr, &cur, nullptr, 0, m);
        return mse(cur, ref);
      };
      const auto wm = wmean({S::Q, S::K, S::V});
      maps["qkv"] = search(st.at(int(S::Q)).absmean.mean(), wm, loss);
    } catch (...) {
      bw.linear = saved;
      throw;
    }
    bw.linear = saved;
    fold.qkv = maps["qkv"].scales;
  }
  // ---- 2b. v -> o (no GQA) ----
  if (quantized(S::O) && awq_can_fold_vo(cfg)) {
    maps["vo"] = on_gpu() ? hessian_search_gpu({S::O}, H.at(int(S::O)),
                                               st.at(int(S::O)).absmean.mean(), wmean({S::O}))
                          : search(st.at(int(S::O)).absmean.mean(), wmean({S::O}),
                                   hessian_loss(S::O, H.at(int(S::O))));
    fold.vo = maps["vo"].scales;
  }
  // ---- 2c. post_attention_layernorm -> gate/up (MLP output) ----
  if (any({S::Gate, S::Up}) && !o_.module_loss && on_gpu()) {
    maps["mlp"] = hessian_search_gpu({S::Gate, S::Up}, H.at(int(S::Gate)),
                                     st.at(int(S::Gate)).absmean.mean(), wmean({S::Gate, S::Up}));
    fold.mlp = maps["mlp"].scales;
  } else if (any({S::Gate, S::Up}) && !o_.module_loss) {
    maps["mlp"] = search(st.at(int(S::Gate)).absmean.mean(), wmean({S::Gate, S::Up}),
                         linear_sum_loss({S::Gate, S::Up}, H.at(int(S::Gate))));
    fold.mlp = maps["mlp"].scales;
  } else if (any({S::Gate, S::Up}) && on_gpu()) {
    const int64_t rows = int64_t(mlp_x.size()) / job.hidden();
    maps["mlp"] = search_batched(
        st.at(int(S::Gate)).absmean.mean(), wmean({S::Gate, S::Up}),
        [&](const std::vector<std::vector<float>>& c) {
          return mlp_losses_gpu(mlp_x, rows, job.dense(S::Gate), job.dense(S::Up),
                                job.dense(S::Down), quantized(S::Gate), quantized(S::Up),
                                o_.group, o_.grid, c);
        });
    fold.mlp = maps["mlp"].scales;
  } else if (any({S::Gate, S::Up})) {
    const int64_t rows = int64_t(mlp_x.size()) / job.hidden();
    const DenseLinear& g = job.dense(S::Gate);
    const DenseLinear& u = job.dense(S::Up);
    const DenseLinear& dn = job.dense(S::Down);
    const int64_t F = g.out_features(), Hd = g.in_features();
    std::vector<float> a(size_t(rows * F)), b(size_t(rows * F));
    auto mlp = [&](const float* wg, const float* wu, std::vector<float>& y) {
      gemm_xwt(mlp_x.data(), rows, Hd, wg, F, a.data(), /*allow_tf32=*/false);
      gemm_xwt(mlp_x.data(), rows, Hd, wu, F, b.data(), false);
      cpu::silu_mul(a.data(), b.data(), a.data(), rows * F);
      y.resize(size_t(rows * dn.out_features()));
      gemm_xwt(a.data(), rows, F, dn.weight().data(), dn.out_features(), y.data(), false);
    };
    std::vector<float> ref, cur;
    mlp(g.weight().data(), u.weight().data(), ref);
    auto loss = [&](const std::vector<float>& sc) {
      const std::vector<float> gq = quantized(S::Gate) ? fq(S::Gate, sc) : g.weight();
      const std::vector<float> uq = quantized(S::Up) ? fq(S::Up, sc) : u.weight();
      mlp(gq.data(), uq.data(), cur);
      return mse(cur, ref);
    };
    maps["mlp"] = search(st.at(int(S::Gate)).absmean.mean(), wmean({S::Gate, S::Up}), loss);
    fold.mlp = maps["mlp"].scales;
  }
  // ---- 2d. up -> down ----
  if (quantized(S::Down)) {
    maps["down"] = on_gpu() ? hessian_search_gpu({S::Down}, H.at(int(S::Down)),
                                                 st.at(int(S::Down)).absmean.mean(),
                                                 wmean({S::Down}))
                            : search(st.at(int(S::Down)).absmean.mean(), wmean({S::Down}),
                                     hessian_loss(S::Down, H.at(int(S::Down))));
    fold.down = maps["down"].scales;
  }

  // ---- 3. fold ----
  apply_awq_fold(bw, fold, cfg);
  nlohmann::json& al = alphas_[std::to_string(job.layer)];
  for (const auto& [k, v] : maps) al[k] = v.alpha;

  auto mapping_of = [](S s) -> const char* {
    switch (s) {
      case S::Q: case S::K: case S::V: return "qkv";
      case S::O: return "vo";
      case S::Gate: case S::Up: return "mlp";
      case S::Down: return "down";
    }
    return "";
  };
  auto key_of = [](S s) {
    return (s == S::K || s == S::V) ? S::Q : (s == S::Up ? S::Gate : s);
  };
  // RTN's error for the report (original weights, original Hessians).
  std::map<int, double> rtn_err;
  for (auto& [s, w] : orig) {
    const DenseLinear& d = job.dense(S(s));
    QuantGrid g = o_.grid;
    const auto rq = quantize_grid_rtn(w.data(), d.out_features(), d.in_features(), o_.group, g);
    rtn_err[s] = relative_output_errors(w.data(), {rq.dequantize().data()}, d.out_features(),
                                        d.in_features(), H.at(int(key_of(S(s)))).data())[0];
  }

  // ---- 4. quantize ----
  if (o_.gptq) {
    gptq_quantize_block(job, o_.gptq_opts, &gstats_);
    for (auto& [s, e] : rtn_err) {
      nlohmann::json& r = job.report[size_t(s)];
      r["rel_error_rtn"] = e;
      auto it = maps.find(mapping_of(S(s)));
      r["awq_alpha"] = it == maps.end() ? -1.0 : it->second.alpha;
      ++linears_;
      sum_rel_ += r.value("rel_error", 0.0);
      sum_rel_rtn_ += e;
    }
    return;
  }
  std::map<int, std::vector<double>> Hs;  // Hessians of the scaled inputs
  Hs[int(S::Q)] = fold.qkv.empty() ? H.at(int(S::Q)) : scale_hessian(H.at(int(S::Q)), fold.qkv);
  Hs[int(S::O)] = fold.vo.empty() ? H.at(int(S::O)) : scale_hessian(H.at(int(S::O)), fold.vo);
  Hs[int(S::Gate)] =
      fold.mlp.empty() ? H.at(int(S::Gate)) : scale_hessian(H.at(int(S::Gate)), fold.mlp);
  Hs[int(S::Down)] =
      fold.down.empty() ? H.at(int(S::Down)) : scale_hessian(H.at(int(S::Down)), fold.down);
  for (int si = 0; si < job.num_modules(); ++si) {
    const S s = S(si);
    if (!quantized(s)) continue;
    const DenseLinear& d = job.dense(s);
    const std::vector<double>& h = Hs.at(int(key_of(s)));
    const bool clip = s != S::Q && s != S::K;
    QuantizedWeight qw = awq_clip_quantize(d.weight().data(), d.out_features(), d.in_features(),
                                           o_.group, o_.grid, h.data(),
                                           clip ? o_.clip_steps : 0, o_.max_shrink);
    const double rel = relative_output_errors(d.weight().data(), {qw.dequantize().data()},
                                              d.out_features(), d.in_features(), h.data())[0];
    auto it = maps.find(mapping_of(s));
    nlohmann::json rep = {{"rel_error", rel},
                          {"rel_error_rtn", rtn_err[si]},
                          {"awq_alpha", it == maps.end() ? -1.0 : it->second.alpha},
                          {"clip_search", clip && o_.clip_steps > 0}};
    ++linears_;
    sum_rel_ += rel;
    sum_rel_rtn_ += rtn_err[si];
    job.commit(s, std::move(qw), rep);
  }
}

// A mixture-of-experts block (quant/awq.h "Mixture of experts"): the scales of q/k/v and v -> o
// as in a dense block; ONE post_attention_layernorm scale shared by the router and every expert
// (searched on the MoE output with routing fixed by the unquantized router); each expert's own
// up -> down scale from its routed tokens (starved experts: every token, BlockJob::for_groups).
void AwqQuantizer::awq_moe_block(BlockJob& job) {
  const ModelConfig& cfg = job.config();
  const BlockLayout& L = job.layout();
  BlockWeights& bw = job.weights;
  using Src = InputGroup::Source;
  auto quantized = [&](int s) { return !job.ignored(S(s)); };
  for (int s = 0; s < L.size(); ++s)
    if (quantized(s)) job.check_finite(S(s));
  const int ng = int(L.groups.size());
  const int router = L.find(ModuleRole::Router), g_all = L.modules[size_t(router)].group;
  const int g_qkv = L.modules[0].group, g_o = L.modules[size_t(int(S::O))].group;

  // ---- 1. statistics of every input group ----
  const int m = int(std::clamp<int64_t>((o_.loss_tokens + job.seq - 1) / job.seq, 1,
                                        job.n_samples));
  const int64_t stride = std::max<int64_t>(1, job.rows() / o_.loss_tokens);
  int64_t seen_rows = 0;
  std::vector<std::unique_ptr<InputStats>> st(static_cast<size_t>(ng));
  auto fresh = [&](int g) {
    st[size_t(g)] = std::make_unique<InputStats>(L.modules[size_t(L.groups[size_t(g)].members[0])].in);
  };
  std::vector<int> groups;
  for (int g = 0; g < ng; ++g) fresh(g), groups.push_back(g);
  std::vector<float> mlp_x;  // a row subsample of the MLP input (every token)
  job.for_groups(
      groups,
      [&](int g, const backend::MatView& v) {
        st[size_t(g)]->absmean.add(v);
        st[size_t(g)]->hessian.add(v);
        if (g != g_all || !o_.module_loss) return;
        const int64_t rows = v.rows, cols = v.cols;
        const int64_t first = (stride - seen_rows % stride) % stride;
        if (v.on_device()) {
          backend::dev::gather_rows(v.data, rows, cols, first, stride, &mlp_x);
        } else {
          for (int64_t r = first; r < rows; r += stride)
            mlp_x.insert(mlp_x.end(), v.data + r * cols, v.data + (r + 1) * cols);
        }
        seen_rows += rows;
      },
      fresh);
  std::vector<std::vector<double>> H(static_cast<size_t>(ng));
  for (int g = 0; g < ng; ++g) H[size_t(g)] = st[size_t(g)]->hessian.hessian();
  std::map<int, std::vector<float>> orig;
  for (int s = 0; s < L.size(); ++s)
    if (quantized(s)) orig[s] = job.dense(S(s)).weight();

  auto fq = [&](int s, const std::vector<float>& sc) {
    const DenseLinear& d = job.dense(S(s));
    return awq_fake_quant_scaled(d.weight().data(), d.out_features(), d.in_features(), sc,
                                 o_.group, o_.grid);
  };
  auto wmean = [&](const std::vector<int>& l) {
    std::vector<const std::vector<float>*> ws;
    for (int s : l) ws.push_back(&job.dense(S(s)).weight());
    return awq_weight_mean(ws, job.dense(S(l.front())).in_features(), o_.group);
  };
  auto search = [&](const std::vector<float>& xm, const std::vector<float>& wm,
                    const std::function<double(const std::vector<float>&)>& loss) {
    AwqSearchResult r = awq_grid_search(xm, wm, o_.grid_points, o_.duo, loss);
    MappingResult mr;
    mr.scales = std::move(r.scales);
    mr.alpha = r.alpha;
    return mr;
  };
  auto hessian_loss = [&](int s, const std::vector<double>& h) {
    return [&, s, hp = h.data()](const std::vector<float>& sc) {
      const DenseLinear& d = job.dense(S(s));
      std::vector<float> dq = fq(s, sc);
      for (size_t i = 0; i < dq.size(); ++i) dq[i] -= d.weight()[i];
      return hessian_quad_trace(dq.data(), d.out_features(), d.in_features(), hp);
    };
  };
  auto sum_loss = [&](const std::vector<int>& mods) {
    std::vector<std::function<double(const std::vector<float>&)>> parts;
    for (int s : mods) parts.push_back(hessian_loss(s, H[size_t(L.modules[size_t(s)].group)]));
    return [parts](const std::vector<float>& sc) {
      double t = 0;
      for (const auto& f : parts) t += f(sc);
      return t;
    };
  };
  AwqFold fold;
  std::map<std::string, MappingResult> maps;

  // ---- 2a. input_layernorm -> q/k/v ----
  std::vector<int> qkv;
  for (int s : L.groups[size_t(g_qkv)].members)
    if (quantized(s)) qkv.push_back(s);
  if (!qkv.empty() && !o_.module_loss) {
    maps["qkv"] = search(st[size_t(g_qkv)]->absmean.mean(), wmean(qkv), sum_loss(qkv));
  } else if (!qkv.empty()) {
    // Attention output with the whole MLP (router, experts) disabled.
    std::vector<std::shared_ptr<Linear>> saved = bw.linear;
    for (int s = 0; s < L.size(); ++s)
      if (L.groups[size_t(L.modules[size_t(s)].group)].stage >= 2)
        bw.linear[size_t(s)] = std::make_shared<ZeroLinear>(L.modules[size_t(s)].out, L.modules[size_t(s)].in);
    std::vector<float> ref, cur;
    try {
      job.run(nullptr, &ref, nullptr, 0, m);
      auto loss = [&](const std::vector<float>& sc) {
        for (int s : qkv) {
          const auto* d = static_cast<const DenseLinear*>(saved[size_t(s)].get());
          bw.linear[size_t(s)] = std::make_shared<DenseLinear>(
              awq_fake_quant_scaled(d->weight().data(), d->out_features(), d->in_features(), sc,
                                    o_.group, o_.grid),
              d->out_features(), d->in_features(), d->bias());
        }
        job.run(nullptr, &cur, nullptr, 0, m);
        return mse(cur, ref);
      };
      maps["qkv"] = search(st[size_t(g_qkv)]->absmean.mean(), wmean(qkv), loss);
    } catch (...) {
      bw.linear = saved;
      throw;
    }
    bw.linear = saved;
  }
  if (maps.count("qkv")) fold.qkv = maps["qkv"].scales;
  // ---- 2b. v -> o (no GQA) ----
  if (quantized(int(S::O)) && awq_can_fold_vo(cfg)) {
    maps["vo"] = search(st[size_t(g_o)]->absmean.mean(), wmean({int(S::O)}),
                        hessian_loss(int(S::O), H[size_t(g_o)]));
    fold.vo = maps["vo"].scales;
  }
  // ---- 2c. post_attention_layernorm -> router + every expert's gate/up (one scale) ----
  std::vector<int> mlp_in;  // quantized readers of the MLP input
  for (const InputGroup& g : L.groups)
    if (g.source == Src::PostNorm)
      for (int s : g.members)
        if (quantized(s)) mlp_in.push_back(s);
  if (!mlp_in.empty() && !o_.module_loss) {
    maps["mlp"] = search(st[size_t(g_all)]->absmean.mean(), wmean(mlp_in), sum_loss(mlp_in));
  } else if (!mlp_in.empty()) {
    // MoE output on the subsample, routing fixed by the (unquantized) router.
    const int64_t rows = int64_t(mlp_x.size()) / job.hidden(), Hd = job.hidden();
    std::vector<float> logits(static_cast<size_t>(rows * L.num_experts));
    bw.linear[size_t(router)]->forward(mlp_x.data(), rows, logits.data());
    std::vector<std::vector<int64_t>> tok(static_cast<size_t>(L.num_experts));
    std::vector<std::vector<float>> wt(static_cast<size_t>(L.num_experts));
    for (int64_t r = 0; r < rows; ++r) {
      const float* l = logits.data() + r * L.num_experts;
      std::vector<double> p(l, l + L.num_experts);
      const double mx = *std::max_element(p.begin(), p.end());
      double sum = 0;
      for (double& v : p) sum += (v = std::exp(v - mx));
      std::vector<int> order(static_cast<size_t>(L.num_experts));
      for (int e = 0; e < L.num_experts; ++e) order[size_t(e)] = e;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[size_t(a)] > p[size_t(b)]; });
      double top = 0;
      for (int k = 0; k < L.top_k; ++k) top += p[size_t(order[size_t(k)])];
      for (int k = 0; k < L.top_k; ++k) {
        const int e = order[size_t(k)];
        tok[size_t(e)].push_back(r);
        wt[size_t(e)].push_back(float(L.norm_topk ? p[size_t(e)] / top : p[size_t(e)] / sum));
      }
    }
    std::vector<int> mlps;  // expert keys with gate/up/down (routed, then the shared expert)
    for (int e = 0; e < L.num_experts; ++e) mlps.push_back(e);
    const int sg = L.find(ModuleRole::SharedGate, kSharedExpert);
    if (sg >= 0) mlps.push_back(kSharedExpert);
    std::vector<float> sgate(size_t(rows), 1.0f);
    if (sg >= 0) {
      bw.linear[size_t(sg)]->forward(mlp_x.data(), rows, sgate.data());
      for (float& v : sgate) v = 1.0f / (1.0f + std::exp(-v));
    }
    auto moe_out = [&](const std::vector<float>* sc, std::vector<float>& y) {
      y.assign(size_t(rows * Hd), 0.0f);
      std::vector<float> xe, a, b, ye;
      for (int e : mlps) {
        const bool shared = e == kSharedExpert;
        const int64_t n = shared ? rows : int64_t(tok[size_t(e)].size());
        if (n == 0) continue;
        const int gi = L.find(ModuleRole::Gate, e), ui = L.find(ModuleRole::Up, e),
                  di = L.find(ModuleRole::Down, e);
        xe.resize(size_t(n * Hd));
        for (int64_t j = 0; j < n; ++j) {
          const int64_t r = shared ? j : tok[size_t(e)][size_t(j)];
          std::copy_n(mlp_x.data() + r * Hd, Hd, xe.data() + j * Hd);
        }
        const DenseLinear& dg = job.dense(S(gi));
        const DenseLinear& du = job.dense(S(ui));
        const DenseLinear& dd = job.dense(S(di));
        const int64_t F = dg.out_features();
        const std::vector<float> wg = sc && quantized(gi) ? fq(gi, *sc) : dg.weight();
        const std::vector<float> wu = sc && quantized(ui) ? fq(ui, *sc) : du.weight();
        a.resize(size_t(n * F));
        b.resize(size_t(n * F));
        ye.resize(size_t(n * Hd));
        gemm_xwt(xe.data(), n, Hd, wg.data(), F, a.data(), /*allow_tf32=*/false);
        gemm_xwt(xe.data(), n, Hd, wu.data(), F, b.data(), false);
        cpu::silu_mul(a.data(), b.data(), a.data(), n * F);
        gemm_xwt(a.data(), n, F, dd.weight().data(), Hd, ye.data(), false);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t r = shared ? j : tok[size_t(e)][size_t(j)];
          const float c = shared ? sgate[size_t(r)] : wt[size_t(e)][size_t(j)];
          for (int64_t i = 0; i < Hd; ++i) y[size_t(r * Hd + i)] += c * ye[size_t(j * Hd + i)];
        }
      }
    };
    std::vector<float> ref, cur;
    moe_out(nullptr, ref);
    auto loss = [&](const std::vector<float>& sc) {
      moe_out(&sc, cur);
      return mse(cur, ref);
    };
    maps["mlp"] = search(st[size_t(g_all)]->absmean.mean(), wmean(mlp_in), loss);
  }
  if (maps.count("mlp")) fold.mlp = maps["mlp"].scales;
  // ---- 2d. each expert's up -> down ----
  std::vector<int> keys;
  for (int e = 0; e < L.num_experts; ++e) keys.push_back(e);
  if (L.find(ModuleRole::Down, kSharedExpert) >= 0) keys.push_back(kSharedExpert);
  for (int e : keys) {
    const int di = L.find(ModuleRole::Down, e);
    if (!quantized(di)) continue;
    const int g = L.modules[size_t(di)].group;
    const std::string key = e == kSharedExpert ? "down.shared" : cat("down.", e);
    maps[key] = search(st[size_t(g)]->absmean.mean(), wmean({di}), hessian_loss(di, H[size_t(g)]));
    fold.expert_down[e] = maps[key].scales;
  }

  // ---- 3. fold ----
  apply_awq_fold(bw, fold, cfg, &L);
  nlohmann::json& al = alphas_[std::to_string(job.layer)];
  for (const auto& [k, v] : maps) al[k] = v.alpha;

  // The scale in front of each module's input (empty: none) and its mapping name.
  auto scale_of = [&](int s) -> std::pair<const std::vector<float>*, std::string> {
    const BlockModule& bm = L.modules[size_t(s)];
    switch (L.groups[size_t(bm.group)].source) {
      case Src::InputNorm: return {&fold.qkv, "qkv"};
      case Src::Attention: return {&fold.vo, "vo"};
      case Src::PostNorm: return {&fold.mlp, "mlp"};
      case Src::Intermediate: {
        auto it = fold.expert_down.find(bm.expert);
        const std::string k = bm.expert == kSharedExpert ? "down.shared" : cat("down.", bm.expert);
        return {it == fold.expert_down.end() ? nullptr : &it->second, k};
      }
    }
    return {nullptr, ""};
  };
  std::map<int, double> rtn_err;
  for (auto& [s, w] : orig) {
    const BlockModule& bm = L.modules[size_t(s)];
    const auto rq = quantize_grid_rtn(w.data(), bm.out, bm.in, o_.group, o_.grid);
    rtn_err[s] = relative_output_error(w.data(), rq.dequantize().data(), bm.out, bm.in,
                                       H[size_t(bm.group)].data());
  }

  // ---- 4. quantize ----
  if (o_.gptq) {
    gptq_quantize_block(job, o_.gptq_opts, &gstats_);
    for (auto& [s, e] : rtn_err) {
      nlohmann::json& r = job.report[size_t(s)];
      r["rel_error_rtn"] = e;
      auto it = maps.find(scale_of(s).second);
      r["awq_alpha"] = it == maps.end() ? -1.0 : it->second.alpha;
      ++linears_;
      sum_rel_ += r.value("rel_error", 0.0);
      sum_rel_rtn_ += e;
    }
    return;
  }
  for (int s = 0; s < L.size(); ++s) {
    if (!quantized(s)) continue;
    const DenseLinear& d = job.dense(S(s));
    const auto [sc, name] = scale_of(s);
    const std::vector<double>& h0 = H[size_t(L.modules[size_t(s)].group)];
    const std::vector<double> h = sc && !sc->empty() ? scale_hessian(h0, *sc) : h0;
    const bool clip = s != int(S::Q) && s != int(S::K);
    QuantizedWeight qw = awq_clip_quantize(d.weight().data(), d.out_features(), d.in_features(),
                                           o_.group, o_.grid, h.data(),
                                           clip ? o_.clip_steps : 0, o_.max_shrink);
    const double rel = relative_output_error(d.weight().data(), qw.dequantize().data(),
                                             d.out_features(), d.in_features(), h.data());
    auto it = maps.find(name);
    nlohmann::json rep = {{"rel_error", rel},
                          {"rel_error_rtn", rtn_err[s]},
                          {"awq_alpha", it == maps.end() ? -1.0 : it->second.alpha},
                          {"clip_search", clip && o_.clip_steps > 0}};
    ++linears_;
    sum_rel_ += rel;
    sum_rel_rtn_ += rtn_err[s];
    job.commit(S(s), std::move(qw), rep);
  }
}

}  // namespace

std::string awq_default_layout(const QuantSpec& spec) {
  return first_layout_holding({"awq", "compressed-tensors"}, spec);
}

std::unique_ptr<BlockQuantizer> make_awq_quantizer(const QuantSpec& spec) {
  return std::make_unique<AwqQuantizer>(spec);
}

}  // namespace llmc
