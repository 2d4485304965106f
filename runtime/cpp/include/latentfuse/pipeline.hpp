// One fuse call end to end, as runtime/pipeline.py does it: read, enlarge by the working scale + pad
// the pair, VAE-encode both, prompt -> embedding (bundle prompt cache, else tokenizer + text_encoder
// graph), sampler over the flow DiT (or one regression call), VAE-decode, crop back, shrink, the
// detail path (detail.hpp, when the bundle has one), gray when both inputs were; per-stage wall times. Any size runs (plan_windows, tiling.hpp): the VAE encodes and decodes each image once, in
// tiles only over its size bound; the DiT runs in the model's window, the windows batched.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "latentfuse/backend.hpp"
#include "latentfuse/bundle.hpp"
#include "latentfuse/image.hpp"
#include "latentfuse/tiling.hpp"
#include "latentfuse/tokenizer.hpp"

namespace latentfuse {

// runtime/pipeline.py: MAX_SIDE, MAX_DIT_BATCH; runtime/memory.py: VAE_MAX_SIDE (the DiT windows' overlap: tiling.hpp kDitOverlap)
constexpr int kMaxSide = 1024;     // where a backend states no size limit: the largest side one DiT call takes
constexpr int kVaeMaxSide = 768;   // the largest side one VAE call takes by default (--tile PX changes it)
constexpr int kMaxDitBatch = 64;   // DiT windows per graph call (also capped by the backend's max batch)

// (DiT window, VAE tile) in pixels for a padded height x width pair; nullopt where the whole image goes
// through in one call (runtime.pipeline.Pipeline.plan_windows). `limit`: the backend's largest (H, W)
// (nullopt: none stated, kMaxSide per side); `window`: the model's window (0: none); `tile`: an explicit
// VAE tile side (--tile PX, at least 32), else kVaeMaxSide. Both are bounded by the limit.
struct WindowPlan {
  std::optional<Size2> dit, vae;
};
WindowPlan plan_windows(int height, int width, std::optional<Size2> limit, int window, std::optional<int> tile);

// runtime/memory.py's memory model of one fuse call (bytes; measured on ONNX Runtime CPU, the bundled
// default): a VAE call on an h x w tile of one image kVaeBytesPerPx * h * w + kVaeBytesPerToken2 *
// (h * w / 64)^2, a DiT call kDitBytesPerPx per pixel of its windows, the process before any image
// kRuntimeBytes; the detail path's double planes per pixel of a strip; the speed caps.
constexpr int64_t kVaeBytesPerPx = 640, kVaeBytesPerToken2 = 10, kDitBytesPerPx = 192;
constexpr int64_t kRuntimeBytes = int64_t{512} << 20;
constexpr int kDetailPlanes = 40, kDetailStripRows = 512, kMinVaeTile = 256;
constexpr int64_t kFidelityBytesPerPx = 640;  // runtime/memory.py FIDELITY_BYTES_PER_PX (an estimate)

// How one fuse splits its work to stay within `budget` bytes (runtime.memory.MemoryPlan): the DiT window
// and the largest VAE tile side (as plan_windows; the Tiler spreads its tiles evenly within it), DiT windows
// per call, rows per detail strip (nullopt: whole), the estimated peak.
struct MemoryPlan {
  int64_t budget = 0;
  std::optional<Size2> dit_window, vae_tile;
  int dit_batch = 0;
  std::optional<int> detail_rows;
  int64_t peak = 0;
  std::optional<int> fidelity_rows;  // rows per strip of the fidelity decoder (nullopt: whole, or none)
};
// runtime.pipeline.Pipeline.plan_memory for a padded height x width pair of input size h x w whose two
// images as read take `sources` bytes; `max_batch`: the backend's most DiT rows per call (0: none stated);
// `detail_halo`: the larger halo of the bundle's two detail sets (-1: no detail path). A budget even the
// smallest tiles, chunks and strips cannot meet is an Error naming what it needs.
MemoryPlan plan_memory(int height, int width, int h, int w, int64_t sources, std::optional<Size2> limit, int window,
                       std::optional<int> tile, int64_t budget, int max_batch, int detail_halo,
                       int fidelity_halo = -1);  // the fidelity decoder's halo (-1: it does not run)
// runtime.memory.parse_memory: "3G", "2.5GB", "3000M", "512MiB" or bytes (powers of 1024), else an Error.
int64_t parse_memory(const std::string& text);
// runtime.memory.default_max_memory: half the machine's memory (or of the cgroup's limit if lower).
int64_t default_max_memory();

struct FuseOptions {
  std::string task = "vif";
  std::optional<std::string> prompt;   // default: the task's canonical prompt
  std::string mode = "regression";     // flow | regression (runtime/pipeline.py DEFAULT_MODE: why)
  std::optional<std::string> sampler;  // default: the manifest's
  std::optional<int> steps;            // default: the manifest's
  std::optional<double> g;             // default: the manifest's for SDE samplers, 0 otherwise
  std::optional<std::string> prior;    // default: the manifest's (the flow DiT's training prior)
  std::optional<double> start;         // where the flow starts, t0 in [0, 1) (default: the manifest's, else 0)
  uint64_t seed = 0;
  std::optional<int> tile;             // --tile PX: the largest VAE tile side (default kVaeMaxSide)
  std::string detail = "auto";         // --detail auto|clean|safe|off (the bundle's DetailSettings; none: no stage)
  std::optional<std::string> max_memory;  // --max-memory SIZE (default: default_max_memory())
  std::optional<double> fidelity;      // --fidelity W in [0, 1] (default 1 where the bundle has the graph; 0 skips)
};

// runtime.pipeline.check_fidelity_weight: the weight (nullopt: 1 where the bundle has the decoder, else 0) in
// [0, 1]; > 0 without the decoder is an Error.
double check_fidelity_weight(std::optional<double> weight, bool available);
// Milliseconds per stage (runtime/latency.py STAGES) plus the total of the call.
struct StageTimes {
  double vae_enc = 0, t5 = 0, dit = 0, vae_dec = 0, fidelity = 0, detail = 0, total = 0;
  int nfe = 0;
  bool cache_hit = false;
};

struct FuseResult {
  Image image;
  int nfe = 0;
  std::string sampler;
  double fidelity = 0;  // the fidelity decoder's weight run (0: not run)
  std::string detail;  // the detail parameters run: "clean" | "safe" | "off"; "" when the bundle has no detail path
  StageTimes times;
  // Windows and tiles (tiling.hpp): 0 / empty when the pair ran whole, without a Tiler
  int window_calls = 0;   // network calls made through the Tiler (VAE and DiT)
  int dit_windows = 0;    // DiT windows per sampler call (0: the whole latent in one)
  int dit_batch = 0;      // most windows per DiT graph call
  std::optional<Size2> dit_window, vae_tile;  // (H, W) px, as planned
  MemoryPlan plan;        // the call's memory plan
};

class Pipeline {
 public:
  Pipeline(Bundle bundle, std::unique_ptr<Runner> runner);

  FuseResult fuse(const std::filesystem::path& a, const std::filesystem::path& b, const FuseOptions& options);

  // The largest (H, W) one graph call takes: the runner's (an engine profile), else the bundle's
  // verified maximum (manifest resolution.max_height / max_width), else nullopt (kMaxSide applies).
  std::optional<Size2> max_image_size() const;

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
