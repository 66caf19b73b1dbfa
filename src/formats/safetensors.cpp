#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_set>

#include "core/error.h"

namespace llmc {

using nlohmann::json;

namespace {

// Deepest legal nesting of a header: {  "t": { "shape": [ ... ] } }.
constexpr int kMaxHeaderDepth = 3;
constexpr uint64_t kMaxDim = uint64_t(1) << 53;

uint64_t as_u64(const json& v, const std::string& origin, const std::string& name, const char* what) {
  if (v.is_number_unsigned()) {
    const uint64_t x = v.get<uint64_t>();
    if (x > kMaxDim) fail(origin, ": tensor '", name, "': ", what, " value ", x, " is too large");
    return x;
  }
  if (v.is_number_integer()) fail(origin, ": tensor '", name, "': ", what, " has a negative value ", v.dump());
  fail(origin, ": tensor '", name, "': ", what, " must hold integers, got ", v.dump().substr(0, 40));
}

DType safetensors_dtype(const json& v, const std::string& origin, const std::string& name) {
  if (!v.is_string()) fail(origin, ": tensor '", name, "': dtype must be a string");
  const std::string s = v.get<std::string>();
  for (int i = 0; i < kNumDTypes; ++i) {
    const auto& tr = dtype_traits(DType(i));
    if (s == tr.safetensors) return tr.dtype;
  }
  fail(origin, ": tensor '", name, "': unknown dtype '", s.substr(0, 40), "'");
}

bool write_all(int fd, const void* p, size_t n) {
  const auto* c = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    c += w;
    n -= size_t(w);
  }
  return true;
}

// Copies `n` bytes from in_fd (at its offset 0) to the end of out_fd: copy_file_range first
// (kernel side, may reflink), plain read/write where the filesystem cannot.
bool copy_fd(int in_fd, int out_fd, uint64_t n) {
  uint64_t done = 0;
  bool use_cfr = true;
  std::vector<uint8_t> buf;
  while (done < n) {
    if (use_cfr) {
      loff_t off_in = loff_t(done);
      const ssize_t r = ::copy_file_range(in_fd, &off_in, out_fd, nullptr,
                                          size_t(std::min<uint64_t>(n - done, 1ull << 30)), 0);
      if (r > 0) {
        done += uint64_t(r);
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) return false;  // source shorter than expected
      use_cfr = false;           // ENOSYS / EXDEV / EINVAL ...: fall back
      continue;
    }
    if (buf.empty()) buf.resize(8u << 20);
    const ssize_t r = ::pread(in_fd, buf.data(), size_t(std::min<uint64_t>(n - done, buf.size())), off_t(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    if (!write_all(out_fd, buf.data(), size_t(r))) return false;
    done += uint64_t(r);
  }
  return true;
}

// Validating SAX handler for pass 1: depth <= kMaxHeaderDepth, no duplicate key at depth 1.
// O(1) per event (a hash set of the top-level keys).
struct HeaderChecker : json::json_sax_t {
  explicit HeaderChecker(const std::string& o) : origin(o) {}
  const std::string& origin;
  int depth = 0;
  std::unordered_set<std::string> keys;
  std::string error;

  bool open() {
    if (++depth > kMaxHeaderDepth) fail(origin, ": safetensors header nested too deeply");
    return true;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return open(); }
  bool end_object() override { --depth; return true; }
  bool start_array(std::size_t) override { return open(); }
  bool end_array() override { --depth; return true; }
  bool key(string_t& k) override {
    if (depth == 1 && !keys.insert(k).second)
      fail(origin, ": safetensors header has duplicate key '", k.substr(0, 200), "'");
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    error = ex.what();
    return false;
  }
};

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& origin) {
  if (size < 8) fail(origin, ": not a safetensors file: ", size, " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxSafetensorsHeader)
    fail(origin, ": safetensors header length ", n, " exceeds the limit of ", kMaxSafetensorsHeader, " bytes");
  if (n > size - 8)
    fail(origin, ": truncated safetensors file: header length ", n, " but only ", size - 8, " bytes follow");
  if (n < 2) fail(origin, ": safetensors header of ", n, " bytes is too short");

  const char* text = reinterpret_cast<const char*>(bytes + 8);
  // The JSON parser treats NUL as end of input; a header must not contain one.
  if (std::memchr(text, 0, n) != nullptr) fail(origin, ": safetensors header is not valid JSON: it contains a NUL byte");
  // Pass 1 (SAX, linear): nesting depth and duplicate top-level keys, which the DOM parser would
  // silently collapse. (nlohmann's callback parser is quadratic in the number of tensors: after
  // each entry it scans the parent object for discarded values.) Pass 2 builds the DOM.
  HeaderChecker checker(origin);
  try {
    json::sax_parse(text, text + n, &checker, json::input_format_t::json, /*strict=*/true,
                    /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    fail(origin, ": safetensors header is not valid JSON: ", e.what());
  }
  if (!checker.error.empty()) fail(origin, ": safetensors header is not valid JSON: ", checker.error);
  json h;
  try {
    h = json::parse(text, text + n, nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    fail(origin, ": safetensors header is not valid JSON: ", e.what());
  }
  if (!h.is_object()) fail(origin, ": safetensors header is not a JSON object");

  SafetensorsHeader out;
  out.data_start = 8 + n;
  const uint64_t data_size = size - out.data_start;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(origin, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(origin, ": __metadata__ value for '", m.key().substr(0, 200), "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (name.empty()) fail(origin, ": tensor with an empty name");
    if (!v.is_object()) fail(origin, ": tensor '", name, "': entry is not an object");
    if (v.size() != 3 || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(origin, ": tensor '", name, "': entry must have exactly dtype, shape and data_offsets");
    SafetensorsEntry e;
    e.info.name = name;
    e.info.dtype = safetensors_dtype(v["dtype"], origin, name);
    const json& shape = v["shape"];
    if (!shape.is_array()) fail(origin, ": tensor '", name, "': shape must be a list");
    uint64_t numel = 1;
    for (const json& d : shape) {
      const uint64_t dim = as_u64(d, origin, name, "shape");
      if (__builtin_mul_overflow(numel, dim, &numel) || numel > kMaxDim)
        fail(origin, ": tensor '", name, "': shape ", shape.dump(), " has too many elements");
      e.info.shape.push_back(int64_t(dim));
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2)
      fail(origin, ": tensor '", name, "': data_offsets must be a list of two integers");
    e.begin = as_u64(off[0], origin, name, "data_offsets");
    e.end = as_u64(off[1], origin, name, "data_offsets");
    if (e.begin > e.end)
      fail(origin, ": tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] are reversed");
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(e.info.dtype)), &nbytes) || nbytes != e.end - e.begin)
      fail(origin, ": tensor '", name, "': shape ", shape_str(e.info.shape), " of ",
           dtype_traits(e.info.dtype).safetensors, " needs ", numel * dtype_size(e.info.dtype),
           " bytes but data_offsets span ", e.end - e.begin);
    if (e.end > data_size)
      fail(origin, ": tensor '", name, "': data_offsets [", e.begin, ", ", e.end,
           "] run past the end of the file (data region is ", data_size, " bytes)");
    e.info.nbytes = nbytes;
    out.entries.push_back(std::move(e));
  }
  std::sort(out.entries.begin(), out.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const auto& e : out.entries) {
    if (e.begin < pos) fail(origin, ": tensor '", e.info.name, "': data_offsets [", e.begin, ", ", e.end,
                            "] overlap the previous tensor (which ends at ", pos, ")");
    if (e.begin > pos) fail(origin, ": tensor '", e.info.name, "': gap in the data region before offset ",
                            e.begin, " (previous tensor ends at ", pos, ")");
    pos = e.end;
  }
  if (pos != data_size)
    fail(origin, ": tensors cover ", pos, " bytes but the data region holds ", data_size,
         " bytes (trailing bytes)");
  return out;
}

// ---------------------------------------------------------------- reader

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : map_(std::make_shared<MappedFile>(path)) {
  header_ = parse_safetensors_header(map_->data(), map_->size(), path.string());
  infos_.reserve(header_.entries.size());
  for (size_t i = 0; i < header_.entries.size(); ++i) {
    infos_.push_back(header_.entries[i].info);
    index_.emplace(header_.entries[i].info.name, i);
  }
}

TensorRef SafetensorsFile::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(origin(), ": no tensor named '", name, "'");
  const auto& e = header_.entries[it->second];
  TensorRef r;
  r.info = e.info;
  r.data = map_->data() ? map_->data() + header_.data_start + e.begin : nullptr;
  r.keepalive = map_;
  return r;
}

// ---------------------------------------------------------------- writer

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path, std::map<std::string, std::string> metadata)
    : path_(path), side_(path.string() + ".data-tmp"), metadata_(std::move(metadata)) {
  fd_ = ::open(side_.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_.string(), ": cannot create: ", std::strerror(errno));
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(side_.c_str());
}

void SafetensorsWriter::add(const std::string& name, DType dtype, const Shape& shape, const void* data,
                            uint64_t nbytes) {
  if (finished_) fail(path_.string(), ": add('", name, "') after finish()");
  if (name.empty() || name == "__metadata__") fail(path_.string(), ": invalid tensor name '", name, "'");
  if (names_.count(name)) fail(path_.string(), ": tensor '", name, "' added twice");
  for (int64_t d : shape)
    if (d < 0) fail(path_.string(), ": tensor '", name, "': negative dimension in shape ", shape_str(shape));
  if (uint64_t(shape_numel(shape)) * dtype_size(dtype) != nbytes)
    fail(path_.string(), ": tensor '", name, "': shape ", shape_str(shape), " of ", dtype_name(dtype), " needs ",
         uint64_t(shape_numel(shape)) * dtype_size(dtype), " bytes, got ", nbytes);
  if (nbytes && !write_all(fd_, data, size_t(nbytes)))
    fail(path_.string(), ": write error on tensor '", name, "': ", std::strerror(errno));
  SafetensorsEntry e;
  e.info = {name, dtype, shape, nbytes};
  e.begin = data_bytes_;
  e.end = data_bytes_ + nbytes;
  data_bytes_ = e.end;
  names_.emplace(name, entries_.size());
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::finish() {
  if (finished_) return;
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    auto& m = h["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) m[k] = v;
  }
  for (const auto& e : entries_) {
    auto& t = h[e.info.name];
    t["dtype"] = dtype_traits(e.info.dtype).safetensors;
    t["shape"] = e.info.shape;
    t["data_offsets"] = {e.begin, e.end};
  }
  std::string text = h.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  const int out = ::open(path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (out < 0) fail(path_.string(), ": cannot create: ", std::strerror(errno));
  const bool ok = write_all(out, len, 8) && write_all(out, text.data(), text.size()) && copy_fd(fd_, out, data_bytes_);
  const int err = errno;
  const bool closed = ::close(out) == 0;
  if (!ok || !closed) {
    ::unlink(path_.c_str());
    fail(path_.string(), ": write error: ", std::strerror(ok ? errno : err));
  }
  ::close(fd_);
  fd_ = -1;
  ::unlink(side_.c_str());
  finished_ = true;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w(path, metadata);
  for (const auto& t : tensors) w.add(t.info.name, t.info.dtype, t.info.shape, t.data, t.info.nbytes);
  w.finish();
}

}  // namespace llmc
