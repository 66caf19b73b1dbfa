// bench_tokenizer — encoding throughput (MB/s of UTF-8 input) of the native tokenizer with the
// Qwen3 vocabulary on heldout.txt (../shared/data/eval, else tests/data/eval), one thread and
// all threads, plus load and decode times. Prints a table and writes
// bench/results/tokenizer.json with machine info.
//
// "cold" runs start with an empty word cache (a fresh tokenizer instance each repetition), as
// when a file is tokenized once; "warm" runs reuse the instance, so the per-thread cache is hot.
// Each figure is the best of --reps repetitions. Single-thread rows also give the thread's CPU
// time, which is what to compare on a machine busy with other work (see "loadavg").
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "core/fs.h"
#include "core/threads.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

using llmc::bench::cpu_model;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU time of the calling thread: on a shared, loaded machine it measures the work of a
// single-threaded run better than the wall clock.
double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

std::string loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

fs::path first_existing(std::initializer_list<fs::path> paths) {
  for (const auto& p : paths)
    if (fs::exists(p)) return p;
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root(LLMC_SOURCE_DIR);
  fs::path text_path = first_existing({root.parent_path() / "shared/data/eval/heldout.txt",
                                       root / "tests/data/eval/heldout.txt"});
  fs::path tok_path = first_existing({root.parent_path() / "shared/tokenizers/qwen3/tokenizer.json.gz",
                                      root / "tests/data/tokenizers/qwen3/tokenizer.json.gz"});
  fs::path out_json = root / "bench/results/tokenizer.json";
  int reps = 5;
  int repeat_text = 4;
  CLI::App app("bench_tokenizer: tokenizer encoding throughput");
  app.add_option("--text", text_path, "UTF-8 text to encode");
  app.add_option("--tokenizer", tok_path, "tokenizer.json(.gz) or its directory");
  app.add_option("--reps", reps, "repetitions per figure (best is reported)")->check(CLI::PositiveNumber);
  app.add_option("--repeat-text", repeat_text,
                 "concatenate the text this many times for the all-threads run")
      ->check(CLI::PositiveNumber);
  app.add_option("--out", out_json, "JSON result file");
  CLI11_PARSE(app, argc, argv);

  try {
    const std::string text = read_text_file(text_path);
    const double mb = double(text.size()) / 1e6;

    double load_s = 1e300;
    Tokenizer tok;
    for (int r = 0; r < std::max(1, reps / 2); ++r) {
      const double t0 = now_s();
      tok = Tokenizer::load(tok_path);
      load_s = std::min(load_s, now_s() - t0);
    }

    struct Row {
      std::string name;
      int threads;
      double mb, s, cpu_s;  // cpu_s: thread CPU time (single-thread rows), else 0
    };
    std::vector<Row> rows;
    const std::vector<int32_t> ref = tok.encode(text);
    bool identical = true;
    auto measure = [&](const std::string& name, int threads, const std::string& input, bool cold,
                       bool parallel) {
      set_num_threads(threads);
      double best = 1e300, best_cpu = 1e300;
      for (int r = 0; r < reps; ++r) {
        Tokenizer t = cold ? Tokenizer::load(tok_path) : tok;  // a new instance has empty caches
        const double t0 = now_s(), c0 = thread_cpu_s();
        const std::vector<int32_t> ids = parallel ? t.encode_parallel(input) : t.encode(input);
        best = std::min(best, now_s() - t0);
        best_cpu = std::min(best_cpu, thread_cpu_s() - c0);
        if (&input == &text && ids != ref) identical = false;
      }
      rows.push_back(Row{name, threads, double(input.size()) / 1e6, best, parallel ? 0.0 : best_cpu});
    };
    const int hw = std::max(1u, std::thread::hardware_concurrency());
    std::string big;
    for (int i = 0; i < repeat_text; ++i) big += text;

    measure("encode, 1 thread, cold cache", 1, text, true, false);
    measure("encode, 1 thread, warm cache", 1, text, false, false);
    measure("encode_parallel, all threads, cold", hw, text, true, true);
    measure("encode_parallel, all threads, warm", hw, text, false, true);
    measure("encode_parallel x" + std::to_string(repeat_text) + " text, all threads, warm", hw, big,
            false, true);

    double dec_s = 1e300;
    size_t dec_bytes = 0;
    for (int r = 0; r < reps; ++r) {
      const double t0 = now_s();
      const std::string back = tok.decode(ref);
      dec_s = std::min(dec_s, now_s() - t0);
      dec_bytes = back.size();
      if (back != text) identical = false;
    }

    std::printf("tokenizer %s\ntext %s (%.3f MB, %zu tokens, %.2f bytes/token)\n",
                tok_path.string().c_str(), text_path.string().c_str(), mb, ref.size(),
                double(text.size()) / double(ref.size()));
    const std::string load = loadavg();
    std::printf("machine: %s, %d hardware threads, loadavg %s\n\n", cpu_model().c_str(), hw,
                load.c_str());
    std::printf("| %-44s | %7s | %7s | %9s | %10s | %14s |\n", "case", "threads", "MB",
                "seconds", "MB/s (wall)", "MB/s (cpu time)");
    std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(9, '-').c_str(),
                std::string(9, '-').c_str(), std::string(11, '-').c_str(),
                std::string(13, '-').c_str(), std::string(17, '-').c_str());
    json jrows = json::array();
    for (const auto& r : rows) {
      char cpu[32] = "-";
      if (r.cpu_s > 0) std::snprintf(cpu, sizeof cpu, "%.2f", r.mb / r.cpu_s);
      std::printf("| %-44s | %7d | %7.3f | %9.4f | %11.2f | %15s |\n", r.name.c_str(), r.threads,
                  r.mb, r.s, r.mb / r.s, cpu);
      json row = {{"case", r.name}, {"threads", r.threads}, {"mb", r.mb}, {"seconds", r.s},
                  {"mb_per_s", r.mb / r.s}};
      if (r.cpu_s > 0) row["mb_per_cpu_s"] = r.mb / r.cpu_s;
      jrows.push_back(row);
    }
    std::printf("| %-44s | %7d | %7.3f | %9.4f | %11.2f | %15s |\n", "decode (ids -> text)", 1,
                double(dec_bytes) / 1e6, dec_s, double(dec_bytes) / 1e6 / dec_s, "-");
    std::printf("\nload tokenizer.json.gz: %.3f s; round trip and parallel == serial: %s\n", load_s,
                identical ? "yes" : "NO");

    json out = {{"bench", "tokenizer"},
                {"tokenizer", tok_path.string()},
                {"text", text_path.string()},
                {"text_bytes", text.size()},
                {"tokens", ref.size()},
                {"load_seconds", load_s},
                {"decode_mb_per_s", double(dec_bytes) / 1e6 / dec_s},
                {"identical", identical},
                {"reps", reps},
                {"rows", jrows},
                {"machine", {{"cpu", cpu_model()}, {"hardware_threads", hw}, {"loadavg", load}}}};
    fs::create_directories(out_json.parent_path());
    write_text_file(out_json, out.dump(2) + "\n");
    std::printf("wrote %s\n", out_json.string().c_str());
    return identical ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
    return 1;
  }
}
