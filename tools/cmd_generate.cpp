#include "tools/commands.h"

namespace mt::cli {
void add_generate(CLI::App& app) { (void)app; }
}
