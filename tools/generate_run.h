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
  SamplingArgs sampling;
  std::string user_codes;  // safetensors with `user_codes` [B, n_q - dep_q, S]
  std::string out;         // tokens.safetensors, or Moshi's audio (.wav) in full-duplex mode
  // Full duplex: the user's audio streams frame by frame through Mimi -> LM -> Mimi decode.
  std::string user_wav;   // --user IN.wav
  std::string text_out;   // --text OUT.txt (token ids, or pieces with --tokenizer)
  std::string tokenizer;  // SentencePiece model for --text
  std::string mimi, mimi_config;
  std::string run_dir;  // metrics.jsonl + summary.json
  bool quiet = false;
  void add(CLI::App* sub);
};

int run_generate(const GenerateOpts& o);
int run_full_duplex(const GenerateOpts& o);

}  // namespace mt::cli
