#include "latentfuse/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "latentfuse/samplers.hpp"
#include "latentfuse/tiling.hpp"

namespace latentfuse {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// model.data.prompts.CANONICAL_TASK_PROMPTS, used when a manifest lacks its prompt table
const std::map<std::string, std::string>& canonical_task_prompts() {
  static const std::map<std::string, std::string> prompts = {
      {"vif", "fuse the infrared and visible images"},
      {"mef", "fuse the multi-exposure images"},
      {"mff", "fuse the multi-focus images"}};
  return prompts;
}

std::string size_str(int w, int h) { return std::to_string(w) + "x" + std::to_string(h); }

// pixels shared by neighbouring windows (runtime.pipeline.Pipeline.tile_overlap)
constexpr int kTileOverlap = 64;

// `call` on the whole inputs, or through the tiler when the pair is tiled
Tensor tiled(std::optional<Tiler>& tiler, const std::vector<Tensor>& inputs, int in_unit, int out_unit,
             const Tiler::Call& call) {
  return tiler ? tiler->run(inputs, in_unit, out_unit, call) : call(inputs);
}

}  // namespace

Pipeline::Pipeline(Bundle bundle, std::unique_ptr<Runner> runner)
    : bundle_(std::move(bundle)), runner_(std::move(runner)), cache_(bundle_.prompt_cache_by_text()) {}

std::string Pipeline::default_prompt(const std::string& task) const {
  if (!canonical_task_prompts().count(task)) throw Error("unknown task '" + task + "': choose one of vif, mef, mff");
  const auto prompts = bundle_.prompts();
  auto it = prompts.find(task);
  return it != prompts.end() ? it->second : canonical_task_prompts().at(task);
}

std::vector<Tensor> Pipeline::run(const std::string& graph_name, const std::map<std::string, Tensor>& feeds) {
  const GraphInfo& graph = bundle_.graph(graph_name);
  std::vector<Tensor> inputs;
  for (const auto& info : graph.inputs) {
    auto it = feeds.find(info.name);
    if (it == feeds.end()) throw Error("graph '" + graph_name + "' needs input '" + info.name + "' that the host does not make");
    inputs.push_back(it->second);
  }
  std::vector<Tensor> outs = runner_->run(graph, inputs);
  if (outs.size() != graph.outputs.size())
    throw Error("graph '" + graph_name + "' returned " + std::to_string(outs.size()) + " outputs, the manifest lists " +
                std::to_string(graph.outputs.size()));
  return outs;
}

std::tuple<Tensor, Tensor, bool> Pipeline::encode_prompt(const std::string& prompt) {
  const std::string key = normalize_prompt(prompt);
  if (key.empty()) throw Error("the prompt is empty");
  auto it = cache_.find(key);
  if (it != cache_.end()) return {it->second.embeds, it->second.mask, true};
  if (!tokenizer_) tokenizer_ = std::make_unique<Tokenizer>(bundle_.tokenizer_path());
  auto [ids, mask] = tokenizer_->encode(key, bundle_.max_text_length());
  Tensor embeds = run("text_encoder", {{"input_ids", ids}, {"attention_mask", mask}}).at(0);
  return {embeds, mask, false};
}

FuseResult Pipeline::fuse(const fs::path& a, const fs::path& b, const FuseOptions& o) {
  // ---- options, checked before any work (as runtime/pipeline.py does)
  if (o.mode != "flow" && o.mode != "regression") throw Error("unknown mode '" + o.mode + "': choose flow or regression");
  const std::string dit = bundle_.dit_graph(o.mode);
  std::string sampler_name = "regression";
  int steps = 1;
  if (o.mode == "regression") {
    if (o.sampler && *o.sampler != "regression")
      throw Error("--mode regression makes one network call; it takes no sampler (got '" + *o.sampler + "')");
  } else {
    sampler_name = o.sampler.value_or(bundle_.default_sampler());
    if (sampler_name == "regression") throw Error("the regression sampler needs --mode regression");
    samplers::get_sampler(sampler_name);
    steps = o.steps.value_or(bundle_.default_steps());
    if (steps < 1) throw Error("--steps must be >= 1, got " + std::to_string(steps));
  }
  const bool stochastic = samplers::get_sampler(sampler_name).stochastic;
  double g = o.g.value_or(stochastic ? bundle_.default_g() : 0.0);  // < 0: the sampler default
  const std::string prompt = o.prompt.value_or(default_prompt(o.task));
  if (!canonical_task_prompts().count(o.task)) throw Error("unknown task '" + o.task + "': choose one of vif, mef, mff");

  StageTimes times;
  const auto start = Clock::now();
  // ---- read, check, enlarge by the working scale, pad, scale
  Image img_a = read_image(a), img_b = read_image(b);
  if (img_a.height != img_b.height || img_a.width != img_b.width)
    throw Error("the pair differs in size: A is " + size_str(img_a.width, img_a.height) + ", B is " +
                size_str(img_b.width, img_b.height) + " (W x H); register / crop them to the same size");
  const bool gray = img_a.channels == 1 && img_b.channels == 1;
  const int h = img_a.height, w = img_a.width, k = bundle_.work_scale();
  const int minimum = std::max(runner_->min_side(), 16);
  const int ph = padded_side(k * h, minimum), pw = padded_side(k * w, minimum);
  int max_h = bundle_.max_height(), max_w = bundle_.max_width();
  const auto [rh, rw] = runner_->max_size();
  if (rh > 0) max_h = std::min(max_h, rh), max_w = std::min(max_w, rw);
  if (ph > max_h || pw > max_w)
    throw Error("the images are " + size_str(w, h) + " (" +
                (k > 1 ? "worked at " + std::to_string(k) + "x: " + size_str(k * w, k * h) + ", " : std::string()) +
                "padded " + size_str(pw, ph) + "); this " + runner_->name() +
                " bundle supports at most " + size_str(max_w, max_h) + " (W x H). Downscale the pair, or export / "
                "build with a larger profile");
  // a pair larger than the model's window runs in overlapping windows of it (runtime.backends.tiled)
  const int window = bundle_.window();
  std::optional<Tiler> tiler;
  if (window > 0 && (ph > window || pw > window)) tiler.emplace(std::min(window, max_h), std::min(window, max_w), kTileOverlap);
  const Tensor images = to_model_range({pad_to_size(upscale(to_rgb(img_a), k), ph, pw),
                                        pad_to_size(upscale(to_rgb(img_b), k), ph, pw)});

  // ---- VAE encoder: both sources in one batch
  auto t0 = Clock::now();
  const Tensor latents = tiled(tiler, {images}, 1, kLatentFactor, [&](const std::vector<Tensor>& x) {
    return run("vae_encoder", {{"image", x[0]}}).at(0);
  });
  runner_->synchronize();
  times.vae_enc = ms_since(t0);
  const Tensor z_a = latents.slice0(0, 1), z_b = latents.slice0(1, 2);

  // ---- prompt
  t0 = Clock::now();
  auto [embeds, mask, hit] = encode_prompt(prompt);
  runner_->synchronize();
  times.t5 = ms_since(t0);
  times.cache_hit = hit;

  // ---- DiT: sampler loop (flow) or one call (regression)
  t0 = Clock::now();
  samplers::SampleResult result;
  std::map<std::string, Tensor> feeds = {{"prompt_embeds", embeds}, {"prompt_mask", mask}};
  // z_a, z_b (and z_t) of one window, the prompt whole
  auto dit_call = [&](const std::vector<Tensor>& x) {
    feeds["z_a"] = x[0], feeds["z_b"] = x[1];
    if (x.size() > 2) feeds["z_t"] = x[2];
    return run(dit, feeds).at(0);
  };
  if (o.mode == "regression") {
    result.latent = tiled(tiler, {z_a, z_b}, kLatentFactor, kLatentFactor, dit_call);
    result.nfe = 1;
    result.sampler = "regression";
  } else {
    auto [z0, prior] = samplers::initial_latent(o.prior.value_or(bundle_.default_prior()), z_a, o.seed, z_a, z_b,
                                                bundle_.prior_sigma());
    samplers::Velocity velocity = [&](const Tensor& z, double t) {
      feeds["t"] = Tensor::from_float({z.shape.at(0)}, std::vector<float>(z.shape.at(0), static_cast<float>(t)));
      return tiled(tiler, {z_a, z_b, z}, kLatentFactor, kLatentFactor, dit_call);
    };
    result = samplers::sample(sampler_name, velocity, z0, steps, g, o.seed, prior);
  }
  runner_->synchronize();
  times.dit = ms_since(t0);
  times.nfe = result.nfe;

  // ---- VAE decoder, crop back, shrink to the input size
  t0 = Clock::now();
  const Tensor decoded = tiled(tiler, {result.latent}, kLatentFactor, 1, [&](const std::vector<Tensor>& x) {
    return run("vae_decoder", {{"latent", x[0]}}).at(0);
  });
  runner_->synchronize();
  times.vae_dec = ms_since(t0);
  Image image = downscale(from_model_range(decoded, k * h, k * w), k);
  if (gray) image = to_gray(image);
  times.total = ms_since(start);
  return FuseResult{std::move(image), result.nfe, result.sampler, times, tiler ? tiler->calls() : 0};
}

std::string format_latency(const std::vector<StageTimes>& runs, const std::string& label) {
  auto median = [&](double StageTimes::*field) {
    std::vector<double> v;
    for (const auto& r : runs) v.push_back(r.*field);
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  const int nfe = runs.empty() ? 0 : runs.front().nfe;
  std::ostringstream out;
  out << std::fixed << std::setprecision(2);
  out << "|------------|--------------|\n";
  out << "|   Module   | Latency (ms) |  " << label << ", median of " << runs.size() << " run(s)\n";
  out << "|------------|--------------|\n";
  auto row = [&](const std::string& name, double ms) {
    out << "| " << std::left << std::setw(10) << name << " | " << std::right << std::setw(12) << ms << " |\n";
  };
  row("VAE-Enc", median(&StageTimes::vae_enc));
  row(runs.empty() || runs.front().cache_hit ? "T5 (cache)" : "T5", median(&StageTimes::t5));
  row("DiT x " + std::to_string(nfe), median(&StageTimes::dit));
  row("VAE-Dec", median(&StageTimes::vae_dec));
  out << "|------------|--------------|\n";
  row("Pipeline", median(&StageTimes::total));
  out << "|------------|--------------|\n";
  const double total = median(&StageTimes::total);
  out << "Throughput: " << std::setprecision(2) << (total > 0 ? 1000.0 / total : 0.0) << " image/s\n";
  return out.str();
}

}  // namespace latentfuse
