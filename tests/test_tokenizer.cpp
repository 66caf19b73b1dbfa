// Tests of the native byte-level BPE tokenizer against HF `tokenizers` outputs.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/threads.h"
#include "testing.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace llmc {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

const Tokenizer& qwen3() {
  static const Tokenizer t = Tokenizer::load(test::data_path("tokenizers/qwen3/tokenizer.json.gz"));
  return t;
}
const Tokenizer& fixture() {
  static const Tokenizer t = Tokenizer::load(test::data_path("tokenizers/fixture"));
  return t;
}

struct Case {
  std::string text;
  Ids ids;
  std::string decoded;
};
std::vector<Case> read_cases(const std::string& rel) {
  std::ifstream f(test::data_path(rel));
  EXPECT_TRUE(f.good()) << rel;
  std::vector<Case> v;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    const json j = json::parse(line);
    v.push_back({j.at("text").get<std::string>(), j.at("ids").get<Ids>(),
                 j.at("decoded").get<std::string>()});
  }
  return v;
}

std::string read_file(const std::filesystem::path& p) { return read_text_file(p); }

std::string heldout_text() { return read_file(test::data_path("eval/heldout.txt")); }

void check_encodings(const Tokenizer& tok, const std::string& rel, size_t expect_cases) {
  const auto cases = read_cases(rel);
  ASSERT_EQ(cases.size(), expect_cases) << rel;
  size_t bad_ids = 0, bad_text = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const Ids got = tok.encode(c.text);
    if (got != c.ids) {
      ++bad_ids;
      ADD_FAILURE() << rel << " line " << i + 1 << ": ids differ for text " << json(c.text).dump()
                    << "\n  got      " << json(got).dump() << "\n  expected " << json(c.ids).dump();
    }
    const std::string dec = tok.decode(c.ids);
    if (dec != c.decoded) {
      ++bad_text;
      ADD_FAILURE() << rel << " line " << i + 1 << ": decoded " << json(dec).dump()
                    << " expected " << json(c.decoded).dump();
    }
    EXPECT_EQ(tok.encode_parallel(c.text, 7), c.ids) << rel << " line " << i + 1;
  }
  EXPECT_EQ(bad_ids, 0u);
  EXPECT_EQ(bad_text, 0u);
}

// ---------------------------------------------------------------- reference encodings

TEST(Tokenizer, Qwen3EncodingsAllMatchHF) {
  check_encodings(qwen3(), "tokenizers/qwen3/encodings.jsonl", 327);
}

TEST(Tokenizer, FixtureEncodingsAllMatchHF) {
  check_encodings(fixture(), "tokenizers/fixture/encodings.jsonl", 327);
}

TEST(Tokenizer, SharedEncodingsMatchWhenPresent) {
  const auto dir = test::shared_path("tokenizers/qwen3/encodings.jsonl");
  if (dir.empty()) GTEST_SKIP() << "../shared/tokenizers not present";
  // The repo copies must equal the shared files (so the tests above cover them fully).
  for (const char* name : {"qwen3/encodings.jsonl", "fixture/encodings.jsonl", "fixture/tokenizer.json"}) {
    const std::string rel = std::string("tokenizers/") + name;
    EXPECT_EQ(read_file(test::shared_path(rel)), read_file(test::data_path(rel))) << rel;
  }
}

TEST(Tokenizer, FixtureModelsUseFixtureTokenizer) {
  for (const char* m : {"qwen3-tiny", "llama-tiny"}) {
    const Tokenizer t = Tokenizer::load(test::model_dir(m));
    const std::string s = "Hello world, this is <|im_start|>a test\n\n of 中文 text.";
    EXPECT_EQ(t.encode(s), fixture().encode(s)) << m;
    EXPECT_EQ(t.vocab_size(), 8192u) << m;
  }
}

TEST(Tokenizer, HeldoutTokenCountMatchesReference) {
  // models/*/reference.json: heldout.txt tokenized whole gives 121000 tokens.
  const json ref = json::parse(read_file(test::model_dir("qwen3-tiny") / "reference.json"));
  const Ids ids = fixture().encode(heldout_text());
  EXPECT_EQ(ids.size(), ref.at("heldout_tokens").get<size_t>());
}

// ---------------------------------------------------------------- parallel encoding

TEST(Tokenizer, EncodeParallelEqualsEncodeOnHeldout) {
  const std::string text = heldout_text();
  for (const Tokenizer* t : {&qwen3(), &fixture()}) {
    const Ids serial = t->encode(text);
    ASSERT_GT(serial.size(), 50000u);
    EXPECT_EQ(t->encode_parallel(text), serial);
    // Small chunks put cuts inside words, number runs and space runs: the stitching must
    // resynchronize with the serial pass every time.
    for (size_t chunk : {1u, 3u, 61u, 1000u, 40000u}) {
      const size_t n = chunk < 61 ? 20000 : text.size();
      const std::string_view part(text.data(), n);
      EXPECT_EQ(t->encode_parallel(part, chunk), t->encode(part)) << "chunk " << chunk;
    }
  }
}

TEST(Tokenizer, EncodeParallelHandlesAddedTokensAndHardCuts) {
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += "<|im_start|>user\n   spaces   and\t\ttabs 12345 it's     \n\n\n";
    text += (i % 3 == 0) ? "<|endoftext|>" : "naïve café 中文分词\r\n";
    text += std::string(size_t(i % 17), ' ');
  }
  for (size_t chunk : {5u, 64u, 333u}) EXPECT_EQ(qwen3().encode_parallel(text, chunk), qwen3().encode(text));
  const int saved = num_threads();
  set_num_threads(1);
  EXPECT_EQ(qwen3().encode_parallel(text, 64), qwen3().encode(text));
  set_num_threads(saved);
}

// Random text over the characters the Qwen regex cares about.
std::string random_text(std::mt19937& rng, size_t n) {
  static const char* const atoms[] = {" ", "  ", "\n", "\r\n", "\t", "a", "Zz", "'s", "'LL", "7",
                                      "42", "!", "?!", ".", "\xC3\xA9", "\xE4\xB8\xAD",
                                      "\xF0\x9F\x98\x80", "\xC2\xA0", "\xE3\x80\x80",
                                      "\xCC\x81", "<|im_start|>", "word", "_x"};
  std::string s;
  while (s.size() < n) s += atoms[rng() % (sizeof atoms / sizeof atoms[0])];
  return s;
}

TEST(Tokenizer, WindowedRegexNeverContradictsFullSearch) {
  const tok::Regex qwen(
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      false, "t");
  const tok::Regex gpt2(tok::kGpt2Pattern, false, "t");
  std::mt19937 rng(11);
  size_t decided = 0, undecided = 0;
  for (int it = 0; it < 20000; ++it) {
    const std::string s = random_text(rng, 1 + rng() % 60);
    const tok::Regex& re = it % 2 ? qwen : gpt2;
    size_t pos = rng() % s.size(), win = pos + rng() % (s.size() - pos + 1);
    while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) --pos;
    while (win < s.size() && (static_cast<unsigned char>(s[win]) & 0xC0) == 0x80) ++win;
    size_t b1 = 0, e1 = 0, b2 = 0, e2 = 0;
    const bool full = re.find(s, pos, &b1, &e1);
    const auto r = re.find_in(s, pos, win, &b2, &e2);
    if (r == tok::Regex::kMatch) {
      ++decided;
      ASSERT_TRUE(full);
      ASSERT_EQ(b1, b2);
      ASSERT_EQ(e1, e2);
      ASSERT_LE(e2, win);
    } else {
      ++undecided;
      if (r == tok::Regex::kNone) ASSERT_FALSE(full);
      else ASSERT_LT(win, s.size());
    }
  }
  EXPECT_GT(decided, 1000u);
  EXPECT_GT(undecided, 1000u);
}

TEST(Tokenizer, EncodeParallelEqualsEncodeOnRandomText) {
  std::mt19937 rng(5);
  for (int it = 0; it < 60; ++it) {
    const std::string s = random_text(rng, 200 + rng() % 3000);
    const size_t chunk = 1 + rng() % 300;
    ASSERT_EQ(qwen3().encode_parallel(s, chunk), qwen3().encode(s)) << "chunk " << chunk;
    ASSERT_EQ(fixture().encode_parallel(s, chunk), fixture().encode(s)) << "chunk " << chunk;
  }
  // Long runs that cross many chunks (one piece each) are handed to the serial pass.
  for (const std::string& s : {std::string(50000, 'a'), std::string(50000, ' '),
                               std::string(20000, '\n') + "x" + std::string(30000, '!')}) {
    EXPECT_EQ(qwen3().encode_parallel(s, 1000), qwen3().encode(s));
  }
}

// ---------------------------------------------------------------- edge cases

TEST(Tokenizer, EmptyAndWhitespaceOnly) {
  EXPECT_TRUE(qwen3().encode("").empty());
  EXPECT_TRUE(qwen3().encode_parallel("").empty());
  EXPECT_EQ(qwen3().decode({}), "");
  // From encodings.jsonl: " " -> [220], "  " -> [256], "\n\n\n" -> [1406].
  EXPECT_EQ(qwen3().encode(" "), (Ids{220}));
  EXPECT_EQ(qwen3().encode("  "), (Ids{256}));
  EXPECT_EQ(qwen3().encode("\n\n\n"), (Ids{1406}));
  for (const std::string& s : std::vector<std::string>{" \t \n", "\r\n\r\n", std::string(1000, ' '), std::string(300, '\n'),
                        std::string("\xE3\x80\x80 \xC2\xA0")}) {
    const Ids ids = qwen3().encode(s);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(qwen3().decode(ids), s);
  }
}

TEST(Tokenizer, AddedTokensAdjacentToText) {
  const Tokenizer& t = qwen3();
  const int32_t start = t.token_to_id("<|im_start|>"), eot = t.token_to_id("<|endoftext|>");
  EXPECT_EQ(start, 151644);
  EXPECT_EQ(eot, 151643);
  auto cat = [](std::initializer_list<Ids> parts) {
    Ids r;
    for (const auto& p : parts) r.insert(r.end(), p.begin(), p.end());
    return r;
  };
  EXPECT_EQ(t.encode("a<|endoftext|>b"), cat({t.encode("a"), {eot}, t.encode("b")}));
  EXPECT_EQ(t.encode("<|im_start|><|im_start|>"), (Ids{start, start}));
  EXPECT_EQ(t.encode(" <|im_start|>user "), cat({t.encode(" "), {start}, t.encode("user ")}));
  // A partial added token is ordinary text.
  const Ids partial = t.encode("<|im_start|");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), start), 0);
  EXPECT_EQ(t.decode(partial), "<|im_start|");
  EXPECT_EQ(t.decode(cat({t.encode("hi "), {eot}})), "hi <|endoftext|>");
  EXPECT_EQ(t.decode(cat({t.encode("hi "), {eot}}), /*skip_special_tokens=*/true), "hi ");
  EXPECT_TRUE(t.is_special(eot));
  EXPECT_FALSE(t.is_special(t.token_to_id("<tool_call>")));  // added, not special
  EXPECT_EQ(t.encode("<tool_call>x"), cat({{151657}, t.encode("x")}));
}

TEST(Tokenizer, InvalidUtf8IsReplacedLikePython) {
  const Tokenizer& t = qwen3();
  // bytes.decode("utf-8", "replace") semantics: one U+FFFD per maximal invalid subpart.
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(t.encode("a\xFF" "b"), t.encode("a" + r + "b"));
  EXPECT_EQ(t.encode("x\xE2\x82"), t.encode("x" + r));          // truncated 3-byte sequence
  EXPECT_EQ(t.encode("\xF0\x80\x80z"), t.encode(r + r + r + "z"));  // overlong lead
  EXPECT_EQ(t.encode("\xED\xA0\x80"), t.encode(r + r + r));      // surrogate
  EXPECT_EQ(t.encode_parallel(std::string(5000, '\xC3'), 100), t.encode(std::string(5000, '\xC3')));
  std::string out;
  tok::utf8_lossy_append("ok\xC3(\xE2\x82\xAC\xF4\x90\x80\x80!", out);
  EXPECT_EQ(out, "ok" + r + "(\xE2\x82\xAC" + r + r + r + r + "!");
  EXPECT_TRUE(tok::utf8_valid("\xF4\x8F\xBF\xBF"));
  EXPECT_FALSE(tok::utf8_valid("\xF4\x90\x80\x80"));
  EXPECT_FALSE(tok::utf8_valid("\xC0\xAF"));
}

TEST(Tokenizer, DecodeReplacesInvalidBytesAndSkipsUnknownIds) {
  const Tokenizer& t = qwen3();
  const Ids euro = t.encode("\xE2\x82\xAC");  // "€"
  ASSERT_FALSE(euro.empty());
  // Token of the single byte 0xE2 ('â' in the byte-level alphabet) alone is invalid UTF-8.
  const int32_t e2 = t.token_to_id("\xC3\xA2");
  ASSERT_GE(e2, 0);
  EXPECT_EQ(t.decode({e2}), "\xEF\xBF\xBD");
  EXPECT_EQ(t.decode({e2, t.token_to_id("a")}), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(t.decode({-1, 9707, 99999999, 1879}), "Hello world");
  EXPECT_EQ(t.decode(t.encode("\xF0\x9F\x98\x80")), "\xF0\x9F\x98\x80");
}

TEST(Tokenizer, NfcNormalization) {
  const Tokenizer& t = qwen3();
  EXPECT_EQ(t.encode("e\xCC\x81"), t.encode("\xC3\xA9"));           // e + U+0301 -> é
  EXPECT_EQ(t.encode("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"), t.encode("\xED\x95\x9C"));  // Hangul jamo -> 한
  EXPECT_EQ(t.encode("A\xCC\x8A\xCC\xA3"), t.encode("\xE1\xBA\xA0\xCC\x8A"));  // reordering: Ạ + ring
  EXPECT_TRUE(tok::nfc_is_normalized("plain ascii and caf\xC3\xA9"));
  EXPECT_FALSE(tok::nfc_is_normalized("cafe\xCC\x81"));
  std::string n;
  tok::nfc_append("\xE2\x84\xAB", n);  // ANGSTROM SIGN is a singleton -> Å
  EXPECT_EQ(n, "\xC3\x85");
}

TEST(Tokenizer, VocabularyAccessors) {
  const Tokenizer& t = qwen3();
  EXPECT_EQ(t.vocab_size(), 151669u);
  EXPECT_EQ(t.token_to_id("Hello"), 9707);
  EXPECT_EQ(t.id_to_token(9707), "Hello");
  EXPECT_EQ(t.id_to_token(151645), "<|im_end|>");
  EXPECT_EQ(t.token_to_id("<|im_end|>"), 151645);
  EXPECT_EQ(t.id_to_token(220), "\xC4\xA0");  // "Ġ"
  EXPECT_EQ(t.token_to_id("definitely not a token"), -1);
  EXPECT_FALSE(t.has_token("definitely not a token"));
  EXPECT_TRUE(t.has_token("<think>"));
  EXPECT_EQ(t.id_to_token(-1), "");
  EXPECT_EQ(t.id_to_token(1 << 29), "");
  EXPECT_FALSE(t.is_special(-3));
  EXPECT_NE(t.origin().find("tokenizer.json.gz"), std::string::npos);
  const Tokenizer copy = t;  // copies share the state
  EXPECT_EQ(copy.encode("shared state"), t.encode("shared state"));
  Tokenizer empty;
  EXPECT_TRUE(empty.empty());
  EXPECT_THROW(empty.encode("x"), Error);
}

TEST(Tokenizer, TruncationAndPaddingAreNeverApplied) {
  // AngelSlim bakes truncation/padding to 256 into its tokenizer.json.
  const Tokenizer t = Tokenizer::load(test::data_path("peers/angelslim-qwen3-tiny/int4_gptq"));
  const std::string text = heldout_text().substr(0, 20000);
  const Ids ids = t.encode(text);
  EXPECT_GT(ids.size(), 256u);
  EXPECT_EQ(ids, fixture().encode(text));
  EXPECT_EQ(t.encode("hi").size(), fixture().encode("hi").size());  // no padding either
}

// ---------------------------------------------------------------- BPE internals

TEST(Tokenizer, BpeScanAndHeapAgree) {
  // The fixture vocabulary and merges, through the internal model.
  const json j = json::parse(read_file(test::data_path("tokenizers/fixture/tokenizer.json")));
  std::vector<std::pair<std::string, int32_t>> vocab;
  for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it)
    vocab.emplace_back(it.key(), it.value().get<int32_t>());
  std::vector<std::pair<std::string, std::string>> merges;
  for (const auto& m : j["model"]["merges"]) merges.emplace_back(m[0], m[1]);
  const tok::Bpe bpe(vocab, merges, {}, "fixture");
  EXPECT_EQ(bpe.num_merges(), merges.size());
  EXPECT_EQ(bpe.max_id(), 8191);
  std::mt19937 rng(7);
  const std::string held = heldout_text();
  for (int i = 0; i < 3000; ++i) {
    std::string w;
    if (i % 3 == 0) {
      const size_t len = 1 + rng() % (i % 2 ? 300 : 20);
      for (size_t k = 0; k < len; ++k) w += char(rng() % 256);
    } else {
      const size_t at = rng() % (held.size() - 400);
      w = held.substr(at, 1 + rng() % (i % 2 ? 400 : 24));
    }
    Ids a, b, c;
    bpe.merge_word(w, a, tok::Bpe::Algo::Scan);
    bpe.merge_word(w, b, tok::Bpe::Algo::Heap);
    bpe.encode_word(w, c);
    ASSERT_EQ(a, b) << json(w).dump(-1, ' ', false, json::error_handler_t::replace);
    ASSERT_EQ(a, c);
  }
}

// A small byte-level tokenizer.json built in the test: all 256 byte characters plus merges.
json tiny_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges, bool string_merges) {
  json vocab = json::object();
  int32_t next = 0;
  for (uint32_t cp : tok::byte_to_unicode()) {
    std::string s;
    tok::utf8_append(cp, s);
    vocab[s] = next++;
  }
  json m = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    if (string_merges) m.push_back(a + " " + b);
    else m.push_back(json::array({a, b}));
  }
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = json::array();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                        {"use_regex", true}};
  j["post_processor"] = nullptr;
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab}, {"merges", m}};
  return j;
}

std::vector<std::string> pieces(const Tokenizer& t, const std::string& s) {
  std::vector<std::string> v;
  for (int32_t id : t.encode(s)) v.push_back(t.id_to_token(id));
  return v;
}
using Strs = std::vector<std::string>;

TEST(Tokenizer, MergeFormsRanksAndIgnoreMerges) {
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "b"}, {"b", "c"}, {"ab", "c"}, {"a", "a"}, {"\xC4\xA0", "x"}};
  const Tokenizer s = Tokenizer::from_json_text(tiny_tokenizer(merges, true).dump(), "s");
  const Tokenizer a = Tokenizer::from_json_text(tiny_tokenizer(merges, false).dump(), "a");
  EXPECT_EQ(pieces(s, "abc"), (Strs{"abc"}));  // ab (rank 0) first, then ab+c
  EXPECT_EQ(pieces(s, "bc"), (Strs{"bc"}));
  EXPECT_EQ(pieces(s, "aaa"), (Strs{"aa", "a"}));  // equal ranks: leftmost first
  EXPECT_EQ(pieces(s, "abcaaa x"), (Strs{"abc", "aa", "a", "\xC4\xA0x"}));
  EXPECT_EQ(s.encode("abcaaa x abbc"), a.encode("abcaaa x abbc"));
  // ignore_merges: a word that is a vocab token is taken whole even without a merge path.
  json j = tiny_tokenizer(merges, true);
  j["model"]["vocab"]["xyz"] = 5000;
  EXPECT_EQ(pieces(Tokenizer::from_json_text(j.dump(), "j"), "xyz"), (Strs{"x", "y", "z"}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(pieces(Tokenizer::from_json_text(j.dump(), "j"), "xyz"), (Strs{"xyz"}));
  // A repeated merge keeps its last rank: (b,c) now ranks after (ab,c)... and after (a,b).
  json d = tiny_tokenizer({{"b", "c"}, {"a", "b"}, {"b", "c"}}, true);
  EXPECT_EQ(pieces(Tokenizer::from_json_text(d.dump(), "d"), "abc"), (Strs{"ab", "c"}));
  json d2 = tiny_tokenizer({{"b", "c"}, {"a", "b"}}, true);
  EXPECT_EQ(pieces(Tokenizer::from_json_text(d2.dump(), "d2"), "abc"), (Strs{"a", "bc"}));
}

TEST(Tokenizer, ByteLevelPrefixSpaceAndSplitBehaviors) {
  json j = tiny_tokenizer({{"\xC4\xA0", "h"}, {"\xC4\xA0h", "i"}}, true);
  EXPECT_EQ(pieces(Tokenizer::from_json_text(j.dump(), "p"), "hi"), (Strs{"h", "i"}));
  j["pre_tokenizer"]["add_prefix_space"] = true;
  const Tokenizer p = Tokenizer::from_json_text(j.dump(), "p");
  EXPECT_EQ(pieces(p, "hi"), (Strs{"\xC4\xA0hi"}));
  EXPECT_EQ(pieces(p, " hi"), (Strs{"\xC4\xA0hi"}));
  EXPECT_EQ(p.decode(p.encode("hi")), " hi");
  EXPECT_EQ(p.encode_parallel("hi hi hi hi hi", 2), p.encode("hi hi hi hi hi"));
  // Split(Removed) on a literal string, then ByteLevel without regex.
  json r = tiny_tokenizer({}, true);
  r["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"String", "--"}}}, {"behavior", "Removed"},
                           {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  const Tokenizer rt = Tokenizer::from_json_text(r.dump(), "r");
  EXPECT_EQ(pieces(rt, "a--b---c"), (Strs{"a", "b", "-", "c"}));
  // ByteLevel after a Split prefixes every piece of the split (HF prepends per split).
  json q = tiny_tokenizer({{"\xC4\xA0", "a"}}, true);
  q["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", "Isolated"}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", false}}}}};
  EXPECT_EQ(pieces(Tokenizer::from_json_text(q.dump(), "q"), "a-b"),
            (Strs{"\xC4\xA0" "a", "\xC4\xA0", "-", "\xC4\xA0", "b"}));
  // No decoder: tokens joined with spaces, as HF does.
  r["decoder"] = nullptr;
  EXPECT_EQ(Tokenizer::from_json_text(r.dump(), "r").decode({int32_t('a'), int32_t('b')}), "a b");
}

TEST(Tokenizer, EmptyRegexMatchesSplitLikeOniguruma) {
  // HF iterates Oniguruma matches; an empty match cuts the text but yields no piece, and an
  // empty match right after a match is skipped.
  json j = tiny_tokenizer({{"x", "x"}}, true);
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", "x*"}}}, {"behavior", "Isolated"},
                           {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  j["model"]["vocab"]["ab"] = 4000;
  j["model"]["merges"].push_back("a b");
  const Tokenizer t = Tokenizer::from_json_text(j.dump(), "empty");
  EXPECT_EQ(pieces(t, "abxxc"), (Strs{"a", "b", "xx", "c"}));
  EXPECT_EQ(pieces(t, "ab"), (Strs{"a", "b"}));  // every position is cut
  EXPECT_EQ(t.encode_parallel("abxxcabxxxab", 1), t.encode("abxxcabxxxab"));
  // A pattern that never matches leaves one piece.
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "q+"}};
  EXPECT_EQ(pieces(Tokenizer::from_json_text(j.dump(), "none"), "ab ab"), (Strs{"ab", "\xC4\xA0", "ab"}));
}

TEST(Tokenizer, UnknownBytesUseUnkTokenOrVanish) {
  json j = tiny_tokenizer({}, true);
  j["model"]["vocab"].erase("z");
  j["model"]["vocab"]["<unk>"] = 122;  // the id 'z' had
  auto ids = [&](bool unk, bool fuse, const std::string& s) {
    json k = j;
    k["model"]["unk_token"] = unk ? json("<unk>") : json(nullptr);
    k["model"]["fuse_unk"] = fuse;
    return Tokenizer::from_json_text(k.dump(), "unk").encode(s);
  };
  EXPECT_EQ(ids(true, true, "azzb"), (Ids{97, 122, 98}));
  EXPECT_EQ(ids(true, false, "azzb"), (Ids{97, 122, 122, 98}));
  EXPECT_EQ(ids(true, false, "z"), (Ids{122}));
  EXPECT_EQ(ids(false, false, "azzb"), (Ids{97, 98}));  // HF drops it without unk_token
  json k = j;
  k["model"]["unk_token"] = "<nope>";
  EXPECT_EQ(Tokenizer::from_json_text(k.dump(), "unk").encode("azb"), (Ids{97, 98}));
  // byte_fallback is harmless with a complete byte alphabet, refused without one.
  json f = tiny_tokenizer({}, true);
  f["model"]["byte_fallback"] = true;
  EXPECT_EQ(Tokenizer::from_json_text(f.dump(), "bf").encode("hi"), (Ids{104, 105}));
  j["model"]["byte_fallback"] = true;
  EXPECT_THROW(Tokenizer::from_json_text(j.dump(), "bf"), Error);
}

TEST(Tokenizer, ByteLevelOnlyWithoutRegexEncodesWholeSegments) {
  json j = tiny_tokenizer({{"a", "b"}, {"\xC4\xA0", "a"}}, true);
  j["pre_tokenizer"]["use_regex"] = false;
  j["decoder"] = {{"type", "Sequence"}, {"decoders", {{{"type", "ByteLevel"}}}}};
  const Tokenizer t = Tokenizer::from_json_text(j.dump(), "bl");
  // One word: (a,b) has the lowest rank, so both "ab" form before (Ġ,a) could apply.
  EXPECT_EQ(pieces(t, "ab ab"), (Strs{"ab", "\xC4\xA0", "ab"}));
  EXPECT_EQ(pieces(t, "b ab"), (Strs{"b", "\xC4\xA0", "ab"}));
  EXPECT_EQ(pieces(t, "b a"), (Strs{"b", "\xC4\xA0" "a"}));
  std::string long_text;
  for (int i = 0; i < 3000; ++i) long_text += "ab ab\n";
  EXPECT_EQ(t.encode_parallel(long_text, 100), t.encode(long_text));
  EXPECT_EQ(t.decode(t.encode(long_text)), long_text);
}

TEST(Tokenizer, Utf8Helpers) {
  std::string s;
  for (uint32_t cp : {0x41u, 0x3A9u, 0x4E2Du, 0x1F600u}) tok::utf8_append(cp, s);
  EXPECT_EQ(s, "A\xCE\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80");
  size_t len, i = 0;
  std::vector<uint32_t> cps;
  while (i < s.size()) {
    cps.push_back(tok::utf8_decode(s, i, &len));
    i += len;
  }
  EXPECT_EQ(cps, (std::vector<uint32_t>{0x41, 0x3A9, 0x4E2D, 0x1F600}));
  EXPECT_EQ(tok::utf8_prev(s, s.size()), s.size() - 4);
  EXPECT_TRUE(tok::is_white_space(0x3000));
  EXPECT_FALSE(tok::is_white_space(0x180E));
  EXPECT_TRUE(tok::is_word_char(0x4E2D));
  EXPECT_TRUE(tok::is_word_char('_'));
  EXPECT_FALSE(tok::is_word_char('-'));
  EXPECT_EQ(tok::unicode_to_byte(0x120), 32);  // 'Ġ' is the space byte
  EXPECT_EQ(tok::unicode_to_byte(0x4E2D), -1);
}

TEST(Tokenizer, AddedTokenFlags) {
  json j = tiny_tokenizer({}, true);
  auto add = [&](int id, const std::string& c, bool lstrip, bool rstrip, bool single, bool norm) {
    j["added_tokens"].push_back({{"id", id}, {"content", c}, {"single_word", single},
                                 {"lstrip", lstrip}, {"rstrip", rstrip}, {"normalized", norm},
                                 {"special", !norm}});
  };
  add(300, "[L]", true, false, false, false);
  add(301, "[R]", false, true, false, false);
  add(302, "cat", false, false, true, false);
  add(303, "[LONG]", false, false, false, false);
  add(304, "[LONG]X", false, false, false, false);
  add(305, "\xC3\xA9t\xC3\xA9", false, false, false, true);  // "été", matched after NFC
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
  const Tokenizer t = Tokenizer::from_json_text(j.dump(), "flags");
  auto ids = [&](const std::string& s) { return t.encode(s); };
  auto ch = [](char c) { return int32_t(static_cast<unsigned char>(c)); };  // id = byte value
  EXPECT_EQ(ids("a  [L]b"), (Ids{ch('a'), 300, ch('b')}));      // lstrip eats the spaces
  EXPECT_EQ(ids("a[R]  b"), (Ids{ch('a'), 301, ch('b')}));      // rstrip eats the spaces
  EXPECT_EQ(ids("cat"), (Ids{302}));
  EXPECT_EQ(ids("a cat!"), (Ids{ch('a'), ch(' '), 302, ch('!')}));
  EXPECT_EQ(ids("cats"), (Ids{ch('c'), ch('a'), ch('t'), ch('s')}));  // not a single word
  EXPECT_EQ(ids("[LONG]X[LONG]"), (Ids{304, 303}));              // longest match first
  EXPECT_EQ(ids("ete\xCC\x81 e\xCC\x81t\xC3\xA9"), ids("ete\xCC\x81 \xC3\xA9t\xC3\xA9"));
  EXPECT_EQ(ids("x\xC3\xA9t\xC3\xA9"), (Ids{ch('x'), 305}));
  EXPECT_EQ(t.decode({300, 301}), "[L][R]");
  EXPECT_EQ(t.id_to_token(305), "\xC3\xA9t\xC3\xA9");
  EXPECT_EQ(t.vocab_size(), 306u);
}

TEST(Tokenizer, RegexUsesOnigurumaClasses) {
  // Oniguruma \s is White_Space: U+0085 and U+3000 yes, U+180E (which PCRE2 counts) no.
  const tok::Regex re("\\s", false, "t");
  size_t b, e;
  EXPECT_TRUE(re.find("\xC2\x85", 0, &b, &e));
  EXPECT_TRUE(re.find("\xE3\x80\x80", 0, &b, &e));
  EXPECT_FALSE(re.find("\xE1\xA0\x8E", 0, &b, &e));
  const tok::Regex ns("[^\\s]+", false, "t");
  ASSERT_TRUE(ns.find("  \xE1\xA0\x8E ", 0, &b, &e));
  EXPECT_EQ(b, 2u);
  EXPECT_EQ(e, 5u);
  EXPECT_EQ(tok::Regex::translate_onig("[]a]\\w"), "[]a][\\p{L}\\p{M}\\p{N}\\p{Pc}]");
  EXPECT_EQ(tok::Regex::translate_onig("\\h\\H[\\h\\W]\\W"),
            "[0-9a-fA-F][^0-9a-fA-F][0-9a-fA-F\\W][^\\p{L}\\p{M}\\p{N}\\p{Pc}]");
  const tok::Regex hex("\\h+", false, "t");  // Oniguruma \h is a hex digit, not a blank
  ASSERT_TRUE(hex.find("zz 0fA9 ", 0, &b, &e));
  EXPECT_EQ(std::make_pair(b, e), std::make_pair(size_t(3), size_t(7)));
  const tok::Regex lit("a.b", true, "t");
  EXPECT_FALSE(lit.find("axb", 0, &b, &e));
  EXPECT_TRUE(lit.find("xa.b", 0, &b, &e));
  EXPECT_EQ(b, 1u);
  // Case-insensitive contractions as in the Qwen/Llama-3 pattern.
  const Tokenizer& q = qwen3();
  EXPECT_EQ(q.encode("IT'S"), (Ids{q.encode("IT")[0], q.encode("'S")[0]}));
}

// ---------------------------------------------------------------- bad input

TEST(Tokenizer, CorruptFilesThrowErrorsNamingTheFile) {
  const auto dir = test::temp_dir("tok");
  auto expect_error = [&](const std::filesystem::path& p, const std::string& needle) {
    try {
      Tokenizer::load(p);
      ADD_FAILURE() << "no error for " << p;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p.filename().string()), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  const std::string good = read_file(test::data_path("tokenizers/fixture/tokenizer.json"));
  write_text_file(dir / "truncated.json", good.substr(0, good.size() / 2));
  expect_error(dir / "truncated.json", "invalid JSON");
  write_text_file(dir / "array.json", "[1, 2]");
  expect_error(dir / "array.json", "not a tokenizer.json");
  std::string gz = read_file(test::data_path("tokenizers/qwen3/tokenizer.json.gz"));
  write_text_file(dir / "cut.json.gz", gz.substr(0, gz.size() / 3));
  expect_error(dir / "cut.json.gz", "gzip");
  gz[gz.size() / 2] ^= 0x55;
  write_text_file(dir / "flipped.json.gz", gz);
  expect_error(dir / "flipped.json.gz", "gzip");
  expect_error(dir / "missing.json", "not found");
  std::filesystem::create_directories(dir / "emptydir");
  expect_error(dir / "emptydir", "no tokenizer.json");

  auto with = [&](const std::string& name, const std::function<void(json&)>& edit,
                  const std::string& needle) {
    json j = json::parse(good);
    edit(j);
    write_text_file(dir / name, j.dump());
    expect_error(dir / name, needle);
  };
  with("nfkc.json", [](json& j) { j["normalizer"] = {{"type", "NFKC"}}; }, "unsupported normalizer");
  with("wp.json", [](json& j) { j["model"]["type"] = "WordPiece"; }, "unsupported model");
  with("merge.json", [](json& j) { j["model"]["merges"].push_back(json::array({"zzq", "qzz"})); },
       "not in the vocabulary");
  with("merge3.json", [](json& j) { j["model"]["merges"][0] = "a b c"; }, "two tokens");
  with("badid.json", [](json& j) { j["model"]["vocab"]["hello"] = "x"; }, "not an integer");
  with("regex.json",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; },
       "cannot compile regex");
  with("noblevel.json", [](json& j) { j["pre_tokenizer"] = nullptr; }, "ByteLevel");
  with("dropout.json", [](json& j) { j["model"]["dropout"] = 0.1; }, "dropout");
  with("behavior.json",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithNext"; },
       "MergedWithNext");
  with("added.json", [](json& j) { j["added_tokens"][0].erase("content"); }, "added_tokens[0]");
  with("decoder.json", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "decoder");
  with("prefix.json", [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; },
       "continuing_subword_prefix");
  with("negid.json", [](json& j) { j["model"]["vocab"]["hello"] = -4; }, "invalid id");
  with("mergesobj.json", [](json& j) { j["model"]["merges"] = json::object(); }, "merges must be an array");
  with("mergenum.json", [](json& j) { j["model"]["merges"][1] = 7; }, "merges[1]");
  with("mergepair.json", [](json& j) { j["model"]["merges"][2] = json::array({"a"}); }, "merges[2]");
  with("vocabarr.json", [](json& j) { j["model"]["vocab"] = json::array(); }, "vocab must be an object");
  with("unk.json", [](json& j) { j["model"]["unk_token"] = 3; }, "unk_token");
  with("pattern.json",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Foo", "x"}}; },
       "Regex");
  with("ws.json", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "Whitespace");
  with("twobl.json",
       [](json& j) {
         j["pre_tokenizer"]["pretokenizers"].push_back(j["pre_tokenizer"]["pretokenizers"][1]);
       },
       "ByteLevel");
  with("notype.json", [](json& j) { j["normalizer"] = json::object(); }, "type");
  with("addedid.json", [](json& j) { j["added_tokens"][1]["id"] = "7"; }, "added_tokens[1]");
  with("decseq.json",
       [](json& j) { j["decoder"] = {{"type", "Sequence"}, {"decoders", {j["decoder"], j["decoder"]}}}; },
       "decoder");
  with("invert.json", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true; },
       "invert");
  with("boolstr.json", [](json& j) { j["added_tokens"][0]["lstrip"] = "yes"; }, "lstrip");
}

}  // namespace
}  // namespace llmc
