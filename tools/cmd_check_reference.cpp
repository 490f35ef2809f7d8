// moshi-ttt check-reference DIR...: runs every reference case found in the folders, one line per case.
#include <cstdio>
#include <iostream>

#include "reference/check_reference.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/runtime.h"

namespace mt::cli {

void add_check_reference(CLI::App& app) {
  struct Opts {
    std::vector<std::string> dirs;
    std::string device = "cpu";
    bool verbose = false;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("check-reference",
                                 "run reference cases (lm, ttt, ...) and report pass/fail with the worst error");
  sub->add_option("dirs", o->dirs, "case folders, or folders holding cases")->required();
  sub->add_option("--device", o->device, "cpu or cuda");
  sub->add_option("--threads", o->threads, "intra-op threads (default: libtorch's)");
  sub->add_flag("-v,--verbose", o->verbose, "print every compared tensor");
  set_handler(sub, [o]() {
    set_threads(o->threads);
    parse_device(o->device);
    ref::register_builtin_kinds();
    ref::RunOptions opt{o->device, o->verbose};
    int n = 0, failed = 0, skipped = 0;
    for (const auto& root : o->dirs) {
      for (const auto& dir : ref::find_cases(root)) {
        ++n;
        ref::CaseResult r;
        try {
          r = ref::run_case(dir, opt);
        } catch (const std::exception& e) {
          r.name = dir;
          r.kind = ref::detect_kind(dir);
          ref::TensorCheck c;
          c.name = "(run)";
          c.pass = false;
          c.note = mt::error_message(e);
          r.checks.push_back(c);
        }
        if (r.skipped) {
          ++skipped;
          std::printf("SKIP  %-6s %-24s %s\n", r.kind.c_str(), r.name.c_str(), r.skip_reason.c_str());
          continue;
        }
        bool ok = r.pass();
        if (!ok) ++failed;
        const auto* w = r.worst();
        if (w) {
          std::printf("%s  %-6s %-24s worst %-28s err %.3g (%.3g of tol; atol %.1g rtol %.1g)%s%s\n",
                      ok ? "PASS" : "FAIL", r.kind.c_str(), r.name.c_str(), w->name.c_str(), w->max_abs_err,
                      w->worst_ratio, w->atol, w->rtol, w->note.empty() ? "" : "  ", w->note.c_str());
        } else {
          std::printf("FAIL  %-6s %-24s nothing was compared\n", r.kind.c_str(), r.name.c_str());
        }
        if (o->verbose || !ok) {
          for (const auto& c : r.checks)
            if (o->verbose || !c.pass)
              std::printf("      %s %-40s err %.3g ratio %.3g  [%s]%s%s\n", c.pass ? "ok  " : "FAIL", c.name.c_str(),
                          c.max_abs_err, c.worst_ratio, c.reason.c_str(), c.note.empty() ? "" : " ", c.note.c_str());
        }
        std::fflush(stdout);
      }
    }
    MT_CHECK(n > 0, "no reference cases found in the given folders");
    std::printf("%d passed, %d failed, %d skipped\n", n - failed - skipped, failed, skipped);
    return failed ? 1 : 0;
  });
}

}  // namespace mt::cli
