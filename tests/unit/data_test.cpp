// Tests of the token datasets (src/train/data.{h,cpp}): the JSONL index and its error messages, the
// chunked loader (coverage, order, reset flags, shuffling, ranks, finite end, exact resume), and the
// synthetic long-range generator (src/train/synthetic.{h,cpp}).
#include "train/data.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/audio_index.h"
#include "train/synthetic.h"
#include "util/error.h"

namespace fs = std::filesystem;
using mt::test::TempDir;
using mt::train::LoaderConfig;
using mt::train::TokenBatch;
using mt::train::TokenFile;
using mt::train::TokenLoader;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

namespace {

// Codes whose every entry says where it came from: file f, stream k, frame t -> f*100000 + k*1000 + t.
at::Tensor tagged_codes(int64_t f, int64_t K, int64_t T) {
  auto k = at::arange(K, at::kLong).unsqueeze(1) * 1000;
  auto t = at::arange(T, at::kLong).unsqueeze(0);
  return (k + t + f * 100000).contiguous();
}

Named tagged_files(const std::vector<int64_t>& lengths, int64_t K = 3) {
  Named files;
  for (size_t i = 0; i < lengths.size(); ++i)
    files.emplace_back("f" + std::to_string(i), tagged_codes(static_cast<int64_t>(i), K, lengths[i]));
  return files;
}

std::vector<TokenFile> write_and_read(const TempDir& d, const Named& files) {
  mt::train::write_token_dataset(d.file("ds"), files);
  return mt::train::read_token_index(d.file("ds/index.jsonl"));
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  ASSERT_TRUE(f.good()) << path;
}

using mt::test::expect_error;

std::vector<TokenBatch> take(TokenLoader& l, int n) {
  std::vector<TokenBatch> out;
  for (int i = 0; i < n; ++i) {
    TokenBatch b;
    EXPECT_TRUE(l.next(b));
    out.push_back(b);
  }
  return out;
}

void expect_same_batches(const std::vector<TokenBatch>& a, const std::vector<TokenBatch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::equal(a[i].codes, b[i].codes)) << "batch " << i;
    EXPECT_TRUE(at::equal(a[i].reset, b[i].reset)) << "batch " << i;
    EXPECT_EQ(a[i].file_ids, b[i].file_ids) << "batch " << i;
    EXPECT_EQ(a[i].start_frame, b[i].start_frame) << "batch " << i;
    EXPECT_EQ(a[i].epoch, b[i].epoch) << "batch " << i;
  }
}

// The file ids a B = 1 loader shows, one per file start (chunks as long as the longest file).
std::vector<std::string> file_sequence(const std::vector<TokenFile>& files, LoaderConfig cfg, int n) {
  cfg.batch_size = 1;
  TokenLoader l(files, cfg);
  std::vector<std::string> ids;
  TokenBatch b;
  while (static_cast<int>(ids.size()) < n && l.next(b))
    if (b.reset[0].item<bool>()) ids.push_back(b.file_ids[0]);
  return ids;
}

}  // namespace

// ---- index ------------------------------------------------------------------------------------------

TEST(TokenIndex, RoundTrip) {
  TempDir d;
  Named files = tagged_files({5, 12, 1});
  files[1].first = "speaker 1/take#2";                            // sanitized into a file name, kept verbatim as the id
  files.emplace_back("speaker_1_take_2", tagged_codes(3, 3, 4));  // sanitizes to the same name
  auto index = write_and_read(d, files);
  ASSERT_EQ(index.size(), files.size());
  std::set<std::string> paths;
  for (size_t i = 0; i < files.size(); ++i) {
    EXPECT_EQ(index[i].file_id, files[i].first);
    EXPECT_EQ(index[i].streams, 3);
    EXPECT_EQ(index[i].frames, files[i].second.size(1));
    EXPECT_TRUE(paths.insert(index[i].path).second) << "two files share " << index[i].path;
    mt::io::SafeTensors st(index[i].path);
    EXPECT_EQ(st.metadata().at("file_id"), files[i].first);
    EXPECT_EQ(st.info("codes").dtype, "I64");
    EXPECT_TRUE(at::equal(st.get("codes"), files[i].second));
  }
  // Paths are relative to the index's folder: reading from another cwd works, and absolute paths too.
  auto here = fs::current_path();
  fs::current_path(d.path);
  EXPECT_EQ(mt::train::read_token_index("ds/index.jsonl").size(), files.size());
  fs::current_path(here);
  write_text(d.file("abs.jsonl"), "\n{\"path\": \"" + index[0].path + "\", \"file_id\": \"x\"}\n\n");
  auto abs = mt::train::read_token_index(d.file("abs.jsonl"));
  ASSERT_EQ(abs.size(), 1u);
  EXPECT_EQ(abs[0].frames, 5);
}

TEST(TokenIndex, NarrowIntegerShardsLoadAsInt64) {
  TempDir d;
  fs::create_directories(d.file("ds"));
  at::Tensor c32 = tagged_codes(0, 2, 7).to(at::kInt), c16 = (tagged_codes(0, 2, 3) + 7).to(at::kShort);
  mt::io::save(d.file("ds/a.safetensors"), Named{{"codes", c32}});
  mt::io::save(d.file("ds/b.safetensors"), Named{{"codes", c16}});
  write_text(d.file("ds/index.jsonl"),
             "{\"path\": \"a.safetensors\", \"file_id\": \"a\"}\n"
             "{\"path\": \"b.safetensors\", \"file_id\": \"b\"}\n");
  auto index = mt::train::read_token_index(d.file("ds/index.jsonl"));
  LoaderConfig cfg;
  cfg.batch_size = 2, cfg.chunk_frames = 8, cfg.shuffle = false, cfg.infinite = false;
  TokenLoader l(index, cfg);
  TokenBatch b;
  ASSERT_TRUE(l.next(b));
  EXPECT_EQ(b.codes.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(b.codes[0].narrow(1, 0, 7), c32.to(at::kLong)));
  EXPECT_TRUE(at::equal(b.codes[1].narrow(1, 0, 3), c16.to(at::kLong)));
  EXPECT_TRUE((b.codes[1].narrow(1, 3, 5) == -1).all().item<bool>());
}

TEST(TokenIndex, BadLinesNameTheLineOrShard) {
  TempDir d;
  fs::create_directories(d.file("ds"));
  mt::io::save(d.file("ds/good.safetensors"), Named{{"codes", tagged_codes(0, 3, 4)}});
  mt::io::save(d.file("ds/k2.safetensors"), Named{{"codes", tagged_codes(0, 2, 4)}});
  mt::io::save(d.file("ds/rank3.safetensors"), Named{{"codes", at::zeros({3, 4, 1}, at::kLong)}});
  mt::io::save(d.file("ds/float.safetensors"), Named{{"codes", at::zeros({3, 4}, at::kFloat)}});
  mt::io::save(d.file("ds/empty.safetensors"), Named{{"codes", at::zeros({3, 0}, at::kLong)}});
  mt::io::save(d.file("ds/other.safetensors"), Named{{"tokens", at::zeros({3, 4}, at::kLong)}});
  const std::string good = "{\"path\": \"good.safetensors\", \"file_id\": \"g\"}\n";
  const std::string index = d.file("ds/index.jsonl");
  auto check = [&](const std::string& second_line, const std::vector<std::string>& parts) {
    write_text(index, good + "\n" + second_line + "\n");  // the bad line is line 3 (line 2 is blank)
    std::vector<std::string> all = {index + ":3"};
    all.insert(all.end(), parts.begin(), parts.end());
    expect_error([&] { mt::train::read_token_index(index); }, all);
  };
  check("{\"file_id\": \"x\"}", {"missing field \"path\""});
  check("{\"path\": \"good.safetensors\"}", {"missing field \"file_id\""});
  check("{\"path\": 3, \"file_id\": \"x\"}", {"\"path\" must be a string"});
  check("{\"path\": \"good.safetensors\", \"file_id\": \"x\"", {"invalid JSON"});
  check("[1, 2]", {"expected a JSON object"});
  check("{\"path\": \"nope.safetensors\", \"file_id\": \"x\"}", {"nope.safetensors"});
  check("{\"path\": \"rank3.safetensors\", \"file_id\": \"x\"}", {"rank3.safetensors", "2-D", "[3, 4, 1]"});
  check("{\"path\": \"float.safetensors\", \"file_id\": \"x\"}", {"float.safetensors", "integer", "F32"});
  check("{\"path\": \"empty.safetensors\", \"file_id\": \"x\"}", {"empty.safetensors", "T >= 1", "[3, 0]"});
  check("{\"path\": \"other.safetensors\", \"file_id\": \"x\"}", {"other.safetensors", "no tensor \"codes\""});
  check("{\"path\": \"good.safetensors\", \"file_id\": \"g\"}", {"duplicate file_id \"g\"", "line 1"});
  check("{\"path\": \"k2.safetensors\", \"file_id\": \"x\"}", {"k2.safetensors", "K = 2", "expected 3"});
  write_text(index, "\n\n");
  expect_error([&] { mt::train::read_token_index(index); }, {index, "no files"});
  expect_error([&] { mt::train::read_token_index(d.file("missing.jsonl")); }, {"missing.jsonl", "cannot open"});
}

TEST(TokenIndex, WriterRejectsBadInput) {
  TempDir d;
  expect_error(
      [&] {
        mt::train::write_token_dataset(d.file("a"), {{"x", at::zeros({4}, at::kLong)}});
      },
      {"\"x\"", "2-D"});
  expect_error(
      [&] {
        mt::train::write_token_dataset(d.file("b"), {{"x", at::zeros({2, 4}, at::kFloat)}});
      },
      {"\"x\"", "integers"});
  expect_error(
      [&] {
        mt::train::write_token_dataset(d.file("c"),
                                       {{"x", at::zeros({2, 4}, at::kLong)}, {"x", at::zeros({2, 4}, at::kLong)}});
      },
      {"duplicate file_id \"x\""});
  expect_error(
      [&] {
        mt::train::write_token_dataset(d.file("e"),
                                       {{"x", at::zeros({2, 4}, at::kLong)}, {"y", at::zeros({3, 4}, at::kLong)}});
      },
      {"\"y\"", "K = 3"});
}

// ---- loader -----------------------------------------------------------------------------------------

// Every slot follows one file window by window from frame 0; concatenating a file's windows gives the
// file padded with -1; every file comes exactly once per (finite) epoch; reset is set exactly on the
// first window of a file.
TEST(TokenLoader, ChunksCoverEveryFrameOnceInOrder) {
  TempDir d;
  const std::vector<int64_t> lengths = {5, 17, 32, 1, 40, 9, 8, 23};
  const Named files = tagged_files(lengths);
  auto index = write_and_read(d, files);
  for (int64_t min_last : {1, 4}) {
    for (int64_t B : {1, 3}) {
      LoaderConfig cfg;
      cfg.batch_size = B, cfg.chunk_frames = 8, cfg.seed = 7, cfg.infinite = false, cfg.min_last_frames = min_last;
      TokenLoader l(index, cfg);
      std::map<std::string, std::vector<at::Tensor>> got;  // file id -> its windows in order
      std::vector<std::string> current(B);
      int64_t chunks = 0;
      TokenBatch b;
      while (l.next(b)) {
        ASSERT_EQ(b.codes.sizes().vec(), (std::vector<int64_t>{B, 3, 8}));
        for (int64_t s = 0; s < B; ++s) {
          const bool reset = b.reset[s].item<bool>();
          if (b.file_ids[s].empty()) {  // finished slot
            EXPECT_TRUE(reset);
            EXPECT_TRUE((b.codes[s] == -1).all().item<bool>());
            current[s].clear();
            continue;
          }
          ++chunks;
          auto& windows = got[b.file_ids[s]];
          EXPECT_EQ(reset, b.start_frame[s] == 0) << b.file_ids[s] << " at " << b.start_frame[s];
          if (reset) {
            EXPECT_TRUE(windows.empty()) << b.file_ids[s] << " shown twice in one epoch";
            current[s] = b.file_ids[s];
          }
          EXPECT_EQ(b.file_ids[s], current[s]) << "slot " << s << " switched files without reset";
          EXPECT_EQ(b.start_frame[s], 8 * static_cast<int64_t>(windows.size()));
          windows.push_back(b.codes[s]);
        }
      }
      EXPECT_EQ(chunks, l.chunks_per_epoch());
      for (size_t i = 0; i < files.size(); ++i) {
        const auto& [id, codes] = files[i];
        const int64_t T = lengths[i];
        const int64_t n_windows = T >= min_last ? (T - min_last) / 8 + 1 : 0;
        if (n_windows == 0) {
          EXPECT_EQ(got.count(id), 0u) << id << " is shorter than min_last_frames";
          continue;
        }
        ASSERT_EQ(static_cast<int64_t>(got[id].size()), n_windows) << id;
        at::Tensor expected = at::full({3, n_windows * 8}, -1, at::kLong);
        const int64_t real = std::min(T, n_windows * 8);
        expected.narrow(1, 0, real).copy_(codes.narrow(1, 0, real));
        EXPECT_TRUE(at::equal(at::cat(got[id], 1), expected)) << id << " B=" << B << " min_last=" << min_last;
      }
    }
  }
}

TEST(TokenLoader, SlotsTakeFilesInOrderAndResetAtEveryFileStart) {
  TempDir d;
  auto index = write_and_read(d, tagged_files({16, 8, 24, 8}));
  LoaderConfig cfg;
  cfg.batch_size = 2, cfg.chunk_frames = 8, cfg.shuffle = false, cfg.infinite = true;
  TokenLoader l(index, cfg);
  // Order f0 f1 f2 f3 f0 f1 ...; f0 = 2 windows, f1 = 1, f2 = 3, f3 = 1.
  const std::vector<std::vector<std::string>> ids = {{"f0", "f1"}, {"f0", "f2"}, {"f3", "f2"},
                                                     {"f0", "f2"}, {"f0", "f1"}, {"f2", "f3"}};
  const std::vector<std::vector<bool>> resets = {{true, true},  {false, true}, {true, false},
                                                 {true, false}, {false, true}, {true, true}};
  const std::vector<int64_t> epochs = {0, 0, 0, 1, 1, 1};
  for (size_t i = 0; i < ids.size(); ++i) {
    TokenBatch b;
    ASSERT_TRUE(l.next(b));
    EXPECT_EQ(b.file_ids, ids[i]) << "batch " << i;
    for (int s = 0; s < 2; ++s) EXPECT_EQ(b.reset[s].item<bool>(), resets[i][s]) << "batch " << i << " slot " << s;
    EXPECT_EQ(b.epoch, epochs[i]) << "batch " << i;
  }
}

TEST(TokenLoader, ShuffleIsDeterministicAndChangesPerEpoch) {
  TempDir d;
  auto index = write_and_read(d, tagged_files({3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  LoaderConfig cfg;
  cfg.chunk_frames = 16, cfg.seed = 1234;
  auto seq = file_sequence(index, cfg, 30);
  ASSERT_EQ(seq.size(), 30u);
  EXPECT_EQ(seq, file_sequence(index, cfg, 30)) << "same seed, different order";
  std::vector<std::vector<std::string>> epochs;
  for (int e = 0; e < 3; ++e) {
    epochs.emplace_back(seq.begin() + 10 * e, seq.begin() + 10 * (e + 1));
    auto sorted = epochs.back();
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<std::string>{"f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"}))
        << "epoch " << e << " is not a permutation of the files";
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  cfg.seed = 1235;
  EXPECT_NE(file_sequence(index, cfg, 30), seq) << "seed ignored";
  cfg.shuffle = false;
  auto plain = file_sequence(index, cfg, 20);
  EXPECT_EQ(plain[0], "f0");
  EXPECT_EQ(plain[9], "f9");
  EXPECT_EQ(plain[10], "f0");
}

TEST(TokenLoader, RanksSeeDisjointFilesCoveringTheDataset) {
  TempDir d;
  auto index = write_and_read(d, tagged_files({3, 4, 5, 6, 7, 8, 9}));
  for (int64_t world : {2, 3}) {
    for (int64_t epoch : {0, 1}) {
      std::set<std::string> all;
      size_t total = 0;
      for (int64_t rank = 0; rank < world; ++rank) {
        LoaderConfig cfg;
        cfg.chunk_frames = 16, cfg.seed = 3, cfg.rank = rank, cfg.world_size = world;
        const int64_t share = (7 - rank + world - 1) / world;
        auto seq = file_sequence(index, cfg, static_cast<int>(share * (epoch + 1)));
        std::vector<std::string> mine(seq.begin() + share * epoch, seq.end());
        total += mine.size();
        all.insert(mine.begin(), mine.end());
      }
      EXPECT_EQ(total, 7u) << "world " << world << " epoch " << epoch;
      EXPECT_EQ(all.size(), 7u) << "ranks overlap (world " << world << ", epoch " << epoch << ")";
    }
  }
  LoaderConfig cfg;
  cfg.rank = 7, cfg.world_size = 8;
  expect_error([&] { TokenLoader l(index, cfg); }, {"rank 7", "no files"});
}

TEST(TokenLoader, FiniteLoaderEnds) {
  TempDir d;
  auto index = write_and_read(d, tagged_files({8, 16, 40}));
  LoaderConfig cfg;
  cfg.batch_size = 2, cfg.chunk_frames = 8, cfg.shuffle = false, cfg.infinite = false;
  TokenLoader l(index, cfg);
  // slot 0: f0, then f2 (5 windows); slot 1: f1 (2 windows), then nothing.
  std::vector<TokenBatch> batches;
  TokenBatch b;
  while (l.next(b)) batches.push_back(b);
  ASSERT_EQ(batches.size(), 6u);
  EXPECT_EQ(batches[1].file_ids, (std::vector<std::string>{"f2", "f1"}));
  for (size_t i = 2; i < batches.size(); ++i) {
    EXPECT_EQ(batches[i].file_ids[1], "");
    EXPECT_TRUE(batches[i].reset[1].item<bool>());
    EXPECT_TRUE((batches[i].codes[1] == -1).all().item<bool>());
  }
  EXPECT_EQ(batches[5].file_ids[0], "f2");
  EXPECT_EQ(batches[5].start_frame[0], 32);
  EXPECT_FALSE(l.next(b));
  EXPECT_FALSE(l.next(b)) << "a finished loader stays finished";
  EXPECT_EQ(l.chunks_per_epoch(), 1 + 2 + 5);
}

TEST(TokenLoader, ResumeGivesTheSameBatches) {
  TempDir d;
  auto index = write_and_read(d, tagged_files({20, 7, 33, 16, 9, 41}));
  LoaderConfig cfg;
  cfg.batch_size = 2, cfg.chunk_frames = 8, cfg.seed = 99;
  TokenLoader ref(index, cfg);
  auto all = take(ref, 60);
  // Split points: early, mid-epoch, and right before / after the order's first epoch boundary.
  std::vector<int> splits = {0, 3, 7};
  {
    TokenLoader probe(index, cfg);
    TokenBatch b;
    for (int k = 1; k <= 40; ++k) {
      probe.next(b);
      if (probe.state().at("epoch").item<int64_t>() == 1) {
        splits.push_back(k - 1);
        splits.push_back(k);
        splits.push_back(k + 1);
        break;
      }
    }
  }
  ASSERT_EQ(splits.size(), 6u) << "the loader never reached epoch 1";
  for (int k : splits) {
    TokenLoader first(index, cfg);
    take(first, k);
    // Through a checkpoint file, as a trainer stores it.
    mt::io::save(d.file("state.safetensors"), first.state());
    auto state = mt::io::load_all(d.file("state.safetensors"));
    TokenLoader resumed(index, cfg);
    take(resumed, 5);  // a loader that has moved on restores just as well as a fresh one
    resumed.restore(state);
    expect_same_batches(take(resumed, 20), std::vector<TokenBatch>(all.begin() + k, all.begin() + k + 20));
    // The original keeps going identically too (state() does not disturb it).
    expect_same_batches(take(first, 20), std::vector<TokenBatch>(all.begin() + k, all.begin() + k + 20));
  }
}

TEST(TokenLoader, RestoreRejectsAnotherDatasetOrConfig) {
  TempDir d;
  auto index = write_and_read(d, tagged_files({20, 7, 33, 16}));
  LoaderConfig cfg;
  cfg.batch_size = 2, cfg.chunk_frames = 8, cfg.seed = 5;
  TokenLoader l(index, cfg);
  take(l, 3);
  const auto state = l.state();

  auto other_cfg = [&](auto edit, const std::vector<std::string>& parts) {
    LoaderConfig c = cfg;
    edit(c);
    TokenLoader o(index, c);
    expect_error([&] { o.restore(state); }, parts);
  };
  other_cfg([](LoaderConfig& c) { c.batch_size = 3; }, {"batch_size = 2", "batch_size = 3"});
  other_cfg([](LoaderConfig& c) { c.chunk_frames = 16; }, {"chunk_frames"});
  other_cfg([](LoaderConfig& c) { c.seed = 6; }, {"seed"});
  other_cfg([](LoaderConfig& c) { c.shuffle = false; }, {"shuffle"});
  other_cfg([](LoaderConfig& c) { c.world_size = 2; }, {"world_size"});

  auto fewer = index;
  fewer.pop_back();
  TokenLoader o1(fewer, cfg);
  expect_error([&] { o1.restore(state); }, {"dataset of 4 files", "has 3"});
  auto renamed = index;
  renamed[0].file_id = "renamed";
  TokenLoader o2(renamed, cfg);
  expect_error([&] { o2.restore(state); }, {"different dataset", "ids"});
  TempDir d2;
  auto longer = write_and_read(d2, tagged_files({20, 7, 33, 17}));
  TokenLoader o3(longer, cfg);
  expect_error([&] { o3.restore(state); }, {"different dataset", "lengths"});

  TokenLoader same(index, cfg);
  auto broken = state;
  broken.erase("slot_frame");
  expect_error([&] { same.restore(broken); }, {"slot_frame"});
  broken = state;
  broken["slot_file"] = at::tensor(std::vector<int64_t>{0, 9}, at::kLong);
  expect_error([&] { same.restore(broken); }, {"slot 1", "9"});
  // A failed restore leaves the loader as it was: it still produces the uninterrupted sequence.
  TokenLoader fresh(index, cfg);
  expect_same_batches(take(same, 5), take(fresh, 5));
  // `infinite` is not part of the fingerprint: an eval copy may resume a training position.
  LoaderConfig finite = cfg;
  finite.infinite = false;
  TokenLoader f(index, finite);
  EXPECT_NO_THROW(f.restore(state));
}

TEST(TokenLoader, RejectsBadConfig) {
  TempDir d;
  auto index = write_and_read(d, tagged_files({4, 5}));
  auto bad = [&](auto edit, const std::string& part) {
    LoaderConfig c;
    edit(c);
    expect_error([&] { TokenLoader l(index, c); }, {part});
  };
  bad([](LoaderConfig& c) { c.batch_size = 0; }, "batch_size");
  bad([](LoaderConfig& c) { c.chunk_frames = 0; }, "chunk_frames");
  bad([](LoaderConfig& c) { c.min_last_frames = 200; }, "min_last_frames");
  bad([](LoaderConfig& c) { c.rank = 2, c.world_size = 2; }, "rank");
  bad([](LoaderConfig& c) { c.chunk_frames = 8, c.min_last_frames = 8; }, "no file has at least");
  expect_error([&] { TokenLoader({}, LoaderConfig{}); }, {"no files"});
}

// ---- synthetic --------------------------------------------------------------------------------------

namespace {
mt::train::SyntheticConfig small_synthetic() {
  mt::train::SyntheticConfig c;
  c.num_files = 6;
  c.frames = 200;
  c.min_gap = 40;
  c.seed = 11;
  return c;
}
}  // namespace

TEST(Synthetic, DeterministicShapesAndRanges) {
  auto cfg = small_synthetic();
  auto a = mt::train::make_synthetic_files(cfg);
  auto b = mt::train::make_synthetic_files(cfg);
  ASSERT_EQ(a.size(), 6u);
  std::set<std::string> ids;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
    EXPECT_TRUE(ids.insert(a[i].first).second);
    const at::Tensor& c = a[i].second;
    EXPECT_EQ(c.scalar_type(), at::kLong);
    EXPECT_EQ(c.sizes().vec(), (std::vector<int64_t>{5, 200}));
    EXPECT_GE(c.min().item<int64_t>(), 0);
    EXPECT_LT(c[0].max().item<int64_t>(), cfg.text_vocab);
    EXPECT_LT(c.narrow(0, 1, 4).max().item<int64_t>(), cfg.audio_vocab);
  }
  EXPECT_FALSE(at::equal(a[0].second, a[1].second)) << "files should differ";
  // File i depends only on (seed, i): more files keep the first ones.
  auto more = cfg;
  more.num_files = 8;
  EXPECT_TRUE(at::equal(mt::train::make_synthetic_files(more)[5].second, a[5].second));
  auto other = cfg;
  other.seed = 12;
  EXPECT_FALSE(at::equal(mt::train::make_synthetic_files(other)[0].second, a[0].second));

  auto bad = cfg;
  bad.text_vocab = 4;
  expect_error([&] { mt::train::make_synthetic_files(bad); }, {"text_vocab"});
  bad = cfg;
  bad.frames = 50;
  expect_error([&] { mt::train::make_synthetic_files(bad); }, {"frames"});
}

// Every occurrence (cue m, then motif_len frames) of a motif repeats its first occurrence exactly, far
// after the previous one; the recall mask is exactly the later occurrences' motif frames.
TEST(Synthetic, LaterOccurrencesRepeatTheFirst) {
  for (auto cfg : {small_synthetic(), mt::train::SyntheticConfig{}}) {
    cfg.num_files = std::min<int64_t>(cfg.num_files, 16);
    std::vector<at::Tensor> masks;
    auto files = mt::train::make_synthetic_files(cfg, &masks);
    ASSERT_EQ(masks.size(), files.size());
    const int64_t L = cfg.motif_len, M = cfg.num_motifs;
    int64_t recall = 0, total = 0;
    std::vector<at::Tensor> first_motif0;
    for (size_t i = 0; i < files.size(); ++i) {
      const at::Tensor& c = files[i].second;
      const int64_t T = c.size(1);
      at::Tensor expected_mask = at::zeros({T}, at::kBool);
      std::vector<at::Tensor> first(M);
      std::vector<int64_t> last_end(M, -1);
      int64_t recurrences = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t m = c[0][t].item<int64_t>();
        if (m >= M) continue;  // noise or motif text: never a cue id
        ASSERT_LE(t + L, T - 1) << "occurrence cut off at the end";
        at::Tensor occ = c.narrow(1, t + 1, L);
        EXPECT_TRUE((occ[0] >= M).all().item<bool>()) << "cue id inside a motif";
        if (!first[m].defined()) {
          first[m] = occ;
        } else {
          EXPECT_TRUE(at::equal(occ, first[m])) << files[i].first << " motif " << m << " at " << t;
          EXPECT_GE(t - last_end[m] - 1, cfg.min_gap) << files[i].first << " motif " << m << " too close";
          expected_mask.narrow(0, t + 1, L).fill_(true);
          ++recurrences;
        }
        last_end[m] = t + L;
        t += L;
      }
      EXPECT_GT(recurrences, 0) << files[i].first << " has no recall positions";
      EXPECT_TRUE(at::equal(masks[i], expected_mask)) << files[i].first;
      EXPECT_TRUE(at::equal(mt::train::recall_mask(c, cfg), expected_mask)) << files[i].first;
      recall += expected_mask.sum().item<int64_t>();
      total += T;
      first_motif0.push_back(first[0]);
    }
    // A useful share of recall frames, and motifs are per file (not shared, so not memorisable).
    EXPECT_GT(static_cast<double>(recall) / total, 0.15);
    ASSERT_TRUE(first_motif0[0].defined() && first_motif0[1].defined());
    EXPECT_FALSE(at::equal(first_motif0[0], first_motif0[1]));
  }
}

TEST(Synthetic, WritesALoadableDataset) {
  TempDir d;
  auto cfg = small_synthetic();
  auto files = mt::train::make_synthetic_files(cfg);
  auto index = write_and_read(d, files);
  ASSERT_EQ(index.size(), files.size());
  LoaderConfig lc;
  lc.batch_size = 2, lc.chunk_frames = 64, lc.infinite = false;
  TokenLoader l(index, lc);
  TokenBatch b;
  int64_t n = 0;
  while (l.next(b)) ++n;
  EXPECT_EQ(n, 3 * 4);  // 3 files per slot, 4 windows (200 frames) each
  // The mask can be recovered from a file read back from disk.
  mt::io::SafeTensors st(index[0].path);
  std::vector<at::Tensor> masks;
  mt::train::make_synthetic_files(cfg, &masks);
  EXPECT_TRUE(at::equal(mt::train::recall_mask(st.get("codes"), cfg), masks[0]));
}

// Lexicon pattern: within a file, every followed transition a -> b is the file's permutation (one b per
// a, distinct a's give distinct b's); files differ; codebook 1 repeats the previous text; the recall mask
// marks exactly the frames whose predecessor was last seen as a predecessor more than min_gap frames back.
TEST(Synthetic, LexiconFollowsOnePermutationPerFile) {
  mt::train::SyntheticConfig c;
  c.pattern = "lexicon";
  c.num_files = 4;
  c.frames = 256;
  c.text_vocab = 16;
  c.follow_prob = 1.0;
  c.min_gap = 16;
  c.seed = 5;
  std::vector<at::Tensor> masks;
  auto files = mt::train::make_synthetic_files(c, &masks);
  ASSERT_EQ(files.size(), 4u);
  std::vector<std::vector<int64_t>> perms;
  for (size_t i = 0; i < files.size(); ++i) {
    const at::Tensor& x = files[i].second;
    ASSERT_EQ(x.sizes().vec(), (std::vector<int64_t>{5, 256}));
    std::vector<int64_t> next(16, -1);
    std::vector<int64_t> last(16, -1);
    for (int64_t t = 1; t < 256; ++t) {
      const int64_t a = x[0][t - 1].item<int64_t>(), b = x[0][t].item<int64_t>();
      if (next[a] < 0) next[a] = b;
      EXPECT_EQ(next[a], b) << files[i].first << " frame " << t << ": follow_prob 1 means one successor per id";
      EXPECT_EQ(x[1][t].item<int64_t>(), a) << "codebook 1 repeats the previous text";
      EXPECT_EQ(masks[i][t].item<bool>(), last[a] >= 0 && t - last[a] > c.min_gap) << files[i].first << " frame " << t;
      last[a] = t;
    }
    EXPECT_TRUE((x.narrow(0, 2, 3) == 0).all().item<bool>()) << "other codebooks are constant";
    EXPECT_TRUE(at::equal(mt::train::recall_mask(x, c), masks[i]));
    perms.push_back(next);
  }
  EXPECT_NE(perms[0], perms[1]) << "each file draws its own permutation";
  // With follow_prob < 1 some frames are fresh draws; the recall share is substantial for the demo's setup.
  c.follow_prob = 0.8;
  c.text_vocab = 32;
  auto f2 = mt::train::make_synthetic_files(c, &masks);
  double share = 0;
  for (const auto& m : masks) share += m.to(at::kDouble).mean().item<double>();
  EXPECT_GT(share / masks.size(), 0.3);
  c.pattern = "motif";
  expect_error([&] { mt::train::make_synthetic_files(c); }, {"pattern must be motifs, lexicon or repeat"});
}

// Repeat pattern (shared/spec/demo.md's task): the second half of every stream repeats the first; the
// recall mask is the second half; files differ.
TEST(Synthetic, RepeatCopiesTheFirstHalf) {
  mt::train::SyntheticConfig c;
  c.pattern = "repeat";
  c.num_files = 3;
  c.frames = 128;
  c.text_vocab = 32;
  c.audio_vocab = 32;
  std::vector<at::Tensor> masks;
  auto files = mt::train::make_synthetic_files(c, &masks);
  ASSERT_EQ(files.size(), 3u);
  for (size_t i = 0; i < files.size(); ++i) {
    const at::Tensor& x = files[i].second;
    ASSERT_EQ(x.sizes().vec(), (std::vector<int64_t>{5, 128}));
    EXPECT_TRUE(at::equal(x.narrow(1, 0, 64), x.narrow(1, 64, 64))) << files[i].first;
    EXPECT_LT(x.max().item<int64_t>(), 32);
    EXPECT_GT(std::get<0>(at::_unique(x.narrow(1, 0, 64))).size(0), 16) << "the first half is random";
    EXPECT_EQ(masks[i].sum().item<int64_t>(), 64);
    EXPECT_TRUE(masks[i].narrow(0, 64, 64).all().item<bool>());
    EXPECT_TRUE(at::equal(mt::train::recall_mask(x, c), masks[i]));
  }
  EXPECT_FALSE(at::equal(files[0].second, files[1].second));
  c.frames = 127;
  expect_error([&] { mt::train::make_synthetic_files(c); }, {"even number of frames"});
}

// The audio JSONL (moshi-finetune's {"path", "duration"}): paths resolve against its folder, and every
// bad line is named, including durations that would overflow a frame count.
TEST(AudioIndex, ReadsEntriesAndNamesBadLines) {
  TempDir d;
  auto write = [&](const std::string& text) {
    std::ofstream(d.file("a.jsonl")) << text;
    return d.file("a.jsonl");
  };
  const auto e = mt::train::read_audio_index(
      write("{\"path\": \"x.wav\", \"duration\": 2.5}\n\n{\"path\": \"/abs/y.wav\", \"duration\": 1}\n"));
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].path, (d.path / "x.wav").string());
  EXPECT_EQ(e[0].id, "x.wav");
  EXPECT_EQ(e[1].path, "/abs/y.wav");
  EXPECT_DOUBLE_EQ(e[0].duration, 2.5);
  EXPECT_TRUE(mt::train::is_audio_jsonl(d.file("a.jsonl")));
  for (const auto& [text, what] : std::vector<std::pair<std::string, std::string>>{
           {"{\"path\": \"x.wav\", \"duration\": 1e300}\n", ":1: \"duration\""},
           {"{\"path\": \"x.wav\", \"duration\": -1}\n", ":1: \"duration\""},
           {"{\"path\": \"x.wav\"}\n", ":1: \"duration\""},
           {"{\"path\": \"\", \"duration\": 1}\n", ":1: \"path\" is empty"},
           {"{\"path\": \"x.wav\", \"duration\": 1}\nnot json\n", ":2: not valid JSON"},
           {"\n", "no entries"}}) {
    const std::string p = write(text);
    mt::test::expect_error([&] { mt::train::read_audio_index(p); }, std::vector<std::string>{p, what});
  }
}
