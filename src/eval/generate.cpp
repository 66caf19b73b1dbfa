#include "eval/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "backend/cpu/kernels.h"
#include "backend/cpu/vmath.h"
#include "core/error.h"

namespace llmc {

int32_t sample_token(const float* logits, int vocab, double temperature, double top_p,
                     std::mt19937_64& rng) {
  if (vocab <= 0) fail("sample_token: empty vocabulary");
  if (!(temperature > 0)) return int32_t(cpu::argmax(logits, vocab));
  if (!(top_p > 0) || top_p > 1) fail("top_p must be in (0, 1], got ", top_p);
  const double mx = cpu::max_value(logits, vocab);
  std::vector<double> p(vocab);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += (p[i] = std::exp((double(logits[i]) - mx) / temperature));
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  int keep = vocab;
  if (top_p < 1) {
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return p[a] > p[b] || (p[a] == p[b] && a < b);
    });
    double cum = 0;
    for (keep = 0; keep < vocab;) {
      cum += p[order[keep++]] / sum;
      if (cum >= top_p) break;
    }
  }
  double kept = 0;
  for (int i = 0; i < keep; ++i) kept += p[order[i]];
  const double u = std::uniform_real_distribution<double>(0.0, kept)(rng);
  double acc = 0;
  for (int i = 0; i < keep; ++i) {
    acc += p[order[i]];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

GenerateResult generate(Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opts, const std::function<void(int32_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  if (prompt.empty()) fail("generate: the prompt is empty (no tokens)");
  if (opts.max_tokens < 0) fail("generate: max_tokens must be >= 0");
  const ModelConfig& c = model.config();
  const int64_t want = int64_t(prompt.size()) + opts.max_tokens;
  if (int64_t(prompt.size()) > c.max_position_embeddings)
    fail("generate: the prompt has ", prompt.size(), " tokens, more than max_position_embeddings (",
         c.max_position_embeddings, ")");
  const int capacity = int(std::min<int64_t>(want, c.max_position_embeddings));
  GenerateResult r;
  std::mt19937_64 rng(opts.seed);
  KVCache cache = model.new_cache(1, capacity);
  auto t0 = Clock::now();
  std::vector<float> logits = model.forward_cached(prompt, 1, int(prompt.size()), cache);
  r.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  while (int(r.tokens.size()) < opts.max_tokens) {
    const int32_t next = sample_token(logits.data(), c.vocab_size, opts.temperature, opts.top_p, rng);
    r.tokens.push_back(next);
    if (on_token) on_token(next);
    if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), next) != opts.stop_ids.end()) {
      r.stopped = true;
      break;
    }
    if (cache.length >= cache.capacity) break;  // max_position_embeddings reached
    if (int(r.tokens.size()) == opts.max_tokens) break;
    logits = model.forward_cached({next}, 1, 1, cache);
  }
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

}  // namespace llmc
