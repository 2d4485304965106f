// T5 prompt tokenization with the bundle's sentencepiece model (model.text_encoder.SpieceTokenizer):
// ids = sentencepiece ids + EOS (1), padding id 0, attention mask 1 on real tokens.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "latentfuse/tensor.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace latentfuse {

class Tokenizer {
 public:
  static constexpr int64_t kPadId = 0, kEosId = 1;

  explicit Tokenizer(const std::filesystem::path& model);
  ~Tokenizer();

  // Token ids of one prompt, EOS appended.
  std::vector<int64_t> ids(const std::string& prompt) const;

  // (input_ids, attention_mask) int64 [1, L] with L = the prompt's length; an Error when it exceeds
  // max_length tokens (the text graph's limit).
  std::pair<Tensor, Tensor> encode(const std::string& prompt, int max_length) const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string source_;
};

}  // namespace latentfuse
