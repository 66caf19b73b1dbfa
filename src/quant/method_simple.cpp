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

// ||dequant(qw) - W|| / ||W||, decoded a few rows at a time (no dequantized copy of the weight).
// Fixed row chunks summed in order: the same value whatever the thread count.
double rel_weight_error(const DenseLinear& d, const QuantizedWeight& qw) {
  const auto& w = d.weight();
  const int64_t out = qw.out, in = qw.in;
  qw.dequantize_rows(0, 0, nullptr);
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(in, 1));
  const size_t nc = size_t((out + rows - 1) / rows);
  std::vector<double> pn(nc, 0.0), pd(nc, 0.0);
  parallel_for(0, nc, 1, [&](size_t c0, size_t c1) {
    std::vector<float> buf(size_t(rows * in));
    for (size_t c = c0; c < c1; ++c) {
      const int64_t r0 = int64_t(c) * rows, r1 = std::min(out, r0 + rows);
      qw.dequantize_rows(r0, r1, buf.data());  // nested parallel_for runs inline
      const float* wr = w.data() + r0 * in;
      double num = 0, den = 0;
      for (int64_t i = 0; i < (r1 - r0) * in; ++i) {
        const double e = double(buf[size_t(i)]) - wr[i];
        num += e * e;
        den += double(wr[i]) * wr[i];
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
