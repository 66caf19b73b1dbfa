// model/model.cpp — the decoder-only transformer (Llama / Qwen2 / Qwen3) on the CPU backend.
#include "model/model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/threads.h"
#include "model/arch.h"

namespace llmc {

std::vector<float> read_f32_tensor(const TensorReader& reader, const std::string& name,
                                   const Shape& expect) {
  if (!reader.has(name)) fail(reader.origin(), ": tensor ", name, " is missing");
  TensorRef ref = reader.get(name);
  if (!dtype_traits(ref.info.dtype).is_float)
    fail(reader.origin(), ": tensor ", name, " has dtype ", dtype_name(ref.info.dtype),
         ", expected a float type");
  if (ref.info.shape != expect)
    fail(reader.origin(), ": tensor ", name, " has shape ", shape_str(ref.info.shape),
         ", expected ", shape_str(expect));
  std::vector<float> v = ref.to_f32();
  std::atomic<int64_t> bad{-1};
  parallel_for(0, v.size(), 1 << 16, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i)
      if (!std::isfinite(v[i])) {
        int64_t expected = -1;
        bad.compare_exchange_strong(expected, int64_t(i));
        return;
      }
  });
  if (bad >= 0)
    fail(reader.origin(), ": tensor ", name, " holds a non-finite value (", v[bad.load()],
         " at element ", bad.load(), ")");
  return v;
}

std::shared_ptr<Linear> LinearFactory::make(const TensorReader& tensors, const std::string& prefix,
                                            int64_t out, int64_t in) const {
  std::vector<float> w = read_f32_tensor(tensors, prefix + ".weight", {out, in});
  std::vector<float> b;
  if (tensors.has(prefix + ".bias")) b = read_f32_tensor(tensors, prefix + ".bias", {out});
  return std::make_shared<DenseLinear>(std::move(w), out, in, std::move(b));
}

namespace {

// lm_head tied to the embedding matrix: a view, not a copy.
class TiedHead : public Linear {
 public:
  TiedHead(const std::vector<float>* w, int64_t out, int64_t in) : w_(w), out_(out), in_(in) {}
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const float* x, int64_t rows, float* y) const override {
    gemm_xwt(x, rows, in_, w_->data(), out_, y);
  }
  uint64_t bytes_held() const override { return 0; }  // counted as the embedding

 private:
  const std::vector<float>* w_;
  int64_t out_, in_;
};

// Grow-only scratch buffer (no zero fill of reused memory).
struct Buf {
  std::unique_ptr<float[]> p;
  size_t n = 0;
  float* get(size_t want) {
    if (want > n) {
      p.reset(new float[want]);
      n = want;
    }
    return p.get();
  }
};

class TransformerModel final : public Model {
 public:
  TransformerModel(const Checkpoint& ckpt, std::shared_ptr<const LinearFactory> factory,
                   bool blocks_only)
      : ckpt_(ckpt), factory_(std::move(factory)) {
    if (!ckpt.tensors) fail(ckpt.path.string(), ": checkpoint has no tensors");
    const std::string origin = ckpt.format == CheckpointFormat::HF
                                   ? (ckpt.path / "config.json").string()
                                   : ckpt.path.string() + " (config.json)";
    cfg_ = ModelConfig::from_json(ckpt.config, origin);
    arch_ = &arch_for(cfg_.architecture, origin);
    if (!factory_) factory_ = std::make_shared<LinearFactory>();
    blocks_.resize(cfg_.num_layers);
    inv_freq_ = cpu::rope_inv_freq(cfg_.rope, cfg_.head_dim);
    if (!blocks_only) load_io();
  }

  // Embeddings, final norm and lm_head (Model::load; skipped for blocks_only).
  void load_io() {
    const TensorReader& t = *ckpt_.tensors;
    const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
    embed_ = read_f32_tensor(t, arch_->embed, {V, H});
    norm_ = read_f32_tensor(t, arch_->final_norm, {H});
    if (cfg_.tie_word_embeddings) {
      head_ = std::make_shared<TiedHead>(&embed_, V, H);
    } else {
      head_ = factory_->make(t, arch_->lm_head, V, H);
      check_linear(*head_, arch_->lm_head, V, H);
    }
    io_ = true;
  }
  void need_io() const {
    if (!io_) fail("model loaded with blocks only: no embeddings or lm_head");
  }

  const ModelConfig& config() const override { return cfg_; }

  void embed(const int32_t* ids, int64_t rows, float* hidden) const override {
    need_io();
    const int64_t H = cfg_.hidden_size;
    for (int64_t r = 0; r < rows; ++r)
      if (ids[r] < 0 || ids[r] >= cfg_.vocab_size)
        fail("token id ", ids[r], " at position ", r, " is outside the vocabulary [0, ",
             cfg_.vocab_size, ")");
    parallel_for(0, size_t(rows), 64, [&](size_t r0, size_t r1) {
      for (size_t r = r0; r < r1; ++r)
        std::memcpy(hidden + r * H, embed_.data() + size_t(ids[r]) * H, H * sizeof(float));
    });
  }

  void run_block(int layer, float* hidden, int batch, int seq, const LinearHook* hook) override {
    check_layer(layer);
    check_shape(batch, seq, 0);
    block_forward(layer, hidden, batch, seq, 0, hook, nullptr);
  }

  bool run_block_device(int layer, const float* in, float* out, int n_samples, int seq, int batch,
                        const LinearHook* hook, int stop_after) override {
    check_layer(layer);
    check_shape(n_samples, seq, 0);
    if (backend::device() != backend::Device::CUDA)
      fail("run_block_device: the device is ", backend::device_name(backend::device()));
    LLMC_CHECK(stop_after < 0 || out == nullptr, "run_block_device: stop_after with outputs");
    BlockWeights& w = block(layer);
    std::array<Linear::DenseForm, kNumLinearSlots> forms;
    for (int s = 0; s < kNumLinearSlots; ++s) {
      forms[s] = w.linear[s]->dense_form();
      if (!forms[s].weight) return false;
    }
    upload_block(layer, w, forms);
    ensure_rope(seq);
    if (dev_rope_len_ != rope_len_) {
      dcos_.reserve(int64_t(cos_.size()));
      dsin_.reserve(int64_t(sin_.size()));
      dcos_.upload(cos_.data(), int64_t(cos_.size()));
      dsin_.upload(sin_.data(), int64_t(sin_.size()));
      dev_rope_len_ = rope_len_;
    }
    const int b = std::max(1, std::min(batch, n_samples));
    const int64_t per = int64_t(seq) * cfg_.hidden_size;
    if (!out) dh_.reserve(b * per);
    for (int s0 = 0; s0 < n_samples; s0 += b) {
      const int n = std::min(b, n_samples - s0);
      float* h = out ? out + s0 * per : dh_.data();
      if (h != in + s0 * per) backend::dev::copy(h, in + s0 * per, n * per);
      block_forward_device(layer, h, n, seq, hook, stop_after);
    }
    return true;
  }

  void release_device_weights() override { dblk_ = DevBlock(); }

  void final_norm(float* hidden, int64_t rows) const override {
    need_io();
    cpu::rms_norm(hidden, norm_.data(), rows, cfg_.hidden_size, cfg_.rms_norm_eps, hidden);
  }

  void lm_head(const float* hidden, int64_t rows, float* logits) const override {
    need_io();
    head_->forward(hidden, rows, logits);
  }

  std::vector<float> forward(const std::vector<int32_t>& ids, int batch, int seq) override {
    check_shape(batch, seq, 0);
    const int64_t rows = int64_t(batch) * seq;
    if (int64_t(ids.size()) != rows)
      fail("forward: ", ids.size(), " token ids for batch ", batch, " x seq ", seq);
    std::vector<float> h(size_t(rows) * cfg_.hidden_size);
    embed(ids.data(), rows, h.data());
    for (int l = 0; l < cfg_.num_layers; ++l) block_forward(l, h.data(), batch, seq, 0, nullptr, nullptr);
    final_norm(h.data(), rows);
    std::vector<float> logits(size_t(rows) * cfg_.vocab_size);
    lm_head(h.data(), rows, logits.data());
    return logits;
  }

  KVCache new_cache(int batch, int capacity) const override {
    if (batch <= 0 || capacity <= 0) fail("KV cache: batch ", batch, " and capacity ", capacity, " must be positive");
    if (capacity > cfg_.max_position_embeddings)
      fail("KV cache: capacity ", capacity, " exceeds max_position_embeddings ",
           cfg_.max_position_embeddings);
    KVCache c;
    c.batch = batch;
    c.capacity = capacity;
    c.kv_dim = int64_t(cfg_.num_kv_heads) * cfg_.head_dim;
    const size_t n = size_t(batch) * capacity * c.kv_dim;
    c.k.assign(cfg_.num_layers, std::vector<float>(n));
    c.v.assign(cfg_.num_layers, std::vector<float>(n));
    return c;
  }

  std::vector<float> forward_cached(const std::vector<int32_t>& ids, int batch, int seq,
                                    KVCache& cache, bool all_positions) override {
    if (cache.batch != batch || cache.kv_dim != int64_t(cfg_.num_kv_heads) * cfg_.head_dim ||
        int(cache.k.size()) != cfg_.num_layers || int(cache.v.size()) != cfg_.num_layers)
      fail("forward_cached: the KV cache was not made for this model and batch ", batch);
    check_shape(batch, seq, cache.length);
    if (cache.length + seq > cache.capacity)
      fail("forward_cached: ", cache.length, " + ", seq, " positions exceed the KV cache capacity ",
           cache.capacity);
    const int64_t rows = int64_t(batch) * seq, H = cfg_.hidden_size;
    if (int64_t(ids.size()) != rows)
      fail("forward_cached: ", ids.size(), " token ids for batch ", batch, " x seq ", seq);
    std::vector<float> h(size_t(rows) * H);
    embed(ids.data(), rows, h.data());
    for (int l = 0; l < cfg_.num_layers; ++l)
      block_forward(l, h.data(), batch, seq, cache.length, nullptr, &cache);
    cache.length += seq;
    int64_t out_rows = rows;
    if (!all_positions && seq > 1) {
      for (int b = 0; b < batch; ++b)
        std::memmove(h.data() + size_t(b) * H, h.data() + (size_t(b) * seq + seq - 1) * H,
                     H * sizeof(float));
      out_rows = batch;
    }
    final_norm(h.data(), out_rows);
    std::vector<float> logits(size_t(out_rows) * cfg_.vocab_size);
    lm_head(h.data(), out_rows, logits.data());
    return logits;
  }

  BlockWeights& block(int layer) override {
    check_layer(layer);
    if (!blocks_[layer]) blocks_[layer] = std::make_unique<BlockWeights>(load_block(layer));
    return *blocks_[layer];
  }

  void set_block(int layer, BlockWeights w) override {
    check_layer(layer);
    check_block(layer, w);
    blocks_[layer] = std::make_unique<BlockWeights>(std::move(w));
  }

  void release_block(int layer) override {
    check_layer(layer);
    blocks_[layer].reset();
  }

  uint64_t bytes_held() const override {
    uint64_t n = (embed_.size() + norm_.size()) * sizeof(float) + (head_ ? head_->bytes_held() : 0);
    for (const auto& b : blocks_) {
      if (!b) continue;
      for (const auto& l : b->linear) n += l ? l->bytes_held() : 0;
      n += (b->input_norm.size() + b->post_norm.size() + b->q_norm.size() + b->k_norm.size()) *
           sizeof(float);
    }
    return n;
  }

 private:
  struct Dims {
    int64_t out, in;
  };
  Dims slot_dims(LinearSlot s) const {
    const int64_t H = cfg_.hidden_size, F = cfg_.intermediate_size;
    const int64_t QD = int64_t(cfg_.num_heads) * cfg_.head_dim;
    const int64_t KD = int64_t(cfg_.num_kv_heads) * cfg_.head_dim;
    switch (s) {
      case LinearSlot::Q: return {QD, H};
      case LinearSlot::K:
      case LinearSlot::V: return {KD, H};
      case LinearSlot::O: return {H, QD};
      case LinearSlot::Gate:
      case LinearSlot::Up: return {F, H};
      case LinearSlot::Down: return {H, F};
    }
    return {0, 0};
  }

  std::string layer_prefix(int layer) const {
    return cat(arch_->layer_prefix, layer, ".");
  }

  void check_layer(int layer) const {
    if (layer < 0 || layer >= cfg_.num_layers)
      fail("layer ", layer, " is out of range [0, ", cfg_.num_layers, ")");
  }

  void check_shape(int batch, int seq, int pos0) const {
    if (batch <= 0 || seq <= 0) fail("empty input: batch ", batch, " x seq ", seq);
    if (int64_t(pos0) + seq > cfg_.max_position_embeddings)
      fail("sequence of ", int64_t(pos0) + seq, " tokens exceeds max_position_embeddings (",
           cfg_.max_position_embeddings, ")");
  }

  static void check_linear(const Linear& l, const std::string& name, int64_t out, int64_t in) {
    if (l.out_features() != out || l.in_features() != in)
      fail(name, ": linear layer is [", l.out_features(), ", ", l.in_features(), "], expected [",
           out, ", ", in, "]");
  }

  void check_block(int layer, const BlockWeights& w) const {
    const std::string p = layer_prefix(layer);
    for (int s = 0; s < kNumLinearSlots; ++s) {
      const std::string name = p + linear_slot_name(LinearSlot(s));
      if (!w.linear[s]) fail(name, ": linear layer is missing");
      const Dims d = slot_dims(LinearSlot(s));
      check_linear(*w.linear[s], name, d.out, d.in);
    }
    auto check_vec = [&](const std::vector<float>& v, const char* what, size_t n) {
      if (v.size() != n) fail(p, what, ": has ", v.size(), " values, expected ", n);
    };
    check_vec(w.input_norm, arch_->input_norm, cfg_.hidden_size);
    check_vec(w.post_norm, arch_->post_norm, cfg_.hidden_size);
    if (cfg_.qk_norm) {
      check_vec(w.q_norm, arch_->q_norm, cfg_.head_dim);
      check_vec(w.k_norm, arch_->k_norm, cfg_.head_dim);
    }
  }

  BlockWeights load_block(int layer) const {
    const TensorReader& t = *ckpt_.tensors;
    const std::string p = layer_prefix(layer);
    BlockWeights w;
    for (int s = 0; s < kNumLinearSlots; ++s) {
      const LinearSlot slot = LinearSlot(s);
      const std::string name = p + linear_slot_name(slot);
      if (cfg_.qkv_bias && s <= int(LinearSlot::V) && !t.has(name + ".bias"))
        fail(t.origin(), ": tensor ", name, ".bias is missing (", cfg_.architecture,
             " has q/k/v biases)");
      const Dims d = slot_dims(slot);
      w.linear[s] = factory_->make(t, name, d.out, d.in);
    }
    const int64_t H = cfg_.hidden_size, D = cfg_.head_dim;
    w.input_norm = read_f32_tensor(t, p + arch_->input_norm, {H});
    w.post_norm = read_f32_tensor(t, p + arch_->post_norm, {H});
    if (cfg_.qk_norm) {
      w.q_norm = read_f32_tensor(t, p + arch_->q_norm, {D});
      w.k_norm = read_f32_tensor(t, p + arch_->k_norm, {D});
    }
    check_block(layer, w);
    return w;
  }

  void ensure_rope(int npos) {
    if (rope_len_ >= npos) return;
    const int n = std::min(cfg_.max_position_embeddings, std::max(npos, 2 * rope_len_));
    cpu::rope_tables(inv_freq_, n, &cos_, &sin_);
    rope_len_ = n;
  }

  // One decoder layer over new positions pos0..pos0+seq-1 of each sequence; with a cache the
  // new keys/values are appended to it and attention reads the cache.
  void block_forward(int layer, float* h, int batch, int seq, int pos0, const LinearHook* hook,
                     KVCache* cache) {
    BlockWeights& w = block(layer);
    const int64_t rows = int64_t(batch) * seq, H = cfg_.hidden_size, F = cfg_.intermediate_size;
    const int nh = cfg_.num_heads, nkv = cfg_.num_kv_heads, hd = cfg_.head_dim;
    const int64_t QD = int64_t(nh) * hd, KD = int64_t(nkv) * hd;
    const float eps = float(cfg_.rms_norm_eps);
    ensure_rope(pos0 + seq);
    auto observe = [&](LinearSlot s, const float* x, int64_t cols) {
      if (hook && *hook) (*hook)(layer, s, backend::MatView{x, rows, cols, backend::Device::CPU});
    };

    // --- attention ---
    float* x = sx_.get(size_t(rows) * H);
    cpu::rms_norm(h, w.input_norm.data(), rows, H, eps, x);
    float* q = sq_.get(size_t(rows) * QD);
    float* k = sk_.get(size_t(rows) * KD);
    float* v = sv_.get(size_t(rows) * KD);
    observe(LinearSlot::Q, x, H);
    w.at(LinearSlot::Q).forward(x, rows, q);
    observe(LinearSlot::K, x, H);
    w.at(LinearSlot::K).forward(x, rows, k);
    observe(LinearSlot::V, x, H);
    w.at(LinearSlot::V).forward(x, rows, v);
    if (cfg_.qk_norm) {
      cpu::rms_norm(q, w.q_norm.data(), rows * nh, hd, eps, q);
      cpu::rms_norm(k, w.k_norm.data(), rows * nkv, hd, eps, k);
    }
    cpu::rope_apply(q, rows, QD, nh, hd, seq, pos0, cos_.data(), sin_.data());
    cpu::rope_apply(k, rows, KD, nkv, hd, seq, pos0, cos_.data(), sin_.data());
    const float* kb = k;
    const float* vb = v;
    int64_t kv_stride = int64_t(seq) * KD;
    if (cache) {
      float* ck = cache->k[layer].data();
      float* cv = cache->v[layer].data();
      const int64_t cstride = int64_t(cache->capacity) * KD;
      for (int b = 0; b < batch; ++b) {
        std::memcpy(ck + b * cstride + int64_t(pos0) * KD, k + int64_t(b) * seq * KD,
                    size_t(seq) * KD * sizeof(float));
        std::memcpy(cv + b * cstride + int64_t(pos0) * KD, v + int64_t(b) * seq * KD,
                    size_t(seq) * KD * sizeof(float));
      }
      kb = ck;
      vb = cv;
      kv_stride = cstride;
    }
    float* attn = sa_.get(size_t(rows) * QD);
    cpu::causal_attention(q, kb, vb, batch, seq, pos0, nh, nkv, hd, kv_stride, attn);
    observe(LinearSlot::O, attn, QD);
    w.at(LinearSlot::O).forward(attn, rows, x);  // x reused as the o_proj output
    cpu::add_inplace(h, x, rows * H);

    // --- MLP ---
    cpu::rms_norm(h, w.post_norm.data(), rows, H, eps, x);
    float* g = sg_.get(size_t(rows) * F);
    float* u = su_.get(size_t(rows) * F);
    observe(LinearSlot::Gate, x, H);
    w.at(LinearSlot::Gate).forward(x, rows, g);
    observe(LinearSlot::Up, x, H);
    w.at(LinearSlot::Up).forward(x, rows, u);
    cpu::silu_mul(g, u, g, rows * F);
    observe(LinearSlot::Down, g, F);
    w.at(LinearSlot::Down).forward(g, rows, x);
    cpu::add_inplace(h, x, rows * H);
  }

  // ---- the GPU block runner ----
  struct DevLinear {
    backend::DeviceArray w, b;
    uint64_t fp = 0;
    bool bias = false;
    ActQuant act = ActQuant::None;
    float input_scale = 0.0f;
  };
  struct DevBlock {
    int layer = -1;
    std::array<DevLinear, kNumLinearSlots> lin;
    backend::DeviceArray input_norm, post_norm, q_norm, k_norm;
  };

  // Device copies of block `layer`'s weights; a linear is re-uploaded only when its contents
  // (fingerprint of weight and bias bytes) changed since the last run.
  void upload_block(int layer, const BlockWeights& w,
                    const std::array<Linear::DenseForm, kNumLinearSlots>& forms) {
    for (int s = 0; s < kNumLinearSlots; ++s) {
      const Linear& l = *w.linear[s];
      const Linear::DenseForm& f = forms[s];
      const int64_t n = l.out_features() * l.in_features(), out = l.out_features();
      uint64_t fp = backend::content_fingerprint(f.weight, size_t(n) * sizeof(float));
      if (f.bias) fp ^= backend::content_fingerprint(f.bias, size_t(out) * sizeof(float)) * 31;
      fp ^= uint64_t(f.act) << 56;
      DevLinear& d = dblk_.lin[s];
      if (dblk_.layer != layer || d.fp != fp || d.w.size() != n) {
        d.w.reserve(n);
        d.w.upload(f.weight, n);
        if (f.bias) {
          d.b.reserve(out);
          d.b.upload(f.bias, out);
        }
        d.fp = fp;
      }
      d.bias = f.bias != nullptr;
      d.act = ActQuant(f.act);
      d.input_scale = f.input_scale;
    }
    auto put = [](backend::DeviceArray& a, const std::vector<float>& v) {
      if (v.empty()) return;
      a.reserve(int64_t(v.size()));
      a.upload(v.data(), int64_t(v.size()));
    };
    put(dblk_.input_norm, w.input_norm);
    put(dblk_.post_norm, w.post_norm);
    put(dblk_.q_norm, w.q_norm);
    put(dblk_.k_norm, w.k_norm);
    dblk_.layer = layer;
  }

  // y[rows, out] = linear s (its input fake-quantization, weight, bias) of x [rows, in].
  void device_linear(LinearSlot s, const float* x, int64_t rows, float* y) {
    const DevLinear& d = dblk_.lin[int(s)];
    const Dims dm = slot_dims(s);
    const float* src = x;
    if (d.act != ActQuant::None) {
      dxq_.reserve(rows * dm.in);
      backend::dev::copy(dxq_.data(), x, rows * dm.in);
      backend::dev::quantize_activations(d.act, d.input_scale, dxq_.data(), rows, dm.in);
      src = dxq_.data();
    }
    backend::dev::gemm_xwt(src, rows, dm.in, d.w.data(), dm.out, y, d.bias ? d.b.data() : nullptr);
  }

  // block_forward on the GPU for `batch` sequences at h (device), pos0 = 0, no cache.
  void block_forward_device(int layer, float* h, int batch, int seq, const LinearHook* hook,
                            int stop_after) {
    namespace dv = backend::dev;
    const int64_t rows = int64_t(batch) * seq, H = cfg_.hidden_size, F = cfg_.intermediate_size;
    const int nh = cfg_.num_heads, nkv = cfg_.num_kv_heads, hd = cfg_.head_dim;
    const int64_t QD = int64_t(nh) * hd, KD = int64_t(nkv) * hd;
    const double eps = cfg_.rms_norm_eps;
    // True when the run ends here (stop_after).
    auto observe = [&](LinearSlot s, const float* x, int64_t cols) {
      if (hook && *hook) (*hook)(layer, s, backend::MatView{x, rows, cols, backend::Device::CUDA});
      return int(s) == stop_after;
    };
    dx_.reserve(rows * H);
    dq_.reserve(rows * QD);
    dk_.reserve(rows * KD);
    dv_.reserve(rows * KD);
    da_.reserve(rows * QD);
    dg_.reserve(rows * F);
    du_.reserve(rows * F);
    float *x = dx_.data(), *q = dq_.data(), *k = dk_.data(), *v = dv_.data(), *a = da_.data(),
          *g = dg_.data(), *u = du_.data();
    // --- attention ---
    dv::rms_norm(h, dblk_.input_norm.data(), rows, H, eps, x);
    if (observe(LinearSlot::Q, x, H)) return;
    device_linear(LinearSlot::Q, x, rows, q);
    if (observe(LinearSlot::K, x, H)) return;
    device_linear(LinearSlot::K, x, rows, k);
    if (observe(LinearSlot::V, x, H)) return;
    device_linear(LinearSlot::V, x, rows, v);
    if (cfg_.qk_norm) {
      dv::rms_norm(q, dblk_.q_norm.data(), rows * nh, hd, eps, q);
      dv::rms_norm(k, dblk_.k_norm.data(), rows * nkv, hd, eps, k);
    }
    dv::rope(q, rows, QD, nh, hd, seq, dcos_.data(), dsin_.data());
    dv::rope(k, rows, KD, nkv, hd, seq, dcos_.data(), dsin_.data());
    dv::causal_attention(q, k, v, batch, seq, nh, nkv, hd, a);
    if (observe(LinearSlot::O, a, QD)) return;
    device_linear(LinearSlot::O, a, rows, x);
    dv::add_inplace(h, x, rows * H);
    // --- MLP ---
    dv::rms_norm(h, dblk_.post_norm.data(), rows, H, eps, x);
    if (observe(LinearSlot::Gate, x, H)) return;
    device_linear(LinearSlot::Gate, x, rows, g);
    if (observe(LinearSlot::Up, x, H)) return;
    device_linear(LinearSlot::Up, x, rows, u);
    dv::silu_mul(g, u, g, rows * F);
    if (observe(LinearSlot::Down, g, F)) return;
    device_linear(LinearSlot::Down, g, rows, x);
    dv::add_inplace(h, x, rows * H);
  }

  DevBlock dblk_;
  backend::DeviceArray dh_, dcos_, dsin_, dx_, dq_, dk_, dv_, da_, dg_, du_, dxq_;
  int dev_rope_len_ = 0;

  const Checkpoint& ckpt_;
  std::shared_ptr<const LinearFactory> factory_;
  ModelConfig cfg_;
  const ArchSpec* arch_ = nullptr;
  std::vector<float> embed_, norm_;
  std::shared_ptr<Linear> head_;
  bool io_ = false;
  std::vector<std::unique_ptr<BlockWeights>> blocks_;
  std::vector<float> inv_freq_, cos_, sin_;
  int rope_len_ = 0;
  Buf sx_, sq_, sk_, sv_, sa_, sg_, su_;
};

}  // namespace

std::unique_ptr<Model> Model::load(const Checkpoint& ckpt,
                                   std::shared_ptr<const LinearFactory> factory) {
  return std::make_unique<TransformerModel>(ckpt, std::move(factory), false);
}

std::unique_ptr<Model> Model::load_blocks_only(const Checkpoint& ckpt) {
  return std::make_unique<TransformerModel>(ckpt, nullptr, true);
}

}  // namespace llmc
