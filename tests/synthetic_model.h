// Test helper: in-memory checkpoints with random weights for any supported config.
#pragma once
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "model/arch.h"
#include "model/config.h"

namespace llmc::test {

using nlohmann::json;

class MemReader : public TensorReader {
 public:
  void put(const std::string& name, const Shape& shape, const std::vector<float>& v,
           DType dt = DType::F32) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(v.size() * dtype_size(dt));
    convert(DType::F32, v.data(), dt, bytes->data(), v.size());
    TensorInfo info{name, dt, shape, bytes->size()};
    if (!index_.count(name)) infos_.push_back(info);
    index_[name] = {info, bytes};
  }
  void erase(const std::string& name) {
    index_.erase(name);
    std::erase_if(infos_, [&](const TensorInfo& i) { return i.name == name; });
  }
  const std::vector<TensorInfo>& list() const override { return infos_; }
  bool has(const std::string& name) const override { return index_.count(name) != 0; }
  TensorRef get(const std::string& name) const override {
    auto it = index_.find(name);
    if (it == index_.end()) fail("mem: no tensor ", name);
    TensorRef r;
    r.info = it->second.first;
    r.data = it->second.second->data();
    r.keepalive = it->second.second;
    return r;
  }
  std::string origin() const override { return "mem.safetensors"; }

 private:
  std::vector<TensorInfo> infos_;
  std::map<std::string, std::pair<TensorInfo, std::shared_ptr<std::vector<uint8_t>>>> index_;
};

inline std::vector<float> randn(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Random weights for any config (bias for q/k/v when cfg says so, q/k norms for qk_norm).
inline Checkpoint synthetic_checkpoint(const json& config, uint32_t seed = 1, DType dt = DType::F32) {
  const ModelConfig c = ModelConfig::from_json(config, "synthetic/config.json");
  std::mt19937 rng(seed);
  auto mem = std::make_unique<MemReader>();
  const int64_t H = c.hidden_size, V = c.vocab_size;
  auto norm = [&](int64_t n) {
    auto v = randn(n, 0.1f, rng);
    for (auto& x : v) x += 1.0f;
    return v;
  };
  mem->put("model.embed_tokens.weight", {V, H}, randn(V * H, 1.0f, rng), dt);
  mem->put("model.norm.weight", {H}, norm(H), dt);
  if (!c.tie_word_embeddings) mem->put("lm_head.weight", {V, H}, randn(V * H, 0.1f, rng), dt);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    // Every linear of the block as the architecture table describes it (dense or MoE).
    const BlockLayout bl = block_layout(arch_for(c.architecture, "synthetic"), c, l);
    for (const BlockModule& m : bl.modules)
      mem->put(p + m.name + ".weight", {m.out, m.in}, randn(m.out * m.in, 1.0f / std::sqrt(float(m.in)), rng), dt);
    for (const BlockModule& m : bl.modules)
      if (m.bias) mem->put(p + m.name + ".bias", {m.out}, randn(m.out, 0.5f, rng), dt);
    mem->put(p + "input_layernorm.weight", {H}, norm(H), dt);
    mem->put(p + "post_attention_layernorm.weight", {H}, norm(H), dt);
    if (c.qk_norm) {
      mem->put(p + "self_attn.q_norm.weight", {c.head_dim}, norm(c.head_dim), dt);
      mem->put(p + "self_attn.k_norm.weight", {c.head_dim}, norm(c.head_dim), dt);
    }
  }
  Checkpoint ck;
  ck.path = "synthetic";
  ck.config = config;
  ck.tensors = std::move(mem);
  return ck;
}

inline MemReader& mem_of(Checkpoint& ck) { return static_cast<MemReader&>(*ck.tensors); }

}  // namespace llmc::test
