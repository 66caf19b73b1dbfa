// formats/parquet_encoding.h — Parquet value/level encodings and page codecs (internal to
// formats/parquet*).
//
// Contracts:
//  * RLE/bit-packed hybrid (spec "Run Length Encoding / Bit-Packing Hybrid"), used for
//    definition/repetition levels and dictionary indices: rle_encode() writes runs without a
//    length prefix; RleDecoder reads exactly the values asked for and throws llmc::Error (with
//    its context) when the data ends first or a value does not fit the bit width. It never
//    reads outside the given span.
//  * decompress() turns one page body of the given codec into exactly `out_size` bytes
//    (UNCOMPRESSED, SNAPPY, GZIP, ZSTD); any other codec, a corrupt stream, or a size mismatch
//    throws llmc::Error naming `context`.
//  * zstd_compress() compresses with libzstd (multithreaded for large inputs).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace llmc::parquet {

inline int bit_width(uint64_t max_value) {
  int w = 0;
  while (max_value) { ++w; max_value >>= 1; }
  return w;
}

// Appends the hybrid encoding of `values` (each < 2^bit_width) to *out.
void rle_encode(const uint32_t* values, size_t n, int bit_width, std::string* out);

class RleDecoder {
 public:
  RleDecoder(const uint8_t* data, size_t size, int bit_width, const std::string* context);
  // Decodes the next n values into out[0..n).
  void get(uint32_t* out, size_t n);

 private:
  [[noreturn]] void error(const std::string& what) const;
  bool next_run();

  const uint8_t* p_;
  const uint8_t* end_;
  int bw_;
  const std::string* ctx_;
  // current run
  bool rle_ = false;
  uint64_t left_ = 0;        // values left in the run
  uint32_t rle_value_ = 0;
  const uint8_t* packed_ = nullptr;  // bit-packed run start
  size_t packed_bytes_ = 0;          // bytes of the bit-packed run present in the input
  uint64_t packed_index_ = 0;        // next value index in the bit-packed run
};

// Cheap check, before any allocation, that a page body can decode to out_size bytes (exact for
// UNCOMPRESSED, SNAPPY's length preamble and ZSTD frames that declare their size); throws
// llmc::Error naming `context` otherwise.
void check_decoded_size(int32_t codec, const uint8_t* src, size_t src_size, size_t out_size,
                        const std::string& context);
void decompress(int32_t codec, const uint8_t* src, size_t src_size, uint8_t* out, size_t out_size,
                const std::string& context);
std::string zstd_compress(const uint8_t* src, size_t n, int level = 3);
// Snappy raw-format decoder (exposed for tests).
void snappy_decompress(const uint8_t* src, size_t src_size, uint8_t* out, size_t out_size,
                       const std::string& context);

}  // namespace llmc::parquet
