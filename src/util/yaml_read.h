#pragma once
// Strict YAML field reading for configs: every key read is recorded, a value of the wrong type is an
// error naming where + key, and reject_unknown() names any key nobody read (a mistyped field).
#include <yaml-cpp/yaml.h>

#include <set>
#include <sstream>
#include <string>

#include "util/error.h"

namespace mt::yaml {

// Reads n[key] into out when present (null or absent: out unchanged). `prefix` is prepended to the key
// in messages ("ttt." or "train.yaml: optim.").
template <class T>
void read(const YAML::Node& n, const std::string& prefix, const char* key, T& out, std::set<std::string>& seen) {
  seen.insert(key);
  if (!n[key] || n[key].IsNull()) return;
  try {
    out = n[key].as<T>();
  } catch (const std::exception&) {
    std::ostringstream os;
    os << n[key];
    fail(prefix, key, ": cannot read '", os.str(), "' as the expected type");
  }
}

// Runs fn, which reads a parsed document of `path`: every error leaves as an mt::Error that starts
// with the path (field errors name the field, a bad conversion deep in yaml-cpp its line and column).
template <class F>
auto with_file_context(const std::string& path, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& e) {
    const std::string m = e.what();
    if (m.rfind(path, 0) == 0) throw;
    fail(path, ": ", m);
  } catch (const std::exception& e) {
    fail(path, ": ", e.what());
  }
}

// A map key as text (a non-scalar key is an error naming where it is).
inline std::string key_text(const YAML::Node& k, const std::string& prefix) {
  MT_CHECK(k.IsScalar(), prefix, "a key that is not a plain name (", k.Mark().line + 1, ":", k.Mark().column + 1, ")");
  return k.Scalar();
}

inline void reject_unknown(const YAML::Node& n, const std::set<std::string>& seen, const std::string& prefix) {
  for (auto it = n.begin(); it != n.end(); ++it) {
    const std::string k = key_text(it->first, prefix);
    MT_CHECK(seen.count(k), prefix, k, ": unknown field");
  }
}

}  // namespace mt::yaml
