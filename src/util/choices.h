#pragma once
// A setting chosen by name in a config file and used as an enum: the names beside their values, parsed
// once where the config is read, with one error wording for every such setting.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "util/error.h"

namespace mt::util {

template <class E>
struct Choices {
  std::vector<std::pair<const char*, E>> names;

  const char* name(E e) const {
    for (const auto& [n, v] : names)
      if (v == e) return n;
    return "?";
  }
  // Throws mt::Error "<what>: '<text>' (expected a, b or c)".
  E parse(std::string_view text, const std::string& what) const {
    std::string expected;
    for (size_t i = 0; i < names.size(); ++i) {
      if (text == names[i].first) return names[i].second;
      expected += std::string(i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i].first;
    }
    fail(what, ": '", text, "' (expected ", expected, ")");
  }
};

}  // namespace mt::util
