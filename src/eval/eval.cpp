#include "eval/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "backend/cpu/kernels.h"
#include "backend/cpu/vmath.h"
#include "calib/calib_data.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"

namespace llmc {

void check_finite_ppl(double ppl, const std::string& what) {
  if (!std::isfinite(ppl))
    fail(what, ": perplexity is ", std::isnan(ppl) ? "nan" : "inf",
         " (the model's predictions are not finite: broken or corrupt weights?)");
}

int count_windows(size_t n_tokens, int ctx, int max_windows) {
  if (ctx < 2) fail("eval: context ", ctx, " is too short (at least 2 tokens)");
  const size_t w = n_tokens / size_t(ctx);
  if (w == 0) fail("eval: only ", n_tokens, " tokens, fewer than one window of ", ctx);
  return int(max_windows > 0 ? std::min<size_t>(w, size_t(max_windows)) : w);
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int windows_per_pass(int ctx, int windows, const EvalOptions& o) {
  const int b = o.batch_windows > 0 ? o.batch_windows : std::max(1, 4096 / ctx);
  return std::min(b, windows);
}

int64_t logit_chunk_rows(int vocab) {
  return std::clamp<int64_t>((int64_t(1) << 21) / std::max(vocab, 1), 64, 1024);
}

// Hidden states after the final norm for `batch` windows of ctx tokens: [batch*ctx, hidden].
void final_hidden(Model& m, const int32_t* ids, int batch, int ctx, std::vector<float>* h) {
  const int64_t rows = int64_t(batch) * ctx;
  h->resize(size_t(rows) * m.config().hidden_size);
  m.embed(ids, rows, h->data());
  for (int l = 0; l < m.config().num_layers; ++l) m.run_block(l, h->data(), batch, ctx);
  m.final_norm(h->data(), rows);
}

// KL(P_r || P_a) of one position from both models' logits, in double:
// sum_v p_r(v) (lr_v - la_v) - (lse_r - lse_a). lse_r uses the same code as log_sum_exp, so a
// model compared with itself gives exactly 0.
double kl_row(const float* la, const float* lr, int64_t n, double lse_a, double* lse_r_out) {
  const float mx = cpu::max_value(lr, n);
  const double S = cpu::sum_exp_shifted(lr, n, mx);
  const double T = cpu::sum_exp_shifted_times_diff(lr, la, n, mx);
  const double lse_r = double(mx) + std::log(S);
  *lse_r_out = lse_r;
  return T / S - (lse_r - lse_a);
}

double percentile(std::vector<float> v, double q) {
  if (v.empty()) return 0;
  size_t k = size_t(std::ceil(q * double(v.size()))) ;
  k = std::clamp<size_t>(k, 1, v.size()) - 1;
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

void check_tokens_fit(const Model& m, int ctx) {
  check_window_length("eval context", ctx, m.config().max_position_embeddings);
}

}  // namespace

PplResult evaluate_ppl(Model& model, const std::vector<int32_t>& tokens, int ctx,
                       int max_windows, const EvalOptions& opts) {
  const auto t0 = Clock::now();
  PplResult r;
  r.tokens = int64_t(tokens.size());
  r.ctx = ctx;
  r.windows = count_windows(tokens.size(), ctx, max_windows);
  check_tokens_fit(model, ctx);
  const int V = model.config().vocab_size, H = model.config().hidden_size;
  const int B = windows_per_pass(ctx, r.windows, opts);
  const int64_t chunk = logit_chunk_rows(V);
  std::unique_ptr<Progress> bar;
  if (opts.progress) bar = std::make_unique<Progress>(opts.label, uint64_t(r.windows) * ctx, "tok");
  std::vector<float> h, logits(size_t(chunk) * V);
  std::vector<double> nll(chunk);
  double sum = 0;
  for (int w0 = 0; w0 < r.windows; w0 += B) {
    const int b = std::min(B, r.windows - w0);
    const int32_t* ids = tokens.data() + size_t(w0) * ctx;
    final_hidden(model, ids, b, ctx, &h);
    const int64_t rows = int64_t(b) * ctx;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      model.lm_head(h.data() + r0 * H, n, logits.data());
      parallel_for(0, size_t(n), 8, [&](size_t i0, size_t i1) {
        for (size_t i = i0; i < i1; ++i) {
          const int64_t row = r0 + int64_t(i);
          if (row % ctx == ctx - 1) { nll[i] = 0; continue; }
          const float* l = logits.data() + i * V;
          nll[i] = cpu::log_sum_exp(l, V) - double(l[ids[row + 1]]);
        }
      });
      for (int64_t i = 0; i < n; ++i) sum += nll[i];
    }
    if (bar) bar->step(uint64_t(b) * ctx);
  }
  if (bar) bar->finish();
  r.predicted = int64_t(r.windows) * (ctx - 1);
  r.mean_nll = sum / double(r.predicted);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = seconds_since(t0);
  return r;
}

CompareResult compare_models(Model& model, Model& reference, const std::vector<int32_t>& tokens,
                             int ctx, int max_windows, const EvalOptions& opts) {
  const auto t0 = Clock::now();
  const int V = model.config().vocab_size, H = model.config().hidden_size;
  if (reference.config().vocab_size != V)
    fail("eval: the model's vocabulary (", V, ") differs from the reference's (",
         reference.config().vocab_size, ")");
  const int HR = reference.config().hidden_size;
  CompareResult c;
  const int windows = count_windows(tokens.size(), ctx, max_windows);
  check_tokens_fit(model, ctx);
  check_tokens_fit(reference, ctx);
  const int B = windows_per_pass(ctx, windows, opts);
  const int64_t chunk = logit_chunk_rows(V);
  std::unique_ptr<Progress> bar;
  if (opts.progress) bar = std::make_unique<Progress>(opts.label, uint64_t(windows) * ctx, "tok");
  std::vector<float> ha, hr, la(size_t(chunk) * V), lr(size_t(chunk) * V);
  std::vector<double> nll_a(chunk), nll_r(chunk), kl(chunk);
  std::vector<uint8_t> agree(chunk);
  std::vector<float> kls;
  kls.reserve(size_t(windows) * (ctx - 1));
  double sum_a = 0, sum_r = 0, sum_kl = 0, max_kl = -INFINITY;
  int64_t agreed = 0;
  for (int w0 = 0; w0 < windows; w0 += B) {
    const int b = std::min(B, windows - w0);
    const int32_t* ids = tokens.data() + size_t(w0) * ctx;
    final_hidden(model, ids, b, ctx, &ha);
    final_hidden(reference, ids, b, ctx, &hr);
    const int64_t rows = int64_t(b) * ctx;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      model.lm_head(ha.data() + r0 * H, n, la.data());
      reference.lm_head(hr.data() + r0 * HR, n, lr.data());
      parallel_for(0, size_t(n), 8, [&](size_t i0, size_t i1) {
        for (size_t i = i0; i < i1; ++i) {
          const int64_t row = r0 + int64_t(i);
          if (row % ctx == ctx - 1) continue;
          const float* a = la.data() + i * V;
          const float* r = lr.data() + i * V;
          const double lse_a = cpu::log_sum_exp(a, V);
          double lse_r = 0;
          kl[i] = kl_row(a, r, V, lse_a, &lse_r);
          const int32_t target = ids[row + 1];
          nll_a[i] = lse_a - double(a[target]);
          nll_r[i] = lse_r - double(r[target]);
          agree[i] = cpu::argmax(a, V) == cpu::argmax(r, V);
        }
      });
      for (int64_t i = 0; i < n; ++i) {
        if ((r0 + i) % ctx == ctx - 1) continue;
        sum_a += nll_a[i];
        sum_r += nll_r[i];
        sum_kl += kl[i];
        max_kl = std::max(max_kl, kl[i]);
        agreed += agree[i];
        kls.push_back(float(kl[i]));
      }
    }
    if (bar) bar->step(uint64_t(b) * ctx);
  }
  if (bar) bar->finish();
  const int64_t P = int64_t(windows) * (ctx - 1);
  for (PplResult* p : {&c.model, &c.reference}) {
    p->tokens = int64_t(tokens.size());
    p->ctx = ctx;
    p->windows = windows;
    p->predicted = P;
  }
  c.model.mean_nll = sum_a / double(P);
  c.reference.mean_nll = sum_r / double(P);
  c.model.ppl = std::exp(c.model.mean_nll);
  c.reference.ppl = std::exp(c.reference.mean_nll);
  c.ppl_ratio = c.model.ppl / c.reference.ppl;
  c.positions = P;
  c.kl_mean = sum_kl / double(P);
  c.kl_median = percentile(kls, 0.5);
  c.kl_p99 = percentile(kls, 0.99);
  c.kl_max = max_kl;
  c.top1_agreement = double(agreed) / double(P);
  c.seconds = c.model.seconds = c.reference.seconds = seconds_since(t0);
  return c;
}

nlohmann::json to_json(const PplResult& r) {
  return {{"tokens", r.tokens},     {"ctx", r.ctx},           {"windows", r.windows},
          {"predicted", r.predicted}, {"mean_nll", r.mean_nll}, {"ppl", r.ppl},
          {"seconds", r.seconds}};
}

nlohmann::json to_json(const CompareResult& r) {
  nlohmann::json a = to_json(r.model), b = to_json(r.reference);
  a.erase("seconds");
  b.erase("seconds");
  return {{"model", a},
          {"reference", b},
          {"ppl_ratio", r.ppl_ratio},
          {"kl", {{"mean", r.kl_mean}, {"median", r.kl_median}, {"p99", r.kl_p99}, {"max", r.kl_max}}},
          {"top1_agreement", r.top1_agreement},
          {"positions", r.positions},
          {"seconds", r.seconds}};
}

}  // namespace llmc
