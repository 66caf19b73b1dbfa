#include "formats/hf_dir.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"

namespace llmc {

using nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Tensors spread over several safetensors shards.
class ShardedReader : public TensorReader {
 public:
  ShardedReader(std::string origin, std::vector<std::unique_ptr<SafetensorsFile>> shards)
      : origin_(std::move(origin)), shards_(std::move(shards)) {
    for (size_t s = 0; s < shards_.size(); ++s) {
      for (const auto& ti : shards_[s]->list()) {
        if (!where_.emplace(ti.name, s).second)
          fail(origin_, ": tensor '", ti.name, "' appears in both ", shards_[where_[ti.name]]->path().filename().string(),
               " and ", shards_[s]->path().filename().string());
        infos_.push_back(ti);
      }
    }
  }
  const std::vector<TensorInfo>& list() const override { return infos_; }
  bool has(const std::string& name) const override { return where_.count(name) != 0; }
  TensorRef get(const std::string& name) const override {
    auto it = where_.find(name);
    if (it == where_.end()) fail(origin_, ": no tensor named '", name, "'");
    return shards_[it->second]->get(name);
  }
  std::string origin() const override { return origin_; }

 private:
  std::string origin_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::vector<TensorInfo> infos_;
  std::unordered_map<std::string, size_t> where_;
};

}  // namespace

void check_plain_file_name(const std::string& name, const std::string& origin) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos)
    fail(origin, ": '", name, "' is not a plain file name");
}

bool is_weight_file_name(const std::string& name) {
  static const char* kSuffixes[] = {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                                    ".pt", ".pth", ".gguf", ".parquet", ".ckpt", ".h5", ".msgpack"};
  for (const char* s : kSuffixes)
    if (ends_with(name, s)) return true;
  return false;
}

std::unique_ptr<TensorReader> open_hf_tensors(const std::filesystem::path& dir) {
  const auto single = dir / kHfSingleWeights;
  if (std::filesystem::exists(single)) return std::make_unique<SafetensorsFile>(single);
  const auto index_path = dir / kHfIndex;
  if (!std::filesystem::exists(index_path))
    fail(dir.string(), ": no ", kHfSingleWeights, " and no ", kHfIndex, " (not a safetensors checkpoint)");
  const std::string origin = index_path.string();
  json idx;
  try {
    idx = json::parse(read_text_file(index_path));
  } catch (const json::exception& e) {
    fail(origin, ": not valid JSON: ", e.what());
  }
  if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
    fail(origin, ": missing or invalid \"weight_map\" object");
  std::map<std::string, std::vector<std::string>> by_file;  // sorted shard order
  for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
    if (!it.value().is_string()) fail(origin, ": weight_map entry for tensor '", it.key(), "' is not a string");
    const std::string file = it.value().get<std::string>();
    check_plain_file_name(file, origin + ": tensor '" + it.key() + "'");
    by_file[file].push_back(it.key());
  }
  if (by_file.empty()) fail(origin, ": weight_map is empty");
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  for (const auto& [file, names] : by_file) {
    auto sf = std::make_unique<SafetensorsFile>(dir / file);
    for (const auto& n : names)
      if (!sf->has(n)) fail(origin, ": tensor '", n, "' is mapped to ", file, " but that file does not contain it");
    if (sf->list().size() != names.size()) {
      std::set<std::string> mapped(names.begin(), names.end());
      for (const auto& ti : sf->list())
        if (!mapped.count(ti.name))
          fail(origin, ": tensor '", ti.name, "' in ", file, " is not mapped to that file in the weight_map");
    }
    shards.push_back(std::move(sf));
  }
  if (idx.contains("metadata") && idx["metadata"].is_object() && idx["metadata"].contains("total_size")) {
    const json& ts = idx["metadata"]["total_size"];
    uint64_t sum = 0;
    for (const auto& s : shards)
      for (const auto& ti : s->list()) sum += ti.nbytes;
    if (ts.is_number_unsigned() && ts.get<uint64_t>() != sum)
      log_warn(cat(origin, ": metadata.total_size is ", ts.get<uint64_t>(), " but the shards hold ", sum,
                   " bytes of tensors"));
  }
  return std::make_unique<ShardedReader>(dir.string(), std::move(shards));
}

namespace {

// Where a model directory's files may resolve to: the directory itself, and for a Hugging Face
// hub cache snapshot (.../models--org--name/snapshots/<rev>/) the repository's blobs/ folder,
// which its symlinks point into.
std::vector<std::filesystem::path> allowed_roots(const std::filesystem::path& dir) {
  std::error_code ec;
  const auto d = std::filesystem::canonical(dir, ec);
  if (ec) return {};
  std::vector<std::filesystem::path> roots = {d};
  if (d.parent_path().filename() == "snapshots") roots.push_back(d.parent_path().parent_path() / "blobs");
  return roots;
}

bool inside(const std::filesystem::path& p, const std::filesystem::path& root) {
  auto i = p.begin(), r = root.begin();
  for (; r != root.end(); ++r, ++i)
    if (i == p.end() || *i != *r) return false;
  return i != p.end();
}

}  // namespace

std::map<std::string, std::string> read_aux_files(const std::filesystem::path& dir) {
  std::map<std::string, std::string> out;
  const auto roots = allowed_roots(dir);
  for (const auto& de : std::filesystem::directory_iterator(dir)) {
    const std::string name = de.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (name == "config.json" || is_weight_file_name(name)) continue;
    if (name.find(".tmp-") != std::string::npos || ends_with(name, ".data-tmp")) continue;
    std::error_code ec;
    if (de.is_symlink(ec)) {
      // Copy a symlink's target only when it resolves inside the model directory (or its hub
      // cache blobs): never /etc/passwd or a file of another directory.
      const auto target = std::filesystem::canonical(de.path(), ec);
      const bool ok = !ec && std::any_of(roots.begin(), roots.end(), [&](const auto& r) { return inside(target, r); });
      if (!ok) {
        log_warn(cat(de.path().string(), ": a symbolic link to ",
                     ec ? std::string("a missing file") : target.string(),
                     ", outside the model directory; not copied"));
        continue;
      }
    }
    if (!de.is_regular_file(ec)) {
      if (!de.is_directory(ec))
        log_warn(cat(de.path().string(), ": not a regular file (FIFO, device or socket); not copied"));
      continue;
    }
    if (de.file_size() > kMaxAuxFileBytes) {
      log_warn(cat(de.path().string(), ": ", human_bytes(double(de.file_size())),
                   " is too large for an auxiliary file; not copied"));
      continue;
    }
    out[name] = read_text_file(de.path());
  }
  return out;
}

// ---------------------------------------------------------------- writer

HfTensorWriter::HfTensorWriter(const std::filesystem::path& dir, uint64_t max_shard_bytes)
    : dir_(dir), max_shard_bytes_(max_shard_bytes) {
  if (max_shard_bytes_ == 0) fail(dir.string(), ": shard size must be positive");
  if (!std::filesystem::is_directory(dir_)) fail(dir.string(), ": output directory does not exist");
}

HfTensorWriter::~HfTensorWriter() {
  cur_.reset();
  if (!finished_) {
    std::error_code ec;
    for (const auto& p : parts_) std::filesystem::remove(p, ec);
  }
}

void HfTensorWriter::close_current() {
  if (!cur_) return;
  cur_->finish();
  cur_.reset();
}

void HfTensorWriter::add(const std::string& name, DType dtype, const Shape& shape, const void* data,
                         uint64_t nbytes) {
  if (finished_) fail(dir_.string(), ": add('", name, "') after finish()");
  if (seen_.count(name)) fail(dir_.string(), ": tensor '", name, "' added twice");
  if (cur_ && cur_->count() > 0 && cur_->data_bytes() + nbytes > max_shard_bytes_) close_current();
  if (!cur_) {
    parts_.push_back(dir_ / cat("shard-", parts_.size(), ".safetensors.part"));
    part_names_.emplace_back();
    cur_ = std::make_unique<SafetensorsWriter>(parts_.back());
  }
  cur_->add(name, dtype, shape, data, nbytes);
  seen_[name] = int(parts_.size() - 1);
  part_names_.back().push_back(name);
  total_bytes_ += nbytes;
}

void HfTensorWriter::finish() {
  if (finished_) return;
  if (!cur_ && parts_.empty()) {  // a checkpoint without tensors: one empty file
    parts_.push_back(dir_ / "shard-0.safetensors.part");
    part_names_.emplace_back();
    cur_ = std::make_unique<SafetensorsWriter>(parts_.back());
  }
  close_current();
  const size_t n = parts_.size();
  json weight_map = json::object();
  for (size_t i = 0; i < n; ++i) {
    std::string file;
    if (n == 1) {
      file = kHfSingleWeights;
    } else {
      char buf[64];
      std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
      file = buf;
    }
    std::error_code ec;
    std::filesystem::rename(parts_[i], dir_ / file, ec);
    if (ec) fail((dir_ / file).string(), ": cannot rename shard into place: ", ec.message());
    files_.push_back(file);
    for (const auto& t : part_names_[i]) weight_map[t] = file;
  }
  if (n > 1) {
    json idx;
    idx["metadata"]["total_size"] = total_bytes_;
    idx["weight_map"] = std::move(weight_map);
    write_text_file(dir_ / kHfIndex, idx.dump(2) + "\n");
  }
  finished_ = true;
}

}  // namespace llmc
