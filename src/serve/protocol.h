#pragma once
// Kyutai's live conversation protocol (`/api/chat`, the websocket that `python -m moshi.server`, the
// Rust `moshi-backend` and their web and Python clients speak): the first byte of every binary
// message is its kind; the session's sampling comes from the query string as the Rust server reads it.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <map>
#include <string>

#include "lm/lm_gen.h"

namespace mt::text {
class Tokenizer;
}

namespace mt::serve {

// Message kinds (first byte). Clients throw on kinds above 7, so a server sends only these.
enum class MsgKind : uint8_t {
  kHandshake = 0,    // server -> client on connect; the web client starts its microphone after it
  kAudio = 1,        // Ogg pages of Opus, 24 kHz mono, both ways
  kText = 2,         // UTF-8 text piece, server -> client
  kControl = 3,      // unused in full streaming
  kMetadata = 4,     // UTF-8 JSON: the session's settings (the web client shows them)
  kError = 5,        // UTF-8 text
  kPing = 6,         // unused
  kColoredText = 7,  // unused by servers
};

std::string message(MsgKind kind, const std::string& payload = "");

// Query string -> key/value map (percent-decoding, '+' as space); a malformed escape is an error.
std::map<std::string, std::string> parse_query(const std::string& query);

// The session's sampling: `base` (the server's defaults) overridden by the Rust server's parameters
// text_temperature, text_topk, audio_temperature, audio_topk, text_seed, audio_seed, pad_mult,
// repetition_penalty_context, repetition_penalty (the penalty applies only when both are given, as
// there). Unknown parameters are ignored (the web client adds its own); a bad value is an error naming
// the parameter. Without text_seed the seed is `fallback_seed` (a new one per conversation).
lm::SamplingConfig session_sampling(const std::map<std::string, std::string>& query, const lm::SamplingConfig& base,
                                    uint64_t fallback_seed);

// The metadata message's JSON: the session's values under the names the web client validates.
nlohmann::json session_metadata(const lm::SamplingConfig& s, const std::string& model_name,
                                const std::string& instance_name);

// Text tokens -> the pieces to send. With a tokenizer each piece is what decoding [previous, current]
// adds to decoding [previous], so spacing and byte-fallback pieces come out right; without one, the
// id in decimal after a space. Padding, end of padding, the start token and -2/-1 give nothing.
class TextPieces {
 public:
  TextPieces(const lm::LMConfig& cfg, const text::Tokenizer* tokenizer);
  std::string next(int64_t id);
  void reset() { previous_ = -1; }

 private:
  int64_t pad_, epad_, start_;
  const text::Tokenizer* tokenizer_;
  int64_t previous_ = -1;
  std::string previous_text_;  // decode({previous_}): the last call's, not decoded again
};

}  // namespace mt::serve
