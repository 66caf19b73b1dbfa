// formats/thrift_compact.h — Apache Thrift compact protocol, the encoding of Parquet's footer
// and page headers (internal to formats/parquet*).
//
// Contracts:
//  * ThriftReader reads from a borrowed byte span and never reads outside it. Every malformed
//    input (truncation, over-long varint, negative or oversized length, nesting deeper than
//    kMaxDepth, unknown wire type) throws llmc::Error prefixed with the reader's context string
//    (e.g. the file name). Collection sizes are checked against the bytes left, so a hostile
//    header cannot make the caller allocate more than the input's size in elements.
//  * Structs are read with a pull loop: begin_struct(); while (next_field(&f)) { switch (f.id)
//    ... default: skip(f.type); } end_struct(). skip() handles every wire type, so unknown
//    fields of newer writers are stepped over (forward compatible).
//  * ThriftWriter appends to a std::string; field ids of one struct must increase (the short
//    delta form is used when possible, the long form otherwise).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llmc::thrift {

// Compact-protocol wire types.
enum class TType : uint8_t {
  Stop = 0,
  BoolTrue = 1,
  BoolFalse = 2,
  Byte = 3,
  I16 = 4,
  I32 = 5,
  I64 = 6,
  Double = 7,
  Binary = 8,
  List = 9,
  Set = 10,
  Map = 11,
  Struct = 12,
};

inline constexpr int kMaxDepth = 64;

struct Field {
  int16_t id = 0;
  TType type = TType::Stop;
  bool bool_value = false;  // for BoolTrue/BoolFalse fields: the value carried by the type
};

struct ListHeader {
  TType elem = TType::Stop;
  uint32_t size = 0;
};

struct MapHeader {
  TType key = TType::Stop, value = TType::Stop;
  uint32_t size = 0;
};

class ThriftReader {
 public:
  ThriftReader(const uint8_t* data, size_t size, std::string context)
      : p_(data), begin_(data), end_(data + size), ctx_(std::move(context)) {}

  size_t pos() const { return size_t(p_ - begin_); }
  size_t remaining() const { return size_t(end_ - p_); }
  const std::string& context() const { return ctx_; }

  void begin_struct();
  // Reads the next field header of the current struct; false at the struct's stop byte.
  bool next_field(Field* f);
  void end_struct();

  bool read_bool(const Field& f) const { return f.bool_value; }  // for a field
  bool read_bool_elem();                                          // inside a list/set
  int8_t read_byte();
  int16_t read_i16();
  int32_t read_i32();
  int64_t read_i64();
  double read_double();
  std::string_view read_binary();  // view into the input
  std::string read_string() { return std::string(read_binary()); }
  ListHeader read_list_header();
  MapHeader read_map_header();

  // Skips one value of the given wire type (recursively for containers and structs).
  void skip(TType t);
  // Skips one list/set/map element (bools are a byte there, unlike in field headers).
  void skip_elem(TType t);

  // Throws llmc::Error "<context>: <what> (at byte N)".
  [[noreturn]] void error(const std::string& what) const;

 private:
  uint64_t read_varint();
  uint8_t byte();
  void enter();

  const uint8_t* p_;
  const uint8_t* begin_;
  const uint8_t* end_;
  std::string ctx_;
  std::vector<int16_t> last_id_;  // field-id stack, one per open struct
  int depth_ = 0;
};

class ThriftWriter {
 public:
  void begin_struct();
  void end_struct();  // writes the stop byte

  // Field header only; the caller writes the value (e.g. a struct via its own begin/end).
  void field_header(int16_t id, TType t);
  void field_bool(int16_t id, bool v);
  void field_byte(int16_t id, int8_t v);
  void field_i16(int16_t id, int16_t v);
  void field_i32(int16_t id, int32_t v);
  void field_i64(int16_t id, int64_t v);
  void field_double(int16_t id, double v);
  void field_binary(int16_t id, std::string_view v);
  void field_struct_begin(int16_t id) { field_header(id, TType::Struct); begin_struct(); }
  void field_list_begin(int16_t id, TType elem, uint32_t size) {
    field_header(id, TType::List);
    list_header(elem, size);
  }
  void field_map_begin(int16_t id, TType key, TType value, uint32_t size) {
    field_header(id, TType::Map);
    map_header(key, value, size);
  }

  // Raw values, for list/map elements.
  void list_header(TType elem, uint32_t size);
  void map_header(TType key, TType value, uint32_t size);
  void bool_elem(bool v) { out_.push_back(char(v ? 1 : 2)); }
  void byte_value(int8_t v) { out_.push_back(char(v)); }
  void i16_value(int16_t v) { varint(zigzag(v)); }
  void i32_value(int32_t v) { varint(zigzag(v)); }
  void i64_value(int64_t v) { varint(zigzag(v)); }
  void double_value(double v);
  void binary_value(std::string_view v);

  const std::string& bytes() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  static uint64_t zigzag(int64_t v) { return (uint64_t(v) << 1) ^ uint64_t(v >> 63); }
  void varint(uint64_t v);

  std::string out_;
  std::vector<int16_t> last_id_;
};

}  // namespace llmc::thrift
