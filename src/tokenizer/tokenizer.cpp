#include "tokenizer/tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/threads.h"
#include "tokenizer/added_vocab.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretok.h"
#include "tokenizer/unicode.h"

namespace llmc {

using json = nlohmann::json;
using namespace tok;

struct Tokenizer::Impl {
  std::string origin;
  bool nfc = false;
  PreTokenizer pretok;
  std::unique_ptr<Bpe> bpe;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into `added`
  AddedMatcher raw_matcher, norm_matcher;
  bool byte_level_decoder = true;
  std::vector<std::string> decoded;  // per id: what the decoder turns the token into
  std::vector<uint8_t> present, special;
  int32_t max_id = -1;

  // The text of one encode call cut into added tokens and normalized text segments.
  struct Prepared {
    std::string sanitized;
    std::vector<std::unique_ptr<std::string>> owned;  // stable addresses for the views below
    struct Seg {
      int32_t id;  // added token, or -1
      std::string_view text;
    };
    std::vector<Seg> segs;
  };
  void prepare(std::string_view text, Prepared& p) const;
  void push_text(std::string_view t, Prepared& p) const;
  void encode_segment(std::string_view seg, std::vector<int32_t>& out) const {
    pretok.run_first(seg, 0, seg.size(), [](size_t) { return true; },
                     [&](std::string_view w) { bpe->encode_word(w, out); });
  }
};

// ---------------------------------------------------------------- loading

namespace {

std::string gunzip(const std::string& data, const std::string& origin) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) fail(origin, ": zlib init failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = uInt(data.size());
  std::string out;
  char buf[1 << 16];
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      const std::string msg = zs.msg ? zs.msg : "error " + std::to_string(rc);
      inflateEnd(&zs);
      fail(origin, ": corrupt gzip data: ", rc == Z_BUF_ERROR ? "truncated stream" : msg);
    }
    out.append(buf, sizeof buf - zs.avail_out);
  } while (rc != Z_STREAM_END);
  inflateEnd(&zs);
  return out;
}

const json* member(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& j, const char* key, bool dflt, const std::string& where) {
  const json* v = member(j, key);
  if (!v) return dflt;
  if (!v->is_boolean()) fail(where, ".", key, " must be a boolean");
  return v->get<bool>();
}

std::string type_of(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, " must be an object");
  const json* t = member(j, "type");
  if (!t || !t->is_string()) fail(where, " has no \"type\"");
  return t->get<std::string>();
}

void parse_normalizer(const json& j, const std::string& where, bool* nfc) {
  const std::string t = type_of(j, where);
  if (t == "NFC") {
    *nfc = true;
  } else if (t == "Sequence") {
    const json* list = member(j, "normalizers");
    if (!list || !list->is_array()) fail(where, ".normalizers must be an array");
    for (size_t i = 0; i < list->size(); ++i)
      parse_normalizer((*list)[i], where + ".normalizers[" + std::to_string(i) + "]", nfc);
  } else {
    fail(where, ": unsupported normalizer type \"", t, "\" (supported: NFC, Sequence)");
  }
}

void parse_pretok(const json& j, const std::string& where, const std::string& origin,
                  std::vector<PreTokStep>& steps) {
  const std::string t = type_of(j, where);
  if (t == "Sequence") {
    const json* list = member(j, "pretokenizers");
    if (!list || !list->is_array()) fail(where, ".pretokenizers must be an array");
    for (size_t i = 0; i < list->size(); ++i)
      parse_pretok((*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]", origin, steps);
  } else if (t == "Split") {
    PreTokStep st;
    st.kind = PreTokStep::kSplit;
    const json* pat = member(j, "pattern");
    if (!pat || !pat->is_object()) fail(where, ".pattern must be an object");
    if (const json* r = member(*pat, "Regex"); r && r->is_string()) {
      st.re = std::make_shared<Regex>(r->get<std::string>(), false, where);
    } else if (const json* s = member(*pat, "String"); s && s->is_string()) {
      st.re = std::make_shared<Regex>(s->get<std::string>(), true, where);
    } else {
      fail(where, ".pattern needs \"Regex\" or \"String\"");
    }
    const json* beh = member(j, "behavior");
    const std::string b = beh && beh->is_string() ? beh->get<std::string>() : "";
    if (b == "Removed") st.remove_matches = true;
    else if (b != "Isolated")
      fail(where, ": unsupported Split behavior \"", b, "\" (supported: Isolated, Removed)");
    if (get_bool(j, "invert", false, where)) fail(where, ": Split with invert=true is not supported");
    steps.push_back(std::move(st));
  } else if (t == "ByteLevel") {
    PreTokStep st;
    st.kind = PreTokStep::kByteLevel;
    st.add_prefix_space = get_bool(j, "add_prefix_space", true, where);
    if (get_bool(j, "use_regex", true, where))
      st.re = std::make_shared<Regex>(kGpt2Pattern, false, where);
    steps.push_back(std::move(st));
  } else {
    fail(where, ": unsupported pre_tokenizer type \"", t,
         "\" (supported: ByteLevel, Split, Sequence)");
  }
}

bool parse_decoder(const json& j, const std::string& where) {  // true: ByteLevel
  const std::string t = type_of(j, where);
  if (t == "ByteLevel") return true;
  if (t == "Sequence") {
    const json* list = member(j, "decoders");
    if (!list || !list->is_array()) fail(where, ".decoders must be an array");
    if (list->size() == 1) return parse_decoder((*list)[0], where + ".decoders[0]");
  }
  fail(where, ": unsupported decoder \"", t, "\" (supported: ByteLevel)");
}

// SAX reader of tokenizer.json: model.vocab and model.merges (the bulk of the file) go straight
// into vectors; everything else becomes a small json document.
class TokenizerJsonReader : public json::json_sax_t {
 public:
  json root;
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  bool have_vocab = false, have_merges = false;
  std::string error;

  bool null() override { return value(json(nullptr)); }
  bool boolean(bool v) override { return value(json(v)); }
  bool number_integer(number_integer_t v) override {
    if (mode_ == kVocab) return vocab_id(v);
    return value(json(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == kVocab) return vocab_id(v > number_unsigned_t(INT64_MAX) ? -1 : int64_t(v));
    return value(json(v));
  }
  bool number_float(number_float_t v, const string_t&) override { return value(json(v)); }
  bool binary(binary_t&) override { return bad("binary value"); }
  bool string(string_t& v) override {
    if (mode_ == kMerges) {
      const size_t sp = v.find(' ');
      if (sp == std::string::npos || v.find(' ', sp + 1) != std::string::npos)
        return set_error(cat("model.merges[", merges.size(), "] \"", v,
                             "\" is not two tokens separated by a space"));
      merges.emplace_back(v.substr(0, sp), v.substr(sp + 1));
      return true;
    }
    if (mode_ == kMergePair) {
      if (pair_n_ < 2) pair_[pair_n_] = std::move(v);
      ++pair_n_;
      return true;
    }
    return value(json(std::move(v)));
  }
  bool start_object(std::size_t) override {
    if (mode_ != kDom) return bad("nested object");
    if (at_model_member("vocab")) {
      mode_ = kVocab;
      have_vocab = true;
      return true;
    }
    return open(json::object());
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    if (mode_ == kVocab) {
      mode_ = kDom;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (mode_ == kMerges) {
      mode_ = kMergePair;
      pair_n_ = 0;
      return true;
    }
    if (mode_ != kDom) return bad("nested array");
    if (at_model_member("merges")) {
      mode_ = kMerges;
      have_merges = true;
      return true;
    }
    return open(json::array());
  }
  bool end_array() override {
    if (mode_ == kMergePair) {
      if (pair_n_ != 2) return bad("array");
      merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      mode_ = kMerges;
      return true;
    }
    if (mode_ == kMerges) {
      mode_ = kDom;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    return set_error(cat("invalid JSON: ", e.what()));
  }

 private:
  enum Mode { kDom, kVocab, kMerges, kMergePair };
  bool set_error(std::string msg) {
    if (error.empty()) error = std::move(msg);
    return false;
  }
  // A value of the wrong kind inside model.vocab / model.merges.
  bool bad(const char* what) {
    if (mode_ == kVocab)
      return set_error(cat("model.vocab[\"", key_, "\"] is not an integer id (", what, ")"));
    if (mode_ == kMerges || mode_ == kMergePair)
      return set_error(cat("model.merges[", merges.size(), "] must be \"a b\" or [\"a\", \"b\"]"));
    return set_error(cat("unexpected ", what));
  }
  bool vocab_id(int64_t v) {
    if (v < 0 || v > (int64_t(1) << 30))
      return set_error(cat("model.vocab[\"", key_, "\"] has invalid id ", v));
    vocab.emplace_back(std::move(key_), int32_t(v));
    return true;
  }
  bool at_model_member(const char* name) const {
    return stack_.size() == 2 && keys_[1] == "model" && key_ == name;
  }
  json* place(json&& v) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    json& top = *stack_.back();
    if (top.is_object()) return &(top[key_] = std::move(v));
    top.push_back(std::move(v));
    return &top.back();
  }
  bool value(json&& v) {
    if (mode_ == kVocab) return bad(v.type_name());
    if (mode_ == kMerges || mode_ == kMergePair) return bad(v.type_name());
    place(std::move(v));
    return true;
  }
  bool open(json&& container) {
    const std::string k = !stack_.empty() && stack_.back()->is_object() ? key_ : std::string();
    stack_.push_back(place(std::move(container)));
    keys_.push_back(k);
    return true;
  }

  Mode mode_ = kDom;
  std::vector<json*> stack_;
  std::vector<std::string> keys_;  // key under which each open container sits
  std::string key_;
  std::string pair_[2];
  int pair_n_ = 0;
};

// Bytes the ByteLevel decoder produces for a token: its characters mapped back to bytes, or
// the token's own UTF-8 when one of its characters is not in the byte-level alphabet.
std::string byte_level_decode(const std::string& tok) {
  std::string out;
  out.reserve(tok.size());
  if (!utf8_valid(tok)) return tok;
  for (size_t i = 0; i < tok.size();) {
    size_t len;
    const int b = unicode_to_byte(utf8_decode(tok, i, &len));
    if (b < 0) return tok;
    out += char(b);
    i += len;
  }
  return out;
}

}  // namespace

Tokenizer Tokenizer::from_json_text(const std::string& text, const std::string& origin) {
  TokenizerJsonReader reader;
  if (!json::sax_parse(text, &reader) || !reader.error.empty())
    fail(origin, ": ", reader.error.empty() ? std::string("invalid JSON") : reader.error);
  json& j = reader.root;
  if (!j.is_object()) fail(origin, ": not a tokenizer.json (top level is not an object)");
  auto impl = std::make_shared<Impl>();
  impl->origin = origin;
  try {
    for (const char* k : {"truncation", "padding"}) {
      if (member(j, k))
        log_warn(cat(origin, ": \"", k, "\" is set in the tokenizer; llmc never applies it"));
    }

    // ---- model ----
    const json* model = member(j, "model");
    if (!model || !model->is_object()) fail(origin, ": no \"model\" object");
    const json* mt = member(*model, "type");
    if (mt && (!mt->is_string() || mt->get<std::string>() != "BPE"))
      fail(origin, ": unsupported model type ", mt->dump(), " (supported: BPE)");
    if (!reader.have_vocab) fail(origin, ": model.vocab must be an object");
    std::vector<std::pair<std::string, std::string>>& merges = reader.merges;
    if (!reader.have_merges && member(*model, "merges"))
      fail(origin, ": model.merges must be an array");
    if (const json* d = member(*model, "dropout")) {
      if (!d->is_number() || d->get<double>() != 0.0)
        fail(origin, ": BPE dropout is not supported (model.dropout = ", d->dump(), ")");
    }
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const json* v = member(*model, k);
      if (v && (!v->is_string() || !v->get<std::string>().empty()))
        fail(origin, ": model.", k, " = ", v->dump(), " is not supported");
    }
    Bpe::Options opt;
    opt.fuse_unk = get_bool(*model, "fuse_unk", false, origin + ": model");
    opt.ignore_merges = get_bool(*model, "ignore_merges", false, origin + ": model");
    std::string unk;
    if (const json* u = member(*model, "unk_token")) {
      if (!u->is_string()) fail(origin, ": model.unk_token must be a string");
      unk = u->get<std::string>();
    }
    const bool byte_fallback = get_bool(*model, "byte_fallback", false, origin + ": model");
    if (!unk.empty()) {
      for (const auto& [tok, id] : reader.vocab)
        if (tok == unk) opt.unk_id = id;
      if (opt.unk_id < 0) log_warn(cat(origin, ": unk_token '", unk, "' is not in the vocabulary"));
    }
    impl->bpe = std::make_unique<Bpe>(reader.vocab, merges, opt, origin);
    if (byte_fallback) {
      const auto& b2u = byte_to_unicode();
      for (int b = 0; b < 256; ++b) {
        std::string ch;
        utf8_append(b2u[b], ch);
        if (impl->bpe->token_to_id(ch) < 0)
          fail(origin, ": model.byte_fallback with an incomplete byte-level alphabet is not supported");
      }
    }

    // ---- normalizer, pre-tokenizer, decoder ----
    if (const json* n = member(j, "normalizer")) parse_normalizer(*n, origin + ": normalizer", &impl->nfc);
    std::vector<PreTokStep> steps;
    if (const json* p = member(j, "pre_tokenizer"))
      parse_pretok(*p, origin + ": pre_tokenizer", origin, steps);
    size_t nbl = 0;
    for (const auto& s : steps) nbl += s.kind == PreTokStep::kByteLevel;
    if (nbl != 1 || steps.back().kind != PreTokStep::kByteLevel)
      fail(origin, ": pre_tokenizer must end with one ByteLevel step (only byte-level BPE is supported)");
    impl->pretok = PreTokenizer(std::move(steps));
    impl->byte_level_decoder = false;
    if (const json* d = member(j, "decoder")) impl->byte_level_decoder = parse_decoder(*d, origin + ": decoder");

    // ---- added tokens ----
    if (const json* at = member(j, "added_tokens")) {
      if (!at->is_array()) fail(origin, ": added_tokens must be an array");
      for (size_t i = 0; i < at->size(); ++i) {
        const json& t = (*at)[i];
        const std::string where = origin + ": added_tokens[" + std::to_string(i) + "]";
        if (!t.is_object()) fail(where, " must be an object");
        const json* id = member(t, "id");
        const json* content = member(t, "content");
        if (!id || !id->is_number_integer() || id->get<int64_t>() < 0 ||
            id->get<int64_t>() > (int64_t(1) << 30))
          fail(where, ": missing or invalid \"id\"");
        if (!content || !content->is_string()) fail(where, ": missing \"content\"");
        AddedToken a;
        a.id = int32_t(id->get<int64_t>());
        a.content = content->get<std::string>();
        a.single_word = get_bool(t, "single_word", false, where);
        a.lstrip = get_bool(t, "lstrip", false, where);
        a.rstrip = get_bool(t, "rstrip", false, where);
        a.special = get_bool(t, "special", false, where);
        a.normalized = get_bool(t, "normalized", !a.special, where);
        impl->added_by_content[a.content] = a.id;
        impl->added_by_id[a.id] = impl->added.size();
        impl->added.push_back(std::move(a));
      }
    }
  } catch (const json::exception& e) {
    fail(origin, ": malformed tokenizer.json: ", e.what());
  }

  // Matchers: special tokens first, then the others, each in file order (HF's order).
  {
    std::vector<AddedToken> raw, norm;
    std::vector<std::string> raw_p, norm_p;
    for (int pass = 0; pass < 2; ++pass) {
      for (const auto& a : impl->added) {
        if (a.special != (pass == 0)) continue;
        if (a.normalized) {
          std::string p;
          if (impl->nfc && utf8_valid(a.content)) nfc_append(a.content, p);
          else p = a.content;
          norm.push_back(a);
          norm_p.push_back(std::move(p));
        } else {
          raw.push_back(a);
          raw_p.push_back(a.content);
        }
      }
    }
    impl->raw_matcher = AddedMatcher(std::move(raw), std::move(raw_p));
    impl->norm_matcher = AddedMatcher(std::move(norm), std::move(norm_p));
  }

  // Id tables.
  Impl& m = *impl;
  m.max_id = m.bpe->max_id();
  for (const auto& a : m.added) m.max_id = std::max(m.max_id, a.id);
  const size_t n = size_t(m.max_id + 1);
  m.decoded.assign(n, std::string());
  m.present.assign(n, 0);
  m.special.assign(n, 0);
  for (int32_t id = 0; id <= m.bpe->max_id(); ++id) {
    std::string_view t;
    if (m.bpe->id_to_token(id, &t)) {
      m.present[size_t(id)] = 1;
      m.decoded[size_t(id)] = m.byte_level_decoder ? byte_level_decode(std::string(t)) : std::string(t);
    }
  }
  for (const auto& a : m.added) {
    m.present[size_t(a.id)] = 1;
    m.special[size_t(a.id)] = a.special;
    m.decoded[size_t(a.id)] = m.byte_level_decoder ? byte_level_decode(a.content) : a.content;
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::filesystem::path& dir_or_file) {
  fs::path p = dir_or_file;
  if (fs::is_directory(p)) {
    if (fs::exists(p / "tokenizer.json")) p = p / "tokenizer.json";
    else if (fs::exists(p / "tokenizer.json.gz")) p = p / "tokenizer.json.gz";
    else fail(dir_or_file.string(), ": no tokenizer.json in this directory");
  }
  if (!fs::exists(p)) fail(p.string(), ": tokenizer file not found");
  std::string data = read_text_file(p);
  if (data.size() >= 2 && uint8_t(data[0]) == 0x1F && uint8_t(data[1]) == 0x8B)
    data = gunzip(data, p.string());
  return from_json_text(data, p.string());
}

// ---------------------------------------------------------------- encoding

void Tokenizer::Impl::push_text(std::string_view t, Prepared& p) const {
  if (t.empty()) return;
  if (pretok.first_step_prefixes() && t[0] != ' ') {
    std::string& s = *p.owned.emplace_back(std::make_unique<std::string>());
    s.reserve(t.size() + 1);
    s += ' ';
    s.append(t);
    t = s;
  }
  p.segs.push_back({-1, t});
}

void Tokenizer::Impl::prepare(std::string_view text, Prepared& p) const {
  if (!utf8_valid(text)) {
    utf8_lossy_append(text, p.sanitized);
    text = p.sanitized;
  }
  std::vector<Segment> raw;
  if (raw_matcher.empty()) {
    if (!text.empty()) raw.push_back(Segment{-1, 0, text.size()});
  } else {
    raw_matcher.split(text, raw);
  }
  std::vector<Segment> sub;
  for (const Segment& s : raw) {
    if (s.id >= 0) {
      p.segs.push_back({s.id, {}});
      continue;
    }
    std::string_view t = text.substr(s.begin, s.end - s.begin);
    if (nfc && !nfc_is_normalized(t)) {
      std::string& n = *p.owned.emplace_back(std::make_unique<std::string>());
      nfc_append(t, n);
      t = n;
    }
    if (norm_matcher.empty()) {
      push_text(t, p);
      continue;
    }
    sub.clear();
    norm_matcher.split(t, sub);
    for (const Segment& q : sub) {
      if (q.id >= 0) p.segs.push_back({q.id, {}});
      else push_text(t.substr(q.begin, q.end - q.begin), p);
    }
  }
}

const Tokenizer::Impl& Tokenizer::impl() const {
  if (!impl_) fail("tokenizer used before it was loaded");
  return *impl_;
}

const std::string& Tokenizer::origin() const { return impl().origin; }

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  const Impl& m = impl();
  Impl::Prepared p;
  m.prepare(text, p);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  for (const auto& s : p.segs) {
    if (s.id >= 0) out.push_back(s.id);
    else m.encode_segment(s.text, out);
  }
  return out;
}

namespace {

// Start of the chunk after `from` in `t`: preferably just after a '\n' that is followed by a
// non-space byte, near from + chunk; always on a character boundary.
size_t next_cut(std::string_view t, size_t from, size_t chunk) {
  size_t target = from + chunk;
  if (target >= t.size()) return t.size();
  const size_t limit = std::min(t.size() - 1, target + chunk / 4);
  for (size_t i = target; i < limit; ++i) {
    if (t[i] == '\n') {
      const char c = t[i + 1];
      if (c != '\n' && c != '\r' && c != ' ' && c != '\t') return i + 1;
    }
  }
  while (target < t.size() && (static_cast<unsigned char>(t[target]) & 0xC0) == 0x80) ++target;
  return target;
}

}  // namespace

std::vector<int32_t> Tokenizer::encode_parallel(std::string_view text, size_t chunk_bytes) const {
  const Impl& m = impl();
  const int nt = num_threads();
  if (chunk_bytes == 0) {
    chunk_bytes = std::clamp<size_t>(text.size() / (size_t(nt) * 4 + 1), size_t(16) << 10,
                                     size_t(1) << 20);
  }
  if (nt <= 1 || text.size() <= chunk_bytes) return encode(text);

  Impl::Prepared p;
  m.prepare(text, p);
  struct Task {
    size_t seg, begin, stop;
    std::vector<int32_t> ids;
    std::vector<std::pair<size_t, size_t>> states;  // (piece start, offset into ids)
    size_t end = 0;
  };
  std::vector<Task> tasks;
  for (size_t si = 0; si < p.segs.size(); ++si) {
    const auto& s = p.segs[si];
    if (s.id >= 0) continue;
    if (!m.pretok.first_step_splits()) {
      tasks.push_back(Task{si, 0, s.text.size(), {}, {}, 0});
      continue;
    }
    for (size_t a = 0; a < s.text.size();) {
      const size_t b = next_cut(s.text, a, chunk_bytes);
      tasks.push_back(Task{si, a, b, {}, {}, 0});
      a = b;
    }
  }
  parallel_for(0, tasks.size(), 1, [&](size_t lo, size_t hi) {
    for (size_t k = lo; k < hi; ++k) {
      Task& t = tasks[k];
      const std::string_view seg = p.segs[t.seg].text;
      t.ids.reserve((t.stop - t.begin) / 3 + 4);
      // The regex may look a bounded distance past the chunk: a piece it cannot decide there
      // (inside a long run that other chunks share) is left to the serial stitching pass.
      size_t window_end = std::min(seg.size(), t.stop + std::max<size_t>(chunk_bytes, 1024));
      while (window_end < seg.size() && (static_cast<unsigned char>(seg[window_end]) & 0xC0) == 0x80)
        ++window_end;
      t.end = m.pretok.run_first(
          seg, t.begin, t.stop,
          [&](size_t s) {
            t.states.emplace_back(s, t.ids.size());
            return true;
          },
          [&](std::string_view w) { m.bpe->encode_word(w, t.ids); }, window_end);
    }
  });

  // Stitch: take each chunk's ids from the first of its piece starts that the serial pass
  // reaches; where the serial pass does not land on one, run it serially up to the next one.
  std::vector<int32_t> out;
  size_t total = 0;
  for (const auto& t : tasks) total += t.ids.size();
  out.reserve(total + p.segs.size());
  size_t ti = 0;
  for (size_t si = 0; si < p.segs.size(); ++si) {
    const auto& s = p.segs[si];
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    size_t cur = 0;
    for (; ti < tasks.size() && tasks[ti].seg == si; ++ti) {
      const Task& t = tasks[ti];
      if (cur >= t.end) continue;  // already covered by the serial pass
      auto lookup = [&](size_t pos) -> const std::pair<size_t, size_t>* {
        auto it = std::lower_bound(t.states.begin(), t.states.end(), std::make_pair(pos, size_t(0)));
        return it != t.states.end() && it->first == pos ? &*it : nullptr;
      };
      const std::pair<size_t, size_t>* from = lookup(cur);
      if (!from) {
        cur = m.pretok.run_first(
            s.text, cur, t.stop,
            [&](size_t st) {
              from = lookup(st);
              return from == nullptr;
            },
            [&](std::string_view w) { m.bpe->encode_word(w, out); });
        if (!from) continue;  // ran past this chunk
      }
      out.insert(out.end(), t.ids.begin() + ptrdiff_t(from->second), t.ids.end());
      cur = t.end;
    }
  }
  return out;
}

// ---------------------------------------------------------------- decoding & vocabulary

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& m = impl();
  std::string bytes;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id > m.max_id || !m.present[size_t(id)]) continue;
    if (skip_special_tokens && m.special[size_t(id)]) continue;
    if (!m.byte_level_decoder && !first) bytes += ' ';
    bytes += m.decoded[size_t(id)];
    first = false;
  }
  if (!m.byte_level_decoder || utf8_valid(bytes)) return bytes;
  std::string out;
  out.reserve(bytes.size() + 16);
  utf8_lossy_append(bytes, out);
  return out;
}

int32_t Tokenizer::token_to_id(std::string_view tok) const {
  const Impl& m = impl();
  auto it = m.added_by_content.find(std::string(tok));
  if (it != m.added_by_content.end()) return it->second;
  return m.bpe->token_to_id(tok);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  const Impl& m = impl();
  auto it = m.added_by_id.find(id);
  if (it != m.added_by_id.end()) return m.added[it->second].content;
  std::string_view t;
  return m.bpe->id_to_token(id, &t) ? std::string(t) : std::string();
}

size_t Tokenizer::vocab_size() const { return size_t(impl().max_id + 1); }

bool Tokenizer::has_token(std::string_view tok) const { return token_to_id(tok) >= 0; }

bool Tokenizer::is_special(int32_t id) const {
  const Impl& m = impl();
  return id >= 0 && id <= m.max_id && m.special[size_t(id)];
}

}  // namespace llmc
