// quant/method_gptq.cpp — GPTQ as a BlockQuantizer (quant/method_gptq.h).
#include "quant/method_gptq.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "core/error.h"
#include "core/progress.h"
#include "quant/layouts.h"

namespace llmc {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct ModeRow {
  const char* name;
  ActOrderMode mode;
};
constexpr ModeRow kModes[] = {{"static", ActOrderMode::Static},
                              {"dynamic", ActOrderMode::Dynamic},
                              {"permute", ActOrderMode::Permute}};

}  // namespace

// Option values come from the method row (quant/method.cpp), which checked their type and range
// in resolve_spec / check_method_options; method_opt gives the row's default when one is absent.
GptqBlockOptions gptq_block_options(const QuantSpec& spec) {
  GptqBlockOptions o;
  GptqOptions& l = o.linear;
  l.grid.bits = spec.bits;
  l.grid.symmetric = spec.symmetric;
  l.grid.fp16_scales =
      !spec.layout.empty() && find_layout(spec.layout).scale_dtype == DType::F16;
  l.grid.search_steps = method_opt<int>(spec, "mse");
  l.grid.sym_full_range = method_opt<bool>(spec, "sym_full_range");
  l.group = spec.group;
  if (l.group == 0) fail("method ", spec.method, ": GPTQ needs a group size > 0 or -1");
  l.damp = spec.damp;
  l.block_size = method_opt<int>(spec, "block_size");
  o.true_sequential = spec.true_sequential;
  o.rtn = method_opt<std::string>(spec, "solver") == "rtn";
  o.act_order = ActOrderMode::Off;
  if (spec.act_order) {
    const std::string m = method_opt<std::string>(spec, "act_order");
    for (const ModeRow& r : kModes)
      if (m == r.name) o.act_order = r.mode;
  }
  return o;
}

void GptqRunStats::add(const std::string& module, const GptqReport& r) {
  ++linears;
  sum_rel += r.rel_error;
  if (r.rel_error_rtn >= 0) sum_rel_rtn += r.rel_error_rtn;
  if (r.rel_error > max_rel || worst.empty()) {
    max_rel = r.rel_error;
    worst = module;
  }
  if (r.fallback) fallbacks.push_back(module);
  seconds_prepare += r.seconds_prepare;
  seconds_columns += r.seconds_solve;
  seconds_report += r.seconds_report;
}

nlohmann::json GptqRunStats::to_json() const {
  return {{"linears", linears},
          {"mean_rel_error", linears ? sum_rel / linears : 0.0},
          {"mean_rel_error_rtn", linears ? sum_rel_rtn / linears : 0.0},
          {"max_rel_error", max_rel},
          {"worst", worst},
          {"fallbacks_rtn", fallbacks},
          {"seconds_inputs", seconds_inputs},
          {"seconds_solve", seconds_solve},
          {"seconds_solve_prepare", seconds_prepare},
          {"seconds_solve_columns", seconds_columns},
          {"seconds_solve_report", seconds_report}};
}

std::string GptqRunStats::line() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "mean relative output error %.5f (RTN %.5f), worst %.5f",
                linears ? sum_rel / linears : 0.0, linears ? sum_rel_rtn / linears : 0.0,
                max_rel);
  return cat("gptq: ", linears, " linears, ", buf, " (", worst, "), ", fallbacks.size(),
             " fallback(s) to RTN");
}

void gptq_quantize_block(BlockJob& job, const GptqBlockOptions& o, GptqRunStats* stats) {
  using S = LinearSlot;
  const BlockLayout& L = job.layout();
  // Stages of input groups (layout order): q/k/v -> o -> MLP inputs -> down when
  // true-sequential, else one.
  std::vector<std::vector<int>> stages(o.true_sequential ? BlockLayout::kStages : 1);
  for (int g = 0; g < int(L.groups.size()); ++g)
    if (!job.active(L.groups[size_t(g)]).empty())
      stages[o.true_sequential ? size_t(L.groups[size_t(g)].stage) : 0].push_back(g);
  LLMC_CHECK(job.has_inputs(), "GPTQ needs calibration inputs");

  // Permutation trick, per MLP (expert): position -> original channel of down's inputs.
  std::map<int, std::vector<int32_t>> down_perm;
  for (const auto& stage : stages) {
    if (stage.empty()) continue;
    const double t_stage = now_s();
    // Hessians of the distinct inputs of this stage (one per input group).
    std::map<int, HessianAccumulator> acc;
    for (int g : stage)
      acc.emplace(g, HessianAccumulator(L.modules[size_t(L.groups[size_t(g)].members[0])].in));
    job.for_groups(
        stage, [&](int g, const backend::MatView& x) { acc.at(g).add(x); },
        [&](int g) { acc.at(g) = HessianAccumulator(acc.at(g).cols()); });
    std::map<int, std::vector<double>> H;
    std::map<int, int64_t> rows;
    for (auto& [g, a] : acc) {
      H[g] = a.hessian();
      rows[g] = a.count();
    }
    const double t_solve = now_s();
    if (stats) stats->seconds_inputs += t_solve - t_stage;

    for (int g : stage)
      for (S s : job.active(L.groups[size_t(g)])) {
        const BlockModule& m = L.at(s);
        job.check_finite(s);
        DenseLinear& d = job.dense(s);
        const int64_t out = d.out_features(), in = d.in_features();
        const std::string name = job.module_name(s);
        GptqOptions lo = o.linear;
        lo.act_order = o.act_order == ActOrderMode::Dynamic ? ActOrder::Dynamic
                       : o.act_order == ActOrderMode::Off   ? ActOrder::None
                                                            : ActOrder::Static;
        const std::vector<double>& h = H[g];
        const bool permute = m.role == ModuleRole::Down && o.act_order == ActOrderMode::Permute;
        GptqResult r;
        if (o.rtn) {
          // Baseline: round to nearest on the same grid (report from the same Hessian).
          std::vector<float> imp(static_cast<size_t>(in));
          for (int64_t i = 0; i < in; ++i) imp[size_t(i)] = float(h[size_t(i * in + i)]);
          r.qw = quantize_grid_rtn(d.weight().data(), out, in, lo.group, lo.grid, imp.data());
          r.report.rel_error = relative_output_error(d.weight().data(), r.qw.dequantize().data(),
                                                     out, in, h.data());
          r.report.rel_error_rtn = r.report.rel_error;
          r.qw.bias = d.bias();
        } else if (permute) {
          // Down's input channels reordered by decreasing diag(H) and processed in that order
          // with contiguous groups: dynamic act-order in exactly that order, then the columns
          // permuted (the trivial g_idx dropped).
          std::vector<int32_t>& perm = down_perm[m.expert];
          perm = diag_order(h.data(), in);
          lo.act_order = ActOrder::Dynamic;
          lo.order = perm;
          r = gptq_quantize(d.weight().data(), out, in, h.data(), lo, name);
          r.qw = permute_cols(r.qw, perm);
          lo.act_order = ActOrder::None;
          r.qw.bias = d.bias();
        } else {
          r = gptq_quantize(d.weight().data(), out, in, h.data(), lo, name);
        }
        if (lo.act_order == ActOrder::Static) r.qw.g_idx.clear();  // trivial: col / group
        if (stats) stats->add(name, r.report);
        nlohmann::json rep = r.report.to_json();
        rep["rows"] = L.groups[size_t(g)].expert >= 0 ? rows[g] : job.rows();
        if (permute) rep["permuted_input_channels"] = true;
        job.commit(s, std::move(r.qw), rep);
      }
    if (stats) stats->seconds_solve += now_s() - t_solve;
  }
  // Fold each down permutation into its MLP's gate/up output rows (quantized or dense).
  for (const auto& [expert, perm] : down_perm) {
    for (ModuleRole role : {ModuleRole::Gate, ModuleRole::Up}) {
      const int si = L.find(role, expert);
      if (si < 0) continue;
      const S s = S(si);
      if (job.quantized[size_t(si)]) {
        QuantizedWeight p = permute_rows(*job.quantized[size_t(si)], perm);
        job.commit(s, std::move(p), job.report[size_t(si)]);
      } else {
        const DenseLinear& d = job.dense(s);
        const int64_t out = d.out_features(), in = d.in_features();
        std::vector<float> w(size_t(out * in)), b;
        for (int64_t i = 0; i < out; ++i)
          std::copy_n(d.weight().begin() + perm[size_t(i)] * in, in, w.begin() + i * in);
        if (!d.bias().empty())
          for (int64_t i = 0; i < out; ++i) b.push_back(d.bias()[size_t(perm[size_t(i)])]);
        job.weights.linear[size_t(si)] = std::make_shared<DenseLinear>(std::move(w), out, in, std::move(b));
      }
    }
  }
}

std::string first_layout_holding(const std::vector<std::string>& layouts, const QuantSpec& spec) {
  QuantizedWeight rep;  // shape-free representative of the scheme
  rep.kind = QKind::INT;
  rep.bits = spec.bits;
  rep.symmetric = spec.symmetric;
  rep.group = spec.group;
  for (const auto& l : layouts)
    if (find_layout(l).why_not(rep).empty()) return l;
  return layouts.empty() ? std::string() : layouts.back();
}

std::string gptq_default_layout(const QuantSpec& spec) {
  return first_layout_holding({"gptq", "compressed-tensors"}, spec);
}

namespace {

class GptqQuantizer : public BlockQuantizer {
 public:
  explicit GptqQuantizer(const QuantSpec& spec) : spec_(spec), opt_(gptq_block_options(spec)) {
    check_method_options(find_method(spec.method), spec.extra);
    if (spec.layout == "gptq" && !spec.symmetric)
      fail("--layout gptq cannot store asymmetric GPTQ (it stores zero-1 and zero would be -1); "
           "use --layout compressed-tensors (the default for --asym) or --sym");
  }
  void quantize_block(BlockJob& job) override { gptq_quantize_block(job, opt_, &stats_); }
  void finish(nlohmann::json& summary) override {
    summary["gptq"] = stats_.to_json();
    summary["gptq"]["act_order"] =
        opt_.act_order == ActOrderMode::Off ? "off" : kModes[int(opt_.act_order) - 1].name;
    log_info(stats_.line());
    for (const auto& f : stats_.fallbacks) log_warn("gptq: " + f + " fell back to RTN");
  }
  nlohmann::json config_extra() const override {
    if (spec_.layout != "gptq") return nlohmann::json::object();
    return {{"damp_percent", spec_.damp},
            {"true_sequential", opt_.true_sequential},
            {"desc_act", opt_.act_order == ActOrderMode::Dynamic},
            {"static_groups", opt_.act_order == ActOrderMode::Static ||
                                  opt_.act_order == ActOrderMode::Permute}};
  }

 private:
  QuantSpec spec_;
  GptqBlockOptions opt_;
  GptqRunStats stats_;
};

}  // namespace

std::unique_ptr<BlockQuantizer> make_gptq_quantizer(const QuantSpec& spec) {
  return std::make_unique<GptqQuantizer>(spec);
}

}  // namespace llmc
