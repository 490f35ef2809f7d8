#include "tools/commands.h"

namespace mt::cli {
void add_init(CLI::App& app) { (void)app; }
}
