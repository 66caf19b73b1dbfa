// bench_cuda — CPU vs CUDA for the operations llmc offloads (backend/backend.h):
//   1. ceilings: host->device bandwidth (pinned), device sgemm/ssyrk GFLOP/s (fp32, TF32);
//   2. eval forward of a model (default ../shared/models/qwen3-small), ctx 256 x batch 16:
//      tokens/s on CPU and with --device cuda (GEMMs offloaded, weights resident), and the
//      logits difference between the two;
//   3. GPTQ Hessian accumulation (quant/gptq.h HessianAccumulator) over 128 x 256 calibration
//      rows at the widths of the model's linear inputs: CPU vs GPU;
//   4. weight decoding (QuantizedWeight::dequantize) int4 g128 asym / int8 per-channel / fp8:
//      CPU, GPU to host, GPU kernel only; and a W4A16 quantized linear forward.
// Prints a table and writes bench/results/cuda.json.
//
// Usage: bench_cuda [--model DIR] [--tokens FILE] [--ctx 256] [--batch 16] [--reps 3] [--out FILE]
//   --tokens: the evaluation text already tokenized (raw little-endian int32 ids, e.g. heldout.txt
//   with the model's tokenizer); then the batch is real text, perplexities/KL are reported, and
//   the whole file is evaluated (eval/eval.h evaluate_ppl) on each device.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/qweight.h"
#include "core/fs.h"
#include "core/threads.h"
#include "eval/eval.h"
#include "formats/checkpoint.h"
#include "loader/quant_linear.h"
#include "model/linear.h"
#include "model/model.h"
#include "quant/gptq.h"

using namespace llmc;
namespace be = llmc::backend;
using json = nlohmann::json;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename F>
double median_time(int reps, const F& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_s();
    f();
    t.push_back(now_s() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::string shell_line(const char* cmd) {
  std::string out;
  if (FILE* f = ::popen(cmd, "r")) {
    char buf[512];
    while (std::fgets(buf, sizeof(buf), f)) out += buf;
    ::pclose(f);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

QuantizedWeight random_qw(QKind kind, int bits, bool sym, int64_t out, int64_t in, int64_t group,
                          uint32_t seed) {
  std::mt19937 rng(seed);
  QuantizedWeight q;
  q.kind = kind;
  q.bits = bits;
  q.symmetric = sym;
  q.out = out;
  q.in = in;
  q.group = group;
  const size_t n = size_t(out * in);
  const size_t ns = group == 0 ? 1 : size_t(out * q.n_groups());
  if (kind == QKind::FP8) {
    q.q8.resize(n);
    for (auto& c : q.q8) c = int8_t(uint8_t(rng()) & 0x7e);
  } else if (sym) {
    q.q8.resize(n);
    for (auto& c : q.q8) c = int8_t(int(rng() % (1u << bits)) - (1 << (bits - 1)));
  } else {
    q.qu.resize(n);
    for (auto& c : q.qu) c = uint8_t(rng() % (1u << bits));
    q.zeros.assign(ns, 1 << (bits - 1));
  }
  q.scales.resize(ns);
  for (auto& s : q.scales) s = 0.001f + float(rng() % 1000) * 1e-5f;
  return q;
}

// Agreement of two devices' logits [batch·ctx, vocab] on the same ids.
struct DevAgreement {
  double max_abs = 0, rel_l2 = 0, top1 = 0, kl_mean = 0, kl_max = 0, ppl[2] = {0, 0};
};
DevAgreement agreement(const std::vector<float>& a, const std::vector<float>& b,
                       const std::vector<int32_t>& ids, int batch, int ctx, bool real) {
  DevAgreement r;
  const int64_t rows = int64_t(batch) * ctx, vocab = int64_t(a.size()) / rows;
  double num = 0, den = 0, nll[2] = {0, 0};
  int64_t agree = 0, predicted = 0;
  std::vector<double> pa(vocab), pb(vocab);
  for (int64_t r0 = 0; r0 < rows; ++r0) {
    const float* la = a.data() + r0 * vocab;
    const float* lb = b.data() + r0 * vocab;
    double ma = la[0], mb = lb[0];
    int64_t aa = 0, ab = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double d = double(lb[v]) - la[v];
      r.max_abs = std::max(r.max_abs, std::fabs(d));
      num += d * d;
      den += double(la[v]) * la[v];
      if (la[v] > la[aa]) aa = v;
      if (lb[v] > lb[ab]) ab = v;
      ma = std::max(ma, double(la[v]));
      mb = std::max(mb, double(lb[v]));
    }
    agree += aa == ab;
    double sa = 0, sb = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      sa += std::exp(double(la[v]) - ma);
      sb += std::exp(double(lb[v]) - mb);
    }
    const double lsa = ma + std::log(sa), lsb = mb + std::log(sb);
    double kl = 0;  // KL(P_cpu || P_gpu)
    for (int64_t v = 0; v < vocab; ++v) {
      const double lpa = la[v] - lsa, lpb = lb[v] - lsb;
      kl += std::exp(lpa) * (lpa - lpb);
    }
    r.kl_mean += kl;
    r.kl_max = std::max(r.kl_max, kl);
    if (real && (r0 % ctx) != ctx - 1) {
      const int32_t next = ids[size_t(r0 + 1)];
      nll[0] += lsa - la[next];
      nll[1] += lsb - lb[next];
      ++predicted;
    }
  }
  r.rel_l2 = std::sqrt(num / std::max(den, 1e-300));
  r.top1 = double(agree) / double(rows);
  r.kl_mean /= double(rows);
  if (predicted) r.ppl[0] = std::exp(nll[0] / predicted), r.ppl[1] = std::exp(nll[1] / predicted);
  return r;
}

struct Row {
  std::string what, cpu, gpu, note;
};
std::vector<Row> g_rows;
void row(std::string what, std::string cpu, std::string gpu, std::string note = "") {
  g_rows.push_back({std::move(what), std::move(cpu), std::move(gpu), std::move(note)});
}
std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof(b), f, v);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, tokens_path, out_path = std::string(LLMC_SOURCE_DIR) + "/bench/results/cuda.json";
  int ctx = 256, batch = 16, reps = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) fail("missing value after ", a);
      return argv[++i];
    };
    if (a == "--model") model_path = next();
    else if (a == "--ctx") ctx = std::stoi(next());
    else if (a == "--batch") batch = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--out") out_path = next();
    else if (a == "--tokens") tokens_path = next();
    else fail("unknown option ", a, " (see the header of bench/bench_cuda.cpp)");
  }
  if (model_path.empty()) {
    for (const char* p : {"/../shared/models/qwen3-small", "/shared/models/qwen3-small"}) {
      const fs::path c = fs::path(LLMC_SOURCE_DIR + std::string(p));
      if (fs::exists(c / "config.json")) { model_path = c.string(); break; }
    }
  }
  json J;
  J["threads"] = num_threads();
  J["cpu"] = cpu_name();
  J["cuda_device"] = be::cuda_device_info();
  J["nvidia_smi"] = shell_line(
      "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null");
  std::printf("CPU: %s, %d threads\nGPU: %s\nnvidia-smi: %s\n", cpu_name().c_str(), num_threads(),
              be::cuda_device_info().c_str(), J["nvidia_smi"].get<std::string>().c_str());
  if (!be::cuda_available()) {
    std::printf("no CUDA device: nothing to compare (results not written)\n");
    return 0;
  }

  // ---- 1. ceilings ----
  {
    const size_t bytes = size_t(256) << 20;
    const double t = be::cuda::time_h2d_pinned(bytes, 10);
    J["h2d_pinned_GBps"] = double(bytes) / t / 1e9;
    row("host->device copy, pinned (GB/s)", "", fmt("%.1f", double(bytes) / t / 1e9));
    for (bool tf32 : {false, true}) {
      const int64_t m = 8192;
      const double ts = be::cuda::time_sgemm_device(m, m, m, tf32, 10);
      const double gf = 2.0 * double(m) * m * m / ts / 1e9;
      J[tf32 ? "device_sgemm_tf32_GFLOPs" : "device_sgemm_fp32_GFLOPs"] = gf;
      row(tf32 ? "device GEMM 8192^3, TF32 (GFLOP/s)" : "device GEMM 8192^3, fp32 (GFLOP/s)", "",
          fmt("%.0f", gf));
    }
    // CPU sgemm ceiling at one of the model's shapes, through llmc's gemm_xwt.
    const int64_t r = 4096, k = 1024, n = 1024;
    const auto x = randn(size_t(r * k), 1), w = randn(size_t(n * k), 2);
    std::vector<float> y(size_t(r * n));
    be::set_device(be::Device::CPU);
    gemm_xwt(x.data(), r, k, w.data(), n, y.data());
    const double tc = median_time(reps, [&] { gemm_xwt(x.data(), r, k, w.data(), n, y.data()); });
    be::set_device(be::Device::CUDA);
    gemm_xwt(x.data(), r, k, w.data(), n, y.data());
    const double tg = median_time(reps, [&] { gemm_xwt(x.data(), r, k, w.data(), n, y.data()); });
    be::set_device(be::Device::CPU);
    const double f = 2.0 * r * k * n;
    J["gemm_4096x1024x1024"] = {{"cpu_GFLOPs", f / tc / 1e9}, {"cuda_offload_GFLOPs", f / tg / 1e9}};
    row("gemm_xwt 4096x1024x1024 incl. transfers (GFLOP/s)", fmt("%.0f", f / tc / 1e9),
        fmt("%.0f", f / tg / 1e9), "host buffers in, host buffers out");
  }

  // ---- 2. eval forward ----
  std::vector<int32_t> tokens;
  if (!tokens_path.empty()) {
    const MappedFile f(tokens_path);
    tokens.resize(f.size() / 4);
    std::memcpy(tokens.data(), f.data(), tokens.size() * 4);
  }
  if (!model_path.empty()) {
    const Checkpoint ckpt = open_checkpoint(model_path);
    const int64_t vocab = ckpt.config.value("vocab_size", 8192);
    // One batch of windows: the first batch·ctx tokens of --tokens, else random ids.
    std::vector<int32_t> ids(size_t(ctx) * batch);
    std::mt19937 rng(7);
    for (size_t i = 0; i < ids.size(); ++i)
      ids[i] = i < tokens.size() ? tokens[i] : int32_t(rng() % uint32_t(vocab));
    const bool real = tokens.size() >= ids.size();
    // Runs one model per device on the batch: tokens/s (median), logits, agreement.
    auto compare_devices = [&](const std::string& label, auto load, json& out) {
      std::vector<float> logits[2];
      double tps[2], gemm_share[2];
      for (int d = 0; d < 2; ++d) {
        be::set_device(d == 0 ? be::Device::CPU : be::Device::CUDA);
        auto m = load();
        logits[d] = m->forward(ids, batch, ctx);  // warm-up: loads blocks, uploads weights
        tps[d] = double(ids.size()) / median_time(reps, [&] { logits[d] = m->forward(ids, batch, ctx); });
        reset_gemm_stats();
        const double t0 = now_s();
        (void)m->forward(ids, batch, ctx);
        gemm_share[d] = gemm_stats().seconds / (now_s() - t0);
      }
      be::set_device(be::Device::CPU);
      const DevAgreement ag = agreement(logits[0], logits[1], ids, batch, ctx, real);
      out = {{"cpu_tokens_per_s", tps[0]}, {"cuda_tokens_per_s", tps[1]},
             {"speedup", tps[1] / tps[0]}, {"gemm_share_cpu", gemm_share[0]},
             {"gemm_share_cuda", gemm_share[1]}, {"logits_max_abs_diff", ag.max_abs},
             {"logits_rel_l2", ag.rel_l2}, {"top1_agreement", ag.top1},
             {"kl_cpu_gpu_mean", ag.kl_mean}, {"kl_cpu_gpu_max", ag.kl_max}};
      if (real) out["batch_ppl_cpu"] = ag.ppl[0], out["batch_ppl_cuda"] = ag.ppl[1];
      row(label + " (tokens/s)", fmt("%.0f", tps[0]), fmt("%.0f", tps[1]),
          fmt("x%.2f", tps[1] / tps[0]) + fmt(", GEMM share %.0f%%", 100 * gemm_share[0]) +
              fmt(" -> %.0f%%", 100 * gemm_share[1]) + fmt(", max|dlogit| %.1e", ag.max_abs) +
              fmt(", top-1 agree %.4f", ag.top1) + fmt(", KL mean %.1e", ag.kl_mean));
    };
    json E;
    compare_devices("forward " + fs::path(model_path).filename().string() + " ctx " +
                        std::to_string(ctx) + " x " + std::to_string(batch),
                    [&] { return Model::load(ckpt); }, E);
    E["model"] = model_path;
    E["ctx"] = ctx;
    E["batch"] = batch;
    E["real_tokens"] = real;
    J["eval_forward"] = E;
    // The whole of --tokens through eval/eval.h (what `llmc eval --ppl` runs), each device.
    if (real && tokens.size() >= size_t(2 * ctx)) {
      PplResult r[2];
      for (int d = 0; d < 2; ++d) {
        be::set_device(d == 0 ? be::Device::CPU : be::Device::CUDA);
        auto m = Model::load(ckpt);
        EvalOptions o;
        o.progress = false;
        r[d] = evaluate_ppl(*m, tokens, ctx, 0, o);
      }
      be::set_device(be::Device::CPU);
      const double tok = double(r[0].windows) * ctx;
      J["eval_ppl"] = {{"tokens_file", tokens_path}, {"windows", r[0].windows},
                       {"cpu", to_json(r[0])}, {"cuda", to_json(r[1])},
                       {"ppl_rel_diff", r[1].ppl / r[0].ppl - 1.0}};
      row("evaluate_ppl " + std::to_string(r[0].windows) + " windows (tokens/s)",
          fmt("%.0f", tok / r[0].seconds), fmt("%.0f", tok / r[1].seconds),
          fmt("x%.2f", r[0].seconds / r[1].seconds) + fmt(", ppl cpu %.4f", r[0].ppl) +
              fmt(" cuda %.4f", r[1].ppl));
    }
    // Quantized checkpoints through the loader (QuantLinear -> fused GPU path).
    json Q = json::array();
    for (const char* peer : {"int4_gptq", "fp8_static"}) {
      const fs::path dir =
          fs::path(LLMC_SOURCE_DIR) / "tests/data/peers/angelslim-qwen3-tiny" / peer;
      if (!fs::exists(dir / "config.json")) continue;
      const Checkpoint qc = open_checkpoint(dir);
      json q;
      compare_devices(std::string("forward qwen3-tiny ") + peer,
                      [&] { return load_model_for_inference(qc); }, q);
      q["checkpoint"] = std::string("angelslim-qwen3-tiny/") + peer;
      Q.push_back(q);
    }
    J["eval_forward_quantized"] = Q;
  } else {
    std::printf("model not found (--model DIR): eval forward skipped\n");
  }

  // ---- 3. GPTQ Hessian accumulation ----
  {
    const int64_t rows = 128 * 256;
    json H = json::array();
    for (int64_t cols : {int64_t(384), int64_t(1024), int64_t(4096)}) {
      const auto x = randn(size_t(rows * cols), uint32_t(cols));
      double t[2];
      std::vector<double> h[2];
      for (int d = 0; d < 2; ++d) {
        be::set_device(d == 0 ? be::Device::CPU : be::Device::CUDA);
        auto run = [&] {
          HessianAccumulator acc(cols);
          for (int64_t r0 = 0; r0 < rows; r0 += 256 * 16) acc.add(x.data() + r0 * cols, 256 * 16);
          h[d] = acc.hessian();
        };
        run();
        t[d] = median_time(reps, run);
      }
      be::set_device(be::Device::CPU);
      double num = 0, den = 0;
      for (size_t i = 0; i < h[0].size(); ++i) {
        num += (h[1][i] - h[0][i]) * (h[1][i] - h[0][i]);
        den += h[0][i] * h[0][i];
      }
      const double dev = be::cuda::time_syrk_device(rows, cols, 5);
      H.push_back({{"rows", rows}, {"cols", cols}, {"cpu_s", t[0]}, {"cuda_s", t[1]},
                   {"cuda_syrk_device_only_s", dev}, {"rel_l2_vs_cpu", std::sqrt(num / den)}});
      row("Hessian 32768 rows x " + std::to_string(cols) + " cols (ms)", fmt("%.1f", t[0] * 1e3),
          fmt("%.1f", t[1] * 1e3),
          fmt("x%.1f", t[0] / t[1]) + fmt(", syrk alone %.2f ms", dev * 1e3) +
              fmt(", rel %.1e", std::sqrt(num / den)));
    }
    J["hessian"] = H;
  }

  // ---- 4. dequantization and quantized linear ----
  {
    struct Q { const char* name; QKind kind; int bits; bool sym; int64_t group; };
    const Q qs[] = {{"int4 g128 asym", QKind::INT, 4, false, 128},
                    {"int8 per-channel", QKind::INT, 8, true, -1},
                    {"fp8 per-tensor", QKind::FP8, 8, true, 0}};
    const int64_t out = 4096, in = 4096;
    json D = json::array();
    for (const Q& q : qs) {
      const QuantizedWeight qw = random_qw(q.kind, q.bits, q.sym, out, in, q.group, 9);
      const double n = double(out * in);
      be::set_device(be::Device::CPU);
      const double tc = median_time(reps, [&] { (void)qw.dequantize(); });
      be::set_device(be::Device::CUDA);
      (void)be::dequantize(qw);
      const double tg = median_time(reps, [&] { (void)be::dequantize(qw); });
      const double tk = be::cuda::time_dequant_device(qw, 20);
      be::set_device(be::Device::CPU);
      D.push_back({{"format", q.name}, {"shape", {out, in}}, {"cpu_Gelem_s", n / tc / 1e9},
                   {"cuda_to_host_Gelem_s", n / tg / 1e9}, {"cuda_kernel_Gelem_s", n / tk / 1e9}});
      row(std::string("dequant ") + q.name + " 4096x4096 (Gelem/s)", fmt("%.2f", n / tc / 1e9),
          fmt("%.2f", n / tg / 1e9), fmt("kernel alone %.0f Gelem/s", n / tk / 1e9));
    }
    J["dequant"] = D;
    // W4A16 linear forward, 4096 rows: CPU (dequantize + gemm) vs GPU (decoded weight resident).
    const QuantizedWeight qw = random_qw(QKind::INT, 4, false, out, in, 128, 10);
    const int64_t rows = 4096;
    const auto x = randn(size_t(rows * in), 11);
    std::vector<float> y(size_t(rows * out));
    be::set_device(be::Device::CPU);
    const double tc = median_time(reps, [&] {
      const auto w = qw.dequantize();
      gemm_xwt(x.data(), rows, in, w.data(), out, y.data());
    });
    be::set_device(be::Device::CUDA);
    be::try_qlinear_forward(qw, x.data(), rows, y.data());
    const double tg = median_time(reps, [&] { be::try_qlinear_forward(qw, x.data(), rows, y.data()); });
    be::set_device(be::Device::CPU);
    J["qlinear_w4a16_4096x4096_rows4096"] = {{"cpu_s", tc}, {"cuda_s", tg}};
    row("W4A16 linear 4096x4096, 4096 rows (ms)", fmt("%.1f", tc * 1e3), fmt("%.1f", tg * 1e3),
        fmt("x%.1f", tc / tg));
  }

  // ---- table + JSON ----
  std::printf("\n%-58s %12s %12s  %s\n", "measurement", "cpu", "cuda", "note");
  for (const auto& r : g_rows)
    std::printf("%-58s %12s %12s  %s\n", r.what.c_str(), r.cpu.c_str(), r.gpu.c_str(), r.note.c_str());
  const auto cs = be::weight_cache_stats();
  J["weight_cache"] = {{"hits", cs.hits}, {"misses", cs.misses},
                       {"evictions", cs.evictions}, {"bytes", cs.bytes}};
  fs::create_directories(fs::path(out_path).parent_path());
  write_text_file(out_path, J.dump(2) + "\n");
  std::printf("\nwrote %s\n", out_path.c_str());
  return 0;
}
