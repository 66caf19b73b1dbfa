// fuzz/make_seeds — writes the generated seed corpora under fuzz/corpus/ (checked in; run again
// only when an input format changes): small valid inputs for each target, built with llmc's
// own writers (layout encoders, safetensors and Parquet writers) so that fuzzing starts from
// files the parsers accept. Fixture files (configs, Parquet datasets, hyparquet files) are
// used in place by scripts/fuzz.sh, not copied.
//   usage: make_seeds OUT_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "formats/parquet.h"
#include "formats/safetensors.h"
#include "layout_input.h"
#include "quant/qweight.h"

namespace fs = std::filesystem;
using namespace llmc;
using nlohmann::json;

namespace {

fs::path g_out;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path d = g_out / target;
  fs::create_directories(d);
  std::ofstream(d / name, std::ios::binary) << bytes;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

QuantizedWeight int_weight(int bits, bool sym, int64_t group, bool with_g_idx = false) {
  QuantizedWeight w;
  w.kind = QKind::INT;
  w.bits = bits;
  w.symmetric = sym;
  w.out = 32;  // gptq packs out x bits into int32 words along out
  w.in = 64;
  w.group = group;
  const int64_t ng = w.n_groups();
  const int lo = sym ? -(1 << (bits - 1)) : 0, span = 1 << bits;
  for (int64_t i = 0; i < w.out * w.in; ++i) {
    if (sym) w.q8.push_back(int8_t(lo + int(i * 7 % span)));
    else w.qu.push_back(uint8_t(i * 5 % span));
  }
  for (int64_t i = 0; i < (group == 0 ? 1 : w.out * ng); ++i) w.scales.push_back(0.0078125f * float(1 + i % 5));
  if (!sym)
    for (int64_t i = 0; i < w.out * ng; ++i) w.zeros.push_back(int32_t(i % span));
  if (with_g_idx)
    for (int64_t c = 0; c < w.in; ++c) w.g_idx.push_back(int32_t((c * 3) % ng));
  return w;
}

QuantizedWeight fp8_weight(int64_t group, ActQuant act = ActQuant::None) {
  QuantizedWeight w;
  w.kind = QKind::FP8;
  w.bits = 8;
  w.out = 8;
  w.in = 64;
  w.group = group;
  for (int64_t i = 0; i < w.out * w.in; ++i) w.q8.push_back(int8_t(f32_to_fp8e4m3(float(i % 17) - 8.0f)));
  for (int64_t i = 0; i < (group == 0 ? 1 : w.out * w.n_groups()); ++i) w.scales.push_back(0.01f * float(1 + i % 3));
  w.act = act;
  if (act == ActQuant::FP8StaticTensor) w.input_scale = 0.05f;
  return w;
}

void layout_seed(const std::string& target, const std::string& name, const std::string& layout, QuantizedWeight w) {
  const Layout& l = find_layout(layout);
  if (l.scale_dtype != DType::F32) round_scales(w, l.scale_dtype);
  QuantConfigSpec spec;
  spec.scheme = w;
  const json qc = l.quantization_config(spec);
  put(target, name, fuzz::serialize_layout_input(qc, l.encode("m", w), "m"));
}

EncodedTensor raw(const std::string& name, DType dt, Shape shape, const std::vector<uint8_t>& bytes) {
  EncodedTensor t;
  t.name = name;
  t.dtype = dt;
  t.shape = std::move(shape);
  t.bytes = bytes;
  return t;
}

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds OUT_DIR\n");
    return 2;
  }
  g_out = argv[1];
  // ---- checkpoint layouts ----
  layout_seed("layout_gptq", "int4_g32", "gptq", int_weight(4, true, 32));
  layout_seed("layout_gptq", "int4_g32_act_order", "gptq", int_weight(4, true, 32, true));
  layout_seed("layout_gptq", "int8_channel", "gptq", int_weight(8, true, -1));
  layout_seed("layout_gptq", "int3_g32", "gptq", int_weight(3, true, 32));
  layout_seed("layout_gptq", "int2_g64", "gptq", int_weight(2, true, 64));
  layout_seed("layout_awq", "int4_g32", "awq", int_weight(4, false, 32));
  layout_seed("layout_awq", "int4_g64", "awq", int_weight(4, false, 64));
  layout_seed("layout_ct", "pack_int4_sym_g32", "pack-quantized", int_weight(4, true, 32));
  layout_seed("layout_ct", "pack_int4_asym_g32", "pack-quantized", int_weight(4, false, 32));
  layout_seed("layout_ct", "pack_int4_g_idx", "pack-quantized", int_weight(4, true, 32, true));
  layout_seed("layout_ct", "pack_int2_channel", "pack-quantized", int_weight(2, true, -1));
  layout_seed("layout_ct", "int8_channel", "int-quantized", int_weight(8, true, -1));
  layout_seed("layout_ct", "fp8_tensor", "float-quantized", fp8_weight(0));
  layout_seed("layout_ct", "fp8_channel_static_act", "float-quantized", fp8_weight(-1, ActQuant::FP8StaticTensor));
  layout_seed("layout_ct", "fp8_group", "float-quantized", fp8_weight(32, ActQuant::FP8DynamicToken));
  {  // vLLM fp8 (read only): per-tensor weight_scale, or 128x128 blocks with weight_scale_inv
    const QuantizedWeight w = fp8_weight(0);
    std::vector<uint8_t> q(w.q8.begin(), w.q8.end());
    put("layout_fp8", "per_tensor",
        fuzz::serialize_layout_input({{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}},
                                     {raw("m.weight", DType::F8_E4M3, {8, 64}, q),
                                      raw("m.weight_scale", DType::F32, {}, bytes_of(std::vector<float>{0.01f}))},
                                     "m"));
    put("layout_fp8", "static_act",
        fuzz::serialize_layout_input({{"quant_method", "fp8"}, {"activation_scheme", "static"}},
                                     {raw("m.weight", DType::F8_E4M3, {8, 64}, q),
                                      raw("m.weight_scale", DType::F32, {}, bytes_of(std::vector<float>{0.01f})),
                                      raw("m.input_scale", DType::F32, {}, bytes_of(std::vector<float>{0.02f}))},
                                     "m"));
    put("layout_fp8", "block_128",
        fuzz::serialize_layout_input(
            {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 128}}},
            {raw("m.weight", DType::F8_E4M3, {8, 64}, q),
             raw("m.weight_scale_inv", DType::F32, {1, 1}, bytes_of(std::vector<float>{0.01f}))},
            "m"));
  }
  // ---- safetensors header ----
  {
    const fs::path tmp = g_out / "tmp.safetensors";
    const float a[6] = {1, 2, 3, 4, 5, 6};
    const uint16_t b[2] = {0x3f80, 0x4000};
    TensorRef ta, tb, tc;
    ta.info = {"model.layers.0.mlp.up_proj.weight", DType::F32, {2, 3}, 24};
    ta.data = reinterpret_cast<const uint8_t*>(a);
    tb.info = {"model.norm.weight", DType::BF16, {2}, 4};
    tb.data = reinterpret_cast<const uint8_t*>(b);
    tc.info = {"empty", DType::I8, {0}, 0};
    write_safetensors(tmp, {ta, tb, tc});
    put("safetensors_header", "three_tensors", file_bytes(tmp));
    write_safetensors(tmp, {}, {});
    put("safetensors_header", "empty", file_bytes(tmp));
    fs::remove(tmp);
  }
  // ---- GGUF: metadata of every value type (arrays included) and one tensor per ggml type ----
  {
    const fs::path tmp = g_out / "tmp.gguf";
    GgufValue nested;
    nested.type = GgufType::ARRAY;
    nested.elem = GgufType::ARRAY;
    nested.items = {GgufValue::i32_array({1, -2}), GgufValue::i32_array({})};
    std::vector<std::pair<std::string, GgufValue>> kv = {
        {"general.architecture", GgufValue::str("qwen3")}, {"general.alignment", GgufValue::u32(32)},
        {"u64", GgufValue::u64(5)}, {"f32", GgufValue::f32(0.5f)}, {"flag", GgufValue::boolean(true)},
        {"tokens", GgufValue::str_array({"a", "b"})}, {"ids", GgufValue::i32_array({0, 1})}, {"nested", nested}};
    std::vector<GgufTensorDecl> decls;
    for (int i = 0; i < ggml_type_count(); ++i)
      decls.push_back({ggml_type_at(i).name, uint32_t(ggml_type_at(i).type), {256, 2}});
    GgufWriter w(tmp, kv, decls);
    std::vector<float> x(512);
    for (int i = 0; i < 512; ++i) x[i] = float(i % 37) * 0.1f - 1.5f;
    for (int i = 0; i < ggml_type_count(); ++i) {
      const GgmlTypeTraits& t = ggml_type_at(i);
      std::vector<uint8_t> q(ggml_row_bytes(t.type, 512));
      t.encode(x.data(), nullptr, 512, q.data());
      w.data(t.name, q.data(), q.size());
    }
    w.finish();
    put("gguf", "all_types", file_bytes(tmp));
    fs::remove(tmp);
  }
  // ---- shard index (the two shards fuzz_shard_index.cpp writes) ----
  put("shard_index", "index",
      json({{"metadata", {{"total_size", 38}}},
            {"weight_map",
             {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
              {"model.norm.weight", "model-00001-of-00002.safetensors"},
              {"lm_head.weight", "model-00002-of-00002.safetensors"}}}})
          .dump(2));
  // ---- Parquet tensor files written by llmc (checksums on and off, ZSTD) ----
  {
    const fs::path tmp = g_out / "tmp.parquet";
    const std::vector<uint8_t> w1(96, 0x3c), w2(10, 0x41);
    for (int v = 0; v < 3; ++v) {
      {
        ParquetTensorWriter w(tmp, 40, v == 2);
        w.set_checksums(v != 1);
        w.set_kv({{"llmc.format_version", "1"}, {"config.json", "{\"model_type\": \"qwen3\"}"}});
        w.add("model.embed_tokens.weight", DType::BF16, {8, 6}, w1.data(), w1.size());
        w.add("scalar", DType::F32, {}, w2.data(), 4);
        w.add("empty", DType::I8, {0, 3}, nullptr, 0);
        w.add("ids", DType::I16, {5}, w2.data(), 10);
        w.finish();
      }
      put("parquet_tensor", v == 0 ? "llmc_crc" : v == 1 ? "llmc_no_crc" : "llmc_zstd_crc", file_bytes(tmp));
    }
    fs::remove(tmp);
  }
  // ---- calibration records ----
  put("calib_jsonl", "shapes",
      "{\"text\": \"plain document\"}\n\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}], "
      "\"system_prompt\": \"be brief\"}\n"
      "{\"input\": \"question\", \"output\": \"answer\"}\n"
      "{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}\n"
      "{\"applied_message\": \"<|im_start|>user\\nx<|im_end|>\\n\"}\n");
  put("calib_file", "txt", std::string("\0", 1) + "A plain text document.\nSecond line, caf\xc3\xa9.\n");
  put("calib_file", "jsonl", std::string("\1", 1) + "{\"text\": \"one\"}\n{\"input\": \"a\", \"output\": \"b\"}\n");
  put("calib_file", "parquet", std::string("\2", 1) + file_bytes(fs::path(LLMC_SOURCE_DIR) /
                                                                "tests/data/calib-parquet/snappy_plain.parquet"));
  return 0;
}
