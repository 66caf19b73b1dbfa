// eval/quality.h — `llmc quantize`'s quality check: the written output against its input.
//
// quality_check() loads both checkpoints through the loader (loader/quant_linear.h
// load_model_for_inference) and compares perplexity, KL divergence and top-1 agreement on
// `q.tokens` tokens of held-out text (default: the bundled data/heldout-sample.txt), cut into
// windows of `q.seq_len` (at most max_position_embeddings). A base without tokenizer.json, or a
// text shorter than one window, is skipped with a warning (measured = false).
//
// quantize_and_check() is quantize_model() (quant/pipeline.h) followed by that check when
// opt.quality.enabled; the result's seconds and peak RSS then include the check. It lives here,
// not in quant/, because quant/ sits below loader/ and eval/ (docs/architecture.md).
#pragma once
#include <filesystem>

#include "quant/pipeline.h"

namespace llmc {

// Perplexity/KL/top-1 of `quant` against `base` (see above).
QualityResult quality_check(const std::filesystem::path& base, const std::filesystem::path& quant,
                            const QualityOptions& q);

// quantize_model(opt), then quality_check(opt.input, opt.output, opt.quality) when enabled.
QuantizeResult quantize_and_check(const QuantizeOptions& opt);

}  // namespace llmc
