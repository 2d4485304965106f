#include "latentfuse/tokenizer.hpp"

#include <sentencepiece_processor.h>

namespace latentfuse {

Tokenizer::Tokenizer(const std::filesystem::path& model)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()), source_(model.string()) {
  if (!std::filesystem::is_regular_file(model)) throw Error("sentencepiece model not found: " + source_);
  const auto status = sp_->Load(source_);
  if (!status.ok()) throw Error(source_ + " is not a sentencepiece model: " + status.ToString());
  if (sp_->pad_id() != kPadId || sp_->eos_id() != kEosId)
    throw Error(source_ + ": a T5 tokenizer needs pad id 0 and eos id 1, this model has pad " +
                std::to_string(sp_->pad_id()) + " and eos " + std::to_string(sp_->eos_id()));
}

Tokenizer::~Tokenizer() = default;

std::vector<int64_t> Tokenizer::ids(const std::string& prompt) const {
  std::vector<int> pieces;
  const auto status = sp_->Encode(prompt, &pieces);
  if (!status.ok()) throw Error("cannot tokenize the prompt: " + status.ToString());
  std::vector<int64_t> out(pieces.begin(), pieces.end());
  out.push_back(kEosId);
  return out;
}

std::pair<Tensor, Tensor> Tokenizer::encode(const std::string& prompt, int max_length) const {
  std::vector<int64_t> tokens = ids(prompt);
  const auto n = static_cast<int64_t>(tokens.size());
  if (n > max_length)
    throw Error("the prompt is " + std::to_string(n) + " tokens (EOS included), over the text graph's limit of " +
                std::to_string(max_length) + "; shorten it");
  return {Tensor::from_int64({1, n}, std::move(tokens)), Tensor::from_int64({1, n}, std::vector<int64_t>(n, 1))};
}

}  // namespace latentfuse
