#include "formats/thrift_compact.h"

#include <cstring>

#include "core/error.h"

namespace llmc::thrift {

namespace {
bool valid_wire_type(uint8_t t) { return t <= uint8_t(TType::Struct); }
// Smallest encoded size of one element of a wire type (to bound collection sizes).
size_t min_elem_size(TType t) {
  switch (t) {
    case TType::Double: return 8;
    default: return 1;  // varints, bools, bytes, lengths, stop byte: at least one byte
  }
}
}  // namespace

void ThriftReader::error(const std::string& what) const {
  fail(ctx_, ": ", what, " (at byte ", pos(), ")");
}

uint8_t ThriftReader::byte() {
  if (p_ >= end_) error("truncated Thrift data");
  return *p_++;
}

uint64_t ThriftReader::read_varint() {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    const uint8_t b = byte();
    if (shift == 63 && (b & 0x7e)) error("Thrift varint overflows 64 bits");
    v |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  error("Thrift varint longer than 10 bytes");
}

void ThriftReader::enter() {
  if (++depth_ > kMaxDepth) error("Thrift data nested too deeply");
}

void ThriftReader::begin_struct() {
  enter();
  last_id_.push_back(0);
}

void ThriftReader::end_struct() {
  if (last_id_.empty()) error("unbalanced Thrift struct end");
  last_id_.pop_back();
  --depth_;
}

bool ThriftReader::next_field(Field* f) {
  if (last_id_.empty()) error("Thrift field outside a struct");
  const uint8_t h = byte();
  if (h == 0) return false;
  const uint8_t t = h & 0x0f;
  if (!valid_wire_type(t) || t == 0) error("invalid Thrift field type " + std::to_string(t));
  const uint8_t delta = h >> 4;
  int32_t id;
  if (delta) {
    id = int32_t(last_id_.back()) + delta;
  } else {
    id = read_i16();
  }
  if (id < INT16_MIN || id > INT16_MAX) error("Thrift field id out of range");
  last_id_.back() = int16_t(id);
  f->id = int16_t(id);
  f->type = TType(t);
  f->bool_value = (f->type == TType::BoolTrue);
  return true;
}

bool ThriftReader::read_bool_elem() {
  const uint8_t b = byte();
  return b == 1;
}

int8_t ThriftReader::read_byte() { return int8_t(byte()); }

static int64_t unzigzag(uint64_t v) { return int64_t(v >> 1) ^ -int64_t(v & 1); }

int16_t ThriftReader::read_i16() {
  const int64_t v = unzigzag(read_varint());
  if (v < INT16_MIN || v > INT16_MAX) error("Thrift i16 out of range");
  return int16_t(v);
}

int32_t ThriftReader::read_i32() {
  const int64_t v = unzigzag(read_varint());
  if (v < INT32_MIN || v > INT32_MAX) error("Thrift i32 out of range");
  return int32_t(v);
}

int64_t ThriftReader::read_i64() { return unzigzag(read_varint()); }

double ThriftReader::read_double() {
  if (remaining() < 8) error("truncated Thrift double");
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i) u |= uint64_t(p_[i]) << (8 * i);
  p_ += 8;
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

std::string_view ThriftReader::read_binary() {
  const uint64_t n = read_varint();
  if (n > remaining()) error("Thrift binary length " + std::to_string(n) + " exceeds the data");
  std::string_view v(reinterpret_cast<const char*>(p_), size_t(n));
  p_ += n;
  return v;
}

ListHeader ThriftReader::read_list_header() {
  const uint8_t h = byte();
  ListHeader l;
  const uint8_t t = h & 0x0f;
  if (!valid_wire_type(t) || t == 0) error("invalid Thrift list element type " + std::to_string(t));
  l.elem = TType(t);
  uint64_t n = h >> 4;
  if (n == 15) n = read_varint();
  if (n > remaining() / min_elem_size(l.elem))
    error("Thrift list size " + std::to_string(n) + " exceeds the data");
  l.size = uint32_t(n);
  return l;
}

MapHeader ThriftReader::read_map_header() {
  MapHeader m;
  const uint64_t n = read_varint();
  if (n == 0) return m;
  const uint8_t kv = byte();
  const uint8_t k = kv >> 4, v = kv & 0x0f;
  if (!valid_wire_type(k) || !valid_wire_type(v) || k == 0 || v == 0)
    error("invalid Thrift map element types");
  m.key = TType(k);
  m.value = TType(v);
  if (n > remaining() / 2) error("Thrift map size " + std::to_string(n) + " exceeds the data");
  m.size = uint32_t(n);
  return m;
}

void ThriftReader::skip(TType t) {
  switch (t) {
    case TType::BoolTrue:
    case TType::BoolFalse:
      return;  // a field's bool lives in its header (list elements are read by skip_elem below)
    case TType::Byte: byte(); return;
    case TType::I16:
    case TType::I32:
    case TType::I64: read_varint(); return;
    case TType::Double: read_double(); return;
    case TType::Binary: read_binary(); return;
    case TType::List:
    case TType::Set: {
      enter();
      const ListHeader l = read_list_header();
      for (uint32_t i = 0; i < l.size; ++i) skip_elem(l.elem);
      --depth_;
      return;
    }
    case TType::Map: {
      enter();
      const MapHeader m = read_map_header();
      for (uint32_t i = 0; i < m.size; ++i) {
        skip_elem(m.key);
        skip_elem(m.value);
      }
      --depth_;
      return;
    }
    case TType::Struct: {
      begin_struct();
      Field f;
      while (next_field(&f)) skip(f.type);
      end_struct();
      return;
    }
    case TType::Stop: break;
  }
  error("cannot skip Thrift type " + std::to_string(int(t)));
}

void ThriftReader::skip_elem(TType t) {
  if (t == TType::BoolTrue || t == TType::BoolFalse) byte();
  else skip(t);
}

// ---- writer ----

void ThriftWriter::varint(uint64_t v) {
  while (v >= 0x80) {
    out_.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out_.push_back(char(v));
}

void ThriftWriter::begin_struct() { last_id_.push_back(0); }

void ThriftWriter::end_struct() {
  LLMC_CHECK(!last_id_.empty());
  out_.push_back(0);
  last_id_.pop_back();
}

void ThriftWriter::field_header(int16_t id, TType t) {
  LLMC_CHECK(!last_id_.empty(), "Thrift field outside a struct");
  const int delta = int(id) - int(last_id_.back());
  if (delta > 0 && delta <= 15) {
    out_.push_back(char((delta << 4) | int(t)));
  } else {
    out_.push_back(char(t));
    i16_value(id);
  }
  last_id_.back() = id;
}

void ThriftWriter::field_bool(int16_t id, bool v) {
  field_header(id, v ? TType::BoolTrue : TType::BoolFalse);
}
void ThriftWriter::field_byte(int16_t id, int8_t v) { field_header(id, TType::Byte); byte_value(v); }
void ThriftWriter::field_i16(int16_t id, int16_t v) { field_header(id, TType::I16); i16_value(v); }
void ThriftWriter::field_i32(int16_t id, int32_t v) { field_header(id, TType::I32); i32_value(v); }
void ThriftWriter::field_i64(int16_t id, int64_t v) { field_header(id, TType::I64); i64_value(v); }
void ThriftWriter::field_double(int16_t id, double v) {
  field_header(id, TType::Double);
  double_value(v);
}
void ThriftWriter::field_binary(int16_t id, std::string_view v) {
  field_header(id, TType::Binary);
  binary_value(v);
}

void ThriftWriter::double_value(double v) {
  uint64_t u;
  std::memcpy(&u, &v, 8);
  for (int i = 0; i < 8; ++i) out_.push_back(char(uint8_t(u >> (8 * i))));
}

void ThriftWriter::binary_value(std::string_view v) {
  varint(v.size());
  out_.append(v.data(), v.size());
}

void ThriftWriter::list_header(TType elem, uint32_t size) {
  if (size < 15) {
    out_.push_back(char((size << 4) | uint32_t(elem)));
  } else {
    out_.push_back(char(0xf0 | uint32_t(elem)));
    varint(size);
  }
}

void ThriftWriter::map_header(TType key, TType value, uint32_t size) {
  varint(size);
  if (size) out_.push_back(char((uint32_t(key) << 4) | uint32_t(value)));
}

}  // namespace llmc::thrift
