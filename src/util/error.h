#pragma once
// Errors carry their context (file, tensor, expected vs got); the CLI prints what() and exits non-zero.
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mt {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void cat(std::ostringstream&) {}
template <class T, class... R>
void cat(std::ostringstream& os, const T& v, const R&... r) {
  os << v;
  cat(os, r...);
}
}  // namespace detail

template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  detail::cat(os, a...);
  return os.str();
}

template <class... A>
[[noreturn]] void fail(const A&... a) {
  throw Error(::mt::str(a...));  // qualified: a c10 argument would bring c10::str in by ADL
}

template <class T>
std::string shape_str(const std::vector<T>& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

// The message of any exception, without libtorch's C++ backtrace.
std::string error_message(const std::exception& e);

}  // namespace mt

#define MT_CHECK(cond, ...)               \
  do {                                    \
    if (!(cond)) ::mt::fail(__VA_ARGS__); \
  } while (0)
