#include "formats/parquet_meta.h"

#include "core/error.h"

namespace llmc::parquet {

using thrift::Field;
using thrift::ThriftReader;
using thrift::ThriftWriter;
using thrift::TType;

const char* codec_name(int32_t codec) {
  static const char* const kNames[] = {"UNCOMPRESSED", "SNAPPY", "GZIP",  "LZO",
                                       "BROTLI",       "LZ4",    "ZSTD",  "LZ4_RAW"};
  return codec >= 0 && codec < 8 ? kNames[codec] : "unknown";
}

const char* encoding_name(int32_t e) {
  static const char* const kNames[] = {
      "PLAIN", "GROUP_VAR_INT", "PLAIN_DICTIONARY", "RLE", "BIT_PACKED", "DELTA_BINARY_PACKED",
      "DELTA_LENGTH_BYTE_ARRAY", "DELTA_BYTE_ARRAY", "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
  return e >= 0 && e < 10 ? kNames[e] : "unknown";
}

namespace {

// Reads a field's value when its wire type is the expected one; otherwise skips it (a writer
// using a different type for a known id is treated like an unknown field, as Thrift does).
bool want(ThriftReader& r, const Field& f, TType t) {
  const bool is_bool = f.type == TType::BoolTrue || f.type == TType::BoolFalse;
  if (f.type == t || (t == TType::BoolTrue && is_bool)) return true;
  r.skip(f.type);
  return false;
}

[[noreturn]] void missing(ThriftReader& r, const char* strct, const char* field) {
  r.error(std::string("Parquet ") + strct + " lacks required field '" + field + "'");
}

template <typename T, typename F>
void read_list(ThriftReader& r, const Field& f, TType elem, std::vector<T>* out, F&& read_one) {
  if (!want(r, f, TType::List)) return;
  const thrift::ListHeader l = r.read_list_header();
  if (l.elem != elem) {
    // Wrong element type: skip the elements, keep nothing.
    for (uint32_t i = 0; i < l.size; ++i) r.skip_elem(l.elem);
    return;
  }
  out->clear();
  out->reserve(l.size);
  for (uint32_t i = 0; i < l.size; ++i) out->push_back(read_one());
}

KeyValue decode_kv(ThriftReader& r) {
  KeyValue kv;
  bool has_key = false;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1: if (want(r, f, TType::Binary)) { kv.key = r.read_string(); has_key = true; } break;
      case 2: if (want(r, f, TType::Binary)) kv.value = r.read_string(); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  if (!has_key) missing(r, "KeyValue", "key");
  return kv;
}

void encode_kv(ThriftWriter& w, const KeyValue& kv) {
  w.begin_struct();
  w.field_binary(1, kv.key);
  if (kv.value) w.field_binary(2, *kv.value);
  w.end_struct();
}

std::vector<KeyValue> decode_kv_list(ThriftReader& r, const Field& f) {
  std::vector<KeyValue> v;
  read_list(r, f, TType::Struct, &v, [&] { return decode_kv(r); });
  return v;
}

void encode_kv_list(ThriftWriter& w, int16_t id, const std::vector<KeyValue>& kvs) {
  w.field_list_begin(id, TType::Struct, uint32_t(kvs.size()));
  for (const auto& kv : kvs) encode_kv(w, kv);
}

// LogicalType is a union of (mostly empty) structs: we keep the member id only.
int16_t decode_logical_type(ThriftReader& r) {
  int16_t kind = 0;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    if (f.type == TType::Struct && kind == 0) kind = f.id;
    r.skip(f.type);
  }
  r.end_struct();
  return kind;
}

SchemaElement decode_schema_element(ThriftReader& r) {
  SchemaElement e;
  bool has_name = false;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1: if (want(r, f, TType::I32)) e.type = r.read_i32(); break;
      case 2: if (want(r, f, TType::I32)) e.type_length = r.read_i32(); break;
      case 3: if (want(r, f, TType::I32)) e.repetition_type = r.read_i32(); break;
      case 4: if (want(r, f, TType::Binary)) { e.name = r.read_string(); has_name = true; } break;
      case 5: if (want(r, f, TType::I32)) e.num_children = r.read_i32(); break;
      case 6: if (want(r, f, TType::I32)) e.converted_type = r.read_i32(); break;
      case 7: if (want(r, f, TType::I32)) e.scale = r.read_i32(); break;
      case 8: if (want(r, f, TType::I32)) e.precision = r.read_i32(); break;
      case 9: if (want(r, f, TType::I32)) e.field_id = r.read_i32(); break;
      case 10: if (want(r, f, TType::Struct)) e.logical_type = decode_logical_type(r); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  if (!has_name) missing(r, "SchemaElement", "name");
  return e;
}

void encode_schema_element(ThriftWriter& w, const SchemaElement& e) {
  w.begin_struct();
  if (e.type) w.field_i32(1, *e.type);
  if (e.type_length) w.field_i32(2, *e.type_length);
  if (e.repetition_type) w.field_i32(3, *e.repetition_type);
  w.field_binary(4, e.name);
  if (e.num_children) w.field_i32(5, *e.num_children);
  if (e.converted_type) w.field_i32(6, *e.converted_type);
  if (e.scale) w.field_i32(7, *e.scale);
  if (e.precision) w.field_i32(8, *e.precision);
  if (e.field_id) w.field_i32(9, *e.field_id);
  if (e.logical_type) {
    w.field_struct_begin(10);
    w.field_struct_begin(e.logical_type);  // empty member struct (StringType, ListType, ...)
    w.end_struct();
    w.end_struct();
  }
  w.end_struct();
}

Statistics decode_statistics(ThriftReader& r) {
  Statistics s;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1: if (want(r, f, TType::Binary)) s.max = r.read_string(); break;
      case 2: if (want(r, f, TType::Binary)) s.min = r.read_string(); break;
      case 3: if (want(r, f, TType::I64)) s.null_count = r.read_i64(); break;
      case 4: if (want(r, f, TType::I64)) s.distinct_count = r.read_i64(); break;
      case 5: if (want(r, f, TType::Binary)) s.max_value = r.read_string(); break;
      case 6: if (want(r, f, TType::Binary)) s.min_value = r.read_string(); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  return s;
}

void encode_statistics(ThriftWriter& w, const Statistics& s) {
  w.begin_struct();
  if (s.max) w.field_binary(1, *s.max);
  if (s.min) w.field_binary(2, *s.min);
  if (s.null_count) w.field_i64(3, *s.null_count);
  if (s.distinct_count) w.field_i64(4, *s.distinct_count);
  if (s.max_value) w.field_binary(5, *s.max_value);
  if (s.min_value) w.field_binary(6, *s.min_value);
  w.end_struct();
}

ColumnMetaData decode_column_metadata(ThriftReader& r) {
  ColumnMetaData m;
  unsigned seen = 0;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1: if (want(r, f, TType::I32)) { m.type = r.read_i32(); seen |= 1; } break;
      case 2:
        read_list(r, f, TType::I32, &m.encodings, [&] { return r.read_i32(); });
        seen |= 2;
        break;
      case 3:
        read_list(r, f, TType::Binary, &m.path_in_schema, [&] { return r.read_string(); });
        seen |= 4;
        break;
      case 4: if (want(r, f, TType::I32)) { m.codec = r.read_i32(); seen |= 8; } break;
      case 5: if (want(r, f, TType::I64)) { m.num_values = r.read_i64(); seen |= 16; } break;
      case 6: if (want(r, f, TType::I64)) { m.total_uncompressed_size = r.read_i64(); seen |= 32; } break;
      case 7: if (want(r, f, TType::I64)) { m.total_compressed_size = r.read_i64(); seen |= 64; } break;
      case 8: m.key_value_metadata = decode_kv_list(r, f); break;
      case 9: if (want(r, f, TType::I64)) { m.data_page_offset = r.read_i64(); seen |= 128; } break;
      case 10: if (want(r, f, TType::I64)) m.index_page_offset = r.read_i64(); break;
      case 11: if (want(r, f, TType::I64)) m.dictionary_page_offset = r.read_i64(); break;
      case 12: if (want(r, f, TType::Struct)) m.statistics = decode_statistics(r); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  static const char* const kReq[] = {"type", "encodings", "path_in_schema", "codec", "num_values",
                                     "total_uncompressed_size", "total_compressed_size",
                                     "data_page_offset"};
  for (int i = 0; i < 8; ++i)
    if (!(seen & (1u << i))) missing(r, "ColumnMetaData", kReq[i]);
  return m;
}

void encode_column_metadata(ThriftWriter& w, const ColumnMetaData& m) {
  w.begin_struct();
  w.field_i32(1, m.type);
  w.field_list_begin(2, TType::I32, uint32_t(m.encodings.size()));
  for (int32_t e : m.encodings) w.i32_value(e);
  w.field_list_begin(3, TType::Binary, uint32_t(m.path_in_schema.size()));
  for (const auto& p : m.path_in_schema) w.binary_value(p);
  w.field_i32(4, m.codec);
  w.field_i64(5, m.num_values);
  w.field_i64(6, m.total_uncompressed_size);
  w.field_i64(7, m.total_compressed_size);
  if (!m.key_value_metadata.empty()) encode_kv_list(w, 8, m.key_value_metadata);
  w.field_i64(9, m.data_page_offset);
  if (m.index_page_offset) w.field_i64(10, *m.index_page_offset);
  if (m.dictionary_page_offset) w.field_i64(11, *m.dictionary_page_offset);
  if (m.statistics) {
    w.field_header(12, TType::Struct);
    encode_statistics(w, *m.statistics);
  }
  w.end_struct();
}

ColumnChunk decode_column_chunk(ThriftReader& r) {
  ColumnChunk c;
  bool has_offset = false;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1: if (want(r, f, TType::Binary)) c.file_path = r.read_string(); break;
      case 2: if (want(r, f, TType::I64)) { c.file_offset = r.read_i64(); has_offset = true; } break;
      case 3: if (want(r, f, TType::Struct)) c.meta_data = decode_column_metadata(r); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  if (!has_offset) missing(r, "ColumnChunk", "file_offset");
  return c;
}

void encode_column_chunk(ThriftWriter& w, const ColumnChunk& c) {
  w.begin_struct();
  if (c.file_path) w.field_binary(1, *c.file_path);
  w.field_i64(2, c.file_offset);
  if (c.meta_data) {
    w.field_header(3, TType::Struct);
    encode_column_metadata(w, *c.meta_data);
  }
  w.end_struct();
}

RowGroup decode_row_group(ThriftReader& r) {
  RowGroup g;
  unsigned seen = 0;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1:
        read_list(r, f, TType::Struct, &g.columns, [&] { return decode_column_chunk(r); });
        seen |= 1;
        break;
      case 2: if (want(r, f, TType::I64)) { g.total_byte_size = r.read_i64(); seen |= 2; } break;
      case 3: if (want(r, f, TType::I64)) { g.num_rows = r.read_i64(); seen |= 4; } break;
      case 5: if (want(r, f, TType::I64)) g.file_offset = r.read_i64(); break;
      case 6: if (want(r, f, TType::I64)) g.total_compressed_size = r.read_i64(); break;
      case 7: if (want(r, f, TType::I16)) g.ordinal = r.read_i16(); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  if (!(seen & 1)) missing(r, "RowGroup", "columns");
  if (!(seen & 2)) missing(r, "RowGroup", "total_byte_size");
  if (!(seen & 4)) missing(r, "RowGroup", "num_rows");
  return g;
}

void encode_row_group(ThriftWriter& w, const RowGroup& g) {
  w.begin_struct();
  w.field_list_begin(1, TType::Struct, uint32_t(g.columns.size()));
  for (const auto& c : g.columns) encode_column_chunk(w, c);
  w.field_i64(2, g.total_byte_size);
  w.field_i64(3, g.num_rows);
  if (g.file_offset) w.field_i64(5, *g.file_offset);
  if (g.total_compressed_size) w.field_i64(6, *g.total_compressed_size);
  if (g.ordinal) w.field_i16(7, *g.ordinal);
  w.end_struct();
}

}  // namespace

FileMetaData decode_file_metadata(ThriftReader& r) {
  FileMetaData m;
  unsigned seen = 0;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1: if (want(r, f, TType::I32)) { m.version = r.read_i32(); seen |= 1; } break;
      case 2:
        read_list(r, f, TType::Struct, &m.schema, [&] { return decode_schema_element(r); });
        seen |= 2;
        break;
      case 3: if (want(r, f, TType::I64)) { m.num_rows = r.read_i64(); seen |= 4; } break;
      case 4:
        read_list(r, f, TType::Struct, &m.row_groups, [&] { return decode_row_group(r); });
        seen |= 8;
        break;
      case 5: m.key_value_metadata = decode_kv_list(r, f); break;
      case 6: if (want(r, f, TType::Binary)) m.created_by = r.read_string(); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  if (!(seen & 1)) missing(r, "FileMetaData", "version");
  if (!(seen & 2)) missing(r, "FileMetaData", "schema");
  if (!(seen & 4)) missing(r, "FileMetaData", "num_rows");
  if (!(seen & 8)) missing(r, "FileMetaData", "row_groups");
  return m;
}

void encode_file_metadata(ThriftWriter& w, const FileMetaData& m) {
  w.begin_struct();
  w.field_i32(1, m.version);
  w.field_list_begin(2, TType::Struct, uint32_t(m.schema.size()));
  for (const auto& e : m.schema) encode_schema_element(w, e);
  w.field_i64(3, m.num_rows);
  w.field_list_begin(4, TType::Struct, uint32_t(m.row_groups.size()));
  for (const auto& g : m.row_groups) encode_row_group(w, g);
  if (!m.key_value_metadata.empty()) encode_kv_list(w, 5, m.key_value_metadata);
  if (m.created_by) w.field_binary(6, *m.created_by);
  w.end_struct();
}

PageHeader decode_page_header(ThriftReader& r) {
  PageHeader h;
  unsigned seen = 0;
  r.begin_struct();
  Field f;
  while (r.next_field(&f)) {
    switch (f.id) {
      case 1: if (want(r, f, TType::I32)) { h.type = r.read_i32(); seen |= 1; } break;
      case 2: if (want(r, f, TType::I32)) { h.uncompressed_page_size = r.read_i32(); seen |= 2; } break;
      case 3: if (want(r, f, TType::I32)) { h.compressed_page_size = r.read_i32(); seen |= 4; } break;
      case 4: if (want(r, f, TType::I32)) h.crc = r.read_i32(); break;
      case 5:
        if (want(r, f, TType::Struct)) {
          DataPageHeader d;
          unsigned s = 0;
          r.begin_struct();
          Field g;
          while (r.next_field(&g)) {
            switch (g.id) {
              case 1: if (want(r, g, TType::I32)) { d.num_values = r.read_i32(); s |= 1; } break;
              case 2: if (want(r, g, TType::I32)) { d.encoding = r.read_i32(); s |= 2; } break;
              case 3: if (want(r, g, TType::I32)) { d.definition_level_encoding = r.read_i32(); s |= 4; } break;
              case 4: if (want(r, g, TType::I32)) { d.repetition_level_encoding = r.read_i32(); s |= 8; } break;
              default: r.skip(g.type);  // 5: statistics
            }
          }
          r.end_struct();
          if (s != 15) missing(r, "DataPageHeader", "num_values/encoding/level encodings");
          h.data_page_header = d;
        }
        break;
      case 7:
        if (want(r, f, TType::Struct)) {
          DictionaryPageHeader d;
          unsigned s = 0;
          r.begin_struct();
          Field g;
          while (r.next_field(&g)) {
            switch (g.id) {
              case 1: if (want(r, g, TType::I32)) { d.num_values = r.read_i32(); s |= 1; } break;
              case 2: if (want(r, g, TType::I32)) { d.encoding = r.read_i32(); s |= 2; } break;
              case 3: if (want(r, g, TType::BoolTrue)) d.is_sorted = r.read_bool(g); break;
              default: r.skip(g.type);
            }
          }
          r.end_struct();
          if (s != 3) missing(r, "DictionaryPageHeader", "num_values/encoding");
          h.dictionary_page_header = d;
        }
        break;
      case 8:
        if (want(r, f, TType::Struct)) {
          DataPageHeaderV2 d;
          unsigned s = 0;
          r.begin_struct();
          Field g;
          while (r.next_field(&g)) {
            switch (g.id) {
              case 1: if (want(r, g, TType::I32)) { d.num_values = r.read_i32(); s |= 1; } break;
              case 2: if (want(r, g, TType::I32)) { d.num_nulls = r.read_i32(); s |= 2; } break;
              case 3: if (want(r, g, TType::I32)) { d.num_rows = r.read_i32(); s |= 4; } break;
              case 4: if (want(r, g, TType::I32)) { d.encoding = r.read_i32(); s |= 8; } break;
              case 5: if (want(r, g, TType::I32)) { d.definition_levels_byte_length = r.read_i32(); s |= 16; } break;
              case 6: if (want(r, g, TType::I32)) { d.repetition_levels_byte_length = r.read_i32(); s |= 32; } break;
              case 7: if (want(r, g, TType::BoolTrue)) d.is_compressed = r.read_bool(g); break;
              default: r.skip(g.type);  // 8: statistics
            }
          }
          r.end_struct();
          if (s != 63) missing(r, "DataPageHeaderV2", "counts/encoding/level lengths");
          h.data_page_header_v2 = d;
        }
        break;
      default: r.skip(f.type);  // 6: index_page_header, newer fields
    }
  }
  r.end_struct();
  if (seen != 7) missing(r, "PageHeader", "type/uncompressed_page_size/compressed_page_size");
  return h;
}

void encode_page_header(ThriftWriter& w, const PageHeader& h) {
  w.begin_struct();
  w.field_i32(1, h.type);
  w.field_i32(2, h.uncompressed_page_size);
  w.field_i32(3, h.compressed_page_size);
  if (h.crc) w.field_i32(4, *h.crc);
  if (h.data_page_header) {
    const auto& d = *h.data_page_header;
    w.field_struct_begin(5);
    w.field_i32(1, d.num_values);
    w.field_i32(2, d.encoding);
    w.field_i32(3, d.definition_level_encoding);
    w.field_i32(4, d.repetition_level_encoding);
    w.end_struct();
  }
  if (h.dictionary_page_header) {
    const auto& d = *h.dictionary_page_header;
    w.field_struct_begin(7);
    w.field_i32(1, d.num_values);
    w.field_i32(2, d.encoding);
    if (d.is_sorted) w.field_bool(3, *d.is_sorted);
    w.end_struct();
  }
  if (h.data_page_header_v2) {
    const auto& d = *h.data_page_header_v2;
    w.field_struct_begin(8);
    w.field_i32(1, d.num_values);
    w.field_i32(2, d.num_nulls);
    w.field_i32(3, d.num_rows);
    w.field_i32(4, d.encoding);
    w.field_i32(5, d.definition_levels_byte_length);
    w.field_i32(6, d.repetition_levels_byte_length);
    w.field_bool(7, d.is_compressed);
    w.end_struct();
  }
  w.end_struct();
}

}  // namespace llmc::parquet
