// tokenizer/bpe.h — the byte-level BPE model (internal).
//
// Contracts:
//  * A word is the raw bytes of one pre-tokenized piece; its initial symbols are the vocab ids
//    of the byte-level characters of its bytes (a byte whose character is not in the vocab
//    becomes unk_token, consecutive ones fused when fuse_unk, or is dropped without unk_token,
//    as HF does).
//  * Merging applies, while any adjacent pair has a merge, the pair of lowest rank, the
//    leftmost one among equal ranks (HF's priority-queue order). With ignore_merges a word
//    that is itself a vocab token gives that token directly.
//  * encode_word() caches results per thread (bounded; cleared when full); merge_word() is
//    the uncached computation with an explicit algorithm, exposed for tests.
//  * A duplicated merge pair keeps its last rank (HF builds its merge map that way).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmc::tok {

// A fast 64-bit hash of a short byte string (never 0). Tails are read with overlapping loads
// (no byte loops).
inline uint64_t hash_bytes(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  uint64_t h = 0x243F6A8885A308D3ull ^ (uint64_t(n) * 0xC2B2AE3D27D4EB4Full);
  while (n > 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t w;
  if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + n - 4, 4);
    w = a | (uint64_t(b) << 32);
  } else if (n > 0) {
    w = uint64_t(p[0]) | (uint64_t(p[n / 2]) << 8) | (uint64_t(p[n - 1]) << 16);
  } else {
    w = 0;
  }
  h = (h ^ w) * 0x9E3779B97F4A7C15ull;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 31;
  return h | 1;
}

// Flat open-addressing map from byte strings (copied into one arena) to ids; set() overwrites.
class StrMap {
 public:
  void reserve(size_t n);
  void set(std::string_view key, int32_t id);
  int32_t get(std::string_view key) const;  // -1 when absent
  size_t size() const { return count_; }

 private:
  struct Slot {
    uint32_t hash, off, len;
    int32_t id;  // -1: empty
  };
  size_t find_slot(std::string_view key, uint32_t h) const;
  std::vector<Slot> slots_;
  std::string arena_;
  size_t count_ = 0, mask_ = 0;
};

class Bpe {
 public:
  struct Options {
    int32_t unk_id = -1;
    bool fuse_unk = false;
    bool ignore_merges = false;
  };
  // `vocab`: (token as byte-level string, id) pairs, a repeated token keeping its last id;
  // `merges`: pairs in rank order. Throws llmc::Error mentioning `origin` for negative ids and
  // merges naming tokens absent from the vocab.
  Bpe(const std::vector<std::pair<std::string, int32_t>>& vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, Options opt,
      const std::string& origin);

  enum class Algo { Auto, Scan, Heap };
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out, Algo algo) const;

  int32_t token_to_id(std::string_view tok) const { return vocab_.get(tok); }
  // Token string of a model id; false when the id has no token.
  bool id_to_token(int32_t id, std::string_view* tok) const {
    if (id < 0 || size_t(id) >= id_off_.size() || id_off_[size_t(id)].first == UINT32_MAX) return false;
    *tok = std::string_view(id_arena_).substr(id_off_[size_t(id)].first, id_off_[size_t(id)].second);
    return true;
  }
  int32_t max_id() const { return int32_t(id_off_.size()) - 1; }
  size_t num_merges() const { return num_merges_; }
  uint64_t serial() const { return serial_; }

 private:
  struct MergeSlot {
    uint64_t key;  // (left << 32 | right) + 1; 0 = empty
    int32_t rank, new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t(uint32_t(a)) << 32) | uint32_t(b)) + 1;
  }
  const MergeSlot* find_merge(int32_t a, int32_t b) const {
    const uint64_t k = pair_key(a, b);
    size_t i = size_t((k * 0x9E3779B97F4A7C15ull) >> shift_);
    for (;;) {
      const MergeSlot& s = merges_[i];
      if (s.key == k) return &s;
      if (s.key == 0) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  void initial_symbols(std::string_view word, std::vector<int32_t>& syms) const;
  // `word`: when syms are its bytes' ids one to one, the first pass reads byte_pairs_.
  void merge_scan(std::vector<int32_t>& syms, std::string_view word) const;
  void merge_heap(std::vector<int32_t>& syms) const;

  StrMap vocab_;
  std::string id_arena_;
  std::vector<std::pair<uint32_t, uint32_t>> id_off_;  // id -> (offset, length); UINT32_MAX: none
  int32_t byte_id_[256];
  std::vector<MergeSlot> merges_;
  struct PairMerge {
    int32_t rank, new_id;  // rank INT32_MAX: no merge
  };
  std::vector<PairMerge> byte_pairs_;  // [first byte << 8 | second byte], dense (512 KiB)
  size_t mask_ = 0;
  int shift_ = 64;
  size_t num_merges_ = 0;
  Options opt_;
  uint64_t serial_;
};

}  // namespace llmc::tok
