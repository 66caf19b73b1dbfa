// quant/method.h — THE table of quantization methods, and the block-level interface that the
// quantize pipeline (quant/pipeline.h) drives.
//
// The table
//  * One row per method (MethodInfo): name, default bits / group / symmetry, whether it needs
//    calibration data, the output layouts it can write (first = default; names from
//    quant/layouts.h), a one-line description and a factory for its BlockQuantizer.
//  * Rows live in ONE array in quant/method.cpp (explicit, not self-registering: libllmc is a
//    static library and self-registering objects would be dropped by the linker), written with
//    designated initializers. To add a method, declare its factory in its own header and add one
//    row there. A row also says which options the method reads (generic flags in `uses`,
//    --method-opt keys with type, range and default in `opts`) and its AI-OS spelling
//    (`aios_backend`); resolve_spec checks every option against the row, once.
//  * find_method(name) matches the exact name; an unknown name throws llmc::Error listing every
//    name. Nothing anywhere dispatches on substrings of method names.
//
// The block interface (how a method sees the model)
//  * The pipeline opens the model, cuts calibration windows and then, for each decoder block i:
//      1. builds a BlockJob whose `inputs` are block i's calibration inputs, i.e. the outputs of
//         blocks < i computed WITH their quantized weights (activation quantization simulated);
//         never any padding: every row is a real token;
//      2. calls BlockQuantizer::quantize_block(job);
//      3. writes every linear of the block: slots with job.quantized[s] set are encoded in
//         spec.layout; the others are written dense from job.weights (in the checkpoint's dtype,
//         or fp16 for methods whose `dense_dtype` says so). Norms are written from job.weights
//         too, so a method may fold scales into them (AWQ) or into preceding dense linears;
//      4. computes the block's outputs with the final weights (job.weights after quantize_block;
//         quantized slots already replaced by simulated-quantization Linears by job.commit) to
//         form block i+1's inputs, then releases the block.
//  * A method must call job.commit(slot, qw, report) for every slot it quantizes and must not
//    quantize slots for which job.ignored(slot) is true. commit() installs a Linear computing
//    with the dequantized weight and the weight's activation quantization (qw.act), so later
//    job.run() calls inside the same block (GPTQ true-sequential) see the quantized layer.
//  * Methods with needs_calibration == false get n_samples == 0 and inputs == nullptr; they must
//    not call run()/for_each_input().
//  * Hooked activations are float32 rows [rows, in_features]; rows = samples_in_batch * seq.
//    The same input row is seen once per slot asked for (q/k/v share an input; gate/up share one).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/linear.h"
#include "model/model.h"
#include "core/qweight.h"

namespace llmc {

// Fully resolved options of one quantization run (defaults from the table + user overrides).
struct QuantSpec {
  std::string method;        // table name, e.g. "fp8_static"
  int bits = 8;
  int64_t group = -1;        // >0 group size along in; -1 per-channel; 0 per-tensor
  bool symmetric = true;
  std::string layout;        // output layout name (quant/layouts.h)
  uint64_t seed = 0;
  // GPTQ / AWQ / fp8 knobs; resolve_spec refuses them for methods whose row does not read them.
  double damp = 0.01;            // GPTQ damping, fraction of mean(diag H)
  bool act_order = false;        // GPTQ act-order
  bool true_sequential = true;   // GPTQ: q/k/v -> o -> gate/up -> down
  // Mixture of experts: a routed expert's statistics come from the tokens routed to it; with
  // moe_all_experts from every token of the layer (for statistics only; outputs stay routed).
  // An expert routed fewer than moe_min_tokens calibration rows gets every token's statistics
  // (the fallback, listed in the report).
  bool moe_all_experts = false;
  int64_t moe_min_tokens = 16;
  // Calibration shape (filled by the pipeline; 0 for methods that need none).
  int num_samples = 0, seq_len = 0;
  nlohmann::json extra = nlohmann::json::object();  // method-specific extras
};

// What the user asked for; unset fields take the method's default.
struct QuantOverrides {
  std::optional<int> bits;
  std::optional<int64_t> group;
  std::optional<bool> symmetric;
  std::string layout;  // "" = method default
  uint64_t seed = 0;
  std::optional<double> damp;
  std::optional<bool> act_order;
  std::optional<bool> true_sequential;
  bool moe_all_experts = false;          // --moe-calib all-experts
  std::optional<int64_t> moe_min_tokens; // --moe-min-tokens (>= 1)
  // Method-specific options, copied into QuantSpec::extra (e.g. GPTQ {"act_order": "permute",
  // "mse": 20}, AWQ {"solver": "gptq"}); checked against the row's `opts` by resolve_spec.
  nlohmann::json extra = nlohmann::json::object();
};

struct BlockJob;

class BlockQuantizer {
 public:
  virtual ~BlockQuantizer() = default;
  // Quantizes the non-ignored linears of one decoder block (see the contract above).
  virtual void quantize_block(BlockJob& job) = 0;
  // Called once after the last block; may add a method summary (goes into the report file).
  virtual void finish(nlohmann::json& summary) {}
  // Fields merged into the layout's quantization_config (QuantConfigSpec::extra), e.g. GPTQ's
  // damp_percent / desc_act / true_sequential. Called after finish().
  virtual nlohmann::json config_extra() const { return nlohmann::json::object(); }
};

using QuantizerFactory = std::function<std::unique_ptr<BlockQuantizer>(const QuantSpec&)>;

// One `--method-opt KEY=VALUE` a method accepts: its type, range and default. A row's `opts`
// list is checked once by resolve_spec (unknown key, wrong type, out of range, not a choice:
// llmc::Error "method M: --method-opt KEY must be ..."); methods read values with method_opt().
struct MethodOpt {
  enum class Kind : uint8_t { Int, Number, Bool, Choice };
  const char* key = "";
  Kind kind = Kind::Int;
  nlohmann::json def;                // the value used when the key is not given
  double lo = 0, hi = 0;             // Int / Number: lo <= v <= hi (v < hi when hi_open)
  bool hi_open = false;
  std::vector<std::string> choices;  // Choice: the accepted strings
  const char* only_with = nullptr;   // "key=value" / "key!=value": accepted only then
};

// Generic quantize options (CLI flags) that a method reads; a row's `uses` lists them. Giving one
// to a method that does not read it is an error (resolve_spec).
enum MethodUses : unsigned {
  kUsesNone = 0,
  kUsesDamp = 1u << 0,            // --damp
  kUsesActOrder = 1u << 1,        // --act-order / --no-act-order
  kUsesTrueSequential = 1u << 2,  // --no-true-sequential
};

// A row of the method table. Rows are written with designated initializers (quant/method.cpp);
// fields left out take the defaults below.
struct MethodInfo {
  std::string name;                  // exact CLI name, e.g. "int8_dynamic"
  // AI-OS spelling: the `--backend` this method belongs to ("ptq": --quant-type NAME,
  // "angelslim": --angelslim-method NAME); nullptr = reachable through --method only.
  const char* aios_backend = nullptr;
  int default_bits = 8;
  std::vector<int> allowed_bits;     // --bits accepted values (contains default_bits)
  int64_t default_group = -1;        // >0 group; -1 per-channel; 0 per-tensor
  bool group_configurable = false;   // --group-size accepted
  bool default_symmetric = true;
  bool symmetry_configurable = false;  // --sym/--asym accepted
  bool default_act_order = false;    // GPTQ act-order on unless --no-act-order
  unsigned uses = kUsesNone;         // generic options read (MethodUses)
  const char* uses_only_with = nullptr;  // `uses` apply only with this --method-opt ("k=v")
  std::vector<MethodOpt> opts;       // --method-opt keys accepted
  bool needs_calibration = false;
  // Optional: decides from the resolved spec (overrides needs_calibration), e.g. fp8_dynamic
  // needs data only for its GPTQ weight rounding, not with --method-opt weights=rtn.
  std::function<bool(const QuantSpec&)> calibration_for;
  std::vector<std::string> layouts;  // output layouts, first = default; empty = dense output
  // Optional: the default layout chosen from the resolved spec when no --layout is given
  // (e.g. GPTQ: gptq when symmetric, compressed-tensors when asymmetric). Must name a row of
  // `layouts`. Unset: layouts.front().
  std::function<std::string(const QuantSpec&)> default_layout;
  std::optional<DType> dense_dtype;  // dtype of every float tensor written dense (fp16 method);
                                     // nullopt = keep each tensor's checkpoint dtype
  // GGUF rows: the preset (quant/gguf_quant.h, e.g. "Q4_K_M"); set, the method writes a .gguf
  // file through quantize_gguf instead of the block pipeline (its factory is never called).
  const char* gguf_preset = nullptr;
  std::string description;
  QuantizerFactory factory;
};

// The whole table, in display order.
const std::vector<MethodInfo>& method_table();
// Exact-name lookup; throws llmc::Error "unknown method 'x' (known: a, b, ...)".
const MethodInfo& find_method(const std::string& name);
// Comma-separated list of every method name (for help texts and errors).
std::string method_names();
// Names of the methods whose aios_backend is `backend`, in table order.
std::vector<std::string> aios_methods(const std::string& backend);
// Whether this spec of method m needs calibration data (calibration_for, else needs_calibration).
bool needs_calibration(const MethodInfo& m, const QuantSpec& s);
// Merges defaults and overrides. Throws llmc::Error naming the option ("--bits must be one of
// 2, 3, 4, 8 for int4_gptq, got 0", "--damp must be in [0, 1)", "--group-size is not accepted
// by fp8_static: ...") for a value out of range, an option the method fixes or does not read
// (`uses`), an unknown layout, and any --method-opt not in the row's `opts` or invalid there.
QuantSpec resolve_spec(const MethodInfo& m, const QuantOverrides& o);

// Checks --method-opt values `extra` against m's `opts` (resolve_spec calls it): unknown key
// ("method M has no option 'k' (known: ...)", "takes no --method-opt"), wrong type, out of range
// ("must be >= 1", "must be in [0, 1000]"), not a choice, or given without its only_with.
void check_method_options(const MethodInfo& m, const nlohmann::json& extra);

// The value of --method-opt `key` of spec's method: spec.extra[key] if given, else the row's
// default (MethodOpt::def). The key must be one of the row's opts (checked by resolve_spec).
template <typename T>
T method_opt(const QuantSpec& spec, const char* key);
// The row entry of `key` for spec's method; throws llmc::Error when the method has no such key.
const MethodOpt& find_method_opt(const QuantSpec& spec, const char* key);

template <typename T>
T method_opt(const QuantSpec& spec, const char* key) {
  if (spec.extra.is_object()) {
    const auto it = spec.extra.find(key);
    if (it != spec.extra.end()) return it->template get<T>();
  }
  return find_method_opt(spec, key).def.template get<T>();
}

// One decoder block handed to a BlockQuantizer. Built by the pipeline (and by tests).
struct BlockJob {
  Model& model;
  int layer = 0;
  const QuantSpec& spec;
  BlockWeights& weights;            // == model.block(layer); mutable (scale folding, swaps)
  // Calibration inputs [n_samples * seq, hidden]: on the host (`inputs`), or on the GPU
  // (`dev_inputs`, a device array; then run()/for_each_input() run the block on the GPU and
  // hooks see device views — backend::MatView — which quant/hessian.h and backend::dev
  // reductions consume in place). nullptr both: no calibration.
  const float* inputs = nullptr;
  const float* dev_inputs = nullptr;
  int n_samples = 0, seq = 0;
  int batch = 8;                    // samples per block run inside run()/for_each_input()
  // true: commit() installs a Linear simulating the quantized weight (later runs of this block
  // see it). The pipeline sets false when nothing runs the block afterwards (no calibration):
  // the dense weight stays and no dequantized copy is made.
  bool simulate = true;
  // true: leave this module unquantized (default: the layout's BlockModule::quantize == false).
  std::function<bool(LinearSlot)> ignored;

  // Results, filled through commit(); indexed by module (layout()).
  std::vector<std::optional<QuantizedWeight>> quantized;
  std::vector<nlohmann::json> report;  // per-linear JSON (error, damping, ...)
  // Mixture-of-experts calibration (methods that calibrate fill it through note_expert()):
  // rows routed to each expert and the statistics used ("routed", "all-tokens (fallback)",
  // "all-tokens (--moe-calib all-experts)").
  std::vector<int64_t> expert_tokens;
  std::vector<std::string> expert_stats;

  // Time inside block runs (forward) and inside hooks (statistics), summed over calls; GPU
  // work is synchronized at the hook boundaries so the split is real.
  double seconds_forward = 0, seconds_stats = 0;

  BlockJob(Model& m, int layer, const QuantSpec& s, BlockWeights& w);

  const ModelConfig& config() const { return model.config(); }
  // The block's linear modules, their input groups and stages (model/arch.h).
  const BlockLayout& layout() const { return model.layout(layer); }
  int num_modules() const { return layout().size(); }
  // Every module index (as LinearSlot), in layout order.
  std::vector<LinearSlot> modules() const;
  // The modules of input group g that are not ignored.
  std::vector<LinearSlot> active(const InputGroup& g) const;
  // Records expert e's calibration rows and which statistics were used.
  void note_expert(int e, int64_t tokens, const std::string& stats);
  int64_t hidden() const { return model.config().hidden_size; }
  int64_t rows() const { return int64_t(n_samples) * seq; }
  bool has_inputs() const { return (inputs || dev_inputs) && n_samples > 0; }
  bool on_device() const { return dev_inputs != nullptr && inputs == nullptr; }
  // "model.layers.<layer>.self_attn.q_proj" (the HF module name, without ".weight").
  std::string module_name(LinearSlot s) const;
  // The slot's dense weight; throws if the slot is no longer a DenseLinear.
  DenseLinear& dense(LinearSlot s) const;
  // Throws llmc::Error naming "<module>.weight" if any element is NaN/Inf.
  void check_finite(LinearSlot s) const;

  // Runs the block over samples [first, first + count) of `x` (default: the calibration
  // inputs, all samples) in batches of `batch` samples, calling `hook` (may be null) for every
  // linear. If `out` is given it receives the block outputs [count * seq, hidden] (host). The
  // block weights used are whatever job.weights holds at call time.
  void run(const LinearHook* hook, std::vector<float>* out = nullptr, const float* x = nullptr,
           int first = 0, int count = -1);
  // The block's outputs over all calibration samples into `dev_out` (device array of
  // rows() * hidden(); GPU inputs only): the next block's inputs, never leaving the GPU.
  void forward_device(float* dev_out);
  // Streams the inputs of `slot` over all calibration samples to fn(x) (host or device view,
  // as the inputs are). Stops each batch's block run right after `slot`'s input is seen (cheap
  // for early slots).
  void for_each_input(LinearSlot slot, const std::function<void(const backend::MatView& x)>& fn);
  // Streams the inputs of every input group in `groups` (indices into layout().groups) over all
  // calibration samples: fn(g, x) for each batch's rows of group g (its first member's input).
  // Dense groups only and one group: for_each_input; else one block run. Groups of routed
  // experts get the rows routed to the expert; when spec.moe_all_experts, or for experts routed
  // fewer than spec.moe_min_tokens rows (then reset(g) is called and a second run observes them),
  // every token of the layer. Records each expert's rows and statistics (note_expert).
  void for_groups(const std::vector<int>& groups,
                  const std::function<void(int g, const backend::MatView& x)>& fn,
                  const std::function<void(int g)>& reset);
  // Records slot's quantized weight and report, and replaces the slot's Linear by one that
  // computes with qw.dequantize() and simulates qw.act on its inputs (when `simulate`).
  void commit(LinearSlot s, QuantizedWeight qw, nlohmann::json rep = nlohmann::json::object());
};

// A Linear that computes with a dequantized weight and fake-quantizes its inputs as `act`
// prescribes (quantize_activations in core/qweight.h). Used for the next block's inputs and
// inside error searches.
class SimQuantLinear : public Linear {
 public:
  SimQuantLinear(std::vector<float> w, int64_t out, int64_t in, ActQuant act, float input_scale,
                 std::vector<float> bias = {});
  explicit SimQuantLinear(const QuantizedWeight& qw);
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const float* x, int64_t rows, float* y) const override;
  uint64_t bytes_held() const override { return (w_.size() + b_.size()) * sizeof(float); }
  DenseForm dense_form() const override {
    return {w_.data(), b_.empty() ? nullptr : b_.data(), uint8_t(act_), input_scale_};
  }
  const std::vector<float>& weight() const { return w_; }

 private:
  std::vector<float> w_, b_;
  int64_t out_, in_;
  ActQuant act_;
  float input_scale_;
};

}  // namespace llmc
