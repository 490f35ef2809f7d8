// The bad-input table (docs/bad-inputs.md), one test per row: every malformed input gives one line
// "moshi-ttt: error: ..." naming the file and the problem, a non-zero exit, and no partial output.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/data.h"

namespace fs = std::filesystem;
using mt::test::cli;
using mt::test::run;
using mt::test::slurp;
using mt::test::TempDir;

namespace {

struct Row {
  const char* name;
  const char* command;              // {D} = the fixture folder, {MIMI} = codec options, {TINY} = tiny model
  std::vector<const char*> expect;  // parts of the message
  const char* no_output = nullptr;  // a path (under {D}) that must not exist afterwards
};

void write(const std::string& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f << bytes;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a raw header and data bytes.
void raw_st(const std::string& p, const std::string& header, const std::string& data) {
  write(p, le64(header.size()) + header + data);
}

// Every fixture, made once per test in its own folder.
void make_fixtures(const TempDir& d) {
  const std::string D = d.path.string();
  write(D + "/empty.safetensors", "");
  write(D + "/text.safetensors", "hello, this is not a checkpoint\n");
  raw_st(D + "/huge_header.safetensors", "", "");
  write(D + "/huge_header.safetensors", le64(uint64_t(1) << 62) + "{}");
  raw_st(D + "/bad_offsets.safetensors", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
         std::string(8, '\0'));
  raw_st(D + "/cut_data.safetensors", R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})",
         std::string(8, '\0'));
  raw_st(D + "/huge_shape.safetensors", R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})",
         std::string(8, '\0'));
  // Tiny-model weights with one NaN.
  {
    std::string out;
    run(cli() + " init " + D + "/tinymodel --preset tiny --seed 1", &out);
    auto t = mt::io::load_all(D + "/tinymodel/model.safetensors");
    t.begin()->second.view(-1)[0] = NAN;
    mt::io::save(D + "/nan_weights.safetensors", t);
  }
  // Codes files.
  mt::io::save(D + "/float_codes.safetensors",
               std::vector<std::pair<std::string, at::Tensor>>{{"codes", at::zeros({1, 8, 4})}});
  mt::io::save(D + "/big_codes.safetensors",
               std::vector<std::pair<std::string, at::Tensor>>{{"codes", at::full({1, 8, 4}, 99999, at::kLong)}});
  mt::io::save(D + "/rank1_codes.safetensors",
               std::vector<std::pair<std::string, at::Tensor>>{{"codes", at::zeros({4}, at::kLong)}});
  mt::io::save(D + "/no_codes.safetensors",
               std::vector<std::pair<std::string, at::Tensor>>{{"tokens", at::zeros({4}, at::kLong)}});
  // Configs.
  write(D + "/empty.yaml", "");
  static const char kElf[] =
      "\x7f"
      "ELF\x02\x01\x01\0\0\0 \"\\q\x01\x02";  // read one byte too many before (ASan)
  write(D + "/binary.yaml", std::string(kElf, sizeof kElf - 1));
  write(D + "/wrong_type.yaml", "preset: tiny\nttt:\n  enable: maybe\n");
  const std::string tiny = slurp(std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml");
  write(D + "/nan_lr.yaml",
        tiny + "run_dir: " + D + "/run_nan\ndata:\n  train_data: " + D + "/empty.jsonl\noptim:\n  lr: .nan\n");
  // Dataset indexes.
  write(D + "/empty.jsonl", "");
  write(D + "/notjson.jsonl", "this is not json\n");
  write(D + "/missing_shard.jsonl", R"({"path": "nope.safetensors", "file_id": "a"})"
                                    "\n");
  mt::io::save(D + "/bad_shard.safetensors",
               std::vector<std::pair<std::string, at::Tensor>>{{"codes", at::full({5, 40}, 777, at::kLong)}});
  write(D + "/bad_shard.jsonl", R"({"path": "bad_shard.safetensors", "file_id": "a"})"
                                "\n");
  for (const char* idx : {"empty", "notjson", "missing_shard", "bad_shard"})
    write(D + "/train_" + idx + ".yaml", tiny + "run_dir: " + D + "/run_" + idx + "\ndata:\n  train_data: " + D + "/" +
                                             idx + ".jsonl\nduration_sec: 1.6\nbatch_size: 1\nmax_steps: 2\n");
  write(D + "/train_resume.yaml",
        tiny + "run_dir: " + D + "/run_resume\ndata:\n  train_data: " + D + "/bad_shard.jsonl\n");
  // Audio.
  write(D + "/empty.wav", "");
  write(D + "/text.wav", "RIFF? no, just text\n");
  {
    // A valid 16-bit wav of 0.5 s, then cut to 300 bytes.
    const int n = 8000;
    std::string data(n * 2, '\0');
    std::string h = "RIFF" + le64(36 + n * 2).substr(0, 4) + "WAVEfmt " + le64(16).substr(0, 4) +
                    std::string("\x01\x00\x01\x00", 4) + le64(16000).substr(0, 4) + le64(32000).substr(0, 4) +
                    std::string("\x02\x00\x10\x00", 4) + "data" + le64(n * 2).substr(0, 4);
    write(D + "/cut.wav", (h + data).substr(0, 300));
  }
}

class BadInput : public ::testing::TestWithParam<Row> {};

TEST_P(BadInput, OneClearLineNonZeroExitNoPartialOutput) {
  static const std::string mimi_dir = mt::test::reference_dir() + "/mimi/mimi_small";
  TempDir d;
  make_fixtures(d);
  const Row& r = GetParam();
  std::string cmd = r.command;
  auto subst = [&](const std::string& key, const std::string& val) {
    for (size_t at; (at = cmd.find(key)) != std::string::npos;) cmd.replace(at, key.size(), val);
  };
  subst("{MIMI}", "--mimi " + mimi_dir + "/model.safetensors --mimi-config " + mimi_dir + "/config.json");
  subst("{TINY}", "--config " + std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml");
  subst("{D}", d.path.string());
  std::string out;
  const int rc = run(cli() + " " + cmd, &out);
  EXPECT_NE(rc, 0) << cmd << "\n" << out;
  // One line, from the CLI's error handler, naming what went wrong.
  std::string last = out;
  while (!last.empty() && last.back() == '\n') last.pop_back();
  const std::string line = last.substr(last.rfind('\n') == std::string::npos ? 0 : last.rfind('\n') + 1);
  EXPECT_EQ(line.rfind("moshi-ttt: error: ", 0), 0u) << out;
  for (const char* e : r.expect) EXPECT_NE(line.find(e), std::string::npos) << "'" << e << "' not in: " << line;
  for (unsigned char ch : line) EXPECT_TRUE(ch >= 0x20 && ch != 0x7f) << "unprintable byte in: " << line;
  if (r.no_output) {
    std::string p = r.no_output;
    for (size_t at; (at = p.find("{D}")) != std::string::npos;) p.replace(at, 3, d.path.string());
    EXPECT_FALSE(fs::exists(p)) << p << " was left behind";
  }
}

const Row kRows[] = {
    // Checkpoints.
    {"checkpoint_missing", "inspect {D}/nope.safetensors", {"nope.safetensors", "cannot open"}},
    {"checkpoint_empty", "inspect {D}/empty.safetensors", {"empty.safetensors", "0 bytes"}},
    {"checkpoint_wrong_type", "inspect {D}/text.safetensors", {"text.safetensors", "header length"}},
    {"checkpoint_truncated", "inspect {D}/cut_data.safetensors", {"cut_data.safetensors"}},
    {"checkpoint_huge_header", "inspect {D}/huge_header.safetensors", {"huge_header.safetensors", "exceeds"}},
    {"checkpoint_bad_offsets",
     "inspect {D}/bad_offsets.safetensors",
     {"bad_offsets.safetensors", "'a'", "data_offsets"}},
    {"checkpoint_huge_shape", "inspect {D}/huge_shape.safetensors", {"huge_shape.safetensors", "'a'"}},
    {"checkpoint_nan",
     "score --config {D}/tinymodel/config.json --weights {D}/nan_weights.safetensors --codes {D}/big_codes.safetensors",
     {"nan_weights.safetensors", "non-finite"}},
    // Configs.
    {"config_missing", "score --config {D}/nope.yaml --codes {D}/big_codes.safetensors", {"nope.yaml"}},
    {"config_empty", "score --config {D}/empty.yaml --codes {D}/big_codes.safetensors", {"empty.yaml", "mapping"}},
    {"config_binary", "score --config {D}/binary.yaml --codes {D}/big_codes.safetensors", {"binary.yaml", "YAML"}},
    {"config_wrong_type",
     "score --config {D}/wrong_type.yaml --codes {D}/big_codes.safetensors",
     {"wrong_type.yaml", "ttt.enable"}},
    {"config_nan", "train --config {D}/nan_lr.yaml", {"nan_lr.yaml", "optim.lr"}, "{D}/run_nan"},
    // Dataset indexes.
    {"index_empty", "train --config {D}/train_empty.yaml", {"empty.jsonl", "no files"}, "{D}/run_empty"},
    {"index_not_json", "train --config {D}/train_notjson.yaml", {"notjson.jsonl:1", "JSON"}, "{D}/run_notjson"},
    {"index_missing_shard",
     "train --config {D}/train_missing_shard.yaml",
     {"missing_shard.jsonl:1", "nope.safetensors"},
     "{D}/run_missing_shard"},
    {"index_bad_shard",
     "train --config {D}/train_bad_shard.yaml",
     {"bad_shard.jsonl", "file 'a'", "ids outside"},
     "{D}/run_bad_shard"},
    // Audio.
    {"audio_missing", "encode {D}/nope.wav {D}/o1.safetensors {MIMI}", {"nope.wav"}, "{D}/o1.safetensors"},
    {"audio_empty", "encode {D}/empty.wav {D}/o2.safetensors {MIMI}", {"empty.wav"}, "{D}/o2.safetensors"},
    {"audio_wrong_type",
     "encode {D}/text.wav {D}/o3.safetensors {MIMI}",
     {"text.wav", "cannot read audio"},
     "{D}/o3.safetensors"},
    {"audio_truncated", "encode {D}/cut.wav {D}/o4.safetensors {MIMI}", {"cut.wav", "truncated"}, "{D}/o4.safetensors"},
    // Codes.
    {"codes_missing", "decode {D}/nope.safetensors {D}/o5.wav {MIMI}", {"nope.safetensors"}, "{D}/o5.wav"},
    {"codes_wrong_dtype",
     "decode {D}/float_codes.safetensors {D}/o6.wav {MIMI}",
     {"float_codes.safetensors", "integers"},
     "{D}/o6.wav"},
    {"codes_out_of_range",
     "decode {D}/big_codes.safetensors {D}/o7.wav {MIMI}",
     {"big_codes.safetensors", "outside"},
     "{D}/o7.wav"},
    {"codes_wrong_rank",
     "decode {D}/rank1_codes.safetensors {D}/o8.wav {MIMI}",
     {"rank1_codes.safetensors"},
     "{D}/o8.wav"},
    {"codes_no_tensor",
     "score {TINY} --codes {D}/no_codes.safetensors --out {D}/o9.safetensors",
     {"no_codes.safetensors", "codes"},
     "{D}/o9.safetensors"},
    {"codes_out_of_range_score",
     "score {TINY} --codes {D}/big_codes.safetensors --out {D}/o10.safetensors",
     {"big_codes.safetensors"},
     "{D}/o10.safetensors"},
    // Run folders.
    {"run_folder_missing", "report {D}/no_such_run", {"no_such_run", "not a folder"}},
    {"run_folder_no_checkpoint", "train --config {D}/train_resume.yaml --resume", {"run_resume", "no checkpoint"}},
};

INSTANTIATE_TEST_SUITE_P(Table, BadInput, ::testing::ValuesIn(kRows),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
