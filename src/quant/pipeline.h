// quant/pipeline.h — `llmc quantize` as a library call.
//
// quantize_model() (one short function in pipeline.cpp, read it top to bottom):
//   open the checkpoint (mmap, blocks loaded lazily) -> tokenize calibration windows (methods
//   with needs_calibration only) -> for each decoder block: build a BlockJob with the block's
//   calibration inputs, run the method's BlockQuantizer, write the block's tensors (quantized
//   slots encoded in the chosen layout, others dense), compute the block's outputs with the
//   quantized weights (activation quantization simulated) as the next block's inputs, release
//   the block -> copy the non-block tensors (embeddings, final norm, lm_head) unchanged ->
//   write config.json with quantization_config (ignore = lm_head + every skipped linear),
//   the input's auxiliary files byte for byte (tokenizer files, generation_config, ...) and
//   llmc_quant_report.json -> rename into place. The quality check (opt.quality) is not run
//   here: eval/quality.h quantize_and_check() runs it after quantize_model() returns (quant/
//   sits below loader/ and eval/), filling QuantizeResult::quality.
//
// Contracts:
//  * Output goes through make_checkpoint_writer (temp path + rename): an error or Ctrl-C
//    leaves nothing under the output name. Before any work the output is checked
//    (core/fs.h check_output_path: not, around or inside an input; an existing output only
//    with writer.overwrite), and so are the calibration file, the tokenizer, the quality check's
//    data (UTF-8) and its window length (preflight in pipeline.cpp).
//  * Peak memory: about one block in fp32 + calibration activations (2 x samples x seq x
//    hidden floats) + the embeddings.
//  * An input that already has a quantization_config is refused (quantize a base model).
//  * --ignore patterns are ECMAScript regexes searched in the module name
//    ("model.layers.3.mlp.down_proj"); a leading "re:" (vLLM style) is accepted and dropped.
//  * Non-block tensors keep their dtype and bytes, except that methods with a dense_dtype
//    (fp16) convert every float tensor to it.
//  * QualityOptions / QualityResult are the request and result of the quality check that
//    eval/quality.h runs (quality_check: the written output through the loader against the
//    input, perplexity, KL and top-1 agreement on held-out text); quantize_model() leaves
//    QuantizeResult::quality unmeasured.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "quant/method.h"

namespace llmc {

struct QualityOptions {
  bool enabled = true;
  std::filesystem::path data;  // empty: bundled held-out sample
  int64_t tokens = 16384;      // at most this many tokens (whole windows)
  int seq_len = 256;
};

struct QuantizeOptions {
  std::filesystem::path input, output;
  std::string method;
  QuantOverrides overrides;
  std::filesystem::path calibration_data;  // empty: bundled data/calibration.txt
  int num_samples = 128;
  int seq_len = 256;
  std::vector<std::string> ignore;         // regexes, in addition to lm_head
  std::optional<CheckpointFormat> format;  // default: parquet if output ends in .parquet
  WriterOptions writer;
  int batch = 8;                           // calibration samples per block run
  QualityOptions quality;
  // Block i's tensors are encoded and written by a writer thread while block i + 1 is
  // quantized (same bytes either way); false writes them in the quantizing thread.
  bool writer_thread = true;
  // GGUF size budgets (one at most; 0 = none): the whole file <= target_size × the bf16 model's
  // tensor bytes, or the quantized 2-D tensors at <= target_bpw bits per weight on average.
  double target_size = 0, target_bpw = 0;
};

struct QualityResult {
  bool measured = false;
  int64_t tokens = 0;
  double ppl_base = 0, ppl_quant = 0, ppl_ratio = 0, kl = 0, top1 = 0;
};

struct QuantizeResult {
  std::filesystem::path output;
  std::string method, layout;
  int layers = 0, quantized_linears = 0, skipped_linears = 0;
  int num_samples = 0, seq_len = 0;      // 0 when the method needs no calibration
  double seconds = 0, quantize_seconds = 0;
  // Where quantize_seconds went: opening the model + calibration embeddings (load), block
  // forwards (forward), statistics hooks (stats: Hessians, abs-max, ...), the methods' own
  // work (solve: GPTQ/AWQ/fp8 searches), layout encoding (pack) and tensor writing (write).
  double seconds_load = 0, seconds_forward = 0, seconds_stats = 0, seconds_solve = 0,
         seconds_pack = 0, seconds_write = 0;
  std::string activations;  // where the calibration activations lived ("gpu", "host", "")
  uint64_t peak_rss = 0;
  uint64_t peak_gpu = 0;    // GPU memory in use at its peak (0 on the CPU)
  uint64_t out_bytes = 0, bf16_bytes = 0;              // whole model (tensor bytes)
  uint64_t qlinear_bytes = 0, qlinear_bf16_bytes = 0;  // quantized linears only
  QualityResult quality;
  nlohmann::json report;                               // what llmc_quant_report.json holds
  // "" when vLLM can serve the output (quant/layouts.h Layout::vllm_why_not), else why not.
  std::string vllm_why_not;
};

QuantizeResult quantize_model(const QuantizeOptions& opt);

// The human-readable summary printed at the end of `llmc quantize`.
std::string format_summary(const QuantizeResult& r);
// Machine-readable form (llmc quantize --json, bench).
nlohmann::json summary_json(const QuantizeResult& r);

}  // namespace llmc
