#include "tokenizer/bpe.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <queue>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace llmc::tok {

namespace {

std::atomic<uint64_t> g_serial{1};

// Per-thread cache of word -> ids for one Bpe (identified by its serial number). The table
// grows from 4K slots to kMaxSlots; each record keeps the ids and then the word bytes together
// in one arena, so a hit touches the 12-byte slot and one record.
class WordCache {
 public:
  static constexpr size_t kMinSlots = size_t(1) << 12;
  static constexpr size_t kMaxSlots = size_t(1) << 17;
  static constexpr size_t kMaxWordLen = 128;
  static constexpr size_t kMaxArenaBytes = size_t(4) << 20;

  uint64_t owner = 0;
  uint64_t last_use = 0;

  // The record (n int32 ids, native byte order) of `w`, or nullptr.
  const char* find(uint64_t h64, std::string_view w, size_t* n) const {
    if (slots_.empty()) return nullptr;
    const uint32_t h = uint32_t(h64 >> 32) | 1;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& e = slots_[i];
      if (e.hash == 0) return nullptr;
      if (e.hash == h && e.key_len == w.size()) {
        const char* rec = arena_.data() + e.off;
        if (std::memcmp(rec + 4 * size_t(e.nids), w.data(), w.size()) == 0) {
          *n = e.nids;
          return rec;
        }
      }
    }
  }
  void insert(uint64_t h64, std::string_view w, const int32_t* ids, size_t n) {
    if (w.size() > kMaxWordLen || n > 0xFFFF) return;
    if (slots_.empty()) resize(kMinSlots);
    if (2 * (count_ + 1) > slots_.size()) {
      if (slots_.size() < kMaxSlots) resize(slots_.size() * 2);
      else clear();
    }
    const size_t bytes = (4 * n + w.size() + 3) & ~size_t(3);
    if (arena_.size() + bytes > kMaxArenaBytes) clear();
    const uint32_t h = uint32_t(h64 >> 32) | 1;
    size_t i = h & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    const size_t off = arena_.size();
    slots_[i] = Slot{h, uint32_t(off), uint16_t(w.size()), uint16_t(n)};
    arena_.resize(off + bytes);
    std::memcpy(arena_.data() + off, ids, 4 * n);
    std::memcpy(arena_.data() + off + 4 * n, w.data(), w.size());
    ++count_;
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    count_ = 0;
  }

 private:
  struct Slot {
    uint32_t hash = 0, off = 0;
    uint16_t key_len = 0, nids = 0;
  };
  void resize(size_t n) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    for (const Slot& e : old) {
      if (e.hash == 0) continue;
      size_t i = e.hash & mask_;
      while (slots_[i].hash != 0) i = (i + 1) & mask_;
      slots_[i] = e;
    }
  }
  std::vector<Slot> slots_;
  std::vector<char> arena_;  // records: int32 ids, then the word bytes, padded to 4 bytes
  size_t count_ = 0, mask_ = 0;
};

// A few caches per thread so that alternating between tokenizers does not thrash.
WordCache& thread_cache(uint64_t owner) {
  static constexpr int kCaches = 4;
  thread_local WordCache caches[kCaches];
  thread_local uint64_t clock = 0;
  thread_local WordCache* last = nullptr;
  if (last && last->owner == owner) return *last;
  ++clock;
  WordCache* victim = &caches[0];
  for (auto& c : caches) {
    if (c.owner == owner) {
      c.last_use = clock;
      return *(last = &c);
    }
    if (c.last_use < victim->last_use) victim = &c;
  }
  victim->clear();
  victim->owner = owner;
  victim->last_use = clock;
  return *(last = victim);
}

}  // namespace

void StrMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 2) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{0, 0, 0, -1});
  mask_ = cap - 1;
  for (const Slot& e : old) {
    if (e.id < 0) continue;
    size_t i = e.hash & mask_;
    while (slots_[i].id >= 0) i = (i + 1) & mask_;
    slots_[i] = e;
  }
}

size_t StrMap::find_slot(std::string_view key, uint32_t h) const {
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& e = slots_[i];
    if (e.id < 0) return i;
    if (e.hash == h && e.len == key.size() &&
        std::memcmp(arena_.data() + e.off, key.data(), key.size()) == 0)
      return i;
  }
}

void StrMap::set(std::string_view key, int32_t id) {
  if (2 * (count_ + 1) > slots_.size()) reserve(2 * count_ + 16);
  const uint32_t h = uint32_t(hash_bytes(key) >> 32);
  const size_t i = find_slot(key, h);
  if (slots_[i].id < 0) {
    slots_[i] = Slot{h, uint32_t(arena_.size()), uint32_t(key.size()), id};
    arena_.append(key);
    ++count_;
  } else {
    slots_[i].id = id;
  }
}

int32_t StrMap::get(std::string_view key) const {
  if (slots_.empty()) return -1;
  return slots_[find_slot(key, uint32_t(hash_bytes(key) >> 32))].id;
}

Bpe::Bpe(const std::vector<std::pair<std::string, int32_t>>& vocab,
         const std::vector<std::pair<std::string, std::string>>& merges, Options opt,
         const std::string& origin)
    : opt_(opt), serial_(g_serial.fetch_add(1)) {
  vocab_.reserve(vocab.size());
  size_t bytes = 0;
  for (const auto& [tok, id] : vocab) {
    if (id < 0) fail(origin, ": model.vocab: negative id ", id, " for token '", tok, "'");
    if (id > (int32_t(1) << 30)) fail(origin, ": model.vocab: id ", id, " is too large");
    vocab_.set(tok, id);
    bytes += tok.size();
  }
  // id -> token; a token listed twice keeps its last id.
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab)
    if (vocab_.get(tok) == id) max_id = std::max(max_id, id);
  id_off_.assign(size_t(max_id + 1), {UINT32_MAX, 0});
  id_arena_.reserve(bytes);
  for (const auto& [tok, id] : vocab) {
    if (vocab_.get(tok) != id) continue;
    id_off_[size_t(id)] = {uint32_t(id_arena_.size()), uint32_t(tok.size())};
    id_arena_.append(tok);
  }

  const auto& b2u = byte_to_unicode();
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    utf8_append(b2u[b], ch);
    byte_id_[b] = token_to_id(ch);
  }

  size_t cap = 16;
  while (cap < merges.size() * 2 + 2) cap <<= 1;
  merges_.assign(cap, MergeSlot{0, 0, 0});
  mask_ = cap - 1;
  shift_ = 64;
  for (size_t c = cap; c > 1; c >>= 1) --shift_;
  num_merges_ = merges.size();
  std::string ab;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    ab.assign(a);
    ab.append(b);
    const int32_t ia = token_to_id(a), ib = token_to_id(b), in = token_to_id(ab);
    if (ia < 0 || ib < 0 || in < 0) {
      fail(origin, ": model.merges[", r, "] (\"", a, "\", \"", b, "\"): '",
           ia < 0 ? a : ib < 0 ? b : ab, "' is not in the vocabulary");
    }
    const uint64_t k = pair_key(ia, ib);
    size_t i = size_t((k * 0x9E3779B97F4A7C15ull) >> shift_);
    while (merges_[i].key != 0 && merges_[i].key != k) i = (i + 1) & mask_;
    merges_[i] = MergeSlot{k, int32_t(r), in};  // a repeated pair keeps its last rank
  }
  byte_pairs_.assign(size_t(1) << 16, PairMerge{INT32_MAX, -1});
  for (int a = 0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) {
      if (byte_id_[a] < 0 || byte_id_[b] < 0) continue;
      if (const MergeSlot* m = find_merge(byte_id_[a], byte_id_[b]))
        byte_pairs_[(size_t(a) << 8) | size_t(b)] = PairMerge{m->rank, m->new_id};
    }
  }
}

void Bpe::initial_symbols(std::string_view word, std::vector<int32_t>& syms) const {
  syms.clear();
  bool prev_unk = false;
  for (unsigned char c : word) {
    const int32_t id = byte_id_[c];
    if (id >= 0) {
      syms.push_back(id);
      prev_unk = false;
    } else if (opt_.unk_id >= 0) {
      if (!(opt_.fuse_unk && prev_unk)) syms.push_back(opt_.unk_id);
      prev_unk = true;
    }
  }
}

void Bpe::merge_scan(std::vector<int32_t>& syms, std::string_view word) const {
  constexpr int32_t kNone = INT32_MAX;
  size_t n = syms.size();
  if (n < 2) return;
  // rank[i] / next[i]: merge of the pair (syms[i], syms[i+1]).
  int32_t rank_buf[128], next_buf[128];
  std::vector<int32_t> rank_vec, next_vec;
  int32_t* rank = rank_buf;
  int32_t* nid = next_buf;
  if (n > 128) {
    rank_vec.resize(n);
    next_vec.resize(n);
    rank = rank_vec.data();
    nid = next_vec.data();
  }
  auto look = [&](size_t i) {
    const MergeSlot* m = find_merge(syms[i], syms[i + 1]);
    rank[i] = m ? m->rank : kNone;
    nid[i] = m ? m->new_id : -1;
  };
  if (n == word.size()) {
    const auto* w = reinterpret_cast<const unsigned char*>(word.data());
    for (size_t i = 0; i + 1 < n; ++i) {
      const PairMerge& pm = byte_pairs_[(size_t(w[i]) << 8) | w[i + 1]];
      rank[i] = pm.rank;
      nid[i] = pm.new_id;
    }
  } else {
    for (size_t i = 0; i + 1 < n; ++i) look(i);
  }
  for (;;) {
    int32_t best = kNone;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      if (rank[i] < best) {
        best = rank[i];
        bi = i;
      }
    }
    if (best == kNone) break;
    syms[bi] = nid[bi];
    // Remove symbol bi+1 (and the pair entry bi+1).
    for (size_t j = bi + 1; j + 1 < n; ++j) syms[j] = syms[j + 1];
    for (size_t j = bi + 1; j + 2 < n; ++j) {
      rank[j] = rank[j + 1];
      nid[j] = nid[j + 1];
    }
    --n;
    if (bi + 1 < n) look(bi);
    else rank[bi] = kNone;
    if (bi > 0) look(bi - 1);
  }
  syms.resize(n);
}

void Bpe::merge_heap(std::vector<int32_t>& syms) const {
  const size_t n = syms.size();
  if (n < 2) return;
  std::vector<int32_t> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> q;
  auto push = [&](int32_t pos) {
    const int32_t nx = next[size_t(pos)];
    if (nx < 0) return;
    if (const MergeSlot* m = find_merge(syms[size_t(pos)], syms[size_t(nx)]))
      q.push(Cand{m->rank, pos, syms[size_t(pos)], syms[size_t(nx)]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(int32_t(i));
  while (!q.empty()) {
    const Cand c = q.top();
    q.pop();
    const size_t p = size_t(c.pos);
    if (!alive[p] || next[p] < 0) continue;
    const size_t nx = size_t(next[p]);
    if (syms[p] != c.left || syms[nx] != c.right) continue;  // stale entry
    const MergeSlot* m = find_merge(c.left, c.right);
    syms[p] = m->new_id;
    alive[nx] = 0;
    next[p] = next[nx];
    if (next[nx] >= 0) prev[size_t(next[nx])] = int32_t(p);
    if (prev[p] >= 0) push(prev[p]);
    push(int32_t(p));
  }
  size_t k = 0;
  for (int32_t i = 0; i >= 0; i = next[size_t(i)]) syms[k++] = syms[size_t(i)];
  syms.resize(k);
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out, Algo algo) const {
  if (word.empty()) return;
  if (opt_.ignore_merges) {
    std::string mapped;
    const auto& b2u = byte_to_unicode();
    for (unsigned char c : word) utf8_append(b2u[c], mapped);
    const int32_t id = token_to_id(mapped);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  thread_local std::vector<int32_t> syms;
  initial_symbols(word, syms);
  if (algo == Algo::Auto) algo = syms.size() <= 96 ? Algo::Scan : Algo::Heap;
  if (algo == Algo::Scan) merge_scan(syms, word);
  else merge_heap(syms);
  out.insert(out.end(), syms.begin(), syms.end());
}

void Bpe::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1 && !opt_.ignore_merges) {
    const int32_t id = byte_id_[static_cast<unsigned char>(word[0])];
    if (id >= 0) out.push_back(id);
    else if (opt_.unk_id >= 0) out.push_back(opt_.unk_id);
    return;
  }
  if (word.size() > WordCache::kMaxWordLen) {
    merge_word(word, out, Algo::Auto);
    return;
  }
  WordCache& cache = thread_cache(serial_);
  const uint64_t h = hash_bytes(word);
  size_t n;
  if (const char* rec = cache.find(h, word, &n)) {
    const size_t o = out.size();
    out.resize(o + n);
    std::memcpy(out.data() + o, rec, 4 * n);
    return;
  }
  const size_t before = out.size();
  merge_word(word, out, Algo::Auto);
  cache.insert(h, word, out.data() + before, out.size() - before);
}

}  // namespace llmc::tok
