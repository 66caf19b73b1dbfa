// model/model.cpp — the decoder-only transformer (Llama / Qwen2 / Qwen3) on the CPU backend.
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/threads.h"
#include "model/arch.h"

namespace llmc {

namespace {

// The tensor `name` after the checks every weight read gets: present, a float dtype, `expect`.
TensorRef checked_float_tensor(const TensorReader& reader, const std::string& name,
                               const Shape& expect) {
  if (!reader.has(name)) fail(reader.origin(), ": tensor ", name, " is missing");
  TensorRef ref = reader.get(name);
  if (!dtype_traits(ref.info.dtype).is_float)
    fail(reader.origin(), ": tensor ", name, " has dtype ", dtype_name(ref.info.dtype),
         ", expected a float type");
  if (ref.info.shape != expect)
    fail(reader.origin(), ": tensor ", name, " has shape ", shape_str(ref.info.shape),
         ", expected ", shape_str(expect));
  return ref;
}

[[noreturn]] void fail_non_finite(const TensorReader& reader, const std::string& name, float v,
                                  int64_t at) {
  fail(reader.origin(), ": tensor ", name, " holds a non-finite value (", v, " at element ", at,
       ")");
}

}  // namespace

std::vector<float> read_f32_tensor(const TensorReader& reader, const std::string& name,
                                   const Shape& expect) {
  std::vector<float> v = checked_float_tensor(reader, name, expect).to_f32();
  const int64_t bad = first_non_finite(v.data(), v.size());
  if (bad >= 0) fail_non_finite(reader, name, v[size_t(bad)], bad);
  return v;
}

TensorRef check_f32_tensor(const TensorReader& reader, const std::string& name,
                           const Shape& expect) {
  TensorRef ref = checked_float_tensor(reader, name, expect);
  const size_t es = dtype_size(ref.info.dtype), n = size_t(ref.info.numel());
  constexpr size_t kChunk = size_t(1) << 22;  // elements converted at a time
  std::vector<float> buf(std::min(n, kChunk));
  const uint8_t* base = static_cast<const uint8_t*>(ref.data);
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t m = std::min(kChunk, n - i0);
    to_f32(ref.info.dtype, base + i0 * es, buf.data(), m);  // multithreaded (core/dtype.h)
    const int64_t bad = first_non_finite(buf.data(), m);
    if (bad >= 0) fail_non_finite(reader, name, buf[size_t(bad)], int64_t(i0) + bad);
    release_mapped_pages(base + i0 * es, m * es);
  }
  return ref;
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

// What a TransformerModel reads besides the blocks: embeddings, final norm and lm_head (load),
// nothing (load_blocks_only), or embedding rows on demand (load_for_calibration).
enum class Io { Full, BlocksOnly, EmbedRows };

class TransformerModel final : public Model {
 public:
  TransformerModel(const Checkpoint& ckpt, std::shared_ptr<const LinearFactory> factory,
                   Io io)
      : ckpt_(ckpt), factory_(std::move(factory)) {
    if (!ckpt.tensors) fail(ckpt.path.string(), ": checkpoint has no tensors");
    const std::string origin = ckpt.format == CheckpointFormat::HF
                                   ? (ckpt.path / "config.json").string()
                                   : ckpt.path.string() + " (config.json)";
    cfg_ = ModelConfig::from_json(ckpt.config, origin);
    arch_ = &arch_for(cfg_.architecture, origin);
    if (!factory_) factory_ = std::make_shared<LinearFactory>();
    blocks_.resize(cfg_.num_layers);
    for (int l = 0; l < cfg_.num_layers; ++l) layouts_.push_back(block_layout(*arch_, cfg_, l));
    routed_.resize(size_t(cfg_.num_layers));
    for (int l = 0; l < cfg_.num_layers; ++l) routed_[size_t(l)].assign(size_t(layouts_[size_t(l)].num_experts), 0);
    inv_freq_ = cpu::rope_inv_freq(cfg_.rope, cfg_.head_dim);
    if (io == Io::Full) load_io();
    if (io == Io::EmbedRows) check_io();
  }

  // Load's checks of the embedding, final norm and lm_head, keeping only the embedding's view.
  void check_io() {
    const TensorReader& t = *ckpt_.tensors;
    const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
    embed_ref_ = check_f32_tensor(t, arch_->embed, {V, H});
    check_f32_tensor(t, arch_->final_norm, {H});
    if (!cfg_.tie_word_embeddings) {
      const std::string head = arch_->lm_head;
      check_f32_tensor(t, head + ".weight", {V, H});
      if (t.has(head + ".bias")) check_f32_tensor(t, head + ".bias", {V});
    }
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
    if (!io_)
      fail(embed_ref_.data ? "model loaded for calibration: no final norm or lm_head"
                           : "model loaded with blocks only: no embeddings or lm_head");
  }

  const ModelConfig& config() const override { return cfg_; }

  void embed(const int32_t* ids, int64_t rows, float* hidden) const override {
    if (!embed_ref_.data) need_io();
    const int64_t H = cfg_.hidden_size;
    for (int64_t r = 0; r < rows; ++r)
      if (ids[r] < 0 || ids[r] >= cfg_.vocab_size)
        fail("token id ", ids[r], " at position ", r, " is outside the vocabulary [0, ",
             cfg_.vocab_size, ")");
    if (!io_) {  // calibration: the rows from the checkpoint's embedding, converted as in load()
      const DType dt = embed_ref_.info.dtype;
      const size_t row_bytes = size_t(H) * dtype_size(dt);
      parallel_for(0, size_t(rows), 64, [&](size_t r0, size_t r1) {
        for (size_t r = r0; r < r1; ++r)
          to_f32(dt, embed_ref_.data + size_t(ids[r]) * row_bytes, hidden + r * H, size_t(H));
      });
      return;
    }
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
                        const LinearHook* hook, int stop_after, int observe_from) override {
    check_layer(layer);
    check_shape(n_samples, seq, 0);
    if (backend::device() != backend::Device::CUDA)
      fail("run_block_device: the device is ", backend::device_name(backend::device()));
    LLMC_CHECK(stop_after < 0 || out == nullptr, "run_block_device: stop_after with outputs");
    if (layouts_[layer].moe() || !observe_all_.empty()) {
      if (!moe_device_logged_)
        log_info("mixture-of-experts blocks run on the CPU (the GPU block runner does not run "
                 "routed experts yet)");
      moe_device_logged_ = true;
      return false;
    }
    BlockWeights& w = block(layer);
    std::vector<Linear::DenseForm> forms(w.linear.size());
    for (size_t s = 0; s < forms.size(); ++s) {
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
    const int64_t qd = int64_t(cfg_.num_heads) * cfg_.head_dim, arows = int64_t(n_samples) * seq;
    // The attention-output cache: its key, whether this run may read it, whether it fills it.
    const AttnKey key = attn_key(layer, in, n_samples, seq, w);
    const bool reach_o = stop_after < 0 || stop_after >= int(LinearSlot::O);
    const bool read = acache_.valid && acache_.key == key && observe_from > int(LinearSlot::V) && reach_o;
    bool store = false;
    if (!read && reach_o) {
      const uint64_t need = uint64_t(arows * qd) * sizeof(float);
      store = acache_.a.size() >= arows * qd || need < backend::cuda_free_bytes() / 4;
      if (store) {
        acache_.valid = false;
        acache_.a.reserve(arows * qd);
      }
    }
    if (!out) dh_.reserve(b * per);
    for (int s0 = 0; s0 < n_samples; s0 += b) {
      const int n = std::min(b, n_samples - s0);
      float* h = out ? out + s0 * per : dh_.data();
      if (h != in + s0 * per) backend::dev::copy(h, in + s0 * per, n * per);
      float* at = read || store ? acache_.a.data() + int64_t(s0) * seq * qd : nullptr;
      block_forward_device(layer, h, n, seq, hook, stop_after, observe_from, read ? at : nullptr,
                           store ? at : nullptr);
    }
    if (store) {
      acache_.key = key;
      acache_.valid = true;
    }
    return true;
  }

  void release_device_weights() override {
    dblk_ = DevBlock();
    release_device_cache();
  }
  void release_device_cache() override { acache_ = AttnCache(); }

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

  const BlockLayout& layout(int layer) const override {
    check_layer(layer);
    return layouts_[size_t(layer)];
  }

  void set_expert_observation(std::vector<bool> all_tokens) override {
    bool any = false;
    for (bool b : all_tokens) any |= b;
    observe_all_ = any ? std::move(all_tokens) : std::vector<bool>();
  }

  std::vector<int64_t> routed_tokens(int layer) const override {
    check_layer(layer);
    return routed_[size_t(layer)];
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
    const BlockLayout& L = layouts_[size_t(layer)];
    if (int(w.linear.size()) != L.size())
      fail(p, ": block has ", w.linear.size(), " linear layers, expected ", L.size());
    for (int s = 0; s < L.size(); ++s) {
      const BlockModule& m = L.modules[size_t(s)];
      const std::string name = p + m.name;
      if (!w.linear[s]) fail(name, ": linear layer is missing");
      check_linear(*w.linear[s], name, m.out, m.in);
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
    for (const BlockModule& m : layouts_[size_t(layer)].modules) {
      const std::string name = p + m.name;
      if (m.bias && !t.has(name + ".bias"))
        fail(t.origin(), ": tensor ", name, ".bias is missing (", cfg_.architecture,
             " has q/k/v biases)");
      w.linear.push_back(factory_->make(t, name, m.out, m.in));
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
    const BlockLayout& L = layouts_[size_t(layer)];
    const int64_t rows = int64_t(batch) * seq, H = cfg_.hidden_size;
    const int nh = cfg_.num_heads, nkv = cfg_.num_kv_heads, hd = cfg_.head_dim;
    const int64_t QD = int64_t(nh) * hd, KD = int64_t(nkv) * hd;
    const float eps = float(cfg_.rms_norm_eps);
    ensure_rope(pos0 + seq);
    auto observe = [&](LinearSlot s, const float* x, int64_t cols) {
      if (hook && *hook) (*hook)(layer, s, backend::MatView{x, rows, cols, backend::Device::CPU});
    };
    cur_hook_ = hook;

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
    if (L.moe()) {
      moe_forward(layer, L, w, x, rows, h);
      return;
    }
    const LinearSlot G = LinearSlot(L.find(ModuleRole::Gate)), U = LinearSlot(L.find(ModuleRole::Up)),
                     D = LinearSlot(L.find(ModuleRole::Down));
    const int64_t F = L.at(G).out;
    float* g = sg_.get(size_t(rows) * F);
    float* u = su_.get(size_t(rows) * F);
    observe(G, x, H);
    w.at(G).forward(x, rows, g);
    observe(U, x, H);
    w.at(U).forward(x, rows, u);
    cpu::silu_mul(g, u, g, rows * F);
    observe(D, g, F);
    w.at(D).forward(g, rows, x);
    cpu::add_inplace(h, x, rows * H);
  }

  // One SwiGLU MLP (gate, up, down modules) over x [n, H] -> y [n, H], hooks observing.
  void swiglu(BlockWeights& w, int gi, int ui, int di, const float* x, int64_t n, float* y,
              const std::function<void(int, const float*, int64_t, int64_t)>& observe) {
    const int64_t H = cfg_.hidden_size, F = w.linear[size_t(gi)]->out_features();
    std::vector<float> g(size_t(n * F)), u(size_t(n * F));
    observe(gi, x, n, H);
    w.linear[size_t(gi)]->forward(x, n, g.data());
    observe(ui, x, n, H);
    w.linear[size_t(ui)]->forward(x, n, u.data());
    cpu::silu_mul(g.data(), u.data(), g.data(), n * F);
    observe(di, g.data(), n, F);
    w.linear[size_t(di)]->forward(g.data(), n, y);
  }

  // Mixture-of-experts MLP on x = post_attention_layernorm(h) [rows, H]; adds its output to h.
  // Router: p = softmax(x · Wrᵀ) over all experts (fp32), the top-k experts per token (ties: the
  // lower index), p renormalised over those k when norm_topk_prob; output Σ_k p_k · expert_k(x)
  // (+ sigmoid(x · w_sgᵀ) · shared_expert(x) when the block has a shared expert).
  void moe_forward(int layer, const BlockLayout& L, BlockWeights& w, const float* x, int64_t rows,
                   float* h) {
    const int64_t H = cfg_.hidden_size;
    const int E = L.num_experts, K = L.top_k;
    const LinearHook* hook = cur_hook_;
    auto observe = [&](int s, const float* v, int64_t n, int64_t cols) {
      if (hook && *hook && n > 0)
        (*hook)(layer, LinearSlot(s), backend::MatView{v, n, cols, backend::Device::CPU});
    };
    const int ri = L.find(ModuleRole::Router);
    std::vector<float> logits(static_cast<size_t>(rows * E));
    observe(ri, x, rows, H);
    w.linear[size_t(ri)]->forward(x, rows, logits.data());
    std::vector<std::vector<int64_t>> tok(static_cast<size_t>(E));  // rows routed to each expert
    std::vector<std::vector<float>> wt(static_cast<size_t>(E));     // and their weights
    std::vector<float> p(static_cast<size_t>(E));
    std::vector<int> order(static_cast<size_t>(E));
    for (int64_t r = 0; r < rows; ++r) {
      const float* l = logits.data() + r * E;
      const float mx = *std::max_element(l, l + E);
      float sum = 0.0f;
      for (int e = 0; e < E; ++e) sum += p[size_t(e)] = std::exp(l[e] - mx);
      for (int e = 0; e < E; ++e) p[size_t(e)] /= sum;
      for (int e = 0; e < E; ++e) order[size_t(e)] = e;
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int a, int b) {
        return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b);
      });
      float top = 0.0f;
      for (int k = 0; k < K; ++k) top += p[size_t(order[size_t(k)])];
      for (int k = 0; k < K; ++k) {
        const int e = order[size_t(k)];
        tok[size_t(e)].push_back(r);
        wt[size_t(e)].push_back(L.norm_topk ? p[size_t(e)] / top : p[size_t(e)]);
      }
    }
    for (int e = 0; e < E; ++e) routed_[size_t(layer)][size_t(e)] += int64_t(tok[size_t(e)].size());
    std::vector<float> acc(size_t(rows * H), 0.0f), xe, ye;
    for (int e = 0; e < E; ++e) {
      const std::vector<int64_t>& t = tok[size_t(e)];
      const bool all = size_t(e) < observe_all_.size() && observe_all_[size_t(e)];
      if (t.empty() && !all) continue;
      const int64_t n = all ? rows : int64_t(t.size());
      const float* src = x;
      if (!all) {
        xe.resize(size_t(n * H));
        for (int64_t j = 0; j < n; ++j)
          std::memcpy(xe.data() + j * H, x + t[size_t(j)] * H, size_t(H) * sizeof(float));
        src = xe.data();
      }
      ye.resize(size_t(n * H));
      swiglu(w, L.find(ModuleRole::Gate, e), L.find(ModuleRole::Up, e),
             L.find(ModuleRole::Down, e), src, n, ye.data(), observe);
      for (size_t j = 0; j < t.size(); ++j) {
        const float* y = ye.data() + (all ? t[j] : int64_t(j)) * H;
        float* a = acc.data() + t[j] * H;
        const float c = wt[size_t(e)][j];
        for (int64_t i = 0; i < H; ++i) a[i] += c * y[i];
      }
    }
    const int sg = L.find(ModuleRole::SharedGate, kSharedExpert);
    if (sg >= 0) {
      std::vector<float> gl(static_cast<size_t>(rows));
      ye.resize(size_t(rows * H));
      swiglu(w, L.find(ModuleRole::Gate, kSharedExpert), L.find(ModuleRole::Up, kSharedExpert),
             L.find(ModuleRole::Down, kSharedExpert), x, rows, ye.data(), observe);
      observe(sg, x, rows, H);
      w.linear[size_t(sg)]->forward(x, rows, gl.data());
      for (int64_t r = 0; r < rows; ++r) {
        const float c = 1.0f / (1.0f + std::exp(-gl[size_t(r)]));
        for (int64_t i = 0; i < H; ++i) acc[size_t(r * H + i)] += c * ye[size_t(r * H + i)];
      }
    }
    cpu::add_inplace(h, acc.data(), rows * H);
  }

  // ---- the GPU block runner ----
  struct DevLinear {
    backend::DeviceArray w, b;
    int64_t out = 0, in = 0;
    uint64_t fp = 0;
    bool bias = false;
    ActQuant act = ActQuant::None;
    float input_scale = 0.0f;
  };
  struct DevBlock {
    int layer = -1;
    std::vector<DevLinear> lin;
    backend::DeviceArray input_norm, post_norm, q_norm, k_norm;
  };

  // Device copies of block `layer`'s weights; a linear is re-uploaded only when its contents
  // (fingerprint of weight and bias bytes) changed since the last run.
  void upload_block(int layer, const BlockWeights& w, const std::vector<Linear::DenseForm>& forms) {
    dblk_.lin.resize(forms.size());
    for (size_t s = 0; s < forms.size(); ++s) {
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
      d.out = out;
      d.in = l.in_features();
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
    const DevLinear& d = dblk_.lin[size_t(s)];
    const float* src = x;
    if (d.act != ActQuant::None) {
      dxq_.reserve(rows * d.in);
      backend::dev::copy(dxq_.data(), x, rows * d.in);
      backend::dev::quantize_activations(d.act, d.input_scale, dxq_.data(), rows, d.in);
      src = dxq_.data();
    }
    backend::dev::gemm_xwt(src, rows, d.in, d.w.data(), d.out, y, d.bias ? d.b.data() : nullptr);
  }

  // block_forward on the GPU for `batch` sequences at h (device), pos0 = 0, no cache.
  // What the attention output of a run depends on (see run_block_device).
  struct AttnKey {
    int layer = -1, n_samples = 0, seq = 0;
    const float* in = nullptr;
    uint64_t in_fp = 0, w_fp = 0;
    bool operator==(const AttnKey&) const = default;
  };
  struct AttnCache {
    AttnKey key;
    bool valid = false;
    backend::DeviceArray a;  // [n_samples * seq, num_heads * head_dim]
  };
  AttnKey attn_key(int layer, const float* in, int n_samples, int seq, const BlockWeights& w) const {
    AttnKey k;
    k.layer = layer;
    k.n_samples = n_samples;
    k.seq = seq;
    k.in = in;
    k.in_fp = backend::dev::fingerprint(in, int64_t(n_samples) * seq * cfg_.hidden_size);
    uint64_t f = 0;
    for (LinearSlot s : {LinearSlot::Q, LinearSlot::K, LinearSlot::V}) {
      const DevLinear& d = dblk_.lin[int(s)];
      uint32_t sc = 0;
      std::memcpy(&sc, &d.input_scale, sizeof sc);
      f = (f * 0x100000001B3ull ^ d.fp) * 0x100000001B3ull ^ (uint64_t(sc) << 8 | uint64_t(d.act));
    }
    for (const std::vector<float>* v : {&w.input_norm, &w.q_norm, &w.k_norm})
      f = f * 0x100000001B3ull ^ backend::content_fingerprint(v->data(), v->size() * sizeof(float));
    k.w_fp = f;
    return k;
  }
  AttnCache acache_;

  // block_forward on the GPU for `batch` sequences at h (device), pos0 = 0, no cache. Hooks for
  // slots < observe_from are not called. cached_a: the attention output (o_proj's input) of
  // these rows, computed before (q/k/v and their norms are skipped); store_a: receives it.
  void block_forward_device(int layer, float* h, int batch, int seq, const LinearHook* hook,
                            int stop_after, int observe_from, const float* cached_a,
                            float* store_a) {
    namespace dv = backend::dev;
    const int64_t rows = int64_t(batch) * seq, H = cfg_.hidden_size, F = cfg_.intermediate_size;
    const int nh = cfg_.num_heads, nkv = cfg_.num_kv_heads, hd = cfg_.head_dim;
    const int64_t QD = int64_t(nh) * hd, KD = int64_t(nkv) * hd;
    const double eps = cfg_.rms_norm_eps;
    // True when the run ends here (stop_after).
    auto observe = [&](LinearSlot s, const float* x, int64_t cols) {
      if (hook && *hook && int(s) >= observe_from)
        (*hook)(layer, s, backend::MatView{x, rows, cols, backend::Device::CUDA});
      return int(s) == stop_after;
    };
    dx_.reserve(rows * H);
    dq_.reserve(rows * QD);
    dk_.reserve(rows * KD);
    dv_.reserve(rows * KD);
    da_.reserve(rows * QD);
    dg_.reserve(rows * F);
    du_.reserve(rows * F);
    float *x = dx_.data(), *q = dq_.data(), *k = dk_.data(), *v = dv_.data(), *g = dg_.data(),
          *u = du_.data();
    const float* a = cached_a;
    // --- attention ---
    if (!a) {
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
      float* ao = store_a ? store_a : da_.data();  // computed straight into the cache
      dv::causal_attention(q, k, v, batch, seq, nh, nkv, hd, ao);
      a = ao;
    }
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
  TensorRef embed_ref_;  // Io::EmbedRows: the checkpoint's embedding
  std::shared_ptr<Linear> head_;
  bool io_ = false;
  std::vector<std::unique_ptr<BlockWeights>> blocks_;
  std::vector<BlockLayout> layouts_;
  std::vector<bool> observe_all_;
  std::vector<std::vector<int64_t>> routed_;  // per layer, per expert (routed_tokens)
  const LinearHook* cur_hook_ = nullptr;  // the hook of the block_forward running
  bool moe_device_logged_ = false;
  std::vector<float> inv_freq_, cos_, sin_;
  int rope_len_ = 0;
  Buf sx_, sq_, sk_, sv_, sa_, sg_, su_;
};

}  // namespace

std::unique_ptr<Model> Model::load(const Checkpoint& ckpt,
                                   std::shared_ptr<const LinearFactory> factory) {
  return std::make_unique<TransformerModel>(ckpt, std::move(factory), Io::Full);
}

std::unique_ptr<Model> Model::load_blocks_only(const Checkpoint& ckpt) {
  return std::make_unique<TransformerModel>(ckpt, nullptr, Io::BlocksOnly);
}

std::unique_ptr<Model> Model::load_for_calibration(const Checkpoint& ckpt) {
  return std::make_unique<TransformerModel>(ckpt, nullptr, Io::EmbedRows);
}

}  // namespace llmc
