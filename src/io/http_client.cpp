#include "io/http_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>

namespace mt::io::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const char* default_port(Scheme s) { return s == Scheme::kHttps ? "443" : "80"; }

// host[:port] as a Host header or URL writes it (brackets around IPv6 literals, default port left out).
std::string authority(const Url& u, bool with_default_port) {
  std::string h = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
  if (with_default_port || u.port != default_port(u.scheme)) h += ":" + u.port;
  return h;
}

std::string scheme_text(Scheme s) { return s == Scheme::kHttps ? "https://" : "http://"; }

}  // namespace

std::string Url::origin() const { return scheme_text(scheme) + authority(*this, true); }
std::string Url::str() const { return scheme_text(scheme) + authority(*this, false) + target; }

Url parse_url(const std::string& text) {
  Url u;
  const std::string low = lower(text.substr(0, 8));
  size_t at = 0;
  if (low.rfind("http://", 0) == 0) {
    at = 7;
  } else if (low.rfind("https://", 0) == 0) {
    u.scheme = Scheme::kHttps;
    at = 8;
  } else {
    fail("URL '", text, "': expected http:// or https://");
  }
  const size_t end = text.find_first_of("/?#", at);
  std::string auth = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
  MT_CHECK(auth.find('@') == std::string::npos, "URL '", text, "': credentials in URLs are not supported");
  u.target = end == std::string::npos ? "/" : text.substr(end);
  if (u.target[0] != '/') u.target = "/" + u.target;
  if (const size_t hash = u.target.find('#'); hash != std::string::npos) u.target.resize(hash);
  size_t colon = std::string::npos;
  if (!auth.empty() && auth[0] == '[') {
    const size_t close = auth.find(']');
    MT_CHECK(close != std::string::npos, "URL '", text, "': unterminated IPv6 address");
    u.host = auth.substr(1, close - 1);
    if (close + 1 < auth.size() && auth[close + 1] == ':') colon = close + 1;
  } else {
    colon = auth.find(':');
    u.host = auth.substr(0, colon);
  }
  u.port = colon == std::string::npos ? "" : auth.substr(colon + 1);
  if (u.port.empty()) u.port = default_port(u.scheme);
  MT_CHECK(!u.host.empty(), "URL '", text, "': no host");
  MT_CHECK(std::all_of(u.port.begin(), u.port.end(), [](char c) { return std::isdigit((unsigned char)c); }), "URL '",
           text, "': bad port");
  return u;
}

Url join_url(const Url& base, const std::string& location) {
  MT_CHECK(!location.empty(), "empty redirect Location from ", base.str());
  if (location.find("://") != std::string::npos) return parse_url(location);
  if (location.rfind("//", 0) == 0) return parse_url(scheme_text(base.scheme) + location.substr(2));
  Url u = base;
  if (location[0] == '/') {
    u.target = location;
  } else {  // relative to the base's folder
    const std::string path = base.target.substr(0, base.target.find('?'));
    u.target = path.substr(0, path.rfind('/') + 1) + location;
  }
  return u;
}

std::string Response::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

struct Request::Impl {
  Url url;
  double io_timeout_s = 10;
  net::io_context ioc;
  ssl::context tls_ctx{ssl::context::tls_client};
  std::unique_ptr<beast::tcp_stream> tcp_stream;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls_stream;
  beast::flat_buffer buffer;
  std::optional<bhttp::response_parser<bhttp::buffer_body>> parser;
  beast::error_code pending;  // a drop after some body bytes, reported by the next read

  beast::tcp_stream& lowest() { return tls_stream ? beast::get_lowest_layer(*tls_stream) : *tcp_stream; }

  template <class F>
  void with_stream(F&& f) {
    if (tls_stream)
      f(*tls_stream);
    else
      f(*tcp_stream);
  }

  // Runs one asynchronous step to its end under a deadline (Beast's timeouts apply to asynchronous
  // operations only); the error it ended with, beast::error::timeout when the deadline passed.
  template <class Start>
  beast::error_code run(double timeout_s, Start&& start) {
    beast::error_code result;
    lowest().expires_after(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_s)));
    start([&result](beast::error_code ec, auto&&...) { result = ec; });
    ioc.restart();
    ioc.run();
    return result;
  }

  [[noreturn]] void net_fail(const std::string& what, const beast::error_code& ec) {
    throw NetError(str(url.origin(), ": ", what, ": ", ec == beast::error::timeout ? "timed out" : ec.message()));
  }

  void connect(double timeout_s);
  void send(bhttp::verb verb, const Headers& headers);
};

void Request::Impl::connect(double timeout_s) {
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  const auto endpoints = resolver.resolve(url.host, url.port, ec);
  if (ec) net_fail("cannot resolve " + url.host, ec);
  if (url.scheme == Scheme::kHttps) {
    // The system's CA store (SSL_CERT_FILE / SSL_CERT_DIR override it, as OpenSSL reads them).
    tls_ctx.set_default_verify_paths();
    tls_ctx.set_verify_mode(ssl::verify_peer);
    tls_stream = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(ioc, tls_ctx);
    tls_stream->set_verify_callback(ssl::host_name_verification(url.host));
    // SNI: CDNs serve several names from one address and pick the certificate by it.
    if (!SSL_set_tlsext_host_name(tls_stream->native_handle(), url.host.c_str()))
      fail(url.origin(), ": cannot set the TLS server name");
  } else {
    tcp_stream = std::make_unique<beast::tcp_stream>(ioc);
  }
  ec = run(timeout_s, [&](auto h) { lowest().async_connect(endpoints, h); });
  if (ec) net_fail("cannot connect", ec);
  if (tls_stream) {
    ec = run(timeout_s, [&](auto h) { tls_stream->async_handshake(ssl::stream_base::client, h); });
    if (ec) net_fail("TLS handshake failed", ec);
  }
}

void Request::Impl::send(bhttp::verb verb, const Headers& headers) {
  bhttp::request<bhttp::empty_body> req{verb, url.target, 11};
  req.set(bhttp::field::host, authority(url, false));
  req.set(bhttp::field::connection, "close");
  for (const auto& [k, v] : headers) req.set(k, v);
  const auto ec = run(io_timeout_s, [&](auto h) { with_stream([&](auto& s) { bhttp::async_write(s, req, h); }); });
  if (ec) net_fail("cannot send the request", ec);
}

namespace {
template <class Message>
Response response_of(const Message& m) {
  Response r;
  r.status = static_cast<int>(m.result_int());
  for (const auto& f : m) r.headers[lower(std::string(f.name_string()))] = std::string(f.value());
  return r;
}
}  // namespace

Request::Request(const Url& url, double timeout_s, double io_timeout_s) : impl_(std::make_unique<Impl>()) {
  impl_->url = url;
  impl_->io_timeout_s = io_timeout_s;
  impl_->connect(timeout_s);
}

Request::~Request() {
  beast::error_code ec;
  impl_->lowest().socket().close(ec);  // no TLS close_notify: the peer learns from the closed socket
}

Response Request::head(const Headers& headers) {
  impl_->send(bhttp::verb::head, headers);
  bhttp::response_parser<bhttp::empty_body> p;
  p.skip(true);  // a HEAD answer announces a body it does not send
  const auto ec = impl_->run(impl_->io_timeout_s, [&](auto h) {
    impl_->with_stream([&](auto& s) { bhttp::async_read_header(s, impl_->buffer, p, h); });
  });
  if (ec) impl_->net_fail("no answer to HEAD " + impl_->url.target, ec);
  return response_of(p.get());
}

Response Request::get(const Headers& headers) {
  impl_->send(bhttp::verb::get, headers);
  auto& p = impl_->parser.emplace();
  // Model files are many GB. (Not boost::none: Boost 1.74 compares the length against an empty
  // optional as greater and reports every body as over the limit.)
  p.body_limit(std::numeric_limits<std::uint64_t>::max());
  const auto ec = impl_->run(impl_->io_timeout_s, [&](auto h) {
    impl_->with_stream([&](auto& s) { bhttp::async_read_header(s, impl_->buffer, p, h); });
  });
  if (ec) impl_->net_fail("no answer to GET " + impl_->url.target, ec);
  return response_of(p.get());
}

size_t Request::read_body(char* buf, size_t n) {
  MT_CHECK(impl_->parser, "read_body before get");
  auto& p = *impl_->parser;
  if (impl_->pending) impl_->net_fail("connection lost during the body", impl_->pending);
  if (p.is_done()) return 0;
  p.get().body().data = buf;
  p.get().body().size = n;
  auto ec = impl_->run(impl_->io_timeout_s, [&](auto h) {
    impl_->with_stream([&](auto& s) { bhttp::async_read(s, impl_->buffer, p, h); });
  });
  if (ec == bhttp::error::need_buffer) ec = {};  // our buffer is full: not an error
  const size_t got = n - p.get().body().size;
  // The bytes that came before a drop are good: the caller keeps them and resumes after them.
  if (ec && got > 0) impl_->pending = ec;
  if (ec && got == 0) impl_->net_fail("connection lost during the body", ec);
  return got;
}

}  // namespace mt::io::http
