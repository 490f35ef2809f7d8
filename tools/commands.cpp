#include "tools/commands.h"

#include <map>

#include "util/runtime.h"

namespace mt::cli {

namespace {
std::map<const CLI::App*, Handler>& handlers() {
  static std::map<const CLI::App*, Handler> h;
  return h;
}
}  // namespace

void set_handler(CLI::App* sub, Handler h) { handlers()[sub] = std::move(h); }

void register_all(CLI::App& app) {
  add_check_reference(app);
  add_inspect(app);
  add_generate(app);
  add_init(app);
  add_demo(app);
  add_score(app);
  add_train(app);
  add_codec(app);
  add_eval(app);
  add_report(app);
  add_synth_data(app);
  add_collectives(app);
  add_serve(app);
  add_download(app);
  add_export(app);
  add_quantize(app);
}

namespace {
// The deepest selected subcommand that has a handler (e.g. `eval paired`).
const Handler* find_selected(CLI::App& app) {
  for (auto* sub : app.get_subcommands()) {
    if (const Handler* h = find_selected(*sub)) return h;
    auto it = handlers().find(sub);
    if (it != handlers().end()) return &it->second;
  }
  return nullptr;
}
}  // namespace

int run_selected(CLI::App& app) {
  const Handler* h = find_selected(app);
  return h ? (*h)() : 2;
}

std::string version_text() { return build_info(); }

}  // namespace mt::cli
