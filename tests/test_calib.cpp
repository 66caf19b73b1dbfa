// Calibration data: record shapes, chat rendering, windows, errors, `llmc calib`.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "calib/calib_data.h"
#include "core/error.h"
#include "core/fs.h"
#include "formats/checkpoint.h"
#include "formats/parquet.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

namespace llmc {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

fs::path write_file(const fs::path& dir, const std::string& name, const std::string& text) {
  const fs::path p = dir / name;
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

TEST(CalibRecords, EveryAcceptedShape) {
  const std::string jsonl =
      "{\"text\": \"plain doc\"}\n"
      "\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
      "\"content\": \"hello\"}], \"system_prompt\": \"be brief\"}\n"
      "{\"input\": \"question\", \"output\": \"answer\"}\n"
      "  \r\n"
      "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", "
      "\"value\": \"a\"}, {\"from\": \"system\", \"value\": \"s\"}]}\n"
      "{\"applied_message\": \"<|im_start|>user\\nx<|im_end|>\\n\"}";
  const auto r = parse_jsonl_records(jsonl, "mem.jsonl");
  ASSERT_EQ(r.size(), 5u);
  EXPECT_FALSE(r[0].is_chat());
  EXPECT_EQ(r[0].text, "plain doc");
  ASSERT_EQ(r[1].messages.size(), 3u);
  EXPECT_EQ(r[1].messages[0].role, "system");
  EXPECT_EQ(r[1].messages[0].content, "be brief");
  EXPECT_EQ(r[1].messages[2].role, "assistant");
  ASSERT_EQ(r[2].messages.size(), 2u);
  EXPECT_EQ(r[2].messages[0].role, "user");
  EXPECT_EQ(r[2].messages[0].content, "question");
  EXPECT_EQ(r[2].messages[1].role, "assistant");
  EXPECT_EQ(r[2].messages[1].content, "answer");
  ASSERT_EQ(r[3].messages.size(), 3u);
  EXPECT_EQ(r[3].messages[0].role, "user");
  EXPECT_EQ(r[3].messages[1].role, "assistant");
  EXPECT_EQ(r[3].messages[2].role, "system");
  EXPECT_FALSE(r[4].is_chat());
  EXPECT_EQ(r[4].text, "<|im_start|>user\nx<|im_end|>\n");
}

TEST(CalibRecords, EmptySystemPromptAddsNoMessage) {
  const auto r = parse_jsonl_records(
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"system_prompt\": \"\"}",
      "m");
  ASSERT_EQ(r.size(), 1u);
  ASSERT_EQ(r[0].messages.size(), 1u);
  EXPECT_EQ(r[0].messages[0].role, "user");
}

TEST(CalibRecords, ErrorsNameFileAndLine) {
  struct Case {
    std::string line, expect;
  };
  const std::vector<Case> cases = {
      {"{\"text\": 3}", "f.jsonl:2: \"text\" must be a string"},
      {"{not json", "f.jsonl:2: not valid JSON"},
      {"{\"prompt\": \"x\"}", "f.jsonl:2: unrecognized calibration record; accepted record shapes"},
      {"[1, 2]", "f.jsonl:2: a record must be a JSON object"},
      {"{\"messages\": []}", "\"messages\" is empty"},
      {"{\"messages\": \"x\"}", "\"messages\" must be a list"},
      {"{\"messages\": [1]}", "messages[0] must be an object"},
      {"{\"messages\": [{\"role\": \"user\"}]}", "messages[0]: missing \"content\""},
      {"{\"conversations\": [{\"from\": \"alien\", \"value\": \"x\"}]}",
       "unknown speaker \"alien\""},
      {"{\"input\": \"only input\"}", "missing \"output\""},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"system_prompt\": 1}",
       "\"system_prompt\" must be a string"},
  };
  for (const auto& c : cases) {
    const std::string msg =
        error_of([&] { parse_jsonl_records("{\"text\": \"ok\"}\n" + c.line + "\n", "f.jsonl"); });
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.line << " -> " << msg;
  }
}

TEST(CalibRecords, RenderChatMlAndPlain) {
  const std::vector<ChatMessage> m = {{"system", "S"}, {"user", "U"}, {"assistant", "A"}};
  EXPECT_EQ(render_chat(m, true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
            "<|im_start|>assistant\nA<|im_end|>\n");
  EXPECT_EQ(render_chat(m, false), "S\n\nU\n\nA");
  CalibRecord plain{"just text", {}};
  EXPECT_EQ(render_record(plain, true), "just text");
  CalibRecord chat{"", m};
  EXPECT_EQ(render_record(chat, false), "S\n\nU\n\nA");
}

TEST(CalibFiles, TxtIsOneDocumentJsonlIsRecords) {
  const fs::path d = test::temp_dir("calib-files");
  const auto t = read_calibration_records(write_file(d, "a.txt", "line one\n\nline two\n"));
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].text, "line one\n\nline two\n");
  const auto j = read_calibration_records(test::data_path("calibration-sample.jsonl"));
  EXPECT_GT(j.size(), 2u);
  bool saw_chat = false, saw_text = false;
  for (const auto& r : j) (r.is_chat() ? saw_chat : saw_text) = true;
  EXPECT_TRUE(saw_chat);
  EXPECT_TRUE(saw_text);
}

TEST(CalibFiles, ClearErrors) {
  const fs::path d = test::temp_dir("calib-errors");
  EXPECT_NE(error_of([&] { read_calibration_records(d / "missing.jsonl"); }).find("not found"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_calibration_records(write_file(d, "e.txt", " \n\t\n")); })
                .find("empty"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_calibration_records(write_file(d, "e.jsonl", "\n\n")); })
                .find("empty"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_calibration_records(write_file(d, "x.parquet", "PAR1")); })
                .find("not a Parquet file"),
            std::string::npos);
}

std::vector<int32_t> iota_tokens(int n) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = 1000 + i;
  return t;
}

TEST(CalibWindowsTest, DeterministicNonOverlappingRealTokens) {
  const auto tokens = iota_tokens(10007);
  const CalibWindows a = cut_windows(tokens, 20, 64, 7, "t");
  const CalibWindows b = cut_windows(tokens, 20, 64, 7, "t");
  const CalibWindows c = cut_windows(tokens, 20, 64, 8, "t");
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_NE(a.ids, c.ids);
  ASSERT_EQ(a.ids.size(), 20u * 64u);
  EXPECT_EQ(a.tokens_available, 10007);
  std::set<int32_t> seen;
  int32_t prev_start = -1;
  for (int s = 0; s < 20; ++s) {
    const int32_t first = a.ids[size_t(s) * 64];
    EXPECT_GT(first, prev_start) << "windows in slot order";
    prev_start = first;
    for (int k = 0; k < 64; ++k) {
      const int32_t v = a.ids[size_t(s) * 64 + k];
      EXPECT_EQ(v, first + k) << "window is a contiguous run of the input";
      EXPECT_GE(v, 1000);
      EXPECT_LT(v, 1000 + 10007);
      EXPECT_TRUE(seen.insert(v).second) << "windows overlap at token " << v;
    }
  }
  // Every window starts on the same slot grid (offset + k * seq).
  const int32_t off = (a.ids[0] - 1000) % 64;
  for (int s = 0; s < 20; ++s) EXPECT_EQ((a.ids[size_t(s) * 64] - 1000) % 64, off);
}

TEST(CalibWindowsTest, ExactFitUsesEveryToken) {
  const auto tokens = iota_tokens(4 * 32);
  const CalibWindows w = cut_windows(tokens, 4, 32, 123, "t");
  EXPECT_EQ(w.ids, tokens);
}

TEST(CalibWindowsTest, TooLittleDataSaysCounts) {
  const auto tokens = iota_tokens(1000);
  const std::string msg = error_of([&] { cut_windows(tokens, 16, 128, 0, "small.txt"); });
  EXPECT_NE(msg.find("small.txt has 1000 tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16 x 128 = 2048"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at most 7 windows"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { cut_windows({}, 1, 8, 0, "e"); }).find("no tokens"), std::string::npos);
  EXPECT_NE(error_of([&] { cut_windows(tokens, 0, 8, 0, "e"); }).find("--num-samples"),
            std::string::npos);
  EXPECT_NE(error_of([&] { cut_windows(tokens, 1, 1, 0, "e"); }).find("--seq-len"),
            std::string::npos);
}

Tokenizer qwen_tiny_tokenizer() { return Tokenizer::load(test::model_dir("qwen3-tiny")); }

// The fixture tokenizer without its ChatML added tokens.
Tokenizer tokenizer_without_chatml() {
  json j = json::parse(read_text_file(test::model_dir("qwen3-tiny") / "tokenizer.json"));
  json kept = json::array();
  for (const auto& t : j["added_tokens"]) {
    const std::string c = t["content"];
    if (c != "<|im_start|>" && c != "<|im_end|>") kept.push_back(t);
  }
  j["added_tokens"] = kept;
  j["model"]["vocab"].erase("<|im_start|>");
  j["model"]["vocab"].erase("<|im_end|>");
  return Tokenizer::from_json_text(j.dump(), "no-chatml");
}

TEST(CalibTokenize, ChatMlOnlyWhenTheTokenizerHasIt) {
  const Tokenizer with = qwen_tiny_tokenizer();
  const Tokenizer without = tokenizer_without_chatml();
  ASSERT_TRUE(tokenizer_has_chatml(with));
  ASSERT_FALSE(tokenizer_has_chatml(without));
  const std::vector<CalibRecord> recs = {{"", {{"user", "hello there"}, {"assistant", "hi"}}}};
  const auto a = tokenize_records(recs, with);
  const int32_t im_start = with.token_to_id("<|im_start|>");
  EXPECT_EQ(std::count(a.begin(), a.end(), im_start), 2);
  EXPECT_EQ(with.decode(a), "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n");
  const auto b = tokenize_records(recs, without);
  EXPECT_EQ(without.decode(b), "hello there\n\nhi");
}

TEST(CalibTokenize, DocumentsConcatenatedWithoutSeparators) {
  const Tokenizer tok = qwen_tiny_tokenizer();
  const std::vector<CalibRecord> recs = {{"first doc.", {}}, {" second doc.", {}}};
  auto expect = tok.encode("first doc.");
  const auto second = tok.encode(" second doc.");
  expect.insert(expect.end(), second.begin(), second.end());
  EXPECT_EQ(tokenize_records(recs, tok), expect);
}

TEST(CalibDefault, BundledTextsAreEmbedded) {
  EXPECT_EQ(std::string(default_calibration_text()),
            read_text_file(test::repo_root() / "data" / "calibration.txt"));
  EXPECT_EQ(std::string(default_eval_text()),
            read_text_file(test::repo_root() / "data" / "heldout-sample.txt"));
}

TEST(CalibDefault, DefaultWindowsFitTheBundledModel) {
  const Tokenizer tok = qwen_tiny_tokenizer();
  std::string origin;
  const CalibWindows w = load_calibration_windows({}, tok, 128, 256, 0, 4096, &origin);
  EXPECT_EQ(w.ids.size(), 128u * 256u);
  EXPECT_NE(origin.find("bundled"), std::string::npos);
  EXPECT_GT(w.tokens_available, 128 * 256);
  const std::string msg = error_of([&] { load_calibration_windows({}, tok, 4, 8192, 0, 4096); });
  EXPECT_NE(msg.find("--seq-len 8192 exceeds the model's max_position_embeddings 4096"),
            std::string::npos)
      << msg;
  const std::string many = error_of([&] { load_calibration_windows({}, tok, 100000, 256, 0, 4096); });
  EXPECT_NE(many.find("tokens, need --num-samples x --seq-len"), std::string::npos) << many;
}

TEST(CalibDefault, JsonlFileWindows) {
  const Tokenizer tok = qwen_tiny_tokenizer();
  const CalibWindows w =
      load_calibration_windows(test::data_path("calibration-sample.jsonl"), tok, 4, 32, 1, 4096);
  EXPECT_EQ(w.ids.size(), 4u * 32u);
}

TEST(CalibCli, WindowsWithModelAndDocumentsWithout) {
  const fs::path d = test::temp_dir("calib-cli");
  std::string out;
  const fs::path a = d / "a.jsonl";
  ASSERT_EQ(test::run_cli("calib --output " + a.string() + " --from " +
                              (test::repo_root() / "data" / "calibration.txt").string() + " " +
                              test::data_path("calibration-sample.jsonl").string() +
                              " --model " + test::model_dir("qwen3-tiny").string() +
                              " --num-samples 6 --seq-len 40 --seed 3",
                          &out),
            0)
      << out;
  const auto recs = read_calibration_records(a);
  ASSERT_EQ(recs.size(), 6u);
  for (const auto& r : recs) EXPECT_FALSE(r.text.empty());
  const fs::path b = d / "b.jsonl";
  ASSERT_EQ(test::run_cli("calib -o " + b.string() + " --from " +
                              test::data_path("calibration-sample.jsonl").string(),
                          &out),
            0)
      << out;
  EXPECT_EQ(read_calibration_records(b).size(),
            read_calibration_records(test::data_path("calibration-sample.jsonl")).size());
  // Too little data: non-zero exit, counts in the message, no output file.
  const fs::path c = d / "c.jsonl";
  EXPECT_NE(test::run_cli("calib -o " + c.string() + " --from " +
                              test::data_path("calibration-sample.jsonl").string() +
                              " --model " + test::model_dir("qwen3-tiny").string() +
                              " --num-samples 100000 --seq-len 64",
                          &out),
            0);
  EXPECT_NE(out.find("tokens, need"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(c));
}

// A dataset row that is not UTF-8 is refused with its row number, as .txt/.jsonl input is.
TEST(Calib, ParquetRowsMustBeUtf8) {
  std::string b = read_text_file(test::data_path("calib-parquet/delta_uncompressed.parquet"));
  EXPECT_NO_THROW(read_calibration_records(test::data_path("calib-parquet/delta_uncompressed.parquet")));
  const size_t at = b.find("The lioness ");  // a value stored verbatim (uncompressed pages, no CRC)
  ASSERT_NE(at, std::string::npos);
  b[at + 4] = char(0xff);
  const fs::path d = test::temp_dir("calib-parquet-utf8");
  write_text_file(d / "bad.parquet", b);
  const std::string e = error_of([&] { read_calibration_records(d / "bad.parquet"); });
  EXPECT_NE(e.find("is not UTF-8"), std::string::npos) << e;
  EXPECT_NE(e.find("bad.parquet"), std::string::npos) << e;
}

TEST(CalibCli, TokenizerFromAParquetModel) {
  const fs::path d = test::temp_dir("calib-parquet");
  const float one = 1.0f;
  {
    auto w = make_checkpoint_writer(d / "m.parquet", CheckpointFormat::Parquet);
    w->add_tensor("x", DType::F32, {1}, &one, 4);
    w->commit(nlohmann::json::object(),
              {{"tokenizer.json", read_text_file(test::model_dir("qwen3-tiny") / "tokenizer.json")}});
  }
  {
    auto w = make_checkpoint_writer(d / "notok.parquet", CheckpointFormat::Parquet);
    w->add_tensor("x", DType::F32, {1}, &one, 4);
    w->commit(nlohmann::json::object(), {});
  }
  std::string out;
  const std::string from = " --from " + (test::repo_root() / "data" / "calibration.txt").string();
  ASSERT_EQ(test::run_cli("calib -o " + (d / "a.jsonl").string() + from + " --model " +
                              (d / "m.parquet").string() + " --num-samples 2 --seq-len 16",
                          &out),
            0)
      << out;
  EXPECT_EQ(read_calibration_records(d / "a.jsonl").size(), 2u);
  EXPECT_NE(test::run_cli("calib -o " + (d / "b.jsonl").string() + from + " --model " +
                              (d / "notok.parquet").string(),
                          &out),
            0);
  EXPECT_NE(out.find("no tokenizer.json"), std::string::npos) << out;
}

// Datasets written by independent Parquet writers: hyparquet-writer (tests/interop/
// write_text.mjs: PLAIN/SNAPPY in one row group, GZIP over 5 row groups with small pages,
// DELTA_LENGTH_BYTE_ARRAY uncompressed) and pyarrow 25 (tests/interop/make_pyarrow_calib.py,
// what HuggingFace datasets writes: large_string text, a struct and a list<struct> column beside
// it; default dictionary/SNAPPY, ZSTD data page v2 without dictionary, GZIP dictionary with page
// index). Null and blank rows are skipped. expected.jsonl holds the same documents as {"text"}.
TEST(CalibParquet, TextColumnOfForeignDatasetFiles) {
  const auto expected = read_calibration_records(test::data_path("calib-parquet/expected.jsonl"));
  ASSERT_EQ(expected.size(), 94u);
  for (const char* f : {"snappy_plain.parquet", "gzip_rowgroups.parquet", "delta_uncompressed.parquet",
                        "pyarrow_default.parquet", "pyarrow_zstd_v2.parquet", "pyarrow_dict_gzip.parquet"}) {
    SCOPED_TRACE(f);
    const auto recs = read_calibration_records(test::data_path(std::string("calib-parquet/") + f));
    ASSERT_EQ(recs.size(), expected.size());
    for (size_t i = 0; i < recs.size(); ++i) {
      EXPECT_EQ(recs[i].text, expected[i].text) << "record " << i;
      EXPECT_FALSE(recs[i].is_chat());
    }
  }
}

TEST(CalibParquet, StringColumnReaderRowsNullsDictionaryAndErrors) {
  const fs::path f = test::data_path("calib-parquet/gzip_rowgroups.parquet");
  // "source" is dictionary-encoded (RLE_DICTIONARY) in every row group: i % 3 ? brown : wiki.
  std::vector<std::string> src;
  const ParquetColumnStats st = read_parquet_string_column(f, "source", [&](uint64_t row, std::string_view v) {
    EXPECT_EQ(row, src.size());
    src.emplace_back(v);
  });
  EXPECT_EQ(st.rows, 120u);
  EXPECT_EQ(st.nulls, 0u);
  ASSERT_EQ(src.size(), 120u);
  for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(src[i], i % 3 ? "brown" : "wiki") << i;
  // "text" is OPTIONAL: rows 3, 10, 17, ... are null and reported with their row numbers skipped.
  std::vector<uint64_t> rows;
  const ParquetColumnStats t = read_parquet_string_column(f, "text", [&](uint64_t row, std::string_view) {
    rows.push_back(row);
  });
  EXPECT_EQ(t.rows, 120u);
  EXPECT_EQ(t.nulls, 17u);
  EXPECT_EQ(rows.size(), 103u);
  for (uint64_t r : rows) EXPECT_NE(r % 7, 3u);
  auto nothing = [](uint64_t, std::string_view) {};
  const std::string missing = error_of([&] { read_parquet_string_column(f, "content", nothing); });
  EXPECT_NE(missing.find("no column 'content' (columns: id, text, tags.list.element, source)"),
            std::string::npos)
      << missing;
  EXPECT_NE(error_of([&] { read_parquet_string_column(f, "id", nothing); }).find("not a plain string column"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_parquet_string_column(f, "tags", nothing); }).find("not a plain string column"),
            std::string::npos);
}

TEST(CalibParquet, CorruptOrTextlessFilesNameTheFile) {
  const fs::path d = test::temp_dir("calib-parquet-bad");
  const std::string good = read_text_file(test::data_path("calib-parquet/snappy_plain.parquet"));
  // Truncations and byte flips: an llmc::Error naming the file, never a crash.
  for (size_t cut : {size_t(8), good.size() / 2, good.size() - 9, good.size() - 1}) {
    const fs::path p = write_file(d, "cut.parquet", good.substr(0, cut));
    const std::string msg = error_of([&] { read_calibration_records(p); });
    EXPECT_NE(msg.find(p.string()), std::string::npos) << cut << ": " << msg;
  }
  std::mt19937 rng(7);
  int errors = 0;
  for (int i = 0; i < 300; ++i) {
    std::string bad = good;
    bad[rng() % bad.size()] ^= char(1 + rng() % 255);
    const fs::path p = write_file(d, "flip.parquet", bad);
    try {
      read_calibration_records(p);  // a flip inside text bytes may still parse
    } catch (const Error& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(errors, 0);
  // A tensor file has no "text" column.
  const fs::path t = d / "tensors.parquet";
  {
    const float one = 1.0f;
    auto w = make_checkpoint_writer(t, CheckpointFormat::Parquet);
    w->add_tensor("x", DType::F32, {1}, &one, 4);
    w->commit(nlohmann::json::object(), {});
  }
  const std::string msg = error_of([&] { read_calibration_records(t); });
  EXPECT_NE(msg.find("no column 'text'"), std::string::npos) << msg;
}

TEST(CalibParquet, WindowsAndCliFromAParquetDataset) {
  const Tokenizer tok = qwen_tiny_tokenizer();
  const fs::path f = test::data_path("calib-parquet/snappy_plain.parquet");
  const CalibWindows a = load_calibration_windows(f, tok, 8, 64, 5, 4096);
  const CalibWindows b =
      load_calibration_windows(test::data_path("calib-parquet/expected.jsonl"), tok, 8, 64, 5, 4096);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.tokens_available, b.tokens_available);
  const fs::path d = test::temp_dir("calib-parquet-cli");
  std::string out;
  ASSERT_EQ(test::run_cli("calib -o " + (d / "c.jsonl").string() + " --from " + f.string(), &out), 0) << out;
  EXPECT_EQ(read_calibration_records(d / "c.jsonl").size(), 94u);
}

}  // namespace
}  // namespace llmc
