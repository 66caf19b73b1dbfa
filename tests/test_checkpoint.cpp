// Checkpoints: HF directories (single / sharded), aux files, atomic writers, Parquet via the
// shared writer API, and format round trips.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "formats/checkpoint.h"
#include "formats/convert.h"
#include "formats/hf_dir.h"
#include "formats/inspect.h"
#include "formats/parquet.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

// Copies every tensor of `c` into a new checkpoint at `out`.
void copy_checkpoint(const Checkpoint& c, const fs::path& out, CheckpointFormat f, WriterOptions o = {}) {
  auto w = make_checkpoint_writer(out, f, o);
  for (const auto& ti : c.tensors->list()) {
    TensorRef r = c.tensors->get(ti.name);
    w->add_tensor(ti.name, ti.dtype, ti.shape, r.data, ti.nbytes);
  }
  w->commit(c.config, c.aux_files);
}

void expect_same_tensors(const Checkpoint& a, const Checkpoint& b) {
  ASSERT_EQ(a.tensors->list().size(), b.tensors->list().size());
  for (const auto& ti : a.tensors->list()) {
    ASSERT_TRUE(b.tensors->has(ti.name)) << ti.name;
    TensorRef ra = a.tensors->get(ti.name), rb = b.tensors->get(ti.name);
    EXPECT_EQ(ra.info.dtype, rb.info.dtype) << ti.name;
    EXPECT_EQ(ra.info.shape, rb.info.shape) << ti.name;
    ASSERT_EQ(ra.info.nbytes, rb.info.nbytes) << ti.name;
    EXPECT_EQ(0, std::memcmp(ra.data, rb.data, ra.info.nbytes)) << ti.name;
  }
}

size_t count_entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

TEST(Checkpoint, OpensQwen3Tiny) {
  Checkpoint c = open_checkpoint(test::model_dir("qwen3-tiny"));
  EXPECT_EQ(c.format, CheckpointFormat::HF);
  EXPECT_EQ(c.config["model_type"], "qwen3");
  EXPECT_TRUE(c.tensors->has("model.embed_tokens.weight"));
  EXPECT_FALSE(c.tensors->has("lm_head.weight"));  // tied embeddings
  TensorRef e = c.tensors->get("model.embed_tokens.weight");
  EXPECT_EQ(e.info.dtype, DType::BF16);
  EXPECT_EQ(e.info.shape, (Shape{8192, 128}));
  EXPECT_EQ(e.info.nbytes, 8192u * 128 * 2);
  EXPECT_EQ(c.aux_files.count("tokenizer.json"), 1u);
  EXPECT_EQ(c.aux_files.count("generation_config.json"), 1u);
  EXPECT_EQ(c.aux_files.count("config.json"), 0u);
  EXPECT_EQ(c.aux_files.count("model.safetensors"), 0u);
  EXPECT_EQ(c.aux_files.at("tokenizer.json"), read_text_file(test::model_dir("qwen3-tiny") / "tokenizer.json"));
  uint64_t params = 0;
  for (const auto& ti : c.tensors->list()) params += uint64_t(ti.numel());
  EXPECT_EQ(params, 1836416u);  // shared/README.md
}

TEST(Checkpoint, OpensLlamaTinyWithLmHead) {
  Checkpoint c = open_checkpoint(test::model_dir("llama-tiny"));
  EXPECT_TRUE(c.tensors->has("lm_head.weight"));
  uint64_t params = 0;
  for (const auto& ti : c.tensors->list()) params += uint64_t(ti.numel());
  EXPECT_EQ(params, 2884736u);
}

TEST(Checkpoint, FormatNames) {
  EXPECT_EQ(parse_checkpoint_format("hf"), CheckpointFormat::HF);
  EXPECT_EQ(parse_checkpoint_format("parquet"), CheckpointFormat::Parquet);
  EXPECT_STREQ(checkpoint_format_name(CheckpointFormat::HF), "hf");
  EXPECT_STREQ(checkpoint_format_name(CheckpointFormat::Parquet), "parquet");
  EXPECT_EQ(parse_checkpoint_format("gguf"), CheckpointFormat::GGUF);
  EXPECT_STREQ(checkpoint_format_name(CheckpointFormat::GGUF), "gguf");
  EXPECT_THROW(parse_checkpoint_format("safetensors"), Error);
  // GGUF files are written whole (formats/gguf_model.h), not through a CheckpointWriter.
  EXPECT_THROW(make_checkpoint_writer(test::temp_dir("ckpt-gguf") / "m.gguf", CheckpointFormat::GGUF), Error);
}

TEST(Checkpoint, OpenErrorsNameThePath) {
  const fs::path d = test::temp_dir("ckpt-err");
  try {
    open_checkpoint(d / "missing");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos);
  }
  EXPECT_THROW(open_checkpoint(d), Error);  // directory without config.json
  write_text_file(d / "x.bin", "abc");
  EXPECT_THROW(open_checkpoint(d / "x.bin"), Error);
  // config.json but no weights
  write_text_file(d / "config.json", "{}");
  EXPECT_THROW(open_checkpoint(d), Error);
  // bad config json
  fs::copy_file(test::model_dir("qwen3-tiny") / "model.safetensors", d / "model.safetensors");
  write_text_file(d / "config.json", "{\"a\": ");
  try {
    open_checkpoint(d);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
  write_text_file(d / "config.json", "[1]");
  EXPECT_THROW(open_checkpoint(d), Error);
}

TEST(Checkpoint, HfRoundTripSingleFile) {
  Checkpoint c = open_checkpoint(test::model_dir("qwen3-tiny"));
  const fs::path out = test::temp_dir("ckpt-rt") / "out";
  copy_checkpoint(c, out, CheckpointFormat::HF);
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out / kHfIndex));
  Checkpoint d = open_checkpoint(out);
  expect_same_tensors(c, d);
  EXPECT_EQ(c.config, d.config);
  EXPECT_EQ(c.aux_files, d.aux_files);
  // Tensor files are byte-identical except for header formatting; tensor data region equal size.
  EXPECT_EQ(read_text_file(out / "tokenizer.json"), read_text_file(test::model_dir("qwen3-tiny") / "tokenizer.json"));
}

TEST(Checkpoint, HfShardedRoundTrip) {
  Checkpoint c = open_checkpoint(test::model_dir("llama-tiny"));
  const fs::path out = test::temp_dir("ckpt-shard") / "out";
  WriterOptions o;
  o.max_shard_bytes = 1'000'000;
  copy_checkpoint(c, out, CheckpointFormat::HF, o);
  ASSERT_TRUE(fs::exists(out / kHfIndex));
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  const json idx = json::parse(read_text_file(out / kHfIndex));
  uint64_t total = 0;
  for (const auto& ti : c.tensors->list()) total += ti.nbytes;
  EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), total);
  std::set<std::string> files;
  for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) files.insert(it.value());
  ASSERT_GE(files.size(), 3u);
  const size_t n = files.size();
  char first[64];
  std::snprintf(first, sizeof first, "model-00001-of-%05zu.safetensors", n);
  EXPECT_EQ(*files.begin(), first);
  for (const auto& f : files) {
    // Each shard respects the limit unless it holds a single larger tensor.
    SafetensorsFile sf(out / f);
    uint64_t bytes = 0;
    for (const auto& ti : sf.list()) bytes += ti.nbytes;
    EXPECT_TRUE(bytes <= o.max_shard_bytes || sf.list().size() == 1) << f;
  }
  Checkpoint d = open_checkpoint(out);
  expect_same_tensors(c, d);
  // list() order: all tensors, shard by shard
  EXPECT_EQ(d.tensors->list().size(), c.tensors->list().size());
  EXPECT_EQ(d.aux_files, c.aux_files);
  EXPECT_THROW(d.tensors->get("nope"), Error);
  // Sharded -> single again.
  const fs::path out2 = out.parent_path() / "out2";
  copy_checkpoint(d, out2, CheckpointFormat::HF);
  expect_same_tensors(c, open_checkpoint(out2));
}

TEST(Checkpoint, ShardedIndexValidation) {
  Checkpoint c = open_checkpoint(test::model_dir("qwen3-tiny"));
  const fs::path base = test::temp_dir("ckpt-idx");
  WriterOptions o;
  o.max_shard_bytes = 2'500'000;
  copy_checkpoint(c, base / "m", CheckpointFormat::HF, o);
  const fs::path idxp = base / "m" / kHfIndex;
  const json idx = json::parse(read_text_file(idxp));
  ASSERT_EQ(idx["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00002.safetensors");
  auto expect_bad = [&](const json& j, const std::string& needle) {
    write_text_file(idxp, j.dump());
    try {
      open_checkpoint(base / "m");
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json j = idx;
  j["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors";
  expect_bad(j, "model.embed_tokens.weight");  // mapped to the wrong shard
  j = idx;
  j["weight_map"]["model.embed_tokens.weight"] = "../evil.safetensors";
  expect_bad(j, "plain file name");
  j = idx;
  j["weight_map"].erase("model.norm.weight");
  expect_bad(j, "model.norm.weight");  // present in a shard, not mapped
  j = idx;
  j["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors";
  expect_bad(j, "extra.weight");
  j = idx;
  j["weight_map"]["model.norm.weight"] = 3;
  expect_bad(j, "model.norm.weight");
  j = idx;
  j["weight_map"]["x"] = "model-00009-of-00009.safetensors";
  expect_bad(j, "model-00009-of-00009.safetensors");  // missing shard
  expect_bad(json::object(), "weight_map");
  expect_bad(json{{"weight_map", json::object()}}, "empty");
  write_text_file(idxp, "{not json");
  EXPECT_THROW(open_checkpoint(base / "m"), Error);
  // Restored index works again; wrong total_size only warns.
  j = idx;
  j["metadata"]["total_size"] = 5;
  write_text_file(idxp, j.dump());
  expect_same_tensors(c, open_checkpoint(base / "m"));
}

TEST(Checkpoint, DuplicateTensorAcrossShards) {
  const fs::path d = test::temp_dir("ckpt-dup");
  write_text_file(d / "config.json", "{}");
  const std::vector<float> one(4, 1.0f), two(4, 2.0f);
  auto tensor = [](const char* name, const std::vector<float>& v) {
    TensorRef t;
    t.info = {name, DType::F32, {4}, 16};
    t.data = reinterpret_cast<const uint8_t*>(v.data());
    return t;
  };
  write_safetensors(d / "s1.safetensors", {tensor("a", one)});
  write_safetensors(d / "s2.safetensors", {tensor("a", two), tensor("b", two)});
  // A shard the index does not name is never read: its copy of "a" cannot shadow s1's.
  write_text_file(d / kHfIndex, R"({"weight_map": {"a": "s1.safetensors"}})");
  {
    Checkpoint ck = open_checkpoint(d);
    EXPECT_EQ(ck.tensors->list().size(), 1u);
    EXPECT_EQ(ck.tensors->get("a").to_f32(), one);
  }
  // s2 is named (for "b") and also holds "a", which the index maps to s1: a duplicate, refused
  // with a message naming the tensor and the shard.
  write_text_file(d / kHfIndex, R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  const std::string msg = test::error_of([&] { open_checkpoint(d); });
  EXPECT_NE(msg.find("tensor 'a' in s2.safetensors is not mapped to that file"), std::string::npos)
      << msg;
  // Control: the same index with s2 holding only "b" opens; so the error above is the duplicate.
  write_safetensors(d / "s2.safetensors", {tensor("b", two)});
  Checkpoint ok = open_checkpoint(d);
  EXPECT_EQ(ok.tensors->get("a").to_f32(), one);
  EXPECT_EQ(ok.tensors->get("b").to_f32(), two);
}

TEST(Checkpoint, AuxFileSelection) {
  const fs::path d = test::temp_dir("ckpt-aux");
  write_text_file(d / "config.json", "{}");
  write_text_file(d / "tokenizer.json", "tok");
  write_text_file(d / "chat_template.jinja", std::string("a\0b", 3));
  write_text_file(d / "pytorch_model.bin", "w");
  write_text_file(d / "model.safetensors.index.json", "{}");
  write_text_file(d / ".hidden", "h");
  fs::create_directory(d / "sub");
  auto aux = read_aux_files(d);
  EXPECT_EQ(aux.size(), 2u);
  EXPECT_EQ(aux["tokenizer.json"], "tok");
  EXPECT_EQ(aux["chat_template.jinja"], std::string("a\0b", 3));
  EXPECT_TRUE(is_weight_file_name("x.safetensors"));
  EXPECT_FALSE(is_weight_file_name("tokenizer.json"));
  EXPECT_THROW(check_plain_file_name("a/b", "t"), Error);
  EXPECT_THROW(check_plain_file_name("..", "t"), Error);
  EXPECT_THROW(check_plain_file_name("", "t"), Error);
  EXPECT_NO_THROW(check_plain_file_name("tokenizer.json", "t"));
}

TEST(Checkpoint, UncommittedWriterLeavesNothing) {
  const fs::path d = test::temp_dir("ckpt-atomic");
  {
    auto w = make_checkpoint_writer(d / "out", CheckpointFormat::HF);
    float x = 1;
    w->add_tensor("a", DType::F32, {1}, &x, 4);
  }
  EXPECT_EQ(count_entries(d), 0u);
  // A failing add (size mismatch) then destruction: nothing left either.
  {
    auto w = make_checkpoint_writer(d / "out", CheckpointFormat::HF);
    float x = 1;
    EXPECT_THROW(w->add_tensor("a", DType::F32, {2}, &x, 4), Error);
  }
  EXPECT_EQ(count_entries(d), 0u);
}

TEST(Checkpoint, WriterRejectsBadAuxAndReuse) {
  const fs::path d = test::temp_dir("ckpt-w");
  {
    auto w = make_checkpoint_writer(d / "o1", CheckpointFormat::HF);
    EXPECT_THROW(w->commit(json::object(), {{"../x", "y"}}), Error);
  }
  {
    auto w = make_checkpoint_writer(d / "o2", CheckpointFormat::HF);
    EXPECT_THROW(w->commit(json::object(), {{"model.safetensors", "y"}}), Error);
  }
  EXPECT_EQ(count_entries(d), 0u);
  {
    auto w = make_checkpoint_writer(d / "o3", CheckpointFormat::HF);
    float x = 2;
    w->add_tensor("a", DType::F32, {1}, &x, 4);
    EXPECT_THROW(w->add_tensor("a", DType::F32, {1}, &x, 4), Error);
    w->commit(json{{"k", 1}}, {});
    EXPECT_THROW(w->commit(json::object(), {}), Error);
    EXPECT_THROW(w->add_tensor("b", DType::F32, {1}, &x, 4), Error);
  }
  Checkpoint c = open_checkpoint(d / "o3");
  EXPECT_EQ(c.config["k"], 1);
  EXPECT_EQ(c.tensors->get("a").to_f32()[0], 2.0f);
  // Replacing an existing checkpoint directory llmc wrote works with overwrite (and only then);
  // replacing a non-model directory is refused.
  EXPECT_THROW(make_checkpoint_writer(d / "o3", CheckpointFormat::HF), Error);
  {
    WriterOptions ov;
    ov.overwrite = true;
    auto w = make_checkpoint_writer(d / "o3", CheckpointFormat::HF, ov);
    w->commit(json{{"k", 2}}, {});
  }
  EXPECT_EQ(open_checkpoint(d / "o3").config["k"], 2);
  EXPECT_EQ(open_checkpoint(d / "o3").tensors->list().size(), 0u);
  fs::create_directory(d / "home");
  write_text_file(d / "home" / "precious.txt", "x");
  EXPECT_THROW(make_checkpoint_writer(d / "home", CheckpointFormat::HF), Error);
  EXPECT_TRUE(fs::exists(d / "home" / "precious.txt"));
  EXPECT_THROW(make_checkpoint_writer(d / "home" / "precious.txt", CheckpointFormat::HF), Error);
  EXPECT_THROW(make_checkpoint_writer(d / "home", CheckpointFormat::Parquet), Error);
  WriterOptions o;
  o.max_shard_bytes = 0;
  EXPECT_THROW(make_checkpoint_writer(d / "o4", CheckpointFormat::HF, o), Error);
}

TEST(Checkpoint, ParquetRoundTripIsLossless) {
  for (const char* m : {"qwen3-tiny", "llama-tiny"}) {
    Checkpoint c = open_checkpoint(test::model_dir(m));
    const fs::path d = test::temp_dir("ckpt-pq");
    WriterOptions o;
    o.parquet_chunk_bytes = 1 << 20;  // forces multi-row tensors (embeddings are 2 MiB)
    copy_checkpoint(c, d / "m.parquet", CheckpointFormat::Parquet, o);
    Checkpoint p = open_checkpoint(d / "m.parquet");
    EXPECT_EQ(p.format, CheckpointFormat::Parquet);
    expect_same_tensors(c, p);
    EXPECT_EQ(p.config, c.config);
    EXPECT_EQ(p.aux_files, c.aux_files);
    copy_checkpoint(p, d / "back", CheckpointFormat::HF);
    Checkpoint h = open_checkpoint(d / "back");
    expect_same_tensors(c, h);
    EXPECT_EQ(h.aux_files, c.aux_files);
    EXPECT_EQ(h.config, c.config);
  }
}

TEST(Checkpoint, ParquetKeepsQuantizationConfig) {
  const fs::path src = test::data_path("peers/angelslim-qwen3-tiny/int4_gptq");
  Checkpoint c = open_checkpoint(src);
  ASSERT_TRUE(c.config.contains("quantization_config"));
  const fs::path d = test::temp_dir("ckpt-pq-q");
  copy_checkpoint(c, d / "q.parquet", CheckpointFormat::Parquet);
  Checkpoint p = open_checkpoint(d / "q.parquet");
  EXPECT_EQ(p.config["quantization_config"], c.config["quantization_config"]);
  expect_same_tensors(c, p);
}

TEST(Checkpoint, ParquetMetadataMapping) {
  const fs::path d = test::temp_dir("ckpt-pq-kv");
  float x[2] = {1.5f, -2};
  auto write = [&](const fs::path& p, const std::map<std::string, std::string>& kv) {
    ParquetTensorWriter w(p, 1 << 20, false);
    w.add("t", DType::F32, {2}, x, 8);
    w.set_kv(kv);
    w.finish();
  };
  write(d / "v2.parquet", {{"llmc.format_version", "2"}, {"config.json", "{}"}});
  try {
    open_checkpoint(d / "v2.parquet");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("format version '2'"), std::string::npos) << e.what();
  }
  // Foreign file: no llmc keys at all -> empty config, tensors still readable.
  write(d / "foreign.parquet", {});
  Checkpoint f = open_checkpoint(d / "foreign.parquet");
  EXPECT_TRUE(f.config.is_object() && f.config.empty());
  EXPECT_EQ(f.tensors->get("t").to_f32(), (std::vector<float>{1.5f, -2}));
  // quantization_config key fills in a config without one; file: keys become aux files.
  write(d / "q.parquet", {{"config.json", R"({"model_type":"qwen3"})"},
                          {"quantization_config", R"({"bits":4})"},
                          {"file:tokenizer.json", "tok"}});
  Checkpoint q = open_checkpoint(d / "q.parquet");
  EXPECT_EQ(q.config["quantization_config"]["bits"], 4);
  EXPECT_EQ(q.aux_files.at("tokenizer.json"), "tok");
  write(d / "bad.parquet", {{"config.json", "{}"}, {"file:../../etc/passwd", "x"}});
  EXPECT_THROW(open_checkpoint(d / "bad.parquet"), Error);
  write(d / "badcfg.parquet", {{"config.json", "{oops"}});
  EXPECT_THROW(open_checkpoint(d / "badcfg.parquet"), Error);
}

TEST(Checkpoint, InspectLogicalParamsOfPackedWeights) {
  const fs::path d = test::temp_dir("ckpt-inspect");
  std::vector<int32_t> packed(8, 0x12345678);
  int64_t wshape[2] = {4, 16};
  uint16_t scale[4] = {0x3c00, 0x3c00, 0x3c00, 0x3c00};
  uint16_t norm[16] = {};
  auto make = [&](const fs::path& out, bool with_shape, const json& qc) {
    auto w = make_checkpoint_writer(out, CheckpointFormat::HF);
    w->add_tensor("m.weight_packed", DType::I32, {4, 2}, packed.data(), 32);
    if (with_shape) w->add_tensor("m.weight_shape", DType::I64, {2}, wshape, 16);
    w->add_tensor("m.weight_scale", DType::F16, {4, 1}, scale, 8);
    w->add_tensor("g.qweight", DType::I32, {2, 4}, packed.data(), 32);
    w->add_tensor("norm.weight", DType::BF16, {16}, norm, 32);
    json cfg = {{"architectures", {"Qwen3ForCausalLM"}}, {"torch_dtype", "bfloat16"}, {"rope_theta", 10000.0}};
    if (!qc.is_null()) cfg["quantization_config"] = qc;
    w->commit(cfg, {});
  };
  make(d / "a", true, json::parse(R"({"quant_method":"compressed-tensors","config_groups":{"g0":{"weights":{"num_bits":4}}}})"));
  json r = inspect_checkpoint(open_checkpoint(d / "a"));
  // weight_packed: 4*16 from weight_shape; qweight: 8 words * 32/4; norm: 16; shape/scale: 0.
  EXPECT_EQ(r["totals"]["logical_parameters"], 64 + 64 + 16);
  EXPECT_EQ(r["footprint"]["bf16_bytes"], 2 * (64 + 64 + 16));
  EXPECT_EQ(r["architecture"]["dtype"], "bfloat16");   // v4 spelling
  EXPECT_EQ(r["architecture"]["rope_theta"], 10000.0);  // v4 spelling
  const std::string text = format_inspect_text(r);
  EXPECT_NE(text.find("m.weight_packed"), std::string::npos);
  EXPECT_NE(text.find("compressed-tensors"), std::string::npos);
  // Without weight_shape and with 8-bit: packed words count 32/8 values each.
  make(d / "b", false, json{{"bits", 8}});
  r = inspect_checkpoint(open_checkpoint(d / "b"));
  EXPECT_EQ(r["totals"]["logical_parameters"], 8 * 4 + 8 * 4 + 16);
  // No quantization config: 4 bits assumed.
  make(d / "c", false, json(nullptr));
  r = inspect_checkpoint(open_checkpoint(d / "c"));
  EXPECT_EQ(r["totals"]["logical_parameters"], 64 + 64 + 16);
  EXPECT_TRUE(r["quantization_config"].is_null());
}

TEST(Checkpoint, ConvertLibraryDtypesAndConfigKeys) {
  const fs::path d = test::temp_dir("ckpt-convert");
  double v64[3] = {1.0, -0.5, 3.25};
  int16_t i16[2] = {7, -7};
  {
    auto w = make_checkpoint_writer(d / "in", CheckpointFormat::HF);
    w->add_tensor("x", DType::F64, {3}, v64, 24);
    w->add_tensor("y", DType::I16, {2}, i16, 4);
    w->commit(json{{"model_type", "llama"}}, {{"tokenizer.json", "t"}});
  }
  EXPECT_EQ(torch_dtype_name(DType::F64), std::string("float64"));
  EXPECT_EQ(torch_dtype_name(DType::I8), std::string("i8"));
  EXPECT_THROW(parse_target_dtype("int4"), Error);
  EXPECT_FALSE(parse_target_dtype("keep").has_value());
  ConvertOptions o;
  o.target_dtype = DType::F16;
  o.progress = true;
  Checkpoint in = open_checkpoint(d / "in");
  ConvertStats st = convert_checkpoint(in, d / "out", o);
  EXPECT_EQ(st.tensors, 2u);
  EXPECT_EQ(st.converted, 1u);
  EXPECT_EQ(st.bytes_in, 28u);
  EXPECT_EQ(st.bytes_out, 10u);
  Checkpoint out = open_checkpoint(d / "out");
  EXPECT_EQ(out.config["torch_dtype"], "float16");  // both spellings, whatever the input had
  EXPECT_EQ(out.config["dtype"], "float16");
  EXPECT_EQ(out.tensors->get("x").info.dtype, DType::F16);
  EXPECT_EQ(out.tensors->get("x").to_f32(), (std::vector<float>{1.0f, -0.5f, 3.25f}));
  EXPECT_EQ(out.tensors->get("y").info.dtype, DType::I16);
  EXPECT_EQ(out.aux_files.at("tokenizer.json"), "t");
}

// transformers 4 reads "torch_dtype", "rope_theta" and "rope_scaling"; transformers 5 reads
// "dtype" and "rope_parameters". A v4 Qwen3Config given only rope_parameters defaults rope_theta
// to 10000 (and vLLM writes that back), so every config llmc writes carries both spellings.
namespace {

void expect_same_model(const ModelConfig& a, const ModelConfig& b, const std::string& what) {
  EXPECT_EQ(a.rope.theta, b.rope.theta) << what;
  EXPECT_EQ(a.rope.type, b.rope.type) << what;
  EXPECT_EQ(a.rope.factor, b.rope.factor) << what;
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor) << what;
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor) << what;
  EXPECT_EQ(a.rope.original_max_position, b.rope.original_max_position) << what;
  EXPECT_EQ(a.dtype, b.dtype) << what;
  EXPECT_EQ(a.hidden_size, b.hidden_size) << what;
}

// Only the v4 (or only the v5) keys of a config that carries both.
json only_spelling(json c, bool v5) {
  const std::vector<std::string> v4_keys = {"rope_theta", "rope_scaling", "torch_dtype"};
  const std::vector<std::string> v5_keys = {"rope_parameters", "dtype"};
  for (const std::string& k : v5 ? v4_keys : v5_keys) c.erase(k);
  return c;
}

}  // namespace

TEST(Checkpoint, ConfigSpellingsV4AndV5ReadTheSameModel) {
  json v5 = json::parse(std::ifstream(test::model_dir("qwen3-tiny") / "config.json"));
  ASSERT_TRUE(v5.contains("rope_parameters"));
  ASSERT_FALSE(v5.contains("rope_theta"));  // the fixture is v5-only: the case that broke
  json v4 = v5;
  v4.erase("rope_parameters");
  v4.erase("dtype");
  v4["rope_theta"] = v5["rope_parameters"]["rope_theta"];
  v4["torch_dtype"] = v5["dtype"];
  // llama3 RoPE in both spellings.
  json l5 = v5, l4 = v4;
  l5["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                           {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 256}};
  l4["rope_theta"] = 500000.0;
  l4["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 256}};
  for (const auto& [a, b] : {std::pair{v4, v5}, std::pair{l4, l5}}) {
    const ModelConfig ref = ModelConfig::from_json(b, "v5");
    expect_same_model(ModelConfig::from_json(a, "v4"), ref, "v4 input");
    for (json in : {a, b}) {
      set_config_spellings(in);
      for (const char* k : {"rope_theta", "rope_parameters", "rope_scaling", "dtype", "torch_dtype"})
        EXPECT_TRUE(in.contains(k)) << k << " in " << in.dump();
      EXPECT_EQ(in["rope_theta"], in["rope_parameters"]["rope_theta"]);
      EXPECT_EQ(in["dtype"], in["torch_dtype"]);
      expect_same_model(ModelConfig::from_json(in, "both"), ref, in.dump());
      expect_same_model(ModelConfig::from_json(only_spelling(in, false), "v4 only"), ref, "v4 of " + in.dump());
      expect_same_model(ModelConfig::from_json(only_spelling(in, true), "v5 only"), ref, "v5 of " + in.dump());
    }
  }
  EXPECT_EQ(ModelConfig::from_json(only_spelling([&] { json c = v5; set_config_spellings(c); return c; }(), false),
                                   "v4")
                .rope.theta,
            1000000.0);  // not transformers 4's default of 10000
  // rope_parameters wins over a disagreeing rope_theta, as the reader decides.
  json mixed = v5;
  mixed["rope_theta"] = 10000.0;
  set_config_spellings(mixed);
  EXPECT_EQ(mixed["rope_theta"], 1000000.0);
  // No RoPE or dtype keys: none are invented; a non-object is left alone.
  json bare = {{"model_type", "llama"}};
  set_config_spellings(bare);
  EXPECT_EQ(bare, (json{{"model_type", "llama"}}));
  json arr = json::array();
  set_config_spellings(arr);
  EXPECT_TRUE(arr.empty());
}

// convert --dtype writes both spellings; without --dtype the config is copied unchanged.
TEST(Checkpoint, ConvertDtypeWritesBothConfigSpellings) {
  const fs::path d = test::temp_dir("ckpt-spellings");
  Checkpoint in = open_checkpoint(test::model_dir("qwen3-tiny"));
  ConvertOptions o;
  o.progress = false;
  convert_checkpoint(in, d / "keep", o);
  EXPECT_EQ(open_checkpoint(d / "keep").config, in.config);
  o.target_dtype = DType::F32;
  convert_checkpoint(in, d / "f32", o);
  o.format = CheckpointFormat::Parquet;
  convert_checkpoint(in, d / "f32.parquet", o);
  for (const fs::path& p : {d / "f32", d / "f32.parquet"}) {
    const json c = open_checkpoint(p).config;
    EXPECT_EQ(c["rope_theta"], 1000000.0) << p;
    EXPECT_EQ(c["rope_parameters"]["rope_theta"], 1000000.0) << p;
    EXPECT_EQ(c["torch_dtype"], "float32") << p;
    EXPECT_EQ(c["dtype"], "float32") << p;
  }
}
