// bench_layouts — cost of running quantized weights from their stored form: per layout, the time
// to encode, decode (unpack + validate) and dequantize one [out, in] weight, and a QuantLinear
// forward for 1 row (decode-bound, like generation) and 256 rows (like eval) next to a
// DenseLinear of the same shape. Prints a table and writes bench/results/layouts.json.
//
// Usage: bench_layouts [--out N] [--in N] [--reps N] [--json FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/threads.h"
#include "loader/quant_linear.h"
#include "model/linear.h"
#include "quant/layouts.h"

using namespace llmc;
using nlohmann::json;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best wall time of `reps` runs, in milliseconds.
double best_ms(int reps, const std::function<void()>& f) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    f();
    best = std::min(best, (now_s() - t0) * 1e3);
  }
  return best;
}

struct Case {
  const char* layout;
  QKind kind;
  int bits;
  bool sym;
  int64_t group;
  ActQuant act;
};

QuantizedWeight make_weight(const Case& c, int64_t out, int64_t in, std::mt19937& rng) {
  QuantizedWeight w;
  w.kind = c.kind;
  w.bits = c.bits;
  w.symmetric = c.sym;
  w.out = out;
  w.in = in;
  w.group = c.group;
  w.act = c.act;
  const size_t n = size_t(out * in);
  if (c.kind == QKind::FP8) {
    w.q8.resize(n);
    for (auto& v : w.q8) v = int8_t(rng() % 0x7E);
  } else if (c.sym) {
    w.q8.resize(n);
    for (auto& v : w.q8) v = int8_t(int(rng() % (1u << c.bits)) - (1 << (c.bits - 1)));
  } else {
    w.qu.resize(n);
    for (auto& v : w.qu) v = uint8_t(rng() % (1u << c.bits));
  }
  const size_t ns = c.group == 0 ? 1 : size_t(out * w.n_groups());
  w.scales.assign(ns, 0.01f);
  if (!c.sym) w.zeros.assign(ns, 1 << (c.bits - 1));
  if (c.act == ActQuant::FP8StaticTensor) w.input_scale = 0.05f;
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t out = 1024, in = 4096;
  int reps = 5;
  std::string json_path = std::string(LLMC_SOURCE_DIR) + "/bench/results/layouts.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--out") out = std::atoll(argv[i + 1]);
    else if (a == "--in") in = std::atoll(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--json") json_path = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  const std::vector<Case> cases = {
      {"gptq", QKind::INT, 4, true, 128, ActQuant::None},
      {"gptq", QKind::INT, 3, true, 128, ActQuant::None},
      {"awq", QKind::INT, 4, false, 128, ActQuant::None},
      {"pack-quantized", QKind::INT, 4, false, 128, ActQuant::None},
      {"pack-quantized", QKind::INT, 2, false, 64, ActQuant::None},
      {"pack-quantized", QKind::INT, 8, true, -1, ActQuant::None},
      {"int-quantized", QKind::INT, 8, true, -1, ActQuant::INT8DynamicToken},
      {"float-quantized", QKind::FP8, 8, true, 0, ActQuant::FP8StaticTensor},
      {"float-quantized", QKind::FP8, 8, true, -1, ActQuant::FP8DynamicToken},
  };
  std::mt19937 rng(1);
  std::vector<float> x1(static_cast<size_t>(in)), x256(static_cast<size_t>(256 * in)), y(static_cast<size_t>(256 * out));
  for (auto& v : x256) v = float(int(rng() % 2001) - 1000) * 1e-3f;
  std::copy(x256.begin(), x256.begin() + in, x1.begin());
  std::vector<float> dense_w(size_t(out * in), 0.01f);
  DenseLinear dense(dense_w, out, in);
  const double dense1 = best_ms(reps, [&] { dense.forward(x1.data(), 1, y.data()); });
  const double dense256 = best_ms(reps, [&] { dense.forward(x256.data(), 256, y.data()); });

  std::printf("bench_layouts: weight [%lld, %lld], %d threads, best of %d\n", (long long)out,
              (long long)in, num_threads(), reps);
  std::printf("%-16s %4s %5s %6s | %9s %9s %9s | %9s %9s | %8s\n", "layout", "bits", "sym", "group",
              "encode", "decode", "dequant", "fwd 1row", "fwd 256", "bytes");
  std::printf("%-16s %4s %5s %6s | %9s %9s %9s | %8.2fms %8.2fms | %8.2fM\n", "dense fp32", "32", "-",
              "-", "-", "-", "-", dense1, dense256, double(out * in * 4) / 1e6);
  json rows = json::array();
  for (const Case& c : cases) {
    const Layout& L = find_layout(c.layout);
    QuantizedWeight w = make_weight(c, out, in, rng);
    std::vector<EncodedTensor> enc;
    const double t_enc = best_ms(reps, [&] { enc = L.encode("m", w); });
    QuantConfigSpec spec;
    spec.scheme = w;
    auto qc = std::make_shared<const json>(L.quantization_config(spec));
    MemoryTensorReader r("bench");
    for (auto& t : enc) r.add(t);
    QuantizedWeight d;
    const double t_dec = best_ms(reps, [&] { d = L.decode(r, "m", *qc, out, in); });
    std::vector<float> deq;
    const double t_deq = best_ms(reps, [&] { deq = d.dequantize(); });
    QuantLinear ql(L, qc, "m", r, out, in);
    const double f1 = best_ms(reps, [&] { ql.forward(x1.data(), 1, y.data()); });
    const double f256 = best_ms(reps, [&] { ql.forward(x256.data(), 256, y.data()); });
    std::printf("%-16s %4d %5s %6lld | %7.2fms %7.2fms %7.2fms | %7.2fms %7.2fms | %8.2fM\n", c.layout,
                c.bits, c.sym ? "sym" : "asym", (long long)c.group, t_enc, t_dec, t_deq, f1, f256,
                double(ql.bytes_held()) / 1e6);
    rows.push_back({{"layout", c.layout}, {"bits", c.bits}, {"symmetric", c.sym}, {"group", c.group},
                    {"act", act_quant_name(c.act)}, {"encode_ms", t_enc}, {"decode_ms", t_dec},
                    {"dequantize_ms", t_deq}, {"forward_1row_ms", f1}, {"forward_256rows_ms", f256},
                    {"bytes_held", ql.bytes_held()}});
  }
  std::string load = read_text_file("/proc/loadavg");
  load = load.substr(0, load.find(' '));
  std::printf("(1-minute load average during the run: %s)\n", load.c_str());
  json res = {{"bench", "layouts"},
              {"load_average_1min", load},
              {"out", out},
              {"in", in},
              {"threads", num_threads()},
              {"hardware_concurrency", std::thread::hardware_concurrency()},
              {"dense_forward_1row_ms", dense1},
              {"dense_forward_256rows_ms", dense256},
              {"rows", rows}};
  write_text_file(json_path, res.dump(2) + "\n");
  std::printf("wrote %s\n", json_path.c_str());
  return 0;
}
