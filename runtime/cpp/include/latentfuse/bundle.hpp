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

// The model's geometry, one definition in Python: model/geometry.py (the manifest records the VAE factor
// and patch in "latent" and the padding multiple in "resolution"; these are the fallbacks and the floor).
constexpr int kPixelMultiple = 16;  // model/geometry.py PIXEL_MULTIPLE: VAE f=8 x DiT patch 2
constexpr int kMinSide = 32;        // model/geometry.py MIN_SIDE: the exported graphs' 16-px grid has min 2

// The role -> tensor name table of bundles written before tensors carried roles (runtime/manifest.py
// ROLE_NAMES / legacy_role): the role of a tensor named `name` in a graph of `kind` (empty: unknown).
std::string legacy_role(const std::string& name, const std::string& kind, bool output);

// Lower-case hex sha256 of a file's bytes (OpenSSL EVP).
std::string sha256_file(const fs::path& path);

struct TensorInfo {
  std::string name;
  std::string dtype;               // float32 | int64 | float16 | ...
  std::vector<std::string> shape;  // dims as strings: "3" or a symbol ("batch", "height", ...)
  std::string role;                // image | latent | token_ids | ... (runtime/manifest.py ROLE_NAMES)
};

struct GraphInfo {
  std::string name, kind, head, file;
  std::vector<TensorInfo> inputs, outputs;
  // The name of the input / output with `role` (the manifest's "role", or for bundles without roles the
  // name runtime/manifest.py ROLE_NAMES gives it); an Error naming the graph and its tensors otherwise.
  const std::string& input_for(const std::string& role) const;
  const std::string& output_for(const std::string& role) const;
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
  // graph(graph).input_for(role): the one lookup of a graph's tensors (runtime.manifest.Bundle.input_for).
  const std::string& input_for(const std::string& graph_name, const std::string& role) const {
    return graph(graph_name).input_for(role);
  }
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
  // The fidelity decoder (model.fidelity; graph "fidelity", optional): whether the bundle has it, and the rows
  // of context a strip needs on each side (its manifest entry's "halo", a multiple of 16; an Error otherwise).
  bool has_fidelity() const { return has_graph("fidelity"); }
  int fidelity_halo() const;
  int64_t text_hidden_size() const;
  fs::path tokenizer_path() const;

  // Sampler defaults (manifest "sampler"): name, steps, g, prior, prior_sigma.
  std::string default_sampler() const;
  int default_steps() const;
  double default_g() const;  // < 0 when absent
  std::string default_prior() const;
  double prior_sigma() const;
  double default_start() const;  // where the flow starts (model.flow.DEFAULT_START); 0 when absent

  // Canonical prompts: id -> text, and the cached embeddings keyed by normalised text.
  std::map<std::string, std::string> prompts() const;
  std::map<std::string, PromptEmbedding> prompt_cache_by_text() const;

  // The model's detail path (manifest "detail", model.image_processing.detail.DetailSettings.to_dict()): nullopt when the
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
