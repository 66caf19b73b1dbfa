// eval/generate.h — text continuation with a KV cache (greedy or temperature / top-p sampling).
//
// generate() runs the prompt once (prefill), then one token per step through
// Model::forward_cached. It stops after max_tokens tokens or right after emitting a token in
// stop_ids (that token is included). Greedy (temperature <= 0) picks the first argmax and
// equals the argmax of a full forward recomputation at every step. Sampling is deterministic
// for a given seed. An empty prompt, or one longer than max_position_embeddings, throws
// llmc::Error; generation also stops when max_position_embeddings positions are filled.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "model/model.h"

namespace llmc {

struct GenerateOptions {
  int max_tokens = 64;
  double temperature = 0.0;  // <= 0: greedy
  double top_p = 1.0;        // nucleus: smallest set of tokens with probability >= top_p
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // e.g. eos_token_id(s)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated tokens only
  bool stopped = false;         // ended on a stop id
  double prefill_seconds = 0, decode_seconds = 0;
};

// Picks the next token from one row of logits.
int32_t sample_token(const float* logits, int vocab, double temperature, double top_p,
                     std::mt19937_64& rng);

GenerateResult generate(Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opts,
                        const std::function<void(int32_t)>& on_token = {});

}  // namespace llmc
