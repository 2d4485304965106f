// The pixel-space detail path, line for line with model/image_processing/detail.py: after the VAE decoder (and the
// working scale's shrink back to the input size) the fused image F gets the sources' fine detail back
// on its luminance, colour kept from F:
//
//   Y_s, Y_F   BT.601 luma (model.image_processing.color.luma; a gray image is its own luma)
//   base(Y)    gaussian(Y, sigma)            scipy.ndimage.gaussian_filter, mode "reflect", truncate 4
//   D = Y - base(Y)
//   n_s        median |HH(Y_s)| / 0.6745     Donoho's noise estimate on the diagonal Haar band
//   t_s        e_s / (e_s + (k n_s)^2)       e_s = box(D_s^2, r), scipy.ndimage.uniform_filter 2r + 1
//   D_s'       t_s D_s + (1 - t_s) D_F
//   select     per pixel the candidate of largest box(D^2, r) among D_A', D_B' (and D_F when
//              fused_candidate), ties to the first, one-hot masks feathered by box(., r)
//   Y_out      clip(Y_F + gain (D - D_F), 0, 1); RGB: YCbCr(Y_out, Cb_F, Cr_F) -> RGB clipped to [0, 1]
//
// channels "rgb" (an RGB fused image): t_s and the feathered choice weights w_i stay the luma's; every
// channel c gets D_s,c' = t_s D_s,c + (1 - t_s) D_F,c (a gray source gives its plane to all three) and
// F_out,c = clip(F_c + gain (sum_i w_i D_i,c' - D_F,c), 0, 1).
//
// Double precision throughout (the filters reproduce scipy's arithmetic order: symmetric correlate for
// the gaussian, a running sum for the box mean), float32 result. The parameters come from the bundle
// manifest's optional "detail" section (DetailSettings, model.image_processing.detail.DetailSettings.to_dict()), one set
// for clean prompts, one for the rest, none for prompts naming a degradation the stage would copy back.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "latentfuse/image.hpp"

namespace latentfuse {

// model.image_processing.detail.DetailConfig (its defaults are the Python defaults, used for fields a section omits).
struct DetailConfig {
  double sigma = 2.0;           // base / detail split, px
  int radius = 2;               // local-energy window 2r + 1 of the trust and the selection
  bool fused_candidate = true;  // F's own detail competes in the selection
  double gain = 1.0;            // detail strength
  double noise_k = 3.0;         // noise gate in units of each source's noise estimate (0: off)
  std::string channels = "luma";  // where the detail goes: "luma" (colour kept from F) or "rgb"

  // DetailConfig.__post_init__: sigma > 0, radius >= 0, gain >= 0, noise_k >= 0, channels luma | rgb.
  void validate(const std::string& where = "detail") const;
  // One parameter set from JSON {"sigma", "radius", "fused_candidate", "gain", "noise_k", "channels"}; `where` names
  // the section in errors (e.g. ".../manifest.json: detail.clean").
  static DetailConfig from_json(const nlohmann::json& section, const std::string& where);
  nlohmann::json to_json() const;
};

// The modes: "auto" picks by prompt (DetailSettings::mode_for), the others force a parameter set.
extern const std::vector<std::string> kDetailModes;         // clean, safe, off
extern const std::vector<std::string> kDetailOffPrefixes;   // model.image_processing.detail.OFF_PREFIXES
// model.image_processing.detail.check_detail_mode: "auto" | "clean" | "safe" | "off", else an Error listing them.
std::string check_detail_mode(const std::string& mode);
// model.image_processing.detail.normalize_prompt: lower case (ASCII), single spaces.
std::string normalize_detail_prompt(const std::string& prompt);

// model.image_processing.detail.DetailSettings: the manifest's "detail" section.
struct DetailSettings {
  DetailConfig clean, safe;
  std::vector<std::string> clean_prompts;  // normalised
  std::vector<std::string> off_prefixes = kDetailOffPrefixes;

  // DetailSettings.from_dict; `where` names the section in errors ("<bundle>/manifest.json: detail").
  static DetailSettings from_json(const nlohmann::json& section, const std::string& where = "detail");
  nlohmann::json to_json() const;
  // "clean" for a clean prompt, "off" for one with a word ([a-z]+ run) starting with an off prefix, else "safe".
  std::string mode_for(const std::string& prompt) const;
  // The parameters to run for `prompt` under `mode` (auto: mode_for), nullopt for off.
  std::optional<DetailConfig> config_for(const std::string& prompt, const std::string& mode = "auto") const;
};

// model.image_processing.detail.restore_detail: `fused` with the detail of sources `a` and `b` restored. All three of one
// size, at least 2x2, 1 (gray, HxW in Python) or 3 channels each (VIF: a RGB, b gray). Returns float32
// of fused's shape. `strip_rows` > 0: strips of that many rows, each with detail_halo rows of context
// above and below, the noise estimates taken on the whole sources (as model.image_processing.detail does), so the double
// planes cover a strip, not the image; 0 or at least the height: in one piece.
Image restore_detail(const Image& fused, const Image& a, const Image& b, const DetailConfig& config, int strip_rows = 0);
// model.image_processing.detail.detail_halo: the gaussian's reach int(4 sigma + 0.5) plus three box radii.
int detail_halo(const DetailConfig& config);

// The building blocks, exposed for the vector tests: a double-precision plane and scipy's filters.
namespace detail {
struct Plane {
  int height = 0, width = 0;
  std::vector<double> v;  // row-major
  double& at(int y, int x) { return v[static_cast<size_t>(y) * width + x]; }
  double at(int y, int x) const { return v[static_cast<size_t>(y) * width + x]; }
};
// scipy "reflect" (half-sample symmetric, d c b a | a b c d | d c b a), periodic for any offset.
int reflect_index(int i, int n);
// model.image_processing.color.luma (gray: the channel itself).
Plane luma(const Image& img);
// model.image_processing.filters.gaussian (sigma > 0; 0 or less returns the plane).
Plane gaussian(const Plane& p, double sigma);
// model.image_processing.filters.box_filter: mean over (2r+1)^2, radius 0 the plane itself.
Plane box_filter(const Plane& p, int radius);
// model.image_processing.detail.noise_sigma.
double noise_sigma(const Plane& y);
// model.image_processing.detail.select_weights: one feathered choice map per layer.
std::vector<Plane> select_weights(const std::vector<Plane>& layers, int radius);
}  // namespace detail

}  // namespace latentfuse
