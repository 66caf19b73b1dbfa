// quant/pipeline.cpp — the quantize pipeline (contract in quant/pipeline.h).
#include "quant/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <future>
#include <memory>
#include <regex>
#include <set>

#include <unistd.h>

#include "backend/backend.h"
#include "calib/calib_data.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "formats/convert.h"
#include "model/arch.h"
#include "model/config.h"
#include "model/model.h"
#include "quant/gguf_quant.h"
#include "quant/layouts.h"
#include "tokenizer/tokenizer.h"

namespace llmc {

using nlohmann::json;

namespace {

constexpr const char* kReportFile = "llmc_quant_report.json";

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ---- --ignore ----------------------------------------------------------------------------

class IgnoreRules {
 public:
  explicit IgnoreRules(const std::vector<std::string>& patterns) {
    for (std::string p : patterns) {
      if (p.rfind("re:", 0) == 0) p = p.substr(3);
      if (p.empty()) fail("--ignore: empty pattern");
      try {
        rules_.emplace_back(p, std::regex(p, std::regex::ECMAScript));
      } catch (const std::regex_error& e) {
        fail("--ignore: invalid regular expression '", p, "': ", e.what());
      }
    }
  }
  bool match(const std::string& module) const {
    for (const auto& [src, re] : rules_)
      if (std::regex_search(module, re)) return true;
    return false;
  }

 private:
  std::vector<std::pair<std::string, std::regex>> rules_;
};

// The modules of one block left dense: those the layout leaves dense by default (MoE routers)
// and those --ignore matches. vLLM loads q/k/v, gate/up and a layer's experts as one fused
// module each (BlockModule::fused) and refuses a partly quantized one, so a match on one member
// widens to its whole group, saying so.
std::vector<bool> ignored_slots(const BlockJob& job, const IgnoreRules& rules) {
  const BlockLayout& L = job.layout();
  std::vector<bool> ign(size_t(L.size()));
  for (int s = 0; s < L.size(); ++s)
    ign[size_t(s)] = !L.modules[size_t(s)].quantize || rules.match(job.module_name(LinearSlot(s)));
  std::vector<std::string> done;
  for (const BlockModule& f : L.modules) {
    if (f.fused.empty() || std::find(done.begin(), done.end(), f.fused) != done.end()) continue;
    done.push_back(f.fused);
    std::string matched, widened;
    int n_matched = 0, n_widened = 0;
    for (int s = 0; s < L.size(); ++s) {
      if (L.modules[size_t(s)].fused != f.fused) continue;
      const bool m = ign[size_t(s)];
      (m ? n_matched : n_widened)++;
      std::string& list = m ? matched : widened;
      if ((m ? n_matched : n_widened) <= 4) list += ' ' + job.module_name(LinearSlot(s));
      else if ((m ? n_matched : n_widened) == 5) list += " ...";
    }
    if (matched.empty() || widened.empty()) continue;
    for (int s = 0; s < L.size(); ++s)
      if (L.modules[size_t(s)].fused == f.fused) ign[size_t(s)] = true;
    log_info(cat("--ignore matched", matched, " (fused by vLLM into ", f.fused,
                 "): also leaving", widened, " unquantized"));
  }
  return ign;
}

// A group size must divide the in_features of every linear it applies to: vLLM, AutoGPTQ,
// AutoAWQ and compressed-tensors' kernels all need whole groups. Checked before any work.
void check_group_size(const QuantSpec& spec, const ModelConfig& c) {
  if (spec.group <= 0) return;
  bool dense_mlp = false;  // some layer has a dense MLP (of intermediate_size)
  for (int l = 0; l < c.num_layers; ++l) dense_mlp |= !c.is_moe_layer(l);
  const struct {
    const char* modules;
    int64_t in;
    bool used;
  } ins[] = {{"q/k/v/gate/up_proj (hidden_size)", c.hidden_size, true},
             {"o_proj (num_attention_heads x head_dim)", int64_t(c.num_heads) * c.head_dim, true},
             {"down_proj (intermediate_size)", c.intermediate_size, dense_mlp},
             {"experts' down_proj (moe_intermediate_size)", c.moe_intermediate_size,
              c.num_experts > 0},
             {"shared expert's down_proj (shared_expert_intermediate_size)",
              c.shared_expert_intermediate_size, c.shared_expert_intermediate_size > 0}};
  for (const auto& x : ins)
    if (x.used && x.in % spec.group != 0)
      fail("--group-size ", spec.group, " does not divide the in_features ", x.in, " of ",
           x.modules, "; choose a divisor (vLLM serves -1, 32, 64, 128)");
}

// ---- output ------------------------------------------------------------------------------

// Streams tensors into the checkpoint writer and keeps the size accounting.
class OutputTensors {
 public:
  OutputTensors(CheckpointWriter& w, const TensorReader& in, std::optional<DType> dense_dtype)
      : w_(w), in_(in), dense_dtype_(dense_dtype) {}

  // Dtype a dense float tensor `name` is written in: the method's dense dtype, else the
  // checkpoint's dtype of that tensor (float32 when it is new).
  DType dense_dtype_for(const std::string& name) const {
    if (dense_dtype_) return *dense_dtype_;
    if (in_.has(name)) {
      const DType t = in_.get(name).info.dtype;
      if (dtype_traits(t).is_float) return t;
    }
    return DType::F32;
  }

  void add(const std::string& name, DType t, const Shape& shape, const void* data, uint64_t n) {
    w_.add_tensor(name, t, shape, data, n);
    written_.insert(name);
    bytes_ += n;
  }
  void add_f32(const std::string& name, const std::vector<float>& v, const Shape& shape) {
    const DType t = dense_dtype_for(name);
    std::vector<uint8_t> buf(v.size() * dtype_size(t));
    convert(DType::F32, v.data(), t, buf.data(), v.size());
    check_f16_range(name, t, buf);
    add(name, t, shape, buf.data(), buf.size());
  }
  // Copies an input tensor (converted to the dense dtype for float tensors when one is set).
  void copy(const std::string& name) {
    const TensorRef r = in_.get(name);
    if (dense_dtype_ && dtype_traits(r.info.dtype).is_float && r.info.dtype != *dense_dtype_) {
      const DType t = *dense_dtype_;
      std::vector<uint8_t> buf(size_t(r.info.numel()) * dtype_size(t));
      convert(r.info.dtype, r.data, t, buf.data(), size_t(r.info.numel()));
      check_f16_range(name, t, buf);
      add(name, t, r.info.shape, buf.data(), buf.size());
    } else {
      add(name, r.info.dtype, r.info.shape, r.data, r.info.nbytes);
    }
  }
  // A value beyond float16's range would silently become inf: refuse, naming the tensor.
  static void check_f16_range(const std::string& name, DType t, const std::vector<uint8_t>& buf) {
    if (t != DType::F16) return;
    for (size_t i = 0; i + 1 < buf.size(); i += 2) {
      const uint16_t h = uint16_t(buf[i] | buf[i + 1] << 8);
      if ((h & 0x7C00) == 0x7C00)
        fail(name, ": value ", i / 2, " does not fit float16 (|x| > 65504 or not finite), which this "
             "output requires");
    }
  }
  // Marks an input tensor as replaced by what was written (e.g. a quantized module's weight).
  void consume(const std::string& name) { written_.insert(name); }
  bool written(const std::string& name) const { return written_.count(name) != 0; }
  uint64_t bytes() const { return bytes_; }

 private:
  CheckpointWriter& w_;
  const TensorReader& in_;
  std::optional<DType> dense_dtype_;
  std::set<std::string> written_;
  uint64_t bytes_ = 0;
};

struct BlockWriteStats {
  uint64_t qbytes = 0, qbf16 = 0;
  double seconds_pack = 0;   // layout encoding (the rest of write_block is writing)
  double seconds_write = 0;  // BlockWriter's total minus the encoding
};

// Writes every tensor of one decoder block from the job (quantized slots encoded in `layout`).
BlockWriteStats write_block(OutputTensors& out, const BlockJob& job, const ArchSpec& arch,
                            const Layout* layout) {
  BlockWriteStats st;
  for (int s = 0; s < job.num_modules(); ++s) {
    const LinearSlot slot = LinearSlot(s);
    const std::string m = job.module_name(slot);
    out.consume(m + ".weight");
    out.consume(m + ".bias");
    if (job.quantized[size_t(s)]) {
      LLMC_CHECK(layout != nullptr, "quantized weight without a layout");
      const QuantizedWeight& qw = *job.quantized[size_t(s)];
      bool has_bias = false;
      const double tp = now_s();
      const std::vector<EncodedTensor> enc = layout->encode(m, qw);
      st.seconds_pack += now_s() - tp;
      for (const EncodedTensor& t : enc) {
        out.add(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
        st.qbytes += t.bytes.size();
        has_bias |= t.name == m + ".bias";
      }
      if (!has_bias && !qw.bias.empty()) {
        out.add_f32(m + ".bias", qw.bias, {qw.out});
      }
      st.qbf16 += uint64_t(qw.out * qw.in) * 2;
    } else {
      const auto* d = dynamic_cast<const DenseLinear*>(job.weights.linear[size_t(s)].get());
      if (!d) fail(m, ": unquantized slot is not a dense layer");
      out.add_f32(m + ".weight", d->weight(), {d->out_features(), d->in_features()});
      if (!d->bias().empty()) out.add_f32(m + ".bias", d->bias(), {d->out_features()});
    }
  }
  const std::string p = cat(arch.layer_prefix, job.layer, ".");
  const int64_t H = job.hidden();
  out.add_f32(p + arch.input_norm, job.weights.input_norm, {H});
  out.add_f32(p + arch.post_norm, job.weights.post_norm, {H});
  if (!job.weights.q_norm.empty())
    out.add_f32(p + arch.q_norm, job.weights.q_norm, {int64_t(job.weights.q_norm.size())});
  if (!job.weights.k_norm.empty())
    out.add_f32(p + arch.k_norm, job.weights.k_norm, {int64_t(job.weights.k_norm.size())});
  return st;
}

// Drops the mapped input pages of the tensors whose names start with `prefix` (core/fs.h
// release_mapped_pages: only file mappings; reading them again faults them back in).
void release_input_pages(const TensorReader& in, const std::string& prefix) {
  for (const auto& t : in.list())
    if (t.name.compare(0, prefix.size(), prefix) == 0) {
      const TensorRef r = in.get(t.name);
      release_mapped_pages(r.data, size_t(r.info.nbytes));
    }
}

// Writes finished blocks on one writer thread, in order, while the caller goes on with the
// next block: at most one block is pending (submit waits for the previous one first). The
// first error of a write is rethrown by the next submit() or finish(). With threaded == false
// submit() writes at once (the reference the tests compare with). Either way a block is
// released (`done`) only at the next submit() or finish(), after the caller's forward.
class BlockWriter {
 public:
  using Done = std::function<void(int layer)>;
  BlockWriter(OutputTensors& out, const ArchSpec& arch, const Layout* layout, bool threaded)
      : out_(out), arch_(arch), layout_(layout), threaded_(threaded) {}
  ~BlockWriter() {
    if (pending_.valid()) pending_.wait();  // an error is already on its way out
  }
  // The caller may go on using *job (read-only for what write_block reads).
  void submit(std::shared_ptr<const BlockJob> job, Done done) {
    finish();
    layer_ = job->layer;
    done_ = std::move(done);
    if (!threaded_) {
      write(*job);
      return;
    }
    auto task = [this, j = std::move(job)] { write(*j); };
    pending_ = std::async(std::launch::async, std::move(task));
  }
  // Waits for the pending block (rethrowing its error), then releases it (`done`: the caller
  // is through with it too by the next submit).
  void finish() {
    if (pending_.valid()) pending_.get();
    if (done_) done_(layer_);
    done_ = nullptr;
  }
  const BlockWriteStats& stats() const { return st_; }

 private:
  void write(const BlockJob& job) {
    const double tw = now_s();
    const BlockWriteStats st = write_block(out_, job, arch_, layout_);
    st_.seconds_pack += st.seconds_pack;
    st_.seconds_write += now_s() - tw - st.seconds_pack;
    st_.qbytes += st.qbytes;
    st_.qbf16 += st.qbf16;
  }
  OutputTensors& out_;
  const ArchSpec& arch_;
  const Layout* layout_;
  bool threaded_;
  std::future<void> pending_;
  int layer_ = -1;
  Done done_;
  BlockWriteStats st_;
};

// The dtype every dense float tensor is written in: the method's (fp16) or the layout's (awq).
std::optional<DType> dense_dtype_of(const MethodInfo& m, const Layout* layout) {
  if (m.dense_dtype) return m.dense_dtype;
  if (layout) return layout->model_dtype;
  return std::nullopt;
}

json output_config(const Checkpoint& ck, const MethodInfo& m, const Layout* layout,
                   const QuantizedWeight* scheme, const std::vector<std::string>& ignore,
                   const std::vector<std::string>& fused_ignore, const json& extra) {
  json cfg = ck.config;
  if (const std::optional<DType> dense = dense_dtype_of(m, layout)) set_config_dtype(cfg, *dense);
  set_config_spellings(cfg);
  if (layout && scheme) {
    QuantConfigSpec spec;
    spec.scheme = *scheme;
    spec.ignore = ignore;
    spec.fused_ignore = fused_ignore;
    spec.extra = extra;
    cfg["quantization_config"] = layout->quantization_config(spec);
  }
  return cfg;
}

uint64_t bf16_bytes_of(const TensorReader& r) {
  uint64_t n = 0;
  for (const auto& t : r.list()) n += uint64_t(t.numel()) * 2;
  return n;
}

}  // namespace

// Everything that can be checked before the long work, so that no bad option surfaces after the
// quantized model was committed: the output path (core/fs.h check_output_path: not an input,
// not an existing output without --overwrite), the calibration file (a readable regular file),
// the tokenizer (present and loadable when calibration or the quality check needs it), the
// quality check's data (readable UTF-8 text) and its window length.
static void preflight(const QuantizeOptions& opt, const Checkpoint& ck, const std::string& method, bool calibrate) {
  if (calibrate && !opt.calibration_data.empty()) ::close(open_regular_file(opt.calibration_data));
  const auto tok_it = ck.aux_files.find("tokenizer.json");
  if (calibrate && tok_it == ck.aux_files.end())
    fail(opt.input.string(), ": no tokenizer.json (needed to tokenize calibration data for ", method, ")");
  if (tok_it != ck.aux_files.end() && (calibrate || opt.quality.enabled))
    Tokenizer::from_json_text(tok_it->second, (opt.input / "tokenizer.json").string());
  if (opt.quality.enabled) {
    check_window_length("--eval-seq-len", opt.quality.seq_len, ck.config.value("max_position_embeddings", int64_t(0)));
    if (!opt.quality.data.empty()) read_text_input(opt.quality.data);
  }
}

QuantizeResult quantize_model(const QuantizeOptions& opt) {
  const double t0 = now_s();
  QuantizeResult res;
  const MethodInfo& method = find_method(opt.method);
  QuantSpec spec = resolve_spec(method, opt.overrides);
  const Layout* layout = spec.layout.empty() || method.gguf_preset ? nullptr : &find_layout(spec.layout);
  const bool budget = opt.target_size > 0 || opt.target_bpw > 0;
  if (budget && !method.gguf_preset)
    fail(opt.target_size > 0 ? "--target-size" : "--bpw", " chooses a GGUF type per tensor; method ", method.name,
         " is not a GGUF method (use q8_0 ... q2_k with a *.gguf output)");
  if (opt.target_size > 0 && opt.target_bpw > 0) fail("--target-size and --bpw are alternatives; give one");
  if (opt.target_size < 0 || opt.target_size > 1) fail("--target-size must be in (0, 100%], got ", opt.target_size);
  if (opt.target_bpw < 0 || opt.target_bpw > 16) fail("--bpw must be in (0, 16], got ", opt.target_bpw);
  const bool calibrate = needs_calibration(method, spec) || budget;  // a budget measures errors on calibration data

  // 1. Input: mmap'ed, blocks loaded lazily. The output path is checked first.
  const CheckpointFormat fmt = opt.format.value_or(opt.output.extension() == ".parquet" ? CheckpointFormat::Parquet
                                                   : opt.output.extension() == ".gguf" ? CheckpointFormat::GGUF
                                                                                       : CheckpointFormat::HF);
  if ((fmt == CheckpointFormat::GGUF) != (method.gguf_preset != nullptr))
    fail(opt.output.string(), method.gguf_preset ? cat(": method ", method.name, " writes a GGUF file (name it *.gguf)")
                                                 : cat(": method ", method.name, " cannot write GGUF (the GGUF methods "
                                                       "are q8_0, q6_k, q5_k_m, q4_k_m, q3_k_m, q3_k, q2_k)"));
  if (fmt == CheckpointFormat::GGUF && opt.output.extension() != ".gguf")
    fail(opt.output.string(), ": a GGUF file must be named *.gguf");
  check_output_path(opt.output, fmt == CheckpointFormat::HF ? OutputKind::Directory : OutputKind::File,
                    {opt.writer.overwrite, {opt.input, opt.calibration_data, opt.quality.data}});
  Checkpoint ck = open_checkpoint(opt.input);
  preflight(opt, ck, method.name, calibrate);
  if (ck.config.contains("quantization_config"))
    fail(opt.input.string(), ": the model is already quantized (config.json has a "
         "quantization_config); quantize the base model instead");
  if (method.gguf_preset) {
    if (!opt.ignore.empty()) fail("--ignore is not accepted by the GGUF method ", method.name, " (its mix is fixed)");
    return quantize_gguf(opt, ck, method, spec);
  }
  // Without calibration nothing needs the embeddings or lm_head: only blocks are read.
  std::unique_ptr<Model> model =
      calibrate ? Model::load_for_calibration(ck) : Model::load_blocks_only(ck);
  const ModelConfig& cfg = model->config();
  const ArchSpec& arch = arch_for(cfg.architecture, opt.input.string());
  const IgnoreRules ignore_rules(opt.ignore);
  if (layout) check_group_size(spec, cfg);

  // 2. Calibration windows -> embeddings = block 0's inputs.
  std::vector<float> x, y;
  backend::DeviceArray dx, dy;  // the activations when they live on the GPU
  if (calibrate) {
    auto tok_it = ck.aux_files.find("tokenizer.json");
    if (tok_it == ck.aux_files.end())
      fail(opt.input.string(), ": no tokenizer.json (needed to tokenize calibration data for ",
           method.name, ")");
    const Tokenizer tok =
        Tokenizer::from_json_text(tok_it->second, (opt.input / "tokenizer.json").string());
    std::string origin;
    const CalibWindows w = load_calibration_windows(opt.calibration_data, tok, opt.num_samples,
                                                    opt.seq_len, spec.seed,
                                                    cfg.max_position_embeddings, &origin);
    log_info(cat("calibration: ", w.num_samples, " windows x ", w.seq_len, " tokens from ",
                 origin, " (", w.tokens_available, " tokens available)"));
    spec.num_samples = res.num_samples = w.num_samples;
    spec.seq_len = res.seq_len = w.seq_len;
    const int64_t per = int64_t(w.seq_len) * cfg.hidden_size;
    const int64_t total = int64_t(w.num_samples) * per;
    if (backend::device() == backend::Device::CUDA) {
      // Inputs and outputs of the current block, plus the block runner's scratch (about a
      // batch of activations at the widest layer and the block's weights, here estimated
      // generously) must fit in what is free; else the activations stay on the host.
      const uint64_t need = 2 * uint64_t(total) * sizeof(float);
      const int64_t wide = std::max<int64_t>(cfg.intermediate_size, int64_t(cfg.num_heads) * cfg.head_dim);
      const uint64_t scratch = uint64_t(std::max(1, opt.batch)) * uint64_t(w.seq_len) *
                                   uint64_t(cfg.hidden_size * 4 + wide * 5) * sizeof(float) +
                               (uint64_t(2) << 30);
      const uint64_t avail = backend::cuda_free_bytes();
      if (need + scratch <= avail) {
        dx = backend::DeviceArray(total);
        dy = backend::DeviceArray(total);
        res.activations = "gpu";
        log_info(cat("calibration activations on the GPU: 2 x ", human_bytes(double(need / 2)),
                     " (", human_bytes(double(avail)), " free)"));
      } else {
        res.activations = "host";
        log_info(cat("calibration activations on the host: 2 x ", human_bytes(double(need / 2)),
                     " plus ~", human_bytes(double(scratch)), " of scratch do not fit the ",
                     human_bytes(double(avail)), " free on the GPU; each block's inputs are "
                     "streamed through it"));
      }
    } else {
      res.activations = "host";
    }
    if (res.activations == "gpu") {
      // Embed a few windows at a time straight into GPU memory (no full host copy).
      const int chunk = std::max(1, std::min(w.num_samples, 8));
      std::vector<float> e(size_t(chunk) * size_t(per));
      for (int s0 = 0; s0 < w.num_samples; s0 += chunk) {
        const int n = std::min(chunk, w.num_samples - s0);
        model->embed(w.ids.data() + int64_t(s0) * w.seq_len, int64_t(n) * w.seq_len, e.data());
        dx.upload(e.data(), int64_t(n) * per, int64_t(s0) * per);
      }
    } else {
      x.resize(w.ids.size() * size_t(cfg.hidden_size));
      model->embed(w.ids.data(), int64_t(w.ids.size()), x.data());
    }
    // The embedding rows looked up came from the mapped checkpoint: those pages can go.
    release_input_pages(*ck.tensors, arch.embed);
  }
  res.seconds_load = now_s() - t0;

  // 3. Block by block: quantize, write, feed the next block.
  std::unique_ptr<CheckpointWriter> writer = make_checkpoint_writer(opt.output, fmt, opt.writer);
  OutputTensors out(*writer, *ck.tensors, dense_dtype_of(method, layout));
  std::unique_ptr<BlockQuantizer> quantizer = method.factory(spec);
  std::vector<std::string> ignore_list = {"lm_head"};
  std::vector<std::string> fused_ignore;
  std::optional<QuantizedWeight> scheme;
  json layers = json::object();
  json moe_report = json::object();  // per MoE layer: tokens per expert, statistics used
  Progress progress("quantize " + method.name, uint64_t(cfg.num_layers), "block");
  BlockWriter bwriter(out, arch, layout, opt.writer_thread);
  for (int i = 0; i < cfg.num_layers; ++i) {
    auto job_ptr = std::make_shared<BlockJob>(*model, i, spec, model->block(i));
    BlockJob& job = *job_ptr;
    // The block's input tensors were read into job.weights: their mapped pages can go.
    release_input_pages(*ck.tensors, cat(arch.layer_prefix, i, "."));
    job.batch = std::max(1, opt.batch);
    job.simulate = calibrate;
    const std::vector<bool> ignored = ignored_slots(job, ignore_rules);
    job.ignored = [layout, ignored](LinearSlot s) { return !layout || ignored[size_t(s)]; };
    if (calibrate) {
      if (dx.data()) job.dev_inputs = dx.data();
      else job.inputs = x.data();
      job.n_samples = spec.num_samples;
      job.seq = spec.seq_len;
    }
    const double tq = now_s();
    quantizer->quantize_block(job);
    const double solve_i = now_s() - tq - job.seconds_forward - job.seconds_stats;
    res.seconds_solve += solve_i;
    for (int s = 0; s < job.num_modules(); ++s) {
      const std::string m = job.module_name(LinearSlot(s));
      if (job.quantized[size_t(s)]) {
        ++res.quantized_linears;
        if (!scheme) {
          scheme = *job.quantized[size_t(s)];
          scheme->q8.clear(), scheme->qu.clear(), scheme->scales.clear(), scheme->zeros.clear();
        }
        layers[m] = job.report[size_t(s)];
      } else if (layout) {
        ++res.skipped_linears;
        ignore_list.push_back(m);
      }
    }
    // vLLM's names for fused groups left dense (its gptq/awq skip rules see only those).
    {
      const BlockLayout& L = job.layout();
      std::vector<std::string> seen;
      for (int s = 0; s < L.size(); ++s) {
        const std::string& f = L.modules[size_t(s)].fused;
        if (f.empty() || std::find(seen.begin(), seen.end(), f) != seen.end()) continue;
        seen.push_back(f);
        if (layout && ignored[size_t(s)]) fused_ignore.push_back(cat(arch.layer_prefix, i, ".", f));
      }
      if (!job.expert_tokens.empty()) {
        json& mo = moe_report[std::to_string(i)];
        mo["tokens_per_expert"] = job.expert_tokens;
        mo["statistics"] = job.expert_stats;
        int starved = 0;
        for (const auto& st : job.expert_stats) starved += st.rfind("all-tokens (fallback", 0) == 0;
        if (starved > 0)
          log_info(cat("layer ", i, ": ", starved, " expert(s) routed fewer than ",
                       spec.moe_min_tokens, " calibration tokens get statistics from every token"));
      }
    }
    // Written (by the writer thread) while the next block's inputs are computed and it is
    // quantized; the previous block is released once it is written.
    bwriter.submit(job_ptr, [&model](int layer) { model->release_block(layer); });
    if (calibrate && i + 1 < cfg.num_layers) {
      if (dx.data()) {
        job.forward_device(dy.data());
        std::swap(dx, dy);
      } else {
        job.run(nullptr, &y);
        x.swap(y);
      }
    }
    res.seconds_forward += job.seconds_forward;
    res.seconds_stats += job.seconds_stats;
    backend::note_gpu_memory();
    char prof[128];
    std::snprintf(prof, sizeof prof, "(layer %d: forward %.2f s, statistics %.2f s, solve %.2f s)",
                  i, job.seconds_forward, job.seconds_stats, solve_i);
    progress.step(1, prof);
  }
  bwriter.finish();
  {
    const BlockWriteStats& st = bwriter.stats();
    res.seconds_pack += st.seconds_pack;
    res.seconds_write += st.seconds_write;
    res.qlinear_bytes += st.qbytes;
    res.qlinear_bf16_bytes += st.qbf16;
  }
  progress.finish();
  // An ignore list of exactly what was skipped; nothing quantized at all is an error.
  if (layout && !scheme)
    fail("nothing to quantize: every linear layer matched --ignore");
  if (layout) {
    res.vllm_why_not = layout->vllm_why_not(*scheme);
    if (!res.vllm_why_not.empty()) log_warn("not loadable by vLLM: " + res.vllm_why_not);
  }

  dx = backend::DeviceArray();
  dy = backend::DeviceArray();
  model->release_device_weights();

  // 4. Non-block tensors (embeddings, final norm, lm_head, anything else) unchanged.
  const double tw = now_s();
  for (const auto& t : ck.tensors->list())
    if (!out.written(t.name)) {
      out.copy(t.name);
      const TensorRef r = ck.tensors->get(t.name);
      release_mapped_pages(r.data, size_t(r.info.nbytes));
    }

  // 5. Config, aux files (byte for byte), report; rename into place.
  json summary = json::object();
  quantizer->finish(summary);
  if (!moe_report.empty())
    summary["moe_calibration"] = {{"mode", spec.moe_all_experts ? "all-experts" : "routed"},
                                  {"min_tokens", spec.moe_min_tokens},
                                  {"layers", moe_report}};
  res.report = {{"method", method.name},
                {"layout", spec.layout},
                {"bits", spec.bits},
                {"group_size", spec.group},
                {"symmetric", spec.symmetric},
                {"calibration", {{"num_samples", res.num_samples}, {"seq_len", res.seq_len}}},
                {"ignore", ignore_list},
                {"layers", layers},
                {"summary", summary}};
  std::map<std::string, std::string> aux = ck.aux_files;
  aux[kReportFile] = res.report.dump(2) + "\n";
  writer->commit(output_config(ck, method, layout, scheme ? &*scheme : nullptr, ignore_list,
                               fused_ignore, quantizer->config_extra()),
                 aux);
  writer.reset();
  res.seconds_write += now_s() - tw;

  res.output = opt.output;
  res.method = method.name;
  res.layout = spec.layout;
  res.layers = cfg.num_layers;
  res.out_bytes = out.bytes();
  res.bf16_bytes = bf16_bytes_of(*ck.tensors);
  res.quantize_seconds = now_s() - t0;
  model.reset();

  // The quality check (opt.quality) runs above this layer: eval/quality.h quantize_and_check.
  res.seconds = now_s() - t0;
  res.peak_rss = peak_rss_bytes();
  res.peak_gpu = backend::cuda_peak_used_bytes();
  return res;
}

}  // namespace llmc

// ---------------------------------------------------------------------------------------------
// Summary

namespace llmc {

json summary_json(const QuantizeResult& r) {
  json j = {{"output", r.output.string()},
            {"method", r.method},
            {"layout", r.layout},
            {"layers", r.layers},
            {"quantized_linears", r.quantized_linears},
            {"skipped_linears", r.skipped_linears},
            {"num_samples", r.num_samples},
            {"seq_len", r.seq_len},
            {"seconds", r.seconds},
            {"quantize_seconds", r.quantize_seconds},
            {"peak_rss_bytes", r.peak_rss},
            {"peak_gpu_bytes", r.peak_gpu},
            {"activations", r.activations},
            {"time_split", {{"load", r.seconds_load},
                            {"forward", r.seconds_forward},
                            {"stats", r.seconds_stats},
                            {"solve", r.seconds_solve},
                            {"pack", r.seconds_pack},
                            {"write", r.seconds_write}}},
            {"output_bytes", r.out_bytes},
            {"bf16_bytes", r.bf16_bytes},
            {"quantized_linear_bytes", r.qlinear_bytes},
            {"quantized_linear_bf16_bytes", r.qlinear_bf16_bytes},
            {"vllm", {{"loadable", r.vllm_why_not.empty()}, {"reason", r.vllm_why_not}}}};
  if (r.report.is_object() && r.report.contains("gguf")) j["gguf"] = r.report["gguf"];  // types, GPTQ errors
  if (r.quality.measured)
    j["quality"] = {{"tokens", r.quality.tokens},       {"ppl_base", r.quality.ppl_base},
                    {"ppl_quant", r.quality.ppl_quant}, {"ppl_ratio", r.quality.ppl_ratio},
                    {"kl", r.quality.kl},               {"top1", r.quality.top1}};
  return j;
}

std::string format_summary(const QuantizeResult& r) {
  char buf[256];
  std::string s;
  auto line = [&](const std::string& k, const std::string& v) {  // any length of v
    s += "  " + k + std::string(k.size() < 22 ? 22 - k.size() : 0, ' ') + " " + v + "\n";
  };
  auto pct = [](double a, double b) {
    char t[64];
    std::snprintf(t, sizeof t, "%.1f %%", b > 0 ? 100.0 * a / b : 0.0);
    return std::string(t);
  };
  s += "quantized " + r.output.string() + "\n";
  line("method", r.method + (r.layout.empty() ? "" : " (layout " + r.layout + ")"));
  line("linears", cat(r.quantized_linears, " quantized, ", r.skipped_linears,
                      " skipped (+ lm_head), ", r.layers, " blocks"));
  line("vLLM", r.vllm_why_not.empty() ? "loadable" : "not loadable by vLLM: " + r.vllm_why_not);
  if (r.num_samples > 0) line("calibration", cat(r.num_samples, " x ", r.seq_len, " tokens"));
  std::snprintf(buf, sizeof buf, "%.2f s (quantize + write %.2f s)", r.seconds, r.quantize_seconds);
  line("time", buf);
  std::snprintf(buf, sizeof buf,
                "load %.2f, forward %.2f, statistics %.2f, solve %.2f, pack %.2f, write %.2f s",
                r.seconds_load, r.seconds_forward, r.seconds_stats, r.seconds_solve,
                r.seconds_pack, r.seconds_write);
  line("time split", buf);
  line("peak RSS", human_bytes(double(r.peak_rss)) +
                       (r.peak_gpu ? ", peak GPU memory " + human_bytes(double(r.peak_gpu)) : std::string()) +
                       (r.activations.empty() ? std::string() : " (activations on the " + r.activations + ")"));
  line("output size", human_bytes(double(r.out_bytes)) + " = " + pct(double(r.out_bytes), double(r.bf16_bytes)) +
                          " of bf16 (" + human_bytes(double(r.bf16_bytes)) + ")");
  if (r.qlinear_bf16_bytes > 0)
    line("quantized linears", human_bytes(double(r.qlinear_bytes)) + " = " +
                                  pct(double(r.qlinear_bytes), double(r.qlinear_bf16_bytes)) +
                                  " of bf16 (" + human_bytes(double(r.qlinear_bf16_bytes)) + ")");
  if (r.quality.measured) {
    std::snprintf(buf, sizeof buf, "%.4f -> %.4f (ratio %.5f) on %lld held-out tokens",
                  r.quality.ppl_base, r.quality.ppl_quant, r.quality.ppl_ratio,
                  (long long)r.quality.tokens);
    line("perplexity", buf);
    std::snprintf(buf, sizeof buf, "KL %.6f nats/token, top-1 agreement %.2f %%", r.quality.kl,
                  100.0 * r.quality.top1);
    line("vs base", buf);
  }
  return s;
}

}  // namespace llmc
