#pragma once
// Writing a file so that readers see the old content or the new, never half of it: a temporary file in
// the same folder (named with pid and a counter, so concurrent writers never share one), fsync, rename,
// fsync of the folder. Free of libtorch so any module can use it.
#include <string>

namespace mt {

// Throws mt::Error naming the path; the temporary file is removed on failure.
void atomic_write(const std::string& path, const std::string& bytes);

}  // namespace mt
