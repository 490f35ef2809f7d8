#pragma once
// Subcommand registry: each tools/cmd_*.cpp adds its subcommand and a handler.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace mt::cli {

using Handler = std::function<int()>;

// Attaches a handler to a subcommand created by the caller.
void set_handler(CLI::App* sub, Handler h);

// One per command file.
void add_check_reference(CLI::App& app);
void add_inspect(CLI::App& app);
void add_generate(CLI::App& app);
void add_init(CLI::App& app);
void add_demo(CLI::App& app);
void add_score(CLI::App& app);
void add_train(CLI::App& app);
void add_codec(CLI::App& app);  // encode + decode
void add_eval(CLI::App& app);   // eval paired | long-context | ttt-probe | make-sets
void add_report(CLI::App& app);
void add_synth_data(CLI::App& app);   // synthetic token datasets (the demo's data)
void add_collectives(CLI::App& app);  // data-parallel collectives: checked and timed
void add_serve(CLI::App& app);        // live conversations over Kyutai's websocket protocol
void add_download(CLI::App& app);     // files of a Hugging Face hub repo into the hub cache
void add_export(CLI::App& app);       // a checkpoint for Kyutai's loader: LoRA file or merged
void add_quantize(CLI::App& app);     // Kyutai's q8 export of a float checkpoint

void register_all(CLI::App& app);
int run_selected(CLI::App& app);
std::string version_text();

}  // namespace mt::cli
