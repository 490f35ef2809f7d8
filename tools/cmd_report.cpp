// moshi-ttt report RUN_DIR: plots and an index page (Markdown and HTML) from a run folder's training
// metrics and the evaluation results written into it.
#include <cstdio>

#include "report/report.h"
#include "tools/commands.h"

namespace mt::cli {

void add_report(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto* sub = app.add_subcommand("report", "plots and an index page (index.md, index.html) for a run folder");
  sub->add_option("run_dir", *dir, "run folder (of train and/or eval)")->required();
  set_handler(sub, [dir]() {
    const auto files = report::write_report(*dir);
    std::printf("wrote %zu files; open %s/report/index.html (or index.md)\n", files.size(), dir->c_str());
    return 0;
  });
}

}  // namespace mt::cli
