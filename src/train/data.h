#pragma once
// Token datasets for training: safetensors shards, each one file's codes [K, T] (tensor "codes", int64
// or int32/int16, -1 = ungated), listed in a JSONL index with one object per line:
//   {"path": "shards/a.safetensors", "file_id": "a"}   (path relative to the index's folder)
// A loader walks the files chunk by chunk in file order: each batch slot follows one file through its
// consecutive windows of `chunk_frames` frames (so TTT state can persist across the chunks of a file)
// and moves to the next file when it ends, flagging `reset` for that slot. Files are shuffled at file
// level (seeded, new order each epoch), split between data-parallel ranks, and the loader's position
// can be saved and restored so that a resumed run sees exactly the batches an uninterrupted one would.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mt::train {

struct TokenFile {
  std::string path;  // absolute or relative to the process's cwd (resolved at load)
  std::string file_id;
  int64_t frames = 0;   // T, read from the shard header
  int64_t streams = 0;  // K
};

// Reads an index (JSONL); every shard's header is checked (tensor "codes", 2-D, integer dtype, same K
// for all files). Errors name the index line or the shard.
std::vector<TokenFile> read_token_index(const std::string& index_path);

// Writes shards and an index (used by tests, the demo's data generator and converters): codes per file
// [K, T] int64, ids unique. Atomic per file.
void write_token_dataset(const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& files,
                         const std::string& index_name = "index.jsonl");

struct TokenBatch {
  at::Tensor codes;                   // [B, K, chunk_frames] int64; frames past a file's end are -1
  at::Tensor reset;                   // [B] bool: the slot starts a new file with this chunk
  std::vector<std::string> file_ids;  // per slot
  std::vector<int64_t> start_frame;   // per slot: first frame of the chunk in its file
  int64_t epoch = 0;                  // epoch of the file of slot 0 (for logging)
};

struct LoaderConfig {
  int64_t batch_size = 1;
  int64_t chunk_frames = 125;  // duration_sec * 12.5
  bool shuffle = true;         // file order shuffled per epoch with (seed, epoch)
  uint64_t seed = 0;
  int64_t rank = 0, world_size = 1;  // files i with i % world_size == rank (of the epoch's order)
  bool infinite = true;              // train: epochs forever; eval: one pass, then next() returns false
  // A file's last window is kept if at least this many frames remain (padded with -1 to chunk_frames).
  int64_t min_last_frames = 1;
};

class TokenLoader {
 public:
  TokenLoader(std::vector<TokenFile> files, LoaderConfig cfg);
  // The next batch; false when a finite loader has no more data (a batch where some slots ran out is
  // still returned, with those slots' codes all -1 and reset true).
  bool next(TokenBatch& out);
  // Position for exact resume (epoch, order, per-slot file and frame, RNG seed), as tensors so it can be
  // stored in a checkpoint's safetensors; restore() is strict (throws mt::Error on a mismatch, e.g. a
  // different dataset or batch size). Keys (int64, 1-D): version, dataset [num_files, hash(ids),
  // hash(frames), K], config [batch_size, chunk_frames, seed, rank, world_size, shuffle, min_last_frames],
  // epoch, next_in_order, order, slot_file, slot_frame, slot_epoch. `infinite` may differ on restore.
  std::map<std::string, at::Tensor> state() const;
  void restore(const std::map<std::string, at::Tensor>& state);
  int64_t num_files() const { return static_cast<int64_t>(files_.size()); }
  // Windows per epoch over all files of all ranks (for "sequence shorter than one chunk" warnings and
  // ETA); a rank sees about chunks_per_epoch() / world_size of them, batch_size at a time.
  int64_t chunks_per_epoch() const;

 private:
  std::vector<TokenFile> files_;
  LoaderConfig cfg_;
  // Position (all of it round-trips through state()/restore()).
  int64_t epoch_ = 0;                // epoch of order_
  std::vector<int64_t> order_;       // this rank's file indices for epoch_
  int64_t next_in_order_ = 0;        // next entry of order_ to hand to a slot
  std::vector<int64_t> slot_file_;   // per slot: index into files_, -1 if none yet / exhausted
  std::vector<int64_t> slot_frame_;  // per slot: next frame to read
  std::vector<int64_t> slot_epoch_;  // per slot: epoch its file was taken from
  // Codes of the files that slots are reading (file index -> [K, T] int64); not part of the state.
  std::map<int64_t, at::Tensor> cache_;

  std::vector<int64_t> epoch_order(int64_t epoch) const;
  void start_epoch(int64_t epoch);
  bool assign_next_file(int64_t slot);
  const at::Tensor& codes_of(int64_t file);
  void evict_unused();
  std::vector<int64_t> fingerprint() const;    // [num_files, hash(ids), hash(frames), K]
  std::vector<int64_t> config_values() const;  // the fields that fix the batch sequence
};

}  // namespace mt::train
