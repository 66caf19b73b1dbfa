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
#include <string_view>
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
// DELTA_BINARY_PACKED: decodes exactly `count` values (64-bit wrapping arithmetic; INT32
// callers truncate) from [p, p+n) and returns the bytes consumed. Throws on malformed input.
size_t delta_binary_unpack(const uint8_t* p, size_t n, size_t count, std::vector<int64_t>* out,
                           const std::string& context);
// DELTA_LENGTH_BYTE_ARRAY / DELTA_BYTE_ARRAY: decodes `count` values; views point into [p, p+n)
// or (DELTA_BYTE_ARRAY, which rebuilds values from prefixes) into *storage, capped at
// `max_bytes` rebuilt bytes.
void delta_length_byte_array(const uint8_t* p, size_t n, size_t count,
                             std::vector<std::string_view>* out, const std::string& context);
void delta_byte_array(const uint8_t* p, size_t n, size_t count, std::vector<std::string_view>* out,
                      std::string* storage, size_t max_bytes, const std::string& context);

void decompress(int32_t codec, const uint8_t* src, size_t src_size, uint8_t* out, size_t out_size,
                const std::string& context);
// Streaming ZSTD decoder over one page body: read() fills exactly n bytes (throws when the data
// ends first), finish() checks that the input is used up and the last frame complete.
class ZstdStream {
 public:
  ZstdStream(const uint8_t* src, size_t n, const std::string& context);
  ~ZstdStream();
  ZstdStream(const ZstdStream&) = delete;
  ZstdStream& operator=(const ZstdStream&) = delete;
  void read(uint8_t* out, size_t n);
  void finish();

 private:
  void* dctx_;
  const uint8_t* src_;
  size_t n_, pos_ = 0;
  size_t last_ = 1;  // last ZSTD_decompressStream result (0: a frame just ended)
  const std::string& ctx_;
};

std::string zstd_compress(const uint8_t* src, size_t n, int level = 3);
// Snappy raw-format decoder (exposed for tests).
void snappy_decompress(const uint8_t* src, size_t src_size, uint8_t* out, size_t out_size,
                       const std::string& context);

}  // namespace llmc::parquet
