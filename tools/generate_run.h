#pragma once
// The streaming-generation run shared by `generate` and `demo`.
#include <CLI/CLI.hpp>

#include <string>

#include "tools/model_args.h"

namespace mt::cli {

struct GenerateOpts {
  ModelArgs model;
  int64_t steps = 100;
  int64_t batch = 1;
  bool greedy = false;
  double temp = 0.8, temp_text = 0.7;
  int64_t top_k = 250, top_k_text = 25;
  uint64_t seed = 42;
  std::string user_codes;  // safetensors with `user_codes` [B, n_q - dep_q, S]
  std::string out;         // tokens.safetensors
  std::string run_dir;     // metrics.jsonl + summary.json
  bool quiet = false;
  void add(CLI::App* sub);
};

int run_generate(const GenerateOpts& o);

}  // namespace mt::cli
