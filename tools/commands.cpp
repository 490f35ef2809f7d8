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
}

int run_selected(CLI::App& app) {
  for (auto* sub : app.get_subcommands()) {
    auto it = handlers().find(sub);
    if (it != handlers().end()) return it->second();
  }
  return 2;
}

std::string version_text() { return build_info(); }

}  // namespace mt::cli
