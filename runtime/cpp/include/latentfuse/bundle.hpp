// The deployment bundle as a C++ host reads it: manifest.json (format "latentfuse-bundle", documented
// in export/bundle.py), every listed file checked for size and sha256 (OpenSSL), the prompt cache
// (safetensors), graph interfaces and defaults.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "latentfuse/detail.hpp"
#include "latentfuse/tensor.hpp"

namespace latentfuse {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Lower-case hex sha256 of a file's bytes (OpenSSL EVP).
std::string sha256_file(const fs::path& path);

struct TensorInfo {
  std::string name;
  std::string dtype;               // float32 | int64 | float16 | ...
  std::vector<std::string> shape;  // dims as strings: "3" or a symbol ("batch", "height", ...)
};

struct GraphInfo {
  std::string name, kind, head, file;
  std::vector<TensorInfo> inputs, outputs;
};

struct PromptEmbedding {
  Tensor embeds;  // [1, L, d] float32
  Tensor mask;    // [1, L] int64
};

class Bundle {
 public:
  // Reads and checks the manifest; with verify_hashes every listed file's sha256 is recomputed, so a
  // missing or tampered file is an Error naming it.
  static Bundle open(const fs::path& root, bool verify_hashes = true);

  const fs::path& root() const { return root_; }
  const json& manifest() const { return manifest_; }

  const GraphInfo& graph(const std::string& name) const;
  bool has_graph(const std::string& name) const { return graphs_.count(name) > 0; }
  std::vector<std::string> heads() const;
  std::string dit_graph(const std::string& head) const;  // Error when the bundle lacks that head

  // Latent / resolution / text sections.
  int min_side() const;
  int max_height() const;
  int max_width() const;
  int multiple() const;
  int max_text_length() const;
  // The model's working scale k (manifest latent.work_scale, 1 when absent): the host enlarges the pair
  // k times before the VAE encoder and shrinks the decoded image back (model/work_scale.py).
  int work_scale() const;
  // The model's window (manifest latent.window, 0 when absent): the largest side, in enlarged pixels, its
  // networks run on; a larger pair runs in overlapping windows (tiling.hpp).
  int window() const;
  int64_t text_hidden_size() const;
  fs::path tokenizer_path() const;

  // Sampler defaults (manifest "sampler"): name, steps, g, prior, prior_sigma.
  std::string default_sampler() const;
  int default_steps() const;
  double default_g() const;  // < 0 when absent
  std::string default_prior() const;
  double prior_sigma() const;

  // Canonical prompts: id -> text, and the cached embeddings keyed by normalised text.
  std::map<std::string, std::string> prompts() const;
  std::map<std::string, PromptEmbedding> prompt_cache_by_text() const;

  // The model's detail path (manifest "detail", model.detail.DetailSettings.to_dict()): nullopt when the
  // bundle has none (older bundles: no detail stage). Parsed and checked by open(), so a malformed section
  // is an Error naming manifest.json and the field before any work.
  const std::optional<DetailSettings>& detail() const { return detail_; }

  // Extra artefact tables ("aoti", "engines"): graph -> absolute file path.
  std::map<std::string, fs::path> artefacts(const std::string& table) const;

 private:
  fs::path root_;
  json manifest_;
  std::map<std::string, GraphInfo> graphs_;
  std::optional<DetailSettings> detail_;
};

// Collapse runs of whitespace and trim (Python: " ".join(prompt.split())).
std::string normalize_prompt(const std::string& text);

// safetensors file -> name -> tensor (F32 and I64 only, what the prompt cache holds).
std::map<std::string, Tensor> read_safetensors(const fs::path& path);

}  // namespace latentfuse
