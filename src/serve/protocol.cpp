#include "serve/protocol.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "text/tokenizer.h"
#include "util/error.h"
#include "util/runtime.h"

namespace mt::serve {

std::string message(MsgKind kind, const std::string& payload) {
  std::string m(1, static_cast<char>(kind));
  return m + payload;
}

namespace {
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%') {
      MT_CHECK(i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0,
               "query string: malformed escape in '", s, "'");
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

double number(const std::map<std::string, std::string>& q, const std::string& key, double lo, double hi) {
  const std::string& v = q.at(key);
  errno = 0;
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  MT_CHECK(!v.empty() && end == v.c_str() + v.size() && errno == 0 && std::isfinite(d), "query parameter ", key, "='",
           v, "' is not a number");
  MT_CHECK(d >= lo && d <= hi, "query parameter ", key, "=", v, " is out of range [", lo, ", ", hi, "]");
  return d;
}

uint64_t unsigned_integer(const std::map<std::string, std::string>& q, const std::string& key) {
  const std::string& v = q.at(key);
  errno = 0;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  MT_CHECK(!v.empty() && v[0] != '-' && end == v.c_str() + v.size() && errno == 0, "query parameter ", key, "='", v,
           "' is not a non-negative integer");
  return n;
}
}  // namespace

std::map<std::string, std::string> parse_query(const std::string& query) {
  std::map<std::string, std::string> out;
  size_t start = 0;
  while (start <= query.size()) {
    size_t amp = query.find('&', start);
    if (amp == std::string::npos) amp = query.size();
    const std::string part = query.substr(start, amp - start);
    if (!part.empty()) {
      const size_t eq = part.find('=');
      out[percent_decode(part.substr(0, eq))] = eq == std::string::npos ? "" : percent_decode(part.substr(eq + 1));
    }
    start = amp + 1;
  }
  return out;
}

lm::SamplingConfig session_sampling(const std::map<std::string, std::string>& q, const lm::SamplingConfig& base,
                                    uint64_t fallback_seed) {
  lm::SamplingConfig s = base;
  auto has = [&](const char* k) { return q.count(k) > 0; };
  // Ranges: the web client's sliders are narrower; these only keep out values that break sampling.
  if (has("text_temperature")) s.temp_text = number(q, "text_temperature", 0, 100);
  if (has("audio_temperature")) s.temp = number(q, "audio_temperature", 0, 100);
  if (has("text_topk")) s.top_k_text = static_cast<int64_t>(unsigned_integer(q, "text_topk"));
  if (has("audio_topk")) s.top_k = static_cast<int64_t>(unsigned_integer(q, "audio_topk"));
  s.seed = has("text_seed") ? unsigned_integer(q, "text_seed") : fallback_seed;
  if (has("audio_seed")) s.audio_seed = unsigned_integer(q, "audio_seed");
  if (has("pad_mult")) s.pad_mult = number(q, "pad_mult", -100, 100);
  if (has("repetition_penalty_context") && has("repetition_penalty")) {
    s.repetition_context = static_cast<int64_t>(unsigned_integer(q, "repetition_penalty_context"));
    s.repetition_penalty = number(q, "repetition_penalty", 1e-3, 1e3);
  }
  // A temperature of 0 means argmax, as in Kyutai's LMGen.
  s.validate();
  return s;
}

namespace {
// The web client validates metadata against the Rust server's build_info (ten strings) and shows
// nothing when one is missing; the Rust-specific ones stay empty.
nlohmann::json build_info_json() {
  const std::string info = build_info();
  const std::string first = info.substr(0, info.find('\n'));  // "moshi-ttt 0.1.0 (git abc1234)"
  const size_t git = first.find("(git ");
  const std::string hash = git == std::string::npos ? "" : first.substr(git + 5, first.find(')', git) - git - 5);
  nlohmann::json j;
  for (const char* k : {"build_timestamp", "build_date", "git_branch", "git_timestamp", "git_date", "rustc_host_triple",
                        "rustc_version", "cargo_target_triple"})
    j[k] = "";
  j["git_hash"] = hash;
  j["git_describe"] = first;
  return j;
}
}  // namespace

nlohmann::json session_metadata(const lm::SamplingConfig& s, const std::string& model_name,
                                const std::string& instance_name) {
  return {{"text_temperature", s.temp_text},
          {"text_topk", s.top_k_text},
          {"audio_temperature", s.temp},
          {"audio_topk", s.top_k},
          {"pad_mult", s.pad_mult},
          {"repetition_penalty_context", s.repetition_context},
          {"repetition_penalty", s.repetition_penalty},
          {"lm_model_file", model_name},
          {"instance_name", instance_name},
          {"build_info", build_info_json()}};
}

TextPieces::TextPieces(const lm::LMConfig& c, const text::Tokenizer* tokenizer)
    : pad_(c.existing_text_padding_id.value_or(-100)),
      epad_(c.existing_text_end_padding_id),
      start_(c.initial_text_token()),
      tokenizer_(tokenizer) {}

std::string TextPieces::next(int64_t id) {
  if (id < 0 || id == pad_ || id == epad_ || id == start_) return "";
  if (!tokenizer_) return " " + std::to_string(id);
  std::string piece;
  const std::string cur = tokenizer_->decode({static_cast<int>(id)});
  if (previous_ >= 0) {
    const std::string& before = previous_text_;
    const std::string both = tokenizer_->decode({static_cast<int>(previous_), static_cast<int>(id)});
    piece = both.compare(0, before.size(), before) == 0 ? both.substr(before.size()) : cur;
  } else {
    // The first word of a turn: SentencePiece drops a leading word boundary when decoding alone.
    const std::string p = tokenizer_->piece(static_cast<int>(id));
    piece = p.rfind("\xE2\x96\x81", 0) == 0 ? " " + cur : cur;
  }
  previous_ = id;
  previous_text_ = cur;
  return piece;
}

}  // namespace mt::serve
