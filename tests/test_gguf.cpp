// Tests of the GGUF container (formats/gguf.h), the ggml type table (formats/ggml_types.h), HF <->
// GGUF models (formats/gguf_model.h) and the GGUF presets (quant/gguf_quant.h, via the CLI).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "formats/gguf_model.h"
#include "model/model.h"
#include "quant/gguf_quant.h"
#include "synthetic_model.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

using namespace llmc;
namespace fs = std::filesystem;

namespace {

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A small file: three KVs (string, uint32 array of strings, f32), two tensors (F32 [3,2], Q8_0 [64]).
fs::path write_small(const fs::path& dir, uint32_t alignment = 32) {
  const fs::path p = dir / "small.gguf";
  std::vector<std::pair<std::string, GgufValue>> kv = {
      {"general.architecture", GgufValue::str("qwen3")},
      {"tokenizer.ggml.tokens", GgufValue::str_array({"a", "bc", ""})},
      {"x.eps", GgufValue::f32(1e-6f)},
      {"x.ids", GgufValue::i32_array({-1, 7})},
  };
  GgufWriter w(p, kv, {{"t0", 0, {2, 3}}, {"t1", 8, {64}}}, alignment);
  const float t0[6] = {1, 2, 3, 4, 5, 6};
  w.data("t0", t0, sizeof t0);
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = float(i) - 20.f;
  std::vector<uint8_t> q(68);
  ggml_traits(GgmlType::Q8_0).encode(x.data(), nullptr, 64, q.data());
  w.data("t1", q.data(), q.size());
  w.finish();
  return p;
}

void put_u32(std::string& s, size_t at, uint32_t v) { std::memcpy(&s[at], &v, 4); }
void put_u64(std::string& s, size_t at, uint64_t v) { std::memcpy(&s[at], &v, 8); }

std::string parse_error(const std::string& bytes) {
  return test::error_of([&] { parse_gguf(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "f.gguf"); });
}

}  // namespace

TEST(Gguf, WriteReadRoundTrip) {
  const fs::path p = write_small(test::temp_dir("gguf"));
  GgufFile f(p);
  const auto& h = f.header();
  EXPECT_EQ(h.version, 3u);
  EXPECT_EQ(f.get_str("general.architecture"), "qwen3");
  const GgufValue* toks = h.find("tokenizer.ggml.tokens");
  ASSERT_NE(toks, nullptr);
  ASSERT_EQ(toks->items.size(), 3u);
  EXPECT_EQ(toks->items[1].s, "bc");
  EXPECT_EQ(toks->items[2].s, "");
  EXPECT_FLOAT_EQ(float(f.get_float("x.eps", 0)), 1e-6f);
  EXPECT_EQ(h.find("x.ids")->items[0].i, -1);
  EXPECT_EQ(f.get_int("missing", 42), 42);
  EXPECT_NE(test::error_of([&] { f.get_int("general.architecture"); }).find("expected an integer"), std::string::npos);
  EXPECT_NE(test::error_of([&] { f.get_str("nope"); }).find("missing metadata key 'nope'"), std::string::npos);
  ASSERT_EQ(h.tensors.size(), 2u);
  const GgufTensorInfo* t0 = f.tensor("t0");
  ASSERT_NE(t0, nullptr);
  EXPECT_EQ(t0->ne, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(t0->nbytes, 24u);
  EXPECT_EQ(h.data_start % 32, 0u);
  const GgufTensorInfo* t1 = f.tensor("t1");
  EXPECT_EQ(t1->offset, 32u);  // 24 bytes padded to the alignment
  EXPECT_EQ(t1->nbytes, 68u);
  float v[6];
  std::memcpy(v, f.data(*t0), 24);
  EXPECT_EQ(v[5], 6.0f);
  std::vector<float> y(64);
  ggml_traits(GgmlType::Q8_0).decode(f.data(*t1), 64, y.data());
  EXPECT_NEAR(y[63], 43.0f, 0.2f);
}

TEST(Gguf, CustomAlignmentIsRecorded) {
  const fs::path p = write_small(test::temp_dir("gguf"), 64);
  GgufFile f(p);
  EXPECT_EQ(f.header().alignment, 64u);
  EXPECT_EQ(f.get_int("general.alignment"), 64);
  EXPECT_EQ(f.header().data_start % 64, 0u);
  EXPECT_EQ(f.tensor("t1")->offset, 64u);
}

TEST(Gguf, WriterRejectsMisuse) {
  const fs::path d = test::temp_dir("gguf");
  {
    GgufWriter w(d / "a.gguf", {}, {{"a", 0, {4}}, {"b", 0, {4}}});
    float x[4] = {};
    EXPECT_NE(test::error_of([&] { w.data("b", x, 16); }).find("out of the declared order"), std::string::npos);
    EXPECT_NE(test::error_of([&] { w.data("a", x, 12); }).find("12 bytes given, 16 declared"), std::string::npos);
    w.data("a", x, 16);
    EXPECT_NE(test::error_of([&] { w.finish(); }).find("not written (next: 'b')"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(d / "a.gguf"));  // unfinished writer removes its file
  EXPECT_NE(test::error_of([&] { GgufWriter w(d / "b.gguf", {}, {{"a", 12, {100}}}); }).find("block size"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { GgufWriter w(d / "b.gguf", {}, {{"a", 99, {1}}}); }).find("unknown ggml type"),
            std::string::npos);
}

TEST(Gguf, ReaderRejectsCorruptFiles) {
  const std::string good = file_bytes(write_small(test::temp_dir("gguf")));
  ASSERT_EQ(parse_error(good), "(no error)");
  EXPECT_NE(parse_error("GGU").find("bad magic"), std::string::npos);
  std::string s = good;
  put_u32(s, 4, 4);
  EXPECT_NE(parse_error(s).find("version 4 is not supported"), std::string::npos);
  s = good;
  put_u64(s, 8, uint64_t(1) << 60);
  EXPECT_NE(parse_error(s).find("tensor count"), std::string::npos);
  s = good;
  put_u64(s, 16, uint64_t(1) << 60);
  EXPECT_NE(parse_error(s).find("metadata count"), std::string::npos);
  s = good;
  put_u64(s, 24, uint64_t(1) << 40);  // first key's length
  EXPECT_NE(parse_error(s).find("runs past the end"), std::string::npos);
  // Every truncation before the end of the last tensor's data fails cleanly (only the trailing
  // padding is optional).
  const GgufHeader gh = parse_gguf(reinterpret_cast<const uint8_t*>(good.data()), good.size(), "f.gguf");
  const size_t data_end = size_t(gh.data_start + gh.tensors[1].offset + gh.tensors[1].nbytes);
  EXPECT_EQ(parse_error(good.substr(0, data_end)), "(no error)");
  for (size_t n = 0; n < data_end; n += 3) EXPECT_NE(parse_error(good.substr(0, n)), "(no error)") << n;
  // Locate pieces by their text.
  s = good;
  const size_t t1 = s.find("t1");
  // t1: name(2) n_dims(4) ne(8) type(4) offset(8)
  put_u32(s, t1 + 2 + 4 + 8, 77);
  EXPECT_NE(parse_error(s).find("tensor 't1': ggml type 77 is not supported"), std::string::npos);
  s = good;
  put_u64(s, t1 + 2 + 4 + 8 + 4, 0);  // overlaps t0
  EXPECT_NE(parse_error(s).find("overlaps"), std::string::npos);
  s = good;
  put_u64(s, t1 + 2 + 4 + 8 + 4, 33);
  EXPECT_NE(parse_error(s).find("not a multiple of the alignment"), std::string::npos);
  s = good;
  put_u64(s, t1 + 2 + 4 + 8 + 4, 1 << 20);
  EXPECT_NE(parse_error(s).find("runs past the end of the file"), std::string::npos);
  s = good;
  put_u64(s, t1 + 2 + 4, 63);
  EXPECT_NE(parse_error(s).find("not a multiple of the Q8_0 block size 32"), std::string::npos);
  s = good;
  put_u32(s, t1 + 2, 5);
  EXPECT_NE(parse_error(s).find("n_dims 5"), std::string::npos);
  s = good;
  s[t1 + 1] = '0';  // rename t1 -> t0
  EXPECT_NE(parse_error(s).find("duplicate tensor name 't0'"), std::string::npos);
  s = good;
  const size_t arch = s.find("general.architecture");
  put_u32(s, arch + 20, 13);
  EXPECT_NE(parse_error(s).find("unknown value type 13"), std::string::npos);
  s = good;
  const size_t toks = s.find("tokenizer.ggml.tokens");
  put_u64(s, toks + 21 + 4 + 4, uint64_t(1) << 59);  // array count
  EXPECT_NE(parse_error(s).find("array of"), std::string::npos);
  s = good;
  std::memcpy(&s[s.find("x.ids")], "x.eps", 5);
  EXPECT_NE(parse_error(s).find("duplicate metadata key 'x.eps'"), std::string::npos);
}

TEST(Gguf, ReaderRejectsBadAlignmentAndDeepArrays) {
  const fs::path d = test::temp_dir("gguf");
  {
    GgufWriter w(d / "a.gguf", {{"general.alignment", GgufValue::u32(32)}}, {});
    w.finish();
  }
  std::string s = file_bytes(d / "a.gguf");
  EXPECT_EQ(parse_error(s), "(no error)");
  put_u32(s, s.find("general.alignment") + 17 + 4, 24);
  EXPECT_NE(parse_error(s).find("general.alignment 24 is not a power of two"), std::string::npos);
  GgufValue v = GgufValue::i32_array({1});
  for (int i = 0; i < kGgufMaxDepth; ++i) {
    GgufValue outer;
    outer.type = GgufType::ARRAY;
    outer.elem = GgufType::ARRAY;
    outer.items.push_back(v);
    v = outer;
  }
  {
    GgufWriter w(d / "b.gguf", {{"deep", v}}, {});
    w.finish();
  }
  EXPECT_NE(parse_error(file_bytes(d / "b.gguf")).find("nested deeper"), std::string::npos);
  {
    GgufWriter w(d / "c.gguf", {{"deep", v.items[0]}}, {});
    w.finish();
  }
  EXPECT_EQ(parse_error(file_bytes(d / "c.gguf")), "(no error)");
}

// ---------------------------------------------------------------- types

TEST(GgmlTypes, TableSizesAndIds) {
  struct Row { const char* name; uint32_t id; int block, bytes; };
  const Row rows[] = {{"F32", 0, 1, 4},      {"F16", 1, 1, 2},      {"BF16", 30, 1, 2},    {"Q8_0", 8, 32, 34},
                      {"Q4_0", 2, 32, 18},   {"Q4_1", 3, 32, 20},   {"Q5_0", 6, 32, 22},   {"Q5_1", 7, 32, 24},
                      {"Q2_K", 10, 256, 84}, {"Q3_K", 11, 256, 110}, {"Q4_K", 12, 256, 144}, {"Q5_K", 13, 256, 176},
                      {"Q6_K", 14, 256, 210}};
  EXPECT_EQ(ggml_type_count(), 13);
  for (const Row& r : rows) {
    const GgmlTypeTraits* t = ggml_type_by_name(r.name);
    ASSERT_NE(t, nullptr) << r.name;
    EXPECT_EQ(uint32_t(t->type), r.id) << r.name;
    EXPECT_EQ(t->block_size, r.block) << r.name;
    EXPECT_EQ(t->type_size, r.bytes) << r.name;
    EXPECT_EQ(ggml_type_by_id(r.id), t);
  }
  EXPECT_EQ(ggml_type_by_name("q4_k"), ggml_type_by_name("Q4_K"));
  EXPECT_EQ(ggml_type_by_name("Q8_1"), nullptr);
  EXPECT_EQ(ggml_type_by_id(9), nullptr);
  EXPECT_NEAR(ggml_traits(GgmlType::Q4_K).bits_per_weight(), 4.5, 1e-9);
  EXPECT_NE(test::error_of([] { ggml_row_bytes(GgmlType::Q4_K, 100); }).find("block size 256"), std::string::npos);
}

// RMSE of quantize->dequantize on a fixed synthetic vector (test-quantize-fns style: a cosine
// wave plus noise), relative to the vector's RMS, below a per-type limit. The limits sit a little
// above what a b-bit grid gives on such data (halving per extra bit).
TEST(GgmlTypes, RoundTripErrorBounds) {
  const int n = 4096;
  std::vector<float> x(n);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int i = 0; i < n; ++i) x[i] = 0.1f + 2.0f * std::cos(float(i) * 0.37f) + 0.5f * nd(rng);
  double rms = 0;
  for (float v : x) rms += double(v) * v;
  rms = std::sqrt(rms / n);
  struct Lim { const char* name; double max_rel_rmse; };
  const Lim lims[] = {{"F32", 0.0},    {"F16", 4e-4},  {"BF16", 3e-3}, {"Q8_0", 0.004}, {"Q6_K", 0.0145},
                      {"Q5_1", 0.0305}, {"Q5_0", 0.034}, {"Q5_K", 0.032}, {"Q4_1", 0.063}, {"Q4_0", 0.068},
                      {"Q4_K", 0.064}, {"Q3_K", 0.132},  {"Q2_K", 0.26}};
  std::map<std::string, double> got;
  for (const Lim& l : lims) {
    const GgmlTypeTraits& t = *ggml_type_by_name(l.name);
    std::vector<uint8_t> q(ggml_row_bytes(t.type, n));
    std::vector<float> y(n);
    t.encode(x.data(), nullptr, n, q.data());
    t.decode(q.data(), n, y.data());
    double e = 0;
    for (int i = 0; i < n; ++i) e += double(x[i] - y[i]) * (x[i] - y[i]);
    const double rel = std::sqrt(e / n) / rms;
    got[l.name] = rel;
    std::printf("%-5s rel rmse %.4f (limit %.4f)\n", l.name, rel, l.max_rel_rmse);
    EXPECT_LE(rel, l.max_rel_rmse) << l.name;
  }
  // More bits, less error, within each family.
  EXPECT_LT(got["Q8_0"], got["Q6_K"]);
  EXPECT_LT(got["Q6_K"], got["Q5_K"]);
  EXPECT_LT(got["Q5_K"], got["Q4_K"]);
  EXPECT_LT(got["Q4_K"], got["Q3_K"]);
  EXPECT_LT(got["Q3_K"], got["Q2_K"]);
  EXPECT_LT(got["Q5_0"], got["Q4_0"]);
  EXPECT_LT(got["Q5_1"], got["Q4_1"]);
}

TEST(GgmlTypes, ImportanceWeightsLowerWeightedError) {
  const int n = 1024;
  std::vector<float> x(n), w(n);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int i = 0; i < n; ++i) { x[i] = nd(rng); w[i] = (i % 7 == 0) ? 50.f : 0.1f; }
  for (const char* name : {"Q4_K", "Q3_K", "Q2_K", "Q4_0", "Q5_1"}) {
    const GgmlTypeTraits& t = *ggml_type_by_name(name);
    std::vector<uint8_t> q(ggml_row_bytes(t.type, n));
    std::vector<float> y(n);
    double ew[2];
    for (int k = 0; k < 2; ++k) {
      t.encode(x.data(), k ? w.data() : nullptr, n, q.data());
      t.decode(q.data(), n, y.data());
      ew[k] = 0;
      for (int i = 0; i < n; ++i) ew[k] += w[i] * double(x[i] - y[i]) * (x[i] - y[i]);
    }
    EXPECT_LT(ew[1], ew[0]) << name;
  }
}

// Hand-built blocks decode to the values the layout implies.
namespace {
void h16(uint8_t* p, float f) { const uint16_t h = f32_to_f16(f); std::memcpy(p, &h, 2); }
std::vector<float> dec(const char* name, const std::vector<uint8_t>& b) {
  const GgmlTypeTraits& t = *ggml_type_by_name(name);
  EXPECT_EQ(int(b.size()), t.type_size);
  std::vector<float> y(size_t(t.block_size));
  t.decode(b.data(), t.block_size, y.data());
  return y;
}
}  // namespace

TEST(GgmlTypes, DecodeHandBuiltBlocks) {
  {  // Q8_0
    std::vector<uint8_t> b(34, 0);
    h16(&b[0], 0.5f);
    b[2] = uint8_t(int8_t(-3)); b[33] = 100;
    auto y = dec("Q8_0", b);
    EXPECT_EQ(y[0], -1.5f); EXPECT_EQ(y[31], 50.f); EXPECT_EQ(y[1], 0.f);
  }
  {  // Q4_0: qs[0] = 0x9A: x[0] = (10-8)*d, x[16] = (9-8)*d
    std::vector<uint8_t> b(18, 0x88);
    h16(&b[0], 2.f);
    b[2] = 0x9A; b[17] = 0x0F;
    auto y = dec("Q4_0", b);
    EXPECT_EQ(y[0], 4.f); EXPECT_EQ(y[16], 2.f); EXPECT_EQ(y[15], 14.f); EXPECT_EQ(y[31], -16.f); EXPECT_EQ(y[1], 0.f);
  }
  {  // Q4_1: x = d*q + m
    std::vector<uint8_t> b(20, 0);
    h16(&b[0], 0.25f); h16(&b[2], -1.f);
    b[4] = 0xF1;
    auto y = dec("Q4_1", b);
    EXPECT_EQ(y[0], -0.75f); EXPECT_EQ(y[16], 2.75f); EXPECT_EQ(y[1], -1.f);
  }
  {  // Q5_0: 5th bit of x[i] is bit i of qh
    std::vector<uint8_t> b(22, 0);
    h16(&b[0], 1.f);
    const uint32_t qh = (1u << 0) | (1u << 17);
    std::memcpy(&b[2], &qh, 4);
    b[6] = 0x31;   // x[0] = 1|16 -16 = 1, x[16] = 3 - 16 = -13
    b[7] = 0x02;   // x[1] = 2-16, x[17] = 0|16 - 16 = 0
    auto y = dec("Q5_0", b);
    EXPECT_EQ(y[0], 1.f); EXPECT_EQ(y[16], -13.f); EXPECT_EQ(y[1], -14.f); EXPECT_EQ(y[17], 0.f); EXPECT_EQ(y[2], -16.f);
  }
  {  // Q5_1
    std::vector<uint8_t> b(24, 0);
    h16(&b[0], 1.f); h16(&b[2], 0.5f);
    const uint32_t qh = 1u << 31;
    std::memcpy(&b[4], &qh, 4);
    b[8 + 15] = 0x70;  // x[31] = 7|16 = 23
    auto y = dec("Q5_1", b);
    EXPECT_EQ(y[31], 23.5f); EXPECT_EQ(y[15], 0.5f);
  }
  {  // Q2_K: scales[j] = sc | min<<4; qs 2-bit fields, 4 per byte across 32-value quarters
    std::vector<uint8_t> b(84, 0);
    b[0] = 0x21;   // sub-block 0: scale 1, min 2
    b[5] = 0x03;   // sub-block 5 (values 80..95): scale 3, min 0
    b[16 + 0] = 0x03;            // value 0: q=3
    b[16 + 16 + 4] = 0x02 << 4;  // value 64+16+4 = 84 (quarter 2, l=20): q=2
    h16(&b[80], 0.5f); h16(&b[82], 0.25f);
    auto y = dec("Q2_K", b);
    EXPECT_EQ(y[0], 0.5f * 1 * 3 - 0.25f * 2);
    EXPECT_EQ(y[1], -0.5f);
    EXPECT_EQ(y[84], 0.5f * 3 * 2);
    EXPECT_EQ(y[85], 0.f);
  }
  {  // Q3_K: 6-bit scales (-32), hmask bit set = high bit present (no -4)
    std::vector<uint8_t> b(110, 0);
    uint8_t* sc = &b[96];
    // scale 0 = 33 -> +1: low nibble 1 in sc[0], high bits (2) in sc[8] bits 0-1
    sc[0] = 0x01; sc[8] = 0x02;
    // scale 9 = 30 -> -2: low nibble 14 in sc[1] high nibble, high bits 1 in sc[9] bits 2-3
    sc[1] = 0xE0; sc[9] = 0x01 << 4;  // j=9: bits 2*(9/4) = 4..5
    b[0] = 0x01;      // value 0: hmask bit 0 set
    b[32] = 0x02;     // value 0: low bits 2 -> q = 2
    // value 144 = h1, quarter 0, l=16 -> sub-block 9: qs[32+16], hmask[16] bit 4 clear -> q = low-4
    b[32 + 32 + 16] = 0x01;
    h16(&b[108], 0.5f);
    auto y = dec("Q3_K", b);
    EXPECT_EQ(y[0], 0.5f * 1 * 2);
    EXPECT_EQ(y[1], 0.5f * 1 * -4);
    EXPECT_EQ(y[144], 0.5f * -2 * (1 - 4));
  }
  {  // Q4_K: scales 0..3 direct 6 bits, 4..7 split
    std::vector<uint8_t> b(144, 0);
    h16(&b[0], 1.f); h16(&b[2], 0.5f);
    uint8_t* s = &b[4];
    s[0] = 2; s[4] = 4;                 // sub-block 0: scale 2, min 4
    s[4 + 4 + 1] = 0x3 | (0x1 << 4);    // sub-block 5: scale low 3, min low 1
    s[1] |= 1 << 6;                     // scale 5 high bits: 1 -> 16+3 = 19
    s[5] |= 2 << 6;                     // min 5 high bits: 2 -> 32+1 = 33
    b[16] = 0x57;                       // value 0 q=7, value 32 q=5
    b[16 + 64 + 10] = 0x90;             // chunk 2 (values 128..191): value 128+32+10 = 170 (sub-block 5) q=9
    auto y = dec("Q4_K", b);
    EXPECT_EQ(y[0], 2.f * 7 - 0.5f * 4);
    EXPECT_EQ(y[32], 0.f);
    EXPECT_EQ(y[170], 19.f * 9 - 0.5f * 33);
  }
  {  // Q5_K: 5th bit of sub-block s in bit s of qh[l]
    std::vector<uint8_t> b(176, 0);
    h16(&b[0], 1.f); h16(&b[2], 1.f);
    b[4 + 3] = 1; b[4 + 7] = 0;  // sub-block 3: scale 1, min 0
    b[16 + 5] = 1 << 3;          // qh[5] bit 3: value 96+5 = 101 gets +16
    b[48 + 32 + 5] = 0x20;       // chunk 1, l=5, high nibble: value 64+32+5 = 101, low 2
    auto y = dec("Q5_K", b);
    EXPECT_EQ(y[101], 18.f);
    EXPECT_EQ(y[100], 0.f);
  }
  {  // Q6_K
    std::vector<uint8_t> b(210, 0);
    for (int j = 0; j < 16; ++j) b[192 + j] = uint8_t(int8_t(j == 13 ? -3 : 1));
    h16(&b[208], 0.5f);
    // value 200 = h1, quarter 2 (r=72), l=8: ql[64+8] high nibble, qh[32+8] bits 4-5; scale 12
    // value 216 = h1, quarter 2, l=24: scale 13
    b[64 + 8] = 0x50; b[128 + 32 + 8] = 0x2 << 4;   // q = 5 | 32 = 37 -> 5
    b[64 + 24] = 0x10;                               // q = 1 -> -31
    auto y = dec("Q6_K", b);
    EXPECT_EQ(y[200], 0.5f * 1 * 5);
    EXPECT_EQ(y[216], 0.5f * -3 * -31);
    EXPECT_EQ(y[0], 0.5f * 1 * -32);
  }
}

// encode -> decode -> encode is a fixed point for the exact grid values (decode(encode(y)) == y
// for y = decode(b)); bytes llmc writes decode to what the layout says, checked per type.
TEST(GgmlTypes, EncodeOfDecodedIsStable) {
  const int n = 512;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = std::sin(float(i) * 0.7f) * (1.f + float(i % 13));
  for (int k = 0; k < ggml_type_count(); ++k) {
    const GgmlTypeTraits& t = ggml_type_at(k);
    std::vector<uint8_t> q(ggml_row_bytes(t.type, n)), q2(q.size());
    std::vector<float> y(n), y2(n);
    t.encode(x.data(), nullptr, n, q.data());
    t.decode(q.data(), n, y.data());
    t.encode(y.data(), nullptr, n, q2.data());
    t.decode(q2.data(), n, y2.data());
    double e1 = 0, e2 = 0;
    for (int i = 0; i < n; ++i) { e1 += double(x[i] - y[i]) * (x[i] - y[i]); e2 += double(y[i] - y2[i]) * (y[i] - y2[i]); }
    EXPECT_LE(e2, e1 * 0.5 + 1e-12) << t.name;  // re-encoding grid values loses (much) less
  }
}

// The affine grid of every quantized type: an encoded block's grid(a, b) and set_codes(c) decode to
// a*c + b for any codes in [code_min, code_max] (so GPTQ can round onto the grid of a block), and the
// encoder's own output lies on that grid.
TEST(GgmlTypes, AffineGridAndSetCodesMatchDecode) {
  const int n = 1024;
  std::vector<float> x(n);
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int i = 0; i < n; ++i) x[i] = 0.3f * nd(rng) + (i % 64 == 5 ? 3.f : 0.f) + (i < 512 ? 0.2f : -0.1f);
  int checked = 0;
  for (int k = 0; k < ggml_type_count(); ++k) {
    const GgmlTypeTraits& t = ggml_type_at(k);
    if (t.block_size == 1) {
      EXPECT_EQ(t.grid, nullptr) << t.name;
      continue;
    }
    ASSERT_NE(t.grid, nullptr) << t.name;
    ASSERT_NE(t.set_codes, nullptr) << t.name;
    ASSERT_LT(t.code_min, t.code_max) << t.name;
    std::vector<uint8_t> q(ggml_row_bytes(t.type, n));
    std::vector<float> y(n), a(n), b(n);
    t.encode(x.data(), nullptr, n, q.data());
    t.decode(q.data(), n, y.data());
    const int bs = t.block_size, nb = n / bs;
    std::vector<int> c(static_cast<size_t>(n));
    for (int blk = 0; blk < nb; ++blk) t.grid(q.data() + blk * t.type_size, a.data() + blk * bs, b.data() + blk * bs);
    // The encoder's values are grid points a*c + b with an integer c in range.
    for (int i = 0; i < n; ++i) {
      const float ci = a[i] != 0 ? (y[i] - b[i]) / a[i] : float(t.code_min);
      const float cr = std::nearbyint(ci);
      EXPECT_NEAR(ci, cr, 1e-3) << t.name << " value " << i;
      EXPECT_GE(cr, float(t.code_min)) << t.name;
      EXPECT_LE(cr, float(t.code_max)) << t.name;
    }
    // Any codes: decode(set_codes) == a*c + b; the scales are untouched.
    std::uniform_int_distribution<int> cd(t.code_min, t.code_max);
    for (int& v : c) v = cd(rng);
    c[0] = t.code_min;
    c[1] = t.code_max;
    std::vector<uint8_t> q2 = q;
    for (int blk = 0; blk < nb; ++blk) t.set_codes(q2.data() + blk * t.type_size, c.data() + blk * bs);
    std::vector<float> y2(n), a2(n), b2(n);
    t.decode(q2.data(), n, y2.data());
    for (int blk = 0; blk < nb; ++blk) t.grid(q2.data() + blk * t.type_size, a2.data() + blk * bs, b2.data() + blk * bs);
    EXPECT_EQ(a2, a) << t.name;
    EXPECT_EQ(b2, b) << t.name;
    for (int i = 0; i < n; ++i) {
      const float want = a[i] * float(c[size_t(i)]) + b[i];
      ASSERT_NEAR(y2[i], want, 1e-6f * (std::fabs(want) + std::fabs(a[i]) + std::fabs(b[i]))) << t.name << " " << i;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 10);
}

// ---------------------------------------------------------------- models

namespace {

// HF and GGUF checkpoints of the same model give the same logits, bit for bit.
void expect_same_logits(const Checkpoint& a, const Checkpoint& b, const std::string& what) {
  auto ma = Model::load(a);
  auto mb = Model::load(b);
  std::vector<int32_t> ids;
  for (int i = 0; i < 2 * 24; ++i) ids.push_back(int32_t((i * 7919 + 13) % ma->config().vocab_size));
  const auto la = ma->forward(ids, 2, 24), lb = mb->forward(ids, 2, 24);
  ASSERT_EQ(la.size(), lb.size());
  EXPECT_TRUE(la == lb) << what << ": logits differ";
}

std::string gguf_convert(const std::string& model, const std::string& extra, fs::path* out) {
  *out = test::temp_dir("gguf-conv") / (model + ".gguf");
  std::string log;
  const int rc = test::run_cli("convert --input " + test::model_dir(model).string() + " --output " + out->string() +
                                   " " + extra,
                               &log);
  EXPECT_EQ(rc, 0) << log;
  return log;
}

}  // namespace

TEST(GgufModel, NameTable) {
  EXPECT_EQ(gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.12.self_attn.o_proj.weight"), "blk.12.attn_output.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.self_attn.k_norm.weight"), "blk.0.attn_k_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.mlp.down_proj.weight"), "blk.3.ffn_down.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.post_attention_layernorm.weight"), "blk.3.ffn_norm.weight");
  EXPECT_EQ(gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.x.mlp.down_proj.weight"), "");
  EXPECT_EQ(gguf_tensor_name("model.layers.1.mlp.experts.0.down_proj.weight"), "");
  EXPECT_EQ(hf_tensor_name_from_gguf("blk.7.ffn_gate.weight"), "model.layers.7.mlp.gate_proj.weight");
  EXPECT_EQ(hf_tensor_name_from_gguf("blk.7.attn_q.bias"), "model.layers.7.self_attn.q_proj.bias");
  EXPECT_EQ(hf_tensor_name_from_gguf("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(hf_tensor_name_from_gguf("rope_freqs.weight"), "");
  EXPECT_NE(test::error_of([] { gguf_arch_for_config({{"model_type", "mistral"}}, "c.json"); })
                .find("model_type 'mistral' cannot be written to GGUF (supported: qwen3, qwen2, llama)"),
            std::string::npos);
}

TEST(GgufModel, Qwen3TinyBf16RoundTripIsExact) {
  fs::path out;
  const std::string log = gguf_convert("qwen3-tiny", "", &out);
  EXPECT_NE(log.find("BF16"), std::string::npos) << log;
  const Checkpoint hf = open_checkpoint(test::model_dir("qwen3-tiny"));
  const Checkpoint gg = open_checkpoint(out);
  EXPECT_EQ(gg.format, CheckpointFormat::GGUF);
  // The metadata llama.cpp reads.
  GgufFile f(out);
  EXPECT_EQ(f.get_str("general.architecture"), "qwen3");
  EXPECT_EQ(f.get_int("general.file_type"), 32);
  EXPECT_EQ(f.get_int("qwen3.block_count"), 4);
  EXPECT_EQ(f.get_int("qwen3.attention.head_count_kv"), 2);
  EXPECT_EQ(f.get_int("qwen3.attention.key_length"), 32);
  EXPECT_FLOAT_EQ(float(f.get_float("qwen3.rope.freq_base", 0)), 1e6f);
  EXPECT_EQ(f.get_str("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_str("tokenizer.ggml.pre"), "qwen2");
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 0);
  EXPECT_NE(f.get_str("tokenizer.chat_template").find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(f.tensor("output.weight"), nullptr);  // tied embeddings: no output tensor
  const GgufTensorInfo* q = f.tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->ne, (std::vector<uint64_t>{128, 128}));
  EXPECT_EQ(q->type, uint32_t(GgmlType::BF16));
  EXPECT_EQ(f.tensor("blk.0.attn_norm.weight")->type, uint32_t(GgmlType::F32));
  // Every tensor reads back with its HF name, shape and values.
  for (const TensorInfo& t : gg.tensors->list()) {
    ASSERT_TRUE(hf.tensors->has(t.name)) << t.name;
    const auto a = hf.tensors->get(t.name).to_f32(), b = gg.tensors->get(t.name).to_f32();
    EXPECT_EQ(hf.tensors->get(t.name).info.shape, t.shape) << t.name;
    EXPECT_TRUE(a == b) << t.name;
  }
  EXPECT_EQ(gg.tensors->list().size(), hf.tensors->list().size());
  for (const char* k : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings"})
    EXPECT_EQ(gg.config[k], hf.config[k]) << k;
  expect_same_logits(hf, gg, "qwen3-tiny bf16");
  // The rebuilt tokenizer tokenizes like the original.
  const Tokenizer ta = Tokenizer::from_json_text(hf.aux_files.at("tokenizer.json"), "a");
  const Tokenizer tb = Tokenizer::from_json_text(gg.aux_files.at("tokenizer.json"), "b");
  const std::string text = "Hello, world! <|im_start|>user\n  The 1234 cafés' don't\t\tstop.<|im_end|>";
  EXPECT_EQ(ta.encode(text), tb.encode(text));
  EXPECT_NE(gg.aux_files.at("tokenizer_config.json").find("<|endoftext|>"), std::string::npos);
}

TEST(GgufModel, LlamaQkPermutationRoundTrips) {
  fs::path out;
  gguf_convert("llama-tiny", "--dtype fp32", &out);
  const Checkpoint hf = open_checkpoint(test::model_dir("llama-tiny"));
  GgufFile f(out);
  EXPECT_EQ(f.get_str("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("general.file_type"), 0);
  // GGUF row (h, i, j) holds HF row (h, j, i): head_dim 32, half 16.
  const auto w = hf.tensors->get("model.layers.0.self_attn.q_proj.weight").to_f32();
  const GgufTensorInfo* q = f.tensor("blk.0.attn_q.weight");
  ASSERT_EQ(q->type, uint32_t(GgmlType::F32));
  const float* g = reinterpret_cast<const float*>(f.data(*q));
  const int64_t cols = 128;
  for (int64_t h : {0, 3})
    for (int64_t i : {0, 5, 15})
      for (int64_t j : {0, 1})
        EXPECT_EQ(g[(h * 32 + 2 * i + j) * cols + 7], w[size_t((h * 32 + j * 16 + i) * cols + 7)]);
  const Checkpoint gg = open_checkpoint(out);
  EXPECT_TRUE(gg.tensors->get("model.layers.0.self_attn.k_proj.weight").to_f32() ==
              hf.tensors->get("model.layers.0.self_attn.k_proj.weight").to_f32());
  ASSERT_NE(f.tensor("output.weight"), nullptr);  // untied
  expect_same_logits(hf, gg, "llama-tiny f32");
}

TEST(GgufModel, ConvertFollowsOutputRules) {
  fs::path out;
  gguf_convert("qwen3-tiny", "--dtype fp16", &out);
  EXPECT_EQ(GgufFile(out).tensor("blk.1.ffn_up.weight")->type, uint32_t(GgmlType::F16));
  std::string log;
  const std::string in = " --input " + test::model_dir("qwen3-tiny").string();
  EXPECT_NE(test::run_cli("convert" + in + " --output " + out.string(), &log), 0);
  EXPECT_NE(log.find("--overwrite"), std::string::npos) << log;
  EXPECT_EQ(test::run_cli("convert" + in + " --output " + out.string() + " --overwrite", &log), 0) << log;
  EXPECT_EQ(GgufFile(out).tensor("blk.1.ffn_up.weight")->type, uint32_t(GgmlType::BF16));
  EXPECT_NE(test::run_cli("convert" + in + " --format gguf --output " + out.string() + ".bin", &log), 0);
  EXPECT_NE(log.find("must be named *.gguf"), std::string::npos) << log;
  // GGUF -> HF directory (dequantized / as stored) works through the same convert.
  const fs::path back = out.parent_path() / "back";
  EXPECT_EQ(test::run_cli("convert --input " + out.string() + " --output " + back.string(), &log), 0) << log;
  expect_same_logits(open_checkpoint(test::model_dir("qwen3-tiny")), open_checkpoint(back), "gguf -> hf");
}

TEST(GgufModel, ReaderRefusesWhatItCannotRun) {
  const fs::path d = test::temp_dir("gguf-bad");
  {
    GgufWriter w(d / "a.gguf", {{"general.architecture", GgufValue::str("mamba")}}, {});
    w.finish();
  }
  EXPECT_NE(test::error_of([&] { open_checkpoint(d / "a.gguf"); }).find("general.architecture 'mamba' is not supported"),
            std::string::npos);
  {
    GgufWriter w(d / "b.gguf",
                 {{"general.architecture", GgufValue::str("qwen3")}, {"qwen3.embedding_length", GgufValue::u32(64)},
                  {"qwen3.attention.head_count", GgufValue::u32(2)}, {"qwen3.block_count", GgufValue::u32(0)},
                  {"qwen3.feed_forward_length", GgufValue::u32(128)}},
                 {{"token_embd.weight", 0, {64, 10}}, {"rope_freqs.weight", 0, {16}}});
    std::vector<float> z(640);
    w.data("token_embd.weight", z.data(), 2560);
    w.data("rope_freqs.weight", z.data(), 64);
    w.finish();
  }
  EXPECT_NE(test::error_of([&] { open_checkpoint(d / "b.gguf"); }).find("tokenizer.ggml.model"), std::string::npos);
}

namespace {
nlohmann::json quantize_json(const std::string& args) {
  std::string log;
  const fs::path d = test::temp_dir("gguf-q");
  const int rc = test::run_cli("quantize --input " + test::model_dir("qwen3-tiny").string() + " --output " +
                                   (d / "m.gguf").string() + " --eval-data " +
                                   test::data_path("eval/heldout.txt").string() + " --json " + args,
                               &log);
  EXPECT_EQ(rc, 0) << log;
  const size_t brace = log.find("\n{");  // the JSON summary follows the progress lines
  return rc == 0 && brace != std::string::npos ? nlohmann::json::parse(log.substr(brace + 1)) : nlohmann::json::object();
}
}  // namespace

// The default GPTQ rounding on the ggml grids beats the Hessian-diagonal weighted scale search
// (rounding=hdiag, llama.cpp's imatrix statistic), which beats plain rounding: measured on
// qwen3-tiny, 16384 held-out tokens: ppl ratio 1.00150 / 1.00608 / 1.01245, KL 0.00670 / 0.00812 /
// 0.00848.
TEST(GgufQuantize, GptqBeatsImatrixBeatsPlainRoundingAndFileEvaluates) {
  const nlohmann::json gq = quantize_json("--method q4_k_m");
  const nlohmann::json im = quantize_json("--method q4_k_m --method-opt rounding=hdiag");
  const nlohmann::json rtn = quantize_json("--method q4_k_m --method-opt rounding=rtn");
  ASSERT_TRUE(gq.contains("quality") && im.contains("quality") && rtn.contains("quality"));
  EXPECT_EQ(gq["gguf"]["rounding"], "gptq");
  EXPECT_GT(im["num_samples"].get<int>(), 0);
  EXPECT_EQ(rtn["num_samples"].get<int>(), 0);
  EXPECT_LT(gq["quality"]["ppl_ratio"].get<double>(), im["quality"]["ppl_ratio"].get<double>());
  EXPECT_LT(gq["quality"]["kl"].get<double>(), im["quality"]["kl"].get<double>());
  EXPECT_LT(im["quality"]["ppl_ratio"].get<double>(), rtn["quality"]["ppl_ratio"].get<double>());
  EXPECT_LT(im["quality"]["kl"].get<double>(), rtn["quality"]["kl"].get<double>());
  EXPECT_LT(gq["quality"]["ppl_ratio"].get<double>(), 1.005);
  // Every quantized tensor's GPTQ error is reported, below its encoder's alone.
  const nlohmann::json& errs = gq["gguf"]["gptq_errors"];
  ASSERT_GT(errs.size(), 10u);
  for (const auto& [name, e] : errs.items()) {
    EXPECT_FALSE(e["fallback"].get<bool>()) << name;
    EXPECT_LT(e["rel_error"].get<double>(), e["rel_error_encoder"].get<double>()) << name;
  }
  // The file is smaller than the bf16 model and reads back through eval/inspect.
  EXPECT_LT(im["output_bytes"].get<double>(), 0.6 * im["bf16_bytes"].get<double>());
  std::string log;
  const std::string f = im["output"].get<std::string>();
  EXPECT_EQ(test::run_cli("inspect " + f, &log), 0) << log;
  EXPECT_NE(log.find("(gguf)"), std::string::npos) << log;
  EXPECT_NE(log.find("Q8_0"), std::string::npos) << log;  // the tied embeddings' Q6_K falls back (rows of 128)
  EXPECT_EQ(test::run_cli("generate --model " + f + " --prompt Hello --max-tokens 4", &log), 0) << log;
}

TEST(GgufQuantize, OptionsAndOutputsAreChecked) {
  const fs::path d = test::temp_dir("gguf-qbad");
  const std::string in = "quantize --input " + test::model_dir("qwen3-tiny").string();
  std::string log;
  EXPECT_NE(test::run_cli(in + " --method q4_k_m --output " + (d / "dir").string(), &log), 0);
  EXPECT_NE(log.find("writes a GGUF file (name it *.gguf)"), std::string::npos) << log;
  EXPECT_NE(test::run_cli(in + " --method int8 --output " + (d / "x.gguf").string(), &log), 0);
  EXPECT_NE(log.find("cannot write GGUF"), std::string::npos) << log;
  EXPECT_NE(test::run_cli(in + " --method q8_0 --method-opt rounding=awq --output " + (d / "x.gguf").string(), &log), 0);
  EXPECT_NE(log.find("rounding"), std::string::npos) << log;
  EXPECT_NE(test::run_cli(in + " --method q8_0 --ignore attn --output " + (d / "x.gguf").string(), &log), 0);
  EXPECT_NE(log.find("--ignore is not accepted"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(d / "x.gguf"));
}

// Size budgets: the file meets --target-size / --bpw, the mix spends more bits than the smallest
// types, the report lists it, and budgets below the smallest mix fail before calibration.
TEST(GgufQuantize, SizeBudgetsAreMetAndCheckedFirst) {
  const nlohmann::json small = quantize_json("--method q4_k_m --method-opt rounding=rtn --bpw 4.5 --no-eval");
  ASSERT_TRUE(small.contains("gguf"));
  const double bf16 = small["bf16_bytes"].get<double>();
  const nlohmann::json mix = quantize_json("--method q4_k_m --target-size 42% --no-eval");
  ASSERT_TRUE(mix.contains("gguf") && mix["gguf"].contains("mix"));
  EXPECT_LE(mix["output_bytes"].get<double>(), 0.42 * bf16);
  EXPECT_GT(mix["output_bytes"].get<double>(), 0.40 * bf16);  // the budget is used
  EXPECT_GT(mix["output_bytes"].get<double>(), small["output_bytes"].get<double>());
  EXPECT_GT(mix["gguf"]["type_counts"].size(), 1u);
  EXPECT_EQ(mix["gguf"]["mix"]["tensors"].size(), mix["gguf"]["gptq_errors"].size() +
                                                    mix["gguf"]["type_counts"].value("BF16", 0));
  const nlohmann::json bpw = quantize_json("--method q4_k_m --bpw 5.5 --no-eval");
  ASSERT_TRUE(bpw.contains("gguf"));
  EXPECT_LE(bpw["gguf"]["mix"]["bpw"].get<double>(), 5.5);
  EXPECT_GT(bpw["gguf"]["mix"]["bpw"].get<double>(), 5.0);
  const fs::path d = test::temp_dir("gguf-budget");
  const std::string in = "quantize --input " + test::model_dir("qwen3-tiny").string() + " --output " +
                         (d / "x.gguf").string();
  std::string log;
  EXPECT_NE(test::run_cli(in + " --method q4_k_m --target-size 10%", &log), 0);
  EXPECT_NE(log.find("--target-size 10% cannot be met: the smallest file"), std::string::npos) << log;
  EXPECT_EQ(log.find("calibration:"), std::string::npos) << log;  // refused before the calibration pass
  EXPECT_NE(test::run_cli(in + " --method q4_k_m --target-size 1.5", &log), 0);
  EXPECT_NE(log.find("must be in (0, 100%]"), std::string::npos) << log;
  EXPECT_NE(test::run_cli(in + " --method q4_k_m --target-size big", &log), 0);
  EXPECT_NE(log.find("--target-size 'big' is not a share"), std::string::npos) << log;
  EXPECT_NE(test::run_cli(in + " --method q4_k_m --target-size 30% --bpw 4", &log), 0);
  EXPECT_NE(log.find("alternatives"), std::string::npos) << log;
  EXPECT_NE(test::run_cli(in + " --method q4_k_m --bpw 20", &log), 0);
  EXPECT_NE(log.find("--bpw 20 must be in (0, 16]"), std::string::npos) << log;
  EXPECT_NE(test::run_cli("quantize --input " + test::model_dir("qwen3-tiny").string() + " --output " +
                              (d / "hf").string() + " --method int4_gptq --bpw 4",
                          &log),
            0);
  EXPECT_NE(log.find("is not a GGUF method"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(d / "x.gguf"));
}

// The mix chooser: budget respected, more budget never more error, the extremes.
TEST(GgufQuantize, MixChooserRespectsTheCapAndSpendsItWell) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0.5, 2.0);
  std::vector<MixTensor> ts;
  for (int t = 0; t < 12; ++t) {
    MixTensor m;
    m.name = "t" + std::to_string(t);
    const double scale = u(rng) * (t % 3 == 0 ? 10 : 1);
    const uint64_t n = 1000 * uint64_t(1 + t % 4);
    for (int k = 0; k < 6; ++k) {  // bytes grow, error halves per step (plus noise)
      m.types.push_back(GgmlType::Q4_0);
      m.bytes.push_back(n * uint64_t(2 + k));
      m.err.push_back(scale * std::pow(0.5, k) * u(rng));
    }
    ts.push_back(m);
  }
  uint64_t least = 0, most = 0;
  double err_least = 0, err_best = 0;
  for (const MixTensor& m : ts) {
    const auto lo = std::min_element(m.bytes.begin(), m.bytes.end()) - m.bytes.begin();
    least += m.bytes[size_t(lo)];
    err_least += m.err[size_t(lo)];
    most += *std::max_element(m.bytes.begin(), m.bytes.end());
    err_best += *std::min_element(m.err.begin(), m.err.end());
  }
  EXPECT_THROW(choose_gguf_mix(ts, least - 1), Error);
  auto total = [&](const std::vector<int>& p, double* err) {
    uint64_t b = 0;
    *err = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      b += ts[i].bytes[size_t(p[i])];
      *err += ts[i].err[size_t(p[i])];
    }
    return b;
  };
  double e = 0, prev = INFINITY;
  EXPECT_EQ(total(choose_gguf_mix(ts, least), &e), least);
  EXPECT_LE(e, err_least);
  for (uint64_t cap = least; cap <= most + 1000; cap += (most - least) / 20) {
    const uint64_t b = total(choose_gguf_mix(ts, cap), &e);
    EXPECT_LE(b, cap);
    EXPECT_LE(e, prev + 1e-12) << cap;
    prev = e;
  }
  total(choose_gguf_mix(ts, most), &e);
  EXPECT_NEAR(e, err_best, 1e-12);
  // Candidates by row length: K-quants only on whole super-blocks.
  EXPECT_EQ(gguf_budget_candidates(512).front(), GgmlType::Q2_K);
  EXPECT_EQ(gguf_budget_candidates(384).front(), GgmlType::Q4_0);
  EXPECT_EQ(gguf_budget_candidates(100), std::vector<GgmlType>{GgmlType::BF16});
}

TEST(GgufModel, WriterRefusesWhatLlamaCppWouldMisread) {
  const fs::path d = test::temp_dir("gguf-wbad");
  GgufWriteOptions o;
  o.choose = [](const GgufTensorSite&) { return GgmlType::BF16; };
  o.progress = false;
  auto err = [&](const Checkpoint& c) { return test::error_of([&] { write_gguf_model(c, d / "x.gguf", o); }); };
  {
    Checkpoint c = open_checkpoint(test::model_dir("qwen3-tiny"));
    c.config["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}};
    EXPECT_NE(err(c).find("rope_type 'yarn' cannot be written to GGUF"), std::string::npos);
  }
  {
    Checkpoint c = open_checkpoint(test::model_dir("qwen3-tiny"));
    c.aux_files.erase("tokenizer.json");
    EXPECT_NE(err(c).find("no tokenizer.json"), std::string::npos);
  }
  {
    Checkpoint c = open_checkpoint(test::model_dir("qwen3-tiny"));
    nlohmann::json t = nlohmann::json::parse(c.aux_files["tokenizer.json"]);
    t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+";
    c.aux_files["tokenizer.json"] = t.dump();
    EXPECT_NE(err(c).find("not one llama.cpp knows by name"), std::string::npos);
    t["model"]["type"] = "WordPiece";
    c.aux_files["tokenizer.json"] = t.dump();
    EXPECT_NE(err(c).find("only byte-level BPE"), std::string::npos);
  }
  {
    Checkpoint c = open_checkpoint(test::model_dir("qwen3-tiny"));
    o.choose = [](const GgufTensorSite&) { return GgmlType::Q4_K; };  // rows of 128 < 256
    EXPECT_NE(err(c).find("not a multiple of the Q4_K block size 256"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(d / "x.gguf"));
}

// ---------------------------------------------------------------- llama.cpp interop

namespace {

fs::path gguf_interop_dir() { return test::repo_root() / "tests" / "interop-gguf"; }

std::string gguf_interop_missing() {
  if (std::system("command -v node >/dev/null 2>&1") != 0) return "node not found";
  for (const char* m : {"node-llama-cpp", "@node-llama-cpp/linux-x64"})
    if (!fs::exists(gguf_interop_dir() / "node_modules" / m))
      return std::string("tests/interop-gguf/node_modules/") + m + " missing (run bash scripts/interop-gguf-deps.sh)";
  return "";
}

struct Agreement {
  double max_abs = 0, rel_l2 = 0, nll_llmc = 0, nll_llama = 0;
  int argmax_agree = 0, positions = 0;
};

// llama.cpp's logits for the ids llmc's tokenizer gives `text`, vs llmc's own forward of the same file.
Agreement compare_with_llama_cpp(const fs::path& gguf, const std::string& text, bool* tokens_equal) {
  const Checkpoint ck = open_checkpoint(gguf);
  const Tokenizer tok = Tokenizer::from_json_text(ck.aux_files.at("tokenizer.json"), gguf.string());
  std::vector<int32_t> ids = tok.encode(text);
  if (ids.size() > 48) ids.resize(48);
  const fs::path d = gguf.parent_path();
  {
    std::ofstream(d / "ids.json") << nlohmann::json(ids).dump();
    std::ofstream(d / "text.txt") << text;
  }
  const std::string cmd = "cd " + gguf_interop_dir().string() + " && node logits.mjs " + gguf.string() + " " +
                          (d / "ids.json").string() + " " + (d / "text.txt").string() + " > " +
                          (d / "llama.json").string();
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json r = nlohmann::json::parse(std::ifstream(d / "llama.json"));
  *tokens_equal = r["tokens"].get<std::vector<int32_t>>() == tok.encode(text);
  auto model = Model::load(ck);
  const int64_t V = model->config().vocab_size, n = int64_t(ids.size());
  const std::vector<float> mine = model->forward(ids, 1, int(n));
  Agreement a;
  a.positions = int(n);
  double num = 0, den = 0;
  for (int64_t p = 0; p < n; ++p) {
    const auto& row = r["logits"][size_t(p)];
    EXPECT_EQ(int64_t(row.size()), V);
    int64_t am = 0, bm = 0;
    double za = 0, zb = 0, ma = -1e30, mb = -1e30;
    for (int64_t v = 0; v < V; ++v) {
      const double x = mine[size_t(p * V + v)], y = row[size_t(v)].get<double>();
      a.max_abs = std::max(a.max_abs, std::fabs(x - y));
      num += (x - y) * (x - y);
      den += x * x;
      if (x > ma) { ma = x; am = v; }
      if (y > mb) { mb = y; bm = v; }
    }
    for (int64_t v = 0; v < V; ++v) {
      za += std::exp(double(mine[size_t(p * V + v)]) - ma);
      zb += std::exp(row[size_t(v)].get<double>() - mb);
    }
    a.argmax_agree += am == bm;
    if (p + 1 < n) {
      const int64_t t = ids[size_t(p + 1)];
      a.nll_llmc += -(double(mine[size_t(p * V + t)]) - ma - std::log(za)) / double(n - 1);
      a.nll_llama += -(row[size_t(t)].get<double>() - mb - std::log(zb)) / double(n - 1);
    }
  }
  a.rel_l2 = std::sqrt(num / std::max(den, 1e-30));
  return a;
}

}  // namespace

// llama.cpp (node-llama-cpp 3.22.1, prebuilt CPU) loads llmc's GGUF files, tokenizes like llmc
// and computes the logits llmc computes from the same file. Tolerances: llama.cpp's CPU matmuls
// round the activations (to bf16 for BF16 weights, to Q8_0/Q8_K blocks for quantized weights) and
// use its own summation orders, so the agreement is that of those roundings, not bit-exactness:
// measured rel L2 / mean-NLL gap are printed; limits are a few times above them.
TEST(GgufInterop, LlamaCppAgreesWithLlmc) {
  const std::string why = gguf_interop_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  std::ifstream in(test::data_path("eval/heldout.txt"));
  std::string text(2000, '\0');
  in.read(text.data(), 2000);
  text.resize(size_t(in.gcount()));
  text = text.substr(0, text.rfind(' '));
  struct Case {
    const char* model;
    const char* cli;
    double max_rel_l2, max_nll_gap;
  };
  const Case cases[] = {
      {"qwen3-tiny", "convert", 0.02, 0.01},
      {"llama-tiny", "convert", 0.02, 0.01},
      {"qwen3-tiny", "quantize --method q8_0 --method-opt rounding=rtn --no-eval", 0.03, 0.02},
      {"qwen3-tiny", "quantize --method q4_k_m --no-eval", 0.03, 0.02},
      {"llama-tiny", "quantize --method q2_k --method-opt rounding=rtn --no-eval", 0.05, 0.03},
      {"llama-tiny", "quantize --method q4_k_m --no-eval", 0.03, 0.02},  // GPTQ bytes, Q/K rows permuted
      {"qwen3-tiny", "quantize --method q3_k --bpw 5 --no-eval", 0.05, 0.03},  // a size-budget mix
  };
  for (const Case& c : cases) {
    const fs::path d = test::temp_dir("gguf-llama");
    std::string log;
    ASSERT_EQ(test::run_cli(std::string(c.cli) + " --input " + test::model_dir(c.model).string() + " --output " +
                                (d / "m.gguf").string(),
                            &log),
              0)
        << log;
    bool tokens_equal = false;
    const Agreement a = compare_with_llama_cpp(d / "m.gguf", text, &tokens_equal);
    std::printf("  %-10s %-60s rel L2 %.2e  max|diff| %.3f  NLL llmc %.4f llama.cpp %.4f  argmax %d/%d\n", c.model,
                c.cli, a.rel_l2, a.max_abs, a.nll_llmc, a.nll_llama, a.argmax_agree, a.positions);
    EXPECT_TRUE(tokens_equal) << c.model << " " << c.cli;
    EXPECT_LT(a.rel_l2, c.max_rel_l2) << c.model << " " << c.cli;
    EXPECT_LT(std::fabs(a.nll_llmc - a.nll_llama), c.max_nll_gap) << c.model << " " << c.cli;
    EXPECT_GE(a.argmax_agree, a.positions * 9 / 10) << c.model << " " << c.cli;
  }
}

// Every K-quant layout on llama.cpp: random-weight models with rows of 256 / 512 values (so no
// preset falls back), each arch of the table, written with each preset's mix.
TEST(GgufInterop, KQuantLayoutsAgreeWithLlamaCpp) {
  const std::string why = gguf_interop_missing();
  if (!why.empty()) GTEST_SKIP() << why;
  const Checkpoint tiny = open_checkpoint(test::model_dir("qwen3-tiny"));
  const std::string text = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, "
                           "and the clocks were striking thirteen; the 42 birds sang.";
  struct Case {
    const char* arch;
    const char* preset;
  };
  const Case cases[] = {{"qwen3", "Q2_K"},   {"qwen3", "Q3_K_M"}, {"qwen3", "Q4_K_M"}, {"qwen3", "Q5_K_M"},
                        {"qwen3", "Q6_K"},   {"qwen2", "Q4_K_M"}, {"llama", "Q4_K_M"}};
  for (const Case& c : cases) {
    nlohmann::json cfg = tiny.config;
    cfg["hidden_size"] = 256;
    cfg["intermediate_size"] = 512;
    cfg["head_dim"] = 64;
    cfg["num_hidden_layers"] = 2;
    cfg["model_type"] = c.arch;
    cfg["architectures"] = {std::string(c.arch) == "qwen3"   ? "Qwen3ForCausalLM"
                            : std::string(c.arch) == "qwen2" ? "Qwen2ForCausalLM"
                                                             : "LlamaForCausalLM"};
    Checkpoint ck = test::synthetic_checkpoint(cfg, 7);
    ck.aux_files = tiny.aux_files;
    const fs::path d = test::temp_dir("gguf-kq");
    ck.path = d / "synthetic";
    const GgufPreset* p = find_gguf_preset(c.preset);
    ASSERT_NE(p, nullptr);
    GgufWriteOptions o;
    o.choose = [p](const GgufTensorSite& s) { return gguf_row_fallback(p->choose(s), s.shape.back()); };
    o.file_type = p->file_type;
    o.progress = false;
    const GgufWriteStats st = write_gguf_model(ck, d / "m.gguf", o);
    std::string types;
    for (const auto& [t, n] : st.type_counts) types += cat(t, "x", n, " ");
    bool tokens_equal = false;
    const Agreement a = compare_with_llama_cpp(d / "m.gguf", text, &tokens_equal);
    std::printf("  %-6s %-7s %-40s rel L2 %.2e  NLL llmc %.4f llama.cpp %.4f  argmax %d/%d\n", c.arch, c.preset,
                types.c_str(), a.rel_l2, a.nll_llmc, a.nll_llama, a.argmax_agree, a.positions);
    EXPECT_TRUE(tokens_equal);
    EXPECT_LT(a.rel_l2, 0.03) << c.arch << " " << c.preset;
    // Random weights give very peaked logits (NLL ~190): the gap is compared relatively. Measured:
    // rel L2 1.4e-2..1.7e-2 for every type alike (llama.cpp's Q8_K activation rounding; a layout
    // error would be of order 1 and grow with fewer bits), NLL gap < 5e-4 relative, argmax 43/43.
    EXPECT_LT(std::fabs(a.nll_llmc - a.nll_llama), 2e-3 * a.nll_llmc) << c.arch << " " << c.preset;
    EXPECT_GE(a.argmax_agree, a.positions * 9 / 10) << c.arch << " " << c.preset;
  }
}

// Importance weights reach the encoders (alone or times the weights' magnitude) and the result
// still decodes to the model's values within the type's error.
TEST(GgufModel, ImportanceWeightedWriteReadsBack) {
  const Checkpoint hf = open_checkpoint(test::model_dir("qwen3-tiny"));
  for (bool times_magnitude : {false, true}) {
    const fs::path d = test::temp_dir("gguf-imp");
    std::vector<float> imp(384);
    for (size_t j = 0; j < imp.size(); ++j) imp[j] = 0.5f + float(j % 5);
    int calls = 0;
    GgufWriteOptions o;
    o.choose = [](const GgufTensorSite&) { return GgmlType::Q8_0; };
    o.importance = [&](const GgufTensorSite& s) -> const float* {
      ++calls;
      return s.shape.size() == 2 ? imp.data() : nullptr;
    };
    o.importance_times_magnitude = times_magnitude;
    o.progress = false;
    write_gguf_model(hf, d / "m.gguf", o);
    EXPECT_GT(calls, 20);
    const Checkpoint gg = open_checkpoint(d / "m.gguf");
    const auto a = hf.tensors->get("model.layers.2.mlp.up_proj.weight").to_f32();
    const auto b = gg.tensors->get("model.layers.2.mlp.up_proj.weight").to_f32();
    ASSERT_EQ(a.size(), b.size());
    double e = 0, n = 0;
    for (size_t i = 0; i < a.size(); ++i) { e += double(a[i] - b[i]) * (a[i] - b[i]); n += double(a[i]) * a[i]; }
    EXPECT_LT(std::sqrt(e / n), 0.01) << times_magnitude;
  }
}
