// safetensors: strict header validation (one crafted file per rule), fuzz-ish robustness
// (truncations, random byte flips over the fixture header), streaming writer round trips.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "core/fs.h"
#include "formats/safetensors.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

std::vector<uint8_t> make_file(const std::string& header, size_t data_bytes, uint64_t len_override = ~0ull) {
  const uint64_t n = len_override != ~0ull ? len_override : header.size();
  std::vector<uint8_t> f(8);
  for (int i = 0; i < 8; ++i) f[i] = uint8_t(n >> (8 * i));
  f.insert(f.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) f.push_back(uint8_t(i * 7 + 1));
  return f;
}

// Expects parse to throw llmc::Error whose message contains every needle.
void expect_reject(const std::vector<uint8_t>& f, std::initializer_list<std::string> needles) {
  try {
    parse_safetensors_header(f.data(), f.size(), "crafted.safetensors");
    ADD_FAILURE() << "accepted a bad file; expected: " << *needles.begin();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("crafted.safetensors"), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
  }
}

void expect_reject(const std::string& header, size_t data, std::initializer_list<std::string> needles) {
  expect_reject(make_file(header, data), needles);
}

const char* kGood = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}})";

}  // namespace

TEST(SafetensorsHeader, AcceptsWellFormed) {
  auto f = make_file(kGood, 16);
  SafetensorsHeader h = parse_safetensors_header(f.data(), f.size(), "ok");
  ASSERT_EQ(h.entries.size(), 2u);
  EXPECT_EQ(h.entries[0].info.name, "a");
  EXPECT_EQ(h.entries[1].info.dtype, DType::BF16);
  EXPECT_EQ(h.entries[1].info.shape, (Shape{2, 2}));
  EXPECT_EQ(h.data_start, 8 + std::strlen(kGood));
  // Padding with spaces, metadata, scalar and zero-size tensors, out-of-order keys.
  auto g = make_file(R"({"z":{"dtype":"I8","shape":[],"data_offsets":[0,1]},"__metadata__":{"format":"pt"},)"
                     R"("e":{"dtype":"F16","shape":[0,4],"data_offsets":[1,1]},"y":{"dtype":"U8","shape":[3],"data_offsets":[1,4]}}   )",
                     4);
  h = parse_safetensors_header(g.data(), g.size(), "ok");
  ASSERT_EQ(h.entries.size(), 3u);
  EXPECT_EQ(h.entries[0].info.name, "z");  // offset order
  EXPECT_EQ(h.metadata.at("format"), "pt");
  // Every dtype's safetensors spelling is known.
  for (int i = 0; i < kNumDTypes; ++i) {
    const auto& tr = dtype_traits(DType(i));
    auto x = make_file(cat(R"({"t":{"dtype":")", tr.safetensors, R"(","shape":[3],"data_offsets":[0,)", 3 * tr.size, "]}}"),
                       3 * tr.size);
    EXPECT_EQ(parse_safetensors_header(x.data(), x.size(), "ok").entries[0].info.dtype, DType(i));
  }
  // No tensors at all.
  auto e = make_file("{}", 0);
  EXPECT_TRUE(parse_safetensors_header(e.data(), e.size(), "ok").entries.empty());
}

TEST(SafetensorsHeader, RejectsBadLengthField) {
  std::vector<uint8_t> tiny = {1, 0, 0};
  expect_reject(tiny, {"shorter than the 8-byte"});
  expect_reject(make_file(kGood, 16, (100ull << 20) + 1), {"exceeds the limit"});
  expect_reject(make_file(kGood, 16, ~0ull - 1), {"exceeds the limit"});
  expect_reject(make_file(kGood, 0, std::strlen(kGood) + 1), {"truncated"});
  expect_reject(make_file("{", 0), {"too short"});
}

TEST(SafetensorsHeader, RejectsMalformedJson) {
  expect_reject(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8, {"not valid JSON"});
  expect_reject(R"([1,2,3])", 0, {"not a JSON object"});
  expect_reject(R"("str")", 0, {"not a JSON object"});
  expect_reject(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                8, {"duplicate key 'a'"});
  expect_reject(std::string(5000, '[') + std::string(5000, ']'), 0, {"nested too deeply"});
  expect_reject(R"({"a":{"dtype":"F32","shape":[[[1]]],"data_offsets":[0,4]}})", 4, {"nested too deeply"});
  expect_reject(std::string("{\"a\":1}\0\0", 9), 0, {"not valid JSON"});
  expect_reject(R"({/*c*/"a":1})", 0, {"not valid JSON"});
}

TEST(SafetensorsHeader, RejectsBadEntries) {
  expect_reject(R"({"a":[1]})", 0, {"'a'", "not an object"});
  expect_reject(R"({"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, {"empty name"});
  expect_reject(R"({"a":{"dtype":"F32","shape":[1]}})", 4, {"'a'", "exactly dtype, shape and data_offsets"});
  expect_reject(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4, {"exactly"});
  expect_reject(R"({"a":{"dtype":"F32","shape":[1],"offsets":[0,4]}})", 4, {"exactly"});
}

TEST(SafetensorsHeader, RejectsUnknownDtype) {
  expect_reject(R"({"w":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}})", 1, {"'w'", "unknown dtype 'F4'"});
  expect_reject(R"({"w":{"dtype":"U16","shape":[1],"data_offsets":[0,2]}})", 2, {"unknown dtype 'U16'"});
  expect_reject(R"({"w":{"dtype":"bf16","shape":[1],"data_offsets":[0,2]}})", 2, {"unknown dtype"});
  expect_reject(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,2]}})", 2, {"dtype must be a string"});
}

TEST(SafetensorsHeader, RejectsBadShape) {
  expect_reject(R"({"w":{"dtype":"U8","shape":3,"data_offsets":[0,3]}})", 3, {"'w'", "shape must be a list"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[-3],"data_offsets":[0,3]}})", 3, {"negative"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,3]}})", 3, {"integers"});
  expect_reject(R"({"w":{"dtype":"U8","shape":["3"],"data_offsets":[0,3]}})", 3, {"integers"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,3]}})", 3, {"too large"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[99999999999999999999999],"data_offsets":[0,3]}})", 3, {"integers"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,4],"data_offsets":[0,3]}})", 3, {"too many elements"});
}

TEST(SafetensorsHeader, RejectsBadOffsets) {
  expect_reject(R"({"w":{"dtype":"U8","shape":[3],"data_offsets":[0]}})", 3, {"'w'", "two integers"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[3],"data_offsets":[0,3,3]}})", 3, {"two integers"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[3],"data_offsets":{"a":0}}})", 3, {"two integers"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[3],"data_offsets":[3,0]}})", 3, {"reversed"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[3],"data_offsets":[-1,2]}})", 3, {"negative"});
  // shape x dtype size == span
  expect_reject(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,3]}})", 3, {"'w'", "needs 12 bytes", "span 3"});
  // inside the file
  expect_reject(R"({"w":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", 2, {"'w'", "past the end"});
  expect_reject(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[9007199254740000,9007199254740001]}})", 2,
                {"past the end"});
  // sorted, non-overlapping, covering
  expect_reject(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                6, {"'b'", "overlap"});
  expect_reject(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                4, {"overlap"});
  expect_reject(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                5, {"'b'", "gap"});
  expect_reject(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", 3, {"'a'", "gap"});
  expect_reject(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 5, {"trailing bytes"});
}

TEST(SafetensorsHeader, RejectsBadMetadata) {
  expect_reject(R"({"__metadata__":[1]})", 0, {"__metadata__ must be an object"});
  expect_reject(R"({"__metadata__":{"format":1}})", 0, {"'format'", "not a string"});
  expect_reject(R"({"__metadata__":{"x":{"y":"z"}}})", 0, {"not a string"});
}

TEST(SafetensorsFuzz, EveryTruncationOfTheFixtureHeaderThrows) {
  MappedFile m(test::model_dir("qwen3-tiny") / "model.safetensors");
  const SafetensorsHeader h = parse_safetensors_header(m.data(), m.size(), "fixture");
  const size_t limit = size_t(h.data_start) + 64;
  std::vector<uint8_t> buf(m.data(), m.data() + limit);
  for (size_t len = 0; len < limit; ++len) {
    // A fresh exact-size allocation per length so that an over-read would touch memory past it.
    std::vector<uint8_t> t(buf.begin(), buf.begin() + long(len));
    EXPECT_THROW(parse_safetensors_header(t.data(), t.size(), "truncated"), Error) << "length " << len;
  }
  // Truncations in the data region, through the file reader.
  const fs::path d = test::temp_dir("st-trunc");
  for (size_t cut : {size_t(h.data_start), m.size() / 2, m.size() - 1}) {
    write_text_file(d / "t.safetensors", std::string(reinterpret_cast<const char*>(m.data()), cut));
    EXPECT_THROW(SafetensorsFile(d / "t.safetensors"), Error) << cut;
  }
}

TEST(SafetensorsFuzz, RandomByteFlipsNeverCrash) {
  for (const char* model : {"qwen3-tiny", "llama-tiny"}) {
    MappedFile m(test::model_dir(model) / "model.safetensors");
    const SafetensorsHeader h = parse_safetensors_header(m.data(), m.size(), "fixture");
    std::vector<uint8_t> buf(m.data(), m.data() + m.size());
    std::mt19937_64 rng(12345);
    int accepted = 0, rejected = 0;
    for (int it = 0; it < 2000; ++it) {
      const int flips = 1 + int(rng() % 3);
      std::vector<std::pair<size_t, uint8_t>> saved;
      for (int k = 0; k < flips; ++k) {
        const size_t pos = size_t(rng() % h.data_start);
        saved.emplace_back(pos, buf[pos]);
        buf[pos] = (rng() % 2) ? uint8_t(rng()) : uint8_t(buf[pos] ^ (1u << (rng() % 8)));
      }
      try {
        SafetensorsHeader g = parse_safetensors_header(buf.data(), buf.size(), "flipped");
        ++accepted;
        for (const auto& e : g.entries) {
          ASSERT_LE(g.data_start + e.end, buf.size());
          ASSERT_EQ(e.end - e.begin, uint64_t(e.info.numel()) * dtype_size(e.info.dtype));
        }
      } catch (const Error&) {
        ++rejected;
      }
      for (auto it2 = saved.rbegin(); it2 != saved.rend(); ++it2) buf[it2->first] = it2->second;
    }
    // Both outcomes occur: flips inside names or padding leave a valid header (so the checks
    // on accepted headers above ran), flips in the length, offsets or syntax are refused.
    EXPECT_GT(rejected, 0);
    EXPECT_GT(accepted, 0);
    // The buffer was restored after every iteration: it parses to the original header.
    const SafetensorsHeader back = parse_safetensors_header(buf.data(), buf.size(), "restored");
    ASSERT_EQ(back.entries.size(), h.entries.size());
    for (size_t i = 0; i < h.entries.size(); ++i) {
      EXPECT_EQ(back.entries[i].info.name, h.entries[i].info.name);
      EXPECT_EQ(back.entries[i].begin, h.entries[i].begin);
      EXPECT_EQ(back.entries[i].end, h.entries[i].end);
    }
  }
}

TEST(SafetensorsFile, ZeroCopyViewsOfFixture) {
  const fs::path p = test::model_dir("qwen3-tiny") / "model.safetensors";
  auto f = std::make_unique<SafetensorsFile>(p);
  EXPECT_EQ(f->origin(), p.string());
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_FALSE(f->list().empty());
  uint64_t prev_end = 0;
  for (const auto& ti : f->list()) {
    TensorRef r = f->get(ti.name);
    EXPECT_EQ(r.info.nbytes, ti.nbytes);
    prev_end += ti.nbytes;
  }
  EXPECT_EQ(prev_end + parse_safetensors_header(MappedFile(p).data(), f->file_size(), "x").data_start, f->file_size());
  TensorRef norm = f->get("model.norm.weight");
  f.reset();  // the view keeps the mapping alive
  const auto v = norm.to_f32();
  EXPECT_EQ(v.size(), 128u);
  for (float x : v) EXPECT_TRUE(std::isfinite(x));
}

TEST(SafetensorsFile, MissingTensorNamesFileAndTensor) {
  const fs::path p = test::model_dir("qwen3-tiny") / "model.safetensors";
  SafetensorsFile f(p);
  EXPECT_FALSE(f.has("lm_head.weight"));
  try {
    f.get("lm_head.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos);
  }
  EXPECT_THROW(SafetensorsFile(test::temp_dir("st-missing") / "none.safetensors"), Error);
}

TEST(SafetensorsWriter, RoundTripAlignedAndStreaming) {
  const fs::path d = test::temp_dir("st-write");
  std::vector<float> a(1000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f - 3;
  std::vector<uint16_t> b(7, 0x3f80);
  uint8_t c = 0xAB;
  {
    SafetensorsWriter w(d / "x.safetensors", {{"format", "pt"}, {"note", "hi"}});
    w.add("b", DType::BF16, {7}, b.data(), 14);
    w.add("scalar", DType::U8, {}, &c, 1);
    w.add("empty", DType::F32, {0, 3}, nullptr, 0);
    w.add("a", DType::F32, {10, 100}, a.data(), 4000);
    EXPECT_TRUE(fs::exists(d / "x.safetensors.data-tmp"));
    EXPECT_EQ(w.data_bytes(), 4015u);
    EXPECT_THROW(w.add("a", DType::F32, {1}, a.data(), 4), Error);       // duplicate
    EXPECT_THROW(w.add("z", DType::F32, {3}, a.data(), 4), Error);       // size mismatch
    EXPECT_THROW(w.add("n", DType::F32, {-1}, a.data(), 4), Error);      // negative dim
    EXPECT_THROW(w.add("__metadata__", DType::U8, {1}, &c, 1), Error);  // reserved name
    w.finish();
    w.finish();  // idempotent
    EXPECT_THROW(w.add("q", DType::U8, {1}, &c, 1), Error);
  }
  EXPECT_FALSE(fs::exists(d / "x.safetensors.data-tmp"));
  MappedFile m(d / "x.safetensors");
  const SafetensorsHeader h = parse_safetensors_header(m.data(), m.size(), "x");
  EXPECT_EQ(h.data_start % 8, 0u);
  EXPECT_EQ(h.metadata.at("note"), "hi");
  ASSERT_EQ(h.entries.size(), 4u);
  EXPECT_EQ(h.entries[0].info.name, "b");  // add order is file order
  SafetensorsFile f(d / "x.safetensors");
  EXPECT_EQ(0, std::memcmp(f.get("a").data, a.data(), 4000));
  EXPECT_EQ(f.get("a").info.shape, (Shape{10, 100}));
  EXPECT_EQ(*f.get("scalar").data, 0xAB);
  EXPECT_EQ(f.get("scalar").info.shape, Shape{});
  EXPECT_EQ(f.get("empty").info.nbytes, 0u);
  EXPECT_EQ(0, std::memcmp(f.get("b").data, b.data(), 14));
}

TEST(SafetensorsWriter, FixtureRewriteKeepsTensorBytes) {
  SafetensorsFile src(test::model_dir("llama-tiny") / "model.safetensors");
  const fs::path out = test::temp_dir("st-rewrite") / "m.safetensors";
  std::vector<TensorRef> all;
  for (const auto& ti : src.list()) all.push_back(src.get(ti.name));
  write_safetensors(out, all, src.metadata());
  SafetensorsFile dst(out);
  ASSERT_EQ(dst.list().size(), src.list().size());
  for (const auto& ti : src.list()) {
    TensorRef x = src.get(ti.name), y = dst.get(ti.name);
    ASSERT_EQ(x.info.nbytes, y.info.nbytes);
    EXPECT_EQ(0, std::memcmp(x.data, y.data, x.info.nbytes)) << ti.name;
  }
  // The same data region byte for byte (the fixture is written in offset order too).
  EXPECT_EQ(dst.file_size() - parse_safetensors_header(MappedFile(out).data(), dst.file_size(), "o").data_start,
            src.file_size() -
                parse_safetensors_header(MappedFile(src.path()).data(), src.file_size(), "s").data_start);
}

TEST(SafetensorsWriter, UnfinishedWriterRemovesSideFileAndBadPathThrows) {
  const fs::path d = test::temp_dir("st-unfinished");
  {
    SafetensorsWriter w(d / "u.safetensors");
    float x = 1;
    w.add("x", DType::F32, {1}, &x, 4);
  }
  EXPECT_TRUE(fs::is_empty(d));
  EXPECT_THROW(SafetensorsWriter(d / "no" / "dir" / "u.safetensors"), Error);
  // finish() into an unwritable target fails cleanly.
  SafetensorsWriter w(d / "v.safetensors");
  fs::create_directory(d / "v.safetensors");  // a directory where the file must go
  EXPECT_THROW(w.finish(), Error);
}
