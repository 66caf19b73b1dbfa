// formats/gguf_model.h — a whole HF model as a llama.cpp GGUF file, and back.
//
// Writing (write_gguf_model): tensors renamed by one table (model.embed_tokens -> token_embd,
// model.layers.N.self_attn.q_proj -> blk.N.attn_q, ..., lm_head -> output; docs/formats.md),
// shapes reversed into ggml order (ne[0] = the input dimension), hyperparameters as
// "<arch>.*" keys for the architectures of the table (qwen3, qwen2, llama), the tokenizer as
// tokenizer.ggml.* (gpt2 BPE: tokens, token_type, merges, special ids, chat_template) from
// tokenizer.json / tokenizer_config.json. For `llama` the rows of q_proj/k_proj are permuted as
// llama.cpp's convert_hf_to_gguf.py does (llama.cpp applies interleaved RoPE to llama, NeoX-style
// to qwen2/qwen3); the reader undoes it. 1-D tensors (norms, biases) are always F32; every other
// tensor gets the type `choose` returns (its row length must be a multiple of that type's block;
// presets pick a fallback themselves). `importance`, when set, gives per-input-column weights
// for a tensor (nullptr: uniform), used by the encoders' scale search.
//  * Checked before any tensor is written: architecture in the table, tokenizer.json present and
//    a byte-level BPE, every tensor name mapped. Errors name the file and tensor. The caller owns
//    the output path (temp + rename: core/fs.h AtomicPath).
// Reading (open_gguf_checkpoint): a Checkpoint whose tensors carry the HF names and shapes
// (F32/F16/BF16 tensors as stored, quantized types decoded to F32, llama Q/K rows un-permuted),
// whose config.json is rebuilt from the metadata and whose aux files hold a tokenizer.json and
// tokenizer_config.json rebuilt from tokenizer.ggml.*. Files of other architectures, tokenizer
// models other than gpt2, or types outside formats/ggml_types.h are refused with llmc::Error.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "formats/checkpoint.h"
#include "formats/ggml_types.h"

namespace llmc {

// llama.cpp's general.file_type values (enum llama_ftype) llmc writes.
enum class GgufFileType : uint32_t {
  ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q4_0 = 2, MOSTLY_Q4_1 = 3, MOSTLY_Q8_0 = 7, MOSTLY_Q5_0 = 8,
  MOSTLY_Q5_1 = 9, MOSTLY_Q2_K = 10, MOSTLY_Q3_K_S = 11, MOSTLY_Q3_K_M = 12, MOSTLY_Q4_K_M = 15, MOSTLY_Q5_K_M = 17,
  MOSTLY_Q6_K = 18, MOSTLY_BF16 = 32,
};

// What a tensor is (a column of the name table), for type choosers and the Q/K permutation.
enum class GgufRole { Embedding, Output, Norm, AttnQ, AttnK, AttnV, AttnOutput, FfnGate, FfnUp, FfnDown };

// Where a tensor sits, for type choosers.
struct GgufTensorSite {
  std::string gguf_name;  // "blk.3.attn_v.weight"
  std::string hf_name;
  GgufRole role = GgufRole::Norm;
  int layer = -1;         // -1 outside the blocks
  int n_layers = 0;
  bool output_role = false;  // output.weight, or token_embd when the embeddings are tied
  bool skipped = false;      // not written (lm_head of tied embeddings)
  Shape shape;            // HF shape [out, in]
  DType dtype = DType::BF16;  // stored dtype
};

struct GgufWriteOptions {
  std::function<GgmlType(const GgufTensorSite&)> choose;  // 2-D tensors
  std::function<const float*(const GgufTensorSite&)> importance;  // nullable
  // Weights of value x_ij: imp_j * sqrt(sigma2_i + x_ij^2) (sigma2_i = 2 mean_j x_ij^2, as
  // llama.cpp combines its imatrix with the weights) instead of imp_j alone.
  bool importance_times_magnitude = false;
  // Bytes already encoded for a tensor of this type (rows in HF order, e.g. GPTQ's), or nullptr to
  // encode it here. Their size must be the tensor's; llama's Q/K row permutation is applied to them.
  std::function<const std::vector<uint8_t>*(const GgufTensorSite&, GgmlType)> encoded;
  GgufFileType file_type = GgufFileType::MOSTLY_BF16;
  // Plan only: check everything, fill the stats (bytes = the exact file size, types) and return
  // without reading tensor data or touching `out`.
  bool dry_run = false;
  bool progress = true;
};

struct GgufWriteStats {
  uint64_t tensors = 0, bytes = 0;  // file bytes
  std::map<std::string, int> type_counts;  // ggml type name -> tensors
  std::map<std::string, std::string> types;  // gguf tensor name -> ggml type name
  double seconds = 0;
};

// The site of a checkpoint tensor as write_gguf_model sees it: GGUF name and role (name "" when
// the table has no row), block index, n_layers and output_role from config.json. Tensors the
// writer leaves out (lm_head when the embeddings are tied) have skipped = true.
GgufTensorSite gguf_tensor_site(const nlohmann::json& config, const TensorInfo& t);
// The GGUF name of an HF tensor name (and its role), or "" when the table has no row for it.
std::string gguf_tensor_name(const std::string& hf_name, GgufRole* role = nullptr);
// The HF name of a GGUF tensor name, or "".
std::string hf_tensor_name_from_gguf(const std::string& gguf_name);
// "qwen3" / "qwen2" / "llama" for a config.json's model_type; throws naming `origin` otherwise.
const char* gguf_arch_for_config(const nlohmann::json& config, const std::string& origin);

GgufWriteStats write_gguf_model(const Checkpoint& in, const std::filesystem::path& out, const GgufWriteOptions& o);

Checkpoint open_gguf_checkpoint(const std::filesystem::path& path);

}  // namespace llmc
