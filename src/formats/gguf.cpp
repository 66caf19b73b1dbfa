// formats/gguf.cpp — GGUF v3 reader and writer (contracts in gguf.h).
#include "formats/gguf.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "core/error.h"
#include "formats/ggml_types.h"

namespace llmc {

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32", "float32",
                                "bool",  "string", "array",  "uint64", "int64", "float64"};
  const auto i = uint32_t(t);
  return i < 13 ? names[i] : "unknown";
}

GgufValue GgufValue::str(std::string v) { GgufValue g; g.type = GgufType::STRING; g.s = std::move(v); return g; }
GgufValue GgufValue::u32(uint32_t v) { GgufValue g; g.type = GgufType::U32; g.i = v; g.u = v; return g; }
GgufValue GgufValue::i32(int32_t v) { GgufValue g; g.type = GgufType::I32; g.i = v; g.u = uint64_t(int64_t(v)); return g; }
GgufValue GgufValue::u64(uint64_t v) { GgufValue g; g.type = GgufType::U64; g.i = int64_t(v); g.u = v; return g; }
GgufValue GgufValue::f32(float v) { GgufValue g; g.type = GgufType::F32; g.f = v; return g; }
GgufValue GgufValue::boolean(bool v) { GgufValue g; g.type = GgufType::BOOL; g.i = v; g.u = v; return g; }
GgufValue GgufValue::str_array(const std::vector<std::string>& v) {
  GgufValue g; g.type = GgufType::ARRAY; g.elem = GgufType::STRING;
  g.items.reserve(v.size());
  for (const auto& s : v) g.items.push_back(str(s));
  return g;
}
GgufValue GgufValue::i32_array(const std::vector<int32_t>& v) {
  GgufValue g; g.type = GgufType::ARRAY; g.elem = GgufType::I32;
  g.items.reserve(v.size());
  for (int32_t x : v) g.items.push_back(i32(x));
  return g;
}
GgufValue GgufValue::f32_array(const std::vector<float>& v) {
  GgufValue g; g.type = GgufType::ARRAY; g.elem = GgufType::F32;
  for (float x : v) g.items.push_back(f32(x));
  return g;
}

uint64_t GgufTensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  return n;
}

const GgufValue* GgufHeader::find(const std::string& key) const {
  for (const auto& [k, v] : kv)
    if (k == key) return &v;
  return nullptr;
}

// ---------------------------------------------------------------- reader

namespace {

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

struct Cursor {
  const uint8_t* p;
  size_t size, pos = 0;
  const std::string& origin;

  void need(uint64_t n, const std::string& what) {
    if (n > size - pos) fail(origin, ": ", what, " runs past the end of the file (offset ", pos, ", needs ", n,
                             " bytes, ", size - pos, " left)");
  }
  template <typename T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string str(const std::string& what) {
    const uint64_t n = get<uint64_t>(what + " length");
    need(n, what);
    std::string s(reinterpret_cast<const char*>(p + pos), size_t(n));
    pos += size_t(n);
    return s;
  }
};

GgufValue read_value(Cursor& c, GgufType t, const std::string& key, int depth) {
  GgufValue v;
  v.type = t;
  const std::string what = cat("value of '", key, "'");
  switch (t) {
    case GgufType::U8: v.u = c.get<uint8_t>(what); v.i = int64_t(v.u); break;
    case GgufType::I8: v.i = c.get<int8_t>(what); v.u = uint64_t(v.i); break;
    case GgufType::U16: v.u = c.get<uint16_t>(what); v.i = int64_t(v.u); break;
    case GgufType::I16: v.i = c.get<int16_t>(what); v.u = uint64_t(v.i); break;
    case GgufType::U32: v.u = c.get<uint32_t>(what); v.i = int64_t(v.u); break;
    case GgufType::I32: v.i = c.get<int32_t>(what); v.u = uint64_t(v.i); break;
    case GgufType::U64: v.u = c.get<uint64_t>(what); v.i = int64_t(v.u); break;
    case GgufType::I64: v.i = c.get<int64_t>(what); v.u = uint64_t(v.i); break;
    case GgufType::F32: v.f = c.get<float>(what); break;
    case GgufType::F64: v.f = c.get<double>(what); break;
    case GgufType::BOOL: {
      const uint8_t b = c.get<uint8_t>(what);
      if (b > 1) fail(c.origin, ": key '", key, "': bool value ", int(b), " is not 0 or 1");
      v.i = b; v.u = b;
      break;
    }
    case GgufType::STRING: v.s = c.str(what); break;
    case GgufType::ARRAY: {
      if (depth >= kGgufMaxDepth) fail(c.origin, ": key '", key, "': arrays nested deeper than ", kGgufMaxDepth);
      const uint32_t et = c.get<uint32_t>(what + " element type");
      if (et > 12) fail(c.origin, ": key '", key, "': unknown array element type ", et);
      v.elem = GgufType(et);
      const uint64_t n = c.get<uint64_t>(what + " count");
      // Every element takes at least one byte (strings and arrays 8): the count must fit.
      const uint64_t min_elem = v.elem == GgufType::STRING || v.elem == GgufType::ARRAY ? 8 : scalar_size(v.elem);
      if (n > (c.size - c.pos) / min_elem)
        fail(c.origin, ": key '", key, "': array of ", n, " ", gguf_type_name(v.elem),
             " runs past the end of the file");
      v.items.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) v.items.push_back(read_value(c, v.elem, key, depth + 1));
      break;
    }
    default: fail(c.origin, ": key '", key, "': unknown value type ", uint32_t(t));
  }
  return v;
}

}  // namespace

GgufHeader parse_gguf(const uint8_t* bytes, size_t size, const std::string& origin) {
  Cursor c{bytes, size, 0, origin};
  GgufHeader h;
  if (size < 4 || std::memcmp(bytes, "GGUF", 4) != 0) fail(origin, ": not a GGUF file (bad magic)");
  c.pos = 4;
  h.version = c.get<uint32_t>("version");
  if (h.version != 2 && h.version != 3)
    fail(origin, ": GGUF version ", h.version, " is not supported (llmc reads versions 2 and 3)");
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  // A kv takes >= 8+4 bytes and a tensor info >= 8+4+4+8 bytes.
  if (n_kv > (size - c.pos) / 12) fail(origin, ": metadata count ", n_kv, " cannot fit in the file");
  if (n_tensors > (size - c.pos) / 24) fail(origin, ": tensor count ", n_tensors, " cannot fit in the file");
  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str(cat("metadata key #", i));
    if (!keys.insert(key).second) fail(origin, ": duplicate metadata key '", key, "'");
    const uint32_t t = c.get<uint32_t>(cat("type of '", key, "'"));
    if (t > 12) fail(origin, ": key '", key, "': unknown value type ", t);
    GgufValue v = read_value(c, GgufType(t), key, 0);
    h.kv.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = h.find("general.alignment")) {
    if (a->type != GgufType::U32) fail(origin, ": general.alignment must be a uint32, is ", gguf_type_name(a->type));
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      fail(origin, ": general.alignment ", a->u, " is not a power of two");
    h.alignment = uint32_t(a->u);
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str(cat("tensor name #", i));
    if (!names.insert(t.name).second) fail(origin, ": duplicate tensor name '", t.name, "'");
    const uint32_t nd = c.get<uint32_t>(cat("tensor '", t.name, "' n_dims"));
    if (nd == 0 || nd > 4) fail(origin, ": tensor '", t.name, "': n_dims ", nd, " is not in 1..4");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t ne = c.get<uint64_t>(cat("tensor '", t.name, "' dims"));
      if (ne == 0 || ne > (uint64_t(1) << 62) / numel)
        fail(origin, ": tensor '", t.name, "': dimension ", ne, " is zero or overflows the element count");
      numel *= ne;
      t.ne.push_back(ne);
    }
    t.type = c.get<uint32_t>(cat("tensor '", t.name, "' type"));
    const GgmlTypeTraits* tt = ggml_type_by_id(t.type);
    if (!tt) fail(origin, ": tensor '", t.name, "': ggml type ", t.type, " is not supported by llmc");
    if (t.ne[0] % uint64_t(tt->block_size) != 0)
      fail(origin, ": tensor '", t.name, "': row length ", t.ne[0], " is not a multiple of the ", tt->name,
           " block size ", tt->block_size);
    t.nbytes = numel / uint64_t(tt->block_size) * uint64_t(tt->type_size);
    t.offset = c.get<uint64_t>(cat("tensor '", t.name, "' offset"));
    if (t.offset % h.alignment != 0)
      fail(origin, ": tensor '", t.name, "': offset ", t.offset, " is not a multiple of the alignment ", h.alignment);
    h.tensors.push_back(std::move(t));
  }
  const uint64_t pad = (h.alignment - c.pos % h.alignment) % h.alignment;
  if (pad > size - c.pos) {
    if (!h.tensors.empty()) fail(origin, ": the data region starts past the end of the file");
    h.data_start = size;
    return h;
  }
  h.data_start = c.pos + pad;
  const uint64_t data_size = size - h.data_start;
  std::vector<const GgufTensorInfo*> order;
  for (const auto& t : h.tensors) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail(origin, ": tensor '", t.name, "': data [", t.offset, ", +", t.nbytes, ") runs past the end of the file (",
           data_size, " data bytes)");
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i]->offset < order[i - 1]->offset + order[i - 1]->nbytes)
      fail(origin, ": tensor '", order[i]->name, "' overlaps tensor '", order[i - 1]->name, "'");
  return h;
}

GgufFile::GgufFile(const std::filesystem::path& path)
    : map_(std::make_shared<MappedFile>(path)), origin_(path.string()) {
  header_ = parse_gguf(map_->data(), map_->size(), origin_);
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

const GgufTensorInfo* GgufFile::tensor(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::string GgufFile::get_str(const std::string& key) const {
  const GgufValue* v = header_.find(key);
  if (!v) fail(origin_, ": missing metadata key '", key, "'");
  if (v->type != GgufType::STRING) fail(origin_, ": metadata key '", key, "' is a ", gguf_type_name(v->type),
                                        ", expected a string");
  return v->s;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = header_.find(key);
  if (!v) fail(origin_, ": missing metadata key '", key, "'");
  switch (v->type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::I64: case GgufType::BOOL: return v->i;
    case GgufType::U64:
      if (v->u > uint64_t(INT64_MAX)) fail(origin_, ": metadata key '", key, "' value ", v->u, " is out of range");
      return v->i;
    default: fail(origin_, ": metadata key '", key, "' is a ", gguf_type_name(v->type), ", expected an integer");
  }
}

int64_t GgufFile::get_int(const std::string& key, int64_t dflt) const {
  return header_.find(key) ? get_int(key) : dflt;
}

double GgufFile::get_float(const std::string& key, double dflt) const {
  const GgufValue* v = header_.find(key);
  if (!v) return dflt;
  if (v->type == GgufType::F32 || v->type == GgufType::F64) return v->f;
  return double(get_int(key));
}

// ---------------------------------------------------------------- writer

namespace {

void put_value(std::string& b, const GgufValue& v);
template <typename T>
void put_pod(std::string& b, T x) {
  b.append(reinterpret_cast<const char*>(&x), sizeof(T));
}
void put_str(std::string& b, const std::string& s) {
  put_pod<uint64_t>(b, s.size());
  b += s;
}
void put_value(std::string& b, const GgufValue& v) {
  switch (v.type) {
    case GgufType::U8: put_pod<uint8_t>(b, uint8_t(v.u)); break;
    case GgufType::I8: put_pod<int8_t>(b, int8_t(v.i)); break;
    case GgufType::U16: put_pod<uint16_t>(b, uint16_t(v.u)); break;
    case GgufType::I16: put_pod<int16_t>(b, int16_t(v.i)); break;
    case GgufType::U32: put_pod<uint32_t>(b, uint32_t(v.u)); break;
    case GgufType::I32: put_pod<int32_t>(b, int32_t(v.i)); break;
    case GgufType::U64: put_pod<uint64_t>(b, v.u); break;
    case GgufType::I64: put_pod<int64_t>(b, v.i); break;
    case GgufType::F32: put_pod<float>(b, float(v.f)); break;
    case GgufType::F64: put_pod<double>(b, v.f); break;
    case GgufType::BOOL: put_pod<uint8_t>(b, v.i ? 1 : 0); break;
    case GgufType::STRING: put_str(b, v.s); break;
    case GgufType::ARRAY:
      put_pod<uint32_t>(b, uint32_t(v.elem));
      put_pod<uint64_t>(b, v.items.size());
      for (const auto& e : v.items) {
        LLMC_CHECK(e.type == v.elem, "GGUF array element of another type");
        put_value(b, e);
      }
      break;
  }
}

}  // namespace

namespace {

// The header (magic ... tensor infos, padded to the alignment) of a file with these keys and
// tensors; the tensor infos (offsets, sizes) into *infos; `origin` names the file in errors.
std::string serialize_header(const std::string& origin, const std::vector<std::pair<std::string, GgufValue>>& kv,
                             const std::vector<GgufTensorDecl>& tensors, uint32_t alignment,
                             std::vector<GgufTensorInfo>* infos) {
  LLMC_CHECK(alignment && (alignment & (alignment - 1)) == 0);
  std::string b = "GGUF";
  put_pod<uint32_t>(b, 3);
  put_pod<uint64_t>(b, tensors.size());
  const bool has_align = std::any_of(kv.begin(), kv.end(), [](auto& p) { return p.first == "general.alignment"; });
  const bool add_align = !has_align && alignment != kGgufDefaultAlignment;
  put_pod<uint64_t>(b, kv.size() + (add_align ? 1 : 0));
  std::set<std::string> keys;
  for (const auto& [k, v] : kv) {
    if (!keys.insert(k).second) fail(origin, ": metadata key '", k, "' given twice");
    if (k == "general.alignment" && (v.type != GgufType::U32 || v.u != alignment))
      fail(origin, ": general.alignment disagrees with the writer's alignment ", alignment);
    put_str(b, k);
    put_pod<uint32_t>(b, uint32_t(v.type));
    put_value(b, v);
  }
  if (add_align) {
    put_str(b, "general.alignment");
    put_pod<uint32_t>(b, uint32_t(GgufType::U32));
    put_pod<uint32_t>(b, alignment);
  }
  uint64_t off = 0;
  std::set<std::string> names;
  for (const auto& d : tensors) {
    const GgmlTypeTraits* tt = ggml_type_by_id(d.type);
    if (!tt) fail(origin, ": tensor '", d.name, "': unknown ggml type ", d.type);
    if (!names.insert(d.name).second) fail(origin, ": tensor '", d.name, "' declared twice");
    if (d.ne.empty() || d.ne.size() > 4) fail(origin, ": tensor '", d.name, "': needs 1..4 dimensions");
    GgufTensorInfo t;
    t.name = d.name;
    t.type = d.type;
    t.ne = d.ne;
    t.nbytes = ggml_row_bytes(tt->type, d.ne[0]) * (t.numel() / d.ne[0]);
    t.offset = off;
    off += (t.nbytes + alignment - 1) / alignment * alignment;
    put_str(b, t.name);
    put_pod<uint32_t>(b, uint32_t(t.ne.size()));
    for (uint64_t n : t.ne) put_pod<uint64_t>(b, n);
    put_pod<uint32_t>(b, t.type);
    put_pod<uint64_t>(b, t.offset);
    infos->push_back(std::move(t));
  }
  b.resize((b.size() + alignment - 1) / alignment * alignment, '\0');
  return b;
}

}  // namespace

uint64_t gguf_file_bytes(const std::vector<std::pair<std::string, GgufValue>>& kv,
                         const std::vector<GgufTensorDecl>& tensors, uint32_t alignment) {
  std::vector<GgufTensorInfo> infos;
  uint64_t n = serialize_header("gguf", kv, tensors, alignment, &infos).size();
  for (const GgufTensorInfo& t : infos) n += (t.nbytes + alignment - 1) / alignment * alignment;  // as data() pads
  return n;
}

GgufWriter::GgufWriter(const std::filesystem::path& path, const std::vector<std::pair<std::string, GgufValue>>& kv,
                       const std::vector<GgufTensorDecl>& tensors, uint32_t alignment)
    : path_(path), alignment_(alignment) {
  const std::string b = serialize_header(path_.string(), kv, tensors, alignment, &infos_);
  fd_ = ::open(path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_.string(), ": cannot create: ", std::strerror(errno));
  put(b.data(), b.size());
}

GgufWriter::~GgufWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(path_.c_str());
}

void GgufWriter::put(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd_, c, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail(path_.string(), ": write error: ", std::strerror(errno));
    c += w;
    n -= size_t(w);
    pos_ += uint64_t(w);
  }
}

void GgufWriter::data(const std::string& name, const void* bytes, uint64_t nbytes) {
  if (finished_) fail(path_.string(), ": tensor '", name, "' written after finish()");
  if (next_ >= infos_.size() || infos_[next_].name != name)
    fail(path_.string(), ": tensor '", name, "' written out of the declared order");
  const GgufTensorInfo& t = infos_[next_];
  if (nbytes != t.nbytes) fail(path_.string(), ": tensor '", name, "': ", nbytes, " bytes given, ", t.nbytes, " declared");
  put(bytes, size_t(nbytes));
  static const char zeros[64] = {};
  uint64_t pad = (alignment_ - nbytes % alignment_) % alignment_;
  while (pad) {
    const size_t k = size_t(std::min<uint64_t>(pad, sizeof zeros));
    put(zeros, k);
    pad -= k;
  }
  ++next_;
}

void GgufWriter::finish() {
  if (finished_) return;
  if (next_ != infos_.size())
    fail(path_.string(), ": finish() with ", infos_.size() - next_, " declared tensors not written (next: '",
         infos_[next_].name, "')");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(path_.string(), ": write error: ", std::strerror(errno));
  finished_ = true;
}

}  // namespace llmc
