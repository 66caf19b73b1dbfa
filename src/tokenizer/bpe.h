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
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace llmc::tok {

class Bpe {
 public:
  struct Options {
    int32_t unk_id = -1;
    bool fuse_unk = false;
    bool ignore_merges = false;
  };
  // `vocab`: token (byte-level string) -> id; `merges`: pairs in rank order. Throws
  // llmc::Error mentioning `origin` for merges naming tokens absent from the vocab.
  Bpe(std::unordered_map<std::string, int32_t> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, Options opt,
      const std::string& origin);

  enum class Algo { Auto, Scan, Heap };
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out, Algo algo) const;

  int32_t token_to_id(std::string_view tok) const;
  // Token string of a model id, or nullptr.
  const std::string* id_to_token(int32_t id) const;
  int32_t max_id() const { return int32_t(id_to_tok_.size()) - 1; }
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
  void merge_scan(std::vector<int32_t>& syms) const;
  void merge_heap(std::vector<int32_t>& syms) const;

  struct SvHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>> vocab_;
  std::vector<std::string> id_to_tok_;
  std::vector<uint8_t> id_present_;
  int32_t byte_id_[256];
  std::vector<MergeSlot> merges_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t num_merges_ = 0;
  Options opt_;
  uint64_t serial_;
};

}  // namespace llmc::tok
