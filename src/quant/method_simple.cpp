// quant/method_simple.cpp — round-to-nearest methods and the dense fp16 output.
#include "quant/method_simple.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "quant/rtn.h"

namespace llmc {

namespace {

// Per-linear weight quantizer: the whole method for the RTN family.
using WeightFn = std::function<QuantizedWeight(const DenseLinear&)>;

double rel_weight_error(const DenseLinear& d, const QuantizedWeight& qw) {
  const std::vector<float> dq = qw.dequantize();
  const auto& w = d.weight();
  // Fixed chunks summed in order: the same value whatever the thread count.
  constexpr size_t kChunk = size_t(1) << 16;
  const size_t nc = (w.size() + kChunk - 1) / kChunk;
  std::vector<double> pn(nc, 0.0), pd(nc, 0.0);
  parallel_for(0, nc, 1, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      double num = 0, den = 0;
      for (size_t i = c * kChunk; i < std::min(w.size(), (c + 1) * kChunk); ++i) {
        const double e = double(dq[i]) - w[i];
        num += e * e;
        den += double(w[i]) * w[i];
      }
      pn[c] = num, pd[c] = den;
    }
  });
  double num = 0, den = 0;
  for (size_t c = 0; c < nc; ++c) num += pn[c], den += pd[c];
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

class RtnQuantizer : public BlockQuantizer {
 public:
  explicit RtnQuantizer(WeightFn fn) : fn_(std::move(fn)) {}
  void quantize_block(BlockJob& job) override {
    for (LinearSlot s : job.modules()) {
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
    for (LinearSlot s : job.modules()) job.check_finite(s);
  }
};

}  // namespace

void check_method_opts(const QuantSpec& spec, std::initializer_list<const char*>) {
  check_method_options(find_method(spec.method), spec.extra);
}

std::unique_ptr<BlockQuantizer> make_int_rtn_quantizer(const QuantSpec& spec) {
  const int bits = spec.bits;
  const int64_t group = spec.group;
  const bool sym = spec.symmetric;
  return std::make_unique<RtnQuantizer>([=](const DenseLinear& d) {
    return quantize_int_rtn(d.weight().data(), d.out_features(), d.in_features(), bits, group,
                            sym, /*clip_search=*/bits <= 3);
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

std::unique_ptr<BlockQuantizer> make_dense_quantizer(const QuantSpec& spec) {
  return std::make_unique<DenseQuantizer>();
}

}  // namespace llmc
