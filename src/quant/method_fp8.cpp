// quant/method_fp8.cpp — fp8_static and fp8_dynamic (docs/methods.md).
//
// Per group of linears sharing one input (q/k/v, o, gate/up, down; true-sequential order, so
// each group's inputs come from the block with the earlier groups already quantized):
//  1. one streaming pass over the group's calibration inputs: abs-max, a strided subsample of
//     rows (search_rows) and, for the GPTQ weight solvers, H = Σ x xᵀ (fp64);
//  2. weights: fp8_static — one per-tensor scale for the group (absmax / 448 over its linears:
//     vLLM fuses q/k/v and gate/up and would otherwise requantize to the largest scale);
//     fp8_dynamic — one scale per output channel. Codes by GPTQ's error feedback on the fp8
//     grid ("gptq"), the same towards the activation-aware target ("gptq_aa"), or plain
//     round-to-nearest ("rtn", which for fp8_dynamic needs no calibration at all);
//  3. fp8_static input scale: absmax / 448 of the calibration inputs, optionally refined by a
//     search over clipping ratios minimizing Σ‖Q_s(X) Wqᵀ − X Wᵀ‖² on the subsample.
#include <cblas.h>
#include <lapack.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "backend/cpu/kernels.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "quant/hessian.h"
#include "quant/gptq.h"
#include "quant/method_simple.h"
#include "quant/rtn.h"

namespace llmc {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}


// Activation-aware target: with X̃ = X + E (E the input rounding error, independent across
// channels with per-channel energy d_i), the least-squares weights for ‖X̃ W̃ᵀ − X Wᵀ‖² are
// W̃ᵀ = (H + D)⁻¹ H Wᵀ (H = XᵀX, D = diag(d)). Returns false when H + D is not factorizable.
bool wiener_weights(const float* w, int64_t out, int64_t n, const std::vector<double>& H,
                    const std::vector<double>& d, std::vector<float>* wt) {
  // With --device cuda: on the GPU (cuSOLVER, the same fp64 steps).
  if (backend::device() == backend::Device::CUDA) {
    wt->resize(size_t(out * n));
    return backend::cuda_wiener_solve(H.data(), d.data(), w, out, n, wt->data());
  }
  std::vector<double> A = H;
  for (int64_t i = 0; i < n; ++i) A[size_t(i * n + i)] += d[size_t(i)];
  const lapack_int ni = lapack_int(n);
  lapack_int info = 0;
  const char lo = 'L';
  LAPACK_dpotrf(&lo, &ni, A.data(), &ni, &info);
  if (info != 0) return false;
  std::vector<double> wd(w, w + out * n), B(size_t(n * out));
  // B (column-major n x out) = H Wᵀ: column o is H w_o.
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, int(n), int(out), int(n), 1.0, H.data(),
              int(n), wd.data(), int(n), 0.0, B.data(), int(n));
  const lapack_int no = lapack_int(out);
  LAPACK_dpotrs(&lo, &ni, &no, A.data(), &ni, B.data(), &ni, &info);
  if (info != 0) return false;
  wt->assign(B.begin(), B.end());  // column o of B is row o of W̃
  return true;
}

// The input-scale search's loss ‖Q_s(X) Wqᵀ − X Wᵀ‖² on the subsample X [n, in], for the
// group's concatenated original weights W and quantized weights Wq [out, in]: on the GPU with
// --device cuda (X, W, Wq resident there for the whole search; equal to the CPU's up to fp32
// summation order), else on the CPU.
class InputScaleSearch {
 public:
  InputScaleSearch(const std::vector<float>& x, int64_t n, int64_t in, const std::vector<float>& w,
                   const std::vector<float>& wq, int64_t out)
      : x_(x), wq_(wq), n_(n), in_(in), out_(out),
        gpu_(backend::device() == backend::Device::CUDA) {
    if (gpu_) {
      dx_ = upload(x), dw_ = upload(wq);
      dref_ = backend::DeviceArray(n * out);
      dy_ = backend::DeviceArray(n * out);
      dxq_ = backend::DeviceArray(n * in);
      backend::DeviceArray dwo = upload(w);
      backend::dev::gemm_xwt(dx_.data(), n, in, dwo.data(), out, dref_.data(), nullptr,
                             /*allow_tf32=*/false);
    } else {
      ref_.resize(size_t(n * out));
      y_.resize(ref_.size());
      gemm_xwt(x.data(), n, in, w.data(), out, ref_.data());
    }
  }
  double loss(float scale) const {
    if (gpu_) {
      backend::dev::copy(dxq_.data(), dx_.data(), n_ * in_);
      backend::dev::quantize_activations(ActQuant::FP8StaticTensor, scale, dxq_.data(), n_, in_);
      backend::dev::gemm_xwt(dxq_.data(), n_, in_, dw_.data(), out_, dy_.data(), nullptr, false);
      double e = 0;
      backend::dev::seg_sums(backend::dev::SegOp::SqDiff, dy_.data(), 0, dref_.data(), 0,
                             n_ * out_, 1, &e);
      return e;
    }
    std::vector<float> xq = x_;
    quantize_activations(ActQuant::FP8StaticTensor, scale, xq.data(), n_, in_);
    gemm_xwt(xq.data(), n_, in_, wq_.data(), out_, y_.data());
    double e = 0;
    for (size_t i = 0; i < y_.size(); ++i) {
      const double d = double(y_[i]) - ref_[i];
      e += d * d;
    }
    return e;
  }
  // Σ (X Wᵀ)²: the denominator of the relative errors.
  double ref_energy() const {
    double e = 0;
    if (gpu_) {
      backend::dev::seg_sums(backend::dev::SegOp::SqDiff, dref_.data(), 0, nullptr, 0, n_ * out_,
                             1, &e);
    } else {
      for (float v : ref_) e += double(v) * v;
    }
    return e;
  }

 private:
  static backend::DeviceArray upload(const std::vector<float>& v) {
    backend::DeviceArray d(int64_t(v.size()));
    d.upload(v.data(), int64_t(v.size()));
    return d;
  }
  const std::vector<float>& x_;
  const std::vector<float>& wq_;
  int64_t n_, in_, out_;
  bool gpu_;
  std::vector<float> ref_;
  mutable std::vector<float> y_;
  backend::DeviceArray dx_, dw_, dref_, dy_, dxq_;
};

class Fp8Quantizer : public BlockQuantizer {
 public:
  Fp8Quantizer(const QuantSpec& spec, bool is_static)
      : static_(is_static), true_sequential_(spec.true_sequential), damp_(spec.damp) {
    // Values checked against the row's opts by resolve_spec (quant/method.h); defaults there.
    check_method_options(find_method(spec.method), spec.extra);
    report_errors_ = method_opt<bool>(spec, "report_errors");
    search_ = static_ && method_opt<bool>(spec, "search");
    max_rows_ = method_opt<int64_t>(spec, "search_rows");
    const std::string wm = method_opt<std::string>(spec, "weights");
    gptq_ = wm != "rtn";
    aa_ = wm == "gptq_aa";
    act_ = static_ ? ActQuant::FP8StaticTensor : ActQuant::FP8DynamicToken;
  }

  void quantize_block(BlockJob& job) override {
    // Input groups in layout order (q/k/v, o, MLP inputs (per expert), down (per expert)).
    // True-sequential: each stage's inputs are collected with the earlier stages quantized (one
    // partial block run per stage); otherwise one run collects every group's inputs from the
    // unquantized block.
    const BlockLayout& L = job.layout();
    std::vector<int> groups;
    for (int g = 0; g < int(L.groups.size()); ++g)
      if (!job.active(L.groups[size_t(g)]).empty()) groups.push_back(g);
    if (true_sequential_) {
      // One partial block run per true-sequential stage (q/k/v, o, MLP inputs, down): the groups
      // of one stage (e.g. every expert's gate/up) do not feed each other, so their inputs are
      // the same whether collected together or one group at a time.
      for (int st = 0; st < BlockLayout::kStages; ++st) {
        std::vector<int> stage;
        for (int g : groups)
          if (L.groups[size_t(g)].stage == st) stage.push_back(g);
        if (stage.empty()) continue;
        std::map<int, Collected> c = collect(job, stage);
        for (int g : stage) finish_group(job, job.active(L.groups[size_t(g)]), c.at(g));
      }
    } else {
      std::map<int, Collected> c = collect(job, groups);
      for (int g : groups) finish_group(job, job.active(L.groups[size_t(g)]), c.at(g));
    }
  }

 private:
  // absmax / 448 of the group's original weights (the RTN reference scale).
  static float wscale(const BlockJob& job, const std::vector<LinearSlot>& slots) {
    float m = 0.0f;
    for (LinearSlot s : slots) {
      const std::vector<float>& w = job.dense(s).weight();
      m = std::max(m, abs_max(w.data(), w.size()));
    }
    return m > 0.0f ? m / 448.0f : 1.0f;
  }
  // Weight scale(s) of `w` [out, in]: the group's shared per-tensor scale, or per row.
  QuantizedWeight rtn(const float* w, int64_t out, int64_t in, float tensor_scale) const {
    return quantize_fp8_rtn(w, out, in, static_ ? 0 : -1, static_ ? tensor_scale : 0.0f);
  }

  // What one streaming pass gathers for a group: abs-max, a strided subsample of rows, Σ x xᵀ.
  struct Collected {
    float amax = 0.0f;
    std::vector<float> sub;
    std::unique_ptr<HessianAccumulator> gram;  // quant/hessian.h
    int64_t seen = 0;
    double seconds = 0;
  };

  // 1. One pass over the inputs of `groups` (one partial block run for all of them).
  std::map<int, Collected> collect(BlockJob& job, const std::vector<int>& groups) {
    const BlockLayout& L = job.layout();
    std::map<int, Collected> c;
    const bool calibrated = static_ || gptq_;
    for (int g : groups) {
      const std::vector<LinearSlot> slots = job.active(L.groups[size_t(g)]);
      for (LinearSlot s : slots) job.check_finite(s);
      Collected& k = c[g];
      if (gptq_) k.gram = std::make_unique<HessianAccumulator>(job.dense(slots[0]).in_features());
    }
    if (!calibrated) return c;
    const auto t_collect = std::chrono::steady_clock::now();
    const int64_t total = job.rows();
    const int64_t stride = std::max<int64_t>(1, (total + max_rows_ - 1) / max_rows_);
    job.for_groups(groups, [&](int g, const backend::MatView& v) {
      Collected& k = c.at(g);
      const int64_t rows = v.rows, cols = v.cols;
      const int64_t first = (stride - k.seen % stride) % stride;  // rows with seen % stride == 0
      if (v.on_device()) {
        k.amax = std::max(k.amax, backend::dev::abs_max(v.data, rows * cols));
        backend::dev::gather_rows(v.data, rows, cols, first, stride, &k.sub);
      } else {
        const float* x = v.data;
        for (int64_t i = 0; i < rows * cols; ++i) k.amax = std::max(k.amax, std::fabs(x[i]));
        for (int64_t r = first; r < rows; r += stride)
          k.sub.insert(k.sub.end(), x + r * cols, x + (r + 1) * cols);
      }
      k.seen += rows;
      if (k.gram) k.gram->add(v);
    }, [&](int g) {  // a starved expert: its statistics again, from every token
      Collected& k = c.at(g);
      k.amax = 0.0f;
      k.sub.clear();
      k.seen = 0;
      if (k.gram) k.gram = std::make_unique<HessianAccumulator>(k.gram->cols());
    });
    const double sec = seconds_since(t_collect) / double(std::max<size_t>(1, groups.size()));
    for (int g : groups) {
      c.at(g).seconds = sec;
      if (!std::isfinite(c.at(g).amax))
        fail(job.module_name(job.active(L.groups[size_t(g)])[0]), ": non-finite calibration activations");
    }
    return c;
  }

  void finish_group(BlockJob& job, const std::vector<LinearSlot>& slots, Collected& col) {
    const int64_t in = job.dense(slots[0]).in_features();
    const float amax = col.amax;
    const std::vector<float>& sub = col.sub;
    std::unique_ptr<HessianAccumulator>& gram = col.gram;
    const float base_scale = amax > 0.0f ? amax / 448.0f : 1.0f;
    const int64_t n = int64_t(sub.size()) / in;
    const double collect_s = col.seconds;

    // 2. Weights (targets: W, or the activation-aware W̃).
    const auto t_weights = std::chrono::steady_clock::now();
    std::vector<double> H;
    if (gram) H = gram->sum();
    const double hsum_s = seconds_since(t_weights);
    // The group's linears share H: their rows are stacked into one target [out_total, in],
    // solved once (one factorization of H + D, one GPTQ solve) and split again.
    std::vector<int64_t> row0(slots.size() + 1, 0);
    for (size_t k = 0; k < slots.size(); ++k)
      row0[k + 1] = row0[k] + job.dense(slots[k]).out_features();
    const int64_t out_total = row0.back();
    std::vector<float> wcat(size_t(out_total * in));
    for (size_t k = 0; k < slots.size(); ++k)
      std::copy(job.dense(slots[k]).weight().begin(), job.dense(slots[k]).weight().end(),
                wcat.begin() + row0[k] * in);
    std::vector<float> target;  // empty: the original weights (wcat)
    std::vector<double> d;      // the input rounding energy added to diag(H) for the solve
    if (aa_) {
      // Input rounding energy per channel (at the abs-max static scale, or per token), from
      // the subsample, scaled to the row count of H.
      std::vector<float> xq = sub;
      quantize_activations(act_, base_scale, xq.data(), n, in);
      d.assign(size_t(in), 0.0);
      parallel_for(0, size_t(in), 64, [&](size_t c0, size_t c1) {
        for (int64_t r = 0; r < n; ++r)
          for (size_t i = c0; i < c1; ++i) {
            const double e = double(xq[size_t(r * in) + i]) - sub[size_t(r * in) + i];
            d[i] += e * e;
          }
      });
      const double f = n > 0 ? double(gram->count()) / double(n) : 0.0;
      for (auto& v : d) v *= f;
      std::vector<float> t;
      if (wiener_weights(wcat.data(), out_total, in, H, d, &t)) target = std::move(t);
    }
    const double target_s = seconds_since(t_weights) - hsum_s;
    const auto t_gptq = std::chrono::steady_clock::now();
    const std::vector<float>& tw = target.empty() ? wcat : target;
    const float tmax = abs_max(tw.data(), tw.size());
    const float tscale = tmax > 0.0f ? tmax / 448.0f : 1.0f;
    QuantizedWeight qcat = rtn(tw.data(), out_total, in, tscale);
    nlohmann::json r = {{"weights", "rtn"}};
    std::vector<double> err, err_rtn;
    if (gram) {
      // quant/gptq.h on the fp8 grid with the RTN scales fixed; one lazy batch spanning all
      // columns (rank-1 updates only, the rounding order fp8 GPTQ has always had). The solve
      // sees H + D; the report the undamped H, the original weights and their plain rounding
      // (the RTN reference scale), per linear.
      GptqOptions o;
      o.grid = fp8_e4m3_grid();
      o.group = qcat.group;
      o.fixed_scales = qcat.scales;
      o.damp = damp_;
      o.act_order = ActOrder::None;
      o.block_size = int(in);
      o.weighted_search = false;
      o.h_add = d;
      o.report_errors = report_errors_;
      o.report_rtn = report_errors_;
      o.error_ref = wcat.data();
      o.error_ref_scales = fp8_rtn_scales(wcat.data(), out_total, in, static_ ? 0 : -1,
                                          static_ ? wscale(job, slots) : 0.0f);
      o.report_rows = row0;
      GptqResult g = gptq_quantize(tw.data(), out_total, in, H.data(), o,
                                   job.module_name(slots[0]));
      qcat = std::move(g.qw);
      if (!g.report.fallback) r = {{"weights", aa_ ? "gptq_aa" : "gptq"}, {"damp", g.report.damp}};
      else r = {{"weights", "rtn"}, {"fallback", true}};
      if (g.report.dead_columns > 0) r["dead_columns"] = g.report.dead_columns;
      err = std::move(g.report.rel_errors);
      err_rtn = std::move(g.report.rel_errors_rtn);
    }
    const double gptq_s = seconds_since(t_gptq);
    std::vector<QuantizedWeight> qws;
    std::vector<nlohmann::json> wrep;
    for (size_t k = 0; k < slots.size(); ++k) {
      QuantizedWeight qw = slice_rows(qcat, row0[k], row0[k + 1]);
      nlohmann::json rk = r;
      if (err.size() == slots.size()) rk["rel_output_error"] = err[k];
      if (err_rtn.size() == slots.size()) rk["rel_output_error_rtn"] = err_rtn[k];
      qws.push_back(std::move(qw));
      wrep.push_back(std::move(rk));
    }
    H.clear();
    const double weights_s = seconds_since(t_weights);

    // 3. fp8_static: the input scale (abs-max, or the clipping search).
    const auto t_search = std::chrono::steady_clock::now();
    float best_ratio = 1.0f;
    double base_loss = -1, best = -1, yden = 0;
    if (static_ && search_ && amax > 0.0f && n > 0) {
      std::vector<float> wqcat;
      wqcat.reserve(wcat.size());
      for (size_t i = 0; i < slots.size(); ++i) {
        const auto dq = qws[i].dequantize();
        wqcat.insert(wqcat.end(), dq.begin(), dq.end());
      }
      const InputScaleSearch srch(sub, n, in, wcat, wqcat, out_total);
      auto loss = [&](float scale) { return srch.loss(scale); };
      base_loss = best = loss(base_scale);
      auto consider = [&](float r) {
        const double e = loss(base_scale * r);
        if (e < best) best = e, best_ratio = r;
      };
      for (float r : {0.9f, 0.8f, 0.7f, 0.6f, 0.5f}) consider(r);
      const float c = best_ratio;
      for (float d : {-0.05f, 0.05f})
        if (c + d <= 1.0f && c + d > 0.0f) consider(c + d);
      yden = srch.ref_energy();
    }
    const float input_scale = base_scale * best_ratio;
    const double search_s = seconds_since(t_search);

    for (size_t i = 0; i < slots.size(); ++i) {
      QuantizedWeight& qw = qws[i];
      qw.act = act_;
      nlohmann::json rep = wrep[i];
      if (static_) {
        qw.input_scale = input_scale;
        rep.update({{"input_absmax", amax},
                    {"input_clip_ratio", best_ratio},
                    {"input_scale", input_scale},
                    {"weight_scale", tscale}});
        if (base_loss >= 0 && yden > 0)
          rep.update({{"search_rows", n},
                      {"group_out_rel_error_absmax", std::sqrt(base_loss / yden)},
                      {"group_out_rel_error", std::sqrt(best / yden)}});
      }
      // weights = h_sum (H read back) + target (D, Wiener) + gptq (solve and error report) + split.
      rep["seconds"] = {{"collect", collect_s}, {"weights", weights_s}, {"h_sum", hsum_s},
                        {"target", target_s}, {"gptq", gptq_s}, {"search", search_s}};
      job.commit(slots[i], std::move(qw), std::move(rep));
    }
  }

  bool static_;
  bool true_sequential_ = true;
  double damp_;
  int64_t max_rows_ = 2048;
  bool search_ = false, gptq_ = true, aa_ = true, report_errors_ = true;
  ActQuant act_;
};

}  // namespace

std::unique_ptr<BlockQuantizer> make_fp8_static_quantizer(const QuantSpec& spec) {
  return std::make_unique<Fp8Quantizer>(spec, true);
}

std::unique_ptr<BlockQuantizer> make_fp8_dynamic_quantizer(const QuantSpec& spec) {
  return std::make_unique<Fp8Quantizer>(spec, false);
}

bool fp8_dynamic_needs_calibration(const QuantSpec& spec) {
  return method_opt<std::string>(spec, "weights") != "rtn";
}

}  // namespace llmc
