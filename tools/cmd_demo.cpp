// moshi-ttt demo: the built-in default job. For now a short streaming generation with a tiny random
// model (the training demo replaces it once training lands).
#include "tools/commands.h"
#include "tools/generate_run.h"

namespace mt::cli {

void add_demo(CLI::App& app) {
  auto o = std::make_shared<GenerateOpts>();
  o->steps = 125;
  o->run_dir = "runs/demo";
  o->out = "runs/demo/tokens.safetensors";
  auto* sub = app.add_subcommand("demo", "built-in default: stream 10 s with a tiny random Moshi and report latency");
  o->model.add(sub);
  o->add(sub);
  set_handler(sub, [o]() { return run_generate(*o); });
}

}  // namespace mt::cli
