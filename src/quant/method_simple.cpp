// quant/method_simple.cpp — round-to-nearest methods, the dense fp16 output and fp8_static.
#include "quant/method_simple.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "quant/rtn.h"

namespace llmc {

namespace {

constexpr LinearSlot kAllSlots[] = {LinearSlot::Q,    LinearSlot::K,  LinearSlot::V,
                                    LinearSlot::O,    LinearSlot::Gate, LinearSlot::Up,
                                    LinearSlot::Down};

// Per-linear weight quantizer: the whole method for the RTN family.
using WeightFn = std::function<QuantizedWeight(const DenseLinear&)>;

double rel_weight_error(const DenseLinear& d, const QuantizedWeight& qw) {
  const std::vector<float> dq = qw.dequantize();
  const auto& w = d.weight();
  double num = 0, den = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double e = double(dq[i]) - w[i];
    num += e * e;
    den += double(w[i]) * w[i];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

class RtnQuantizer : public BlockQuantizer {
 public:
  explicit RtnQuantizer(WeightFn fn) : fn_(std::move(fn)) {}
  void quantize_block(BlockJob& job) override {
    for (LinearSlot s : kAllSlots) {
      if (job.ignored(s)) continue;
      job.check_finite(s);
      const DenseLinear& d = job.dense(s);
      QuantizedWeight qw = fn_(d);
      nlohmann::json rep = {{"weight_rel_error", rel_weight_error(d, qw)}};
      job.commit(s, std::move(qw), std::move(rep));
    }
  }

 private:
  WeightFn fn_;
};

class DenseQuantizer : public BlockQuantizer {
 public:
  void quantize_block(BlockJob& job) override {
    for (LinearSlot s : kAllSlots) job.check_finite(s);
  }
};

// ---- fp8_static ----------------------------------------------------------------------------

// Linears that share one input (and therefore, in vLLM's fused layers, one input scale and one
// per-tensor weight scale), in true-sequential order.
const std::vector<std::vector<LinearSlot>> kInputGroups = {
    {LinearSlot::Q, LinearSlot::K, LinearSlot::V},
    {LinearSlot::O},
    {LinearSlot::Gate, LinearSlot::Up},
    {LinearSlot::Down}};

class Fp8StaticQuantizer : public BlockQuantizer {
 public:
  explicit Fp8StaticQuantizer(const QuantSpec& spec) {
    max_rows_ = spec.extra.value("search_rows", int64_t(4096));
    search_ = spec.extra.value("scale_search", true);
  }

  void quantize_block(BlockJob& job) override {
    for (const auto& group : kInputGroups) {
      std::vector<LinearSlot> active;
      for (LinearSlot s : group)
        if (!job.ignored(s)) active.push_back(s);
      if (active.empty()) continue;
      quantize_group(job, active);
    }
  }

 private:
  void quantize_group(BlockJob& job, const std::vector<LinearSlot>& slots) {
    // 1. weights: one per-tensor scale for the whole group (vLLM fuses q/k/v and gate/up and
    //    would otherwise requantize the shards to the largest scale).
    float wmax = 0.0f;
    for (LinearSlot s : slots) {
      job.check_finite(s);
      for (float v : job.dense(s).weight()) wmax = std::max(wmax, std::fabs(v));
    }
    const float wscale = wmax > 0.0f ? wmax / 448.0f : 1.0f;
    const int64_t in = job.dense(slots[0]).in_features();

    // 2. input statistics: abs-max over every calibration row, and a strided subsample of rows
    //    for the error search.
    const int64_t total = job.rows();
    const int64_t stride = std::max<int64_t>(1, (total + max_rows_ - 1) / max_rows_);
    float amax = 0.0f;
    std::vector<float> sub;
    int64_t seen = 0;
    job.for_each_input(slots[0], [&](const float* x, int64_t rows, int64_t cols) {
      for (int64_t i = 0; i < rows * cols; ++i) amax = std::max(amax, std::fabs(x[i]));
      for (int64_t r = 0; r < rows; ++r, ++seen)
        if (seen % stride == 0) sub.insert(sub.end(), x + r * cols, x + (r + 1) * cols);
    });
    if (!std::isfinite(amax))
      fail(job.module_name(slots[0]), ": non-finite calibration activations");
    const float base_scale = amax > 0.0f ? amax / 448.0f : 1.0f;
    const int64_t n = int64_t(sub.size()) / in;

    // 3. quantized weights (dequantized, concatenated) and reference outputs.
    std::vector<QuantizedWeight> qws;
    std::vector<float> wcat, wqcat;
    int64_t out_total = 0;
    for (LinearSlot s : slots) {
      const DenseLinear& d = job.dense(s);
      qws.push_back(quantize_fp8_rtn(d.weight().data(), d.out_features(), in, 0, wscale));
      const auto dq = qws.back().dequantize();
      wcat.insert(wcat.end(), d.weight().begin(), d.weight().end());
      wqcat.insert(wqcat.end(), dq.begin(), dq.end());
      out_total += d.out_features();
    }
    std::vector<float> yref(size_t(n * out_total)), y(yref.size()), xq(sub.size());
    gemm_xwt(sub.data(), n, in, wcat.data(), out_total, yref.data());
    auto loss = [&](float scale) {
      xq = sub;
      quantize_activations(ActQuant::FP8StaticTensor, scale, xq.data(), n, in);
      gemm_xwt(xq.data(), n, in, wqcat.data(), out_total, y.data());
      double e = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        const double d = double(y[i]) - yref[i];
        e += d * d;
      }
      return e;
    };

    // 4. the search: coarse clipping ratios, then a finer pass around the best.
    double base_loss = loss(base_scale);
    float best_ratio = 1.0f;
    double best = base_loss;
    if (search_ && amax > 0.0f) {
      auto consider = [&](float r) {
        if (!(r > 0.0f)) return;
        const double e = loss(base_scale * r);
        if (e < best) {
          best = e;
          best_ratio = r;
        }
      };
      for (float r : {0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f}) consider(r);
      const float c = best_ratio;
      for (float d : {-0.05f, -0.025f, 0.025f, 0.05f})
        if (c + d <= 1.0f) consider(c + d);
    }
    const float input_scale = base_scale * best_ratio;

    double yden = 0;
    for (float v : yref) yden += double(v) * v;
    for (size_t i = 0; i < slots.size(); ++i) {
      QuantizedWeight& qw = qws[i];
      qw.act = ActQuant::FP8StaticTensor;
      qw.input_scale = input_scale;
      nlohmann::json rep = {{"input_absmax", amax},
                            {"input_clip_ratio", best_ratio},
                            {"input_scale", input_scale},
                            {"weight_scale", wscale},
                            {"search_rows", n},
                            {"group_out_rel_error_absmax", yden > 0 ? std::sqrt(base_loss / yden) : 0.0},
                            {"group_out_rel_error", yden > 0 ? std::sqrt(best / yden) : 0.0}};
      job.commit(slots[i], std::move(qw), std::move(rep));
    }
  }

  int64_t max_rows_ = 4096;
  bool search_ = true;
};

}  // namespace

std::unique_ptr<BlockQuantizer> make_int_rtn_quantizer(const QuantSpec& spec) {
  const int bits = spec.bits;
  const int64_t group = spec.group;
  const bool sym = spec.symmetric;
  return std::make_unique<RtnQuantizer>([=](const DenseLinear& d) {
    return quantize_int_rtn(d.weight().data(), d.out_features(), d.in_features(), bits, group,
                            sym, /*clip_search=*/bits <= 3);
  });
}

std::unique_ptr<BlockQuantizer> make_fp8_dynamic_quantizer(const QuantSpec& spec) {
  return std::make_unique<RtnQuantizer>([](const DenseLinear& d) {
    QuantizedWeight qw = quantize_fp8_rtn(d.weight().data(), d.out_features(), d.in_features(), -1);
    qw.act = ActQuant::FP8DynamicToken;
    return qw;
  });
}

std::unique_ptr<BlockQuantizer> make_int8_dynamic_quantizer(const QuantSpec& spec) {
  return std::make_unique<RtnQuantizer>([](const DenseLinear& d) {
    QuantizedWeight qw =
        quantize_int_rtn(d.weight().data(), d.out_features(), d.in_features(), 8, -1, true);
    qw.act = ActQuant::INT8DynamicToken;
    return qw;
  });
}

std::unique_ptr<BlockQuantizer> make_dense_quantizer(const QuantSpec&) {
  return std::make_unique<DenseQuantizer>();
}

std::unique_ptr<BlockQuantizer> make_fp8_static_quantizer(const QuantSpec& spec) {
  return std::make_unique<Fp8StaticQuantizer>(spec);
}

}  // namespace llmc
