// bench_eval — `llmc eval` protocol on every fixture model present (models/qwen3-tiny,
// models/llama-tiny, ../shared/models/qwen3-small) and both eval files: perplexity vs
// reference.json (relative error; goal <= 0.02 %) and evaluation throughput (tokens/s, tokenization
// excluded). Usage: bench_eval [--max-windows N] [--only NAME]. Writes bench/results/eval.json.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/fs.h"
#include "core/threads.h"
#include "eval/eval.h"
#include "eval/model_files.h"
#include "formats/checkpoint.h"
#include "loader/quant_linear.h"
#include "model/model.h"

using namespace llmc;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  int max_windows = 0;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--max-windows") max_windows = std::atoi(argv[i + 1]);
    else if (a == "--only") only = argv[i + 1];
  }
  const fs::path root = LLMC_SOURCE_DIR;
  const std::vector<fs::path> models = {root / "models/qwen3-tiny", root / "models/llama-tiny",
                                        root.parent_path() / "shared/models/qwen3-small"};
  struct File {
    const char* name;
    const char* key;
  };
  const File files[] = {{"heldout.txt", "heldout"}, {"wikitext2-test.txt", "wikitext2_test"}};
  nlohmann::json out = {{"benchmark", "eval"}, {"threads", num_threads()}, {"runs", nlohmann::json::array()}};
  std::printf("| model       | file               | tokens  | ppl        | reference  | rel err   | tok/s   |\n");
  std::printf("|-------------|--------------------|---------|------------|------------|-----------|---------|\n");
  for (const auto& dir : models) {
    if (!fs::exists(dir / "config.json")) {
      std::printf("| %-11s | (absent, skipped)  |\n", dir.filename().c_str());
      continue;
    }
    if (!only.empty() && dir.filename() != only) continue;
    const Checkpoint ck = open_checkpoint(dir);
    auto model = load_model_for_inference(ck);
    const Tokenizer tok = model_tokenizer(ck);
    const auto ref = nlohmann::json::parse(read_text_file(dir / "reference.json"));
    for (const File& f : files) {
      const auto tokens = tok.encode_parallel(read_text_file(root / "tests/data/eval" / f.name));
      EvalOptions eo;
      eo.progress = false;
      const PplResult r = evaluate_ppl(*model, tokens, 256, max_windows, eo);
      const double want = ref.at(std::string(f.key) + "_ppl").get<double>();
      const double rel = r.ppl / want - 1;
      const double tps = double(r.windows) * 256 / r.seconds;
      std::printf("| %-11s | %-18s | %7lld | %10.4f | %10.4f | %+8.5f%% | %7.0f |\n", dir.filename().c_str(),
                  f.name, (long long)r.tokens, r.ppl, want, 100 * rel, tps);
      std::fflush(stdout);
      out["runs"].push_back({{"model", dir.filename().string()},
                             {"file", f.name},
                             {"result", to_json(r)},
                             {"reference_ppl", want},
                             {"relative_error", rel},
                             {"full_file", max_windows == 0},
                             {"tokens_per_s", tps}});
    }
  }
  const fs::path path = root / "bench/results/eval.json";
  write_text_file(path, out.dump(2) + "\n");
  std::printf("\nwrote %s\n", path.c_str());
  return 0;
}
