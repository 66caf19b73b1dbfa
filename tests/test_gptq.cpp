// Tests of the GPTQ core (quant/gptq.h): Hessian accumulation, group parameters, the solver,
// act-order, dead columns and the Cholesky-failure fallback.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/fs.h"
#include "eval/quality.h"
#include "formats/checkpoint.h"
#include "formats/ggml_types.h"
#include "model/model.h"
#include "quant/gptq.h"
#include "quant/layouts.h"
#include "quant/method.h"
#include "quant/method_gptq.h"
#include "quant/pipeline.h"
#include "quant/rtn.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

namespace llmc {
namespace {

// Correlated activations: x = z · A with a few dominant channels (like real LLM inputs).
std::vector<float> correlated_inputs(int64_t rows, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t k = std::max<int64_t>(4, n / 4);
  std::vector<float> A(size_t(k * n));
  for (auto& a : A) a = nd(rng);
  std::vector<float> scale(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) scale[size_t(j)] = (j % 17 == 3) ? 8.0f : 0.5f + float(j % 5) * 0.3f;
  std::vector<float> x(size_t(rows * n));
  std::vector<float> z(static_cast<size_t>(k));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : z) v = nd(rng);
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += double(z[size_t(i)]) * A[size_t(i * n + j)];
      x[size_t(r * n + j)] = float(s / std::sqrt(double(k))) * scale[size_t(j)] + 0.1f * nd(rng);
    }
  }
  return x;
}

std::vector<float> random_weight(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> w(size_t(out * in));
  for (auto& v : w) v = nd(rng);
  return w;
}

std::vector<double> hessian_of(const std::vector<float>& x, int64_t n) {
  HessianAccumulator acc(n);
  acc.add(x.data(), int64_t(x.size()) / n);
  return acc.hessian();
}

// ||X Wᵀ - X Wqᵀ||² / ||X Wᵀ||², measured directly on the activations.
double measured_output_error(const std::vector<float>& x, int64_t n, const std::vector<float>& w,
                             const std::vector<float>& wq, int64_t out) {
  const int64_t rows = int64_t(x.size()) / n;
  double num = 0, den = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double y = 0, yq = 0;
      for (int64_t j = 0; j < n; ++j) {
        y += double(x[size_t(r * n + j)]) * w[size_t(o * n + j)];
        yq += double(x[size_t(r * n + j)]) * wq[size_t(o * n + j)];
      }
      num += (y - yq) * (y - yq);
      den += y * y;
    }
  }
  return num / den;
}

TEST(Hessian, MatchesNaiveFp64Loop) {
  const int64_t n = 200, rows = 2600;  // not multiples of the tile (128) or chunk (1024)
  std::vector<float> x = correlated_inputs(rows, n, 1);
  HessianAccumulator acc(n);
  acc.add(x.data(), 1000);
  acc.add(x.data() + 1000 * n, rows - 1000);
  EXPECT_EQ(acc.count(), rows);
  const std::vector<double> h = acc.hessian();
  double max_rel = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t r = 0; r < rows; ++r) s += double(x[size_t(r * n + i)]) * x[size_t(r * n + j)];
      s *= 2.0 / double(rows);
      const double scale = std::sqrt(h[size_t(i * n + i)] * h[size_t(j * n + j)]);
      max_rel = std::max(max_rel, std::fabs(h[size_t(i * n + j)] - s) / scale);
      ASSERT_EQ(h[size_t(i * n + j)], h[size_t(j * n + i)]) << "not symmetric at " << i << "," << j;
    }
  }
  EXPECT_LT(max_rel, 2e-6);
}

TEST(Hessian, EmptyIsZero) {
  HessianAccumulator acc(5);
  const auto h = acc.hessian();
  ASSERT_EQ(h.size(), 25u);
  for (double v : h) EXPECT_EQ(v, 0.0);
}

TEST(GroupParams, SearchNeverWorseAndScalesAreFp16) {
  std::mt19937 rng(3);
  std::student_t_distribution<float> td(3.0f);
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {true, false}) {
      QuantGrid g;
      g.bits = bits;
      g.symmetric = sym;
      QuantGrid gs = g;
      gs.search_steps = 20;
      for (int t = 0; t < 50; ++t) {
        std::vector<float> v(64);
        for (auto& x : v) x = 0.02f * td(rng);
        float s0, s1;
        int32_t z0, z1;
        group_params(g, v.data(), 64, nullptr, &s0, &z0);
        group_params(gs, v.data(), 64, nullptr, &s1, &z1);
        EXPECT_LE(group_error(gs, v.data(), 64, nullptr, s1, z1),
                  group_error(g, v.data(), 64, nullptr, s0, z0));
        EXPECT_EQ(f16_to_f32(f32_to_f16(s1)), s1);
        if (sym) EXPECT_EQ(z1, 0);
        else EXPECT_TRUE(z1 >= 0 && z1 < (1 << bits));
      }
    }
  }
  // Zero group: scale 1, never a division by zero.
  std::vector<float> zero(16, 0.0f);
  float s;
  int32_t z;
  group_params(QuantGrid{}, zero.data(), 16, nullptr, &s, &z);
  EXPECT_EQ(s, 1.0f);
}

TEST(GroupParams, SymmetricFullRangeUsesTheNegativeCode) {
  QuantGrid g;
  g.bits = 4;
  g.fp16_scales = false;
  std::vector<float> v = {-7.5f, 3.0f, 0.25f, 7.5f};
  float s;
  int32_t z;
  group_params(g, v.data(), 4, nullptr, &s, &z);
  EXPECT_EQ(s, 1.0f);
  EXPECT_EQ(int_quantize_value(-7.5f, s, 0, 4, true), -8);
  EXPECT_EQ(int_quantize_value(7.5f, s, 0, 4, true), 7);
  g.sym_full_range = false;
  group_params(g, v.data(), 4, nullptr, &s, &z);
  EXPECT_FLOAT_EQ(s, 7.5f / 7.0f);
}

struct Case {
  int bits;
  bool sym;
  int64_t group;
};

class GptqBits : public ::testing::TestWithParam<Case> {};

TEST_P(GptqBits, BeatsRtnOnCorrelatedData) {
  const Case c = GetParam();
  const int64_t n = 256, out = 48, rows = 2048;
  const auto x = correlated_inputs(rows, n, 7);
  const auto w = random_weight(out, n, 8);
  const auto H = hessian_of(x, n);
  GptqOptions o;
  o.grid.bits = c.bits;
  o.grid.symmetric = c.sym;
  o.group = c.group;
  const GptqResult r = gptq_quantize(w.data(), out, n, H.data(), o);
  ASSERT_NO_THROW(r.qw.validate("gptq"));
  EXPECT_EQ(r.qw.bits, c.bits);
  EXPECT_EQ(r.qw.symmetric, c.sym);
  EXPECT_EQ(r.qw.group, c.group);
  EXPECT_FALSE(r.report.fallback);
  // The step times are measured (the solve and the report do real work).
  EXPECT_GT(r.report.seconds_solve, 0.0);
  EXPECT_GT(r.report.seconds_report, 0.0);
  EXPECT_GE(r.report.seconds_prepare, 0.0);
  EXPECT_DOUBLE_EQ(r.report.damp, 0.01);
  for (float s : r.qw.scales) EXPECT_EQ(f16_to_f32(f32_to_f16(s)), s);
  const auto wq = r.qw.dequantize();
  const auto wr = quantize_grid_rtn(w.data(), out, n, c.group, o.grid).dequantize();
  const double e_gptq = measured_output_error(x, n, w, wq, out);
  const double e_rtn = measured_output_error(x, n, w, wr, out);
  EXPECT_LT(e_gptq, e_rtn * (c.bits == 8 ? 0.9 : 0.8))
      << "bits " << c.bits << " gptq " << e_gptq << " rtn " << e_rtn;
  // The report's H-based error equals the measured one.
  EXPECT_NEAR(r.report.rel_error, e_gptq, 1e-3 * e_gptq + 1e-12);
  EXPECT_NEAR(r.report.rel_error_rtn, e_rtn, 1e-3 * e_rtn + 1e-12);
  // Also beats E1's plain RTN convention.
  const auto we = quantize_int_rtn(w.data(), out, n, c.bits, c.group, c.sym).dequantize();
  EXPECT_LT(e_gptq, measured_output_error(x, n, w, we, out));
}

INSTANTIATE_TEST_SUITE_P(AllWidths, GptqBits,
                         ::testing::Values(Case{2, false, 64}, Case{3, false, 128},
                                           Case{4, true, 128}, Case{4, false, 128},
                                           Case{4, true, -1}, Case{8, true, -1},
                                           Case{4, true, 32}, Case{3, true, 100}));

// GPTQ on each quantized ggml type's grid: the rows' bytes decode to a weight whose measured
// output error is below the type's encoder alone (weighted by the same diag(H)), and the report's
// H-based errors equal the measured ones.
TEST(Gptq, GgmlGridsBeatTheirEncoders) {
  const int64_t n = 512, out = 24, rows = 2048;
  const auto x = correlated_inputs(rows, n, 9);
  const auto w = random_weight(out, n, 10);
  const auto H = hessian_of(x, n);
  std::vector<float> dh(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) dh[size_t(j)] = float(H[size_t(j * n + j)]);
  int checked = 0;
  for (int k = 0; k < ggml_type_count(); ++k) {
    const GgmlTypeTraits& t = ggml_type_at(k);
    if (!t.grid) continue;
    GptqOptions o;
    o.ggml = &t;
    const GptqResult r = gptq_quantize(w.data(), out, n, H.data(), o);
    EXPECT_FALSE(r.report.fallback) << t.name;
    EXPECT_TRUE(r.qw.q8.empty() && r.qw.qu.empty()) << t.name;
    const int64_t rb = int64_t(ggml_row_bytes(t.type, uint64_t(n)));
    ASSERT_EQ(int64_t(r.ggml.size()), out * rb) << t.name;
    std::vector<float> wq(size_t(out * n)), wr(wq.size());
    std::vector<uint8_t> q(static_cast<size_t>(rb));
    for (int64_t row = 0; row < out; ++row) {
      t.decode(r.ggml.data() + row * rb, n, wq.data() + row * n);
      t.encode(w.data() + row * n, dh.data(), n, q.data());
      t.decode(q.data(), n, wr.data() + row * n);
    }
    const double eg = measured_output_error(x, n, w, wq, out), er = measured_output_error(x, n, w, wr, out);
    std::printf("%-5s gptq %.6f encoder %.6f\n", t.name, eg, er);
    EXPECT_LT(eg, er * 0.9) << t.name;
    EXPECT_NEAR(r.report.rel_error, eg, 1e-3 * eg + 1e-12) << t.name;
    EXPECT_NEAR(r.report.rel_error_rtn, er, 1e-3 * er + 1e-12) << t.name;
    ++checked;
  }
  EXPECT_EQ(checked, 10);
  // Rows must be whole blocks; act order is refused.
  GptqOptions o;
  o.ggml = &ggml_traits(GgmlType::Q4_K);
  EXPECT_THROW(gptq_quantize(w.data(), out * 4, n / 4, H.data(), o), Error);
  o.ggml = &ggml_traits(GgmlType::Q4_0);
  o.act_order = ActOrder::Dynamic;
  EXPECT_THROW(gptq_quantize(w.data(), out, n, H.data(), o), Error);
  // A non-finite Hessian falls back to the encoder (rel_error -1: not measurable).
  std::vector<double> bad = H;
  bad[5] = NAN;
  o.act_order = ActOrder::None;
  const GptqResult f = gptq_quantize(w.data(), out, n, bad.data(), o);
  EXPECT_TRUE(f.report.fallback);
  EXPECT_EQ(f.ggml.size(), size_t(out) * ggml_row_bytes(GgmlType::Q4_0, uint64_t(n)));
}

TEST(Gptq, MseSearchedScalesReduceError) {
  const int64_t n = 256, out = 64;
  const auto x = correlated_inputs(2048, n, 11);
  auto w = random_weight(out, n, 12);
  // heavy-tailed weights make clipping worthwhile
  for (size_t i = 0; i < w.size(); i += 97) w[i] *= 6.0f;
  const auto H = hessian_of(x, n);
  GptqOptions o;
  o.grid.bits = 3;
  o.grid.symmetric = false;
  const double plain = gptq_quantize(w.data(), out, n, H.data(), o).report.rel_error;
  o.grid.search_steps = 20;
  const double searched = gptq_quantize(w.data(), out, n, H.data(), o).report.rel_error;
  EXPECT_LT(searched, plain);
}

TEST(Gptq, DeadColumnsAreZeroed) {
  const int64_t n = 64, out = 8;
  auto x = correlated_inputs(512, n, 5);
  for (int64_t r = 0; r < 512; ++r) x[size_t(r * n + 10)] = x[size_t(r * n + 40)] = 0.0f;
  const auto w = random_weight(out, n, 6);
  const auto H = hessian_of(x, n);
  GptqOptions o;
  o.group = 32;
  const GptqResult r = gptq_quantize(w.data(), out, n, H.data(), o);
  EXPECT_EQ(r.report.dead_columns, 2);
  const auto wq = r.qw.dequantize();
  for (int64_t o2 = 0; o2 < out; ++o2) {
    EXPECT_EQ(wq[size_t(o2 * n + 10)], 0.0f);
    EXPECT_EQ(wq[size_t(o2 * n + 40)], 0.0f);
  }
}

TEST(Gptq, CholeskyFailureRaisesDampingThenFallsBackToRtn) {
  const int64_t n = 32, out = 4;
  const auto w = random_weight(out, n, 9);
  GptqOptions o;
  o.group = 16;
  // Indefinite but fixable by a larger damping: eigenvalues 1 ± 3 (mean diag 1) -> λ >= 2.
  std::vector<double> h(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) h[size_t(i * n + i)] = 1.0;
  h[1] = h[size_t(n)] = 3.0;
  GptqResult r = gptq_quantize(w.data(), out, n, h.data(), o);
  EXPECT_FALSE(r.report.fallback);
  EXPECT_GT(r.report.damp, 1.0);  // 0.01 and 0.1 and 1 fail, 10 works
  // Hopeless: huge negative eigenvalue -> RTN on the same grid, recorded.
  h[1] = h[size_t(n)] = 1e6;
  r = gptq_quantize(w.data(), out, n, h.data(), o, "test.linear");
  EXPECT_TRUE(r.report.fallback);
  EXPECT_NE(r.report.reason.find("Cholesky"), std::string::npos);
  EXPECT_TRUE(r.report.to_json()["fallback_rtn"].get<bool>());
  const auto rtn = quantize_grid_rtn(w.data(), out, n, o.group, o.grid,
                                     nullptr);
  // Weighted search off in the comparison: the default grid has no search, so codes agree.
  EXPECT_EQ(r.qw.q8, rtn.q8);
  EXPECT_EQ(r.qw.scales, rtn.scales);
  // Non-finite Hessian and negative diagonal also fall back.
  h[5] = std::nan("");
  EXPECT_TRUE(gptq_quantize(w.data(), out, n, h.data(), o).report.fallback);
  std::vector<double> neg(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) neg[size_t(i * n + i)] = -1.0;
  r = gptq_quantize(w.data(), out, n, neg.data(), o);
  EXPECT_TRUE(r.report.fallback);
  EXPECT_NO_THROW(r.qw.validate("fallback"));
}

TEST(Gptq, ActOrderModesAndGIdx) {
  const int64_t n = 256, out = 32, gs = 64;
  const auto x = correlated_inputs(2048, n, 21);
  const auto w = random_weight(out, n, 22);
  const auto H = hessian_of(x, n);
  GptqOptions o;
  o.group = gs;
  const GptqResult none = gptq_quantize(w.data(), out, n, H.data(), o);
  EXPECT_TRUE(none.qw.g_idx.empty());

  o.act_order = ActOrder::Static;
  const GptqResult st = gptq_quantize(w.data(), out, n, H.data(), o);
  ASSERT_EQ(st.qw.g_idx.size(), size_t(n));
  for (int64_t c = 0; c < n; ++c) EXPECT_EQ(st.qw.g_idx[size_t(c)], c / gs);

  o.act_order = ActOrder::Dynamic;
  const GptqResult dy = gptq_quantize(w.data(), out, n, H.data(), o);
  ASSERT_NO_THROW(dy.qw.validate("dynamic"));
  ASSERT_EQ(dy.qw.g_idx.size(), size_t(n));
  // Each group holds exactly gs columns, and the group order follows decreasing diag(H).
  std::vector<int> count(size_t(n / gs), 0);
  for (int32_t g : dy.qw.g_idx) ++count[size_t(g)];
  for (int c : count) EXPECT_EQ(c, gs);
  const auto perm = diag_order(H.data(), n);
  for (int64_t j = 0; j < n; ++j) EXPECT_EQ(dy.qw.g_idx[size_t(perm[size_t(j)])], j / gs);
  // dequantize honours g_idx: recompute by hand.
  const auto wd = dy.qw.dequantize();
  const int64_t ng = dy.qw.n_groups();
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const int32_t g = dy.qw.g_idx[size_t(c)];
      EXPECT_EQ(wd[size_t(r * n + c)],
                float(dy.qw.q8[size_t(r * n + c)]) * dy.qw.scales[size_t(r * ng + g)]);
    }
  // Every mode beats RTN clearly.
  const auto wr = quantize_grid_rtn(w.data(), out, n, gs, o.grid).dequantize();
  const double e_rtn = measured_output_error(x, n, w, wr, out);
  for (const GptqResult* r : {&none, &st, &dy})
    EXPECT_LT(measured_output_error(x, n, w, r->qw.dequantize(), out), 0.8 * e_rtn);
  EXPECT_EQ(parse_act_order("dynamic"), ActOrder::Dynamic);
  EXPECT_STREQ(act_order_name(ActOrder::Static), "static");
  EXPECT_THROW(parse_act_order("sideways"), Error);
}

// The fp8 e4m3 grid: codes and values, fixed-scale rounding equal to quantize_fp8_rtn, and
// GPTQ on it equal to the plain (unbatched) error feedback written out here.
TEST(Gptq, Fp8GridMatchesRoundingAndTheUnbatchedErrorFeedback) {
  const QuantGrid g = fp8_e4m3_grid();
  EXPECT_EQ(g.kind, QKind::FP8);
  EXPECT_EQ(grid_code(g, 448.0f * 3.0f, 3.0f, 0), int32_t(f32_to_fp8e4m3(448.0f)));
  EXPECT_EQ(grid_value(g, grid_code(g, 1.3f, 0.5f, 0), 0.5f, 0),
            fp8e4m3_to_f32(f32_to_fp8e4m3(2.6f)) * 0.5f);
  EXPECT_EQ(grid_value(g, grid_code(g, -1e9f, 1.0f, 0), 1.0f, 0), -448.0f);  // saturates
  float s;
  int32_t z;
  const float v[2] = {1.0f, 2.0f};
  EXPECT_THROW(group_params(g, v, 2, nullptr, &s, &z), Error);  // fp8 scales come from the caller

  const int64_t n = 96, out = 24;
  const auto x = correlated_inputs(512, n, 41);
  const auto w = random_weight(out, n, 42);
  const auto H = hessian_of(x, n);
  for (int64_t group : {int64_t(0), int64_t(-1)}) {
    const QuantizedWeight rtn = quantize_fp8_rtn(w.data(), out, n, group);
    const QuantizedWeight fixed = quantize_grid_fixed(w.data(), out, n, group, g, rtn.scales);
    EXPECT_EQ(fixed.q8, rtn.q8);
    EXPECT_EQ(fixed.dequantize(), rtn.dequantize());
    GptqOptions o;
    o.grid = g;
    o.group = group;
    o.fixed_scales = rtn.scales;
    o.act_order = ActOrder::None;
    o.block_size = int(n);
    const GptqResult r = gptq_quantize(w.data(), out, n, H.data(), o);
    ASSERT_FALSE(r.report.fallback);
    EXPECT_EQ(r.qw.kind, QKind::FP8);
    EXPECT_EQ(r.qw.scales, rtn.scales);
    EXPECT_LT(r.report.rel_error, r.report.rel_error_rtn);
    // Reference: U = chol((H + λI)⁻¹)ᵀ via the solver's own LAPACK path is not visible, so
    // build it from the same damping with a naive fp64 inverse and Cholesky.
    std::vector<double> A = H;
    double md = 0;
    for (int64_t i = 0; i < n; ++i) md += A[size_t(i * n + i)];
    for (int64_t i = 0; i < n; ++i) A[size_t(i * n + i)] += 0.01 * md / double(n);
    // Inverse by Gauss-Jordan.
    std::vector<double> inv(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) inv[size_t(i * n + i)] = 1.0;
    for (int64_t c = 0; c < n; ++c) {
      const double p = A[size_t(c * n + c)];
      for (int64_t k = 0; k < n; ++k) A[size_t(c * n + k)] /= p, inv[size_t(c * n + k)] /= p;
      for (int64_t r2 = 0; r2 < n; ++r2) {
        if (r2 == c) continue;
        const double f = A[size_t(r2 * n + c)];
        for (int64_t k = 0; k < n; ++k) {
          A[size_t(r2 * n + k)] -= f * A[size_t(c * n + k)];
          inv[size_t(r2 * n + k)] -= f * inv[size_t(c * n + k)];
        }
      }
    }
    // Upper U with inv = Uᵀ U (U = Lᵀ of the lower Cholesky factor).
    std::vector<double> L(size_t(n * n), 0.0);
    for (int64_t j = 0; j < n; ++j) {
      double d = inv[size_t(j * n + j)];
      for (int64_t k = 0; k < j; ++k) d -= L[size_t(j * n + k)] * L[size_t(j * n + k)];
      L[size_t(j * n + j)] = std::sqrt(d);
      for (int64_t i = j + 1; i < n; ++i) {
        double v2 = inv[size_t(i * n + j)];
        for (int64_t k = 0; k < j; ++k) v2 -= L[size_t(i * n + k)] * L[size_t(j * n + k)];
        L[size_t(i * n + j)] = v2 / L[size_t(j * n + j)];
      }
    }
    int64_t differ = 0;
    for (int64_t r2 = 0; r2 < out; ++r2) {
      const float sc = rtn.scales[size_t(group == 0 ? 0 : r2)];
      std::vector<float> row(w.begin() + r2 * n, w.begin() + (r2 + 1) * n);
      for (int64_t i = 0; i < n; ++i) {
        const uint8_t code = f32_to_fp8e4m3(row[size_t(i)] / sc);
        differ += int8_t(code) != r.qw.q8[size_t(r2 * n + i)];
        const float e = (row[size_t(i)] - fp8e4m3_to_f32(code) * sc) / float(L[size_t(i * n + i)]);
        for (int64_t j = i + 1; j < n; ++j) row[size_t(j)] -= e * float(L[size_t(j * n + i)]);
      }
    }
    // The reference factor differs from LAPACK's in the last bits only.
    EXPECT_LE(double(differ) / double(out * n), 0.01) << "group " << group;
  }
  GptqOptions bad;
  bad.grid = g;
  bad.group = 0;
  EXPECT_THROW(gptq_quantize(w.data(), out, n, H.data(), bad), Error);  // no fixed scales
}

// The permutation trick: permuting gate/up rows and down columns leaves the MLP's function
// unchanged, and permuting a quantized weight's rows equals quantizing the permuted rows.
TEST(Gptq, PermutationTrickPreservesTheMlp) {
  const int64_t hidden = 32, inter = 96, rows = 64;
  const auto gate = random_weight(inter, hidden, 31), up = random_weight(inter, hidden, 32);
  const auto down = random_weight(hidden, inter, 33);
  const auto x = correlated_inputs(rows, hidden, 34);
  auto mlp = [&](const std::vector<float>& g, const std::vector<float>& u,
                 const std::vector<float>& d) {
    std::vector<float> y(size_t(rows * hidden), 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<double> a(static_cast<size_t>(inter));
      for (int64_t i = 0; i < inter; ++i) {
        double sg = 0, su = 0;
        for (int64_t j = 0; j < hidden; ++j) {
          sg += double(x[size_t(r * hidden + j)]) * g[size_t(i * hidden + j)];
          su += double(x[size_t(r * hidden + j)]) * u[size_t(i * hidden + j)];
        }
        a[size_t(i)] = sg / (1.0 + std::exp(-sg)) * su;
      }
      for (int64_t o = 0; o < hidden; ++o) {
        double s = 0;
        for (int64_t i = 0; i < inter; ++i) s += a[size_t(i)] * d[size_t(o * inter + i)];
        y[size_t(r * hidden + o)] = float(s);
      }
    }
    return y;
  };
  // Order by the down input's Hessian diagonal.
  std::vector<double> hd(size_t(inter * inter), 0.0);
  for (int64_t i = 0; i < inter; ++i) hd[size_t(i * inter + i)] = double((i * 37) % inter);
  const auto perm = diag_order(hd.data(), inter);
  std::vector<float> g2(gate.size()), u2(up.size()), d2(down.size());
  for (int64_t i = 0; i < inter; ++i) {
    const int64_t p = perm[size_t(i)];
    std::copy_n(gate.begin() + p * hidden, hidden, g2.begin() + i * hidden);
    std::copy_n(up.begin() + p * hidden, hidden, u2.begin() + i * hidden);
    for (int64_t o = 0; o < hidden; ++o) d2[size_t(o * inter + i)] = down[size_t(o * inter + p)];
  }
  const auto y0 = mlp(gate, up, down), y1 = mlp(g2, u2, d2);
  for (size_t k = 0; k < y0.size(); ++k) EXPECT_NEAR(y0[k], y1[k], 1e-5f * (1 + std::fabs(y0[k])));
  QuantGrid g;
  const QuantizedWeight qg = quantize_grid_rtn(gate.data(), inter, hidden, 16, g);
  const QuantizedWeight qp = permute_rows(qg, perm);
  const QuantizedWeight qd = quantize_grid_rtn(g2.data(), inter, hidden, 16, g);
  EXPECT_EQ(qp.q8, qd.q8);
  EXPECT_EQ(qp.scales, qd.scales);
}

// slice_rows: the rows of a stacked quantization are the quantization of those rows (per-group
// asymmetric INT with zeros and bias; per-tensor fp8 keeps its one scale).
TEST(Gptq, SliceRowsOfAStackedWeight) {
  const int64_t out = 12, in = 32;
  const auto w = correlated_inputs(out, in, 77);
  QuantGrid g;
  g.symmetric = false;
  QuantizedWeight q = quantize_grid_rtn(w.data(), out, in, 16, g);
  for (int64_t r = 0; r < out; ++r) q.bias.push_back(float(r));
  const QuantizedWeight s = slice_rows(q, 4, 9);
  const QuantizedWeight ref = quantize_grid_rtn(w.data() + 4 * in, 5, in, 16, g);
  EXPECT_EQ(s.out, 5);
  EXPECT_EQ(s.qu, ref.qu);
  EXPECT_EQ(s.scales, ref.scales);
  EXPECT_EQ(s.zeros, ref.zeros);
  EXPECT_EQ(s.bias, (std::vector<float>{4, 5, 6, 7, 8}));
  const QuantizedWeight f = quantize_fp8_rtn(w.data(), out, in, 0, 0.01f);
  const QuantizedWeight fs = slice_rows(f, 10, 12);
  EXPECT_EQ(fs.scales, f.scales);
  EXPECT_EQ(fs.q8, std::vector<int8_t>(f.q8.begin() + 10 * in, f.q8.end()));
  EXPECT_THROW(slice_rows(q, 9, 4), Error);
  EXPECT_THROW(slice_rows(q, 0, out + 1), Error);
}

TEST(Gptq, HessianQuadTraceMatchesDefinition) {
  const int64_t n = 40, rows = 7;
  const auto x = correlated_inputs(rows, n, 41);
  const auto y = correlated_inputs(300, n, 42);
  const auto H = hessian_of(y, n);
  double ref = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        ref += double(x[size_t(r * n + i)]) * H[size_t(i * n + j)] * x[size_t(r * n + j)];
  EXPECT_NEAR(hessian_quad_trace(x.data(), rows, n, H.data()), ref, 1e-5 * std::fabs(ref));
  std::vector<float> zero(size_t(rows * n), 0.0f);
  EXPECT_EQ(relative_output_error(zero.data(), x.data(), rows, n, H.data()), 0.0);
}


// h_add: the solve sees H + diag(d) (the same codes as solving with that matrix), the report the
// H given. error_ref + error_ref_scales: the report measures against those weights and their
// plain rounding. report_rows: the same ratios per row range (the whole still reported).
TEST(Gptq, SolveDiagonalAndReportReferenceOptions) {
  const QuantGrid g = fp8_e4m3_grid();
  const int64_t n = 64, out = 30;
  const auto x = correlated_inputs(400, n, 51);
  const auto w = random_weight(out, n, 52);
  auto ref = random_weight(out, n, 53);
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = w[i] + 0.1f * ref[i];
  const auto H = hessian_of(x, n);
  std::vector<double> d(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) d[size_t(i)] = 0.01 * double(i % 7) * H[size_t(i * n + i)];
  std::vector<double> Hd = H;
  for (int64_t i = 0; i < n; ++i) Hd[size_t(i * n + i)] += d[size_t(i)];
  GptqOptions o;
  o.grid = g;
  o.group = 0;
  o.fixed_scales = quantize_fp8_rtn(w.data(), out, n, 0).scales;
  o.act_order = ActOrder::None;
  o.block_size = int(n);
  o.weighted_search = false;
  o.solver = GptqSolver::Cpu;
  const GptqResult plain = gptq_quantize(w.data(), out, n, Hd.data(), o);
  GptqOptions oa = o;
  oa.h_add = d;
  oa.error_ref = ref.data();
  oa.error_ref_scales = quantize_fp8_rtn(ref.data(), out, n, 0).scales;
  oa.report_rows = {0, 7, 19, out};
  const GptqResult r = gptq_quantize(w.data(), out, n, H.data(), oa);
  EXPECT_EQ(r.qw.q8, plain.qw.q8);
  EXPECT_EQ(r.report.damp, plain.report.damp);
  const std::vector<float> dq = r.qw.dequantize();
  const std::vector<float> dr = quantize_fp8_rtn(ref.data(), out, n, 0).dequantize();
  EXPECT_NEAR(r.report.rel_error, relative_output_error(ref.data(), dq.data(), out, n, H.data()),
              1e-6 * r.report.rel_error);
  EXPECT_NEAR(r.report.rel_error_rtn,
              relative_output_error(ref.data(), dr.data(), out, n, H.data()),
              1e-6 * r.report.rel_error_rtn);
  EXPECT_GT(std::fabs(r.report.rel_error - plain.report.rel_error), 1e-4);  // ref, not w
  ASSERT_EQ(r.report.rel_errors.size(), 3u);
  ASSERT_EQ(r.report.rel_errors_rtn.size(), 3u);
  for (size_t k = 0; k < 3; ++k) {
    const int64_t r0 = oa.report_rows[k], r1 = oa.report_rows[k + 1];
    const double e = relative_output_error(ref.data() + r0 * n, dq.data() + r0 * n, r1 - r0, n, H.data());
    const double er = relative_output_error(ref.data() + r0 * n, dr.data() + r0 * n, r1 - r0, n, H.data());
    EXPECT_NEAR(r.report.rel_errors[k], e, 1e-6 * e) << k;
    EXPECT_NEAR(r.report.rel_errors_rtn[k], er, 1e-6 * er) << k;
  }
  // Bad options are refused.
  GptqOptions bad = oa;
  bad.report_rows = {0, 10};
  EXPECT_THROW(gptq_quantize(w.data(), out, n, H.data(), bad), Error);
  bad = oa;
  bad.h_add.resize(3);
  EXPECT_THROW(gptq_quantize(w.data(), out, n, H.data(), bad), Error);
  bad = oa;
  bad.error_ref_scales.clear();
  EXPECT_THROW(gptq_quantize(w.data(), out, n, H.data(), bad), Error);
}

// ---- block level ----------------------------------------------------------------------------

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// The CUDA solver is asked for explicitly only on the CUDA device (tests/test_cuda.cpp compares
// it with this CPU solver on a GPU); the backend entry point checks its job.
TEST(Gptq, CudaSolverNeedsTheCudaDevice) {
  if (backend::device() == backend::Device::CUDA) GTEST_SKIP() << "device is cuda";
  const int64_t n = 64, out = 8;
  const auto w = random_weight(out, n, 3);
  const auto H = hessian_of(correlated_inputs(256, n, 4), n);
  GptqOptions o;
  o.group = 32;
  o.solver = GptqSolver::Cuda;
  EXPECT_NE(error_of([&] { gptq_quantize(w.data(), out, n, H.data(), o); }).find("solver cuda"),
            std::string::npos);
  o.solver = GptqSolver::Auto;  // CPU device: the CPU solver, same result as asking for it
  const GptqResult a = gptq_quantize(w.data(), out, n, H.data(), o);
  o.solver = GptqSolver::Cpu;
  EXPECT_EQ(a.qw.q8, gptq_quantize(w.data(), out, n, H.data(), o).qw.q8);
  backend::GptqSolveJob job;
  EXPECT_NE(error_of([&] { backend::cuda_gptq_solve(job); }).find("current device is cpu"),
            std::string::npos);
}

// qwen3-tiny block 0 with 8 windows of 64 real tokens (held-out text) as calibration inputs.
struct TinyBlock {
  Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  std::unique_ptr<Model> model = Model::load(ck);
  std::vector<float> x;
  int n = 8, seq = 64;
  TinyBlock() {
    const Tokenizer tok = Tokenizer::from_json_text(ck.aux_files.at("tokenizer.json"), "tiny");
    std::vector<int32_t> ids = tok.encode(read_text_file(test::data_path("eval/heldout.txt")).substr(0, 20000));
    ids.resize(size_t(n * seq));
    x.resize(ids.size() * size_t(model->config().hidden_size));
    model->embed(ids.data(), int64_t(ids.size()), x.data());
  }
  // Original dense weights of block 0.
  std::vector<float> weight(LinearSlot s) {
    return static_cast<const DenseLinear&>(*model->block(0).linear[int(s)]).weight();
  }
};

QuantSpec gptq_spec(QuantOverrides o = {}) { return resolve_spec(find_method("int4_gptq"), o); }

// Runs the GPTQ quantizer on block 0; the job is returned for inspection.
std::unique_ptr<BlockJob> run_block(TinyBlock& t, const QuantSpec& spec,
                                    std::unique_ptr<BlockQuantizer>* keep = nullptr) {
  auto job = std::make_unique<BlockJob>(*t.model, 0, spec, t.model->block(0));
  job->inputs = t.x.data();
  job->n_samples = t.n;
  job->seq = t.seq;
  job->batch = 4;
  std::unique_ptr<BlockQuantizer> q = find_method("int4_gptq").factory(spec);
  q->quantize_block(*job);
  if (keep) *keep = std::move(q);
  return job;
}

// Encodes with `layout`, decodes through the layout the written config names, compares.
void expect_layout_roundtrip(const QuantizedWeight& qw, const std::string& layout) {
  const Layout& l = find_layout(layout);
  MemoryTensorReader r;
  for (EncodedTensor& t : l.encode("m", qw)) r.add(std::move(t));
  QuantConfigSpec cs;
  cs.scheme = qw;
  const nlohmann::json qc = l.quantization_config(cs);
  const QuantizedWeight back = layout_for_config(qc, "test").decode(r, "m", qc, qw.out, qw.in);
  EXPECT_EQ(back.dequantize(), qw.dequantize()) << layout;
}

TEST(GptqBlock, QuantizesEverySlotBeatsRtnAndRoundTripsTheGptqLayout) {
  TinyBlock t;
  const QuantSpec spec = gptq_spec();
  EXPECT_EQ(spec.layout, "gptq");
  std::unique_ptr<BlockQuantizer> q;
  auto job = run_block(t, spec, &q);
  double sum = 0, sum_rtn = 0;
  for (int s = 0; s < test::kDenseModules; ++s) {
    ASSERT_TRUE(job->quantized[s].has_value()) << s;
    const QuantizedWeight& qw = *job->quantized[s];
    EXPECT_EQ(qw.bits, 4);
    EXPECT_TRUE(qw.symmetric);
    EXPECT_EQ(qw.group, 128);
    EXPECT_TRUE(qw.g_idx.empty());
    const nlohmann::json& r = job->report[s];
    EXPECT_FALSE(r["fallback_rtn"].get<bool>());
    EXPECT_EQ(r["rows"], t.n * t.seq);
    EXPECT_LE(r["rel_error"].get<double>(), 1.05 * r["rel_error_rtn"].get<double>()) << s;
    sum += r["rel_error"].get<double>();
    sum_rtn += r["rel_error_rtn"].get<double>();
    expect_layout_roundtrip(qw, "gptq");
  }
  EXPECT_LT(sum, 0.85 * sum_rtn);
  nlohmann::json summary = nlohmann::json::object();
  q->finish(summary);
  EXPECT_EQ(summary["gptq"]["linears"], 7);
  EXPECT_TRUE(summary["gptq"]["fallbacks_rtn"].empty());
  const nlohmann::json extra = q->config_extra();
  EXPECT_EQ(extra["damp_percent"], 0.01);
  EXPECT_EQ(extra["true_sequential"], true);
  EXPECT_EQ(extra["desc_act"], false);
}

TEST(GptqBlock, AsymmetricUsesCompressedTensorsAndRefusesTheGptqLayout) {
  QuantOverrides o;
  o.symmetric = false;
  o.bits = 3;
  const QuantSpec spec = gptq_spec(o);
  EXPECT_EQ(spec.layout, "compressed-tensors");
  TinyBlock t;
  auto job = run_block(t, spec);
  for (int s = 0; s < test::kDenseModules; ++s) {
    ASSERT_TRUE(job->quantized[s].has_value());
    EXPECT_FALSE(job->quantized[s]->symmetric);
    EXPECT_EQ(job->quantized[s]->bits, 3);
    expect_layout_roundtrip(*job->quantized[s], "compressed-tensors");
  }
  o.layout = "gptq";
  const QuantSpec bad = gptq_spec(o);
  EXPECT_NE(error_of([&] { find_method("int4_gptq").factory(bad); }).find("asymmetric"),
            std::string::npos);
}

TEST(GptqBlock, SolverRtnIsTheBaselineAndOptionsAreChecked) {
  QuantOverrides o;
  o.extra = {{"solver", "rtn"}};
  TinyBlock t;
  auto job = run_block(t, gptq_spec(o));
  for (int s = 0; s < test::kDenseModules; ++s)
    EXPECT_EQ(job->report[s]["rel_error"], job->report[s]["rel_error_rtn"]);
  for (nlohmann::json bad : {nlohmann::json{{"solver", "magic"}}, nlohmann::json{{"colour", 1}},
                             nlohmann::json{{"mse", -3}}, nlohmann::json{{"mse", "lots"}},
                             nlohmann::json{{"block_size", 0}}}) {
    QuantOverrides b;
    b.extra = bad;
    EXPECT_THROW(find_method("int4_gptq").factory(gptq_spec(b)), Error) << bad.dump();
  }
  QuantOverrides ao;
  ao.act_order = true;
  ao.extra = {{"act_order", "sideways"}};
  EXPECT_NE(error_of([&] { find_method("int4_gptq").factory(gptq_spec(ao)); }).find("sideways"),
            std::string::npos);
}

// act-order "permute": down's input channels reordered, gate/up rows reordered the same way, so
// the block keeps its function (checked at 8 bits, where quantization noise is tiny).
TEST(GptqBlock, ActOrderPermuteKeepsGateUpAndDownConsistent) {
  QuantOverrides o;
  o.bits = 8;
  o.act_order = true;
  o.extra = {{"act_order", "permute"}};
  TinyBlock t;
  const auto gate = t.weight(LinearSlot::Gate), down = t.weight(LinearSlot::Down);
  std::vector<float> ref;
  {
    BlockJob plain(*t.model, 0, gptq_spec(o), t.model->block(0));
    plain.inputs = t.x.data(), plain.n_samples = t.n, plain.seq = t.seq;
    plain.run(nullptr, &ref);
  }
  auto job = run_block(t, gptq_spec(o));
  EXPECT_TRUE(job->report[int(LinearSlot::Down)]["permuted_input_channels"].get<bool>());
  const int64_t F = 384, Hd = 128;
  const auto gq = job->quantized[int(LinearSlot::Gate)]->dequantize();
  const auto dq = job->quantized[int(LinearSlot::Down)]->dequantize();
  // Recover the permutation from gate's rows and check down's columns follow it.
  int moved = 0;
  for (int64_t i = 0; i < F; ++i) {
    int64_t best = -1;
    double bd = 1e300;
    for (int64_t j = 0; j < F; ++j) {
      double d = 0;
      for (int64_t k = 0; k < Hd; ++k) {
        const double e = gq[size_t(i * Hd + k)] - gate[size_t(j * Hd + k)];
        d += e * e;
      }
      if (d < bd) bd = d, best = j;
    }
    moved += best != i;
    for (int64_t r = 0; r < Hd; ++r)
      ASSERT_NEAR(dq[size_t(r * F + i)], down[size_t(r * F + best)], 0.02) << i;
  }
  EXPECT_GT(moved, F / 2) << "the permutation should reorder most channels";
  std::vector<float> got;
  job->run(nullptr, &got);
  double num = 0, den = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    num += (got[k] - ref[k]) * (got[k] - ref[k]);
    den += ref[k] * ref[k];
  }
  EXPECT_LT(num / den, 1e-4);
  EXPECT_TRUE(job->quantized[int(LinearSlot::Down)]->g_idx.empty());
}

// With gate/up left dense (ignored), the permutation is folded into their dense rows instead.
TEST(GptqBlock, ActOrderPermuteWithDenseGateUp) {
  QuantOverrides o;
  o.bits = 8;
  o.act_order = true;
  o.extra = {{"act_order", "permute"}};
  TinyBlock t;
  const auto gate = t.weight(LinearSlot::Gate);
  std::vector<float> ref, got;
  auto job = std::make_unique<BlockJob>(*t.model, 0, gptq_spec(o), t.model->block(0));
  job->inputs = t.x.data(), job->n_samples = t.n, job->seq = t.seq;
  job->run(nullptr, &ref);
  job->ignored = [](LinearSlot s) { return s == LinearSlot::Gate || s == LinearSlot::Up; };
  find_method("int4_gptq").factory(gptq_spec(o))->quantize_block(*job);
  EXPECT_FALSE(job->quantized[int(LinearSlot::Gate)].has_value());
  EXPECT_NE(job->dense(LinearSlot::Gate).weight(), gate) << "rows were permuted";
  job->run(nullptr, &got);
  double num = 0, den = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    num += (got[k] - ref[k]) * (got[k] - ref[k]);
    den += ref[k] * ref[k];
  }
  EXPECT_LT(num / den, 1e-4);
}

TEST(GptqBlock, ActOrderDynamicStoresGIdxAndStaticDoesNot) {
  QuantOverrides o;
  o.act_order = true;
  o.extra = {{"act_order", "dynamic"}};
  TinyBlock t;
  std::unique_ptr<BlockQuantizer> q;
  auto job = run_block(t, gptq_spec(o), &q);
  EXPECT_EQ(q->config_extra()["desc_act"], true);
  for (int s = 0; s < test::kDenseModules; ++s) {
    const QuantizedWeight& qw = *job->quantized[s];
    ASSERT_EQ(qw.g_idx.size(), size_t(qw.in));
    expect_layout_roundtrip(qw, "gptq");
  }
  TinyBlock t2;
  o.extra = {{"act_order", "static"}};
  auto job2 = run_block(t2, gptq_spec(o), &q);
  EXPECT_EQ(q->config_extra()["static_groups"], true);
  EXPECT_EQ(q->config_extra()["desc_act"], false);
  for (int s = 0; s < test::kDenseModules; ++s) EXPECT_TRUE(job2->quantized[s]->g_idx.empty());
}

TEST(GptqBlock, NoTrueSequentialAndIgnoredSlots) {
  QuantOverrides o;
  o.true_sequential = false;
  TinyBlock t;
  auto job = std::make_unique<BlockJob>(*t.model, 0, gptq_spec(o), t.model->block(0));
  job->inputs = t.x.data(), job->n_samples = t.n, job->seq = t.seq;
  job->ignored = [](LinearSlot s) { return s == LinearSlot::K || s == LinearSlot::Up; };
  find_method("int4_gptq").factory(gptq_spec(o))->quantize_block(*job);
  for (int s = 0; s < test::kDenseModules; ++s)
    EXPECT_EQ(job->quantized[s].has_value(), s != int(LinearSlot::K) && s != int(LinearSlot::Up));
  // One pass: o's Hessian comes from the unquantized q/k/v, so o's error differs from the
  // true-sequential run.
  TinyBlock t2;
  auto seq = run_block(t2, gptq_spec());
  EXPECT_NE(job->report[int(LinearSlot::O)]["rel_error"], seq->report[int(LinearSlot::O)]["rel_error"]);
}

// ---- end to end on qwen3-tiny: GPTQ beats RTN at 4, 3 and 2 bits ---------------------------

double tiny_ppl_ratio(const std::string& tag, QuantOverrides o) {
  QuantizeOptions q;
  q.input = test::model_dir("qwen3-tiny");
  q.output = test::temp_dir("gptq-e2e-" + tag) / "out";
  q.method = "int4_gptq";
  q.overrides = std::move(o);
  q.num_samples = 32;
  q.seq_len = 128;
  q.quality.data = test::data_path("eval/heldout.txt");
  q.quality.tokens = 32 * 256;
  q.quality.seq_len = 256;
  const QuantizeResult r = quantize_and_check(q);
  EXPECT_TRUE(r.quality.measured);
  EXPECT_EQ(r.quantized_linears, 28);
  EXPECT_TRUE(r.report["summary"]["gptq"]["fallbacks_rtn"].empty());
  EXPECT_EQ(r.report["layers"].size(), 28u);
  std::printf("  %-24s ppl ratio %.5f\n", tag.c_str(), r.quality.ppl_ratio);
  return r.quality.ppl_ratio;
}

class GptqEndToEnd : public ::testing::TestWithParam<int> {};

TEST_P(GptqEndToEnd, BeatsRtnOnHeldOutPerplexity) {
  const int bits = GetParam();
  QuantOverrides o;
  o.bits = bits;
  o.symmetric = false;
  if (bits == 2) o.group = 64;
  QuantOverrides rtn = o;
  rtn.extra = {{"solver", "rtn"}, {"mse", 0}};
  const double r_rtn = tiny_ppl_ratio("rtn-" + std::to_string(bits), rtn);
  const double r_gptq = tiny_ppl_ratio("gptq-" + std::to_string(bits), o);
  EXPECT_LT(r_gptq, r_rtn);
}

INSTANTIATE_TEST_SUITE_P(Bits, GptqEndToEnd, ::testing::Values(4, 3, 2));

}  // namespace
}  // namespace llmc
