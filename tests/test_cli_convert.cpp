// `llmc convert` and `llmc inspect` end to end: lossless HF <-> Parquet round trips on every
// fixture, sharding, --dtype, inspect reports, and CLI error exits that leave no output.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/fs.h"
#include "formats/checkpoint.h"
#include "formats/hf_dir.h"
#include "formats/inspect.h"
#include "testing.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

int cli(const std::string& args, std::string* out = nullptr) {
  std::string o;
  const int rc = test::run_cli(args, &o);
  if (out) *out = o;
  return rc;
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

// HF -> Parquet -> HF through the CLI: tensors byte-identical, config and aux files preserved.
void round_trip(const fs::path& model, const std::string& extra = "") {
  const fs::path d = test::temp_dir("cli-rt");
  std::string out;
  ASSERT_EQ(0, cli("-q convert --input " + q(model) + " --output " + q(d / "m.parquet") + extra, &out)) << out;
  ASSERT_EQ(0, cli("-q convert --input " + q(d / "m.parquet") + " --output " + q(d / "back"), &out)) << out;
  Checkpoint a = open_checkpoint(model), p = open_checkpoint(d / "m.parquet"), b = open_checkpoint(d / "back");
  EXPECT_EQ(p.format, CheckpointFormat::Parquet);
  expect_same_tensors(a, p);
  expect_same_tensors(a, b);
  EXPECT_EQ(a.config, b.config);
  EXPECT_EQ(a.aux_files, b.aux_files);
  for (const auto& [name, bytes] : a.aux_files) EXPECT_EQ(read_text_file(d / "back" / name), bytes) << name;
  EXPECT_TRUE(fs::exists(d / "back" / "config.json"));
  // Nothing but the outputs in the directory: no temporaries left.
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(d)) ++n;
  EXPECT_EQ(n, 2u);
}

size_t entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

TEST(CliConvert, LosslessRoundTripQwen3Tiny) { round_trip(test::model_dir("qwen3-tiny")); }
TEST(CliConvert, LosslessRoundTripLlamaTiny) { round_trip(test::model_dir("llama-tiny"), " --chunk-size 1MiB"); }
TEST(CliConvert, LosslessRoundTripQuantizedPeers) {
  round_trip(test::data_path("peers/angelslim-qwen3-tiny/int4_gptq"), " --zstd");
  round_trip(test::data_path("peers/angelslim-qwen3-tiny/fp8_static"));
}

TEST(CliConvert, LosslessRoundTripQwen3Small) {
  const fs::path m = test::shared_path("models/qwen3-small");
  if (m.empty()) GTEST_SKIP() << "../shared/models/qwen3-small not present";
  round_trip(m);
}

TEST(CliConvert, ShardedOutputAndBack) {
  const fs::path d = test::temp_dir("cli-shard");
  std::string out;
  ASSERT_EQ(0, cli("-q convert --input " + q(test::model_dir("llama-tiny")) + " --output " + q(d / "s") +
                       " --shard-size 700KB",
                   &out))
      << out;
  ASSERT_TRUE(fs::exists(d / "s" / kHfIndex));
  const json idx = json::parse(read_text_file(d / "s" / kHfIndex));
  std::set<std::string> files;
  for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) files.insert(it.value());
  EXPECT_GE(files.size(), 5u);
  for (const auto& f : files) EXPECT_TRUE(fs::exists(d / "s" / f)) << f;
  Checkpoint a = open_checkpoint(test::model_dir("llama-tiny")), s = open_checkpoint(d / "s");
  expect_same_tensors(a, s);
  // Sharded HF -> Parquet -> single HF.
  ASSERT_EQ(0, cli("-q convert -i " + q(d / "s") + " -o " + q(d / "s.parquet"), &out)) << out;
  ASSERT_EQ(0, cli("-q convert -i " + q(d / "s.parquet") + " -o " + q(d / "one") + " --format hf", &out)) << out;
  EXPECT_TRUE(fs::exists(d / "one" / "model.safetensors"));
  expect_same_tensors(a, open_checkpoint(d / "one"));
}

TEST(CliConvert, DtypeConversionChangesFloatsAndConfig) {
  const fs::path d = test::temp_dir("cli-dtype");
  const fs::path src = test::model_dir("qwen3-tiny");
  std::string out;
  ASSERT_EQ(0, cli("-q convert -i " + q(src) + " -o " + q(d / "f32") + " --dtype fp32", &out)) << out;
  Checkpoint a = open_checkpoint(src), f = open_checkpoint(d / "f32");
  EXPECT_EQ(f.config["dtype"], "float32");
  EXPECT_EQ(f.config["torch_dtype"], "float32");  // both spellings (set_config_spellings)
  for (const auto& ti : a.tensors->list()) {
    TensorRef x = a.tensors->get(ti.name), y = f.tensors->get(ti.name);
    ASSERT_EQ(y.info.dtype, DType::F32);
    EXPECT_EQ(x.to_f32(), y.to_f32()) << ti.name;  // bf16 -> f32 is exact
  }
  // ... and back to bf16 (Parquet in between) is bit-identical to the original.
  ASSERT_EQ(0, cli("-q convert -i " + q(d / "f32") + " -o " + q(d / "b.parquet") + " --dtype bf16", &out)) << out;
  Checkpoint b = open_checkpoint(d / "b.parquet");
  expect_same_tensors(a, b);
  EXPECT_EQ(b.config["dtype"], "bfloat16");
  // fp16: each value is the RNE conversion of the bf16 value.
  ASSERT_EQ(0, cli("-q convert -i " + q(src) + " -o " + q(d / "h") + " --dtype fp16", &out)) << out;
  Checkpoint h = open_checkpoint(d / "h");
  TensorRef x = a.tensors->get("model.layers.1.mlp.up_proj.weight"), y = h.tensors->get("model.layers.1.mlp.up_proj.weight");
  ASSERT_EQ(y.info.dtype, DType::F16);
  const auto* hv = reinterpret_cast<const uint16_t*>(y.data);
  const auto* bv = reinterpret_cast<const uint16_t*>(x.data);
  for (int64_t i = 0; i < x.info.numel(); ++i) ASSERT_EQ(hv[i], f32_to_f16(bf16_to_f32(bv[i]))) << i;
}

TEST(CliConvert, DtypeLeavesQuantizedTensorsAlone) {
  const fs::path src = test::data_path("peers/angelslim-qwen3-tiny/int4_gptq");
  const fs::path d = test::temp_dir("cli-dtype-q");
  std::string out;
  ASSERT_EQ(0, cli("-q convert -i " + q(src) + " -o " + q(d / "o") + " --dtype fp32", &out)) << out;
  Checkpoint a = open_checkpoint(src), b = open_checkpoint(d / "o");
  int kept = 0;
  for (const auto& ti : a.tensors->list()) {
    TensorRef y = b.tensors->get(ti.name);
    if (is_quant_metadata_tensor(ti.name) || !dtype_traits(ti.dtype).is_float) {
      EXPECT_EQ(y.info.dtype, ti.dtype) << ti.name;
      EXPECT_EQ(0, std::memcmp(y.data, a.tensors->get(ti.name).data, ti.nbytes)) << ti.name;
      ++kept;
    } else {
      EXPECT_EQ(y.info.dtype, DType::F32) << ti.name;
    }
  }
  EXPECT_GT(kept, 50);
  EXPECT_EQ(b.config["quantization_config"], a.config["quantization_config"]);
}

TEST(CliInspect, TextReport) {
  std::string out;
  ASSERT_EQ(0, cli("inspect " + q(test::model_dir("qwen3-tiny")), &out)) << out;
  EXPECT_NE(out.find("Qwen3ForCausalLM"), std::string::npos) << out;
  EXPECT_NE(out.find("model.layers.3.mlp.down_proj.weight"), std::string::npos);
  EXPECT_NE(out.find("1,836,416 logical parameters"), std::string::npos) << out;
  EXPECT_NE(out.find("(1.000x)"), std::string::npos) << out;
  EXPECT_NE(out.find("quantization_config: none"), std::string::npos);
  ASSERT_EQ(0, cli("inspect " + q(test::data_path("peers/angelslim-qwen3-tiny/int4_gptq")), &out)) << out;
  EXPECT_NE(out.find("\"quant_method\":\"gptq\""), std::string::npos) << out;
  ASSERT_EQ(0, cli("inspect " + q(test::model_dir("llama-tiny") / "reference_logits.safetensors"), &out)) << out;
  EXPECT_NE(out.find("(no config.json)"), std::string::npos) << out;
  EXPECT_NE(out.find("input_ids"), std::string::npos) << out;
}

TEST(CliInspect, JsonReport) {
  std::string out;
  ASSERT_EQ(0, cli("inspect --json " + q(test::model_dir("qwen3-tiny")) + " 2>/dev/null", &out)) << out;
  const json r = json::parse(out);
  EXPECT_EQ(r["format"], "hf");
  EXPECT_EQ(r["architecture"]["architecture"], "Qwen3ForCausalLM");
  EXPECT_EQ(r["architecture"]["rope_theta"], 1000000.0);
  EXPECT_EQ(r["architecture"]["num_hidden_layers"], 4);
  EXPECT_EQ(r["tensors"].size(), 46u);
  EXPECT_EQ(r["totals"]["parameters"], 1836416);
  EXPECT_EQ(r["totals"]["bytes"], 2 * 1836416);
  EXPECT_EQ(r["footprint"]["bf16_bytes"], 2 * 1836416);
  EXPECT_DOUBLE_EQ(r["footprint"]["ratio"].get<double>(), 1.0);
  EXPECT_TRUE(r["quantization_config"].is_null());
  EXPECT_EQ(r["tensors"][0]["name"], "model.embed_tokens.weight");
  EXPECT_EQ(r["tensors"][0]["shape"], json::array({8192, 128}));
  EXPECT_EQ(r["tensors"][0]["dtype"], "bf16");
  EXPECT_EQ(r["aux_files"]["tokenizer.json"], fs::file_size(test::model_dir("qwen3-tiny") / "tokenizer.json"));

  // GPTQ int4: logical parameters recovered from the packed qweight tensors and bits = 4.
  ASSERT_EQ(0, cli("inspect --json " + q(test::data_path("peers/angelslim-qwen3-tiny/int4_gptq")), &out)) << out;
  const json g = json::parse(out);
  EXPECT_EQ(g["totals"]["logical_parameters"], 1836416);
  EXPECT_LT(g["footprint"]["ratio"].get<double>(), 0.75);
  EXPECT_EQ(g["quantization_config"]["bits"], 4);
  // FP8: every stored element is one logical parameter; scales count 0.
  ASSERT_EQ(0, cli("inspect --json " + q(test::data_path("peers/angelslim-qwen3-tiny/fp8_static")), &out)) << out;
  const json f = json::parse(out);
  EXPECT_EQ(f["totals"]["logical_parameters"], 1836416);
  EXPECT_GT(f["totals"]["by_dtype"]["f8_e4m3"].get<uint64_t>(), 0u);
}

TEST(CliInspect, ParquetAndLibraryLogicalParams) {
  const fs::path d = test::temp_dir("cli-insp-pq");
  std::string out;
  ASSERT_EQ(0, cli("-q convert -i " + q(test::model_dir("llama-tiny")) + " -o " + q(d / "l.parquet"), &out)) << out;
  ASSERT_EQ(0, cli("inspect --json " + q(d / "l.parquet"), &out)) << out;
  const json r = json::parse(out);
  EXPECT_EQ(r["format"], "parquet");
  EXPECT_EQ(r["totals"]["parameters"], 2884736);
  EXPECT_EQ(r["architecture"]["tie_word_embeddings"], false);
  // Bits from quantization configs.
  EXPECT_EQ(quantized_bits(json{{"bits", 3}}), 3);
  EXPECT_EQ(quantized_bits(json::parse(R"({"config_groups":{"g":{"weights":{"num_bits":2}}}})")), 2);
  EXPECT_EQ(quantized_bits(json(nullptr)), 0);
  EXPECT_EQ(quantized_bits(json::object()), 0);
  EXPECT_TRUE(is_quant_metadata_tensor("model.layers.0.mlp.up_proj.weight_scale"));
  EXPECT_TRUE(is_quant_metadata_tensor("a.qzeros"));
  EXPECT_FALSE(is_quant_metadata_tensor("a.qweight"));
  EXPECT_FALSE(is_quant_metadata_tensor("model.norm.weight"));
}

TEST(CliErrors, BadArgumentsExitNonZero) {
  const fs::path d = test::temp_dir("cli-err");
  const std::string in = q(test::model_dir("qwen3-tiny"));
  std::string out;
  EXPECT_EQ(1, cli("convert --input " + q(d / "missing") + " --output " + q(d / "o"), &out));
  EXPECT_NE(out.find("missing"), std::string::npos) << out;
  EXPECT_NE(0, cli("convert --input " + in + " --output " + q(d / "o") + " --frobnicate", &out));
  EXPECT_NE(out.find("frobnicate"), std::string::npos) << out;
  EXPECT_NE(0, cli("convert --input " + in, &out));  // --output is required
  EXPECT_NE(0, cli("convert --input " + in + " --output " + q(d / "o") + " --dtype int3", &out));
  EXPECT_NE(0, cli("convert --input " + in + " --output " + q(d / "o") + " --format gguf", &out));
  EXPECT_EQ(1, cli("convert --input " + in + " --output " + q(d / "o") + " --shard-size 5XB", &out));
  EXPECT_NE(out.find("5XB"), std::string::npos) << out;
  EXPECT_EQ(1, cli("convert --input " + in + " --output " + q(d / "o.bin") + " --format parquet", &out));
  EXPECT_NE(out.find(".parquet"), std::string::npos) << out;
  EXPECT_EQ(1, cli("convert --input " + in + " --output " + in, &out));
  EXPECT_NE(out.find("is the input"), std::string::npos) << out;
  EXPECT_EQ(1, cli("inspect " + q(d / "nothing"), &out));
  EXPECT_NE(0, cli("inspect", &out));
  EXPECT_TRUE(fs::is_empty(d)) << "a failed command left output behind";
}

TEST(CliErrors, BadOutputPathsLeaveNothing) {
  const fs::path d = test::temp_dir("cli-outpath");
  const std::string in = q(test::model_dir("qwen3-tiny"));
  std::string out;
  write_text_file(d / "file.txt", "x");
  // Parent is a regular file.
  EXPECT_EQ(1, cli("convert -i " + in + " -o " + q(d / "file.txt" / "out"), &out));
  EXPECT_NE(out.find("file.txt"), std::string::npos) << out;
  // HF output onto an existing regular file / into a non-model directory.
  EXPECT_EQ(1, cli("convert -i " + in + " -o " + q(d / "file.txt"), &out));
  fs::create_directory(d / "docs");
  write_text_file(d / "docs" / "keep.txt", "k");
  EXPECT_EQ(1, cli("convert -i " + in + " -o " + q(d / "docs"), &out));
  EXPECT_NE(out.find("refusing"), std::string::npos) << out;
  EXPECT_EQ(read_text_file(d / "docs" / "keep.txt"), "k");
  // Parquet output onto a directory.
  fs::create_directory(d / "dir.parquet");
  EXPECT_EQ(1, cli("convert -i " + in + " -o " + q(d / "dir.parquet"), &out));
  // Read-only directory.
  fs::create_directory(d / "ro");
  fs::permissions(d / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  if (::geteuid() != 0) {  // root ignores permissions
    EXPECT_EQ(1, cli("convert -i " + in + " -o " + q(d / "ro" / "m.parquet"), &out));
    EXPECT_TRUE(fs::is_empty(d / "ro"));
  }
  fs::permissions(d / "ro", fs::perms::owner_all);
  EXPECT_EQ(entries(d), 4u);  // file.txt, docs, dir.parquet, ro: nothing new
}

TEST(CliErrors, CorruptInputNamesFileAndLeavesNothing) {
  const fs::path d = test::temp_dir("cli-corrupt");
  fs::create_directory(d / "m");
  for (const char* f : {"config.json", "tokenizer.json"}) fs::copy_file(test::model_dir("qwen3-tiny") / f, d / "m" / f);
  const std::string full = read_text_file(test::model_dir("qwen3-tiny") / "model.safetensors");
  write_text_file(d / "m" / "model.safetensors", full.substr(0, full.size() - 100));
  std::string out;
  EXPECT_EQ(1, cli("convert -i " + q(d / "m") + " -o " + q(d / "o.parquet"), &out));
  EXPECT_NE(out.find("model.safetensors"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "o.parquet"));
  EXPECT_EQ(1, cli("inspect " + q(d / "m"), &out));
  // A hostile header: tensor offsets past the end of the file.
  std::string bad = full;
  const size_t pos = bad.find("[0,2097152]");
  ASSERT_NE(pos, std::string::npos);
  bad.replace(pos, 11, "[0,9097152]");
  write_text_file(d / "m" / "model.safetensors", bad);
  EXPECT_EQ(1, cli("convert -i " + q(d / "m") + " -o " + q(d / "o"), &out));
  EXPECT_NE(out.find("model.embed_tokens.weight"), std::string::npos) << out;
  EXPECT_EQ(entries(d), 1u);
}

TEST(CliErrors, WriteFailureMidwayLeavesNoOutput) {
  // A 1 MB file-size limit makes the 3.6 MB model fail while its tensors are being written.
  const fs::path d = test::temp_dir("cli-fsize");
  for (const char* target : {"o", "o.parquet"}) {
    const std::string cmd = "sh -c \"ulimit -f 2000 && exec " + std::string(LLMC_CLI_PATH) + " -q convert -i " +
                            q(test::model_dir("qwen3-tiny")) + " -o " + q(d / target) + "\" 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    char buf[4096];
    std::string out;
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int st = ::pclose(p);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << target << ": " << out;
    EXPECT_NE(out.find("llmc: error:"), std::string::npos) << out;
    EXPECT_TRUE(fs::is_empty(d)) << target << ": output or temporaries left behind";
  }
}
