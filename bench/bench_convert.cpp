// bench_convert — checkpoint conversion throughput (MB/s of tensor data) on qwen3-small from
// ../shared (skipped when absent), plus the bulk bf16 -> f32 conversion of 100M elements.
// Prints a table and writes bench/results/convert.json with machine info.
//
// Usage: bench_convert [--model DIR] [--reps N] [--out FILE]
// Each conversion is run N times (default 3) into a fresh temp path; the best time is
// reported (the input is in the page cache after the first run; outputs go to the same disk).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "core/dtype.h"
#include "core/fs.h"
#include "core/threads.h"
#include "formats/checkpoint.h"
#include "formats/convert.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

using llmc::bench::cpu_model;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  std::string name;
  double mb, best_s, mb_per_s;
  std::string note;
};

template <typename F>
double best_of(int reps, F&& f) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    f(r);
    best = std::min(best, now_s() - t0);
  }
  return best;
}

uint64_t tensor_bytes(const Checkpoint& c) {
  uint64_t n = 0;
  for (const auto& t : c.tensors->list()) n += t.nbytes;
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path model = fs::path(LLMC_SOURCE_DIR).parent_path() / "shared" / "models" / "qwen3-small";
  fs::path out_json = fs::path(LLMC_SOURCE_DIR) / "bench" / "results" / "convert.json";
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model") model = argv[i + 1];
    else if (a == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--out") out_json = argv[i + 1];
    else {
      std::fprintf(stderr, "usage: bench_convert [--model DIR] [--reps N] [--out FILE]\n");
      return 2;
    }
  }
  std::vector<Row> rows;
  json results = json::array();
  auto add = [&](Row r) {
    rows.push_back(r);
    results.push_back({{"name", r.name}, {"mb", r.mb}, {"best_s", r.best_s}, {"mb_per_s", r.mb_per_s}, {"note", r.note}});
  };

  const fs::path tmp = fs::temp_directory_path() / ("llmc-bench-convert-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  try {
    if (fs::exists(model / "config.json")) {
      ConvertOptions hf2pq;
      hf2pq.format = CheckpointFormat::Parquet;
      hf2pq.progress = false;
      hf2pq.writer.overwrite = true;  // each repetition replaces the previous run's output
      ConvertOptions to_hf;
      to_hf.progress = false;
      to_hf.writer.overwrite = true;
      Checkpoint src = open_checkpoint(model);
      const double mb = double(tensor_bytes(src)) / 1e6;
      double t = best_of(reps, [&](int) { convert_checkpoint(src, tmp / "m.parquet", hf2pq); });
      add({"HF -> Parquet", mb, t, mb / t, "uncompressed"});
      ConvertOptions z = hf2pq;
      z.writer.parquet_zstd = true;
      t = best_of(reps, [&](int) { convert_checkpoint(src, tmp / "z.parquet", z); });
      add({"HF -> Parquet (zstd)", mb, t, mb / t,
           "file " + std::to_string(fs::file_size(tmp / "z.parquet") / 1000) + " kB"});
      {
        Checkpoint pq = open_checkpoint(tmp / "m.parquet");
        t = best_of(reps, [&](int) { convert_checkpoint(pq, tmp / "back", to_hf); });
        add({"Parquet -> HF", mb, t, mb / t, ""});
      }
      t = best_of(reps, [&](int) { convert_checkpoint(src, tmp / "hf", to_hf); });
      add({"HF -> HF (rewrite)", mb, t, mb / t, ""});
      ConvertOptions f32 = to_hf;
      f32.target_dtype = DType::F32;
      t = best_of(reps, [&](int) { convert_checkpoint(src, tmp / "f32", f32); });
      add({"HF bf16 -> HF fp32", mb, t, mb / t, "MB of input"});
      // Open + touch every tensor byte (zero-copy mmap read).
      t = best_of(reps, [&](int) {
        Checkpoint c = open_checkpoint(model);
        uint64_t sum = 0;
        for (const auto& ti : c.tensors->list()) {
          TensorRef r = c.tensors->get(ti.name);
          for (uint64_t i = 0; i < r.info.nbytes; i += 64) sum += r.data[i];
        }
        if (sum == 42) std::printf(" ");
      });
      add({"open HF + read all", mb, t, mb / t, "page-cache hot"});
    } else {
      std::printf("qwen3-small not found at %s: skipping checkpoint conversions\n", model.string().c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_convert: %s\n", e.what());
    fs::remove_all(tmp);
    return 1;
  }
  fs::remove_all(tmp);

  // Bulk bf16 -> f32 of 100M elements (multithreaded and single-threaded).
  const size_t n = 100'000'000;
  std::vector<uint16_t> src(n);
  for (size_t i = 0; i < n; ++i) src[i] = uint16_t(0x3c00 + (i * 2654435761u >> 20) % 0x0800);
  std::vector<float> dst(n);
  convert(DType::BF16, src.data(), DType::F32, dst.data(), n);  // warm up (page faults)
  const double mb_in = double(n) * 2 / 1e6;
  const int threads = num_threads();
  double t = best_of(reps, [&](int) { convert(DType::BF16, src.data(), DType::F32, dst.data(), n); });
  add({"bf16 -> f32 100M elems", mb_in, t, mb_in / t, std::to_string(threads) + " threads, " +
                                                            std::to_string(int(double(n) / t / 1e6)) + " Melem/s"});
  set_num_threads(1);
  t = best_of(reps, [&](int) { convert(DType::BF16, src.data(), DType::F32, dst.data(), n); });
  add({"bf16 -> f32 100M elems", mb_in, t, mb_in / t, "1 thread, " + std::to_string(int(double(n) / t / 1e6)) + " Melem/s"});
  set_num_threads(0);
  t = best_of(reps, [&](int) { convert(DType::F32, dst.data(), DType::BF16, src.data(), n); });
  add({"f32 -> bf16 100M elems", double(n) * 4 / 1e6, t, double(n) * 4 / 1e6 / t,
       std::to_string(threads) + " threads (RNE)"});

  std::printf("\n%-26s %10s %10s %12s  %s\n", "conversion", "MB", "best s", "MB/s", "note");
  for (const auto& r : rows)
    std::printf("%-26s %10.1f %10.4f %12.1f  %s\n", r.name.c_str(), r.mb, r.best_s, r.mb_per_s, r.note.c_str());

  json out;
  out["benchmark"] = "convert";
  out["model"] = fs::exists(model / "config.json") ? model.string() : "";
  out["reps"] = reps;
  out["machine"] = {{"nproc", std::thread::hardware_concurrency()}, {"threads", threads}, {"cpu_model", cpu_model()},
                    {"peak_rss_bytes", peak_rss_bytes()}};
  out["results"] = results;
  write_text_file(out_json, out.dump(2) + "\n");
  std::printf("\nwrote %s\n", out_json.string().c_str());
  return 0;
}
