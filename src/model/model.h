// model/model.h — decoder-only transformer engine (Llama / Qwen2 / Qwen3), fp32 compute.
//
// Block-wise API for calibration: embed() -> run_block(i) for each layer -> final_norm() +
// lm_head(). Hidden states are [batch*seq, hidden] row-major; every sequence in a batch has
// the same length and starts at position 0 (full causal attention, no padding).
// A LinearHook observes each linear layer's input as the block runs (the modules of one
// InputGroup of model/arch.h share one input; the hook is called once per linear). A block's
// linears are described by Model::layout(layer). In a mixture-of-experts block the router sees
// every token and each routed expert only the tokens routed to it (an expert no token chose is
// not called at all), unless set_expert_observation asks for every token (statistics only). Block weights can be
// replaced between calls (set_block) so quantized block i feeds block i+1, and released
// (release_block) so peak memory stays about one block.
//
// Errors: empty input, a token id outside [0, vocab_size), or a sequence longer than
// max_position_embeddings throw llmc::Error; so do missing tensors, tensors of the wrong shape
// and non-finite weights (naming the tensor and the checkpoint file).
// A Model keeps scratch buffers: calls on one Model must not run concurrently (each call is
// multithreaded inside). Incremental decoding (generate) uses a KVCache: forward_cached() runs only the new positions
// and appends their keys/values.
#pragma once
#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "formats/checkpoint.h"
#include "model/arch.h"
#include "model/config.h"
#include "model/linear.h"

namespace llmc {

struct BlockWeights {
  std::vector<std::shared_ptr<Linear>> linear;  // indexed by module (LinearSlot), see layout()
  std::vector<float> input_norm, post_norm;                     // [hidden]
  std::vector<float> q_norm, k_norm;                            // [head_dim] (Qwen3 only)
  Linear& at(LinearSlot s) const { return *linear[int(s)]; }
};

// x: the linear's input [rows, in_features], on the host (run_block) or on the GPU
// (run_block_device: x.where == CUDA, a device pointer for backend/ functions only).
using LinearHook = std::function<void(int layer, LinearSlot slot, const backend::MatView& x)>;

// Builds a Linear for the module "<prefix>" (e.g. "model.layers.0.self_attn.q_proj") from a
// checkpoint. The default makes a DenseLinear from "<prefix>.weight" (+ ".bias").
class LinearFactory {
 public:
  virtual ~LinearFactory() = default;
  virtual std::shared_ptr<Linear> make(const TensorReader& tensors, const std::string& prefix,
                                       int64_t out, int64_t in) const;
};

// Keys and values of the positions already run, for incremental decoding. Made by
// Model::new_cache(); forward_cached() appends to it. Every sequence in the batch has the same
// length (`length`), like forward().
struct KVCache {
  int batch = 0, capacity = 0, length = 0;  // capacity: positions it can hold
  int64_t kv_dim = 0;                       // num_kv_heads * head_dim
  std::vector<std::vector<float>> k, v;     // per layer: [batch, capacity, kv_dim]
};

// Reads tensor `name` as fp32, checking it exists, is a float type, has shape `expect` and holds
// only finite values; errors name the tensor and reader.origin().
std::vector<float> read_f32_tensor(const TensorReader& reader, const std::string& name,
                                   const Shape& expect);
// The same checks with the same errors, streaming (a few MB converted at a time, the tensor's
// mapped pages released after), keeping nothing: returns the reader's view of the tensor.
TensorRef check_f32_tensor(const TensorReader& reader, const std::string& name,
                           const Shape& expect);

class Model {
 public:
  // Reads config.json and the embeddings/final norm/lm_head; decoder blocks are read from the
  // checkpoint lazily on first use. The checkpoint must outlive the model.
  static std::unique_ptr<Model> load(const Checkpoint& ckpt,
                                     std::shared_ptr<const LinearFactory> factory = nullptr);
  // Config and lazily read decoder blocks only (no embeddings, final norm or lm_head: embed,
  // forward and lm_head throw llmc::Error): what quantizing without calibration needs.
  static std::unique_ptr<Model> load_blocks_only(const Checkpoint& ckpt);
  // What calibration needs: config, lazily read blocks and embed(), which converts the rows it
  // looks up from the checkpoint's (mapped) embedding — no fp32 copy of the vocabulary matrix.
  // The embedding, final norm and lm_head get load()'s checks (dtype, shape, finite) up front
  // but are not kept; forward and lm_head throw llmc::Error.
  static std::unique_ptr<Model> load_for_calibration(const Checkpoint& ckpt);
  virtual ~Model() = default;

  virtual const ModelConfig& config() const = 0;
  virtual void embed(const int32_t* ids, int64_t rows, float* hidden) const = 0;
  virtual void run_block(int layer, float* hidden, int batch, int seq,
                         const LinearHook* hook = nullptr) = 0;
  // The GPU block runner (needs backend::device() == CUDA). `in` is a device array
  // [n_samples * seq, hidden]; the block's outputs go to `out` (device, may equal `in`), or are
  // dropped when out == nullptr. Runs `batch` samples at a time; norms, RoPE, attention,
  // SwiGLU, residuals and the linears (cuBLAS on device copies of each Linear::dense_form(),
  // re-uploaded only when their contents change) all run on the GPU, and hooks see device
  // views. stop_after >= 0 (a LinearSlot, out == nullptr): each batch ends right after that
  // slot's input was observed. Same function as run_block up to fp32 summation order. Returns
  // false, touching nothing, when a linear of the block has no dense_form() or the block is a
  // mixture of experts (not run on the GPU yet; logged once): use the CPU.
  // observe_from (a LinearSlot; past the block's last module: none): the hook is called only
  // for slots >= observe_from, which lets the runner serve the attention output (o_proj's
  // input) from its cache of the last run when observe_from > V and nothing it depends on
  // changed: the layer, the contents of `in` (device fingerprint), n_samples, seq, q/k/v
  // weights and activation scales, and the norms. The cache holds one block's attention
  // outputs on the GPU when they fit in a quarter of the free GPU memory (GPTQ's
  // true-sequential stages and the final pass then run attention once per block, not four
  // times).
  virtual bool run_block_device(int layer, const float* in, float* out, int n_samples, int seq,
                                int batch, const LinearHook* hook = nullptr,
                                int stop_after = -1, int observe_from = 0) = 0;
  // Drops the attention-output cache of run_block_device (frees its GPU memory).
  virtual void release_device_cache() = 0;
  virtual void final_norm(float* hidden, int64_t rows) const = 0;
  virtual void lm_head(const float* hidden, int64_t rows, float* logits) const = 0;
  // Full forward: ids [batch*seq] -> logits [batch*seq, vocab].
  virtual std::vector<float> forward(const std::vector<int32_t>& ids, int batch, int seq) = 0;

  // Cache for `batch` sequences of up to `capacity` positions (<= max_position_embeddings).
  virtual KVCache new_cache(int batch, int capacity) const = 0;
  // Runs ids [batch*seq] at positions cache.length .. cache.length+seq-1 of each sequence,
  // appends their keys/values to the cache and returns the logits of each sequence's last new
  // position [batch, vocab] (all_positions: of every new position, [batch*seq, vocab]).
  // Equal to forward() over the whole sequence up to fp32 rounding.
  virtual std::vector<float> forward_cached(const std::vector<int32_t>& ids, int batch, int seq,
                                            KVCache& cache, bool all_positions = false) = 0;

  // The linear modules of decoder layer `layer` (model/arch.h).
  virtual const BlockLayout& layout(int layer) const = 0;
  // Routed experts whose hooks see every token of the layer (all_tokens[e]; empty: none). The
  // block's outputs are unchanged (still the routed top-k mixture): the expert also runs on the
  // other tokens only for what hooks observe (calibration statistics of starved experts,
  // --moe-calib all-experts). The host path only (run_block_device declines while set).
  virtual void set_expert_observation(std::vector<bool> all_tokens) = 0;
  // Tokens routed to each expert of layer `layer` by every forward since the model was loaded
  // (top-k choices, so they sum to k x tokens); empty for a dense layer.
  virtual std::vector<int64_t> routed_tokens(int layer) const = 0;

  virtual BlockWeights& block(int layer) = 0;            // loads it if needed
  virtual void set_block(int layer, BlockWeights w) = 0;  // replaces it
  virtual void release_block(int layer) = 0;              // drops it (reloaded on next use)
  virtual uint64_t bytes_held() const = 0;
  // Drops the device copies of block weights (run_block_device keeps one block's).
  virtual void release_device_weights() = 0;
};

}  // namespace llmc
