#include "text/tokenizer.h"

#include <sentencepiece_processor.h>

#include "io/hub.h"
#include "util/error.h"

namespace mt::text {

namespace {
bool is_py_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }
}  // namespace

std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_py_space(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && is_py_space(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

Tokenizer::Tokenizer(const std::string& model)
    : path_(io::hub::resolve(model)), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const std::string& model_path = path_;  // Kyutai's hf:// and file:// forms resolved
  const auto status = sp_->Load(model_path);
  MT_CHECK(status.ok(), model_path, ": cannot load SentencePiece model: ", status.ToString());
  MT_CHECK(sp_->GetPieceSize() > 0, model_path, ": SentencePiece model has no pieces");
  const std::vector<int> nl = encode("\n");
  newline_piece_ = nl.empty() ? -1 : nl.back();
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  MT_CHECK(status.ok(), path_, ": cannot encode \"", text, "\": ", status.ToString());
  return ids;
}

std::vector<int> Tokenizer::encode_word(const std::string& word) const {
  const std::string w = strip(word);
  std::vector<int> out;
  size_t begin = 0;
  for (bool first = true;; first = false) {
    const size_t nl = w.find('\n', begin);
    const std::string line = w.substr(begin, nl == std::string::npos ? std::string::npos : nl - begin);
    if (!first && newline_piece_ >= 0) out.push_back(newline_piece_);
    const std::vector<int> ids = encode(line);
    out.insert(out.end(), ids.begin(), ids.end());
    if (nl == std::string::npos) break;
    begin = nl + 1;
  }
  return out;
}

void Tokenizer::check_id(int id, const char* what) const {
  MT_CHECK(id >= 0 && id < vocab_size(), path_, ": ", what, ": token id ", id, " outside [0, ", vocab_size(), ")");
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids) check_id(id, "decode");
  std::string text;
  const auto status = sp_->Decode(ids, &text);
  MT_CHECK(status.ok(), path_, ": cannot decode ", ids.size(), " ids: ", status.ToString());
  return text;
}

int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::string Tokenizer::piece(int id) const {
  check_id(id, "piece");
  return sp_->IdToPiece(id);
}

}  // namespace mt::text
