// formats/parquet_meta.h — the subset of Apache Parquet's Thrift metadata (parquet.thrift) that
// llmc reads and writes, with compact-protocol encode/decode (internal to formats/parquet*).
//
// Contracts:
//  * decode_*() read exactly one struct from a ThriftReader, skip fields they do not know (so
//    files of newer writers still open), and throw llmc::Error (with the reader's context)
//    when a field required by the Parquet spec is missing or out of range.
//  * encode_*() write the same fields; decode(encode(x)) == x for every field listed here.
//  * Field ids and enum values follow parquet-format's parquet.thrift.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "formats/thrift_compact.h"

namespace llmc::parquet {

enum class Type : int32_t {
  BOOLEAN = 0, INT32 = 1, INT64 = 2, INT96 = 3, FLOAT = 4, DOUBLE = 5, BYTE_ARRAY = 6,
  FIXED_LEN_BYTE_ARRAY = 7
};
enum class Repetition : int32_t { REQUIRED = 0, OPTIONAL = 1, REPEATED = 2 };
enum class ConvertedType : int32_t { UTF8 = 0, MAP = 1, MAP_KEY_VALUE = 2, LIST = 3 };
enum class Encoding : int32_t {
  PLAIN = 0, PLAIN_DICTIONARY = 2, RLE = 3, BIT_PACKED = 4, DELTA_BINARY_PACKED = 5,
  DELTA_LENGTH_BYTE_ARRAY = 6, DELTA_BYTE_ARRAY = 7, RLE_DICTIONARY = 8, BYTE_STREAM_SPLIT = 9
};
enum class Codec : int32_t {
  UNCOMPRESSED = 0, SNAPPY = 1, GZIP = 2, LZO = 3, BROTLI = 4, LZ4 = 5, ZSTD = 6, LZ4_RAW = 7
};
enum class PageType : int32_t { DATA_PAGE = 0, INDEX_PAGE = 1, DICTIONARY_PAGE = 2, DATA_PAGE_V2 = 3 };
// LogicalType union member ids (only the ones llmc writes; others are kept as the raw id).
enum class LogicalKind : int16_t { NONE = 0, STRING = 1, MAP = 2, LIST = 3 };

const char* codec_name(int32_t codec);
const char* encoding_name(int32_t encoding);

struct KeyValue {
  std::string key;
  std::optional<std::string> value;
  bool operator==(const KeyValue&) const = default;
};

struct SchemaElement {
  std::optional<int32_t> type;             // 1: Type (absent for groups)
  std::optional<int32_t> type_length;      // 2
  std::optional<int32_t> repetition_type;  // 3: Repetition (absent only for the root)
  std::string name;                        // 4 (required)
  std::optional<int32_t> num_children;     // 5
  std::optional<int32_t> converted_type;   // 6
  std::optional<int32_t> scale;            // 7
  std::optional<int32_t> precision;        // 8
  std::optional<int32_t> field_id;         // 9
  int16_t logical_type = 0;                // 10: union member id, 0 = absent (see LogicalKind)
  bool operator==(const SchemaElement&) const = default;
};

struct Statistics {  // only carried through; llmc does not interpret them
  std::optional<std::string> max, min, max_value, min_value;
  std::optional<int64_t> null_count, distinct_count;
  bool operator==(const Statistics&) const = default;
};

struct ColumnMetaData {
  int32_t type = 0;                          // 1
  std::vector<int32_t> encodings;            // 2
  std::vector<std::string> path_in_schema;   // 3
  int32_t codec = 0;                         // 4
  int64_t num_values = 0;                    // 5
  int64_t total_uncompressed_size = 0;       // 6
  int64_t total_compressed_size = 0;         // 7
  std::vector<KeyValue> key_value_metadata;  // 8
  int64_t data_page_offset = 0;              // 9
  std::optional<int64_t> index_page_offset;       // 10
  std::optional<int64_t> dictionary_page_offset;  // 11
  std::optional<Statistics> statistics;           // 12
  bool operator==(const ColumnMetaData&) const = default;
};

struct ColumnChunk {
  std::optional<std::string> file_path;  // 1
  int64_t file_offset = 0;               // 2
  std::optional<ColumnMetaData> meta_data;  // 3
  bool operator==(const ColumnChunk&) const = default;
};

struct RowGroup {
  std::vector<ColumnChunk> columns;            // 1
  int64_t total_byte_size = 0;                 // 2
  int64_t num_rows = 0;                        // 3
  std::optional<int64_t> file_offset;          // 5
  std::optional<int64_t> total_compressed_size;  // 6
  std::optional<int16_t> ordinal;              // 7
  bool operator==(const RowGroup&) const = default;
};

struct FileMetaData {
  int32_t version = 1;                         // 1
  std::vector<SchemaElement> schema;           // 2
  int64_t num_rows = 0;                        // 3
  std::vector<RowGroup> row_groups;            // 4
  std::vector<KeyValue> key_value_metadata;    // 5
  std::optional<std::string> created_by;       // 6
  bool operator==(const FileMetaData&) const = default;
};

struct DataPageHeader {
  int32_t num_values = 0;                 // 1
  int32_t encoding = 0;                   // 2
  int32_t definition_level_encoding = 3;  // 3
  int32_t repetition_level_encoding = 3;  // 4
  bool operator==(const DataPageHeader&) const = default;
};

struct DictionaryPageHeader {
  int32_t num_values = 0;  // 1
  int32_t encoding = 0;    // 2
  std::optional<bool> is_sorted;  // 3
  bool operator==(const DictionaryPageHeader&) const = default;
};

struct DataPageHeaderV2 {
  int32_t num_values = 0;                    // 1
  int32_t num_nulls = 0;                     // 2
  int32_t num_rows = 0;                      // 3
  int32_t encoding = 0;                      // 4
  int32_t definition_levels_byte_length = 0;  // 5
  int32_t repetition_levels_byte_length = 0;  // 6
  bool is_compressed = true;                 // 7
  bool operator==(const DataPageHeaderV2&) const = default;
};

struct PageHeader {
  int32_t type = 0;                    // 1: PageType
  int32_t uncompressed_page_size = 0;  // 2
  int32_t compressed_page_size = 0;    // 3
  std::optional<int32_t> crc;          // 4
  std::optional<DataPageHeader> data_page_header;              // 5
  std::optional<DictionaryPageHeader> dictionary_page_header;  // 7
  std::optional<DataPageHeaderV2> data_page_header_v2;         // 8
  bool operator==(const PageHeader&) const = default;
};

FileMetaData decode_file_metadata(thrift::ThriftReader& r);
PageHeader decode_page_header(thrift::ThriftReader& r);
void encode_file_metadata(thrift::ThriftWriter& w, const FileMetaData& m);
void encode_page_header(thrift::ThriftWriter& w, const PageHeader& h);

}  // namespace llmc::parquet
