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

inline void reject_unknown(const YAML::Node& n, const std::set<std::string>& seen, const std::string& prefix) {
  for (auto it = n.begin(); it != n.end(); ++it) {
    const std::string k = it->first.as<std::string>();
    MT_CHECK(seen.count(k), prefix, k, ": unknown field");
  }
}

}  // namespace mt::yaml
