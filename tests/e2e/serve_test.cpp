// `moshi-ttt serve` as users run it: a child process on a free port of 127.0.0.1, spoken to over
// Kyutai's /api/chat protocol by Beast websocket clients (plain and TLS) and by Kyutai's own Python
// client; misbehaving clients beside a well-behaved conversation; a soak that watches the server's
// memory and its dropped frames.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <ogg/ogg.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "audio/audio_io.h"
#include "audio/opus_stream.h"
#include "test_util.h"
#include "util/error.h"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
namespace ssl = net::ssl;
namespace fs = std::filesystem;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using mt::str;
using mt::test::TempDir;
using namespace std::chrono_literals;

constexpr int kRate = 24000;
constexpr int kFrame = 1920;  // 80 ms: one model step, answered by one audio message
constexpr double kFrameS = double(kFrame) / kRate;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Polls `pred` every 50 ms until it holds or `timeout` passes.
bool eventually(const std::function<bool()>& pred, Clock::duration timeout = 15s) {
  const auto end = Clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(50ms);
  }
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Audio

// Speech-like test audio: a voiced tone (with its second harmonic) whose pitch drifts slowly, in
// syllable-rate bursts, over a little noise, so the codec and the model get something that varies.
class Voice {
 public:
  explicit Voice(double pitch_hz, uint32_t seed = 1) : pitch_(pitch_hz), rng_(seed) {}
  std::vector<float> next(size_t n = kFrame) {
    std::vector<float> out(n);
    for (auto& x : out) {
      const double t = double(t_++) / kRate;
      phase_ += 2 * M_PI * pitch_ * (1.0 + 0.2 * std::sin(2 * M_PI * 0.3 * t)) / kRate;
      const double envelope = 0.5 + 0.5 * std::sin(2 * M_PI * 4.0 * t);
      x = float(0.25 * envelope * (std::sin(phase_) + 0.3 * std::sin(2 * phase_)) + noise_(rng_));
    }
    phase_ = std::fmod(phase_, 2 * M_PI);
    return out;
  }

 private:
  double pitch_, phase_ = 0;
  int64_t t_ = 0;
  std::mt19937 rng_;
  std::normal_distribution<double> noise_{0.0, 0.01};
};

// The next 80 ms of `v` as one audio message: kind 1, then the Ogg pages of two 40 ms Opus packets
// (the writer puts its OpusHead and OpusTags pages in front of the first).
std::string audio_message(mt::audio::OpusWriter& w, Voice& v) {
  const std::vector<float> pcm = v.next();
  return std::string(1, '\x01') + w.append_pcm(pcm.data(), pcm.size());
}

void put_le(std::string& s, uint32_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s += char((v >> (8 * i)) & 0xFF);
}

// The start of an Ogg/Opus stream as a sender makes it with libogg (OpusHead, OpusTags), whose first
// audio packet is `packet`.
std::string opus_stream_starting_with(const std::string& packet) {
  std::string head("OpusHead");
  head += char(1);  // version
  head += char(1);  // channels
  put_le(head, 3840, 2);
  put_le(head, kRate, 4);
  put_le(head, 0, 2);  // gain
  head += char(0);     // mapping family
  std::string tags("OpusTags");
  put_le(tags, 4, 4);
  tags += "test";
  put_le(tags, 0, 4);
  ogg_stream_state os;
  ogg_stream_init(&os, 4242);
  std::string out;
  int64_t packetno = 0;
  for (const std::string* p : std::array<const std::string*, 3>{&head, &tags, &packet}) {
    ogg_packet op{};
    op.packet = reinterpret_cast<unsigned char*>(const_cast<char*>(p->data()));
    op.bytes = long(p->size());
    op.b_o_s = packetno == 0;
    op.granulepos = p == &packet ? 1920 : 0;
    op.packetno = packetno++;
    ogg_stream_packetin(&os, &op);
    ogg_page og;
    while (ogg_stream_flush(&os, &og) != 0) {
      out.append(reinterpret_cast<const char*>(og.header), size_t(og.header_len));
      out.append(reinterpret_cast<const char*>(og.body), size_t(og.body_len));
    }
  }
  ogg_stream_clear(&os);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The server as a child process

class ServeProcess {
 public:
  ServeProcess() = default;
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;
  ~ServeProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }

  // Runs `moshi-ttt serve ARGS` with stdout and stderr into `log`; "" once it prints its listening
  // line, else why (with its output).
  std::string start(const std::vector<std::string>& args, const std::string& log, Clock::duration timeout = 120s) {
    log_ = log;
    std::vector<std::string> all{mt::test::cli(), "serve"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    // fork + exec rather than posix_spawn, for the parent-death signal: a test process that dies
    // (a crash, ctest's timeout) takes its server with it instead of leaving it serving. The signal
    // follows the forking thread: the tests start servers from their own thread only.
    pid_ = ::fork();
    if (pid_ < 0) return str("fork: ", std::strerror(errno));
    if (pid_ == 0) {  // the child: async-signal-safe calls only until exec
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int in = ::open("/dev/null", O_RDONLY), out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0) ::_exit(127);
      ::dup2(in, 0);
      ::dup2(out, 1);
      ::dup2(out, 2);
      // Asio's sockets are not close-on-exec: a client socket inherited by the server would outlive
      // the test's close of it.
      ::close_range(3, ~0U, 0);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      for (int sig : {SIGTERM, SIGINT, SIGPIPE}) ::signal(sig, SIG_DFL);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto end = Clock::now() + timeout;
    for (;;) {
      const std::string out = output();
      const size_t at = out.find("listening on ");
      if (at != std::string::npos && out.find('\n', at) != std::string::npos) {
        url_ = out.substr(at + 13, out.find(' ', at + 13) - at - 13);
        const size_t colon = url_.rfind(':'), slash = url_.find('/', colon);
        port_ = std::atoi(url_.substr(colon + 1, slash - colon - 1).c_str());
        return port_ > 0 ? "" : "no port in: " + out;
      }
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return str("serve exited (status ", st, ") before listening:\n", output());
      }
      if (Clock::now() > end) return "serve did not listen in time:\n" + out;
      std::this_thread::sleep_for(20ms);
    }
  }

  int port() const { return port_; }
  const std::string& url() const { return url_; }
  std::string output() const { return mt::test::slurp(log_); }

  // SIGTERM, then waits: its exit code, 128 + the signal that killed it, or -1 when it did not end
  // within 30 s (then it is killed).
  int stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    int st = 0;
    const auto end = Clock::now() + 30s;
    while (::waitpid(pid_, &st, WNOHANG) == 0) {
      if (Clock::now() > end) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &st, 0);
        pid_ = -1;
        return -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }

 private:
  pid_t pid_ = -1;
  std::string log_, url_;
  int port_ = 0;
};

// ---------------------------------------------------------------------------------------------
// HTTP

struct HttpReply {
  int status = 0;  // 0: no response (error says why)
  std::string content_type, body, error;
};

template <class Stream>
class HttpExchange : public std::enable_shared_from_this<HttpExchange<Stream>> {
 public:
  HttpExchange(Stream s, http::verb verb, const std::string& target, HttpReply* out) : s_(std::move(s)), out_(out) {
    req_.method(verb);
    req_.target(target);  // sent as is: no normalisation of "..", which is the point of some tests
    req_.version(11);
    req_.set(http::field::host, "127.0.0.1");
    req_.keep_alive(false);
  }

  void start(const tcp::endpoint& ep) {
    auto self = this->shared_from_this();
    beast::get_lowest_layer(s_).expires_after(10s);
    beast::get_lowest_layer(s_).async_connect(ep, [self](beast::error_code ec) {
      if (ec) return self->fail("connect", ec);
      if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
        self->write();
      } else {
        self->s_.async_handshake(ssl::stream_base::client, [self](beast::error_code ec) {
          if (ec) return self->fail("tls handshake", ec);
          self->write();
        });
      }
    });
  }

 private:
  void write() {
    auto self = this->shared_from_this();
    http::async_write(s_, req_, [self](beast::error_code ec, size_t) {
      if (ec) return self->fail("write", ec);
      http::async_read(self->s_, self->buf_, self->res_, [self](beast::error_code ec, size_t) {
        if (ec) return self->fail("read", ec);
        self->out_->status = int(self->res_.result_int());
        self->out_->content_type = std::string(self->res_[http::field::content_type]);
        self->out_->body = self->res_.body();
      });
    });
  }
  void fail(const char* what, beast::error_code ec) { out_->error = str(what, ": ", ec.message()); }

  Stream s_;
  HttpReply* out_;
  beast::flat_buffer buf_;
  http::request<http::empty_body> req_;
  http::response<http::string_body> res_;
};

HttpReply http_request(int port, const std::string& target, ssl::context* tls = nullptr,
                       http::verb verb = http::verb::get) {
  net::io_context ioc;
  HttpReply r;
  const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port));
  if (tls) {
    using S = beast::ssl_stream<beast::tcp_stream>;
    std::make_shared<HttpExchange<S>>(S(ioc, *tls), verb, target, &r)->start(ep);
  } else {
    std::make_shared<HttpExchange<beast::tcp_stream>>(beast::tcp_stream(ioc), verb, target, &r)->start(ep);
  }
  ioc.run();
  return r;
}

// GET /api/status as JSON; when it does not answer with a JSON object, {"unreachable": why}.
json server_status(int port, ssl::context* tls = nullptr) {
  const HttpReply r = http_request(port, "/api/status", tls);
  json j = json::parse(r.body, nullptr, false);
  if (r.status != 200 || !j.is_object()) return {{"unreachable", str("HTTP ", r.status, " ", r.error, " ", r.body)}};
  return j;
}
bool answers(const json& status) { return !status.contains("unreachable"); }

// The live conversation whose peer is 127.0.0.1:`local_port`, or null.
json conversation_of(const json& status, int local_port) {
  for (const auto& c : status.value("conversations", json::array()))
    if (c.value("peer", "") == str("127.0.0.1:", local_port)) return c;
  return nullptr;
}

// The lines of one event ("open", "close", "frames", "behind") of a run folder's metrics.jsonl.
std::vector<json> metrics_events(const std::string& run_dir, const std::string& event) {
  std::vector<json> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("event", "") == event) out.push_back(j);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// A websocket client with its own io thread: reads (and decodes) everything the server sends while
// the test thread sends, waits and inspects.

// What a client has received (and how its writes went).
struct Inbox {
  std::array<int64_t, 256> kinds{};  // binary messages by first byte
  std::vector<int> first_kinds;      // kinds of the first few messages, in order
  int64_t text_frames = 0;           // websocket text messages (the protocol has none)
  std::string metadata;              // kind-4 payload
  std::vector<std::string> errors;   // kind-5 payloads
  std::vector<std::string> texts;    // kind-2 payloads (with ClientOptions::keep)
  std::vector<float> pcm;            // decoded reply audio (with ClientOptions::keep)
  int64_t samples = 0;               // reply audio decoded
  double sum_squares = 0;
  std::string decode_error;
  Clock::time_point last_audio{};
  double max_audio_gap_s = 0;  // longest wait between two audio messages
  int64_t written = 0;         // messages this client has sent
  beast::error_code write_error;
  bool closed = false;  // the read loop ended
  beast::error_code read_error;
  int close_code = -1;  // from the server's close frame, when one came
  int64_t audio() const { return kinds[1]; }
  double rms() const { return samples > 0 ? std::sqrt(sum_squares / double(samples)) : 0.0; }
};

struct ClientOptions {
  std::string target = "/api/chat";
  ssl::context* tls = nullptr;  // wss with this context
  bool read = true;             // false: never reads a byte, so the server's replies pile up
  int receive_buffer = 0;       // SO_RCVBUF before connecting (0: the system's)
  bool keep = false;            // keep the text pieces and the decoded audio
};

class Client {
 public:
  explicit Client(int port, ClientOptions o = {}) : port_(port), o_(std::move(o)), work_(net::make_work_guard(ioc_)) {
    if (o_.tls)
      tls_ = std::make_unique<TlsWs>(ioc_, *o_.tls);
    else
      plain_ = std::make_unique<PlainWs>(ioc_);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~Client() {
    net::post(ioc_, [this] {
      shut();
      ioc_.stop();
    });
    thread_.join();
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // "" once the websocket is open (the read loop then runs), else why.
  std::string connect() {
    auto done = std::make_shared<std::promise<std::string>>();
    auto fut = done->get_future();
    net::post(ioc_, [this, done] { visit([&](auto& ws) { open(ws, done); }); });
    if (fut.wait_for(20s) != std::future_status::ready) {
      abort();
      return "connect: timed out";
    }
    return fut.get();
  }

  void send(std::string msg, bool text = false) {
    net::post(ioc_, [this, m = std::move(msg), text]() mutable {
      out_.emplace_back(std::move(m), text);
      if (out_.size() == 1) visit([&](auto& ws) { write(ws); });
    });
  }

  // Closes the TCP connection without a websocket close, as a client that vanished does.
  void abort() {
    std::promise<void> done;
    net::post(ioc_, [&] {
      shut();
      done.set_value();
    });
    done.get_future().wait();
  }

  // The websocket close handshake; the read loop ends when the server answers it.
  void close() {
    net::post(ioc_, [this] {
      visit([](auto& ws) { ws.async_close(websocket::close_code::normal, [](beast::error_code) {}); });
    });
  }

  bool wait(const std::function<bool(const Inbox&)>& pred, Clock::duration timeout = 20s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(in_); });
  }
  Inbox inbox() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_;
  }
  int local_port() const { return local_port_; }

 private:
  using PlainWs = websocket::stream<beast::tcp_stream>;
  using TlsWs = websocket::stream<beast::ssl_stream<beast::tcp_stream>>;

  template <class F>
  void visit(F&& f) {
    if (tls_)
      f(*tls_);
    else
      f(*plain_);
  }

  void shut() {
    visit([](auto& ws) { beast::get_lowest_layer(ws).close(); });
  }

  template <class Ws>
  void open(Ws& ws, std::shared_ptr<std::promise<std::string>> done) {
    auto& tcp_layer = beast::get_lowest_layer(ws);
    if (o_.receive_buffer > 0) {
      beast::error_code ec;
      tcp_layer.socket().open(tcp::v4(), ec);
      if (!ec) tcp_layer.socket().set_option(net::socket_base::receive_buffer_size(o_.receive_buffer), ec);
      if (ec) return done->set_value("socket: " + ec.message());
    }
    tcp_layer.expires_after(10s);
    const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port_));
    tcp_layer.async_connect(ep, [this, &ws, done](beast::error_code ec) {
      if (ec) return done->set_value("connect: " + ec.message());
      beast::error_code ignored;
      local_port_ = beast::get_lowest_layer(ws).socket().local_endpoint(ignored).port();
      if constexpr (std::is_same_v<Ws, TlsWs>) {
        ws.next_layer().async_handshake(ssl::stream_base::client, [this, &ws, done](beast::error_code ec) {
          if (ec) return done->set_value("tls handshake: " + ec.message());
          upgrade(ws, done);
        });
      } else {
        upgrade(ws, done);
      }
    });
  }

  template <class Ws>
  void upgrade(Ws& ws, std::shared_ptr<std::promise<std::string>> done) {
    beast::get_lowest_layer(ws).expires_never();
    ws.set_option(websocket::stream_base::timeout::suggested(beast::role_type::client));
    host_ = str("127.0.0.1:", port_);
    ws.async_handshake(upgrade_response_, host_, o_.target, [this, &ws, done](beast::error_code ec) {
      if (ec)
        return done->set_value(
            str("websocket upgrade: ", ec.message(), " (HTTP ", upgrade_response_.result_int(), ")"));
      ws.binary(true);
      if (o_.read) read(ws);
      done->set_value("");
    });
  }

  template <class Ws>
  void read(Ws& ws) {
    ws.async_read(rbuf_, [this, &ws](beast::error_code ec, size_t) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (ec) {
          in_.closed = true;
          in_.read_error = ec;
          if (ws.reason().code != websocket::close_code::none) in_.close_code = int(ws.reason().code);
        } else {
          record(beast::buffers_to_string(rbuf_.data()), ws.got_text());
        }
      }
      cv_.notify_all();
      rbuf_.consume(rbuf_.size());
      if (!ec) read(ws);
    });
  }

  template <class Ws>
  void write(Ws& ws) {
    ws.text(out_.front().second);
    ws.async_write(net::buffer(out_.front().first), [this, &ws](beast::error_code ec, size_t) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (ec)
          in_.write_error = ec;
        else
          ++in_.written;
      }
      cv_.notify_all();
      if (ec) {
        out_.clear();
        return;
      }
      out_.pop_front();
      if (!out_.empty()) write(ws);
    });
  }

  // Under mu_.
  void record(const std::string& m, bool text) {
    if (text || m.empty()) {
      ++in_.text_frames;
      return;
    }
    const auto kind = static_cast<uint8_t>(m[0]);
    ++in_.kinds[kind];
    if (in_.first_kinds.size() < 8) in_.first_kinds.push_back(kind);
    const std::string payload = m.substr(1);
    if (kind == 4) in_.metadata = payload;
    if (kind == 5) in_.errors.push_back(payload);
    if (kind == 2 && o_.keep) in_.texts.push_back(payload);
    if (kind != 1) return;
    const auto now = Clock::now();
    if (in_.kinds[1] > 1) in_.max_audio_gap_s = std::max(in_.max_audio_gap_s, seconds_since(in_.last_audio));
    in_.last_audio = now;
    try {
      const auto pcm = reader_.append_bytes(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
      in_.samples += int64_t(pcm.size());
      for (float x : pcm) in_.sum_squares += double(x) * x;
      if (o_.keep) in_.pcm.insert(in_.pcm.end(), pcm.begin(), pcm.end());
    } catch (const std::exception& e) {
      in_.decode_error = e.what();
    }
  }

  int port_;
  ClientOptions o_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Inbox in_;
  net::io_context ioc_;
  net::executor_work_guard<net::io_context::executor_type> work_;
  std::unique_ptr<PlainWs> plain_;
  std::unique_ptr<TlsWs> tls_;
  websocket::response_type upgrade_response_;
  std::string host_;
  beast::flat_buffer rbuf_;
  std::deque<std::pair<std::string, bool>> out_;  // io thread only
  mt::audio::OpusReader reader_;
  std::atomic<int> local_port_{0};
  std::thread thread_;
};

bool handshake_done(const Inbox& in) { return in.kinds[0] > 0 || in.closed; }

// Streams `frames` frames of `v` on `c`, keeping at most `window` frames unanswered (the server
// answers every frame with one audio message once the model's delay is filled): faster than real
// time, yet far from the server's 50-frame queue cap. `sent` counts this conversation's frames.
// Returns "" or what went wrong.
std::string stream(Client& c, mt::audio::OpusWriter& w, Voice& v, int64_t frames, int64_t delay, int64_t& sent,
                   int64_t window = 10, const std::atomic<bool>* stop = nullptr) {
  for (int64_t i = 0; i < frames && !(stop && *stop); ++i) {
    const int64_t next = sent;
    const bool ok = c.wait(
        [&](const Inbox& in) { return next - (in.audio() + delay) < window || in.closed || in.write_error; }, 30s);
    const Inbox in = c.inbox();
    if (!ok) return str("no reply for 30 s after ", next, " frames (", in.audio(), " audio messages)");
    if (in.closed) return str("closed by the server after ", next, " frames: ", in.read_error.message());
    if (in.write_error) return str("write failed after ", next, " frames: ", in.write_error.message());
    c.send(audio_message(w, v));
    ++sent;
  }
  return "";
}

// Every one of `sent` frames answered (less the model's delay).
bool answered(Client& c, int64_t sent, int64_t delay, Clock::duration timeout = 30s) {
  return c.wait([&](const Inbox& in) { return in.audio() >= sent - delay; }, timeout);
}

// Waits until `c` has received nothing new for 300 ms.
void settle(Client& c) {
  auto count = [&] {
    const Inbox in = c.inbox();
    int64_t n = 0;
    for (int64_t k : in.kinds) n += k;
    return n;
  };
  for (int64_t n = count(), m = -1; n != m; n = count()) {
    m = n;
    std::this_thread::sleep_for(300ms);
  }
}

// A well-behaved conversation that streams in a thread of its own (as fast as its replies allow)
// until stopped.
class Streamer {
 public:
  Streamer(int port, int64_t delay) : c_(port), delay_(delay) {}
  ~Streamer() { stop(); }
  std::string start() {
    std::string e = c_.connect();
    if (e.empty() && !c_.wait(handshake_done)) e = "no handshake";
    if (e.empty())
      thread_ = std::thread([this] {
        mt::audio::OpusWriter w;
        Voice v(150.0, 9);
        error_ = stream(c_, w, v, int64_t(1) << 40, delay_, sent_, 10, &stop_);
      });
    return e;
  }
  // Stops streaming; the frames sent.
  int64_t stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return sent_;
  }
  int64_t replies() const { return c_.inbox().audio(); }
  Client& client() { return c_; }
  const std::string& error() const { return error_; }

 private:
  Client c_;
  int64_t delay_, sent_ = 0;
  std::string error_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    models_ = new TempDir;
    std::string out;
    const std::string cmd = mt::test::cli() + " init " + models_->file("tiny") + " --config " +
                            std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml";
    if (mt::test::run(cmd, &out) != 0) {
      setup_error_ = cmd + "\n" + out;
      return;
    }
    // The model answers frame t at step t + max(delays): the first max(delays) frames get no reply.
    const json cfg = json::parse(mt::test::slurp(models_->file("tiny/config.json")), nullptr, false);
    if (cfg.is_discarded() || !cfg.contains("delays")) {
      setup_error_ = "no delays in " + models_->file("tiny/config.json");
      return;
    }
    for (const auto& d : cfg.at("delays")) delay_ = std::max<int64_t>(delay_, d.get<int64_t>());
  }
  static void TearDownTestSuite() {
    delete models_;
    models_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  static std::vector<std::string> model_args() {
    const std::string m = mt::test::reference_dir() + "/mimi/mimi_small";
    return {"--model", models_->file("tiny"), "--mimi", m + "/model.safetensors", "--mimi-config", m + "/config.json"};
  }
  // The tiny model on any free port of 127.0.0.1, plus `extra`.
  static std::vector<std::string> serve_args(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a = model_args();
    // One intra-op thread: OpenMP teams beside the test's own threads (and ctest -j2) wait on
    // descheduled threads at their barriers.
    for (const char* x : {"--host", "127.0.0.1", "--port", "0", "--threads", "1"}) a.push_back(x);
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  void soak(double seconds, double max_growth_mb);

  TempDir tmp_;
  static inline TempDir* models_ = nullptr;
  static inline std::string setup_error_;
  static inline int64_t delay_ = 0;
};

// PyPI (or the network) is out of reach, as opposed to a broken script or venv.
bool pypi_unreachable(const std::string& out) {
  for (const char* s :
       {"Failed to establish a new connection", "Temporary failure in name resolution", "Name or service not known",
        "Network is unreachable", "No route to host", "Max retries exceeded", "(from versions: none)", "ProxyError",
        "Connection refused", "Connection timed out", "Read timed out", "Could not fetch URL"})
    if (out.find(s) != std::string::npos) return true;
  return false;
}

}  // namespace

// Kyutai's unmodified Python client (moshi 0.2.13) through scripts/serve/kyutai_client.py: it gets
// the handshake, text and as much audio as it sent less the model's delay; its query string (a
// test-only shim: Kyutai's client sends none) sets the session's sampling.
TEST_F(Serve, KyutaiClientTalksToTheServer) {
  std::string env;
  const int env_rc = mt::test::run(std::string(MT_SOURCE_DIR) + "/scripts/serve/client_env.sh", &env);
  if (env_rc != 0) {
    if (pypi_unreachable(env)) GTEST_SKIP() << "Kyutai's client cannot be installed, PyPI is unreachable:\n" << env;
    FAIL() << "scripts/serve/client_env.sh failed (exit " << env_rc << "):\n" << env;
  }
  const std::vector<std::string> env_lines = lines_of(env);
  ASSERT_FALSE(env_lines.empty());
  const std::string py = env_lines.back();
  ASSERT_TRUE(fs::exists(py)) << env;

  Voice voice(140.0, 3);
  const std::vector<float> pcm = voice.next(3 * kRate);
  mt::audio::write_wav(tmp_.file("in.wav"),
                       at::from_blob(const_cast<float*>(pcm.data()), {1, int64_t(pcm.size())}, at::kFloat).clone(),
                       kRate);
  const std::string run_dir = tmp_.file("run");
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args({"--run-dir", run_dir}), tmp_.file("serve.log")), "");

  auto kyutai = [&](const std::string& name, const std::string& extra) {
    const std::string cmd = py + " " + MT_SOURCE_DIR + "/scripts/serve/kyutai_client.py --host 127.0.0.1 --port " +
                            std::to_string(srv.port()) + " --wav " + tmp_.file("in.wav") + " --out " +
                            tmp_.file(name + ".wav") + " --json " + tmp_.file(name + ".json") + " --rate 2" + extra;
    std::string out;
    const auto t0 = Clock::now();
    const int rc = mt::test::run(cmd, &out);
    EXPECT_EQ(rc, 0) << cmd << "\n" << out << "\nserver:\n" << srv.output();
    json s = json::parse(mt::test::slurp(tmp_.file(name + ".json")), nullptr, false);
    if (s.is_object()) {
      json shown = s;
      shown.erase("client_log");
      shown.erase("text");
      std::printf("[ kyutai ] %s: exit %d in %.1f s: %s\n", name.c_str(), rc, seconds_since(t0), shown.dump().c_str());
    }
    EXPECT_TRUE(s.is_object()) << out;
    return s.is_object() ? s : json::object();
  };

  const json s = kyutai("plain", "");
  ASSERT_TRUE(s.contains("handshake")) << s.dump(2);
  EXPECT_TRUE(s.at("handshake").get<bool>());
  EXPECT_GT(s.at("text_pieces").get<int>(), 0);
  EXPECT_TRUE(s.at("errors").empty()) << s.at("errors").dump(2);
  EXPECT_EQ(s.value("ended_by", ""), "driver");
  const double sent = s.at("sent_seconds").get<double>(), got = s.at("audio_seconds_received").get<double>();
  EXPECT_GT(sent, 3.0);
  EXPECT_NEAR(got, sent - double(delay_) * kFrameS, 0.2) << "sent " << sent << " s";
  EXPECT_LE(got, sent);
  const json& kinds = s.at("message_types");
  EXPECT_EQ(kinds.value("0", 0), 1);
  EXPECT_EQ(kinds.value("4", 0), 1);
  EXPECT_EQ(kinds.value("5", 0), 0);
  EXPECT_EQ(kinds.value("2", 0), s.at("text_pieces").get<int>());
  const mt::audio::Audio out = mt::audio::read_audio(tmp_.file("plain.wav"));
  EXPECT_EQ(out.sample_rate, kRate);
  EXPECT_NEAR(out.duration_sec(), got, 1e-3);
  ASSERT_GT(out.frames(), 0);
  const double rms = out.samples.square().mean().sqrt().item<double>();
  EXPECT_GT(rms, 1e-4) << "the client recorded silence";

  const json q = kyutai("query",
                        " --tail-seconds 0.5 --query "
                        "'text_temperature=0.5&text_topk=10&audio_seed=7&pad_mult=1.5&repetition_penalty=1.2&"
                        "repetition_penalty_context=32'");
  EXPECT_TRUE(q.value("handshake", false));
  EXPECT_TRUE(q.value("errors", json::array()).empty()) << q.dump(2);
  // The driver records message kinds, not payloads: the session's values come from metrics.jsonl.
  std::vector<json> closes;
  EXPECT_TRUE(eventually([&] { return (closes = metrics_events(run_dir, "close")).size() >= 2; }))
      << mt::test::slurp(run_dir + "/metrics.jsonl");
  ASSERT_EQ(closes.size(), 2u);
  const json& plain = closes[0].at("sampling");
  const json& queried = closes[1].at("sampling");
  std::printf("[ kyutai ] sampling without a query: %s\n[ kyutai ] with the query: %s\n", plain.dump().c_str(),
              queried.dump().c_str());
  EXPECT_DOUBLE_EQ(queried.at("text_temperature").get<double>(), 0.5);
  EXPECT_EQ(queried.at("text_topk").get<int>(), 10);
  EXPECT_NEAR(queried.at("pad_mult").get<double>(), 1.5, 1e-6);
  EXPECT_NEAR(queried.at("repetition_penalty").get<double>(), 1.2, 1e-6);
  EXPECT_EQ(queried.at("repetition_penalty_context").get<int>(), 32);
  EXPECT_NE(plain.at("text_topk").get<int>(), 10) << "the defaults should differ from the query for this to test";
  EXPECT_EQ(srv.stop(), 0) << srv.output();
}

// The query string as the Rust server reads it: echoed in the metadata message, a bad value refused
// by name, and fixed seeds make a conversation replay exactly (alone, each conversation steps only on
// its own frames), while another audio seed changes the audio.
TEST_F(Serve, QueryStringSetsTheSessionsSampling) {
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args(), tmp_.file("serve.log")), "");
  const int port = srv.port();
  {
    Client c(port, {.target = "/api/chat?text_temperature=0.5&text_topk=10&audio_seed=7&pad_mult=1.5&"
                              "repetition_penalty=1.2&repetition_penalty_context=32&worker_auth_id=x"});
    ASSERT_EQ(c.connect(), "");
    ASSERT_TRUE(c.wait(handshake_done));
    const Inbox in = c.inbox();
    EXPECT_EQ(in.first_kinds, (std::vector<int>{4, 0})) << "metadata, then the handshake";
    const json m = json::parse(in.metadata, nullptr, false);
    ASSERT_TRUE(m.is_object()) << in.metadata;
    EXPECT_DOUBLE_EQ(m.at("text_temperature").get<double>(), 0.5);
    EXPECT_EQ(m.at("text_topk").get<int>(), 10);
    EXPECT_NEAR(m.at("pad_mult").get<double>(), 1.5, 1e-6);
    EXPECT_NEAR(m.at("repetition_penalty").get<double>(), 1.2, 1e-6);
    EXPECT_EQ(m.at("repetition_penalty_context").get<int>(), 32);
    for (const char* k : {"audio_temperature", "audio_topk"}) EXPECT_TRUE(m.at(k).is_number()) << k;
    for (const char* k : {"lm_model_file", "instance_name"}) EXPECT_TRUE(m.at(k).is_string()) << k;
    c.close();
    EXPECT_TRUE(c.wait([](const Inbox& i) { return i.closed; }));
  }
  {
    Client bad(port, {.target = "/api/chat?text_topk=ten"});
    ASSERT_EQ(bad.connect(), "");
    ASSERT_TRUE(bad.wait([](const Inbox& i) { return i.closed; }));
    const Inbox in = bad.inbox();
    ASSERT_EQ(in.errors.size(), 1u);
    EXPECT_NE(in.errors[0].find("text_topk"), std::string::npos) << in.errors[0];
    EXPECT_EQ(in.kinds[0], 0) << "no handshake for a refused session";
    EXPECT_EQ(in.close_code, int(websocket::close_code::policy_error)) << in.read_error.message();
  }
  // Alone, a conversation steps only on its own frames, so its replies depend on its audio and its
  // seeds only.
  auto conversation = [&](const std::string& query) {
    EXPECT_TRUE(eventually([&] { return server_status(port).value("live", -1) == 0; }));
    Client c(port, {.target = "/api/chat?" + query, .keep = true});
    EXPECT_EQ(c.connect(), "");
    mt::audio::OpusWriter w;
    Voice v(180.0, 5);
    int64_t sent = 0;
    EXPECT_EQ(stream(c, w, v, 12, delay_, sent), "");
    EXPECT_TRUE(answered(c, sent, delay_));
    settle(c);  // the last frame's text piece follows its audio
    c.close();
    c.wait([](const Inbox& i) { return i.closed; }, 5s);
    return c.inbox();
  };
  const Inbox first = conversation("text_seed=11&audio_seed=7");
  const Inbox again = conversation("text_seed=11&audio_seed=7");
  const Inbox third = conversation("text_seed=11&audio_seed=7");
  const Inbox other = conversation("text_seed=11&audio_seed=8");
  ASSERT_EQ(again.pcm.size(), size_t((12 - delay_) * kFrame));
  EXPECT_TRUE(again.pcm == third.pcm) << "same seeds, same audio in: the replies should be the same";
  EXPECT_EQ(again.texts, third.texts);
  EXPECT_FALSE(again.texts.empty());
  EXPECT_EQ(other.pcm.size(), again.pcm.size());
  EXPECT_FALSE(again.pcm == other.pcm) << "audio_seed had no effect";
  // The first conversation is the first to step the batch: its codec output differs from a restarted
  // slot's in the last bits (~4e-8), which the Opus encoder turns into audibly different packets. So
  // only its text is compared.
  EXPECT_EQ(first.texts, again.texts);
  auto rms_diff = [](const Inbox& x, const Inbox& y) {
    double s = 0;
    for (size_t i = 0; i < std::min(x.pcm.size(), y.pcm.size()); ++i) s += std::pow(double(x.pcm[i]) - y.pcm[i], 2);
    return std::sqrt(s / double(std::max<size_t>(1, x.pcm.size())));
  };
  std::printf(
      "[ query ] reply RMS %.4f; RMS difference from the replay: first conversation %.4f, other audio seed "
      "%.4f\n",
      again.rms(), rms_diff(first, again), rms_diff(other, again));
  EXPECT_EQ(srv.stop(), 0) << srv.output();
}

// Four conversations batched at once; a fifth is told the server is full; one of the four vanishing
// mid-stream frees its slot for a newcomer while the others go on; /api/status counts it all.
TEST_F(Serve, FourConversationsAtOnceAndAFifthIsRefused) {
  const std::string run_dir = tmp_.file("run");
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args({"--run-dir", run_dir}), tmp_.file("serve.log")), "");
  const int port = srv.port();
  std::vector<std::unique_ptr<Client>> c;
  for (int i = 0; i < 4; ++i) {
    c.push_back(std::make_unique<Client>(port));
    ASSERT_EQ(c[i]->connect(), "") << i;
    ASSERT_TRUE(c[i]->wait(handshake_done)) << i;
    EXPECT_EQ(c[i]->inbox().first_kinds, (std::vector<int>{4, 0})) << i;
  }
  {
    Client fifth(port);
    ASSERT_EQ(fifth.connect(), "") << "the upgrade succeeds; the refusal is a message";
    ASSERT_TRUE(fifth.wait([](const Inbox& in) { return in.closed; }));
    const Inbox in = fifth.inbox();
    EXPECT_EQ(in.first_kinds, (std::vector<int>{5}));
    ASSERT_EQ(in.errors.size(), 1u);
    EXPECT_EQ(in.errors[0].rfind("server full", 0), 0u) << in.errors[0];
    EXPECT_EQ(in.read_error, websocket::error::closed) << in.read_error.message();
    EXPECT_EQ(in.close_code, int(websocket::close_code::policy_error));
  }
  json st = server_status(port);
  EXPECT_EQ(st.value("live", -1), 4) << st.dump(2);
  EXPECT_EQ(st.value("refused", -1), 1);
  EXPECT_EQ(st.value("conversations_served", -1), 4);

  std::vector<mt::audio::OpusWriter> w(5);
  std::vector<Voice> v;
  for (int i = 0; i < 5; ++i) v.emplace_back(110.0 + 30 * i, uint32_t(i + 1));
  std::vector<int64_t> sent(5, 0);
  auto stream_all = [&](const std::vector<int>& who, int64_t frames) {
    std::vector<std::string> err(who.size());
    std::vector<std::thread> t;
    for (size_t k = 0; k < who.size(); ++k)
      t.emplace_back([&, k] {
        const int i = who[k];
        err[k] = stream(*c[i], w[i], v[i], frames, delay_, sent[i]);
        if (err[k].empty() && !answered(*c[i], sent[i], delay_)) err[k] = "not every frame answered";
      });
    for (auto& x : t) x.join();
    for (size_t k = 0; k < who.size(); ++k) EXPECT_EQ(err[k], "") << "client " << who[k];
  };
  stream_all({0, 1, 2, 3}, 12);

  // Client 0 vanishes in the middle of its stream: no websocket close, a few frames unanswered.
  for (int k = 0; k < 3; ++k) c[0]->send(audio_message(w[0], v[0]));
  c[0]->abort();
  EXPECT_TRUE(eventually([&] { return server_status(port).value("live", -1) == 3; })) << server_status(port).dump(2);
  std::vector<int64_t> before(4);
  for (int i = 1; i < 4; ++i) before[i] = c[i]->inbox().audio();
  c.push_back(std::make_unique<Client>(port));
  ASSERT_EQ(c[4]->connect(), "");
  ASSERT_TRUE(c[4]->wait(handshake_done));
  EXPECT_EQ(c[4]->inbox().first_kinds, (std::vector<int>{4, 0})) << "the freed slot takes a newcomer";
  stream_all({1, 2, 3, 4}, 13);
  for (int i = 1; i <= 4; ++i) {
    const Inbox in = c[i]->inbox();
    EXPECT_GE(in.audio(), sent[i] - delay_) << i;
    if (i < 4) EXPECT_GE(in.audio() - before[i], 13) << "client " << i << " stopped getting replies";
    EXPECT_EQ(in.errors.size(), 0u) << i;
    EXPECT_EQ(in.decode_error, "") << i;
    EXPECT_EQ(in.samples, in.audio() * kFrame) << i;
    EXPECT_GT(in.rms(), 1e-4) << i;
    EXPECT_GT(in.kinds[2], 0) << "no text for client " << i;
    EXPECT_FALSE(in.closed) << i;
  }
  st = server_status(port);
  EXPECT_EQ(st.value("live", -1), 4) << st.dump(2);
  EXPECT_EQ(st.value("refused", -1), 1);
  EXPECT_EQ(st.value("conversations_served", -1), 5);
  EXPECT_EQ(st.value("max_conversations", -1), 4);
  for (int i = 1; i <= 4; ++i) {
    const json conv = conversation_of(st, c[i]->local_port());
    ASSERT_TRUE(conv.is_object()) << "client " << i << " missing from " << st.dump(2);
    EXPECT_EQ(conv.at("dropped").get<int>(), 0);
    EXPECT_EQ(conv.at("replies").get<int64_t>(), conv.at("frames").get<int64_t>() - delay_);
    EXPECT_GE(conv.at("frames").get<int64_t>(), sent[i]);
  }
  // Stopped with four conversations live.
  EXPECT_EQ(srv.stop(), 0) << srv.output();
  const std::vector<json> closes = metrics_events(run_dir, "close");
  ASSERT_EQ(closes.size(), 5u) << mt::test::slurp(run_dir + "/metrics.jsonl");
  EXPECT_EQ(closes[0].at("conversation").get<int>(), 1);
  EXPECT_EQ(closes[0].at("why").get<std::string>().rfind("read:", 0), 0u) << closes[0].dump();
}

// Misbehaving clients, one at a time, beside a well-behaved conversation that streams throughout:
// garbage is skipped, a bad Opus packet / a text message / a bad query get an error message and a
// close, an oversized message a close with 1009; the good conversation never stalls and the server
// keeps answering.
TEST_F(Serve, BadClientsAreClosedAndTheServerKeepsServing) {
  const std::string run_dir = tmp_.file("run");
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args({"--run-dir", run_dir}), tmp_.file("serve.log")), "");
  const int port = srv.port();
  Streamer good(port, delay_);
  ASSERT_EQ(good.start(), "");
  ASSERT_TRUE(eventually([&] { return good.replies() > 20; })) << "the good conversation never got going";
  auto keeps_going = [&](int64_t before) { return eventually([&] { return good.replies() > before + 5; }); };
  auto closed_within = [](Client& c) { return c.wait([](const Inbox& in) { return in.closed; }, 20s); };

  // (a) Garbage after the kind byte is skipped; the reader resynchronises on the Ogg pages that follow,
  // even mid-message, and every one of their frames reaches the model.
  {
    std::mt19937 rng(3);
    std::string garbage(4096, '\0');
    for (auto& ch : garbage) ch = char(rng() % 256);
    std::replace(garbage.begin(), garbage.end(), 'O', 'o');  // no capture pattern ("OggS") by chance
    ASSERT_TRUE(mt::audio::OpusReader().append_bytes(reinterpret_cast<const uint8_t*>(garbage.data()), 4096).empty());
    Client c(port);
    ASSERT_EQ(c.connect(), "");
    ASSERT_TRUE(c.wait(handshake_done));
    const int64_t before = good.replies();
    c.send("\x01" + garbage);
    mt::audio::OpusWriter w;
    Voice v(200.0, 4);
    constexpr int kFrames = 25;
    for (int k = 0; k < kFrames; ++k) {
      const std::string m = audio_message(w, v);
      c.send(k == 10 ? "\x01" + garbage + m.substr(1) : m);
    }
    json conv;
    EXPECT_TRUE(eventually([&] {
      conv = conversation_of(server_status(port), c.local_port());
      return conv.is_object() && conv.at("frames").get<int64_t>() - conv.at("filled").get<int64_t>() >= kFrames;
    })) << conv.dump(2);
    if (conv.is_object())
      EXPECT_EQ(conv.at("frames").get<int64_t>() - conv.at("filled").get<int64_t>(), kFrames)
          << "frames of real audio the model got";
    const Inbox in = c.inbox();
    EXPECT_FALSE(in.closed) << in.read_error.message();
    EXPECT_TRUE(in.errors.empty()) << in.errors.front();
    EXPECT_GT(in.audio(), 0);
    EXPECT_TRUE(keeps_going(before));
    c.close();
    EXPECT_TRUE(closed_within(c));
  }
  // (b) An Opus packet libopus rejects (TOC code 3 claiming 63 frames): an error message, then a close.
  {
    const std::string bad = opus_stream_starting_with(std::string("\xFF\xFF", 2));
    EXPECT_THROW(mt::audio::OpusReader().append_bytes(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()),
                 mt::Error);
    Client c(port);
    ASSERT_EQ(c.connect(), "");
    ASSERT_TRUE(c.wait(handshake_done));
    const int64_t before = good.replies();
    c.send("\x01" + bad);
    ASSERT_TRUE(closed_within(c));
    const Inbox in = c.inbox();
    ASSERT_EQ(in.errors.size(), 1u);
    EXPECT_EQ(in.errors[0].rfind("bad audio", 0), 0u) << in.errors[0];
    EXPECT_EQ(in.close_code, int(websocket::close_code::policy_error)) << in.read_error.message();
    EXPECT_TRUE(keeps_going(before));
  }
  // (c) A 2 MiB message (the limit is 1 MiB): closed with 1009 (too big). The server may reset the
  // connection before this client's close reply goes out, so the read can end in an error.
  {
    Client c(port);
    ASSERT_EQ(c.connect(), "");
    ASSERT_TRUE(c.wait(handshake_done));
    const int64_t before = good.replies();
    c.send("\x01" + std::string(size_t(2) << 20, 'x'));
    ASSERT_TRUE(closed_within(c));
    const Inbox in = c.inbox();
    std::printf("[ bad ] 2 MiB message: read ended with '%s', close code %d\n", in.read_error.message().c_str(),
                in.close_code);
    if (in.close_code != -1) EXPECT_EQ(in.close_code, int(websocket::close_code::too_big));
    EXPECT_TRUE(in.errors.empty());
    EXPECT_TRUE(answers(server_status(port)));
    EXPECT_TRUE(keeps_going(before));
  }
  // (d) A text websocket message: an error message, then a close.
  {
    Client c(port);
    ASSERT_EQ(c.connect(), "");
    ASSERT_TRUE(c.wait(handshake_done));
    const int64_t before = good.replies();
    c.send("hello", /*text=*/true);
    ASSERT_TRUE(closed_within(c));
    const Inbox in = c.inbox();
    ASSERT_EQ(in.errors.size(), 1u);
    EXPECT_NE(in.errors[0].find("binary"), std::string::npos) << in.errors[0];
    EXPECT_EQ(in.close_code, int(websocket::close_code::policy_error)) << in.read_error.message();
    EXPECT_TRUE(keeps_going(before));
  }
  // (f) A malformed query string: refused by name before a conversation starts.
  {
    Client c(port, {.target = "/api/chat?text_temperature=%zz"});
    ASSERT_EQ(c.connect(), "");
    ASSERT_TRUE(closed_within(c));
    const Inbox in = c.inbox();
    ASSERT_EQ(in.errors.size(), 1u);
    EXPECT_NE(in.errors[0].find("query"), std::string::npos) << in.errors[0];
    EXPECT_EQ(in.kinds[0], 0);
  }

  const int64_t sent = good.stop();
  EXPECT_EQ(good.error(), "");
  Client& g = good.client();
  ASSERT_TRUE(answered(g, sent, delay_));
  const Inbox in = g.inbox();
  EXPECT_FALSE(in.closed);
  EXPECT_TRUE(in.errors.empty());
  EXPECT_EQ(in.decode_error, "");
  std::printf("[ bad ] good conversation: %lld frames sent, %lld audio replies, longest gap %.2f s\n", (long long)sent,
              (long long)in.audio(), in.max_audio_gap_s);
  EXPECT_LT(in.max_audio_gap_s, 2.0) << "the good conversation stalled while the others misbehaved";

  const json st = server_status(port);
  ASSERT_TRUE(answers(st)) << st.dump();
  EXPECT_EQ(st.value("live", -1), 1) << st.dump(2);
  EXPECT_EQ(st.value("conversations_served", -1), 5) << "the good one and (a) to (d); (f) never started";
  EXPECT_EQ(st.value("refused", -1), 0);
  const json gc = conversation_of(st, g.local_port());
  ASSERT_TRUE(gc.is_object()) << st.dump(2);
  EXPECT_EQ(gc.at("dropped").get<int>(), 0);

  g.close();
  EXPECT_TRUE(closed_within(g));
  std::vector<json> closes;
  EXPECT_TRUE(eventually([&] { return (closes = metrics_events(run_dir, "close")).size() >= 5; }));
  ASSERT_EQ(closes.size(), 5u) << mt::test::slurp(run_dir + "/metrics.jsonl");
  std::vector<std::string> why;
  for (const auto& j : closes) why.push_back(j.at("why").get<std::string>());
  // In order: (a) (b) (c) (d), then the good one.
  EXPECT_EQ(why[0], "closed by the client");
  EXPECT_EQ(why[1].rfind("bad audio", 0), 0u) << why[1];
  EXPECT_EQ(why[2].rfind("read: ", 0), 0u) << why[2];
  EXPECT_NE(why[3].find("binary"), std::string::npos) << why[3];
  EXPECT_EQ(why[4], "closed by the client");
  EXPECT_EQ(closes[4].at("dropped").get<int>(), 0);
  EXPECT_EQ(srv.stop(), 0) << srv.output();
}

// A client that sends 30 s of audio at once, then more, and never reads: its replies pile up and the
// server drops it (its writes then fail), while a well-behaved conversation goes on. The server
// drops a client after 125 unread frames of replies (10 s of audio) queued beyond its small kernel
// send buffer (16 KiB asked, which Linux doubles: about 100 more frames); the bound here is 400 replies
// of the model (32 s of audio). A small receive buffer keeps this client's own kernel from holding many.
TEST_F(Serve, AClientThatNeverReadsIsDropped) {
  const std::string run_dir = tmp_.file("run");
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args({"--run-dir", run_dir}), tmp_.file("serve.log")), "");
  const int port = srv.port();
  Streamer good(port, delay_);
  ASSERT_EQ(good.start(), "");
  ASSERT_TRUE(eventually([&] { return good.replies() > 20; })) << "the good conversation never got going";
  const int64_t before = good.replies();

  Client flood(port, {.read = false, .receive_buffer = 4096});
  ASSERT_EQ(flood.connect(), "");
  mt::audio::OpusWriter w;
  Voice v(120.0, 6);
  const auto t0 = Clock::now();
  int64_t n = 0;
  for (; n < 375; ++n) flood.send(audio_message(w, v));
  // Then four times real time, so that its queue at the server never runs dry and the batch keeps
  // stepping at the good conversation's pace.
  int64_t replies = 0;
  auto last_check = Clock::now();
  while (!flood.inbox().write_error && replies <= 400 && seconds_since(t0) < 60) {
    flood.send(audio_message(w, v));
    ++n;
    std::this_thread::sleep_for(20ms);
    if (Clock::now() - last_check > 250ms) {
      last_check = Clock::now();
      const json conv = conversation_of(server_status(port), flood.local_port());
      if (conv.is_object()) replies = conv.at("replies").get<int64_t>();
    }
  }
  const Inbox in = flood.inbox();
  std::printf("[ never reads ] after %.1f s: %lld frames sent, %lld written, %lld replies made for it, %s\n",
              seconds_since(t0), (long long)n, (long long)in.written, (long long)replies,
              in.write_error ? ("dropped: " + in.write_error.message()).c_str() : "not dropped");
  EXPECT_TRUE(in.write_error) << "not dropped after " << replies << " replies (" << double(replies) * kFrameS
                              << " s of audio) made for a client that reads none";
  EXPECT_TRUE(answers(server_status(port)));
  EXPECT_TRUE(eventually([&] { return good.replies() > before + 10; }));
  const int64_t sent = good.stop();
  EXPECT_EQ(good.error(), "");
  ASSERT_TRUE(answered(good.client(), sent, delay_));
  const Inbox g = good.client().inbox();
  std::printf("[ never reads ] good conversation: %lld frames sent, %lld audio replies, longest gap %.2f s\n",
              (long long)sent, (long long)g.audio(), g.max_audio_gap_s);
  EXPECT_LT(g.max_audio_gap_s, 2.0) << "the good conversation stalled";
  EXPECT_FALSE(g.closed);
  const json gc = conversation_of(server_status(port), good.client().local_port());
  ASSERT_TRUE(gc.is_object());
  EXPECT_EQ(gc.at("dropped").get<int>(), 0);
  if (in.write_error) {
    const std::vector<json> closes = metrics_events(run_dir, "close");
    ASSERT_EQ(closes.size(), 1u) << mt::test::slurp(run_dir + "/metrics.jsonl");
    EXPECT_NE(closes[0].at("why").get<std::string>().find("does not read"), std::string::npos) << closes[0].dump();
    EXPECT_GT(closes[0].at("dropped").get<int>(), 0) << "30 s at once overflows the 4 s queue";
  }
  EXPECT_EQ(srv.stop(), 0) << srv.output();
}

// The HTTP side: the status JSON, a static folder at /, no way out of it.
TEST_F(Serve, StatusAndStaticRoutes) {
  const fs::path web = tmp_.path / "web";
  fs::create_directories(web / "sub");
  const std::string index = "<!doctype html><title>moshi-ttt test</title>\n", app = "console.log('moshi');\n";
  std::ofstream(web / "index.html") << index;
  std::ofstream(web / "app.js") << app;
  std::ofstream(web / "sub" / "index.html") << "sub";
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args({"--static", web.string(), "--max-conversations", "3"}), tmp_.file("serve.log")), "");
  const int port = srv.port();
  EXPECT_NE(srv.output().find("client: " + web.string() + " at /"), std::string::npos) << srv.output();

  HttpReply r = http_request(port, "/");
  EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(r.content_type, "text/html");
  EXPECT_EQ(r.body, index);
  r = http_request(port, "/app.js?v=2");
  EXPECT_EQ(r.status, 200) << r.error;
  EXPECT_EQ(r.content_type, "application/javascript");
  EXPECT_EQ(r.body, app);
  r = http_request(port, "/sub/");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "sub");
  for (const char* target : {"/../etc/passwd", "/sub/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2fetc"}) {
    r = http_request(port, target);
    EXPECT_TRUE(r.status == 400 || r.status == 404) << target << ": " << r.status;
    EXPECT_EQ(r.body.find("root:"), std::string::npos) << target;
  }
  EXPECT_EQ(http_request(port, "/missing.css").status, 404);
  EXPECT_EQ(http_request(port, "/api/status", nullptr, http::verb::post).status, 405);

  r = http_request(port, "/api/status");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/json");
  const json st = json::parse(r.body, nullptr, false);
  ASSERT_TRUE(st.is_object()) << r.body;
  EXPECT_EQ(st.value("max_conversations", -1), 3);
  EXPECT_EQ(st.value("live", -1), 0);
  EXPECT_EQ(st.value("conversations_served", -1), 0);
  EXPECT_EQ(st.value("refused", -1), 0);
  EXPECT_DOUBLE_EQ(st.value("frame_ms", 0.0), 80.0);
  EXPECT_GT(st.value("rss_mb", 0.0), 0.0);
  EXPECT_TRUE(st.at("conversations").is_array());
  {
    Client elsewhere(port, {.target = "/not-chat"});
    const std::string err = elsewhere.connect();
    EXPECT_NE(err.find("404"), std::string::npos) << err;
  }
  EXPECT_EQ(srv.stop(), 0) << srv.output();

  ServeProcess bare;
  ASSERT_EQ(bare.start(serve_args(), tmp_.file("bare.log")), "");
  EXPECT_EQ(http_request(bare.port(), "/").status, 404);
  EXPECT_EQ(http_request(bare.port(), "/index.html").status, 404);
  EXPECT_EQ(server_status(bare.port()).value("max_conversations", -1), 4);
  EXPECT_EQ(bare.stop(), 0) << bare.output();
}

// https and wss from --ssl DIR (a self-signed pair); a folder without the pair is one clear error.
TEST_F(Serve, TlsWithSslDir) {
  std::string out;
  if (mt::test::run("command -v openssl", &out) != 0) GTEST_SKIP() << "no openssl command";
  const fs::path certs = tmp_.path / "certs";
  fs::create_directories(certs);
  ASSERT_EQ(mt::test::run("cd " + certs.string() +
                              " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                              "-keyout key.pem -out cert.pem",
                          &out),
            0)
      << out;
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args({"--ssl", certs.string()}), tmp_.file("serve.log")), "");
  const int port = srv.port();
  EXPECT_EQ(srv.url().rfind("wss://", 0), 0u) << srv.url();
  EXPECT_NE(srv.output().find("(status: https://"), std::string::npos) << srv.output();

  ssl::context ctx(ssl::context::tls_client);
  ctx.set_verify_mode(ssl::verify_none);  // self-signed
  const json st = server_status(port, &ctx);
  EXPECT_EQ(st.value("max_conversations", -1), 4) << st;
  {
    Client plain(port);
    EXPECT_NE(plain.connect(), "") << "a plain websocket to the TLS port";
  }
  Client c(port, {.tls = &ctx});
  ASSERT_EQ(c.connect(), "");
  ASSERT_TRUE(c.wait(handshake_done));
  EXPECT_EQ(c.inbox().first_kinds, (std::vector<int>{4, 0}));
  mt::audio::OpusWriter w;
  Voice v(160.0, 2);
  int64_t sent = 0;
  ASSERT_EQ(stream(c, w, v, 10, delay_, sent), "");
  ASSERT_TRUE(answered(c, sent, delay_));
  const Inbox in = c.inbox();
  EXPECT_EQ(in.audio(), sent - delay_);
  EXPECT_EQ(in.samples, in.audio() * kFrame);
  EXPECT_EQ(in.decode_error, "");
  EXPECT_GT(in.rms(), 1e-4);
  EXPECT_TRUE(answers(server_status(port, &ctx)));
  // Stopped with a TLS conversation live.
  EXPECT_EQ(srv.stop(), 0) << srv.output();

  const fs::path empty = tmp_.path / "empty";
  fs::create_directories(empty);
  std::string cmd = mt::test::cli() + " serve --port 0 --host 127.0.0.1 --ssl " + empty.string();
  for (const auto& a : model_args()) cmd += " " + a;
  const int rc = mt::test::run(cmd, &out);
  EXPECT_NE(rc, 0) << out;
  const auto lines = lines_of(out);
  EXPECT_EQ(lines.size(), 1u) << out;
  EXPECT_NE(out.find("cert.pem"), std::string::npos) << out;
}

// Four conversations stream speech-like audio faster than real time (at most 10 frames unanswered
// each, far from the 50-frame queue cap); the server's memory must stay flat between 10% of the
// audio and the end, no frame may be dropped and every frame gets its reply.
void Serve::soak(double seconds, double max_growth_mb) {
  const std::string run_dir = tmp_.file("run");
  ServeProcess srv;
  ASSERT_EQ(srv.start(serve_args({"-q", "--run-dir", run_dir}), tmp_.file("serve.log")), "");
  const int port = srv.port();
  constexpr int kN = 4;
  const int64_t frames = std::llround(seconds / kFrameS);
  std::vector<std::unique_ptr<Client>> c;
  for (int i = 0; i < kN; ++i) {
    c.push_back(std::make_unique<Client>(port));
    ASSERT_EQ(c[i]->connect(), "");
    ASSERT_TRUE(c[i]->wait(handshake_done));
  }
  std::vector<int64_t> sent(kN, 0);
  std::vector<std::string> err(kN);
  std::vector<std::thread> t;
  const auto t0 = Clock::now();
  for (int i = 0; i < kN; ++i)
    t.emplace_back([&, i] {
      mt::audio::OpusWriter w;
      Voice v(100.0 + 40 * i, uint32_t(10 + i));
      err[i] = stream(*c[i], w, v, frames, delay_, sent[i]);
      if (err[i].empty() && !answered(*c[i], sent[i], delay_)) err[i] = "not every frame answered";
    });
  // RSS at every tenth of the audio (the slowest conversation's frames).
  std::vector<double> rss;
  for (int tenth = 1; tenth <= 9; ++tenth) {
    json st;
    const bool reached = eventually(
        [&] {
          st = server_status(port);
          if (st.value("conversations", json::array()).size() < kN) return false;
          for (const auto& conv : st.at("conversations"))
            if (conv.at("frames").get<int64_t>() < frames * tenth / 10) return false;
          return true;
        },
        std::chrono::seconds(60 + int64_t(seconds)));
    if (!reached) break;
    rss.push_back(st.at("rss_mb").get<double>());
    std::printf("[ soak ] %d0%% after %.1f s: rss %.1f MB\n", tenth, seconds_since(t0), rss.back());
    std::fflush(stdout);
  }
  for (auto& x : t) x.join();
  const double wall = seconds_since(t0);
  for (int i = 0; i < kN; ++i) EXPECT_EQ(err[i], "") << "client " << i;
  ASSERT_EQ(rss.size(), 9u) << "the conversations did not get through their audio";

  const json st = server_status(port);
  ASSERT_TRUE(answers(st)) << st.dump();
  const double rss_end = st.at("rss_mb").get<double>();
  int64_t total = 0;
  for (int i = 0; i < kN; ++i) {
    const Inbox in = c[i]->inbox();
    total += sent[i];
    EXPECT_EQ(sent[i], frames);
    EXPECT_GE(in.audio(), sent[i] - delay_) << "client " << i;
    EXPECT_EQ(in.decode_error, "");
    EXPECT_GT(in.rms(), 1e-4);
    const json conv = conversation_of(st, c[i]->local_port());
    ASSERT_TRUE(conv.is_object()) << st.dump(2);
    EXPECT_EQ(conv.at("dropped").get<int64_t>(), 0) << conv.dump();
    std::printf(
        "[ soak ] conversation %lld: %lld frames, %lld replies, %lld filled, %lld late, p50 %.1f ms, p99 "
        "%.1f ms, max %.1f ms\n",
        (long long)conv.at("conversation").get<int64_t>(), (long long)conv.at("frames").get<int64_t>(),
        (long long)conv.at("replies").get<int64_t>(), (long long)conv.at("filled").get<int64_t>(),
        (long long)conv.at("late").get<int64_t>(), conv.at("p50_ms").get<double>(), conv.at("p99_ms").get<double>(),
        conv.at("max_ms").get<double>());
  }
  const double growth = rss_end - rss.front();
  std::printf(
      "[ soak ] %d conversations x %.0f s of audio: %lld frames in %.1f s = %.0f frames/s (%.1fx real time "
      "each), %lld steps; rss at 10%% %.1f MB, at the end %.1f MB, growth %.1f MB\n",
      kN, seconds, (long long)total, wall, double(total) / wall, double(frames) * kFrameS / wall,
      (long long)st.at("frames").get<int64_t>(), rss.front(), rss_end, growth);
  EXPECT_LT(growth, max_growth_mb);

  for (auto& x : c) x->close();
  EXPECT_TRUE(eventually([&] { return server_status(port).value("live", -1) == 0; }));
  EXPECT_EQ(srv.stop(), 0) << srv.output();
  const std::vector<json> closes = metrics_events(run_dir, "close");
  ASSERT_EQ(closes.size(), size_t(kN));
  for (const auto& j : closes) {
    EXPECT_EQ(j.at("dropped").get<int64_t>(), 0) << j.dump();
    EXPECT_GE(j.at("frames").get<int64_t>(), frames);
  }
}

TEST_F(Serve, SoakShort) { soak(60, 32); }

// Label `slow` (tests/CMakeLists.txt): scripts/test.sh runs it only with --slow.
TEST_F(Serve, SoakHour) { soak(3600, 64); }
