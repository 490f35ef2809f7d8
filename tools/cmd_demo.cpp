#include "tools/commands.h"

namespace mt::cli {
void add_demo(CLI::App& app) { (void)app; }
}
