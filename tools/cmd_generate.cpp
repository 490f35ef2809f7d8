// moshi-ttt generate: streaming generation with LMGen (user codes in, text + audio tokens out).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_gen.h"
#include "tools/commands.h"
#include "tools/generate_run.h"
#include "tools/model_args.h"
#include "util/error.h"

namespace mt::cli {

void add_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOpts>();
  auto* sub =
      app.add_subcommand("generate", "stream an LM: feed user codes step by step, print/save what it generates");
  o->model.add(sub);
  o->add(sub);
  set_handler(sub, [o]() { return run_generate(*o); });
}

}  // namespace mt::cli
