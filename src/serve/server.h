#pragma once
// `moshi-ttt serve`'s network side: one port serves Kyutai's websocket `/api/chat` (a conversation
// per connection, each in a slot of the Engine), `GET /api/status` (JSON), and a static client folder
// at `/` (Kyutai's web client), over http or https. Built on Boost.Beast: header-only, in Debian
// (libboost-dev), and it gives the websocket and the HTTP routes on one listener with TLS from
// OpenSSL, message size limits and keep-alive pings, which libwebsockets' C callbacks or the
// unmaintained websocketpp would make us write around.
#include <memory>
#include <string>

#include "lm/lm_gen.h"
#include "serve/engine.h"

namespace mt::text {
class Tokenizer;
}

namespace mt::serve {

struct ServerConfig {
  std::string host = "localhost";
  int port = 8998;                             // 0: any free port (tests); port() says which
  std::string static_dir;                      // served at / (index.html for folders); empty: no static routes
  std::string ssl_dir;                         // cert.pem + key.pem: https and wss; empty: http and ws
  size_t max_message_bytes = size_t(1) << 20;  // a larger client message closes that connection (1009)
  int64_t max_unread_frames = 125;             // 10 s of replies a client has not read: then it is dropped
  lm::SamplingConfig sampling;                 // each conversation's defaults, before its query string
  std::string model_name = "moshi-ttt", instance_name = "moshi-ttt";
  int io_threads = 1;
  bool quiet = false;  // no connection lines on stdout
};

class Server {
 public:
  // Binds the listener (errors name the address); `tokenizer` may be null (text goes out as ids).
  Server(Engine& engine, const text::Tokenizer* tokenizer, ServerConfig cfg);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  int port() const;
  std::string url() const;  // ws:// or wss://host:port/api/chat
  // Serves until stop() or SIGINT/SIGTERM (when handle_signals).
  void run(bool handle_signals = true);
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mt::serve
