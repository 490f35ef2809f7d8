// moshi-ttt serve: live conversations over Kyutai's websocket protocol, several batched on one model.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "app/duplex.h"
#include "mimi/mimi.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "text/tokenizer.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::cli {

namespace {
struct ServeOpts {
  ModelArgs model;
  SamplingArgs sampling;
  std::string mimi, mimi_config, tokenizer;
  serve::ServerConfig server;
  serve::EngineConfig engine;
  int64_t max_conversations = 4;
  std::string run_dir;
  bool quiet = false;
};

int run_serve(const ServeOpts& opts) {
  ServeOpts o = opts;
  o.model.repo_files(o.mimi, o.tokenizer);  // --hf-repo supplies the codec and tokenizer, as Kyutai's server
  MT_CHECK(!o.mimi.empty(), "serve needs --mimi WEIGHTS.safetensors (the codec) or --hf-repo");
  MT_CHECK(o.max_conversations >= 1 && o.max_conversations <= 256, "--max-conversations must be in [1, 256], got ",
           o.max_conversations);
  MT_CHECK(o.server.static_dir.empty() || fs::is_directory(o.server.static_dir), "--static ", o.server.static_dir,
           ": not a folder");
  std::string origin, sampling_origin = "command line";
  lm::LMModel model = o.model.build(&origin);
  serve::ServerConfig sc = o.server;
  sc.sampling = o.sampling.resolve(o.model, &sampling_origin);
  sc.model_name = origin;
  sc.quiet = o.quiet;
  std::unique_ptr<text::Tokenizer> tok;
  if (!o.tokenizer.empty()) tok = std::make_unique<text::Tokenizer>(o.tokenizer);
  serve::EngineConfig ec = o.engine;
  ec.quiet = o.quiet;
  if (!o.run_dir.empty()) {
    fs::create_directories(o.run_dir);
    ec.metrics_path = (fs::path(o.run_dir) / "metrics.jsonl").string();
  }
  auto duplex = std::make_unique<app::Duplex>(model, mimi::load_mimi(o.mimi, o.mimi_config), sc.sampling,
                                              o.max_conversations, o.mimi);
  serve::Engine engine(std::move(duplex), ec);
  serve::Server server(engine, tok.get(), sc);
  std::printf("model: %s; %lld conversations at most, batched; sampling from %s\n", origin.c_str(),
              (long long)o.max_conversations, sampling_origin.c_str());
  std::printf("listening on %s (status: %s//%s:%d/api/status)%s\n", server.url().c_str(),
              o.server.ssl_dir.empty() ? "http:" : "https:", o.server.host.c_str(), server.port(),
              o.server.static_dir.empty() ? "" : (", client: " + o.server.static_dir + " at /").c_str());
  std::fflush(stdout);
  server.run();
  std::printf("stopped\n");
  return 0;
}
}  // namespace

void add_serve(CLI::App& app) {
  auto o = std::make_shared<ServeOpts>();
  auto* sub = app.add_subcommand(
      "serve", "talk to a model live: Kyutai's websocket protocol (/api/chat), several conversations batched");
  o->model.add(sub);
  o->sampling.add(sub);
  sub->add_option("--mimi", o->mimi, "Mimi weights (.safetensors)");
  sub->add_option("--mimi-config", o->mimi_config, "Mimi config JSON (default: the released model)");
  sub->add_option("--tokenizer", o->tokenizer, "SentencePiece model: text goes out as words (else as token ids)");
  sub->add_option("--host", o->server.host, "address to listen on")->capture_default_str();
  sub->add_option("--port", o->server.port, "port (0: any free one)")->capture_default_str();
  sub->add_option("--static", o->server.static_dir, "serve this client folder at / (Kyutai's web client build)");
  sub->add_option("--ssl", o->server.ssl_dir, "folder with cert.pem and key.pem: https and wss");
  sub->add_option("--max-conversations", o->max_conversations, "conversations at once (batch slots)")
      ->capture_default_str();
  sub->add_option("--max-wait-ms", o->engine.max_wait_ms,
                  "how long a frame waits for the other conversations' audio before a late one gets silence")
      ->capture_default_str();
  sub->add_option("--max-message-bytes", o->server.max_message_bytes, "largest client message accepted")
      ->capture_default_str();
  sub->add_option("--run-dir", o->run_dir, "write metrics.jsonl (per-conversation frame times) here");
  sub->add_flag("-q,--quiet", o->quiet, "no connection lines");
  set_handler(sub, [o]() { return run_serve(*o); });
}

}  // namespace mt::cli
