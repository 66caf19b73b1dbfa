// `llmc verify` end to end: good HF / sharded HF / Parquet / safetensors inputs pass; NaN/Inf in
// float tensors (not in integer tensors), bit flips in Parquet pages and footer, truncated
// safetensors and inconsistent shard indexes fail with exit 1 naming the file and tensor.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/fs.h"
#include "formats/checkpoint.h"
#include "formats/hf_dir.h"
#include "formats/parquet.h"
#include "formats/safetensors.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

int verify(const fs::path& p, std::string* out, const std::string& extra = "") {
  return test::run_cli("verify " + extra + q(p), out);
}

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void put_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), std::streamsize(s.size()));
}

struct Tensor {
  std::string name;
  DType dtype;
  Shape shape;
  std::string data;
};

Tensor make(const std::string& name, DType dt, Shape shape, uint8_t fill = 0x11) {
  uint64_t n = dtype_size(dt);
  for (auto d : shape) n *= uint64_t(d);
  std::string data(n, char(fill));
  for (size_t i = 0; i < data.size(); ++i) data[i] = char(uint8_t(fill + i % 7));  // finite everywhere
  return {name, dt, std::move(shape), std::move(data)};
}

// A tensor set with every float dtype and integer tensors whose bytes look like NaN bit patterns.
std::vector<Tensor> tensors() {
  // Distinct byte patterns per tensor, all finite in their dtype.
  std::vector<Tensor> ts = {make("a.weight", DType::BF16, {4, 8}, 0x11), make("b.weight", DType::F32, {16}, 0x21),
                            make("c.weight", DType::F16, {8}, 0x31), make("d.weight", DType::F64, {3}, 0x41),
                            make("e.weight", DType::F8_E4M3, {2, 8}, 0x51),
                            make("f.weight", DType::F8_E5M2, {4}, 0x61)};
  Tensor packed = make("g.qweight", DType::I32, {4});
  packed.data.assign(packed.data.size(), char(0xff));  // all-ones words: NaN as floats, fine as ints
  ts.push_back(packed);
  return ts;
}

void write_parquet(const fs::path& p, const std::vector<Tensor>& ts, bool checksums = true) {
  ParquetTensorWriter w(p, 24, false);
  w.set_checksums(checksums);
  w.set_kv({{"config.json", "{}"}});
  for (const auto& t : ts) w.add(t.name, t.dtype, t.shape, t.data.data(), t.data.size());
  w.finish();
}

void write_hf(const fs::path& dir, const std::vector<Tensor>& ts, uint64_t shard_bytes = 1ull << 30) {
  fs::create_directories(dir);
  HfTensorWriter w(dir, shard_bytes);
  for (const auto& t : ts) w.add(t.name, t.dtype, t.shape, t.data.data(), t.data.size());
  w.finish();
  put_file(dir / "config.json", "{}");
}

// Sets element `i` of tensor `name` to the given bytes.
std::vector<Tensor> with(std::vector<Tensor> ts, const std::string& name, size_t at, const std::string& bytes) {
  for (auto& t : ts)
    if (t.name == name) t.data.replace(at, bytes.size(), bytes);
  return ts;
}

}  // namespace

TEST(Verify, GoodCheckpointsPass) {
  std::string out;
  ASSERT_EQ(verify(test::model_dir("qwen3-tiny"), &out), 0) << out;
  EXPECT_NE(out.find("model.safetensors: ok"), std::string::npos) << out;
  EXPECT_NE(out.find("checksums: n/a"), std::string::npos) << out;

  const fs::path d = test::temp_dir("verify-good");
  write_parquet(d / "m.parquet", tensors());
  ASSERT_EQ(verify(d / "m.parquet", &out), 0) << out;
  EXPECT_NE(out.find("checksums: verified"), std::string::npos) << out;
  ASSERT_EQ(verify(d / "m.parquet", &out, "--json "), 0) << out;
  const json j = json::parse(out);
  EXPECT_TRUE(j["ok"].get<bool>());
  EXPECT_EQ(j["format"], "parquet");
  ASSERT_EQ(j["files"].size(), 1u);
  EXPECT_EQ(j["files"][0]["tensors"], 7);
  EXPECT_EQ(j["files"][0]["float_tensors_checked"], 6);  // not the int32 qweight
  EXPECT_EQ(j["files"][0]["checksums"], "verified");

  // A file without checksums (older llmc, other writers) reads and says so.
  write_parquet(d / "old.parquet", tensors(), false);
  ASSERT_EQ(verify(d / "old.parquet", &out), 0) << out;
  EXPECT_NE(out.find("checksums: none"), std::string::npos) << out;

  // Sharded HF directory: one line per shard.
  write_hf(d / "sharded", tensors(), 64);
  ASSERT_TRUE(fs::exists(d / "sharded" / kHfIndex));
  ASSERT_EQ(verify(d / "sharded", &out, "--json "), 0) << out;
  const json s = json::parse(out);
  EXPECT_GT(s["files"].size(), 2u);
  EXPECT_EQ(s["format"], "hf");
  uint64_t n = 0;
  for (const auto& f : s["files"]) n += f["tensors"].get<uint64_t>();
  EXPECT_EQ(n, 7u);
  // A bare safetensors file.
  for (const auto& e : fs::directory_iterator(d / "sharded")) {
    if (e.path().extension() != ".safetensors") continue;
    ASSERT_EQ(verify(e.path(), &out), 0) << out;
    break;
  }
}

TEST(Verify, NonFiniteFloatTensorsAreNamed) {
  const fs::path d = test::temp_dir("verify-nan");
  struct Case {
    std::string tensor;
    size_t at;
    std::string bytes, what;
  };
  const std::vector<Case> cases = {
      {"a.weight", 6, std::string("\xc0\x7f", 2), "1 NaN"},             // bf16 NaN at element 3
      {"b.weight", 8, std::string("\x00\x00\x80\xff", 4), "1 Inf"},     // f32 -inf at element 2
      {"c.weight", 0, std::string("\x00\x7c", 2), "1 Inf"},             // f16 +inf
      {"d.weight", 8, std::string("\x01\0\0\0\0\0\xf0\x7f", 8), "1 NaN"},  // f64 NaN
      {"e.weight", 5, std::string("\x7f", 1), "1 NaN"},                 // e4m3fn NaN
      {"f.weight", 1, std::string("\x7c", 1), "1 Inf"},                 // e5m2 inf
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.tensor);
    const auto ts = with(tensors(), c.tensor, c.at, c.bytes);
    write_parquet(d / "m.parquet", ts);
    write_hf(d / ("hf-" + c.tensor), ts);
    for (const fs::path& p : {d / "m.parquet", d / ("hf-" + c.tensor)}) {
      std::string out;
      ASSERT_EQ(verify(p, &out), 1) << out;
      EXPECT_NE(out.find("tensor '" + c.tensor + "'"), std::string::npos) << out;
      EXPECT_NE(out.find(c.what), std::string::npos) << out;
      EXPECT_NE(out.find("llmc: error:"), std::string::npos) << out;
      EXPECT_NE(out.find("1 bad tensor(s)"), std::string::npos) << out;
      // JSON names the tensor too.
      ASSERT_EQ(verify(p, &out, "--json "), 1);
      const json j = json::parse(out.substr(0, out.rfind("llmc: error:")));
      EXPECT_FALSE(j["ok"].get<bool>());
      bool named = false;
      for (const auto& f : j["files"])
        for (const auto& pr : f["problems"]) named |= pr["tensor"] == c.tensor;
      EXPECT_TRUE(named) << out;
    }
  }
}

TEST(Verify, CorruptParquetFailsNamingFileAndTensor) {
  const fs::path d = test::temp_dir("verify-flip");
  write_parquet(d / "good.parquet", tensors());
  const std::string g = bytes_of(d / "good.parquet");
  // Data bytes of b.weight (f32, the bytes 0x11.. pattern) live in the data pages: flip one bit in
  // the middle of a run of its bytes.
  const Tensor b = tensors()[1];
  const size_t at = g.find(b.data.substr(0, 12));
  ASSERT_NE(at, std::string::npos);
  std::string bad = g;
  bad[at + 5] = char(uint8_t(bad[at + 5]) ^ 0x04);
  put_file(d / "data.parquet", bad);
  std::string out;
  ASSERT_EQ(verify(d / "data.parquet", &out), 1) << out;
  EXPECT_NE(out.find("tensor 'b.weight'"), std::string::npos) << out;
  EXPECT_NE(out.find("CRC mismatch"), std::string::npos) << out;
  EXPECT_NE(out.find("'b.weight'"), std::string::npos) << out;
  EXPECT_EQ(out.find("tensor 'a.weight'"), std::string::npos) << out;  // only the bad one
  // Footer: a flip inside the config.json text of the key-value metadata.
  bad = g;
  const size_t cfg = g.rfind("config.json");
  ASSERT_NE(cfg, std::string::npos);
  bad[cfg + 2] ^= 0x01;
  put_file(d / "footer.parquet", bad);
  ASSERT_EQ(verify(d / "footer.parquet", &out), 1) << out;
  EXPECT_NE(out.find("footer checksum mismatch"), std::string::npos) << out;
  EXPECT_NE(out.find((d / "footer.parquet").string()), std::string::npos) << out;
  // Not a checkpoint at all.
  put_file(d / "x.txt", "hello");
  EXPECT_EQ(verify(d / "x.txt", &out), 1) << out;
  EXPECT_NE(out.find("not an HF model directory"), std::string::npos) << out;
  EXPECT_EQ(verify(d / "missing", &out), 1) << out;
  EXPECT_NE(out.find("no such file"), std::string::npos) << out;
}

TEST(Verify, BadSafetensorsAndShardIndexFail) {
  const fs::path d = test::temp_dir("verify-hf");
  write_hf(d / "single", tensors());
  const fs::path st = d / "single" / kHfSingleWeights;
  const std::string g = bytes_of(st);
  put_file(st, g.substr(0, g.size() - 3));
  std::string out;
  ASSERT_EQ(verify(d / "single", &out), 1) << out;
  EXPECT_NE(out.find(st.string()), std::string::npos) << out;
  EXPECT_NE(out.find("BAD"), std::string::npos) << out;

  write_hf(d / "sharded", tensors(), 64);
  const fs::path idx = d / "sharded" / kHfIndex;
  const std::string good_index = bytes_of(idx);
  json j = json::parse(good_index);
  // A tensor mapped to a shard that does not hold it.
  const std::string a_shard = j["weight_map"]["a.weight"], g_shard = j["weight_map"]["g.qweight"];
  ASSERT_NE(a_shard, g_shard);
  j["weight_map"]["a.weight"] = g_shard;
  put_file(idx, j.dump());
  ASSERT_EQ(verify(d / "sharded", &out), 1) << out;
  EXPECT_NE(out.find("a.weight"), std::string::npos) << out;
  EXPECT_NE(out.find(kHfIndex), std::string::npos) << out;
  // A shard the index names is missing.
  j = json::parse(good_index);
  j["weight_map"]["zz.weight"] = "model-99999-of-99999.safetensors";
  put_file(idx, j.dump());
  ASSERT_EQ(verify(d / "sharded", &out), 1) << out;
  EXPECT_NE(out.find("model-99999-of-99999.safetensors"), std::string::npos) << out;
  // Not JSON.
  put_file(idx, "{");
  ASSERT_EQ(verify(d / "sharded", &out), 1) << out;
  EXPECT_NE(out.find(kHfIndex), std::string::npos) << out;
}
