#include "formats/parquet_encoding.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "formats/parquet_meta.h"

namespace llmc::parquet {

// ---------------- RLE / bit-packed hybrid ----------------

namespace {
void put_varint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out->push_back(char(v));
}

size_t run_length(const uint32_t* v, size_t i, size_t n) {
  size_t j = i + 1;
  while (j < n && v[j] == v[i]) ++j;
  return j - i;
}
}  // namespace

void rle_encode(const uint32_t* values, size_t n, int bw, std::string* out) {
  const size_t value_bytes = size_t(bw + 7) / 8;
  size_t i = 0;
  while (i < n) {
    const size_t run = run_length(values, i, n);
    if (run >= 8 || bw == 0) {
      put_varint(uint64_t(run) << 1, out);  // LSB 0: RLE run
      for (size_t b = 0; b < value_bytes; ++b) out->push_back(char(uint8_t(values[i] >> (8 * b))));
      i += run;
      continue;
    }
    // Bit-packed groups of 8 until a long run starts at a group boundary (or the end).
    const size_t start = i;
    size_t groups = 0;
    while (i < n) {
      if (groups > 0 && run_length(values, i, n) >= 8) break;
      i += 8;
      ++groups;
    }
    put_varint(uint64_t(groups) << 1 | 1, out);  // LSB 1: bit-packed run
    std::vector<uint8_t> packed(groups * size_t(bw), 0);
    for (size_t k = 0; k < groups * 8; ++k) {
      const uint32_t v = start + k < n ? values[start + k] : 0;
      for (int b = 0; b < bw; ++b) {
        const size_t bit = k * size_t(bw) + size_t(b);
        if ((v >> b) & 1u) packed[bit / 8] |= uint8_t(1u << (bit % 8));
      }
    }
    out->append(reinterpret_cast<const char*>(packed.data()), packed.size());
  }
}

RleDecoder::RleDecoder(const uint8_t* data, size_t size, int bit_width, const std::string* context)
    : p_(data), end_(data + size), bw_(bit_width), ctx_(context) {
  if (bw_ < 0 || bw_ > 32) error("invalid RLE bit width " + std::to_string(bw_));
}

void RleDecoder::error(const std::string& what) const { fail(*ctx_, ": ", what); }

bool RleDecoder::next_run() {
  uint64_t h = 0;
  int shift = 0;
  for (;;) {
    if (p_ >= end_) return false;
    const uint8_t b = *p_++;
    if (shift >= 63 && (b & 0x7e)) error("RLE run header overflows");
    h |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) break;
    shift += 7;
    if (shift > 63) error("RLE run header too long");
  }
  if (!(h & 1)) {  // LSB 0: RLE run; LSB 1: bit-packed run
    rle_ = true;
    left_ = h >> 1;
    const size_t nb = size_t(bw_ + 7) / 8;
    if (size_t(end_ - p_) < nb) error("truncated RLE run value");
    uint32_t v = 0;
    for (size_t b = 0; b < nb; ++b) v |= uint32_t(p_[b]) << (8 * b);
    p_ += nb;
    if (bw_ < 32 && (v >> bw_)) error("RLE value does not fit its bit width");
    rle_value_ = v;
  } else {
    rle_ = false;
    const uint64_t groups = h >> 1;
    if (groups > (uint64_t(1) << 40)) error("bit-packed run too long");
    left_ = groups * 8;
    // A writer may end the last run early; only values actually present may be read.
    const uint64_t want = groups * uint64_t(bw_);
    packed_bytes_ = size_t(std::min<uint64_t>(want, uint64_t(end_ - p_)));
    packed_ = p_;
    p_ += packed_bytes_;
    packed_index_ = 0;
  }
  return true;
}

void RleDecoder::get(uint32_t* out, size_t n) {
  size_t k = 0;
  while (k < n) {
    if (left_ == 0) {
      if (!next_run()) error("RLE/bit-packed data ends before all values were read");
      continue;
    }
    const size_t take = size_t(std::min<uint64_t>(left_, n - k));
    if (rle_) {
      std::fill(out + k, out + k + take, rle_value_);
    } else {
      for (size_t j = 0; j < take; ++j) {
        const uint64_t bit0 = (packed_index_ + j) * uint64_t(bw_);
        if ((bit0 + uint64_t(bw_) + 7) / 8 > packed_bytes_) error("truncated bit-packed run");
        uint32_t v = 0;
        for (int b = 0; b < bw_; ++b) {
          const uint64_t bit = bit0 + uint64_t(b);
          v |= uint32_t((packed_[bit / 8] >> (bit % 8)) & 1u) << b;
        }
        out[k + j] = v;
      }
      packed_index_ += take;
    }
    left_ -= take;
    k += take;
  }
}

// ---------------- DELTA encodings ----------------

namespace {
uint64_t read_uleb(const uint8_t** p, const uint8_t* end, const std::string& ctx) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    if (*p >= end) fail(ctx, ": truncated DELTA header");
    if (shift > 63) fail(ctx, ": over-long varint in DELTA data");
    const uint8_t b = *(*p)++;
    v |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}

uint64_t unpack_bits(const uint8_t* p, uint64_t index, int w) {
  uint64_t v = 0;
  uint64_t bit = index * uint64_t(w);
  for (int k = 0; k < w;) {
    const int shift = int(bit % 8);
    const int take = std::min(8 - shift, w - k);
    v |= uint64_t((p[bit / 8] >> shift) & ((1u << take) - 1)) << k;
    k += take;
    bit += uint64_t(take);
  }
  return v;
}
}  // namespace

size_t delta_binary_unpack(const uint8_t* p, size_t n, size_t count, std::vector<int64_t>* out,
                           const std::string& ctx) {
  const uint8_t* const begin = p;
  const uint8_t* const end = p + n;
  const uint64_t block = read_uleb(&p, end, ctx);
  const uint64_t nmini = read_uleb(&p, end, ctx);
  const uint64_t total = read_uleb(&p, end, ctx);
  const uint64_t first_zz = read_uleb(&p, end, ctx);
  // The spec asks for multiples of 128 / 32; accept any byte-aligned layout (its own examples
  // use blocks of 8).
  if (block == 0 || block > (1u << 20) || nmini == 0 || block % nmini != 0 || (block / nmini) % 8 != 0)
    fail(ctx, ": bad DELTA_BINARY_PACKED block layout (", block, " values, ", nmini, " miniblocks)");
  if (total != count) fail(ctx, ": DELTA_BINARY_PACKED holds ", total, " values, expected ", count);
  const uint64_t per_mini = block / nmini;
  out->reserve(out->size() + count);
  if (count == 0) return size_t(p - begin);
  uint64_t value = (first_zz >> 1) ^ (~(first_zz & 1) + 1);
  out->push_back(int64_t(value));
  size_t left = count - 1;
  std::vector<uint8_t> widths(nmini);
  while (left > 0) {
    const uint64_t md_zz = read_uleb(&p, end, ctx);
    const uint64_t min_delta = (md_zz >> 1) ^ (~(md_zz & 1) + 1);
    if (uint64_t(end - p) < nmini) fail(ctx, ": truncated DELTA miniblock widths");
    std::copy(p, p + nmini, widths.begin());
    p += nmini;
    for (uint64_t m = 0; m < nmini && left > 0; ++m) {
      const int w = widths[m];
      if (w > 64) fail(ctx, ": DELTA miniblock bit width ", w, " > 64");
      const size_t take = size_t(std::min<uint64_t>(per_mini, left));
      const uint64_t full = per_mini * uint64_t(w) / 8;
      const uint64_t need = (uint64_t(take) * uint64_t(w) + 7) / 8;
      if (uint64_t(end - p) < need) fail(ctx, ": truncated DELTA miniblock");
      for (size_t i = 0; i < take; ++i) {
        value += min_delta + (w ? unpack_bits(p, i, w) : 0);
        out->push_back(int64_t(value));
      }
      p += size_t(std::min<uint64_t>(full, uint64_t(end - p)));  // the last one may be cut short
      left -= take;
    }
  }
  return size_t(p - begin);
}

void delta_length_byte_array(const uint8_t* p, size_t n, size_t count,
                             std::vector<std::string_view>* out, const std::string& ctx) {
  std::vector<int64_t> lens;
  size_t off = delta_binary_unpack(p, n, count, &lens, ctx);
  out->reserve(out->size() + count);
  for (int64_t l : lens) {
    if (l < 0 || uint64_t(l) > n - off) fail(ctx, ": DELTA_LENGTH_BYTE_ARRAY value runs past the page");
    out->emplace_back(reinterpret_cast<const char*>(p + off), size_t(l));
    off += size_t(l);
  }
}

void delta_byte_array(const uint8_t* p, size_t n, size_t count, std::vector<std::string_view>* out,
                      std::string* storage, size_t max_bytes, const std::string& ctx) {
  std::vector<int64_t> prefix;
  const size_t used = delta_binary_unpack(p, n, count, &prefix, ctx);
  std::vector<std::string_view> suffix;
  delta_length_byte_array(p + used, n - used, count, &suffix, ctx);
  uint64_t total = 0, prev = 0;
  for (size_t i = 0; i < count; ++i) {
    if (prefix[i] < 0 || uint64_t(prefix[i]) > prev) fail(ctx, ": DELTA_BYTE_ARRAY prefix longer than the previous value");
    prev = uint64_t(prefix[i]) + suffix[i].size();
    total += prev;
    if (total > max_bytes) fail(ctx, ": DELTA_BYTE_ARRAY values exceed ", max_bytes, " bytes");
  }
  storage->clear();
  storage->reserve(size_t(total));  // no reallocation below: views stay valid
  size_t prev_off = 0;
  for (size_t i = 0; i < count; ++i) {
    const size_t off = storage->size();
    storage->append(*storage, prev_off, size_t(prefix[i]));  // fits the reservation: no aliasing
    storage->append(suffix[i]);
    prev_off = off;
    out->emplace_back(storage->data() + off, storage->size() - off);
  }
}

// ---------------- codecs ----------------

void snappy_decompress(const uint8_t* src, size_t n, uint8_t* out, size_t out_size,
                       const std::string& ctx) {
  const uint8_t* p = src;
  const uint8_t* end = src + n;
  // Preamble: uncompressed length as a varint.
  uint64_t len = 0;
  for (int shift = 0;; shift += 7) {
    if (p >= end || shift > 35) fail(ctx, ": corrupt SNAPPY page (bad length)");
    const uint8_t b = *p++;
    len |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) break;
  }
  if (len != out_size)
    fail(ctx, ": SNAPPY page holds ", len, " bytes, page header says ", out_size);
  size_t o = 0;
  while (p < end) {
    const uint8_t tag = *p++;
    const int kind = tag & 3;
    if (kind == 0) {  // literal
      uint64_t l = tag >> 2;
      if (l >= 60) {
        const int nb = int(l) - 59;
        if (end - p < nb) fail(ctx, ": corrupt SNAPPY page (truncated literal length)");
        l = 0;
        for (int i = 0; i < nb; ++i) l |= uint64_t(p[i]) << (8 * i);
        p += nb;
      }
      l += 1;
      if (l > uint64_t(end - p) || l > out_size - o) fail(ctx, ": corrupt SNAPPY page (literal overruns)");
      std::memcpy(out + o, p, size_t(l));
      p += l;
      o += size_t(l);
      continue;
    }
    size_t l, off;
    if (kind == 1) {
      if (end - p < 1) fail(ctx, ": corrupt SNAPPY page (truncated copy)");
      l = 4 + ((tag >> 2) & 7);
      off = (size_t(tag >> 5) << 8) | p[0];
      p += 1;
    } else if (kind == 2) {
      if (end - p < 2) fail(ctx, ": corrupt SNAPPY page (truncated copy)");
      l = 1 + (tag >> 2);
      off = size_t(p[0]) | size_t(p[1]) << 8;
      p += 2;
    } else {
      if (end - p < 4) fail(ctx, ": corrupt SNAPPY page (truncated copy)");
      l = 1 + (tag >> 2);
      off = size_t(p[0]) | size_t(p[1]) << 8 | size_t(p[2]) << 16 | size_t(p[3]) << 24;
      p += 4;
    }
    if (off == 0 || off > o || l > out_size - o) fail(ctx, ": corrupt SNAPPY page (bad copy)");
    for (size_t i = 0; i < l; ++i) out[o + i] = out[o + i - off];  // may overlap forward
    o += l;
  }
  if (o != out_size) fail(ctx, ": SNAPPY page ends after ", o, " of ", out_size, " bytes");
}

namespace {
void gzip_decompress(const uint8_t* src, size_t n, uint8_t* out, size_t out_size,
                     const std::string& ctx) {
  // Page sizes are int32 in Parquet, so one call covers the whole page.
  if (n > (1ull << 31) || out_size > (1ull << 31)) fail(ctx, ": GZIP page too large");
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) fail(ctx, ": cannot initialise zlib");
  zs.next_in = const_cast<Bytef*>(src);
  zs.avail_in = uInt(n);
  zs.next_out = out;
  zs.avail_out = uInt(out_size);
  int rc;
  for (;;) {
    rc = inflate(&zs, Z_FINISH);
    if (rc == Z_OK) continue;
    // Concatenated gzip members: go on with the next one.
    if (rc == Z_STREAM_END && zs.avail_in > 0 && zs.avail_out > 0 && inflateReset(&zs) == Z_OK)
      continue;
    break;
  }
  const size_t done = out_size - zs.avail_out;
  const std::string msg = zs.msg ? zs.msg : "truncated or oversized";
  inflateEnd(&zs);
  if (rc != Z_STREAM_END) fail(ctx, ": corrupt GZIP page (", msg, ")");
  if (done != out_size) fail(ctx, ": GZIP page holds ", done, " bytes, page header says ", out_size);
}
}  // namespace

void check_decoded_size(int32_t codec, const uint8_t* src, size_t n, size_t out_size,
                        const std::string& ctx) {
  switch (Codec(codec)) {
    case Codec::UNCOMPRESSED:
      if (n != out_size)
        fail(ctx, ": uncompressed page size mismatch (", n, " vs ", out_size, " bytes)");
      return;
    case Codec::SNAPPY: {
      uint64_t len = 0;
      for (int shift = 0, i = 0;; shift += 7, ++i) {
        if (size_t(i) >= n || shift > 35) fail(ctx, ": corrupt SNAPPY page (bad length)");
        len |= uint64_t(src[i] & 0x7f) << shift;
        if (!(src[i] & 0x80)) break;
      }
      if (len != out_size)
        fail(ctx, ": SNAPPY page holds ", len, " bytes, page header says ", out_size);
      return;
    }
    case Codec::ZSTD: {
      const unsigned long long c = ZSTD_getFrameContentSize(src, n);
      if (c == ZSTD_CONTENTSIZE_ERROR) fail(ctx, ": corrupt ZSTD page (bad frame header)");
      if (c != ZSTD_CONTENTSIZE_UNKNOWN && c > out_size)
        fail(ctx, ": ZSTD page holds ", c, " bytes, page header says ", out_size);
      return;
    }
    default: return;
  }
}

void decompress(int32_t codec, const uint8_t* src, size_t n, uint8_t* out, size_t out_size,
                const std::string& ctx) {
  switch (Codec(codec)) {
    case Codec::UNCOMPRESSED:
      if (n != out_size)
        fail(ctx, ": uncompressed page size mismatch (", n, " vs ", out_size, " bytes)");
      if (n) std::memcpy(out, src, n);
      return;
    case Codec::ZSTD: {
      const size_t r = ZSTD_decompress(out, out_size, src, n);
      if (ZSTD_isError(r)) fail(ctx, ": corrupt ZSTD page (", ZSTD_getErrorName(r), ")");
      if (r != out_size) fail(ctx, ": ZSTD page holds ", r, " bytes, page header says ", out_size);
      return;
    }
    case Codec::SNAPPY: snappy_decompress(src, n, out, out_size, ctx); return;
    case Codec::GZIP: gzip_decompress(src, n, out, out_size, ctx); return;
    default: break;
  }
  fail(ctx, ": unsupported compression codec ", codec_name(codec), " (", codec,
       "); llmc reads UNCOMPRESSED, SNAPPY, GZIP and ZSTD");
}

ZstdStream::ZstdStream(const uint8_t* src, size_t n, const std::string& context)
    : dctx_(ZSTD_createDCtx()), src_(src), n_(n), ctx_(context) {
  if (!dctx_) fail(ctx_, ": cannot create a ZSTD decompression context");
}

ZstdStream::~ZstdStream() { ZSTD_freeDCtx(static_cast<ZSTD_DCtx*>(dctx_)); }

void ZstdStream::read(uint8_t* out, size_t n) {
  ZSTD_outBuffer ob{out, n, 0};
  while (ob.pos < ob.size) {
    if (pos_ >= n_ && last_ == 0) fail(ctx_, ": ZSTD page ends early");
    ZSTD_inBuffer ib{src_, n_, pos_};
    const size_t before_in = pos_, before_out = ob.pos;
    last_ = ZSTD_decompressStream(static_cast<ZSTD_DCtx*>(dctx_), &ob, &ib);
    if (ZSTD_isError(last_)) fail(ctx_, ": corrupt ZSTD page (", ZSTD_getErrorName(last_), ")");
    pos_ = ib.pos;
    if (pos_ == before_in && ob.pos == before_out) fail(ctx_, ": ZSTD page ends early");
  }
}

void ZstdStream::finish() {
  if (last_ != 0) {  // the frame may still hold its epilogue (checksum, empty last block)
    uint8_t extra;
    ZSTD_outBuffer ob{&extra, 1, 0};
    ZSTD_inBuffer ib{src_, n_, pos_};
    last_ = ZSTD_decompressStream(static_cast<ZSTD_DCtx*>(dctx_), &ob, &ib);
    if (ZSTD_isError(last_)) fail(ctx_, ": corrupt ZSTD page (", ZSTD_getErrorName(last_), ")");
    pos_ = ib.pos;
    if (ob.pos != 0) fail(ctx_, ": ZSTD page holds more data than its header says");
  }
  if (last_ != 0 || pos_ != n_) fail(ctx_, ": ZSTD page has trailing or incomplete data");
}

std::string zstd_compress(const uint8_t* src, size_t n, int level) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  if (!cctx) fail("cannot create a ZSTD compression context");
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0);
  if (n >= (4u << 20) && num_threads() > 1)
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, num_threads());  // no-op without MT support
  std::string out(ZSTD_compressBound(n), '\0');
  const size_t r = ZSTD_compress2(cctx, out.data(), out.size(), src, n);
  ZSTD_freeCCtx(cctx);
  if (ZSTD_isError(r)) fail("ZSTD compression failed: ", ZSTD_getErrorName(r));
  out.resize(r);
  return out;
}

}  // namespace llmc::parquet
