#pragma once
// SentencePiece text tokenizer as Moshi uses it (spec section 3): words are tokenised one at a
// time, stripped, split on "\n", each line encoded and the lines joined with the newline piece
// (the last id of encode("\n")), no BOS/EOS.
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mt::text {

class Tokenizer {
 public:
  // Loads a SentencePiece .model file; throws mt::Error naming the path (with SentencePiece's
  // reason) when it cannot.
  explicit Tokenizer(const std::string& model_path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Plain SentencePiece encoding of a text (no newline handling, no BOS).
  std::vector<int> encode(const std::string& text) const;
  // Moshi's tokenize(word.strip(), bos=False): ASCII whitespace stripped from both ends, then split
  // on "\n", each line encoded, lines joined with newline_piece(). An empty word gives no tokens.
  // If the model encodes "\n" to nothing (newline_piece() < 0), lines are joined without separator.
  std::vector<int> encode_word(const std::string& word) const;
  // Text of the ids; throws for an id outside [0, vocab_size()).
  std::string decode(const std::vector<int>& ids) const;

  int vocab_size() const;
  // The piece string of an id (e.g. "<unk>", "▁hello"); throws when out of range.
  std::string piece(int id) const;
  // Id of the newline piece (last id of encode("\n")), or -1 if "\n" encodes to nothing.
  int newline_piece() const { return newline_piece_; }
  const std::string& path() const { return path_; }

 private:
  void check_id(int id, const char* what) const;
  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int newline_piece_ = -1;
};

// Python's str.strip() for ASCII whitespace (" \t\n\r\v\f" and \x1c-\x1f).
std::string strip(const std::string& s);

}  // namespace mt::text
