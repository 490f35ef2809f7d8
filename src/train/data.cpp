#include "train/data.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/prng.h"

namespace mt::train {

using util::SplitMix64;

namespace fs = std::filesystem;

namespace {

// FNV-1a, fed field by field; every field is length-prefixed so ("ab","c") and ("a","bc") differ.
struct Fnv {
  uint64_t h = 0xCBF29CE484222325ull;
  void bytes(const void* p, size_t n) {
    auto* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= c[i];
      h *= 0x100000001B3ull;
    }
  }
  void u64(uint64_t v) { bytes(&v, sizeof v); }
  void string(const std::string& s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  int64_t value() const {
    int64_t v;
    std::memcpy(&v, &h, sizeof v);
    return v;
  }
};

int64_t as_i64(uint64_t v) {
  int64_t r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}

bool is_integer_dtype(const std::string& d) { return d == "I64" || d == "I32" || d == "I16"; }

// Checks a shard's header (no tensor data is read) and returns [K, T].
std::pair<int64_t, int64_t> shard_shape(const std::string& path, const std::string& where) {
  std::unique_ptr<io::SafeTensors> f;
  try {
    f = std::make_unique<io::SafeTensors>(path);
  } catch (const std::exception& e) {
    fail(where, ": cannot read shard: ", error_message(e));
  }
  MT_CHECK(f->contains("codes"), where, ": shard ", path, " has no tensor \"codes\" (it has ", shape_str(f->names()),
           ")");
  const auto& info = f->info("codes");
  MT_CHECK(is_integer_dtype(info.dtype), where, ": shard ", path, ": \"codes\" must be an integer tensor ",
           "(I64, I32 or I16), got ", info.dtype);
  MT_CHECK(info.shape.size() == 2, where, ": shard ", path, ": \"codes\" must be 2-D [K, T], got shape ",
           shape_str(info.shape));
  MT_CHECK(info.shape[0] >= 1 && info.shape[1] >= 1, where, ": shard ", path,
           ": \"codes\" must have K >= 1 streams and T >= 1 frames, got shape ", shape_str(info.shape));
  return {info.shape[0], info.shape[1]};
}

// Windows a file of T frames yields: starts 0, C, 2C, ... while at least m real frames remain.
int64_t windows_of(int64_t frames, int64_t chunk, int64_t min_last) {
  return frames >= min_last ? (frames - min_last) / chunk + 1 : 0;
}

// File names from ids: anything outside [A-Za-z0-9._-] becomes '_' (ids may contain '/' or spaces).
std::string sanitize(const std::string& id) {
  std::string s = id;
  for (char& c : s) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) c = '_';
  }
  // A leading dot would make hidden files (and "." / ".." would be confusing).
  if (!s.empty() && s[0] == '.') s[0] = '_';
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Index

std::vector<TokenFile> read_token_index(const std::string& index_path) {
  std::ifstream in(index_path);
  MT_CHECK(in.good(), index_path, ": cannot open token index");
  const fs::path base = fs::path(index_path).parent_path();

  std::vector<TokenFile> files;
  std::map<std::string, int64_t> id_line;  // file_id -> line where it was first seen
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string where = str(index_path, ":", line_no);
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;  // blank lines are allowed

    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      fail(where, ": invalid JSON: ", e.what());
    }
    MT_CHECK(j.is_object(), where, ": expected a JSON object {\"path\": ..., \"file_id\": ...}, got ", j.type_name());
    for (const char* key : {"path", "file_id"}) {
      MT_CHECK(j.contains(key), where, ": missing field \"", key, "\"");
      MT_CHECK(j[key].is_string(), where, ": field \"", key, "\" must be a string, got ", j[key].type_name());
    }
    TokenFile f;
    f.file_id = j["file_id"].get<std::string>();
    MT_CHECK(!f.file_id.empty(), where, ": field \"file_id\" is empty");
    auto [it, inserted] = id_line.emplace(f.file_id, line_no);
    MT_CHECK(inserted, where, ": duplicate file_id \"", f.file_id, "\" (first on line ", it->second, ")");
    std::string rel = j["path"].get<std::string>();
    MT_CHECK(!rel.empty(), where, ": field \"path\" is empty");
    fs::path p(rel);
    f.path = (p.is_absolute() ? p : base / p).lexically_normal().string();

    auto [k, t] = shard_shape(f.path, where);
    f.streams = k;
    f.frames = t;
    if (!files.empty())
      MT_CHECK(k == files.front().streams, where, ": shard ", f.path, " has K = ", k, " streams, expected ",
               files.front().streams, " (as ", files.front().path, " on an earlier line)");
    files.push_back(std::move(f));
  }
  MT_CHECK(in.eof(), index_path, ": read error after line ", line_no);
  MT_CHECK(!files.empty(), index_path, ": token index lists no files");
  return files;
}

void write_token_dataset(const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& files,
                         const std::string& index_name) {
  MT_CHECK(!index_name.empty(), "write_token_dataset: empty index name");
  std::error_code ec;
  fs::create_directories(dir, ec);
  MT_CHECK(!ec && fs::is_directory(dir), dir, ": cannot create folder: ", ec.message());

  std::set<std::string> ids, names;
  int64_t streams = -1;
  std::string index;
  for (const auto& [id, codes] : files) {
    MT_CHECK(!id.empty(), dir, ": write_token_dataset: empty file_id");
    MT_CHECK(ids.insert(id).second, dir, ": write_token_dataset: duplicate file_id \"", id, "\"");
    MT_CHECK(codes.defined() && codes.dim() == 2, dir, ": file \"", id, "\": codes must be 2-D [K, T], got ",
             codes.defined() ? shape_str(codes.sizes().vec()) : std::string("an undefined tensor"));
    MT_CHECK(!at::isFloatingType(codes.scalar_type()) && !at::isComplexType(codes.scalar_type()) &&
                 codes.scalar_type() != at::kBool,
             dir, ": file \"", id, "\": codes must be integers, got ", c10::toString(codes.scalar_type()));
    MT_CHECK(codes.size(0) >= 1 && codes.size(1) >= 1, dir, ": file \"", id, "\": codes need K >= 1 and T >= 1, got ",
             shape_str(codes.sizes().vec()));
    if (streams < 0) streams = codes.size(0);
    MT_CHECK(codes.size(0) == streams, dir, ": file \"", id, "\" has K = ", codes.size(0), " streams, expected ",
             streams, " (as the first file)");

    // Distinct ids can sanitize to the same name ("a/b", "a_b"): number the later ones.
    std::string stem = sanitize(id), name = stem + ".safetensors";
    for (int n = 2; !names.insert(name).second; ++n) name = str(stem, "-", n, ".safetensors");

    at::Tensor c = codes.to(at::kCPU, at::kLong).contiguous();
    const std::vector<std::pair<std::string, at::Tensor>> tensors = {{"codes", c}};
    io::save((fs::path(dir) / name).string(), tensors, {{"file_id", id}});
    index += nlohmann::json{{"path", name}, {"file_id", id}}.dump() + "\n";
  }
  io::atomic_write((fs::path(dir) / index_name).string(), index);
}

// ---------------------------------------------------------------------------------------------------------
// Loader

namespace {
// Keys of state(); the checkpoint writer may prefix them.
constexpr int64_t kStateVersion = 1;
const char* const kConfigFields[] = {"batch_size", "chunk_frames", "seed",           "rank",
                                     "world_size", "shuffle",      "min_last_frames"};
}  // namespace

TokenLoader::TokenLoader(std::vector<TokenFile> files, LoaderConfig cfg) : files_(std::move(files)), cfg_(cfg) {
  MT_CHECK(cfg_.batch_size >= 1, "TokenLoader: batch_size must be >= 1, got ", cfg_.batch_size);
  MT_CHECK(cfg_.chunk_frames >= 1, "TokenLoader: chunk_frames must be >= 1, got ", cfg_.chunk_frames);
  MT_CHECK(cfg_.world_size >= 1, "TokenLoader: world_size must be >= 1, got ", cfg_.world_size);
  MT_CHECK(cfg_.rank >= 0 && cfg_.rank < cfg_.world_size, "TokenLoader: rank must be in [0, ", cfg_.world_size,
           "), got ", cfg_.rank);
  MT_CHECK(cfg_.min_last_frames >= 1 && cfg_.min_last_frames <= cfg_.chunk_frames,
           "TokenLoader: min_last_frames must be in [1, chunk_frames = ", cfg_.chunk_frames, "], got ",
           cfg_.min_last_frames);
  MT_CHECK(!files_.empty(), "TokenLoader: no files");
  // Ranks keep positions i % world_size == rank of each epoch's order, so every rank needs N > rank.
  MT_CHECK(num_files() > cfg_.rank, "TokenLoader: rank ", cfg_.rank, " of world_size ", cfg_.world_size,
           " gets no files: the dataset has only ", num_files());

  // TokenFiles made by hand may leave the header fields unset: read them here.
  bool any_windows = false;
  for (auto& f : files_) {
    if (f.frames <= 0 || f.streams <= 0) {
      auto [k, t] = shard_shape(f.path, "TokenLoader");
      f.streams = k;
      f.frames = t;
    }
    MT_CHECK(f.streams == files_.front().streams, "TokenLoader: ", f.path, " has K = ", f.streams,
             " streams, expected ", files_.front().streams, " (as ", files_.front().path, ")");
    any_windows |= windows_of(f.frames, cfg_.chunk_frames, cfg_.min_last_frames) > 0;
  }
  MT_CHECK(any_windows, "TokenLoader: no file has at least min_last_frames = ", cfg_.min_last_frames,
           " frames, so there is nothing to load");

  slot_file_.assign(cfg_.batch_size, -1);
  slot_frame_.assign(cfg_.batch_size, 0);
  slot_epoch_.assign(cfg_.batch_size, 0);
  start_epoch(0);
}

std::vector<int64_t> TokenLoader::epoch_order(int64_t epoch) const {
  const int64_t n = num_files();
  std::vector<int64_t> perm(n);
  for (int64_t i = 0; i < n; ++i) perm[i] = i;
  if (cfg_.shuffle) {  // Fisher-Yates with a generator seeded from (seed, epoch)
    SplitMix64 rng(cfg_.seed, static_cast<uint64_t>(epoch));
    for (int64_t i = n - 1; i > 0; --i) {
      int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
      std::swap(perm[i], perm[j]);
    }
  }
  std::vector<int64_t> mine;
  for (int64_t i = cfg_.rank; i < n; i += cfg_.world_size) mine.push_back(perm[i]);
  return mine;
}

void TokenLoader::start_epoch(int64_t epoch) {
  epoch_ = epoch;
  order_ = epoch_order(epoch);
  next_in_order_ = 0;
}

bool TokenLoader::assign_next_file(int64_t slot) {
  // Files too short for one window are skipped. An infinite loader moves on to the next epoch when the
  // order runs out; if this rank's share had no usable file in many epochs in a row, fail rather than spin.
  for (int64_t new_epochs = 0;; ++new_epochs) {
    while (next_in_order_ < static_cast<int64_t>(order_.size())) {
      int64_t f = order_[next_in_order_++];
      if (windows_of(files_[f].frames, cfg_.chunk_frames, cfg_.min_last_frames) == 0) continue;
      slot_file_[slot] = f;
      slot_frame_[slot] = 0;
      slot_epoch_[slot] = epoch_;
      return true;
    }
    slot_file_[slot] = -1;
    slot_frame_[slot] = 0;
    if (!cfg_.infinite) return false;
    MT_CHECK(new_epochs < 64, "TokenLoader: rank ", cfg_.rank,
             " found no file with at least min_last_frames = ", cfg_.min_last_frames,
             " frames in 64 consecutive epochs");
    start_epoch(epoch_ + 1);
  }
}

const at::Tensor& TokenLoader::codes_of(int64_t f) {
  auto it = cache_.find(f);
  if (it != cache_.end()) return it->second;
  const TokenFile& tf = files_[f];
  at::Tensor c;
  try {
    io::SafeTensors st(tf.path);
    c = st.get("codes", {tf.streams, tf.frames});
  } catch (const std::exception& e) {
    fail("TokenLoader: file \"", tf.file_id, "\": ", error_message(e),
         " (did the shard change since the index was read?)");
  }
  MT_CHECK(!at::isFloatingType(c.scalar_type()) && c.scalar_type() != at::kBool, "TokenLoader: ", tf.path,
           ": \"codes\" must be integers, got ", c10::toString(c.scalar_type()));
  return cache_.emplace(f, c.to(at::kLong).contiguous()).first->second;
}

void TokenLoader::evict_unused() {
  // Only the files that slots are reading stay cached: each file is read once per pass through it.
  for (auto it = cache_.begin(); it != cache_.end();) {
    if (std::find(slot_file_.begin(), slot_file_.end(), it->first) == slot_file_.end())
      it = cache_.erase(it);
    else
      ++it;
  }
}

bool TokenLoader::next(TokenBatch& out) {
  const int64_t B = cfg_.batch_size, C = cfg_.chunk_frames, K = files_.front().streams;
  out.codes = at::full({B, K, C}, -1, at::kLong);
  out.reset = at::zeros({B}, at::kBool);
  out.file_ids.assign(B, "");
  out.start_frame.assign(B, 0);
  auto reset = out.reset.accessor<bool, 1>();

  bool any = false;
  for (int64_t b = 0; b < B; ++b) {
    int64_t f = slot_file_[b];
    // Assignment is lazy (here, not when the previous chunk was handed out), so slots take files in slot
    // order within a step and a saved state never holds a file that no batch has shown yet.
    bool fresh = false;
    if (f < 0 || files_[f].frames - slot_frame_[b] < cfg_.min_last_frames) {
      fresh = true;
      if (!assign_next_file(b)) {
        reset[b] = true;  // no data: the slot's (absent) state should not carry over either
        continue;
      }
      f = slot_file_[b];
    }
    const at::Tensor& codes = codes_of(f);
    const int64_t s = slot_frame_[b], n = std::min(C, files_[f].frames - s);
    out.codes[b].narrow(1, 0, n).copy_(codes.narrow(1, s, n));
    reset[b] = fresh;
    out.file_ids[b] = files_[f].file_id;
    out.start_frame[b] = s;
    slot_frame_[b] = s + C;
    any = true;
  }
  out.epoch = slot_file_[0] >= 0 ? slot_epoch_[0] : epoch_;
  evict_unused();
  return any;
}

int64_t TokenLoader::chunks_per_epoch() const {
  int64_t n = 0;
  for (const auto& f : files_) n += windows_of(f.frames, cfg_.chunk_frames, cfg_.min_last_frames);
  return n;
}

std::vector<int64_t> TokenLoader::fingerprint() const {
  Fnv ids, frames;
  for (const auto& f : files_) {
    ids.string(f.file_id);
    frames.u64(static_cast<uint64_t>(f.frames));
  }
  return {num_files(), ids.value(), frames.value(), files_.front().streams};
}

std::vector<int64_t> TokenLoader::config_values() const {
  return {cfg_.batch_size, cfg_.chunk_frames,    as_i64(cfg_.seed),   cfg_.rank,
          cfg_.world_size, cfg_.shuffle ? 1 : 0, cfg_.min_last_frames};
}

namespace {
at::Tensor vec_tensor(const std::vector<int64_t>& v) { return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).clone(); }
}  // namespace

std::map<std::string, at::Tensor> TokenLoader::state() const {
  // Everything as int64 so the map can go straight into a checkpoint's safetensors.
  std::map<std::string, at::Tensor> s;
  s["version"] = vec_tensor({kStateVersion});
  s["dataset"] = vec_tensor(fingerprint());   // [num_files, hash(ids), hash(frames), K]
  s["config"] = vec_tensor(config_values());  // see kConfigFields
  s["epoch"] = vec_tensor({epoch_});
  s["next_in_order"] = vec_tensor({next_in_order_});
  s["order"] = vec_tensor(order_);
  s["slot_file"] = vec_tensor(slot_file_);
  s["slot_frame"] = vec_tensor(slot_frame_);
  s["slot_epoch"] = vec_tensor(slot_epoch_);
  return s;
}

void TokenLoader::restore(const std::map<std::string, at::Tensor>& state) {
  auto get = [&](const std::string& key, int64_t expected_len) {
    auto it = state.find(key);
    MT_CHECK(it != state.end(), "TokenLoader::restore: state has no \"", key, "\"");
    const at::Tensor& t = it->second;
    MT_CHECK(t.defined() && t.dim() == 1 && t.scalar_type() == at::kLong, "TokenLoader::restore: \"", key,
             "\" must be a 1-D int64 tensor, got ",
             t.defined() ? str(c10::toString(t.scalar_type()), shape_str(t.sizes().vec())) : "undefined");
    MT_CHECK(expected_len < 0 || t.size(0) == expected_len, "TokenLoader::restore: \"", key, "\" has ", t.size(0),
             " entries, expected ", expected_len);
    at::Tensor c = t.to(at::kCPU).contiguous();
    return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  };

  auto version = get("version", 1);
  MT_CHECK(version[0] == kStateVersion, "TokenLoader::restore: state version ", version[0],
           ", this build reads version ", kStateVersion);

  auto ds = get("dataset", 4), want_ds = fingerprint();
  MT_CHECK(ds[0] == want_ds[0], "TokenLoader::restore: the state is for a dataset of ", ds[0],
           " files, this loader has ", want_ds[0]);
  MT_CHECK(ds[1] == want_ds[1], "TokenLoader::restore: the state is for a different dataset (file ids differ)");
  MT_CHECK(ds[2] == want_ds[2],
           "TokenLoader::restore: the state is for a different dataset (file lengths in frames differ)");
  MT_CHECK(ds[3] == want_ds[3], "TokenLoader::restore: the state is for files of K = ", ds[3],
           " streams, this loader's have ", want_ds[3]);

  auto cf = get("config", std::size(kConfigFields)), want_cf = config_values();
  for (size_t i = 0; i < want_cf.size(); ++i)
    MT_CHECK(cf[i] == want_cf[i], "TokenLoader::restore: the state was saved with ", kConfigFields[i], " = ", cf[i],
             ", this loader has ", kConfigFields[i], " = ", want_cf[i]);

  // The position itself: validate everything before touching the loader so a failed restore leaves it
  // as it was.
  const int64_t n = num_files(), B = cfg_.batch_size;
  const int64_t share = static_cast<int64_t>(epoch_order(0).size());
  auto epoch = get("epoch", 1);
  auto next = get("next_in_order", 1);
  auto order = get("order", share);
  auto sfile = get("slot_file", B), sframe = get("slot_frame", B), sepoch = get("slot_epoch", B);
  MT_CHECK(epoch[0] >= 0, "TokenLoader::restore: negative epoch ", epoch[0]);
  MT_CHECK(next[0] >= 0 && next[0] <= share, "TokenLoader::restore: next_in_order ", next[0], " outside [0, ", share,
           "]");
  std::set<int64_t> seen;
  for (int64_t f : order)
    MT_CHECK(f >= 0 && f < n && seen.insert(f).second, "TokenLoader::restore: invalid file order (entry ", f, ")");
  for (int64_t b = 0; b < B; ++b) {
    int64_t f = sfile[b];
    MT_CHECK(f >= -1 && f < n, "TokenLoader::restore: slot ", b, " has file index ", f, " outside [-1, ", n, ")");
    MT_CHECK(sframe[b] >= 0 && sframe[b] % cfg_.chunk_frames == 0 &&
                 (f < 0 || sframe[b] <= files_[f].frames + cfg_.chunk_frames),
             "TokenLoader::restore: slot ", b, " has an invalid frame position ", sframe[b]);
    MT_CHECK(sepoch[b] >= 0 && sepoch[b] <= epoch[0], "TokenLoader::restore: slot ", b, " has epoch ", sepoch[b],
             " after the loader's epoch ", epoch[0]);
  }

  epoch_ = epoch[0];
  next_in_order_ = next[0];
  order_ = std::move(order);
  slot_file_ = std::move(sfile);
  slot_frame_ = std::move(sframe);
  slot_epoch_ = std::move(sepoch);
  cache_.clear();
}

}  // namespace mt::train
