// bench_forward — forward throughput of qwen3-small (../shared/models/qwen3-small) at ctx 256,
// batch 16: tokens/s, share of time in GEMM, achieved GFLOP/s over the linear layers, and an
// sgemm ceiling measured in the same run on the same shapes (a pure OpenBLAS sgemm loop with
// OpenBLAS's own threading over all cores; also llmc's tiled gemm_xwt alone).
// Usage: bench_forward [model_dir] [--batch N] [--ctx N] [--iters N]
// Prints a table and writes bench/results/forward.json.
#include <cblas.h>
#include <sys/utsname.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "backend/cpu/kernels.h"
#include "core/fs.h"
#include "core/threads.h"
#include "formats/checkpoint.h"
#include "model/model.h"

using namespace llmc;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

using llmc::bench::cpu_model;

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a;
  f >> a;
  return a.empty() ? "unknown" : a;
}

struct Shape3 {
  int64_t m, k, n;
  int count;  // occurrences per forward pass
};

}  // namespace

int main(int argc, char** argv) {
  fs::path dir = fs::path(LLMC_SOURCE_DIR).parent_path() / "shared/models/qwen3-small";
  int batch = 16, ctx = 256, iters = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--batch" && i + 1 < argc) batch = std::atoi(argv[++i]);
    else if (a == "--ctx" && i + 1 < argc) ctx = std::atoi(argv[++i]);
    else if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
    else dir = a;
  }
  if (!fs::exists(dir / "config.json")) {
    std::printf("bench_forward: %s not found, skipping\n", dir.c_str());
    return 0;
  }
  const Checkpoint ck = open_checkpoint(dir);
  auto model = Model::load(ck);
  const ModelConfig& c = model->config();
  const int nt = num_threads();
  const int64_t rows = int64_t(batch) * ctx;
  std::vector<int32_t> ids(rows);
  std::mt19937 rng(1);
  for (auto& t : ids) t = int32_t(rng() % c.vocab_size);

  // ---- model forward ----
  model->forward(ids, batch, ctx);  // warm-up: loads blocks, touches buffers
  reset_gemm_stats();
  const double t0 = now_s();
  for (int i = 0; i < iters; ++i) model->forward(ids, batch, ctx);
  const double total = (now_s() - t0) / iters;
  const GemmStats gs = gemm_stats();
  const double gemm_s = gs.seconds / iters, gemm_flops = gs.flops / iters;

  // ---- the same GEMM shapes, pure ----
  const int64_t H = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t QD = int64_t(c.num_heads) * c.head_dim, KD = int64_t(c.num_kv_heads) * c.head_dim;
  const int L = c.num_layers;
  const std::vector<Shape3> shapes = {{rows, H, QD, L},     {rows, H, KD, 2 * L}, {rows, QD, H, L},
                                      {rows, H, F, 2 * L},  {rows, F, H, L},      {rows, H, V, 1}};
  double linear_flops = 0;
  for (const auto& s : shapes) linear_flops += 2.0 * s.m * s.k * s.n * s.count;
  auto measure = [&](bool openblas_threads) {
    double secs = 0;
    for (const auto& s : shapes) {
      std::vector<float> x(s.m * s.k), w(s.n * s.k), y(s.m * s.n);
      for (auto& v : x) v = float(rng() % 1000) * 1e-3f;
      for (auto& v : w) v = float(rng() % 1000) * 1e-3f;
      auto one = [&] {
        if (openblas_threads)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(s.m), int(s.n), int(s.k), 1.0f, x.data(),
                      int(s.k), w.data(), int(s.k), 0.0f, y.data(), int(s.n));
        else
          gemm_xwt(x.data(), s.m, s.k, w.data(), s.n, y.data());
      };
      one();
      const int reps = std::max(3, s.count * iters);
      const double a = now_s();
      for (int r = 0; r < reps; ++r) one();
      secs += (now_s() - a) / reps * s.count;
    }
    return secs;
  };
  cpu::blas_init();
  openblas_set_num_threads(nt);
  const double ceil_s = measure(true);
  openblas_set_num_threads(1);
  const double tiled_s = measure(false);

  const double tok_s = double(rows) / total;
  const double achieved = gemm_flops / gemm_s / 1e9, ceiling = linear_flops / ceil_s / 1e9;
  const double tiled = linear_flops / tiled_s / 1e9;
  std::printf("bench_forward: %s  (%s, %d layers, hidden %lld, ffn %lld, vocab %lld)\n", dir.filename().c_str(),
              c.architecture.c_str(), L, (long long)H, (long long)F, (long long)V);
  std::printf("machine: %s, %d threads, load average %s (other processes share the cores)\n\n",
              cpu_model().c_str(), nt, load_average().c_str());
  std::printf("| metric                                   | value        |\n");
  std::printf("|------------------------------------------|--------------|\n");
  std::printf("| batch x ctx                              | %3d x %-6d |\n", batch, ctx);
  std::printf("| forward time per pass                    | %9.3f s  |\n", total);
  std::printf("| throughput                               | %8.0f tok/s |\n", tok_s);
  std::printf("| time in GEMM (linear layers + lm_head)   | %9.1f %%  |\n", 100 * gemm_s / total);
  std::printf("| linear-layer GFLOP per pass              | %10.2f   |\n", linear_flops / 1e9);
  std::printf("| achieved GFLOP/s in the model            | %10.1f   |\n", achieved);
  std::printf("| ceiling: pure OpenBLAS sgemm, %2d threads | %10.1f   |\n", nt, ceiling);
  std::printf("| pure llmc gemm_xwt (tiled), same shapes  | %10.1f   |\n", tiled);
  std::printf("| achieved / ceiling                       | %9.1f %%  |\n", 100 * achieved / ceiling);
  std::printf("| linear flops / whole forward time GFLOP/s | %9.1f   |\n", linear_flops / total / 1e9);

  utsname u{};
  uname(&u);
  nlohmann::json j = {
      {"benchmark", "forward"},
      {"model", dir.filename().string()},
      {"architecture", c.architecture},
      {"batch", batch},
      {"ctx", ctx},
      {"iters", iters},
      {"seconds_per_pass", total},
      {"tokens_per_s", tok_s},
      {"gemm_seconds_per_pass", gemm_s},
      {"gemm_share", gemm_s / total},
      {"linear_gflop_per_pass", linear_flops / 1e9},
      {"gemm_gflop_counted", gemm_flops / 1e9},
      {"achieved_gflops", achieved},
      {"ceiling_gflops_openblas", ceiling},
      {"tiled_gemm_gflops", tiled},
      {"achieved_over_ceiling", achieved / ceiling},
      {"goal", ">= 0.60 of ceiling"},
      {"machine",
       {{"cpu", cpu_model()},
        {"threads", nt},
        {"load_average_1m_at_end", load_average()},
        {"hardware_concurrency", std::thread::hardware_concurrency()},
        {"kernel", std::string(u.sysname) + " " + u.release},
        {"openblas", openblas_get_config()}}}};
  const fs::path out = fs::path(LLMC_SOURCE_DIR) / "bench/results/forward.json";
  fs::create_directories(out.parent_path());
  write_text_file(out, j.dump(2) + "\n");
  std::printf("\nwrote %s\n", out.c_str());
  return 0;
}
