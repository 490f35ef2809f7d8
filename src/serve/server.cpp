#include "serve/server.h"

#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include <atomic>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "audio/opus_stream.h"
#include "serve/protocol.h"
#include "util/error.h"

namespace mt::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
namespace fs = std::filesystem;

namespace {

// What every connection shares. Replies come from the engine's thread and are posted to their
// connection's strand; `alive` (under `mu`) stops that once the io_context is going away.
struct Shared {
  Shared(Engine& e, const text::Tokenizer* t, ServerConfig c) : engine(e), tokenizer(t), cfg(std::move(c)) {}
  Engine& engine;
  const text::Tokenizer* tokenizer;
  ServerConfig cfg;
  std::mutex mu;
  bool alive = true;
  std::mt19937_64 seeds{std::random_device{}()};
  std::atomic<int64_t> connections{0};
  void log(const std::string& line) {
    if (cfg.quiet) return;
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  uint64_t fresh_seed() {
    std::lock_guard<std::mutex> lock(mu);
    return seeds() % 1000000;  // the web client's seeds are in this range too
  }
};

std::string query_of(const std::string& target) {
  const size_t q = target.find('?');
  return q == std::string::npos ? "" : target.substr(q + 1);
}
std::string path_of(const std::string& target) { return target.substr(0, target.find('?')); }

// ---------------------------------------------------------------------------------------------
// One conversation over a websocket.

template <class Stream>
class Chat : public std::enable_shared_from_this<Chat<Stream>> {
 public:
  Chat(Stream&& s, std::shared_ptr<Shared> sh, std::string peer)
      : ws_(std::move(s)),
        sh_(std::move(sh)),
        peer_(std::move(peer)),
        pieces_(sh_->engine.lm_config(), sh_->tokenizer) {}
  ~Chat() { end("disconnected"); }

  void start(http::request<http::string_body> req) {
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(http::field::server, "moshi-ttt"); }));
    ws_.read_message_max(sh_->cfg.max_message_bytes);
    // A small kernel send buffer: replies a client does not read then wait in our queue, where they
    // are counted, rather than in megabytes of socket buffer (minutes of audio) where nobody sees them.
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().set_option(net::socket_base::send_buffer_size(16 * 1024), ignored);
    std::string target(req.target());
    ws_.async_accept(req, beast::bind_front_handler(&Chat::on_accept, this->shared_from_this(), target));
  }

 private:
  void on_accept(const std::string& target, beast::error_code ec) {
    if (ec) return;
    ws_.binary(true);
    lm::SamplingConfig s;
    try {
      s = session_sampling(parse_query(query_of(target)), sh_->cfg.sampling, sh_->fresh_seed());
    } catch (const std::exception& e) {
      fail(error_message(e));
      return;
    }
    std::weak_ptr<Chat> weak = this->shared_from_this();
    auto exec = ws_.get_executor();
    std::shared_ptr<Shared> sh = sh_;
    id_ = sh_->engine.open(
        s,
        [weak, exec, sh](Reply&& r) {
          std::lock_guard<std::mutex> lock(sh->mu);
          if (!sh->alive) return;
          net::post(exec, [weak, r = std::move(r)]() mutable {
            if (auto self = weak.lock()) self->on_reply(std::move(r));
          });
        },
        peer_);
    if (!id_) {
      sh_->log(str("refused ", peer_, ": all ", sh_->engine.capacity(), " conversations are in progress"));
      fail(str("server full: all ", sh_->engine.capacity(), " conversations are in progress (--max-conversations)"));
      return;
    }
    sh_->log(str("conversation ", *id_, " from ", peer_, " (slot ", sh_->engine.slot_of(*id_), ")"));
    send(message(MsgKind::kMetadata, session_metadata(s, sh_->cfg.model_name, sh_->cfg.instance_name).dump()));
    send(message(MsgKind::kHandshake));
    read();
  }

  void read() { ws_.async_read(buffer_, beast::bind_front_handler(&Chat::on_read, this->shared_from_this())); }

  void on_read(beast::error_code ec, size_t) {
    if (ec) {
      end(ec == websocket::error::closed ? "closed by the client" : "read: " + ec.message());
      return;
    }
    if (!ws_.got_binary()) {
      fail("expected binary messages (Kyutai's protocol: a kind byte, then the payload), got a text message");
      return;
    }
    const auto data = buffer_.cdata();
    const auto* p = static_cast<const uint8_t*>(data.data());
    const size_t n = data.size();
    // Kinds other than audio are ignored, as the protocol says of unknown ones.
    if (n >= 1 && p[0] == static_cast<uint8_t>(MsgKind::kAudio) && id_) {
      try {
        std::vector<float> pcm = reader_.append_bytes(p + 1, n - 1);
        if (!pcm.empty()) sh_->engine.push(*id_, pcm.data(), pcm.size());
      } catch (const std::exception& e) {
        fail(str("bad audio: ", error_message(e)));
        return;
      }
    }
    buffer_.consume(buffer_.size());
    read();
  }

  void on_reply(Reply&& r) {
    if (!id_ || closing_) return;
    std::string ogg = writer_.append_pcm(r.pcm.data(), r.pcm.size());
    if (!ogg.empty()) send(message(MsgKind::kAudio, ogg));
    std::string piece = pieces_.next(r.text);
    if (!piece.empty()) send(message(MsgKind::kText, piece));
  }

  void send(std::string msg) {
    if (closing_ && !close_after_writes_) return;  // dropped: nothing more goes out
    const bool audio = !msg.empty() && msg[0] == static_cast<char>(MsgKind::kAudio);
    if (audio && unread_audio_ >= sh_->cfg.max_unread_frames) {
      // The client reads nothing: its replies would pile up without end. Drop the connection at the
      // socket (a close handshake would wait on the same full pipe).
      sh_->log(str("conversation ", id_.value_or(-1), " from ", peer_, ": dropped, ", unread_audio_,
                   " frames of replies unread"));
      end("the client does not read its replies");
      closing_ = true;
      beast::error_code ignored;
      beast::get_lowest_layer(ws_).socket().close(ignored);
      return;
    }
    unread_audio_ += audio;
    out_.push_back(std::move(msg));
    if (!writing_) write();
  }

  void write() {
    writing_ = true;
    ws_.async_write(net::buffer(out_.front()), beast::bind_front_handler(&Chat::on_write, this->shared_from_this()));
  }

  void on_write(beast::error_code ec, size_t) {
    writing_ = false;
    if (ec) {
      end("write: " + ec.message());
      return;
    }
    if (!out_.front().empty() && out_.front()[0] == static_cast<char>(MsgKind::kAudio)) --unread_audio_;
    out_.pop_front();
    if (!out_.empty()) {
      write();
    } else if (close_after_writes_) {
      ws_.async_close(websocket::close_reason(websocket::close_code::policy_error),
                      [self = this->shared_from_this()](beast::error_code) {});
    }
  }

  // An error message for this client, then a clean close; the server goes on.
  void fail(const std::string& why) {
    if (closing_) return;
    sh_->log(str("closing ", peer_, ": ", why));
    end(why);
    closing_ = close_after_writes_ = true;
    out_.push_back(message(MsgKind::kError, why));
    if (!writing_) write();
  }

  void end(const std::string& why) {
    if (!id_) return;
    sh_->engine.close(*id_, why);
    sh_->log(str("conversation ", *id_, " from ", peer_, " ended: ", why));
    id_.reset();
  }

  websocket::stream<Stream> ws_;
  std::shared_ptr<Shared> sh_;
  std::string peer_;
  beast::flat_buffer buffer_;
  std::optional<int64_t> id_;
  audio::OpusReader reader_;
  audio::OpusWriter writer_;
  TextPieces pieces_;
  std::deque<std::string> out_;
  int64_t unread_audio_ = 0;  // audio messages in out_
  bool writing_ = false, closing_ = false, close_after_writes_ = false;
};

// ---------------------------------------------------------------------------------------------
// HTTP: the status route, static files, and the upgrade to a conversation.

const char* mime_type(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  static const std::pair<const char*, const char*> kTypes[] = {{".html", "text/html"},
                                                               {".htm", "text/html"},
                                                               {".js", "application/javascript"},
                                                               {".mjs", "application/javascript"},
                                                               {".css", "text/css"},
                                                               {".json", "application/json"},
                                                               {".svg", "image/svg+xml"},
                                                               {".png", "image/png"},
                                                               {".jpg", "image/jpeg"},
                                                               {".ico", "image/vnd.microsoft.icon"},
                                                               {".wasm", "application/wasm"},
                                                               {".map", "application/json"},
                                                               {".txt", "text/plain"},
                                                               {".woff2", "font/woff2"},
                                                               {".webmanifest", "application/manifest+json"}};
  for (const auto& [e, t] : kTypes)
    if (ext == e) return t;
  return "application/octet-stream";
}

template <class Stream>
class HttpSession : public std::enable_shared_from_this<HttpSession<Stream>> {
 public:
  HttpSession(Stream&& s, std::shared_ptr<Shared> sh, std::string peer)
      : stream_(std::move(s)), sh_(std::move(sh)), peer_(std::move(peer)) {}

  void read() {
    parser_.emplace();
    parser_->body_limit(64 * 1024);
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(30));
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&HttpSession::on_read, this->shared_from_this()));
  }

 private:
  void on_read(beast::error_code ec, size_t) {
    if (ec) return;  // closed, timed out or malformed: nothing to answer
    http::request<http::string_body> req = parser_->release();
    const std::string path = path_of(std::string(req.target()));
    if (websocket::is_upgrade(req)) {
      beast::get_lowest_layer(stream_).expires_never();  // the websocket keeps its own timeouts
      if (path == "/api/chat") {
        std::make_shared<Chat<Stream>>(std::move(stream_), sh_, peer_)->start(std::move(req));
        return;
      }
      return reply(text_response(req, http::status::not_found, "no websocket at " + path + "\n"));
    }
    if (req.method() != http::verb::get && req.method() != http::verb::head)
      return reply(text_response(req, http::status::method_not_allowed, "GET only\n"));
    if (path == "/api/status") {
      auto res = text_response(req, http::status::ok, sh_->engine.status().dump(2) + "\n");
      res.set(http::field::content_type, "application/json");
      return reply(std::move(res));
    }
    serve_file(req, path);
  }

  http::response<http::string_body> text_response(const http::request<http::string_body>& req, http::status st,
                                                  std::string body) {
    http::response<http::string_body> res{st, req.version()};
    res.set(http::field::server, "moshi-ttt");
    res.set(http::field::content_type, "text/plain");
    res.keep_alive(req.keep_alive());
    res.body() = std::move(body);
    res.prepare_payload();
    return res;
  }

  void serve_file(const http::request<http::string_body>& req, const std::string& path) {
    if (sh_->cfg.static_dir.empty()) return reply(text_response(req, http::status::not_found, "no static folder\n"));
    // No way out of the folder: no "..", no backslashes, no NUL.
    if (path.empty() || path[0] != '/' || path.find("..") != std::string::npos ||
        path.find('\\') != std::string::npos || path.find('\0') != std::string::npos)
      return reply(text_response(req, http::status::bad_request, "bad path\n"));
    fs::path file = fs::path(sh_->cfg.static_dir) / path.substr(1);
    std::error_code fec;
    if (fs::is_directory(file, fec)) file /= "index.html";
    beast::error_code ec;
    http::file_body::value_type body;
    body.open(file.string().c_str(), beast::file_mode::scan, ec);
    if (ec) return reply(text_response(req, http::status::not_found, path + ": not found\n"));
    const auto size = body.size();
    http::response<http::file_body> res{std::piecewise_construct, std::make_tuple(std::move(body)),
                                        std::make_tuple(http::status::ok, req.version())};
    res.set(http::field::server, "moshi-ttt");
    res.set(http::field::content_type, mime_type(file.string()));
    res.content_length(size);
    res.keep_alive(req.keep_alive());
    if (req.method() == http::verb::head) {
      http::response<http::empty_body> head{http::status::ok, req.version()};
      head.set(http::field::content_type, mime_type(file.string()));
      head.content_length(size);
      head.keep_alive(req.keep_alive());
      return reply(std::move(head));
    }
    reply(std::move(res));
  }

  template <class Body>
  void reply(http::response<Body>&& res) {
    auto sp = std::make_shared<http::response<Body>>(std::move(res));
    const bool close = sp->need_eof();
    http::async_write(stream_, *sp, [self = this->shared_from_this(), sp, close](beast::error_code ec, size_t) {
      if (ec) return;
      if (close) {
        beast::error_code ignored;
        beast::get_lowest_layer(self->stream_).socket().shutdown(tcp::socket::shutdown_send, ignored);
        return;
      }
      self->read();
    });
  }

  Stream stream_;
  std::shared_ptr<Shared> sh_;
  std::string peer_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Server::Impl {
  std::shared_ptr<Shared> sh;
  net::io_context ioc;
  std::optional<ssl::context> tls;
  tcp::acceptor acceptor{ioc};

  Impl(Engine& engine, const text::Tokenizer* tok, ServerConfig cfg)
      : sh(std::make_shared<Shared>(engine, tok, std::move(cfg))) {
    const auto& c = sh->cfg;
    if (!c.ssl_dir.empty()) setup_tls(c.ssl_dir);
    beast::error_code ec;
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(c.host, std::to_string(c.port), ec);
    MT_CHECK(!ec && !results.empty(), "serve: cannot resolve --host ", c.host, ": ", ec.message());
    const tcp::endpoint ep = *results.begin();
    acceptor.open(ep.protocol(), ec);
    if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(ep, ec);
    if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
    MT_CHECK(!ec, "serve: cannot listen on ", c.host, ":", c.port, ": ", ec.message());
  }

  ~Impl() {
    std::lock_guard<std::mutex> lock(sh->mu);
    sh->alive = false;
  }

  void setup_tls(const std::string& dir) {
    tls.emplace(ssl::context::tls_server);
    const std::string cert = (fs::path(dir) / "cert.pem").string(), key = (fs::path(dir) / "key.pem").string();
    for (const auto& f : {cert, key})
      MT_CHECK(fs::exists(f), "--ssl ", dir, ": ", f,
               " is missing (make a pair with: openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "
               "/CN=localhost -keyout key.pem -out cert.pem)");
    beast::error_code ec;
    tls->use_certificate_chain_file(cert, ec);
    MT_CHECK(!ec, cert, ": ", ec.message());
    tls->use_private_key_file(key, ssl::context::pem, ec);
    MT_CHECK(!ec, key, ": ", ec.message());
  }

  void accept() {
    acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (!acceptor.is_open()) return;
      if (!ec) start(std::move(socket));
      accept();
    });
  }

  void start(tcp::socket socket) {
    beast::error_code pec;
    const auto remote = socket.remote_endpoint(pec);
    std::string peer = pec ? "?" : remote.address().to_string() + ":" + std::to_string(remote.port());
    if (!tls) {
      std::make_shared<HttpSession<beast::tcp_stream>>(beast::tcp_stream(std::move(socket)), sh, peer)->read();
      return;
    }
    using TlsStream = beast::ssl_stream<beast::tcp_stream>;
    auto stream = std::make_shared<TlsStream>(beast::tcp_stream(std::move(socket)), *tls);
    beast::get_lowest_layer(*stream).expires_after(std::chrono::seconds(30));
    stream->async_handshake(ssl::stream_base::server, [stream, sh = sh, peer](beast::error_code ec) {
      if (ec) return;  // not TLS, or a bad certificate on the client's side
      std::make_shared<HttpSession<TlsStream>>(std::move(*stream), sh, peer)->read();
    });
  }
};

Server::Server(Engine& engine, const text::Tokenizer* tokenizer, ServerConfig cfg)
    : impl_(std::make_unique<Impl>(engine, tokenizer, std::move(cfg))) {}

Server::~Server() = default;

int Server::port() const { return impl_->acceptor.local_endpoint().port(); }

std::string Server::url() const {
  return str(impl_->tls ? "wss://" : "ws://", impl_->sh->cfg.host, ":", port(), "/api/chat");
}

void Server::run(bool handle_signals) {
  std::optional<net::signal_set> signals;
  if (handle_signals) {
    signals.emplace(impl_->ioc, SIGINT, SIGTERM);
    signals->async_wait([this](beast::error_code, int) { stop(); });
  }
  impl_->accept();
  std::vector<std::thread> extra;
  for (int i = 1; i < impl_->sh->cfg.io_threads; ++i) extra.emplace_back([this] { impl_->ioc.run(); });
  impl_->ioc.run();
  for (auto& t : extra) t.join();
}

void Server::stop() {
  net::post(impl_->ioc, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->ioc.stop();
  });
}

}  // namespace mt::serve
