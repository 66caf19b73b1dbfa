// cli/cmd_calib.cpp — `llmc calib`: builds a calibration set (.jsonl of {"text"} records) from
// text / jsonl files. With --model the records are windows of exactly --seq-len tokens of
// that model's tokenizer (decoded back to text), cut as `llmc quantize` cuts them; without it
// every input document becomes one record (chat records rendered plainly).
#include <iostream>
#include <optional>

#include "calib/calib_data.h"
#include "cli/command.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "formats/checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace llmc::cli {
namespace {

struct Args {
  std::string output, model;
  std::vector<std::string> from;
  int num_samples = 128, seq_len = 256;
  uint64_t seed = 0;
  bool overwrite = false;
};

// The tokenizer of --model, and its max_position_embeddings (0 when --model is a tokenizer only).
Tokenizer tokenizer_of(const std::string& model, int64_t* max_positions) {
  std::error_code ec;
  *max_positions = 0;
  const bool dir = std::filesystem::is_directory(model, ec);
  if (dir && std::filesystem::exists(std::filesystem::path(model) / "config.json", ec)) {
    const nlohmann::json cfg = nlohmann::json::parse(read_text_file(std::filesystem::path(model) / "config.json"),
                                                     nullptr, false);
    if (cfg.is_object()) *max_positions = cfg.value("max_position_embeddings", int64_t(0));
  }
  if (dir || !std::filesystem::exists(model, ec))
    return Tokenizer::load(model);  // directory with tokenizer.json (or a clear error)
  const Checkpoint ck = open_checkpoint(model);
  *max_positions = ck.config.value("max_position_embeddings", int64_t(0));
  auto it = ck.aux_files.find("tokenizer.json");
  if (it == ck.aux_files.end()) fail(model, ": no tokenizer.json in the checkpoint");
  return Tokenizer::from_json_text(it->second, model + " [tokenizer.json]");
}

RunFn setup(CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("--output,-o", a->output, "output .jsonl file")->required();
  app.add_option("--from", a->from, "input files: .txt (one document), .jsonl records or .parquet (its \"text\" column)")
      ->required();
  app.add_option("--model", a->model,
                 "model (or tokenizer directory) whose tokenizer counts tokens; without it every "
                 "document is written as one record");
  app.add_option("--num-samples", a->num_samples, "windows to write (with --model; default 128)")
      ->check(cli::at_least(1));
  app.add_option("--seq-len", a->seq_len, "tokens per window (with --model; default 256)")
      ->check(cli::in_range(2, 1 << 20));
  app.add_option("--seed", a->seed, "window selection seed (default 0)");
  add_overwrite_flag(app, a->overwrite);
  return [a]() {
    OutputRules rules{a->overwrite, {a->model}};
    for (const auto& f : a->from) rules.inputs.push_back(f);
    check_output_path(a->output, OutputKind::File, rules);
    int64_t max_positions = 0;
    std::optional<Tokenizer> tok;
    if (!a->model.empty()) {
      tok.emplace(tokenizer_of(a->model, &max_positions));
      check_window_length("--seq-len", a->seq_len, max_positions);
    }
    std::vector<CalibRecord> recs;
    for (const auto& f : a->from) {
      auto r = read_calibration_records(f);
      recs.insert(recs.end(), r.begin(), r.end());
    }
    std::string out;
    int64_t n_records = 0;
    if (a->model.empty()) {
      for (const auto& r : recs) {
        out += nlohmann::json({{"text", render_record(r, false)}}).dump() + "\n";
        ++n_records;
      }
    } else {
      const std::vector<int32_t> ids = tokenize_records(recs, *tok);
      const CalibWindows w = cut_windows(ids, a->num_samples, a->seq_len, a->seed,
                                         a->from.size() == 1 ? a->from[0] : "(--from files)");
      for (int s = 0; s < w.num_samples; ++s) {
        std::vector<int32_t> win(w.ids.begin() + int64_t(s) * w.seq_len,
                                 w.ids.begin() + int64_t(s + 1) * w.seq_len);
        out += nlohmann::json({{"text", tok->decode(win)}}).dump(-1, ' ', false,
                                                                 nlohmann::json::error_handler_t::replace) +
               "\n";
        ++n_records;
      }
      log_info(cat("calib: ", w.tokens_available, " tokens available, wrote ", w.num_samples,
                   " windows of ", w.seq_len, " tokens"));
    }
    write_text_file(a->output, out);
    std::cout << "wrote " << n_records << " records to " << a->output << "\n";
    return 0;
  };
}

}  // namespace

LLMC_REGISTER_COMMAND("calib", "build a calibration set (.jsonl) from text, jsonl or Parquet files", 60, setup);

}  // namespace llmc::cli
