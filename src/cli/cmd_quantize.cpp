// cli/cmd_quantize.cpp — `llmc quantize`: options -> QuantizeOptions -> quantize_model(), then
// the quality check (eval/quality.h quantize_and_check).
// Also accepts the AI-OS spelling (--backend ptq --quant-type T, --backend angelslim
// --angelslim-method M), mapped onto the one method table (quant/method.h): a row's
// aios_backend column says which backend spells it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>

#include "cli/command.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "eval/eval.h"
#include "eval/quality.h"
#include "quant/pipeline.h"

namespace llmc::cli {
namespace {

// AI-OS backends: which option names the method. The accepted values are the table's methods
// whose aios_backend is the backend (quant/method.h).
struct Backend {
  const char* name;
  const char* option;
};
constexpr Backend kBackends[] = {{"ptq", "--quant-type"}, {"angelslim", "--angelslim-method"}};

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

struct Args {
  std::string input, output, method, backend, quant_type, angelslim_method;
  std::string calibration, format, layout, eval_data, shard_size;
  int num_samples = 128, seq_len = 256, batch = 8, eval_seq = 256;
  int64_t eval_tokens = 16384;
  std::vector<std::string> ignore, method_opts;
  std::optional<int> bits;      // unset: the method's default (0 is a value, and refused)
  std::optional<int64_t> group;
  bool sym = false, asym = false, act_order = false, no_act_order = false, no_true_sequential = false;
  bool no_eval = false, json = false, overwrite = false;
  std::optional<double> damp;
  std::string moe_calib = "routed";
  std::optional<int64_t> moe_min_tokens;
  uint64_t seed = 0;
  std::string target_size;
  std::optional<double> bpw;
};

// "25%" or "0.25" -> 0.25; anything else (or outside (0, 1]) is an error naming the option.
double parse_share(const std::string& v) {
  std::string t = v;
  const bool pct = !t.empty() && t.back() == '%';
  if (pct) t.pop_back();
  size_t used = 0;
  double x = -1;
  try {
    x = std::stod(t, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != t.size() || !std::isfinite(x))
    fail("--target-size '", v, "' is not a share of the bf16 model (e.g. 25% or 0.25)");
  if (pct) x /= 100.0;
  if (!(x > 0 && x <= 1)) fail("--target-size '", v, "' must be in (0, 100%]");
  return x;
}

// Resolves --method / --backend spellings to one table name.
std::string resolve_method(const Args& a) {
  std::string from_backend;
  if (!a.backend.empty()) {
    const Backend* b = nullptr;
    std::vector<std::string> names;
    for (const auto& x : kBackends) {
      names.push_back(x.name);
      if (a.backend == x.name) b = &x;
    }
    if (!b) fail("--backend '", a.backend, "' is unknown (known: ", join(names), ")");
    const std::vector<std::string> values = aios_methods(b->name);
    const std::string& v = std::string(b->option) == "--quant-type" ? a.quant_type
                                                                    : a.angelslim_method;
    if (v.empty()) fail("--backend ", b->name, " needs ", b->option, " (one of ", join(values), ")");
    if (std::find(values.begin(), values.end(), v) == values.end())
      fail(b->option, " '", v, "' is not a ", b->name, " method (known: ", join(values), ")");
    const std::string& other = std::string(b->option) == "--quant-type" ? a.angelslim_method
                                                                        : a.quant_type;
    if (!other.empty())
      fail(std::string(b->option) == "--quant-type" ? "--angelslim-method" : "--quant-type",
           " does not go with --backend ", b->name);
    from_backend = v;
  } else if (!a.quant_type.empty() || !a.angelslim_method.empty()) {
    fail(!a.quant_type.empty() ? "--quant-type needs --backend ptq"
                               : "--angelslim-method needs --backend angelslim");
  }
  if (!a.method.empty() && !from_backend.empty() && a.method != from_backend)
    fail("--method ", a.method, " contradicts --backend ", a.backend, " (", from_backend, ")");
  const std::string m = a.method.empty() ? from_backend : a.method;
  if (m.empty()) fail("no method given: use --method (", method_names(), ") or --backend");
  return m;
}

// "--method-opt k=v" -> {"k": v}: v as JSON when it parses (numbers, true/false, quoted
// strings, lists), otherwise the raw string.
nlohmann::json parse_method_opts(const std::vector<std::string>& opts) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& o : opts) {
    const size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      fail("--method-opt '", o, "' must be KEY=VALUE");
    const std::string key = o.substr(0, eq), val = o.substr(eq + 1);
    if (j.contains(key)) fail("--method-opt ", key, " given twice");
    nlohmann::json v = nlohmann::json::parse(val, nullptr, /*allow_exceptions=*/false);
    j[key] = v.is_discarded() ? nlohmann::json(val) : v;
  }
  return j;
}

// Calibration options given to a method that reads no calibration data are warned about, not
// silently ignored (they change nothing, so they are not errors: scripts pass them to every
// method).
void warn_unused_calibration_options(const CLI::App& app, const QuantizeOptions& o) {
  const MethodInfo& m = find_method(o.method);
  if (needs_calibration(m, resolve_spec(m, o.overrides))) return;
  for (const char* opt : {"--calibration-data", "--num-samples", "--seq-len", "--batch", "--seed"})
    if (app.count(opt) > 0)
      log_warn(cat(opt, " is not used by method ", m.name, " (it needs no calibration data)"));
}

RunFn setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--input,-i", a->input, "input model: HF directory or .parquet file")->required();
  app.add_option("--output,-o", a->output, "output: directory (hf), .parquet file, or .gguf file (GGUF methods)")->required();
  app.add_option("--method,-m", a->method, "quantization method: " + method_names());
  app.add_option("--backend", a->backend, "AI-OS spelling: ptq | angelslim");
  auto aios_help = [](const char* backend) {
    std::string s;
    for (const auto& m : aios_methods(backend)) s += (s.empty() ? "" : " | ") + m;
    return "AI-OS: with --backend " + std::string(backend) + ": " + s;
  };
  app.add_option("--quant-type", a->quant_type, aios_help("ptq"));
  app.add_option("--angelslim-method", a->angelslim_method, aios_help("angelslim"));
  app.add_option("--calibration-data", a->calibration,
                 ".jsonl / .txt / .parquet (a \"text\" column) calibration data (default: the bundled calibration text)");
  app.add_option("--num-samples", a->num_samples, "calibration windows (default 128)")
      ->check(cli::at_least(1));
  app.add_option("--seq-len", a->seq_len, "tokens per calibration window (default 256)")
      ->check(cli::in_range(2, 1 << 20));
  app.add_option("--ignore", a->ignore,
                 "regex of module names to leave unquantized (repeatable; lm_head always is; a "
                 "match on part of q/k/v or gate/up widens to the group vLLM fuses)");
  app.add_option("--format", a->format, "output container: hf | parquet | gguf (default: from --output)");
  app.add_option("--layout", a->layout, "output layout (default: the method's first)");
  app.add_option("--bits", a->bits, "weight bits (methods that allow a choice)");
  app.add_option("--group-size", a->group, "group size along the input (-1 = per channel)");
  app.add_flag("--sym", a->sym, "symmetric weights");
  app.add_flag("--asym", a->asym, "asymmetric weights");
  app.add_option("--damp", a->damp, "GPTQ damping (fraction of mean diag H, default 0.01)");
  app.add_flag("--act-order", a->act_order,
               "GPTQ act-order (int4_gptq: on by default; mode via --method-opt act_order=permute|static|dynamic)");
  app.add_flag("--no-act-order", a->no_act_order, "GPTQ: quantize columns in their natural order");
  app.add_flag("--no-true-sequential", a->no_true_sequential, "GPTQ, fp8: collect every linear's inputs in one pass per block (from the unquantized block)");
  app.add_option("--moe-calib", a->moe_calib,
                 "mixture of experts: statistics of each expert from the tokens routed to it "
                 "(routed, default) or from every token (all-experts)")
      ->check(CLI::IsMember({"routed", "all-experts"}));
  app.add_option("--moe-min-tokens", a->moe_min_tokens,
                 "mixture of experts: an expert routed fewer calibration tokens gets statistics "
                 "from every token (default 16)")
      ->check(cli::at_least(1));
  app.add_option("--method-opt", a->method_opts,
                 "method-specific option KEY=VALUE (repeatable; VALUE parsed as JSON when it "
                 "is, else a string); see docs/methods.md");
  app.add_option("--seed", a->seed, "seed for the calibration windows (default 0)");
  app.add_option("--batch", a->batch, "calibration samples per block run (default 8)")
      ->check(cli::at_least(1));
  app.add_option("--shard-size", a->shard_size, "hf output: max safetensors shard size (5GB)");
  app.add_flag("--no-eval", a->no_eval, "skip the quality check at the end");
  app.add_option("--eval-data", a->eval_data,
                 "held-out text for the quality check (default: the bundled sample)");
  app.add_option("--eval-tokens", a->eval_tokens, "tokens for the quality check (default 16384)")
      ->check(cli::at_least(1));
  app.add_option("--eval-seq-len", a->eval_seq, "window of the quality check (default 256)")
      ->check(cli::in_range(2, 1 << 20));
  app.add_option("--target-size", a->target_size,
                 "GGUF: choose a type per tensor so that the whole file is at most this share of the bf16 "
                 "model (e.g. 25% or 0.25), by measured sensitivity");
  app.add_option("--bpw", a->bpw, "GGUF: choose a type per tensor for this average of bits per weight over the "
                 "quantized tensors (e.g. 3.9)");
  app.add_flag("--json", a->json, "print the summary as JSON");
  add_overwrite_flag(app, a->overwrite);
  return [a, &app]() {
    QuantizeOptions o;
    o.input = a->input;
    o.output = a->output;
    o.method = resolve_method(*a);
    if (a->sym && a->asym) fail("--sym and --asym are mutually exclusive");
    if (a->sym) o.overrides.symmetric = true;
    if (a->asym) o.overrides.symmetric = false;
    o.overrides.bits = a->bits;
    o.overrides.group = a->group;
    o.overrides.layout = a->layout;
    o.overrides.extra = parse_method_opts(a->method_opts);
    o.overrides.seed = a->seed;
    if (!a->target_size.empty()) o.target_size = parse_share(a->target_size);
    if (a->bpw) {
      if (!(*a->bpw > 0 && *a->bpw <= 16)) fail("--bpw ", *a->bpw, " must be in (0, 16]");
      o.target_bpw = *a->bpw;
    }
    o.overrides.damp = a->damp;
    if (a->act_order && a->no_act_order) fail("--act-order and --no-act-order contradict each other");
    if (a->act_order) o.overrides.act_order = true;
    if (a->no_act_order) o.overrides.act_order = false;
    if (a->no_true_sequential) o.overrides.true_sequential = false;
    o.overrides.moe_all_experts = a->moe_calib == "all-experts";
    o.overrides.moe_min_tokens = a->moe_min_tokens;
    o.calibration_data = a->calibration;
    o.num_samples = a->num_samples;
    o.seq_len = a->seq_len;
    o.ignore = a->ignore;
    if (!a->format.empty()) o.format = parse_checkpoint_format(a->format);
    if (o.format == CheckpointFormat::Parquet && o.output.extension() != ".parquet")
      fail(a->output, ": a Parquet checkpoint must be named *.parquet");
    o.writer.overwrite = a->overwrite;
    if (!a->shard_size.empty()) o.writer.max_shard_bytes = parse_size(a->shard_size);
    o.batch = a->batch;
    o.quality.enabled = !a->no_eval;
    o.quality.data = a->eval_data;
    o.quality.tokens = a->eval_tokens;
    o.quality.seq_len = a->eval_seq;
    warn_unused_calibration_options(app, o);
    const QuantizeResult r = quantize_and_check(o);
    if (a->json) std::cout << summary_json(r).dump(2) << "\n";
    else std::cout << format_summary(r);
    std::cout.flush();
    if (r.quality.measured) {
      // A broken quantized model (or base) must not end with exit 0.
      check_finite_ppl(r.quality.ppl_base, cat("quality check: the input model ", a->input));
      check_finite_ppl(r.quality.ppl_quant, cat("quality check: the quantized model ", a->output));
    }
    return 0;
  };
}

}  // namespace

LLMC_REGISTER_COMMAND("quantize", "quantize a model (int8, int2, fp16, fp8_static, fp8_dynamic, "
                      "int8_dynamic, ...) and report its quality",
                      20, setup);

}  // namespace llmc::cli
