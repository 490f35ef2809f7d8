#include "tools/commands.h"

namespace mt::cli {
void add_inspect(CLI::App& app) { (void)app; }
}
