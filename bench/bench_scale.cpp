// bench/bench_scale.cpp — real-size benchmarks that need no Python (issue 9).
//
//   bench_scale synth 0.6b|1.7b|4b|8b DIR    deterministic synthetic Qwen3-shaped checkpoint: the
//       real config (hidden/intermediate/layers/heads/kv heads, head_dim 128, vocab 151936, tied
//       embeddings up to 4B, rope_theta 1e6, rms eps 1e-6), random bf16 weights (normal, std
//       0.02; norms 1), the real Qwen3 tokenizer (tests/data/tokenizers/qwen3), sharded
//       safetensors with model.safetensors.index.json, written by formats' CheckpointWriter.
//       Weights come from a counter-based generator per (tensor, 1 Mi-element chunk), so the
//       bytes do not depend on the thread count; the next tensor is generated while the
//       current one is written.
//   bench_scale quantize MODEL [--methods a,b] [--devices cpu,cuda] [--llmc PATH] ...
//       times `llmc quantize --no-eval` per method and device as a child process (wall time,
//       peak RSS of the child from wait4's rusage), prints a table, writes --out JSON
//       (default bench/results/scale.json, key "quantize"; other keys are kept).
//   bench_scale solver [--shapes 1024x1024,...] [--devices cpu,cuda]
//       times quant/gptq.h gptq_quantize (int4, group 128, act-order dynamic, MSE search 20)
//       on random layers of real sizes (out x in) with a full-rank H, per solver, and
//       compares the GPU codes/errors with the CPU's; writes key "solver" of --out (default
//       bench/results/gptq_solver.json).
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "bench_common.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/threads.h"
#include "formats/checkpoint.h"
#include "model/linear.h"
#include "quant/gptq.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace llmc;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> r;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t q = std::min(s.find(',', p), s.size());
    if (q > p) r.push_back(s.substr(p, q - p));
    p = q + 1;
  }
  return r;
}

// ---- synth -----------------------------------------------------------------------------------

struct Shape3 {
  const char* name;
  int hidden, inter, layers, heads, kv;
  bool tied;
};
const Shape3 kQwen3[] = {{"0.6b", 1024, 3072, 28, 16, 8, true},
                         {"1.7b", 2048, 6144, 28, 16, 8, true},
                         {"4b", 2560, 9728, 36, 32, 8, true},
                         {"8b", 4096, 12288, 36, 32, 8, false}};
constexpr int kHeadDim = 128;
constexpr int64_t kVocab = 151936;

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t name_seed(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// bf16 normal(0, sd) values; sd == 0 gives ones.
std::vector<uint16_t> make_tensor(const std::string& name, int64_t n, float sd) {
  std::vector<uint16_t> v(static_cast<size_t>(n));
  if (sd == 0.0f) {
    std::fill(v.begin(), v.end(), f32_to_bf16(1.0f));
    return v;
  }
  constexpr int64_t kChunk = int64_t(1) << 20;
  const uint64_t seed = name_seed(name);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(0, size_t(chunks), 1, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      uint64_t s = seed ^ (uint64_t(c) * 0xd1b54a32d192ed03ull);
      const int64_t b = int64_t(c) * kChunk, e = std::min(n, b + kChunk);
      for (int64_t i = b; i < e; i += 2) {  // Box-Muller: two values per pair of uniforms
        const double u1 = (double(splitmix(s) >> 11) + 1.0) * 0x1.0p-53;
        const double u2 = double(splitmix(s) >> 11) * 0x1.0p-53;
        const double r = std::sqrt(-2.0 * std::log(u1)) * sd;
        v[size_t(i)] = f32_to_bf16(float(r * std::cos(6.283185307179586 * u2)));
        if (i + 1 < e) v[size_t(i + 1)] = f32_to_bf16(float(r * std::sin(6.283185307179586 * u2)));
      }
    }
  });
  return v;
}

std::string gunzip_file(const fs::path& p) {
  gzFile f = gzopen(p.c_str(), "rb");
  if (!f) fail(p.string(), ": cannot open");
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, size_t(n));
  gzclose(f);
  if (n < 0) fail(p.string(), ": gzip read error");
  return out;
}

int cmd_synth(const std::string& size, const fs::path& dir, const fs::path& tokdir,
              uint64_t shard_bytes) {
  const Shape3* m = nullptr;
  for (const auto& s : kQwen3)
    if (size == s.name) m = &s;
  if (!m) fail("bench_scale synth: unknown size '", size, "' (0.6b, 1.7b, 4b, 8b)");
  if (fs::exists(dir)) fail("bench_scale synth: ", dir.string(), " exists; not overwriting");
  const double t0 = now_s();
  json cfg = {{"architectures", {"Qwen3ForCausalLM"}},
              {"model_type", "qwen3"},
              {"attention_bias", false},
              {"attention_dropout", 0.0},
              {"bos_token_id", 151643},
              {"eos_token_id", 151645},
              {"head_dim", kHeadDim},
              {"hidden_act", "silu"},
              {"hidden_size", m->hidden},
              {"initializer_range", 0.02},
              {"intermediate_size", m->inter},
              {"max_position_embeddings", 40960},
              {"max_window_layers", m->layers},
              {"num_attention_heads", m->heads},
              {"num_hidden_layers", m->layers},
              {"num_key_value_heads", m->kv},
              {"rms_norm_eps", 1e-6},
              {"rope_scaling", nullptr},
              {"rope_theta", 1000000.0},
              {"sliding_window", nullptr},
              {"tie_word_embeddings", m->tied},
              {"torch_dtype", "bfloat16"},
              {"use_cache", true},
              {"use_sliding_window", false},
              {"vocab_size", kVocab}};
  std::map<std::string, std::string> aux;
  aux["tokenizer.json"] = gunzip_file(tokdir / "tokenizer.json.gz");
  if (fs::exists(tokdir / "tokenizer_config.json"))
    aux["tokenizer_config.json"] = read_text_file(tokdir / "tokenizer_config.json");

  struct T {
    std::string name;
    Shape shape;
    float sd;
  };
  std::vector<T> ts;
  const int64_t h = m->hidden, q = int64_t(m->heads) * kHeadDim, kv = int64_t(m->kv) * kHeadDim;
  ts.push_back({"model.embed_tokens.weight", {kVocab, h}, 0.02f});
  for (int l = 0; l < m->layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ts.push_back({p + "input_layernorm.weight", {h}, 0.0f});
    ts.push_back({p + "self_attn.q_proj.weight", {q, h}, 0.02f});
    ts.push_back({p + "self_attn.k_proj.weight", {kv, h}, 0.02f});
    ts.push_back({p + "self_attn.v_proj.weight", {kv, h}, 0.02f});
    ts.push_back({p + "self_attn.o_proj.weight", {h, q}, 0.02f});
    ts.push_back({p + "self_attn.q_norm.weight", {kHeadDim}, 0.0f});
    ts.push_back({p + "self_attn.k_norm.weight", {kHeadDim}, 0.0f});
    ts.push_back({p + "post_attention_layernorm.weight", {h}, 0.0f});
    ts.push_back({p + "mlp.gate_proj.weight", {m->inter, h}, 0.02f});
    ts.push_back({p + "mlp.up_proj.weight", {m->inter, h}, 0.02f});
    ts.push_back({p + "mlp.down_proj.weight", {h, m->inter}, 0.02f});
  }
  ts.push_back({"model.norm.weight", {h}, 0.0f});
  if (!m->tied) ts.push_back({"lm_head.weight", {kVocab, h}, 0.02f});

  WriterOptions wo;
  wo.max_shard_bytes = shard_bytes;
  auto w = make_checkpoint_writer(dir, CheckpointFormat::HF, wo);
  auto numel = [](const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
  };
  uint64_t bytes = 0;
  std::future<std::vector<uint16_t>> next =
      std::async(std::launch::async, make_tensor, ts[0].name, numel(ts[0].shape), ts[0].sd);
  for (size_t i = 0; i < ts.size(); ++i) {
    std::vector<uint16_t> cur = next.get();
    if (i + 1 < ts.size())
      next = std::async(std::launch::async, make_tensor, ts[i + 1].name, numel(ts[i + 1].shape),
                        ts[i + 1].sd);
    w->add_tensor(ts[i].name, DType::BF16, ts[i].shape, cur.data(), cur.size() * 2);
    bytes += cur.size() * 2;
  }
  w->commit(cfg, aux);
  const double s = now_s() - t0;
  std::printf("bench_scale synth %s: %zu tensors, %.2f GB in %.1f s (%.2f GB/s) -> %s\n", m->name,
              ts.size(), double(bytes) / 1e9, s, double(bytes) / 1e9 / s, dir.c_str());
  return 0;
}

// ---- quantize --------------------------------------------------------------------------------

struct ChildResult {
  int status = -1;
  double wall_s = 0;
  int64_t peak_rss = 0;  // bytes
  double user_s = 0, sys_s = 0;
};

ChildResult run_child(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(stdout);  // the child must not inherit unwritten output
  std::fflush(stderr);
  const double t0 = now_s();
  const pid_t pid = fork();
  if (pid < 0) fail("fork failed");
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    if (f) dup2(fileno(stdout), 2);
    execv(argv[0], argv.data());
    std::perror("execv");
    _exit(127);
  }
  ChildResult r;
  int st = 0;
  rusage ru{};
  if (wait4(pid, &st, 0, &ru) < 0) fail("wait4 failed");
  r.wall_s = now_s() - t0;
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.peak_rss = int64_t(ru.ru_maxrss) * 1024;
  r.user_s = double(ru.ru_utime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec);
  r.sys_s = double(ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_stime.tv_usec);
  return r;
}

json load_results(const fs::path& p) {
  if (!fs::exists(p)) return json::object();
  try {
    return json::parse(read_text_file(p));
  } catch (const std::exception&) {
    return json::object();
  }
}

void save_results(const fs::path& p, const std::string& key, const json& value) {
  json all = load_results(p);
  all[key] = value;
  all["machine"] = bench::machine_info(num_threads());
  all["machine"]["gpu"] = backend::cuda_device_info();
  fs::create_directories(p.parent_path());
  std::ofstream(p) << all.dump(2) << "\n";
  std::printf("wrote %s (key %s)\n", p.c_str(), key.c_str());
}

int cmd_quantize(const fs::path& model, const std::string& methods, const std::string& devices,
                 const std::string& llmc_bin, int samples, int seq, const fs::path& out_json,
                 const std::string& calib) {
  if (!fs::exists(model / "config.json")) fail(model.string(), ": no config.json");
  const fs::path tmp = fs::temp_directory_path() / ("bench_scale-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  json rows = json::array();
  std::printf("%-14s %-6s %10s %10s %10s %10s %6s\n", "method", "device", "wall s", "user s",
              "sys s", "peak RSS", "rc");
  for (const auto& dev : split(devices)) {
    for (const auto& m : split(methods)) {
      const fs::path out = tmp / (m + "-" + dev);
      std::vector<std::string> a = {llmc_bin, "quantize", "-i", model.string(), "-o",
                                    out.string(), "-m", m, "--no-eval", "--device", dev,
                                    "--num-samples", std::to_string(samples), "--seq-len",
                                    std::to_string(seq), "--json"};
      if (!calib.empty()) a.insert(a.end(), {"--calibration-data", calib});
      const fs::path log = tmp / (m + "-" + dev + ".log");
      const ChildResult r = run_child(a, log);
      std::printf("%-14s %-6s %10.1f %10.1f %10.1f %9.2fG %6d\n", m.c_str(), dev.c_str(), r.wall_s,
                  r.user_s, r.sys_s, double(r.peak_rss) / double(1ull << 30), r.status);
      std::fflush(stdout);
      json row = {{"method", m},          {"device", dev},     {"wall_s", r.wall_s},
                  {"user_s", r.user_s},   {"sys_s", r.sys_s},  {"peak_rss_bytes", r.peak_rss},
                  {"exit_status", r.status}, {"num_samples", samples}, {"seq_len", seq}};
      if (r.status != 0) {
        const std::string text = read_text_file(log);
        row["log_tail"] = text.substr(text.size() > 2000 ? text.size() - 2000 : 0);
      }
      rows.push_back(row);
      std::error_code ec;
      fs::remove_all(out, ec);
    }
  }
  fs::remove_all(tmp);
  json j = {{"model", model.string()},
            {"model_config", json::parse(read_text_file(model / "config.json"))},
            {"runs", rows}};
  save_results(out_json, "quantize", j);
  return 0;
}

// ---- solver ----------------------------------------------------------------------------------

json solver_json(const json& rows);

int cmd_solver(const std::string& shapes, const std::string& devices, const fs::path& out_json,
               int64_t cpu_max_in) {
  json rows = json::array();
  const bool want_cuda = split(devices).size() > 1 || devices.find("cuda") != std::string::npos;
  if (want_cuda && !backend::cuda_available())
    fail("bench_scale solver: cuda asked for but unavailable: ", backend::cuda_device_info());
  std::printf("%-12s %10s %10s %10s %12s %12s %12s\n", "out x in", "cpu s", "cuda s", "speedup",
              "codes differ", "rel err cpu", "rel err gpu");
  for (const auto& sh : split(shapes)) {
    const size_t x = sh.find('x');
    if (x == std::string::npos) fail("bad shape '", sh, "' (OUTxIN)");
    const int64_t out = std::stoll(sh.substr(0, x)), in = std::stoll(sh.substr(x + 1));
    // Full-rank correlated H from (in + 512) random rows, accumulated where the device is.
    if (want_cuda) backend::set_device(backend::Device::CUDA);
    std::vector<double> H;
    {
      const int64_t rows = in + 512, k = std::max<int64_t>(64, in / 8);
      std::vector<float> z(size_t(rows * k)), a(size_t(k * in)), xs(size_t(rows * in));
      auto fill = [](std::vector<float>& v, uint64_t seed) {
        parallel_for(0, v.size(), 1 << 16, [&](size_t b, size_t e) {
          uint64_t s = seed ^ (b * 0x9e3779b97f4a7c15ull);
          for (size_t i = b; i < e; ++i)
            v[i] = float(double(splitmix(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
        });
      };
      fill(z, 1);
      fill(a, 2);
      fill(xs, 3);
      std::vector<float> y(size_t(rows * in));
      // y = z · a (as z · (aᵀ)ᵀ): gemm_xwt wants w [n, k]; transpose a.
      std::vector<float> at(size_t(in * k));
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < in; ++j) at[size_t(j * k + i)] = a[size_t(i * in + j)];
      gemm_xwt(z.data(), rows, k, at.data(), in, y.data());  // on the GPU when device is cuda
      for (size_t i = 0; i < y.size(); ++i) y[i] = y[i] * ((i % in) % 17 == 3 ? 4.0f : 1.0f) + 0.3f * xs[i];
      HessianAccumulator acc(in);
      acc.add(y.data(), rows);
      H = acc.hessian();
    }
    std::vector<float> w(size_t(out * in));
    {
      std::vector<float> u(w.size());
      parallel_for(0, w.size(), 1 << 16, [&](size_t b, size_t e) {
        uint64_t s = 77 ^ (b * 0x9e3779b97f4a7c15ull);
        for (size_t i = b; i < e; i += 2) {
          const double u1 = (double(splitmix(s) >> 11) + 1.0) * 0x1.0p-53;
          const double u2 = double(splitmix(s) >> 11) * 0x1.0p-53;
          const double r = std::sqrt(-2.0 * std::log(u1)) * 0.02;
          w[i] = float(r * std::cos(6.283185307179586 * u2));
          if (i + 1 < e) w[i + 1] = float(r * std::sin(6.283185307179586 * u2));
        }
      });
    }
    GptqOptions o;
    o.grid.bits = 4;
    o.grid.symmetric = true;
    o.grid.search_steps = 20;
    o.group = 128;
    o.act_order = ActOrder::Dynamic;
    o.report_rtn = false;
    json row = {{"out", out}, {"in", in}, {"bits", 4}, {"group", 128}, {"act_order", "dynamic"},
                {"mse_steps", 20}};
    GptqResult rc, rg;
    double tc = -1, tg = -1;
    if (devices.find("cpu") != std::string::npos && in <= cpu_max_in) {
      o.solver = GptqSolver::Cpu;
      const double t0 = now_s();
      rc = gptq_quantize(w.data(), out, in, H.data(), o, "bench");
      tc = now_s() - t0;
      row["cpu_s"] = tc;
      row["rel_error_cpu"] = rc.report.rel_error;
    }
    if (want_cuda) {
      o.solver = GptqSolver::Cuda;
      gptq_quantize(w.data(), std::min<int64_t>(out, 64), in, H.data(), o, "warmup");
      const double t0 = now_s();
      rg = gptq_quantize(w.data(), out, in, H.data(), o, "bench");
      tg = now_s() - t0;
      row["cuda_s"] = tg;
      row["rel_error_cuda"] = rg.report.rel_error;
    }
    double diff = -1;
    if (tc >= 0 && tg >= 0) {
      int64_t d = 0;
      for (int64_t r = 0; r < out; ++r)
        for (int64_t i = 0; i < in; ++i) d += rc.qw.code(r, i) != rg.qw.code(r, i);
      diff = double(d) / double(out * in);
      row["codes_differ"] = diff;
      row["speedup"] = tc / tg;
    }
    std::printf("%-12s %10.3f %10.3f %10.1f %12.2e %12.6e %12.6e\n", sh.c_str(), tc, tg,
                tc > 0 && tg > 0 ? tc / tg : 0.0, diff, rc.report.rel_error, rg.report.rel_error);
    std::fflush(stdout);
    rows.push_back(row);
    backend::set_device(backend::Device::CPU);
    save_results(out_json, "solver", solver_json(rows));  // after every layer: a cut run keeps rows
  }
  return 0;
}

json solver_json(const json& rows) {
  return {{"note", "gptq_quantize wall time per layer (host arrays in and out, report "
                     "included; rel_error reported without the RTN baseline); H full rank from "
                     "in + 512 correlated random rows; weights normal(0, 0.02)"},
          {"threads", num_threads()},
          {"runs", rows}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_scale: synthetic Qwen3 checkpoints, quantize timings, GPTQ solver timings"};
  app.require_subcommand(1);
  fs::path results;  // default: bench/results/scale.json (quantize), gptq_solver.json (solver)
  int threads = 0;
  app.add_option("--threads", threads);
  app.add_option("--out", results, "results JSON (keys are merged)");

  auto* synth = app.add_subcommand("synth", "write a synthetic Qwen3-shaped checkpoint");
  std::string size;
  fs::path dir, tokdir = fs::path(LLMC_SOURCE_DIR) / "tests/data/tokenizers/qwen3";
  uint64_t shard = 4000000000ull;
  synth->add_option("size", size, "0.6b | 1.7b | 4b | 8b")->required();
  synth->add_option("dir", dir, "output directory (must not exist)")->required();
  synth->add_option("--tokenizer-dir", tokdir);
  synth->add_option("--shard-bytes", shard);

  auto* quant = app.add_subcommand("quantize", "time llmc quantize --no-eval per method/device");
  fs::path model;
  std::string methods = "int8_dynamic,fp8_static,int4_gptq,int4_awq", devices = "cuda";
  std::string llmc_bin = (fs::path(argv[0]).parent_path() / "llmc").string(), calib;
  int samples = 128, seq = 2048;
  quant->add_option("model", model)->required();
  quant->add_option("--methods", methods);
  quant->add_option("--devices", devices);
  quant->add_option("--llmc", llmc_bin);
  quant->add_option("--num-samples", samples);
  quant->add_option("--seq-len", seq);
  quant->add_option("--calibration-data", calib);

  auto* solver = app.add_subcommand("solver", "time the GPTQ solver on real-size layers");
  std::string shapes = "1024x1024,3072x1024,1024x3072,4096x4096,12288x4096,4096x12288";
  std::string sdev = "cpu,cuda";
  int64_t cpu_max_in = 1 << 20;
  solver->add_option("--shapes", shapes, "OUTxIN,...");
  solver->add_option("--devices", sdev);
  solver->add_option("--cpu-max-in", cpu_max_in, "skip the CPU solver above this input size");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) set_num_threads(threads);
  set_quiet(true);
  if (results.empty())
    results = fs::path(LLMC_SOURCE_DIR) / "bench/results" /
              (*solver ? "gptq_solver.json" : "scale.json");
  try {
    if (*synth) return cmd_synth(size, dir, tokdir, shard);
    if (*quant) return cmd_quantize(model, methods, devices, llmc_bin, samples, seq, results, calib);
    if (*solver) return cmd_solver(shapes, sdev, results, cpu_max_in);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_scale: %s\n", e.what());
    return 1;
  }
  return 0;
}
