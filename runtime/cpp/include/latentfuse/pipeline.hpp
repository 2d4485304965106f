// One fuse call end to end, as runtime/pipeline.py does it: read, enlarge by the working scale + pad
// the pair, VAE-encode both, prompt -> embedding (bundle prompt cache, else tokenizer + text_encoder
// graph), sampler over the flow DiT (or one regression call), VAE-decode, crop back, shrink; a pair
// larger than the model's window runs in overlapping windows (tiling.hpp); per-stage wall times.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "latentfuse/backend.hpp"
#include "latentfuse/bundle.hpp"
#include "latentfuse/image.hpp"
#include "latentfuse/tokenizer.hpp"

namespace latentfuse {

struct FuseOptions {
  std::string task = "vif";
  std::optional<std::string> prompt;   // default: the task's canonical prompt
  std::string mode = "flow";           // flow | regression
  std::optional<std::string> sampler;  // default: the manifest's
  std::optional<int> steps;            // default: the manifest's
  std::optional<double> g;             // default: the manifest's for SDE samplers, 0 otherwise
  std::optional<std::string> prior;    // default: the manifest's (the flow DiT's training prior)
  uint64_t seed = 0;
};

// Milliseconds per stage (runtime/latency.py STAGES) plus the total of the call.
struct StageTimes {
  double vae_enc = 0, t5 = 0, dit = 0, vae_dec = 0, total = 0;
  int nfe = 0;
  bool cache_hit = false;
};

struct FuseResult {
  Image image;
  int nfe = 0;
  std::string sampler;
  StageTimes times;
  int window_calls = 0;  // network calls made on windows (0: the pair ran whole)
};

class Pipeline {
 public:
  Pipeline(Bundle bundle, std::unique_ptr<Runner> runner);

  FuseResult fuse(const std::filesystem::path& a, const std::filesystem::path& b, const FuseOptions& options);

  // (embeds [1, L, d], mask [1, L], cache_hit) for a prompt.
  std::tuple<Tensor, Tensor, bool> encode_prompt(const std::string& prompt);
  std::string default_prompt(const std::string& task) const;

  const Bundle& bundle() const { return bundle_; }
  Runner& runner() { return *runner_; }

 private:
  std::vector<Tensor> run(const std::string& graph, const std::map<std::string, Tensor>& feeds);

  Bundle bundle_;
  std::unique_ptr<Runner> runner_;
  std::map<std::string, PromptEmbedding> cache_;
  std::unique_ptr<Tokenizer> tokenizer_;  // loaded on the first prompt the cache misses
};

// The latency table (median over runs), in the layout runtime/latency.py prints.
std::string format_latency(const std::vector<StageTimes>& runs, const std::string& label);

}  // namespace latentfuse
