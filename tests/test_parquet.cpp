// Tests of formats/parquet (AI-OS Parquet tensor files), its Thrift compact protocol and its
// encodings; interop with the independent JavaScript implementation hyparquet(-writer) when
// node and tests/interop/node_modules are present (bash scripts/interop-deps.sh).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "formats/parquet.h"
#include "formats/parquet_encoding.h"
#include "formats/parquet_meta.h"
#include "formats/parquet_page.h"
#include "formats/thrift_compact.h"
#include "testing.h"

namespace fs = std::filesystem;
using llmc::DType;
using llmc::Error;
using llmc::Shape;
using llmc::thrift::ThriftReader;
using llmc::thrift::ThriftWriter;
using llmc::thrift::TType;
namespace pq = llmc::parquet;

namespace {

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void put_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), std::streamsize(s.size()));
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = char(rng() & 0xff);
  return s;
}

struct T {
  std::string name;
  DType dtype;
  Shape shape;
  std::string data;
};

T make_tensor(const std::string& name, DType dt, Shape shape, uint32_t seed) {
  uint64_t n = llmc::dtype_size(dt);
  for (auto d : shape) n *= uint64_t(d);
  return {name, dt, std::move(shape), random_bytes(n, seed)};
}

struct WriteOpts {
  uint64_t chunk = 64ull << 20;
  bool zstd = false;
  uint64_t row_group = 0;  // 0: default
  std::map<std::string, std::string> kv;
  bool checksums = true;
};

void write_parquet(const fs::path& p, const std::vector<T>& ts, const WriteOpts& o = {}) {
  llmc::ParquetTensorWriter w(p, o.chunk, o.zstd);
  if (o.row_group) w.set_row_group_bytes(o.row_group);
  w.set_checksums(o.checksums);
  w.set_kv(o.kv);
  for (const auto& t : ts) w.add(t.name, t.dtype, t.shape, t.data.data(), t.data.size());
  w.finish();
}

void expect_same(const llmc::TensorReader& r, const std::vector<T>& ts) {
  ASSERT_EQ(r.list().size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& info = r.list()[i];
    EXPECT_EQ(info.name, ts[i].name);
    EXPECT_EQ(info.dtype, ts[i].dtype) << ts[i].name;
    EXPECT_EQ(info.shape, ts[i].shape) << ts[i].name;
    EXPECT_EQ(info.nbytes, ts[i].data.size()) << ts[i].name;
    ASSERT_TRUE(r.has(ts[i].name));
    const llmc::TensorRef ref = r.get(ts[i].name);
    ASSERT_EQ(ref.info.nbytes, ts[i].data.size());
    EXPECT_TRUE(ts[i].data.empty() || std::memcmp(ref.data, ts[i].data.data(), ts[i].data.size()) == 0)
        << ts[i].name;
  }
}

pq::FileMetaData read_footer(const fs::path& p) {
  const std::string b = bytes_of(p);
  uint32_t len;
  std::memcpy(&len, b.data() + b.size() - 8, 4);
  ThriftReader r(reinterpret_cast<const uint8_t*>(b.data()) + b.size() - 8 - len, len, "footer");
  return pq::decode_file_metadata(r);
}

// Re-encodes the footer of `src` after `edit` and writes the result to `dst`.
void rewrite_footer(const fs::path& src, const fs::path& dst,
                    const std::function<void(pq::FileMetaData&)>& edit) {
  std::string b = bytes_of(src);
  uint32_t len;
  std::memcpy(&len, b.data() + b.size() - 8, 4);
  pq::FileMetaData m = read_footer(src);
  const bool sealed = std::any_of(m.key_value_metadata.begin(), m.key_value_metadata.end(),
                                  [](const pq::KeyValue& kv) { return kv.key == pq::kFooterCrcKey; });
  edit(m);
  ThriftWriter w;
  pq::encode_file_metadata(w, m);
  const std::string footer = sealed ? pq::seal_footer(m) : w.bytes();  // as the writer seals it
  std::string out = b.substr(0, b.size() - 8 - len) + footer;
  const uint32_t n = uint32_t(footer.size());
  out.append(reinterpret_cast<const char*>(&n), 4);
  out += "PAR1";
  put_file(dst, out);
}

// Offset of the body of the first page of column `col` in row group `g` (uncompressed files).
size_t first_page_body(const fs::path& p, size_t g, size_t col) {
  const pq::FileMetaData m = read_footer(p);
  const int64_t off = m.row_groups.at(g).columns.at(col).meta_data->data_page_offset;
  const std::string b = bytes_of(p);
  ThriftReader r(reinterpret_cast<const uint8_t*>(b.data()) + off, b.size() - size_t(off), "page");
  pq::decode_page_header(r);
  return size_t(off) + r.pos();
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A scratch file for fuzz loops that rewrite a file thousands of times: in /dev/shm when there
// is one (file rewrites on a loaded disk cost milliseconds each), else in a temp dir.
struct ScratchFile {
  fs::path path;
  explicit ScratchFile(const std::string& tag) {
    std::error_code ec;
    if (fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0)
      path = fs::path("/dev/shm") / ("llmc-test-" + tag + "-" + std::to_string(::getpid()) + ".parquet");
    else
      path = llmc::test::temp_dir(tag) / "scratch.parquet";
  }
  ~ScratchFile() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

void open_and_read_all(const fs::path& p) {
  auto f = llmc::open_parquet_checkpoint(p);
  for (const auto& info : f.tensors->list()) f.tensors->get(info.name);
}

// ---- minimal safetensors parse (test-only), to feed real model tensors ----
std::vector<T> load_safetensors(const fs::path& p) {
  const std::string b = bytes_of(p);
  uint64_t n;
  std::memcpy(&n, b.data(), 8);
  const auto h = nlohmann::json::parse(b.substr(8, n));
  std::vector<std::pair<uint64_t, T>> v;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    T t;
    t.name = it.key();
    EXPECT_TRUE(llmc::parse_dtype(it.value()["dtype"].get<std::string>(), &t.dtype));
    t.shape = it.value()["shape"].get<Shape>();
    const uint64_t a = it.value()["data_offsets"][0], e = it.value()["data_offsets"][1];
    t.data = b.substr(8 + n + a, e - a);
    v.emplace_back(a, std::move(t));
  }
  std::sort(v.begin(), v.end(), [](auto& x, auto& y) { return x.first < y.first; });
  std::vector<T> out;
  for (auto& [o, t] : v) out.push_back(std::move(t));
  return out;
}

}  // namespace

// =============================== Thrift compact protocol ===============================

TEST(Thrift, AllFieldTypesRoundTrip) {
  ThriftWriter w;
  w.begin_struct();
  w.field_bool(1, true);
  w.field_bool(2, false);
  w.field_byte(3, -7);
  w.field_i16(4, -32768);
  w.field_i32(5, INT32_MIN);
  w.field_i32(6, INT32_MAX);
  w.field_i64(7, INT64_MIN);
  w.field_i64(8, INT64_MAX);
  w.field_double(9, -1.5e300);
  w.field_binary(10, "");
  w.field_binary(11, std::string(300, 'x'));
  w.field_list_begin(12, TType::I32, 3);
  for (int v : {0, -1, 1 << 30}) w.i32_value(v);
  w.field_list_begin(13, TType::I64, 20);  // >= 15 elements: long list header
  for (int i = 0; i < 20; ++i) w.i64_value(int64_t(i) * -1000000007ll);
  w.field_list_begin(14, TType::BoolTrue, 3);
  w.bool_elem(true);
  w.bool_elem(false);
  w.bool_elem(true);
  w.field_list_begin(15, TType::Struct, 2);
  for (int i = 0; i < 2; ++i) {
    w.begin_struct();
    w.field_i32(1, i + 100);
    w.end_struct();
  }
  w.field_map_begin(40, TType::Binary, TType::I16, 2);  // long-form field id (delta 25)
  w.binary_value("a");
  w.i16_value(1);
  w.binary_value("b");
  w.i16_value(-2);
  w.field_struct_begin(1000);
  w.field_binary(1, "inner");
  w.end_struct();
  w.field_i32(30, 5);  // decreasing id: long form
  w.field_map_begin(31, TType::I32, TType::I32, 0);
  w.end_struct();
  const std::string b = w.bytes();

  ThriftReader r(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "t");
  r.begin_struct();
  llmc::thrift::Field f;
  std::vector<int> ids;
  while (r.next_field(&f)) {
    ids.push_back(f.id);
    switch (f.id) {
      case 1: EXPECT_TRUE(r.read_bool(f)); break;
      case 2: EXPECT_FALSE(r.read_bool(f)); break;
      case 3: EXPECT_EQ(r.read_byte(), -7); break;
      case 4: EXPECT_EQ(r.read_i16(), -32768); break;
      case 5: EXPECT_EQ(r.read_i32(), INT32_MIN); break;
      case 6: EXPECT_EQ(r.read_i32(), INT32_MAX); break;
      case 7: EXPECT_EQ(r.read_i64(), INT64_MIN); break;
      case 8: EXPECT_EQ(r.read_i64(), INT64_MAX); break;
      case 9: EXPECT_EQ(r.read_double(), -1.5e300); break;
      case 10: EXPECT_EQ(r.read_binary(), ""); break;
      case 11: EXPECT_EQ(r.read_string(), std::string(300, 'x')); break;
      case 12: {
        auto l = r.read_list_header();
        ASSERT_EQ(l.size, 3u);
        EXPECT_EQ(l.elem, TType::I32);
        EXPECT_EQ(r.read_i32(), 0);
        EXPECT_EQ(r.read_i32(), -1);
        EXPECT_EQ(r.read_i32(), 1 << 30);
        break;
      }
      case 13: {
        auto l = r.read_list_header();
        ASSERT_EQ(l.size, 20u);
        for (int i = 0; i < 20; ++i) EXPECT_EQ(r.read_i64(), int64_t(i) * -1000000007ll);
        break;
      }
      case 14: {
        auto l = r.read_list_header();
        ASSERT_EQ(l.size, 3u);
        EXPECT_TRUE(r.read_bool_elem());
        EXPECT_FALSE(r.read_bool_elem());
        EXPECT_TRUE(r.read_bool_elem());
        break;
      }
      case 15: {
        auto l = r.read_list_header();
        ASSERT_EQ(l.size, 2u);
        for (int i = 0; i < 2; ++i) {
          r.begin_struct();
          llmc::thrift::Field g;
          ASSERT_TRUE(r.next_field(&g));
          EXPECT_EQ(g.id, 1);
          EXPECT_EQ(r.read_i32(), i + 100);
          EXPECT_FALSE(r.next_field(&g));
          r.end_struct();
        }
        break;
      }
      case 40: {
        auto m = r.read_map_header();
        ASSERT_EQ(m.size, 2u);
        EXPECT_EQ(m.key, TType::Binary);
        EXPECT_EQ(m.value, TType::I16);
        EXPECT_EQ(r.read_binary(), "a");
        EXPECT_EQ(r.read_i16(), 1);
        EXPECT_EQ(r.read_binary(), "b");
        EXPECT_EQ(r.read_i16(), -2);
        break;
      }
      case 31: EXPECT_EQ(r.read_map_header().size, 0u); break;
      default: r.skip(f.type);  // the nested struct (1000) and field 30 are skipped
    }
  }
  r.end_struct();
  EXPECT_EQ(r.remaining(), 0u);
  EXPECT_EQ(ids, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 40, 1000, 30, 31}));

  // skip() consumes exactly the whole struct.
  ThriftReader s(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "t");
  s.skip(TType::Struct);
  EXPECT_EQ(s.remaining(), 0u);

  // Every truncation throws llmc::Error.
  for (size_t n = 0; n < b.size(); ++n) {
    ThriftReader t(reinterpret_cast<const uint8_t*>(b.data()), n, "trunc");
    EXPECT_THROW(t.skip(TType::Struct), Error) << n;
  }
}

TEST(Thrift, HostileInputIsRejected) {
  auto skip_struct = [](const std::string& b) {
    ThriftReader r(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "hostile.bin");
    r.skip(TType::Struct);
  };
  // Deep nesting.
  std::string deep(200, char(0x1c));  // field delta 1, type struct, repeated
  deep += std::string(200, '\0');
  const std::string msg = error_of([&] { skip_struct(deep); });
  EXPECT_NE(msg.find("hostile.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nested"), std::string::npos) << msg;
  // Huge list size with nothing behind it.
  EXPECT_THROW(skip_struct(std::string("\x19\xf5\xff\xff\xff\xff\x0f", 7)), Error);
  // Binary longer than the input.
  EXPECT_THROW(skip_struct(std::string("\x18\x7f" "abc", 5)), Error);
  // Over-long varint.
  EXPECT_THROW(skip_struct(std::string("\x16\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12)), Error);
  // Invalid wire type 13.
  EXPECT_THROW(skip_struct(std::string("\x1d\x00", 2)), Error);
  // i32 out of range.
  {
    ThriftWriter w;
    w.begin_struct();
    w.field_i64(1, int64_t(1) << 40);
    w.end_struct();
    ThriftReader r(reinterpret_cast<const uint8_t*>(w.bytes().data()), w.bytes().size(), "x");
    r.begin_struct();
    llmc::thrift::Field f;
    ASSERT_TRUE(r.next_field(&f));
    EXPECT_THROW(r.read_i32(), Error);
  }
  // Random garbage: parse or throw llmc::Error, never crash.
  std::mt19937 rng(7);
  for (int it = 0; it < 20000; ++it) {
    const std::string b = random_bytes(1 + rng() % 64, rng());
    try {
      skip_struct(b);
    } catch (const Error&) {
    }
    try {
      ThriftReader r(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "g");
      pq::decode_file_metadata(r);
    } catch (const Error&) {
    }
    try {
      ThriftReader r(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "g");
      pq::decode_page_header(r);
    } catch (const Error&) {
    }
  }
}

TEST(ParquetMeta, FileMetaDataRoundTrip) {
  pq::FileMetaData m;
  m.version = 2;
  pq::SchemaElement root;
  root.name = "schema";
  root.num_children = 1;
  pq::SchemaElement leaf;
  leaf.name = "x";
  leaf.type = 7;
  leaf.type_length = 16;
  leaf.repetition_type = 1;
  leaf.converted_type = 5;
  leaf.scale = 2;
  leaf.precision = 9;
  leaf.field_id = 42;
  leaf.logical_type = 1;
  m.schema = {root, leaf};
  m.num_rows = 123456789012ll;
  pq::RowGroup g;
  pq::ColumnChunk c;
  c.file_path = "other.parquet";
  c.file_offset = 77;
  pq::ColumnMetaData cm;
  cm.type = 6;
  cm.encodings = {0, 3, 8};
  cm.path_in_schema = {"a", "b"};
  cm.codec = 6;
  cm.num_values = 5;
  cm.total_uncompressed_size = 100;
  cm.total_compressed_size = 50;
  cm.key_value_metadata = {{"k", "v"}, {"novalue", std::nullopt}};
  cm.data_page_offset = 4;
  cm.index_page_offset = 8;
  cm.dictionary_page_offset = 3;
  pq::Statistics st;
  st.max = "zz";
  st.min = "";
  st.null_count = 0;
  st.distinct_count = 3;
  st.max_value = "z";
  st.min_value = "a";
  cm.statistics = st;
  c.meta_data = cm;
  g.columns = {c, c};
  g.total_byte_size = 1000;
  g.num_rows = 17;
  g.file_offset = 4;
  g.total_compressed_size = 900;
  g.ordinal = 3;
  m.row_groups = {g};
  m.key_value_metadata = {{"llmc.format_version", "1"}, {"bin", std::string("\0\xff", 2)}};
  m.created_by = "test";
  ThriftWriter w;
  pq::encode_file_metadata(w, m);
  ThriftReader r(reinterpret_cast<const uint8_t*>(w.bytes().data()), w.bytes().size(), "m");
  EXPECT_EQ(pq::decode_file_metadata(r), m);
  EXPECT_EQ(r.remaining(), 0u);

  for (int variant = 0; variant < 3; ++variant) {
    pq::PageHeader h;
    h.type = variant == 0 ? 0 : variant == 1 ? 2 : 3;
    h.uncompressed_page_size = 1000;
    h.compressed_page_size = 400;
    h.crc = -5;
    if (variant == 0) h.data_page_header = pq::DataPageHeader{12, 0, 3, 3};
    if (variant == 1) h.dictionary_page_header = pq::DictionaryPageHeader{4, 0, true};
    if (variant == 2) h.data_page_header_v2 = pq::DataPageHeaderV2{10, 2, 5, 8, 3, 4, false};
    ThriftWriter pw;
    pq::encode_page_header(pw, h);
    ThriftReader pr(reinterpret_cast<const uint8_t*>(pw.bytes().data()), pw.bytes().size(), "p");
    EXPECT_EQ(pq::decode_page_header(pr), h);
  }
  EXPECT_STREQ(pq::codec_name(6), "ZSTD");
  EXPECT_STREQ(pq::codec_name(99), "unknown");
  EXPECT_STREQ(pq::encoding_name(8), "RLE_DICTIONARY");
  EXPECT_STREQ(pq::encoding_name(-1), "unknown");
}

TEST(ParquetMeta, UnknownFieldsAreSkippedAndRequiredFieldsChecked) {
  // A PageHeader from a "newer writer": unknown fields of every kind around the known ones,
  // and a known field with an unexpected wire type (skipped like an unknown one).
  ThriftWriter w;
  w.begin_struct();
  w.field_i32(1, 0);
  w.field_i32(2, 10);
  w.field_i32(3, 10);
  w.field_binary(4, "crc as a string");  // wrong type for crc: skipped
  w.field_struct_begin(5);
  w.field_i32(1, 3);
  w.field_i32(2, 0);
  w.field_i32(3, 3);
  w.field_i32(4, 3);
  w.field_struct_begin(5);  // statistics
  w.field_binary(1, "max");
  w.end_struct();
  w.field_list_begin(9, TType::Struct, 1);
  w.begin_struct();
  w.field_double(3, 1.0);
  w.end_struct();
  w.end_struct();
  w.field_map_begin(20, TType::I32, TType::BoolTrue, 1);
  w.i32_value(1);
  w.bool_elem(true);
  w.field_list_begin(21, TType::BoolTrue, 2);
  w.bool_elem(true);
  w.bool_elem(false);
  w.field_bool(22, true);
  w.field_byte(23, 1);
  w.end_struct();
  // A known list field with an unexpected element type (bools) is skipped element by element.
  {
    ThriftWriter k;
    k.begin_struct();
    k.field_i32(1, 1);
    k.field_list_begin(2, TType::BoolTrue, 3);  // schema: expected a list of structs
    k.bool_elem(true);
    k.bool_elem(false);
    k.bool_elem(true);
    k.field_i64(3, 7);
    k.field_list_begin(4, TType::Struct, 0);
    k.end_struct();
    ThriftReader kr(reinterpret_cast<const uint8_t*>(k.bytes().data()), k.bytes().size(), "k");
    const pq::FileMetaData fm = pq::decode_file_metadata(kr);
    EXPECT_EQ(kr.remaining(), 0u);
    EXPECT_TRUE(fm.schema.empty());
    EXPECT_EQ(fm.num_rows, 7);
  }
  ThriftReader r(reinterpret_cast<const uint8_t*>(w.bytes().data()), w.bytes().size(), "p");
  const pq::PageHeader h = pq::decode_page_header(r);
  EXPECT_EQ(r.remaining(), 0u);
  EXPECT_EQ(h.uncompressed_page_size, 10);
  EXPECT_FALSE(h.crc.has_value());
  ASSERT_TRUE(h.data_page_header.has_value());
  EXPECT_EQ(h.data_page_header->num_values, 3);

  // Missing required fields name the struct.
  ThriftWriter m;
  m.begin_struct();
  m.field_i32(1, 1);
  m.end_struct();
  ThriftReader mr(reinterpret_cast<const uint8_t*>(m.bytes().data()), m.bytes().size(), "f.parquet");
  const std::string msg = error_of([&] { pq::decode_file_metadata(mr); });
  EXPECT_NE(msg.find("f.parquet"), std::string::npos) << msg;
  EXPECT_NE(msg.find("FileMetaData"), std::string::npos) << msg;
  ThriftReader pr(reinterpret_cast<const uint8_t*>(m.bytes().data()), m.bytes().size(), "p");
  EXPECT_THROW(pq::decode_page_header(pr), Error);
}

// =============================== encodings and codecs ===============================

TEST(ParquetEncoding, RleHybridRoundTripAllWidths) {
  std::mt19937 rng(1);
  const std::string ctx = "rle";
  for (int bw = 0; bw <= 32; ++bw) {
    const uint64_t maxv = bw == 32 ? 0xffffffffull : (1ull << bw) - 1;
    for (int pattern = 0; pattern < 3; ++pattern) {
      std::vector<uint32_t> v;
      const size_t n = 1 + rng() % 300;
      for (size_t i = 0; i < n; ++i) {
        uint32_t x = uint32_t(rng() & maxv);
        if (pattern == 1 && i > 0 && rng() % 4 != 0) x = v.back();  // runs
        if (pattern == 2) x = uint32_t((i / 17) & maxv);            // long runs
        v.push_back(x);
      }
      std::string enc;
      pq::rle_encode(v.data(), v.size(), bw, &enc);
      std::vector<uint32_t> got(n);
      pq::RleDecoder d(reinterpret_cast<const uint8_t*>(enc.data()), enc.size(), bw, &ctx);
      d.get(got.data(), n);
      EXPECT_EQ(got, v) << "bit width " << bw << " pattern " << pattern;
      if (bw > 0 && !enc.empty()) {
        // Asking for more values than encoded, or a truncated encoding, throws.
        pq::RleDecoder t(reinterpret_cast<const uint8_t*>(enc.data()), enc.size() / 2, bw, &ctx);
        std::vector<uint32_t> big(n + 64);
        EXPECT_THROW(t.get(big.data(), big.size()), Error);
      }
    }
  }
  // Known vectors from the Parquet encoding spec: values 0..7 at bit width 3 bit-packed as
  // 0x88 0xC6 0xFA (header (1 group << 1) | 1), and an RLE run (header count << 1).
  {
    const uint32_t v[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    std::string enc;
    pq::rle_encode(v, 8, 3, &enc);
    EXPECT_EQ(enc, std::string("\x03\x88\xc6\xfa"));
    const uint32_t ones[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    enc.clear();
    pq::rle_encode(ones, 9, 1, &enc);
    EXPECT_EQ(enc, std::string("\x12\x01"));
    const uint32_t wide[8] = {300, 300, 300, 300, 300, 300, 300, 300};
    enc.clear();
    pq::rle_encode(wide, 8, 9, &enc);
    EXPECT_EQ(enc, std::string("\x10\x2c\x01"));
  }
  EXPECT_EQ(pq::bit_width(0), 0);
  EXPECT_EQ(pq::bit_width(1), 1);
  EXPECT_EQ(pq::bit_width(255), 8);
  EXPECT_THROW(pq::RleDecoder(nullptr, 0, 33, &ctx), Error);
  // An RLE run value wider than the bit width is rejected.
  const uint8_t bad[] = {0x02, 0x05};  // RLE run of 1, value 5, bit width 2
  pq::RleDecoder d(bad, sizeof bad, 2, &ctx);
  uint32_t x;
  EXPECT_THROW(d.get(&x, 1), Error);
}

namespace {
// Reference DELTA_BINARY_PACKED encoder (test-only): blocks of 128 values, 4 miniblocks.
void put_uleb(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out->push_back(char(v));
}
std::string dbp_encode(const std::vector<int64_t>& v) {
  std::string out;
  put_uleb(128, &out);
  put_uleb(4, &out);
  put_uleb(v.size(), &out);
  const int64_t first = v.empty() ? 0 : v[0];
  put_uleb((uint64_t(first) << 1) ^ uint64_t(first >> 63), &out);
  for (size_t i = 1; i < v.size(); i += 128) {
    std::vector<uint64_t> d;
    for (size_t j = i; j < std::min(v.size(), i + 128); ++j) d.push_back(uint64_t(v[j]) - uint64_t(v[j - 1]));
    int64_t min_delta = INT64_MAX;
    for (uint64_t x : d) min_delta = std::min(min_delta, int64_t(x));
    put_uleb((uint64_t(min_delta) << 1) ^ uint64_t(min_delta >> 63), &out);
    std::vector<uint64_t> rel;
    for (uint64_t x : d) rel.push_back(x - uint64_t(min_delta));
    rel.resize(128, 0);
    int widths[4] = {};
    for (int m = 0; m < 4; ++m)
      for (int k = 0; k < 32; ++k) widths[m] = std::max(widths[m], 64 - (rel[size_t(m * 32 + k)] ? __builtin_clzll(rel[size_t(m * 32 + k)]) : 64));
    for (int m = 0; m < 4; ++m) out.push_back(char(widths[m]));
    const size_t used = (d.size() + 31) / 32;
    for (size_t m = 0; m < used; ++m) {
      std::string packed(size_t(4 * widths[m]), '\0');
      for (int k = 0; k < 32; ++k)
        for (int b = 0; b < widths[m]; ++b)
          if ((rel[m * 32 + size_t(k)] >> b) & 1) {
            const size_t bit = size_t(k * widths[m] + b);
            packed[bit / 8] = char(uint8_t(packed[bit / 8]) | uint8_t(1u << (bit % 8)));
          }
      out += packed;
    }
  }
  return out;
}
}  // namespace

TEST(ParquetEncoding, DeltaEncodings) {
  const std::string ctx = "delta";
  auto u8 = [](const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); };
  // The spec's example 2: 7, 5, 3, 1, 2, 3, 4, 5 with blocks of 8 values, one miniblock.
  {
    const std::string enc("\x08\x01\x08\x0e\x03\x02\xc0\x3f", 8);
    std::vector<int64_t> v;
    EXPECT_EQ(pq::delta_binary_unpack(u8(enc), enc.size(), 8, &v, ctx), 8u);
    EXPECT_EQ(v, (std::vector<int64_t>{7, 5, 3, 1, 2, 3, 4, 5}));
    v.clear();
    EXPECT_THROW(pq::delta_binary_unpack(u8(enc), enc.size(), 7, &v, ctx), Error);  // count mismatch
    EXPECT_THROW(pq::delta_binary_unpack(u8(enc), 6, 8, &v, ctx), Error);           // truncated
  }
  // Round trips against the reference encoder: extremes, wrap-around, long and empty inputs.
  std::mt19937_64 rng(3);
  for (int t = 0; t < 40; ++t) {
    std::vector<int64_t> v(size_t(rng() % 700));
    for (auto& x : v) {
      switch (t % 4) {
        case 0: x = int64_t(rng()); break;
        case 1: x = int64_t(rng() % 1000) - 500; break;
        case 2: x = (rng() & 1) ? INT64_MAX : INT64_MIN; break;
        default: x = int64_t(&x - v.data()); break;
      }
    }
    const std::string enc = dbp_encode(v) + "tail";
    std::vector<int64_t> got;
    EXPECT_EQ(pq::delta_binary_unpack(u8(enc), enc.size(), v.size(), &got, ctx), enc.size() - 4);
    EXPECT_EQ(got, v);
  }
  // DELTA_LENGTH_BYTE_ARRAY and DELTA_BYTE_ARRAY (the spec's examples).
  {
    const std::string dlba = dbp_encode({5, 5, 6, 6}) + "HelloWorldFoobarABCDEF";
    std::vector<std::string_view> out;
    pq::delta_length_byte_array(u8(dlba), dlba.size(), 4, &out, ctx);
    EXPECT_EQ(out, (std::vector<std::string_view>{"Hello", "World", "Foobar", "ABCDEF"}));
    out.clear();
    EXPECT_THROW(pq::delta_length_byte_array(u8(dlba), dlba.size() - 1, 4, &out, ctx), Error);
    const std::string dba = dbp_encode({0, 2, 0, 3}) + dbp_encode({4, 2, 6, 5}) + "axislebabbleyhood";
    std::string storage;
    out.clear();
    pq::delta_byte_array(u8(dba), dba.size(), 4, &out, &storage, 1000, ctx);
    EXPECT_EQ(out, (std::vector<std::string_view>{"axis", "axle", "babble", "babyhood"}));
    out.clear();
    EXPECT_THROW(pq::delta_byte_array(u8(dba), dba.size(), 4, &out, &storage, 10, ctx), Error);  // cap
    const std::string bad = dbp_encode({0, 5, 0, 3}) + dbp_encode({4, 2, 6, 5}) + "axislebabbleyhood";
    out.clear();
    EXPECT_THROW(pq::delta_byte_array(u8(bad), bad.size(), 4, &out, &storage, 1000, ctx), Error);
  }
  // Bad layouts and garbage.
  std::vector<int64_t> v;
  const std::string bad_block("\x07\x01\x01\x00", 4);
  EXPECT_THROW(pq::delta_binary_unpack(u8(bad_block), bad_block.size(), 1, &v, ctx), Error);
  const std::string wide = std::string("\x08\x01\x02\x00\x00", 5) + char(65);
  EXPECT_THROW(pq::delta_binary_unpack(u8(wide), wide.size(), 2, &v, ctx), Error);
  std::mt19937 r32(4);
  for (int it = 0; it < 5000; ++it) {
    const std::string g = random_bytes(1 + r32() % 48, r32());
    std::vector<int64_t> x;
    std::vector<std::string_view> sv;
    std::string st;
    try {
      pq::delta_binary_unpack(u8(g), g.size(), r32() % 40, &x, ctx);
    } catch (const Error&) {
    }
    try {
      pq::delta_byte_array(u8(g), g.size(), r32() % 8, &sv, &st, 1 << 16, ctx);
    } catch (const Error&) {
    }
  }
}

TEST(ParquetEncoding, Codecs) {
  const std::string src = random_bytes(1000, 3) + std::string(5000, 'a') + random_bytes(100, 4);
  const auto* s = reinterpret_cast<const uint8_t*>(src.data());
  std::string out(src.size(), '\0');
  auto* o = reinterpret_cast<uint8_t*>(out.data());
  // ZSTD
  const std::string z = pq::zstd_compress(s, src.size());
  EXPECT_LT(z.size(), src.size());
  pq::decompress(6, reinterpret_cast<const uint8_t*>(z.data()), z.size(), o, out.size(), "c");
  EXPECT_EQ(out, src);
  EXPECT_THROW(pq::decompress(6, reinterpret_cast<const uint8_t*>(z.data()), z.size() - 3, o, out.size(), "c"),
               Error);
  EXPECT_THROW(pq::decompress(6, reinterpret_cast<const uint8_t*>(z.data()), z.size(), o, out.size() - 1, "c"),
               Error);
  // ZSTD streaming (the reader's direct-to-tensor path)
  {
    pq::ZstdStream zs(reinterpret_cast<const uint8_t*>(z.data()), z.size(), "zs");
    std::string a(10, '\0'), b(src.size() - 10, '\0');
    zs.read(reinterpret_cast<uint8_t*>(a.data()), a.size());
    zs.read(reinterpret_cast<uint8_t*>(b.data()), b.size());
    zs.finish();
    EXPECT_EQ(a + b, src);
    pq::ZstdStream more(reinterpret_cast<const uint8_t*>(z.data()), z.size(), "zs");
    std::string big(src.size() + 1, '\0');
    EXPECT_THROW(more.read(reinterpret_cast<uint8_t*>(big.data()), big.size()), Error);
    pq::ZstdStream less(reinterpret_cast<const uint8_t*>(z.data()), z.size(), "zs");
    less.read(reinterpret_cast<uint8_t*>(big.data()), src.size() - 1);
    EXPECT_THROW(less.finish(), Error);
    const std::string trailing = z + "x";
    pq::ZstdStream tr(reinterpret_cast<const uint8_t*>(trailing.data()), trailing.size(), "zs");
    tr.read(reinterpret_cast<uint8_t*>(big.data()), src.size());
    EXPECT_THROW(tr.finish(), Error);
    std::string bad = z;
    bad[0] = 'x';
    pq::ZstdStream corrupt(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "zs");
    EXPECT_THROW(corrupt.read(reinterpret_cast<uint8_t*>(big.data()), 4), Error);
    pq::ZstdStream cut(reinterpret_cast<const uint8_t*>(z.data()), z.size() / 2, "zs");
    EXPECT_THROW(cut.read(reinterpret_cast<uint8_t*>(big.data()), src.size()), Error);
  }
  // GZIP (zlib stream accepted too: the header is auto-detected)
  uLongf zn = compressBound(uLong(src.size()));
  std::string gz(zn, '\0');
  ASSERT_EQ(compress2(reinterpret_cast<Bytef*>(gz.data()), &zn, s, uLong(src.size()), 6), Z_OK);
  gz.resize(zn);
  std::fill(out.begin(), out.end(), 0);
  pq::decompress(2, reinterpret_cast<const uint8_t*>(gz.data()), gz.size(), o, out.size(), "c");
  EXPECT_EQ(out, src);
  EXPECT_THROW(pq::decompress(2, reinterpret_cast<const uint8_t*>(gz.data()), gz.size() / 2, o, out.size(), "c"),
               Error);
  // UNCOMPRESSED size mismatch, unsupported codecs
  EXPECT_THROW(pq::decompress(0, s, 10, o, 11, "c"), Error);
  const std::string msg = error_of([&] { pq::decompress(7, s, 10, o, 10, "x.parquet"); });
  EXPECT_NE(msg.find("LZ4_RAW"), std::string::npos) << msg;
  EXPECT_NE(msg.find("x.parquet"), std::string::npos) << msg;
}

TEST(ParquetEncoding, SnappyDecoder) {
  // "abcd" literal, copy len 8 offset 4 (1-byte offset form, overlapping), literal "XY",
  // copy len 6 offset 10 (2-byte offset form), copy len 2 offset 1 (4-byte offset form).
  const std::string expect = "abcdabcdabcdXY" "abcdab" "bb";
  std::string s;
  s.push_back(char(expect.size()));
  s.push_back(char(3 << 2));
  s += "abcd";
  s.push_back(char(((8 - 4) << 2) | 1));
  s.push_back(char(4));
  s.push_back(char(1 << 2));
  s += "XY";
  s.push_back(char(((6 - 1) << 2) | 2));
  s.push_back(char(10));
  s.push_back(char(0));
  s.push_back(char(((2 - 1) << 2) | 3));
  s += std::string("\x01\x00\x00\x00", 4);
  std::string out(expect.size(), '\0');
  pq::snappy_decompress(reinterpret_cast<const uint8_t*>(s.data()), s.size(),
                        reinterpret_cast<uint8_t*>(out.data()), out.size(), "s");
  EXPECT_EQ(out, expect);
  // Long literal with a 2-byte length (tag 61).
  const std::string lit = random_bytes(300, 9);
  std::string l;
  l.push_back(char(0xac));
  l.push_back(char(0x02));  // varint 300
  l.push_back(char(61 << 2));
  l.push_back(char((300 - 1) & 0xff));
  l.push_back(char((300 - 1) >> 8));
  l += lit;
  std::string lo(300, '\0');
  pq::snappy_decompress(reinterpret_cast<const uint8_t*>(l.data()), l.size(),
                        reinterpret_cast<uint8_t*>(lo.data()), lo.size(), "s");
  EXPECT_EQ(lo, lit);
  // Corruptions: offset beyond output, wrong length, truncated stream, random garbage.
  std::string bad = s;
  bad[7] = char(50);  // copy offset 50 > produced
  EXPECT_THROW(pq::snappy_decompress(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(),
                                     reinterpret_cast<uint8_t*>(out.data()), out.size(), "s"),
               Error);
  EXPECT_THROW(pq::snappy_decompress(reinterpret_cast<const uint8_t*>(s.data()), s.size(),
                                     reinterpret_cast<uint8_t*>(out.data()), out.size() - 1, "s"),
               Error);
  for (size_t n = 0; n < s.size(); ++n)
    EXPECT_THROW(pq::snappy_decompress(reinterpret_cast<const uint8_t*>(s.data()), n,
                                       reinterpret_cast<uint8_t*>(out.data()), out.size(), "s"),
                 Error);
  std::mt19937 rng(5);
  for (int it = 0; it < 5000; ++it) {
    std::string g = random_bytes(1 + rng() % 40, rng());
    std::string go(64, '\0');
    try {
      pq::snappy_decompress(reinterpret_cast<const uint8_t*>(g.data()), g.size(),
                            reinterpret_cast<uint8_t*>(go.data()), go.size(), "s");
    } catch (const Error&) {
    }
  }
}

// =============================== reader / writer ===============================

TEST(Parquet, RoundTripShapesDtypesAndChunking) {
  const fs::path dir = llmc::test::temp_dir("pq-rt");
  std::vector<T> ts;
  const std::vector<Shape> shapes = {{}, {0}, {1}, {7}, {3, 5}, {2, 0, 4}, {2, 3, 4, 5}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
  uint32_t seed = 1;
  for (int d = 0; d < llmc::kNumDTypes; ++d) {
    for (const auto& s : shapes) {
      ts.push_back(make_tensor("t" + std::to_string(d) + "_" + std::to_string(seed), DType(d), s, seed));
      ++seed;
    }
  }
  ts.push_back(make_tensor("model.layers.0.mlp.down_proj.weight", DType::BF16, {64, 48}, 99));
  for (bool zstd : {false, true}) {
    for (uint64_t chunk : {uint64_t(64) << 20, uint64_t(16), uint64_t(1000)}) {
      for (uint64_t rg : {uint64_t(0), uint64_t(100)}) {
        WriteOpts o;
        o.zstd = zstd;
        o.chunk = chunk;
        o.row_group = rg;
        o.kv = {{"config.json", "{\"a\": 1}"}, {"empty", ""}, {"bin", std::string("\0\x01\xff", 3)}};
        const fs::path p = dir / ("m" + std::to_string(zstd) + "_" + std::to_string(chunk) + "_" +
                                  std::to_string(rg) + ".parquet");
        write_parquet(p, ts, o);
        auto f = llmc::open_parquet_checkpoint(p);
        EXPECT_EQ(f.kv, o.kv);
        EXPECT_EQ(f.tensors->origin(), p.string());
        expect_same(*f.tensors, ts);
        // The layout: one row per chunk; small row groups give several groups.
        const pq::FileMetaData m = read_footer(p);
        uint64_t rows = 0;
        for (const auto& t : ts) rows += t.data.empty() ? 1 : (t.data.size() + chunk - 1) / chunk;
        EXPECT_EQ(uint64_t(m.num_rows), rows);
        if (rg) EXPECT_GT(m.row_groups.size(), 5u);
        else if (chunk > 1000) EXPECT_EQ(m.row_groups.size(), 1u);
        for (const auto& g : m.row_groups)
          for (const auto& c : g.columns) EXPECT_EQ(c.meta_data->codec, zstd ? 6 : 0);
      }
    }
  }
}

TEST(Parquet, SchemaAndLayoutAreStandard) {
  const fs::path p = llmc::test::temp_dir("pq-schema") / "s.parquet";
  write_parquet(p, {make_tensor("w", DType::F32, {10, 10}, 1)}, {.chunk = 128});
  const pq::FileMetaData m = read_footer(p);
  ASSERT_EQ(m.schema.size(), 8u);
  const char* names[] = {"schema", "name", "dtype", "shape", "list", "element", "chunk", "data"};
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(m.schema[i].name, names[i]);
  EXPECT_EQ(m.schema[3].converted_type, 3);  // LIST
  EXPECT_EQ(m.schema[3].logical_type, 3);
  EXPECT_EQ(m.schema[4].repetition_type, 2);  // REPEATED
  EXPECT_EQ(m.schema[5].type, 2);             // INT64
  EXPECT_EQ(m.schema[1].logical_type, 1);     // STRING
  EXPECT_EQ(m.num_rows, 4);                   // 400 bytes / 128
  ASSERT_EQ(m.row_groups.size(), 1u);
  EXPECT_EQ(m.row_groups[0].columns[2].meta_data->path_in_schema,
            (std::vector<std::string>{"shape", "list", "element"}));
  EXPECT_EQ(m.row_groups[0].columns[2].meta_data->num_values, 8);  // 2 dims x 4 rows
  EXPECT_EQ(m.created_by.value().rfind("llmc version", 0), 0u);
  // The dtype column holds the safetensors spelling.
  const std::string b = bytes_of(p);
  EXPECT_NE(b.find("F32"), std::string::npos);
  EXPECT_EQ(b.substr(0, 4), "PAR1");
  EXPECT_EQ(b.substr(b.size() - 4), "PAR1");
}

TEST(Parquet, RealModelTensorsRoundTrip) {
  const fs::path st = llmc::test::model_dir("qwen3-tiny") / "model.safetensors";
  ASSERT_TRUE(fs::exists(st)) << st;
  const std::vector<T> ts = load_safetensors(st);
  ASSERT_GT(ts.size(), 10u);
  const fs::path dir = llmc::test::temp_dir("pq-real");
  for (bool zstd : {false, true}) {
    const fs::path p = dir / (zstd ? "z.parquet" : "u.parquet");
    write_parquet(p, ts, {.chunk = 256 << 10, .zstd = zstd, .row_group = 1 << 20});
    auto f = llmc::open_parquet_checkpoint(p);
    expect_same(*f.tensors, ts);
    // get() in reverse order and twice (no state carried between calls).
    for (auto it = ts.rbegin(); it != ts.rend(); ++it) {
      auto r = f.tensors->get(it->name);
      EXPECT_EQ(std::memcmp(r.data, it->data.data(), it->data.size()), 0);
    }
  }
}

TEST(Parquet, GetReadsOnlyItsOwnPages) {
  // Corrupting the last tensor's data page header breaks only that tensor.
  const fs::path dir = llmc::test::temp_dir("pq-stream");
  const std::vector<T> ts = {make_tensor("a", DType::F32, {16}, 1), make_tensor("b", DType::F32, {16}, 2),
                             make_tensor("c", DType::F32, {16}, 3)};
  const fs::path p = dir / "s.parquet";
  write_parquet(p, ts);
  const pq::FileMetaData m = read_footer(p);
  const auto& data_col = *m.row_groups[0].columns[4].meta_data;
  std::string b = bytes_of(p);
  const size_t page = size_t(data_col.total_compressed_size) / 3;  // three equal pages
  const size_t last = size_t(data_col.data_page_offset) + 2 * page;
  b[last] = char(0xff);
  b[last + 1] = char(0xff);
  put_file(dir / "bad.parquet", b);
  auto f = llmc::open_parquet_checkpoint(dir / "bad.parquet");
  EXPECT_EQ(f.tensors->list().size(), 3u);
  auto a = f.tensors->get("a");
  EXPECT_EQ(std::memcmp(a.data, ts[0].data.data(), 64), 0);
  auto bb = f.tensors->get("b");
  EXPECT_EQ(std::memcmp(bb.data, ts[1].data.data(), 64), 0);
  const std::string msg = error_of([&] { f.tensors->get("c"); });
  EXPECT_NE(msg.find("bad.parquet"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'c'"), std::string::npos) << msg;
}

TEST(Parquet, CorruptShapeCannotForceHugeAllocation) {
  const fs::path dir = llmc::test::temp_dir("pq-alloc");
  const std::vector<T> ts = {make_tensor("w", DType::F32, {300, 7}, 1), make_tensor("v", DType::F32, {5}, 2)};
  const fs::path good = dir / "good.parquet";
  write_parquet(good, ts, {.chunk = 1000, .checksums = false});  // w: 9 rows, v: 1 row, one row group
  // Understated uncompressed sizes: get() grows its buffer and still returns the exact bytes.
  rewrite_footer(good, dir / "small.parquet", [](pq::FileMetaData& m) {
    for (auto& g : m.row_groups) g.columns[4].meta_data->total_uncompressed_size = 1;
  });
  expect_same(*llmc::open_parquet_checkpoint(dir / "small.parquet").tensors, ts);
  // A shape claiming ~2^61 bytes: a clean error about the size, no attempt to allocate it.
  std::string b = bytes_of(good);
  const size_t body = first_page_body(good, 0, 2);
  uint32_t rl, dl;
  std::memcpy(&rl, b.data() + body, 4);
  std::memcpy(&dl, b.data() + body + 4 + rl, 4);
  const size_t values = body + 4 + rl + 4 + dl;  // w: 300, 7 (rows 0..8), then v: 5
  for (int row = 0; row < 9; ++row) b[values + size_t(row) * 16 + 6] = char(0x10);  // 300 -> 2^52+300
  put_file(dir / "huge.parquet", b);
  auto f = llmc::open_parquet_checkpoint(dir / "huge.parquet");
  EXPECT_GT(f.tensors->list()[0].nbytes, uint64_t(1) << 55);
  const std::string msg = error_of([&] { f.tensors->get("w"); });
  EXPECT_NE(msg.find("tensor 'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("need"), std::string::npos) << msg;
}

TEST(Parquet, WriterRejectsBadInput) {
  const fs::path dir = llmc::test::temp_dir("pq-werr");
  const std::string d(16, 'x');
  {
    llmc::ParquetTensorWriter w(dir / "a.parquet", 1024, false);
    w.add("x", DType::F32, {4}, d.data(), 16);
    EXPECT_THROW(w.add("x", DType::F32, {4}, d.data(), 16), Error);  // duplicate
    const std::string msg = error_of([&] { w.add("y", DType::F32, {5}, d.data(), 16); });
    EXPECT_NE(msg.find("'y'"), std::string::npos) << msg;
    EXPECT_THROW(w.add("z", DType::F32, {-4}, d.data(), 16), Error);
    EXPECT_THROW(w.add("", DType::F32, {4}, d.data(), 16), Error);
    EXPECT_THROW(w.add("n", DType::F32, {4}, nullptr, 16), Error);
    EXPECT_THROW(w.add("big", DType::F64, {int64_t(1) << 40, int64_t(1) << 40}, d.data(), 16), Error);
    EXPECT_THROW(w.set_kv({{"", "v"}}), Error);
    EXPECT_THROW(w.set_row_group_bytes(0), Error);
    w.finish();
    EXPECT_THROW(w.finish(), Error);
    EXPECT_THROW(w.add("w", DType::F32, {4}, d.data(), 16), Error);
    EXPECT_THROW(w.set_kv({}), Error);
  }
  // The failed adds left the file consistent: only "x".
  auto f = llmc::open_parquet_checkpoint(dir / "a.parquet");
  ASSERT_EQ(f.tensors->list().size(), 1u);
  EXPECT_EQ(f.tensors->list()[0].name, "x");
  EXPECT_THROW(llmc::ParquetTensorWriter(dir / "c.parquet", 0, false), Error);
  EXPECT_THROW(llmc::ParquetTensorWriter(dir / "c.parquet", (1ull << 30) + 1, false), Error);
  EXPECT_THROW(llmc::ParquetTensorWriter(dir / "no" / "such" / "dir.parquet", 1024, false), Error);
  // An empty file (no tensors) is valid.
  { llmc::ParquetTensorWriter w(dir / "empty.parquet", 1024, true); w.finish(); }
  auto e = llmc::open_parquet_checkpoint(dir / "empty.parquet");
  EXPECT_TRUE(e.tensors->list().empty());
  EXPECT_FALSE(e.tensors->has("x"));
  EXPECT_THROW(e.tensors->get("x"), Error);
}

TEST(Parquet, ReaderRejectsBrokenFiles) {
  const fs::path dir = llmc::test::temp_dir("pq-rerr");
  const std::vector<T> ts = {make_tensor("aa", DType::BF16, {4, 8}, 1), make_tensor("bb", DType::F32, {40}, 2)};
  const fs::path good = dir / "good.parquet";
  // Without checksums: the checks behind them (row contents patched in place) are tested here.
  write_parquet(good, ts, {.chunk = 32, .checksums = false});  // aa: 2 chunks, bb: 5 chunks
  auto expect_error = [&](const fs::path& p, const std::string& needle) {
    const std::string msg = error_of([&] { open_and_read_all(p); });
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "expected '" << needle << "' in: " << msg;
  };
  expect_error(dir / "missing.parquet", "cannot open");
  expect_error(dir, "not a regular file");
  put_file(dir / "short.parquet", "PAR1PAR1");
  expect_error(dir / "short.parquet", "too short");
  const std::string g = bytes_of(good);
  put_file(dir / "nohead.parquet", "XXXX" + g.substr(4));
  expect_error(dir / "nohead.parquet", "no PAR1 magic at the start");
  put_file(dir / "trunc.parquet", g.substr(0, g.size() - 1));
  expect_error(dir / "trunc.parquet", "no PAR1 magic at the end");
  put_file(dir / "enc.parquet", g.substr(0, g.size() - 4) + "PARE");
  expect_error(dir / "enc.parquet", "encrypted");
  std::string big = g;
  big[big.size() - 5] = char(0x7f);
  put_file(dir / "footlen.parquet", big);
  expect_error(dir / "footlen.parquet", "footer length");

  auto edited = [&](const std::string& name, const std::function<void(pq::FileMetaData&)>& fn) {
    const fs::path p = dir / name;
    rewrite_footer(good, p, fn);
    return p;
  };
  expect_error(edited("nocol.parquet", [](auto& m) { m.schema[3].name = "dims"; }), "missing column 'shape'");
  expect_error(edited("dupcol.parquet", [](auto& m) { m.schema[6].name = "dtype"; }), "more than once");
  expect_error(edited("type.parquet", [](auto& m) { m.schema[7].type = 1; }), "physical type");
  expect_error(edited("flat.parquet",
                      [](auto& m) {
                        m.schema[4].repetition_type = 0;
                      }),
               "list of integers");
  expect_error(edited("dupkv.parquet", [](auto& m) { m.key_value_metadata = {{"k", "1"}, {"k", "2"}}; }),
               "duplicate key-value metadata key 'k'");
  expect_error(edited("rows.parquet", [](auto& m) { m.num_rows += 1; }), "rows");
  expect_error(edited("rgrows.parquet",
                      [](auto& m) {
                        m.row_groups[0].num_rows -= 1;
                        m.num_rows -= 1;
                      }),
               "row group 0");
  expect_error(edited("ncols.parquet", [](auto& m) { m.row_groups[0].columns.pop_back(); }), "column chunks");
  expect_error(edited("path.parquet", [](auto& m) { m.row_groups[0].columns[0].file_path = "x.parquet"; }),
               "another file");
  expect_error(edited("nometa.parquet", [](auto& m) { m.row_groups[0].columns[1].meta_data.reset(); }),
               "no metadata");
  expect_error(edited("offset.parquet",
                      [](auto& m) { m.row_groups[0].columns[4].meta_data->data_page_offset = 1 << 30; }),
               "outside the data region");
  expect_error(edited("order.parquet",
                      [](auto& m) { m.row_groups[0].columns[0].meta_data->path_in_schema = {"dtype"}; }),
               "order");
  expect_error(edited("codec.parquet", [](auto& m) { m.row_groups[0].columns[0].meta_data->codec = 4; }),
               "BROTLI");
  expect_error(edited("nvals.parquet", [](auto& m) { m.row_groups[0].columns[2].meta_data->num_values = 3; }),
               "metadata says");
  expect_error(edited("schema.parquet", [](auto& m) { m.schema[0].num_children = 9; }), "schema");
  expect_error(edited("schema2.parquet", [](auto& m) { m.schema.push_back(m.schema[1]); }), "outside the tree");

  // Row-content errors: edit column values in place (uncompressed file).
  struct Patch {
    size_t col, at;
    std::string bytes;
  };
  auto patched_multi = [&](const std::string& name, const std::vector<Patch>& ps) {
    std::string b = g;
    for (const auto& p : ps) b.replace(first_page_body(good, 0, p.col) + p.at, p.bytes.size(), p.bytes);
    const fs::path p = dir / name;
    put_file(p, b);
    return p;
  };
  auto patched = [&](const std::string& name, size_t col, size_t at, const std::string& bytes) {
    return patched_multi(name, {{col, at, bytes}});
  };
  // dtype column: rows "BF16","BF16",(5x)"F32"; each value is a 4-byte length + text.
  expect_error(patched("dtype.parquet", 1, 4, "XF16"), "unknown dtype 'XF16'");
  expect_error(patched("dtype2.parquet", 1, 12, "BF15"), "disagrees on dtype or shape");
  // chunk column: INT32 per row: 0,1,0,1,2,3,4.
  expect_error(patched("gap.parquet", 3, 4 * 4, std::string("\x03\0\0\0", 4)), "not contiguous");
  expect_error(patched("first.parquet", 3, 0, std::string("\x01\0\0\0", 4)), "first chunk is 1");
  expect_error(patched("dupe.parquet", 3, 4 * 4, std::string("\x00\0\0\0", 4)), "duplicate tensor name");
  // name column: "aa","aa","bb"x5 (4-byte length + 2 bytes each). Row 4 (bb, chunk 2) becomes
  // "aa" chunk 0: a tensor whose rows are not consecutive.
  expect_error(patched_multi("name.parquet", {{0, 4 * 6 + 4, "aa"}, {3, 4 * 4, std::string("\0\0\0\0", 4)}}),
               "appears twice");
  expect_error(patched("name2.parquet", 0, 3 * 6 + 4, "cc"), "first chunk is 1");
  expect_error(patched("name3.parquet", 0, 3 * 6, std::string("\0\0\0\0", 4)), "");
  // shape column: levels then INT64 values 4,8,4,8,40,40,...: first dim of aa -> 5.
  {
    const std::string b = g;
    const size_t body = first_page_body(good, 0, 2);
    uint32_t rl, dl;
    std::memcpy(&rl, b.data() + body, 4);
    std::memcpy(&dl, b.data() + body + 4 + rl, 4);
    const size_t values = 4 + rl + 4 + dl;
    expect_error(patched("shape.parquet", 2, values, std::string("\x05", 1)), "disagrees on dtype or shape");
    std::string both = b;
    both.replace(body + values, 1, "\x05");
    both.replace(body + values + 16, 1, "\x05");
    put_file(dir / "shape2.parquet", both);
    expect_error(dir / "shape2.parquet", "need 80");  // 5x8 bf16 = 80 bytes, data holds 64
    both = b;
    both.replace(body + values, 1, "\x03");  // aa: [3, 8] = 48 bytes, its chunks hold 64
    both.replace(body + values + 16, 1, "\x03");
    put_file(dir / "shape4.parquet", both);
    expect_error(dir / "shape4.parquet", "holds more than the 48 bytes");
    both = b;
    both.replace(body + values + 7, 1, "\x80");  // negative dimension
    both.replace(body + values + 16 + 7, 1, "\x80");
    put_file(dir / "shape3.parquet", both);
    expect_error(dir / "shape3.parquet", "negative dimension");
  }
  // data column: the first page's PLAIN length prefix grows -> disagrees with the page size.
  expect_error(patched("datalen.parquet", 4, 0, std::string("\x21", 1)), "tensor 'aa'");
}

TEST(Parquet, FuzzTruncationsAndByteFlips) {
  const fs::path dir = llmc::test::temp_dir("pq-fuzz");
  const std::vector<T> ts = {make_tensor("embed", DType::BF16, {8, 6}, 1), make_tensor("scalar", DType::F32, {}, 2),
                             make_tensor("empty", DType::I8, {0, 3}, 3), make_tensor("norm", DType::F16, {40}, 4)};
  size_t opened = 0, failed = 0;
  for (bool zstd : {false, true}) {
    const fs::path src = dir / (zstd ? "z.parquet" : "u.parquet");
    write_parquet(src, ts, {.chunk = 24, .zstd = zstd, .row_group = 64, .kv = {{"config.json", "{}"}},
                            .checksums = false});
    const std::string g = bytes_of(src);
    const ScratchFile scratch("pq-fuzz");
    const fs::path& p = scratch.path;
    for (size_t n = 0; n < g.size(); n += 3) {
      put_file(p, g.substr(0, n));
      EXPECT_THROW(open_and_read_all(p), Error) << "truncated to " << n;
    }
    std::mt19937 rng(zstd ? 11 : 12);
    for (int it = 0; it < 1500; ++it) {
      std::string b = g;
      const int flips = 1 + int(rng() % 4);
      for (int k = 0; k < flips; ++k) {
        // Half of the flips hit the footer, where the structure lives.
        const size_t footer = g.size() / 2;
        const size_t pos = (rng() & 1) ? footer + rng() % (g.size() - footer) : rng() % g.size();
        b[pos] = char(uint8_t(b[pos]) ^ uint8_t(1u << (rng() % 8)));
      }
      put_file(p, b);
      try {
        open_and_read_all(p);
        ++opened;
      } catch (const Error&) {
        ++failed;
      }
    }
  }
  EXPECT_GT(failed, 100u);  // the fuzzing did hit the structure
  EXPECT_GT(opened, 10u);
}

// =============================== integrity: CRCs and checksums ===============================

namespace {
// Every page of column `col` in row group `g`: (header, absolute body offset).
std::vector<std::pair<pq::PageHeader, size_t>> pages_of(const fs::path& p, size_t g, size_t col) {
  const pq::FileMetaData m = read_footer(p);
  const auto& md = *m.row_groups.at(g).columns.at(col).meta_data;
  const std::string b = bytes_of(p);
  std::vector<std::pair<pq::PageHeader, size_t>> out;
  size_t pos = size_t(md.data_page_offset);
  const size_t end = pos + size_t(md.total_compressed_size);
  while (pos < end) {
    ThriftReader r(reinterpret_cast<const uint8_t*>(b.data()) + pos, end - pos, "page");
    pq::PageHeader h = pq::decode_page_header(r);
    out.emplace_back(h, pos + r.pos());
    pos += r.pos() + size_t(h.compressed_page_size);
  }
  return out;
}

std::string flip_bit(std::string b, size_t at, int bit) {
  b[at] = char(uint8_t(b[at]) ^ uint8_t(1u << bit));
  return b;
}

const std::vector<T>& integrity_tensors() {
  static const std::vector<T> ts = {make_tensor("embed", DType::BF16, {8, 6}, 1),
                                    make_tensor("scalar", DType::F32, {}, 2),
                                    make_tensor("empty", DType::I8, {0, 3}, 3),
                                    make_tensor("norm", DType::F16, {40}, 4)};
  return ts;
}
}  // namespace

TEST(ParquetIntegrity, PageCrcIsTheSpecCrc32OfTheStoredPageBytes) {
  const fs::path dir = llmc::test::temp_dir("pq-crc");
  for (bool zstd : {false, true}) {
    const fs::path p = dir / (zstd ? "z.parquet" : "u.parquet");
    write_parquet(p, integrity_tensors(), {.chunk = 24, .zstd = zstd});
    const std::string b = bytes_of(p);
    size_t pages = 0;
    for (size_t col = 0; col < 5; ++col) {
      for (const auto& [h, body] : pages_of(p, 0, col)) {
        ASSERT_TRUE(h.crc.has_value()) << "column " << col;
        // zlib's crc32 (the gzip CRC-32 the Parquet spec names) over the bytes after the header.
        const uint32_t want = uint32_t(::crc32(0, reinterpret_cast<const Bytef*>(b.data()) + body,
                                               uInt(h.compressed_page_size)));
        EXPECT_EQ(uint32_t(*h.crc), want) << "column " << col;
        ++pages;
      }
    }
    EXPECT_EQ(pages, 4u + 4 + 1 + 1 + 4);  // one page per small column; data: 4 + 1 + 1 + 4 chunks
    // Files without checksums: no crc fields, no checksum keys (as llmc wrote them before).
    const fs::path old = dir / (zstd ? "z_old.parquet" : "u_old.parquet");
    write_parquet(old, integrity_tensors(), {.chunk = 24, .zstd = zstd, .checksums = false});
    for (size_t col = 0; col < 5; ++col)
      for (const auto& [h, body] : pages_of(old, 0, col)) EXPECT_FALSE(h.crc.has_value());
    for (const auto& kv : read_footer(old).key_value_metadata) EXPECT_EQ(kv.key.rfind("llmc.", 0), std::string::npos);
    auto f = llmc::open_parquet_checkpoint(old);
    expect_same(*f.tensors, integrity_tensors());
  }
}

TEST(ParquetIntegrity, BitFlipInADataPageNamesFileAndTensor) {
  const fs::path dir = llmc::test::temp_dir("pq-flip-data");
  for (bool zstd : {false, true}) {
    const fs::path good = dir / (zstd ? "z.parquet" : "u.parquet");
    write_parquet(good, integrity_tensors(), {.chunk = 24, .zstd = zstd});
    const std::string g = bytes_of(good);
    // Data pages in row order: embed (96 bytes: 4 chunks), scalar, empty, norm (80 bytes: 4 chunks).
    const char* owner[] = {"embed", "embed", "embed", "embed", "scalar", "empty", "norm", "norm", "norm", "norm"};
    const auto pages = pages_of(good, 0, 4);
    ASSERT_EQ(pages.size(), 10u);
    for (size_t i = 0; i < pages.size(); ++i) {
      const auto& [h, body] = pages[i];
      for (size_t at : {body, body + size_t(h.compressed_page_size) - 1}) {
        const fs::path p = dir / "bad.parquet";
        put_file(p, flip_bit(g, at, int(i % 8)));
        auto f = llmc::open_parquet_checkpoint(p);  // the index is intact
        const std::string msg = error_of([&] { f.tensors->get(owner[i]); });
        EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
        EXPECT_NE(msg.find(std::string("tensor '") + owner[i] + "'"), std::string::npos) << msg;
        if (!zstd) EXPECT_NE(msg.find("CRC mismatch"), std::string::npos) << "flip at " << at << ": " << msg;
        // The other tensors still read, exactly.
        for (const auto& t : integrity_tensors()) {
          if (t.name == owner[i]) continue;
          const auto ref = f.tensors->get(t.name);
          EXPECT_EQ(std::string(reinterpret_cast<const char*>(ref.data), ref.info.nbytes), t.data);
        }
      }
    }
  }
}

TEST(ParquetIntegrity, TensorChecksumCatchesWhatPageCrcsDoNotCover) {
  // A tensor whose stored CRC disagrees with its (intact, CRC-valid) pages: a writer bug or a
  // forged footer. The footer is re-sealed so that only the tensor checksum can catch it.
  const fs::path dir = llmc::test::temp_dir("pq-tcrc");
  const fs::path good = dir / "good.parquet";
  write_parquet(good, integrity_tensors(), {.chunk = 24});
  const fs::path p = dir / "forged.parquet";
  rewrite_footer(good, p, [](pq::FileMetaData& m) {
    for (auto& kv : m.key_value_metadata)
      if (kv.key == pq::kTensorCrcKey) (*kv.value)[9 * 3] ^= 1;  // norm's first hex digit
  });
  auto f = llmc::open_parquet_checkpoint(p);
  const std::string msg = error_of([&] { f.tensors->get("norm"); });
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'norm'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_NO_THROW(f.tensors->get("embed"));
  // Malformed checksum lists and a missing footer checksum are errors at open.
  auto expect_open_error = [&](const std::string& name, const std::function<void(pq::FileMetaData&)>& edit,
                               const std::string& needle) {
    const fs::path q = dir / name;
    rewrite_footer(good, q, edit);
    const std::string e = error_of([&] { llmc::open_parquet_checkpoint(q); });
    EXPECT_NE(e.find(q.string()), std::string::npos) << e;
    EXPECT_NE(e.find(needle), std::string::npos) << "expected '" << needle << "' in: " << e;
  };
  auto set_crcs = [](const std::string& v) {
    return [v](pq::FileMetaData& m) {
      for (auto& kv : m.key_value_metadata)
        if (kv.key == pq::kTensorCrcKey) kv.value = v;
    };
  };
  expect_open_error("short.parquet", set_crcs("00000000 11111111"), "is malformed");
  expect_open_error("hex.parquet", set_crcs("0000000g 00000000 00000000 00000000"), "is malformed");
  expect_open_error("sep.parquet", set_crcs("00000000,00000000 00000000 00000000"), "is malformed");
  // Unsealed footer (the footer-CRC entry lost) that still has tensor checksums.
  const fs::path q = dir / "unsealed.parquet";
  {
    std::string b = bytes_of(good);
    uint32_t len;
    std::memcpy(&len, b.data() + b.size() - 8, 4);
    pq::FileMetaData m = read_footer(good);
    std::erase_if(m.key_value_metadata, [](const pq::KeyValue& kv) { return kv.key == pq::kFooterCrcKey; });
    ThriftWriter w;
    pq::encode_file_metadata(w, m);
    std::string out = b.substr(0, b.size() - 8 - len) + w.bytes();
    const uint32_t n = uint32_t(w.bytes().size());
    out.append(reinterpret_cast<const char*>(&n), 4);
    put_file(q, out + "PAR1");
  }
  const std::string e = error_of([&] { llmc::open_parquet_checkpoint(q); });
  EXPECT_NE(e.find("footer checksum entry missing"), std::string::npos) << e;
  // The writer keeps its keys to itself; the reader does not return them.
  llmc::ParquetTensorWriter w(dir / "w.parquet", 1024, false);
  EXPECT_THROW(w.set_kv({{pq::kTensorCrcKey, "x"}}), Error);
  EXPECT_THROW(w.set_kv({{pq::kFooterCrcKey, "x"}}), Error);
  w.add("x", DType::F32, {1}, "abcd", 4);
  EXPECT_THROW(w.set_checksums(false), Error);  // after add()
  w.finish();
  EXPECT_TRUE(llmc::open_parquet_checkpoint(dir / "w.parquet").kv.empty());
}

TEST(ParquetIntegrity, EveryBitFlipIsAnErrorOrReadsBackExactly) {
  // With checksums, a flipped bit anywhere (pages, page headers, footer, key-value metadata,
  // trailer) either fails with an error naming the file, or (a flip in a header field llmc does
  // not need) reads back exactly the written tensors and metadata: never exit 0 with garbage.
  const fs::path dir = llmc::test::temp_dir("pq-flip-all");
  const std::map<std::string, std::string> kv = {{"config.json", "{\"hidden_size\": 8}"}, {"file:a.txt", "hello"}};
  for (bool zstd : {false, true}) {
    const fs::path src = dir / (zstd ? "z.parquet" : "u.parquet");
    write_parquet(src, integrity_tensors(), {.chunk = 24, .zstd = zstd, .row_group = 64, .kv = kv});
    const std::string g = bytes_of(src);
    const ScratchFile scratch(zstd ? "pq-flip-z" : "pq-flip-u");
    const fs::path& p = scratch.path;
    size_t errors = 0, exact = 0;
    uint32_t len;
    std::memcpy(&len, g.data() + g.size() - 8, 4);
    const size_t footer = g.size() - 8 - len;
    size_t footer_errors = 0;
    for (size_t at = 0; at < g.size(); ++at) {
      put_file(p, flip_bit(g, at, int((at * 5) % 8)));
      std::string msg;
      try {
        auto f = llmc::open_parquet_checkpoint(p);
        msg = "(opened)";
        EXPECT_EQ(f.kv, kv) << "flip at " << at;
        for (const auto& t : integrity_tensors()) {
          const auto ref = f.tensors->get(t.name);
          ASSERT_EQ(std::string(reinterpret_cast<const char*>(ref.data), ref.info.nbytes), t.data)
              << "garbage read back after a flip at byte " << at;
        }
        ++exact;
      } catch (const Error& e) {
        msg = e.what();
        EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
        ++errors;
        if (at >= footer) ++footer_errors;
      }
    }
    EXPECT_EQ(footer_errors, g.size() - footer);  // the footer is sealed: every flip there is caught
    EXPECT_GT(errors, g.size() * 9 / 10) << exact;
  }
}

namespace {
// The tensors of the files written by hyparquet-writer (tests/interop/write.mjs), both in the
// live interop test and in the checked-in fixtures made by it.
std::vector<T> foreign_tensors() {
  return {
      make_tensor("a.weight", DType::BF16, {32, 50}, 1),  // 3200 bytes
      make_tensor("scalar", DType::F32, {}, 2),
      make_tensor("empty", DType::F16, {0}, 3),
      make_tensor("b.weight", DType::F32, {10, 3}, 4),
      make_tensor("c.weight", DType::F32, {10, 3}, 4),  // same bytes as b: dictionary-friendly
      make_tensor("ids", DType::I32, {5}, 5),
  };
}
const char* const kForeignFixtures[] = {"snappy_nullable", "plain_required", "zstd_dict",
                                        "gzip_required",   "delta_nullable", "delta_required"};
}  // namespace

TEST(Parquet, ReadsCheckedInHyparquetFiles) {
  // Files written by hyparquet-writer (data page v2, OPTIONAL columns, dictionary pages,
  // several row groups and pages, SNAPPY/GZIP/ZSTD), checked in so that this runs without node.
  const std::vector<T> ts = foreign_tensors();
  const std::map<std::string, std::string> kv = {{"llmc.format_version", "1"}, {"note", "written by hyparquet"}};
  size_t opened = 0, failed = 0;
  for (const char* name : kForeignFixtures) {
    SCOPED_TRACE(name);
    const fs::path p = llmc::test::repo_root() / "tests" / "interop" / "fixtures" / (std::string(name) + ".parquet");
    ASSERT_TRUE(fs::exists(p)) << p;
    auto f = llmc::open_parquet_checkpoint(p);
    EXPECT_EQ(f.kv, kv);
    expect_same(*f.tensors, ts);
    EXPECT_EQ(read_footer(p).created_by, "hyparquet");
    // Byte flips and truncations over these layouts too: llmc::Error or success, never a crash.
    const std::string g = bytes_of(p);
    std::mt19937 rng(21);
    const ScratchFile scratch("pq-foreign");
    const fs::path& q = scratch.path;
    for (int it = 0; it < 400; ++it) {
      std::string b = g;
      if (it % 10 == 0) {
        b.resize(rng() % g.size());
      } else {
        for (int k = 0; k < 1 + int(rng() % 3); ++k) {
          const size_t pos = rng() % g.size();
          b[pos] = char(uint8_t(b[pos]) ^ uint8_t(1u << (rng() % 8)));
        }
      }
      put_file(q, b);
      try {
        open_and_read_all(q);
        ++opened;
      } catch (const Error&) {
        ++failed;
      }
    }
  }
  EXPECT_GT(failed, 100u);
  EXPECT_GT(opened, 10u);
}

// =============================== interop (hyparquet) ===============================

namespace {

fs::path interop_dir() { return llmc::test::repo_root() / "tests" / "interop"; }

std::string interop_skip_reason() {
  if (std::system("command -v node >/dev/null 2>&1") != 0) return "node not found";
  for (const char* m : {"hyparquet", "hyparquet-writer", "hyparquet-compressors"})
    if (!fs::exists(interop_dir() / "node_modules" / m))
      return std::string("tests/interop/node_modules/") + m + " missing (run bash scripts/interop-deps.sh)";
  return "";
}

int run_node(const std::string& args, std::string* out) {
  const std::string cmd = "cd '" + interop_dir().string() + "' && node " + args + " 2>&1";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return -1;
  std::array<char, 4096> buf;
  size_t n;
  out->clear();
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) out->append(buf.data(), n);
  const int st = ::pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Writes with llmc, reads with hyparquet, compares with the source and llmc's own reader.
void check_hyparquet_reads(const fs::path& dir, const std::string& tag, const std::vector<T>& ts,
                           const WriteOpts& o) {
  SCOPED_TRACE(tag);
  const fs::path p = dir / (tag + ".parquet");
  write_parquet(p, ts, o);
  const fs::path out = dir / (tag + ".out");
  fs::create_directories(out);
  std::string log;
  ASSERT_EQ(run_node("read.mjs '" + p.string() + "' '" + out.string() + "'", &log), 0) << log;
  const auto meta = nlohmann::json::parse(bytes_of(out / "meta.json"));
  // Schema leaves as hyparquet sees them.
  std::vector<std::string> leaves;
  for (const auto& l : meta["leaves"]) leaves.push_back(l["path"]);
  EXPECT_EQ(leaves, (std::vector<std::string>{"name", "dtype", "shape.list.element", "chunk", "data"}));
  for (const auto& g : meta["row_groups"])
    for (const auto& c : g["codecs"]) EXPECT_EQ(c, o.zstd ? "ZSTD" : "UNCOMPRESSED");
  // Key-value metadata.
  std::map<std::string, std::string> kv;
  for (auto it = meta["kv"].begin(); it != meta["kv"].end(); ++it) kv[it.key()] = it.value();
  // llmc's checksums are plain key-value pairs to hyparquet (which also accepted the page CRCs).
  EXPECT_EQ(kv.erase(pq::kTensorCrcKey), o.checksums ? 1u : 0u);
  EXPECT_EQ(kv.erase(pq::kFooterCrcKey), o.checksums ? 1u : 0u);
  EXPECT_EQ(kv, o.kv);
  // Every row: name, dtype, shape, chunk and length as llmc laid them out.
  size_t r = 0;
  for (const auto& t : ts) {
    const uint64_t chunks = t.data.empty() ? 1 : (t.data.size() + o.chunk - 1) / o.chunk;
    for (uint64_t c = 0; c < chunks; ++c, ++r) {
      ASSERT_LT(r, meta["rows"].size());
      const auto& row = meta["rows"][r];
      EXPECT_EQ(row["name"], t.name);
      EXPECT_EQ(row["dtype"], llmc::dtype_traits(t.dtype).safetensors);
      EXPECT_EQ(row["shape"].get<Shape>(), t.shape) << t.name;
      EXPECT_EQ(row["chunk"], c);
      EXPECT_EQ(row["len"], std::min<uint64_t>(o.chunk, t.data.size() - c * o.chunk));
    }
  }
  EXPECT_EQ(meta["num_rows"], r);
  EXPECT_EQ(meta["rows"].size(), r);
  // Bytes: hyparquet's concatenated chunks == source == llmc reader.
  auto f = llmc::open_parquet_checkpoint(p);
  ASSERT_EQ(meta["tensors"].size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    EXPECT_EQ(meta["tensors"][i]["name"], ts[i].name);
    const std::string theirs = bytes_of(out / meta["tensors"][i]["file"].get<std::string>());
    EXPECT_EQ(theirs, ts[i].data) << ts[i].name;
    const auto ref = f.tensors->get(ts[i].name);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(ref.data), ref.info.nbytes), theirs) << ts[i].name;
  }
}

}  // namespace

TEST(ParquetInterop, HyparquetReadsLlmcFiles) {
  const std::string why = interop_skip_reason();
  if (!why.empty()) GTEST_SKIP() << "interop skipped: " << why;
  const fs::path dir = llmc::test::temp_dir("pq-interop-r");
  const std::vector<T> synthetic = {
      make_tensor("model.embed_tokens.weight", DType::BF16, {64, 40}, 1),  // 5120 bytes: split
      make_tensor("scalar", DType::F32, {}, 2),
      make_tensor("empty", DType::F16, {0, 8}, 3),
      make_tensor("model.norm.weight", DType::F32, {40}, 4),
      make_tensor("q", DType::F8_E4M3, {3, 7}, 5),
      make_tensor("ids", DType::I64, {2, 2, 2}, 6),
  };
  const WriteOpts kv_opts{.chunk = 1000, .kv = {{"llmc.format_version", "1"}, {"config.json", "{\"x\": [1, 2]}"}}};
  for (bool zstd : {false, true}) {
    WriteOpts o = kv_opts;
    o.zstd = zstd;
    check_hyparquet_reads(dir, zstd ? "syn_zstd" : "syn_plain", synthetic, o);
    o.row_group = 2000;  // several row groups
    check_hyparquet_reads(dir, zstd ? "syn_zstd_rg" : "syn_plain_rg", synthetic, o);
  }
  const std::vector<T> real = load_safetensors(llmc::test::model_dir("qwen3-tiny") / "model.safetensors");
  for (bool zstd : {false, true}) {
    WriteOpts o{.chunk = 512 << 10, .zstd = zstd, .row_group = 1 << 20,
                .kv = {{"config.json", bytes_of(llmc::test::model_dir("qwen3-tiny") / "config.json")}}};
    check_hyparquet_reads(dir, zstd ? "qwen3_zstd" : "qwen3_plain", real, o);
  }
}

TEST(ParquetInterop, LlmcReadsHyparquetWriterFiles) {
  const std::string why = interop_skip_reason();
  if (!why.empty()) GTEST_SKIP() << "interop skipped: " << why;
  const fs::path dir = llmc::test::temp_dir("pq-interop-w");
  const std::vector<T> ts = foreign_tensors();
  // LLMC_PARQUET_FIXTURES=DIR copies the files written here to DIR (to refresh
  // tests/interop/fixtures, which the node-free test ReadsCheckedInHyparquetFiles reads).
  const char* fixture_dir = std::getenv("LLMC_PARQUET_FIXTURES");
  // The tensor bytes the node script slices rows from.
  std::string blob;
  std::vector<size_t> offsets;
  for (const auto& t : ts) {
    offsets.push_back(blob.size());
    blob += t.data;
  }
  put_file(dir / "blob.bin", blob);
  struct Variant {
    const char* tag;
    const char* codec;
    bool nullable;
    int row_group;
    int page;
    std::map<std::string, std::string> encodings;  // column -> encoding forced on the writer
    uint64_t chunk;
  };
  const Variant variants[] = {
      {"snappy_nullable", "SNAPPY", true, 3, 1024, {}, 700},
      {"plain_required", "UNCOMPRESSED", false, 1000, 1 << 20, {{"data", "PLAIN"}}, 1 << 20},
      {"zstd_dict", "ZSTD", true, 4, 512, {{"data", "RLE_DICTIONARY"}, {"name", "RLE_DICTIONARY"}}, 120},
      {"gzip_required", "GZIP", false, 2, 4096, {}, 1000},
      {"delta_nullable", "UNCOMPRESSED", true, 5, 2048,
       {{"name", "DELTA_BYTE_ARRAY"}, {"dtype", "DELTA_LENGTH_BYTE_ARRAY"}, {"shape", "DELTA_BINARY_PACKED"},
        {"chunk", "DELTA_BINARY_PACKED"}, {"data", "DELTA_LENGTH_BYTE_ARRAY"}},
       64},
      {"delta_required", "SNAPPY", false, 1000, 1 << 20,
       {{"name", "DELTA_LENGTH_BYTE_ARRAY"}, {"chunk", "DELTA_BINARY_PACKED"}, {"data", "DELTA_BYTE_ARRAY"}}, 100},
  };
  const std::map<std::string, std::string> kv = {{"llmc.format_version", "1"}, {"note", "written by hyparquet"}};
  for (const auto& v : variants) {
    SCOPED_TRACE(v.tag);
    nlohmann::json spec;
    spec["codec"] = v.codec;
    spec["nullable"] = v.nullable;
    spec["rowGroupSize"] = v.row_group;
    spec["pageSize"] = v.page;
    spec["encodings"] = v.encodings;
    spec["kv"] = kv;
    spec["rows"] = nlohmann::json::array();
    for (size_t i = 0; i < ts.size(); ++i) {
      const uint64_t n = ts[i].data.size();
      const uint64_t chunks = n == 0 ? 1 : (n + v.chunk - 1) / v.chunk;
      for (uint64_t c = 0; c < chunks; ++c) {
        spec["rows"].push_back({{"name", ts[i].name},
                                {"dtype", llmc::dtype_traits(ts[i].dtype).safetensors},
                                {"shape", ts[i].shape},
                                {"chunk", c},
                                {"file", (dir / "blob.bin").string()},
                                {"offset", offsets[i] + c * v.chunk},
                                {"length", std::min<uint64_t>(v.chunk, n - c * v.chunk)}});
      }
    }
    const fs::path spec_path = dir / (std::string(v.tag) + ".json");
    put_file(spec_path, spec.dump());
    const fs::path p = dir / (std::string(v.tag) + ".parquet");
    std::string log;
    ASSERT_EQ(run_node("write.mjs '" + spec_path.string() + "' '" + p.string() + "'", &log), 0) << log;
    auto f = llmc::open_parquet_checkpoint(p);
    EXPECT_EQ(f.kv, kv);
    expect_same(*f.tensors, ts);
    // Confirm the variant exercised what it was meant to (the writer's choices, from the footer).
    const pq::FileMetaData m = read_footer(p);
    EXPECT_GT(m.row_groups.size(), v.row_group < 10 ? 1u : 0u);
    static const std::map<std::string, int32_t> kEnc = {
        {"PLAIN", 0}, {"RLE_DICTIONARY", 8}, {"DELTA_BINARY_PACKED", 5}, {"DELTA_LENGTH_BYTE_ARRAY", 6},
        {"DELTA_BYTE_ARRAY", 7}};
    const char* const cols[] = {"name", "dtype", "shape", "chunk", "data"};
    for (size_t c = 0; c < 5; ++c) {
      const auto it = v.encodings.find(cols[c]);
      if (it == v.encodings.end()) continue;
      const auto& enc = m.row_groups[0].columns[c].meta_data->encodings;
      EXPECT_NE(std::find(enc.begin(), enc.end(), kEnc.at(it->second)), enc.end()) << cols[c];
    }
    EXPECT_EQ(m.schema[1].repetition_type, v.nullable ? 1 : 0);
    if (fixture_dir) fs::copy_file(p, fs::path(fixture_dir) / p.filename(), fs::copy_options::overwrite_existing);
  }
}
