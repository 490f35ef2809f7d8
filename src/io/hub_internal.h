#pragma once
// Shared between hub.cpp (cache layout) and hub_fetch.cpp (the network side); not a public API.
#include <optional>
#include <string>

#include "io/hub.h"

namespace mt::io::hub {

// Throws mt::Error starting with `context` when the repo id, file name, revision or repo type is not
// one the hub (and a safe cache path) allows: no "..", no absolute names.
void validate(const FileRef& ref, const std::string& context);
bool is_commit(const std::string& revision);  // 40 lower-case hex digits
// Percent-encoding as Python's urllib.parse.quote (safe="/" when keep_slash, else no safe characters).
std::string quote(const std::string& s, bool keep_slash);

// The commit `revision` stands for in the repo folder: itself when a commit, else refs/<revision>, "" if unknown.
std::string read_ref(const std::string& repo_dir, const std::string& revision);
// refs/<revision> := commit, atomically; nothing when revision is that commit or the ref already says so.
void write_ref(const std::string& repo_dir, const std::string& revision, const std::string& commit);
// A .no_exist marker says the file is absent at the commit `ref.revision` stands for.
bool known_absent(const FileRef& ref, const std::string& cache_dir);

// What a file absent from the repo (404) gives: nullopt, or an mt::Error.
enum class Absent { kNullopt, kThrow };
// download() and try_download(): the cache first, then the network.
std::optional<std::string> fetch(const FileRef& ref, const Settings& s, Absent absent);

}  // namespace mt::io::hub
