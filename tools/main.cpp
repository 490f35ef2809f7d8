// moshi-ttt: the command-line tool. Thin: parses arguments and calls the library.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include "tools/commands.h"
#include "util/error.h"
#include "util/runtime.h"

int main(int argc, char** argv) {
  mt::keep_freed_memory();
  CLI::App app{"moshi-ttt: train, evaluate and run Moshi speech-text LMs with test-time-training layers"};
  app.require_subcommand(0, 1);
  bool version = false;
  app.add_flag("--version", version, "print version, libtorch, BLAS and threads, then exit");
  mt::cli::register_all(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (version) {
      std::cout << mt::cli::version_text();
      return 0;
    }
    if (app.get_subcommands().empty()) {
      std::cout << app.help();
      return 0;
    }
    return mt::cli::run_selected(app);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    // A data-parallel rank names itself (its siblings print too).
    const char* rank = std::getenv("RANK");
    const char* world = std::getenv("WORLD_SIZE");
    const std::string who = rank && world && std::string(world) != "1" ? std::string(" (rank ") + rank + ")" : "";
    // One line of printable text whatever the input held (a binary file's bytes can end up in a parser's message).
    std::string msg;
    for (unsigned char ch : mt::error_message(e)) {
      if (ch == '\n' || ch == '\r' || ch == '\t')
        msg += ' ';
      else if (ch < 0x20 || ch == 0x7f) {
        char b[8];
        std::snprintf(b, sizeof b, "\\x%02x", ch);
        msg += b;
      } else
        msg += static_cast<char>(ch);
    }
    std::cerr << "moshi-ttt" << who << ": error: " << msg << "\n";
    return 1;
  }
}
