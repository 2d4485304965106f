// Token ids of the shipped sentencepiece model against model.text_encoder.SpieceTokenizer
// (tests/vectors/tokenizer.json), and the prompt-length limit.
#include "check.hpp"
#include "latentfuse/tokenizer.hpp"

using namespace latentfuse;

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const auto v = check::load(argv[1]);
  Tokenizer tok(argv[2]);
  for (const auto& cs : v["cases"]) {
    const auto ids = tok.ids(cs["prompt"].get<std::string>());
    check::expect(ids == cs["ids"].get<std::vector<int64_t>>(), "ids of '" + cs["prompt"].get<std::string>() + "'");
  }
  const std::string prompt = v["cases"][0]["prompt"];
  const auto n = static_cast<int>(tok.ids(prompt).size());
  auto [ids, mask] = tok.encode(prompt, n);
  check::expect(ids.shape == std::vector<int64_t>{1, n} && mask.i == std::vector<int64_t>(n, 1), "encode shape / mask");
  check::expect(ids.i.back() == Tokenizer::kEosId, "EOS last");
  bool threw = false;
  try {
    tok.encode(prompt, n - 1);
  } catch (const Error& err) {
    threw = std::string(err.what()).find("limit") != std::string::npos;
  }
  check::expect(threw, "a prompt over max_length is an error");
  threw = false;
  try {
    Tokenizer bad(argv[1]);  // a JSON file is not a sentencepiece model
  } catch (const Error&) {
    threw = true;
  }
  check::expect(threw, "a non-sentencepiece file is an error");
  return check::finish("test_tokenizer");
}
