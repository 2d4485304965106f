#include "latentfuse/pipeline.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <regex>
#include <sstream>

#include "latentfuse/detail.hpp"
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

}  // namespace

WindowPlan plan_windows(int height, int width, std::optional<Size2> limit, int window, std::optional<int> tile) {
  const Size2 bound = limit.value_or(Size2{kMaxSide, kMaxSide});
  Size2 dit = bound;
  if (window > 0) dit = {std::min(dit.first, window), std::min(dit.second, window)};
  const int side = tile.value_or(kVaeMaxSide);
  if (side < 2 * kTileGrid)
    throw Error("--tile needs at least " + std::to_string(2 * kTileGrid) + " px, got " + std::to_string(side));
  const Size2 vae = {std::min(side, bound.first), std::min(side, bound.second)};
  auto fits = [&](const Size2& b) { return height <= b.first && width <= b.second; };
  WindowPlan plan;
  if (!fits(dit)) plan.dit = dit;
  if (!fits(vae)) plan.vae = vae;
  return plan;
}

namespace {

int64_t vae_call_bytes(int64_t h, int64_t w) {
  const int64_t px = h * w;
  return kVaeBytesPerPx * px + kVaeBytesPerToken2 * (px / 64) * (px / 64);
}

std::string format_bytes(int64_t n) {
  std::ostringstream out;
  out << std::fixed;
  if (n >= (int64_t{1} << 30)) out << std::setprecision(2) << static_cast<double>(n) / (1 << 30) << " GB";
  else out << std::setprecision(0) << static_cast<double>(n) / (1 << 20) << " MB";
  return out.str();
}

// Python's floor division (a // b, b > 0)
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

}  // namespace

int64_t parse_memory(const std::string& text) {
  static const std::regex pattern(R"(\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:[iI]?[bB])?\s*)");
  std::smatch m;
  if (!std::regex_match(text, m, pattern))
    throw Error("--max-memory takes a size such as 3G, 2.5GB or 3000M, got '" + text + "'");
  const std::string units = " kmgt";
  const char unit = m[2].str().empty() ? ' ' : static_cast<char>(std::tolower(m[2].str()[0]));
  const int64_t size = static_cast<int64_t>(std::stod(m[1].str()) * std::pow(1024.0, static_cast<double>(units.find(unit))));
  if (size <= 0) throw Error("--max-memory must be positive, got '" + text + "'");
  return size;
}

int64_t default_max_memory() {
  int64_t total = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  std::ifstream limit("/sys/fs/cgroup/memory.max");
  std::string text;
  if (limit >> text && !text.empty() && std::all_of(text.begin(), text.end(), ::isdigit))
    total = std::min<int64_t>(total, std::stoll(text));
  return total / 2;
}

MemoryPlan plan_memory(int height, int width, int h, int w, int64_t sources, std::optional<Size2> limit, int window,
                       std::optional<int> tile, int64_t budget, int max_batch, int detail_halo, int fidelity_halo) {
  const WindowPlan windows = plan_windows(height, width, limit, window, tile);
  const int64_t H = height, W = width, base = kRuntimeBytes + sources, image_f32 = 3 * 4 * H * W;
  const int64_t latents = 4 * 16 * 4 * (H / 8) * (W / 8);
  const int64_t keep = fidelity_halo >= 0 ? 2 * image_f32 : 0;  // the model-range pair, held for the fidelity decoder
  auto fail = [&](const std::string& what, int64_t least) {
    throw Error("--max-memory " + format_bytes(budget) + " cannot be met: a " + std::to_string(w) + "x" +
                std::to_string(h) + " pair needs at least " + format_bytes(least) + " here (" + what +
                "); raise it or fuse a smaller pair");
  };
  // VAE: the model-range pair (encode) or the blended output and its weights (decode), and one call
  auto vae_peak = [&](std::optional<Size2> t) {
    int64_t call = 2 * vae_call_bytes(H, W);
    if (t) {  // the tiles the Tiler cuts: on the grid, the overlap clamped to half a tile
      const int lh = t->first / kTileGrid * kTileGrid, lw = t->second / kTileGrid * kTileGrid;
      const int ov = std::min(kVaeOverlap, std::min(lh, lw) / 2) / kTileGrid * kTileGrid;
      call = vae_call_bytes(balanced_side(height, lh, ov), balanced_side(width, lw, ov));
    }
    return base + latents + std::max(2 * image_f32, keep + image_f32 * 4 / 3) + call;
  };
  std::optional<Size2> vae = windows.vae;
  if (!vae && vae_peak(std::nullopt) > budget) vae = Size2{std::min(height, kVaeMaxSide), std::min(width, kVaeMaxSide)};
  if (vae) {
    int side = std::max(vae->first, vae->second);
    while (vae_peak(Size2{std::min(vae->first, side), std::min(vae->second, side)}) > budget) {
      if (side - kTileGrid < kMinVaeTile)
        fail("the VAE on " + std::to_string(kMinVaeTile) + " px tiles", vae_peak(Size2{kMinVaeTile, kMinVaeTile}));
      side -= kTileGrid;
    }
    vae = Size2{std::min(vae->first, side), std::min(vae->second, side)};
    if (vae->first >= height && vae->second >= width) vae = std::nullopt;
  }
  // DiT: the latents and one chunk of windows
  int64_t dit_batch = max_batch > 0 ? std::min(kMaxDitBatch, max_batch) : kMaxDitBatch;
  const Size2 win = windows.dit.value_or(Size2{height, width});
  const int64_t per_window = kDitBytesPerPx * win.first * win.second, room = budget - base - latents - keep;
  if (room < per_window) fail("the DiT on one window", base + latents + keep + per_window);
  dit_batch = std::max<int64_t>(1, std::min(dit_batch, floor_div(room, per_window)));
  const int64_t dit_peak = base + latents + keep + (windows.dit ? dit_batch : 1) * per_window;  // no window: one call
  // fidelity decoder: the pair, the decoded image and the result, and one strip's call with its halo rows
  std::optional<int> fidelity_rows;
  int64_t fidelity_peak = 0;
  if (fidelity_halo >= 0) {
    const int64_t lim = limit.value_or(Size2{kMaxSide, kMaxSide}).first;
    const int64_t fixed = base + 4 * image_f32, per_row = kFidelityBytesPerPx * W;
    if (H <= lim && fixed + per_row * H <= budget) {
      fidelity_peak = fixed + per_row * H;
    } else {
      const int64_t rows = floor_div(std::min<int64_t>({H, lim - 2 * fidelity_halo,
                                                         floor_div(budget - fixed, per_row) - 2 * fidelity_halo}),
                                     kTileGrid) * kTileGrid;
      if (rows < kTileGrid) fail("the fidelity decoder on 16-row strips", fixed + per_row * (kTileGrid + 2 * fidelity_halo));
      if (rows < H) fidelity_rows = static_cast<int>(rows);
      fidelity_peak = fixed + per_row * std::min<int64_t>(H, rows + 2 * fidelity_halo);
    }
  }
  // detail path: the decoded image, the result and one strip's double planes with its context rows
  std::optional<int> detail_rows;
  int64_t detail_peak = 0;
  if (detail_halo >= 0) {
    const int64_t fixed = base + image_f32 + 3 * 4 * int64_t{h} * w, per_row = int64_t{kDetailPlanes} * 8 * w;
    const int64_t rows = std::min<int64_t>({h, kDetailStripRows, floor_div(budget - fixed, per_row) - 2 * detail_halo});
    // strips of 16 rows at least, or the whole of a shorter image
    const int64_t least = std::min<int64_t>(kTileGrid, h);
    if (rows < least) fail("the detail path on 16-row strips", fixed + per_row * (least + 2 * detail_halo));
    if (rows < h) detail_rows = static_cast<int>(rows);
    detail_peak = fixed + per_row * std::min<int64_t>(h, rows + 2 * detail_halo);
  }
  MemoryPlan plan;
  plan.budget = budget, plan.dit_window = windows.dit, plan.vae_tile = vae, plan.dit_batch = static_cast<int>(dit_batch);
  plan.detail_rows = detail_rows, plan.fidelity_rows = fidelity_rows;
  plan.peak = std::max({base + 3 * image_f32, vae_peak(vae), dit_peak, fidelity_peak, detail_peak});
  return plan;
}

double check_fidelity_weight(std::optional<double> weight, bool available) {
  if (!weight) return available ? 1.0 : 0.0;
  std::ostringstream text;
  text << *weight;
  if (!(*weight >= 0.0 && *weight <= 1.0)) throw Error("--fidelity takes a number in [0, 1], got " + text.str());
  if (*weight > 0.0 && !available)
    throw Error("--fidelity: this bundle has no fidelity decoder (graph 'fidelity', model.fidelity); it runs without one");
  return *weight;
}

Pipeline::Pipeline(Bundle bundle, std::unique_ptr<Runner> runner)
    : bundle_(std::move(bundle)), runner_(std::move(runner)), cache_(bundle_.prompt_cache_by_text()) {}

std::string Pipeline::default_prompt(const std::string& task) const {
  if (!canonical_task_prompts().count(task)) throw Error("unknown task '" + task + "': choose one of vif, mef, mff");
  const auto prompts = bundle_.prompts();
  auto it = prompts.find(task);
  return it != prompts.end() ? it->second : canonical_task_prompts().at(task);
}

std::vector<Tensor> Pipeline::run(const std::string& graph_name, const std::map<std::string, Tensor>& feeds) {
  // feeds are keyed by tensor role (the manifest's, or the legacy names' for bundles without roles)
  const GraphInfo& graph = bundle_.graph(graph_name);
  std::vector<Tensor> inputs;
  for (const auto& info : graph.inputs) {
    auto it = feeds.find(info.role);
    if (it == feeds.end())
      throw Error("graph '" + graph_name + "' needs input '" + info.name + "' (role '" + info.role +
                  "') that the host does not make");
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
  Tensor embeds = run("text_encoder", {{"token_ids", ids}, {"attention_mask", mask}}).at(0);
  return {embeds, mask, false};
}

FuseResult Pipeline::fuse(const fs::path& a, const fs::path& b, const FuseOptions& o) {
  // ---- options, checked before any work (as runtime/pipeline.py does)
  if (o.mode != "flow" && o.mode != "regression") throw Error("unknown mode '" + o.mode + "': choose flow or regression");
  const std::string dit = bundle_.dit_graph(o.mode);
  std::string sampler_name = "regression";
  int steps = 1;
  double flow_start = 0.0;
  if (o.mode == "regression") {
    // the flow head's settings are refused, not ignored (runtime/pipeline.py: regression is the default mode)
    std::vector<std::string> given;
    if (o.sampler && *o.sampler != "regression") given.push_back("--sampler " + *o.sampler);
    if (o.steps && *o.steps != 1) given.push_back("--steps " + std::to_string(*o.steps));
    if (o.g) {
      std::ostringstream g;
      g << *o.g;
      given.push_back("--g " + g.str());
    }
    if (o.prior) given.push_back("--prior " + *o.prior);
    if (o.start) {
      std::ostringstream t;
      t << *o.start;
      given.push_back("--start " + t.str());
    }
    if (!given.empty()) {
      std::string list;
      for (const auto& item : given) list += (list.empty() ? "" : ", ") + item;
      throw Error("--mode regression makes one network call and takes no " + list +
                  ": those set the flow head's sampling; add --mode flow");
    }
  } else {
    sampler_name = o.sampler.value_or(bundle_.default_sampler());
    if (sampler_name == "regression") throw Error("the regression sampler needs --mode regression");
    samplers::get_sampler(sampler_name);
    steps = o.steps.value_or(bundle_.default_steps());
    if (steps < 1) throw Error("--steps must be >= 1, got " + std::to_string(steps));
    flow_start = samplers::check_start(o.start.value_or(bundle_.default_start()));
    if (flow_start > 0.0) bundle_.dit_graph("regression");  // the estimate it starts from: an Error without that head
  }
  const bool stochastic = samplers::get_sampler(sampler_name).stochastic;
  double g = o.g.value_or(stochastic ? bundle_.default_g() : 0.0);  // < 0: the sampler default
  const std::string prompt = o.prompt.value_or(default_prompt(o.task));
  if (!canonical_task_prompts().count(o.task)) throw Error("unknown task '" + o.task + "': choose one of vif, mef, mff");
  // the detail path (model.image_processing.detail): the bundle's parameters for this prompt and mode, none when it has none
  const std::string detail_mode = check_detail_mode(o.detail);
  std::optional<DetailConfig> detail_cfg;
  std::string detail_run;
  // the fidelity decoder (model.fidelity): its weight; with it, auto runs no hand detail path (as Python)
  const double weight = check_fidelity_weight(o.fidelity, bundle_.has_fidelity());
  const int fid_halo = weight > 0 ? bundle_.fidelity_halo() : -1;
  if (const auto& settings = bundle_.detail(); settings && !(weight > 0 && detail_mode == "auto")) {
    detail_cfg = settings->config_for(prompt, detail_mode);
    detail_run = detail_mode == "auto" ? settings->mode_for(prompt) : detail_mode;
  } else if (settings) {
    detail_run = "off";
  }

  StageTimes times;
  const auto start = Clock::now();
  // ---- read, check, enlarge by the working scale, pad, scale
  Image img_a = read_image(a), img_b = read_image(b);
  if (img_a.height != img_b.height || img_a.width != img_b.width)
    throw Error("the pair differs in size: A is " + size_str(img_a.width, img_a.height) + ", B is " +
                size_str(img_b.width, img_b.height) + " (W x H); register / crop them to the same size");
  const bool gray = img_a.channels == 1 && img_b.channels == 1;
  const int h = img_a.height, w = img_a.width, k = bundle_.work_scale();
  const int minimum = std::max(runner_->min_side(), bundle_.multiple());
  const int ph = padded_side(k * h, minimum), pw = padded_side(k * w, minimum);
  // any size runs: the DiT in the model's window (batched), the VAE whole up to its bound, tiles, windows
  // per call and detail strips sized to the memory budget (runtime.pipeline.Pipeline.plan_memory)
  int halo = -1;
  if (const auto& settings = bundle_.detail()) halo = std::max(detail_halo(settings->clean), detail_halo(settings->safe));
  const int64_t budget = o.max_memory ? parse_memory(*o.max_memory) : default_max_memory();
  const int64_t sources = static_cast<int64_t>(img_a.px.size() + img_b.px.size()) * 4;
  const MemoryPlan plan = plan_memory(ph, pw, h, w, sources, max_image_size(), bundle_.window(), o.tile, budget,
                                      runner_->max_batch(), halo, fid_halo);
  std::optional<Tiler> tiler;
  if (plan.dit_window || plan.vae_tile) tiler.emplace(plan.dit_window, plan.vae_tile, kDitOverlap, kVaeOverlap, plan.dit_batch);
  const Tensor images = to_model_range({pad_to_size(upscale(to_rgb(img_a), k), ph, pw),
                                        pad_to_size(upscale(to_rgb(img_b), k), ph, pw)});

  // ---- VAE encoder: both sources in one batch
  auto t0 = Clock::now();
  auto encoder = [&](const Tensor& x) { return run("vae_encoder", {{"image", x}}).at(0); };
  const Tensor latents = tiler ? tiler->encode(images, encoder) : encoder(images);
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
  // one DiT call: spatial {z_t,} z_a, z_b (windows stacked along the batch when tiled), shared embeds,
  // mask{, t} (repeated per window); velocity lists z_t first, as TiledBackend.velocity does. A call without
  // z_t is the regression graph's: regression mode, or the estimate a started flow begins from.
  const std::string regression = o.mode == "regression" ? dit : flow_start > 0.0 ? bundle_.dit_graph("regression") : "";
  auto dit_call = [&](const std::vector<Tensor>& spatial, const std::vector<Tensor>& shared) {
    std::map<std::string, Tensor> feeds = {{"prompt_embeds", shared.at(0)}, {"prompt_mask", shared.at(1)}};
    const size_t off = spatial.size() > 2 ? 1 : 0;
    if (off) feeds["noisy_latent"] = spatial[0], feeds["timestep"] = shared.at(2);
    feeds["source_latent_a"] = spatial.at(off), feeds["source_latent_b"] = spatial.at(off + 1);
    return run(off ? dit : regression, feeds).at(0);
  };
  auto dit_run = [&](const std::vector<Tensor>& spatial, const std::vector<Tensor>& shared) {
    return tiler ? tiler->dit(spatial, shared, dit_call) : dit_call(spatial, shared);
  };
  if (o.mode == "regression") {
    result.latent = dit_run({z_a, z_b}, {embeds, mask});
    result.nfe = 1;
    result.sampler = "regression";
  } else {
    auto [z0, prior] = samplers::initial_latent(o.prior.value_or(bundle_.default_prior()), z_a, o.seed, z_a, z_b,
                                                bundle_.prior_sigma());
    if (flow_start > 0.0)  // the flow refines the regression DiT's estimate (runtime/pipeline.py)
      z0 = samplers::start_latent(z0, dit_run({z_a, z_b}, {embeds, mask}), flow_start);
    samplers::Velocity velocity = [&](const Tensor& z, double t) {
      const Tensor tt = Tensor::from_float({z.shape.at(0)}, std::vector<float>(z.shape.at(0), static_cast<float>(t)));
      return dit_run({z, z_a, z_b}, {embeds, mask, tt});
    };
    result = samplers::sample(sampler_name, velocity, z0, steps, g, o.seed, prior, flow_start);
    if (flow_start > 0.0) ++result.nfe;  // and the regression call
  }
  runner_->synchronize();
  times.dit = ms_since(t0);
  times.nfe = result.nfe;

  // ---- VAE decoder, crop back, shrink to the input size
  t0 = Clock::now();
  auto decoder = [&](const Tensor& z) { return run("vae_decoder", {{"latent", z}}).at(0); };
  const Tensor decoded = tiler ? tiler->decode(result.latent, decoder) : decoder(result.latent);
  runner_->synchronize();
  times.vae_dec = ms_since(t0);
  // ---- fidelity decoder at the working resolution: F + w (fidelity(F, A, B, P) - F), in strips when planned
  t0 = Clock::now();
  Tensor fused = decoded;
  int fidelity_calls = 0;
  if (weight > 0) {
    auto fidelity = [&](const Tensor& f, const Tensor& sa, const Tensor& sb) {
      return run("fidelity", {{"image", f}, {"source_image_a", sa}, {"source_image_b", sb}, {"prompt_embeds", embeds},
                              {"prompt_mask", mask}}).at(0);
    };
    fused = fidelity_over_strips(decoded, images.slice0(0, 1), images.slice0(1, 2), plan.fidelity_rows.value_or(0),
                                 fid_halo, fidelity, &fidelity_calls);
    if (weight != 1.0) {
      const float wf = static_cast<float>(weight);
      for (size_t i = 0; i < fused.f.size(); ++i) fused.f[i] = (fused.f[i] - decoded.f[i]) * wf + decoded.f[i];
    }
  }
  runner_->synchronize();
  times.fidelity = ms_since(t0);
  Image image = downscale(from_model_range(fused, k * h, k * w), k);

  // ---- detail path on the input-size image, before the gray conversion; the sources as read (a gray
  // source one channel, as runtime.pipeline.load_image's HxW)
  t0 = Clock::now();
  if (detail_cfg) image = restore_detail(image, img_a, img_b, *detail_cfg, plan.detail_rows.value_or(0));
  times.detail = ms_since(t0);
  if (gray) image = to_gray(image);
  times.total = ms_since(start);
  FuseResult out;
  out.image = std::move(image), out.nfe = result.nfe, out.sampler = result.sampler, out.times = times;
  out.detail = detail_run;
  out.fidelity = weight;
  out.plan = plan;
  if (tiler) {
    out.window_calls = tiler->calls();
    out.dit_window = tiler->window(), out.vae_tile = tiler->vae_tile();
    if (tiler->window()) {
      const size_t n = tiler->dit_windows(ph / kLatentFactor, pw / kLatentFactor).size();
      out.dit_windows = static_cast<int>(n);
      out.dit_batch = static_cast<int>(std::min<size_t>(n, static_cast<size_t>(tiler->max_batch().value_or(static_cast<int>(n)))));
    }
  }
  return out;
}

std::optional<Size2> Pipeline::max_image_size() const {
  const auto [rh, rw] = runner_->max_size();
  if (rh > 0 && rw > 0) return Size2{rh, rw};
  const json r = bundle_.manifest().value("resolution", json::object());
  if (r.is_object() && r.contains("max_height") && r.contains("max_width") && r["max_height"].is_number_integer() &&
      r["max_width"].is_number_integer())
    return Size2{r["max_height"].get<int>(), r["max_width"].get<int>()};
  return std::nullopt;
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
  row("Fidelity", median(&StageTimes::fidelity));
  row("Detail", median(&StageTimes::detail));
  out << "|------------|--------------|\n";
  row("Pipeline", median(&StageTimes::total));
  out << "|------------|--------------|\n";
  const double total = median(&StageTimes::total);
  out << "Throughput: " << std::setprecision(2) << (total > 0 ? 1000.0 / total : 0.0) << " image/s\n";
  return out.str();
}

}  // namespace latentfuse
