#pragma once
// A small blocking HTTP/1.1 client over Boost.Beast for the hub downloads: HTTP and HTTPS (system CA
// store, peer and host name verified, SNI), a deadline on every network step, one request per
// connection, bodies streamed in pieces (model files are many GB).
#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "util/error.h"

namespace mt::io::http {

// Transport failures (unreachable host, refused, reset, timed out, dropped mid-body): the caller may
// retry or resume. HTTP statuses are answers, not NetErrors.
struct NetError : Error {
  using Error::Error;
};

enum class Scheme { kHttp, kHttps };

struct Url {
  Scheme scheme = Scheme::kHttp;
  std::string host;    // without brackets for IPv6 literals
  std::string port;    // always set: the scheme's default when the URL has none
  std::string target;  // path and query, starting with '/'
  // scheme://host:port, the unit the Python hub client compares to decide whether a redirect leaves the hub.
  std::string origin() const;
  std::string str() const;
};

// Throws mt::Error naming the text when it is not an absolute http(s) URL.
Url parse_url(const std::string& text);
// A redirect's Location (absolute, scheme-relative, absolute-path or relative) against the URL it answered.
Url join_url(const Url& base, const std::string& location);

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  // The header's value, "" when absent (name in lower case).
  std::string header(const std::string& name) const;
};

// One request on one fresh connection. HEAD: the headers only. GET: the headers, then the body through
// read_body() until it returns 0.
class Request {
 public:
  // Connects (and shakes hands) within timeout_s; `io_timeout_s` bounds every later read or write.
  Request(const Url& url, double timeout_s, double io_timeout_s);
  ~Request();
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  Response head(const Headers& headers);
  Response get(const Headers& headers);
  // Up to n body bytes into buf; 0 at the end of the body. Throws NetError when the connection drops
  // before the body's announced end or stays silent longer than io_timeout_s.
  size_t read_body(char* buf, size_t n);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mt::io::http
