// llmc verify — checks that a checkpoint reads back whole: every tensor of every weight file is
// readable (safetensors header and offsets, Parquet page CRCs, footer and tensor checksums),
// float tensors hold no NaN/Inf (integer tensors, e.g. packed quantized weights, are not
// checked; fp8 weights and float scales are), and an HF shard index agrees with its shards.
// Prints one summary line per weight file (or a JSON report) and exits 1 naming every bad
// tensor.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/command.h"
#include "core/error.h"
#include "core/fs.h"
#include "formats/checkpoint.h"
#include "formats/hf_dir.h"
#include "formats/parquet.h"
#include "formats/safetensors.h"

namespace {

using namespace llmc;
using nlohmann::json;
namespace fs = std::filesystem;

// Non-finite elements of a float tensor: count and the first index (integer dtypes: none).
struct NonFinite {
  uint64_t nan = 0, inf = 0, first = 0;
};

template <typename U, typename F>
void scan_bits(const uint8_t* p, uint64_t n, F classify, NonFinite* out) {
  for (uint64_t i = 0; i < n; ++i) {
    U v;
    std::memcpy(&v, p + i * sizeof(U), sizeof(U));
    const int c = classify(v);  // 0 finite, 1 inf, 2 nan
    if (c == 0) continue;
    if (out->nan + out->inf == 0) out->first = i;
    (c == 1 ? out->inf : out->nan) += 1;
  }
}

NonFinite non_finite(DType t, const uint8_t* p, uint64_t numel) {
  NonFinite r;
  switch (t) {
    case DType::F64:
      scan_bits<uint64_t>(p, numel, [](uint64_t v) {
        if ((v & 0x7ff0000000000000ull) != 0x7ff0000000000000ull) return 0;
        return (v & 0x000fffffffffffffull) ? 2 : 1;
      }, &r);
      break;
    case DType::F32:
      scan_bits<uint32_t>(p, numel, [](uint32_t v) {
        if ((v & 0x7f800000u) != 0x7f800000u) return 0;
        return (v & 0x007fffffu) ? 2 : 1;
      }, &r);
      break;
    case DType::F16:
      scan_bits<uint16_t>(p, numel, [](uint16_t v) {
        if ((v & 0x7c00u) != 0x7c00u) return 0;
        return (v & 0x03ffu) ? 2 : 1;
      }, &r);
      break;
    case DType::BF16:
      scan_bits<uint16_t>(p, numel, [](uint16_t v) {
        if ((v & 0x7f80u) != 0x7f80u) return 0;
        return (v & 0x007fu) ? 2 : 1;
      }, &r);
      break;
    case DType::F8_E4M3:  // e4m3fn: no infinities, S.1111.111 is NaN
      scan_bits<uint8_t>(p, numel, [](uint8_t v) { return (v & 0x7fu) == 0x7fu ? 2 : 0; }, &r);
      break;
    case DType::F8_E5M2:
      scan_bits<uint8_t>(p, numel, [](uint8_t v) {
        if ((v & 0x7cu) != 0x7cu) return 0;
        return (v & 0x03u) ? 2 : 1;
      }, &r);
      break;
    default:
      break;
  }
  return r;
}

struct FileReport {
  std::string file;
  std::string checksums;  // "verified" (Parquet with checksums), "none" (without), "n/a" (safetensors)
  uint64_t tensors = 0, bytes = 0, float_tensors = 0;
  std::vector<std::pair<std::string, std::string>> problems;  // tensor ("" = the file), message
};

// Reads every tensor of `r` (checksums are verified by get()), checking float tensors.
void check_tensors(const TensorReader& r, FileReport* rep) {
  for (const TensorInfo& info : r.list()) {
    ++rep->tensors;
    rep->bytes += info.nbytes;
    try {
      const TensorRef t = r.get(info.name);
      if (!dtype_traits(info.dtype).is_float) continue;
      ++rep->float_tensors;
      const NonFinite nf = non_finite(info.dtype, t.data, uint64_t(info.numel()));
      if (nf.nan + nf.inf == 0) continue;
      rep->problems.emplace_back(
          info.name, r.origin() + ": tensor '" + info.name + "': " + std::to_string(nf.nan) + " NaN and " +
                         std::to_string(nf.inf) + " Inf of " + std::to_string(info.numel()) + " elements (first at " +
                         std::to_string(nf.first) + ")");
    } catch (const Error& e) {
      rep->problems.emplace_back(info.name, e.what());
    }
  }
}

FileReport verify_safetensors(const fs::path& p) {
  FileReport rep;
  rep.file = p.string();
  rep.checksums = "n/a";
  try {
    SafetensorsFile f(p);
    check_tensors(f, &rep);
  } catch (const Error& e) {
    rep.problems.emplace_back("", e.what());
  }
  return rep;
}

FileReport verify_parquet(const fs::path& p) {
  FileReport rep;
  rep.file = p.string();
  rep.checksums = "none";
  try {
    ParquetCheckpointFile f = open_parquet_checkpoint(p);
    rep.checksums = f.checksums ? "verified" : "none";
    check_tensors(*f.tensors, &rep);
  } catch (const Error& e) {
    rep.problems.emplace_back("", e.what());
  }
  return rep;
}

struct Report {
  std::string path, format;
  std::vector<FileReport> files;
  std::vector<std::string> problems;  // checkpoint level: config, shard index, aux files
};

// HF directory: each weight file on its own, then the checkpoint as llmc opens it (config,
// shard index consistency, aux files).
void verify_hf_dir(const fs::path& dir, Report* rep) {
  std::vector<fs::path> shards;
  if (fs::exists(dir / kHfSingleWeights)) {
    shards.push_back(dir / kHfSingleWeights);
  } else if (fs::exists(dir / kHfIndex)) {
    try {
      const json idx = json::parse(read_text_file(dir / kHfIndex));
      std::set<std::string> names;
      if (idx.is_object() && idx.contains("weight_map") && idx["weight_map"].is_object())
        for (const auto& [k, v] : idx["weight_map"].items())
          if (v.is_string()) names.insert(v.get<std::string>());
      for (const auto& n : names) {
        check_plain_file_name(n, (dir / kHfIndex).string() + ": shard name");
        shards.push_back(dir / n);
      }
    } catch (const Error& e) {
      rep->problems.push_back(e.what());
    } catch (const json::exception& e) {
      rep->problems.push_back((dir / kHfIndex).string() + ": not valid JSON: " + e.what());
    }
  } else {
    rep->problems.push_back(dir.string() + ": no " + kHfSingleWeights + " or " + kHfIndex);
  }
  for (const auto& s : shards) rep->files.push_back(verify_safetensors(s));
  try {
    Checkpoint c = open_checkpoint(dir);  // config.json, index <-> shards, aux files
  } catch (const Error& e) {
    const std::string msg = e.what();
    bool dup = false;  // a weight file's own error was reported with that file
    for (const auto& f : rep->files)
      for (const auto& [t, m] : f.problems) dup |= t.empty() && m == msg;
    if (!dup) rep->problems.push_back(msg);
  }
}

Report verify_path(const fs::path& path) {
  Report rep;
  rep.path = path.string();
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail(path.string(), ": no such file or directory");
  const std::string ext = path.extension().string();
  if (fs::is_directory(st)) {
    rep.format = "hf";
    verify_hf_dir(path, &rep);
  } else if (ext == ".parquet") {
    rep.format = "parquet";
    rep.files.push_back(verify_parquet(path));
    if (rep.files.back().problems.empty()) {
      try {
        Checkpoint c = open_checkpoint(path);  // config.json and aux files in the metadata
      } catch (const Error& e) {
        rep.problems.push_back(e.what());
      }
    }
  } else if (ext == ".safetensors") {
    rep.format = "safetensors";
    rep.files.push_back(verify_safetensors(path));
  } else {
    fail(path.string(), ": not an HF model directory, a .parquet or a .safetensors file");
  }
  return rep;
}

json to_json(const Report& r, bool ok) {
  json j = {{"path", r.path}, {"format", r.format}, {"ok", ok}, {"problems", r.problems}};
  j["files"] = json::array();
  for (const auto& f : r.files) {
    json pf = json::array();
    for (const auto& [t, m] : f.problems)
      pf.push_back({{"tensor", t.empty() ? json(nullptr) : json(t)}, {"error", m}});
    j["files"].push_back({{"file", f.file},
                          {"ok", f.problems.empty()},
                          {"tensors", f.tensors},
                          {"float_tensors_checked", f.float_tensors},
                          {"bytes", f.bytes},
                          {"checksums", f.checksums},
                          {"problems", pf}});
  }
  return j;
}

cli::RunFn setup(CLI::App& app) {
  struct Opts {
    std::string path;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("path", o->path, "HF model directory, .parquet file or .safetensors file")->required();
  app.add_flag("--json", o->json, "print the report as JSON");
  app.footer(
      "Reads every tensor: safetensors headers and offsets, Parquet page CRCs, footer and per-tensor "
      "checksums (files without checksums are read and reported as such), NaN/Inf in float tensors "
      "(integer tensors are not checked), and an HF shard index against its shards. Exit 0 when "
      "everything is fine, 1 naming each bad tensor otherwise.");
  return [o]() -> int {
    const Report rep = verify_path(o->path);
    std::vector<std::string> bad;
    size_t bad_files = 0;
    for (const auto& f : rep.files) {
      bad_files += !f.problems.empty();
      for (const auto& [t, m] : f.problems) bad.push_back(t.empty() ? f.file : "'" + t + "'");
    }
    const bool ok = bad.empty() && rep.problems.empty();
    if (o->json) {
      const std::string text = to_json(rep, ok).dump(2) + "\n";
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else {
      for (const auto& f : rep.files) {
        std::printf("%s: %s, %llu tensors, %llu bytes, %llu float tensors finite-checked, checksums: %s\n",
                    f.file.c_str(), f.problems.empty() ? "ok" : "BAD", (unsigned long long)f.tensors,
                    (unsigned long long)f.bytes, (unsigned long long)f.float_tensors, f.checksums.c_str());
        for (const auto& [t, m] : f.problems) std::printf("  %s\n", m.c_str());
      }
      for (const auto& p : rep.problems) std::printf("%s\n", p.c_str());
    }
    std::fflush(stdout);
    if (ok) return 0;
    std::string names;
    for (size_t i = 0; i < bad.size() && i < 20; ++i) names += (i ? ", " : "") + bad[i];
    if (bad.size() > 20) names += ", ...";
    std::fprintf(stderr, "llmc: error: %s: %zu bad tensor(s) in %zu file(s)%s%s%s\n", rep.path.c_str(), bad.size(),
                 bad_files, bad.empty() ? "" : ": ", names.c_str(),
                 rep.problems.empty() ? "" : (bad.empty() ? "; checkpoint problems above" : "; and checkpoint problems above"));
    return 1;
  };
}

}  // namespace

LLMC_REGISTER_COMMAND("verify", "check that every tensor of a checkpoint reads back whole and finite (CRCs, checksums, shard index)", 45, setup);
