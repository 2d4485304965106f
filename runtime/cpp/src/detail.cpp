#include "latentfuse/detail.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace latentfuse {

namespace {

using detail::Plane;
using json = nlohmann::json;

constexpr double kMadToSigma = 0.6745;  // model.image_processing.detail.MAD_TO_SIGMA
// model.image_processing.color: full-range BT.601
constexpr double kKr = 0.299, kKb = 0.114;
const double kKg = 1.0 - kKr - kKb;

const char* const kConfigFields[] = {"sigma", "radius", "fused_candidate", "gain", "noise_k", "channels"};
const std::vector<std::string> kDetailChannels = {"luma", "rgb"};  // model.image_processing.detail.DETAIL_CHANNELS

std::string fmt(double x) {
  std::ostringstream out;
  out << x;
  return out.str();
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

Plane make_plane(int h, int w) { return Plane{h, w, std::vector<double>(static_cast<size_t>(h) * w, 0.0)}; }

// scipy.ndimage.correlate1d with a symmetric kernel, as NI_Correlate1D computes it:
// out = x[i] w[0] + sum_{j = r..1} (x[i - j] + x[i + j]) w[j]; along rows (axis 0) or columns (axis 1).
Plane correlate_symmetric(const Plane& p, const std::vector<double>& w, int axis) {
  const int r = static_cast<int>(w.size()) - 1;
  Plane out = make_plane(p.height, p.width);
  const int n = axis == 0 ? p.height : p.width, lines = axis == 0 ? p.width : p.height;
  std::vector<double> line(n);
  for (int l = 0; l < lines; ++l) {
    for (int i = 0; i < n; ++i) line[i] = axis == 0 ? p.at(i, l) : p.at(l, i);
    for (int i = 0; i < n; ++i) {
      double acc = line[i] * w[0];
      for (int j = r; j >= 1; --j)
        acc += (line[detail::reflect_index(i - j, n)] + line[detail::reflect_index(i + j, n)]) * w[j];
      (axis == 0 ? out.at(i, l) : out.at(l, i)) = acc;
    }
  }
  return out;
}

// scipy.ndimage.uniform_filter1d (NI_UniformFilter1D): a running sum over the reflect-extended line,
// each output the sum divided by the size.
Plane uniform_1d(const Plane& p, int size, int axis) {
  Plane out = make_plane(p.height, p.width);
  const int n = axis == 0 ? p.height : p.width, lines = axis == 0 ? p.width : p.height;
  const int before = size / 2;
  std::vector<double> ext(static_cast<size_t>(n + size - 1));
  for (int l = 0; l < lines; ++l) {
    for (int k = 0; k < n + size - 1; ++k) {
      const int i = detail::reflect_index(k - before, n);
      ext[k] = axis == 0 ? p.at(i, l) : p.at(l, i);
    }
    double tmp = 0.0;
    for (int k = 0; k < size; ++k) tmp += ext[k];
    (axis == 0 ? out.at(0, l) : out.at(l, 0)) = tmp / size;
    for (int k = 1; k < n; ++k) {
      tmp += ext[k + size - 1] - ext[k - 1];
      (axis == 0 ? out.at(k, l) : out.at(l, k)) = tmp / size;
    }
  }
  return out;
}

void check_image(const Image& img, const std::string& what) {
  if ((img.channels != 1 && img.channels != 3) || std::min(img.height, img.width) < 2 ||
      img.px.size() != static_cast<size_t>(img.height) * img.width * img.channels)
    throw Error("detail path: " + what + " must be an HxW or HxWx3 image of at least 2x2, got " +
                std::to_string(img.height) + "x" + std::to_string(img.width) + "x" + std::to_string(img.channels));
}

// model.image_processing.detail.detail_planes: X - gaussian(X, sigma) of every channel (one plane for a gray image).
std::vector<Plane> detail_planes(const Image& img, double sigma) {
  std::vector<Plane> out;
  for (int c = 0; c < img.channels; ++c) {
    Plane p = make_plane(img.height, img.width);
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x) p.at(y, x) = img.at(y, x, c);
    const Plane base = detail::gaussian(p, sigma);
    for (size_t k = 0; k < p.v.size(); ++k) p.v[k] -= base.v[k];
    out.push_back(std::move(p));
  }
  return out;
}

// model.image_processing.detail._luma_of: the luma of channel planes (a gray image's one plane is its own).
Plane luma_of(const std::vector<Plane>& planes) {
  if (planes.size() == 1) return planes[0];
  Plane out = make_plane(planes[0].height, planes[0].width);
  for (size_t k = 0; k < out.v.size(); ++k) out.v[k] = kKr * planes[0].v[k] + kKg * planes[1].v[k] + kKb * planes[2].v[k];
  return out;
}

// model.image_processing.detail.trust: e / (e + (k n)^2), e = box(D^2, r), n the noise estimate of the luma y (or `given`, the
// whole image's, when y is a strip of it); 1 when noise_k is 0.
Plane trust(const Plane& y, const Plane& d, const DetailConfig& cfg, std::optional<double> given = std::nullopt) {
  Plane t = make_plane(d.height, d.width);
  if (cfg.noise_k <= 0) {
    std::fill(t.v.begin(), t.v.end(), 1.0);
    return t;
  }
  const double noise = cfg.noise_k * given.value_or(detail::noise_sigma(y));
  const double floor = noise * noise;
  Plane sq = d;
  for (auto& v : sq.v) v = v * v;
  const Plane energy = detail::box_filter(sq, cfg.radius);
  for (size_t k = 0; k < d.v.size(); ++k) t.v[k] = energy.v[k] / std::max(energy.v[k] + floor, 1e-12);
  return t;
}

// Python str.split() whitespace: ASCII \t\n\v\f\r, \x1c-\x1f, space, and the Unicode White_Space
// characters (UTF-8); returns the byte length of the whitespace character at s[i], 0 if none.
size_t whitespace_at(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) return 1;
  auto byte = [&](size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0; };
  if (c == 0xc2 && (byte(i + 1) == 0x85 || byte(i + 1) == 0xa0)) return 2;  // U+0085, U+00A0
  if (c == 0xe1 && byte(i + 1) == 0x9a && byte(i + 2) == 0x80) return 3;    // U+1680
  if (c == 0xe2 && byte(i + 1) == 0x80) {
    const unsigned char t = byte(i + 2);
    if ((t >= 0x80 && t <= 0x8a) || t == 0xa8 || t == 0xa9 || t == 0xaf) return 3;  // U+2000-200A, 2028, 2029, 202F
  }
  if (c == 0xe2 && byte(i + 1) == 0x81 && byte(i + 2) == 0x9f) return 3;  // U+205F
  if (c == 0xe3 && byte(i + 1) == 0x80 && byte(i + 2) == 0x80) return 3;  // U+3000
  return 0;
}

std::vector<std::string> string_list(const json& value, const std::string& where) {
  if (!value.is_array()) throw Error(where + " must be a list of strings, got " + value.dump());
  std::vector<std::string> out;
  for (const auto& item : value) {
    if (!item.is_string()) throw Error(where + " must be a list of strings, got the item " + item.dump());
    out.push_back(item.get<std::string>());
  }
  return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------ configs

void DetailConfig::validate(const std::string& where) const {
  if (!(sigma > 0)) throw Error(where + ": detail sigma must be positive, got " + fmt(sigma));
  if (radius < 0) throw Error(where + ": detail radius must be a non-negative integer, got " + std::to_string(radius));
  if (!(gain >= 0) || !(noise_k >= 0))
    throw Error(where + ": detail gain and noise_k must be >= 0, got gain " + fmt(gain) + ", noise_k " + fmt(noise_k));
  if (std::find(kDetailChannels.begin(), kDetailChannels.end(), channels) == kDetailChannels.end())
    throw Error(where + ": detail channels must be one of " + join(kDetailChannels, ", ") + ", got '" + channels + "'");
}

DetailConfig DetailConfig::from_json(const json& section, const std::string& where) {
  if (!section.is_object())
    throw Error(where + " must be an object with the fields " + join({std::begin(kConfigFields), std::end(kConfigFields)}, ", ") +
                ", got " + section.dump());
  DetailConfig c;
  for (const auto& [key, value] : section.items()) {
    const std::string field = where + "." + key;
    auto number = [&]() {
      if (!value.is_number()) throw Error(field + " must be a number, got " + value.dump());
      return value.get<double>();
    };
    if (key == "sigma") {
      c.sigma = number();
    } else if (key == "radius") {
      const double r = number();
      if (r != std::floor(r) || r < 0 || r > 1e6)
        throw Error(field + " must be a non-negative integer, got " + value.dump());
      c.radius = static_cast<int>(r);
    } else if (key == "fused_candidate") {
      if (!value.is_boolean()) throw Error(field + " must be true or false, got " + value.dump());
      c.fused_candidate = value.get<bool>();
    } else if (key == "gain") {
      c.gain = number();
    } else if (key == "noise_k") {
      c.noise_k = number();
    } else if (key == "channels") {
      if (!value.is_string()) throw Error(field + " must be one of " + join(kDetailChannels, ", ") + ", got " + value.dump());
      c.channels = value.get<std::string>();
    } else {
      throw Error(where + " has an unknown field '" + key + "' (fields: " +
                  join({std::begin(kConfigFields), std::end(kConfigFields)}, ", ") + ")");
    }
  }
  c.validate(where);
  return c;
}

json DetailConfig::to_json() const {
  return {{"sigma", sigma},     {"radius", radius},   {"fused_candidate", fused_candidate},
          {"gain", gain},       {"noise_k", noise_k}, {"channels", channels}};
}

const std::vector<std::string> kDetailModes = {"clean", "safe", "off"};
const std::vector<std::string> kDetailOffPrefixes = {"rain", "derain", "snow", "desnow", "strip", "destrip", "bands", "lines"};

std::string check_detail_mode(const std::string& mode) {
  if (mode != "auto" && std::find(kDetailModes.begin(), kDetailModes.end(), mode) == kDetailModes.end())
    throw Error("unknown detail mode '" + mode + "': choose auto, " + join(kDetailModes, ", "));
  return mode;
}

std::string normalize_detail_prompt(const std::string& prompt) {
  std::string out, word;
  for (size_t i = 0; i < prompt.size();) {
    if (const size_t n = whitespace_at(prompt, i)) {
      if (!word.empty()) out += (out.empty() ? "" : " ") + word, word.clear();
      i += n;
      continue;
    }
    const char c = prompt[i++];
    word += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  if (!word.empty()) out += (out.empty() ? "" : " ") + word;
  return out;
}

DetailSettings DetailSettings::from_json(const json& section, const std::string& where) {
  if (!section.is_object() || !section.contains("clean") || !section.contains("safe") || !section.contains("clean_prompts"))
    throw Error(where + ": needs 'clean' and 'safe' parameter sets (" +
                join({std::begin(kConfigFields), std::end(kConfigFields)}, ", ") + ") and 'clean_prompts'" +
                (section.is_object() ? "" : ", got " + section.dump()));
  DetailSettings s;
  s.clean = DetailConfig::from_json(section["clean"], where + ".clean");
  s.safe = DetailConfig::from_json(section["safe"], where + ".safe");
  for (const auto& p : string_list(section["clean_prompts"], where + ".clean_prompts"))
    s.clean_prompts.push_back(normalize_detail_prompt(p));
  if (section.contains("off_prefixes") && !section["off_prefixes"].is_null())
    s.off_prefixes = string_list(section["off_prefixes"], where + ".off_prefixes");
  return s;
}

json DetailSettings::to_json() const {
  return {{"clean", clean.to_json()}, {"safe", safe.to_json()}, {"clean_prompts", clean_prompts}, {"off_prefixes", off_prefixes}};
}

std::string DetailSettings::mode_for(const std::string& prompt) const {
  const std::string text = normalize_detail_prompt(prompt);
  if (std::find(clean_prompts.begin(), clean_prompts.end(), text) != clean_prompts.end()) return "clean";
  // re.findall(r"[a-z]+", text): maximal runs of a-z
  for (size_t i = 0; i < text.size();) {
    if (text[i] < 'a' || text[i] > 'z') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && text[j] >= 'a' && text[j] <= 'z') ++j;
    const std::string word = text.substr(i, j - i);
    for (const auto& prefix : off_prefixes)
      if (word.compare(0, prefix.size(), prefix) == 0 && word.size() >= prefix.size()) return "off";
    i = j;
  }
  return "safe";
}

std::optional<DetailConfig> DetailSettings::config_for(const std::string& prompt, const std::string& mode) const {
  std::string m = check_detail_mode(mode);
  if (m == "auto") m = mode_for(prompt);
  if (m == "off") return std::nullopt;
  return m == "clean" ? clean : safe;
}

// ------------------------------------------------------------------------------------------ filters

namespace detail {

int reflect_index(int i, int n) {
  const int period = 2 * n;
  int m = i % period;
  if (m < 0) m += period;
  return m < n ? m : period - 1 - m;
}

Plane luma(const Image& img) {
  Plane out = make_plane(img.height, img.width);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      if (img.channels == 1) {
        out.at(y, x) = img.at(y, x, 0);
      } else {
        const double r = img.at(y, x, 0), g = img.at(y, x, 1), b = img.at(y, x, 2);
        out.at(y, x) = kKr * r + kKg * g + kKb * b;
      }
    }
  return out;
}

Plane gaussian(const Plane& p, double sigma) {
  if (sigma <= 0) return p;
  // scipy.ndimage._gaussian_kernel1d: radius int(truncate * sigma + 0.5), exp(-0.5 / sigma^2 * x^2), normalised
  const int r = static_cast<int>(4.0 * sigma + 0.5);
  std::vector<double> phi(2 * static_cast<size_t>(r) + 1);
  const double c = -0.5 / (sigma * sigma);
  for (int x = -r; x <= r; ++x) phi[x + r] = std::exp(c * static_cast<double>(x * x));
  // numpy's sum: pairwise, 8 accumulators for 8 or more elements (within an ulp otherwise)
  double total = 0;
  const size_t n = phi.size();
  if (n < 8) {
    for (double v : phi) total += v;
  } else {
    double acc[8];
    for (int k = 0; k < 8; ++k) acc[k] = phi[k];
    size_t i = 8;
    for (; i + 8 <= n; i += 8)
      for (int k = 0; k < 8; ++k) acc[k] += phi[i + k];
    total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; ++i) total += phi[i];
  }
  std::vector<double> half(static_cast<size_t>(r) + 1);  // w[j] for offset +-j
  for (int j = 0; j <= r; ++j) half[j] = phi[r + j] / total;
  return correlate_symmetric(correlate_symmetric(p, half, 0), half, 1);
}

Plane box_filter(const Plane& p, int radius) {
  if (radius <= 0) return p;  // scipy skips axes of size 1
  const int size = 2 * radius + 1;
  return uniform_1d(uniform_1d(p, size, 0), size, 1);
}

// |HH| of the 2x2 Haar blocks of a gray plane (model.image_processing.detail._abs_hh), appended to `out`
void abs_hh(const Plane& y, std::vector<double>& out) {
  const int h = y.height / 2, w = y.width / 2;
  out.reserve(out.size() + static_cast<size_t>(h) * w);
  for (int r = 0; r < h; ++r)
    for (int c = 0; c < w; ++c)
      out.push_back(std::abs((y.at(2 * r, 2 * c) - y.at(2 * r, 2 * c + 1) - y.at(2 * r + 1, 2 * c) + y.at(2 * r + 1, 2 * c + 1)) * 0.5));
}

// np.median(hh) / 0.6745
double mad_sigma(std::vector<double> hh) {
  if (hh.empty()) return std::nan("");  // np.median of an empty array (an image under 2x2; _check refuses those)
  const size_t n = hh.size(), mid = n / 2;
  std::nth_element(hh.begin(), hh.begin() + static_cast<std::ptrdiff_t>(mid), hh.end());
  double median = hh[mid];
  if (n % 2 == 0) {
    const double lower = *std::max_element(hh.begin(), hh.begin() + static_cast<std::ptrdiff_t>(mid));
    median = (lower + median) / 2.0;
  }
  return median / kMadToSigma;
}

double noise_sigma(const Plane& y) {
  std::vector<double> hh;
  abs_hh(y, hh);
  return mad_sigma(std::move(hh));
}

std::vector<Plane> select_weights(const std::vector<Plane>& layers, int radius) {
  const Plane& first = layers.at(0);
  const size_t n = first.v.size();
  std::vector<Plane> energy;
  for (const auto& d : layers) {
    Plane sq = d;
    for (auto& v : sq.v) v = v * v;
    energy.push_back(box_filter(sq, radius));
  }
  std::vector<size_t> pick(n, 0);  // argmax, ties to the first
  for (size_t k = 0; k < n; ++k)
    for (size_t i = 1; i < layers.size(); ++i)
      if (energy[i].v[k] > energy[pick[k]].v[k]) pick[k] = i;
  std::vector<Plane> weights;
  for (size_t i = 0; i < layers.size(); ++i) {
    Plane w = make_plane(first.height, first.width);
    for (size_t k = 0; k < n; ++k) w.v[k] = pick[k] == i ? 1.0 : 0.0;
    weights.push_back(radius > 0 ? box_filter(w, radius) : std::move(w));
  }
  return weights;
}

}  // namespace detail

// ------------------------------------------------------------------------------------------ the stage

namespace {

// rows y0..y1 of an image, copied
Image rows_of(const Image& img, int y0, int y1) {
  const size_t row = static_cast<size_t>(img.width) * img.channels;
  return Image{y1 - y0, img.width, img.channels,
               std::vector<float>(img.px.begin() + static_cast<std::ptrdiff_t>(y0 * row),
                                  img.px.begin() + static_cast<std::ptrdiff_t>(y1 * row))};
}

// model.image_processing.detail.strip_noise_sigma: the noise estimate of a whole image's luma, `rows` (even) rows at a time
double strip_noise_sigma(const Image& img, int rows) {
  rows = std::max(2, rows / 2 * 2);
  const int h = img.height / 2 * 2;
  std::vector<double> hh;
  for (int y = 0; y < h; y += rows) detail::abs_hh(detail::luma(rows_of(img, y, std::min(y + rows, h))), hh);
  return detail::mad_sigma(std::move(hh));
}

Image restore_whole(const Image& fused, const Image& a, const Image& b, const DetailConfig& cfg,
                    const std::vector<double>& noise);

}  // namespace

int detail_halo(const DetailConfig& cfg) { return static_cast<int>(4.0 * cfg.sigma + 0.5) + 3 * cfg.radius; }

Image restore_detail(const Image& fused, const Image& a, const Image& b, const DetailConfig& cfg, int strip_rows) {
  cfg.validate("detail path");
  check_image(fused, "the fused image");
  check_image(a, "source A");
  check_image(b, "source B");
  if (fused.height != a.height || fused.width != a.width || fused.height != b.height || fused.width != b.width)
    throw Error("detail path: sizes differ: fused (" + std::to_string(fused.height) + ", " + std::to_string(fused.width) +
                "), A (" + std::to_string(a.height) + ", " + std::to_string(a.width) + "), B (" +
                std::to_string(b.height) + ", " + std::to_string(b.width) + ")");
  const int height = fused.height;
  if (strip_rows <= 0 || strip_rows >= height) return restore_whole(fused, a, b, cfg, {});
  if (strip_rows < 2) throw Error("detail path: a strip needs at least 2 rows, got " + std::to_string(strip_rows));
  // strips with detail_halo rows of context each side, the noise estimates of the whole sources
  std::vector<double> noise;
  if (cfg.noise_k > 0) noise = {strip_noise_sigma(a, strip_rows), strip_noise_sigma(b, strip_rows)};
  const int halo = detail_halo(cfg);
  Image out{fused.height, fused.width, fused.channels, std::vector<float>(fused.px.size())};
  const size_t row = static_cast<size_t>(fused.width) * fused.channels;
  for (int y0 = 0; y0 < height; y0 += strip_rows) {
    const int y1 = std::min(height, y0 + strip_rows), lo = std::max(0, y0 - halo), hi = std::min(height, y1 + halo);
    const Image part = restore_whole(rows_of(fused, lo, hi), rows_of(a, lo, hi), rows_of(b, lo, hi), cfg, noise);
    std::copy(part.px.begin() + static_cast<std::ptrdiff_t>((y0 - lo) * row),
              part.px.begin() + static_cast<std::ptrdiff_t>((y1 - lo) * row),
              out.px.begin() + static_cast<std::ptrdiff_t>(y0 * row));
  }
  return out;
}

namespace {

Image restore_whole(const Image& fused, const Image& a, const Image& b, const DetailConfig& cfg,
                    const std::vector<double>& noise) {
  const std::vector<const Image*> sources = {&a, &b};
  std::vector<Plane> ys;
  for (const Image* s : sources) ys.push_back(detail::luma(*s));
  const bool rgb = cfg.channels == "rgb" && fused.channels == 3;
  // rgb: every channel's detail, the luma's their linear mix; luma: the luma's own split
  std::vector<Plane> fused_planes, source_luma;
  std::vector<std::vector<Plane>> source_planes;
  Plane yf, detail_f;
  if (rgb) {
    fused_planes = detail_planes(fused, cfg.sigma);
    detail_f = luma_of(fused_planes);
    for (const Image* s : sources) {
      source_planes.push_back(detail_planes(*s, cfg.sigma));
      source_luma.push_back(luma_of(source_planes.back()));
    }
  } else {
    yf = detail::luma(fused);
    const Plane base_f = detail::gaussian(yf, cfg.sigma);
    detail_f = yf;
    for (size_t k = 0; k < yf.v.size(); ++k) detail_f.v[k] = yf.v[k] - base_f.v[k];
    for (const Plane& y : ys) {
      Plane d = y;
      const Plane base = detail::gaussian(d, cfg.sigma);
      for (size_t k = 0; k < d.v.size(); ++k) d.v[k] -= base.v[k];
      source_luma.push_back(std::move(d));
    }
  }
  std::vector<Plane> trusts, layers;
  for (size_t i = 0; i < sources.size(); ++i) {
    trusts.push_back(trust(ys[i], source_luma[i], cfg, noise.empty() ? std::nullopt : std::optional<double>(noise[i])));
    Plane layer = source_luma[i];
    for (size_t k = 0; k < layer.v.size(); ++k)
      layer.v[k] = trusts[i].v[k] * source_luma[i].v[k] + (1.0 - trusts[i].v[k]) * detail_f.v[k];
    layers.push_back(std::move(layer));
  }
  if (cfg.fused_candidate) layers.push_back(detail_f);
  const std::vector<Plane> weights = detail::select_weights(layers, cfg.radius);

  Image out{fused.height, fused.width, fused.channels, std::vector<float>(fused.px.size())};
  if (rgb) {
    for (int c = 0; c < 3; ++c) {
      const Plane& dfc = fused_planes[c];
      for (int y = 0; y < fused.height; ++y)
        for (int x = 0; x < fused.width; ++x) {
          const size_t k = static_cast<size_t>(y) * fused.width + x;
          // the candidates t_i D_i,c + (1 - t_i) D_F,c (and D_F,c), weighted by the luma's choice
          double chosen = 0.0;
          for (size_t i = 0; i < sources.size(); ++i) {
            const double d = source_planes[i][source_planes[i].size() == 3 ? c : 0].v[k];
            chosen += weights[i].v[k] * (trusts[i].v[k] * d + (1.0 - trusts[i].v[k]) * dfc.v[k]);
          }
          if (cfg.fused_candidate) chosen += weights[sources.size()].v[k] * dfc.v[k];
          out.at(y, x, c) = static_cast<float>(std::clamp(fused.at(y, x, c) + cfg.gain * (chosen - dfc.v[k]), 0.0, 1.0));
        }
    }
    return out;
  }
  Plane chosen = make_plane(yf.height, yf.width);
  for (size_t i = 0; i < layers.size(); ++i)
    for (size_t k = 0; k < chosen.v.size(); ++k) chosen.v[k] += weights[i].v[k] * layers[i].v[k];

  for (int y = 0; y < fused.height; ++y)
    for (int x = 0; x < fused.width; ++x) {
      const size_t k = static_cast<size_t>(y) * fused.width + x;
      const double y_out = std::clamp(yf.v[k] + cfg.gain * (chosen.v[k] - detail_f.v[k]), 0.0, 1.0);
      if (fused.channels == 1) {
        out.at(y, x, 0) = static_cast<float>(y_out);
        continue;
      }
      // rgb_to_ycbcr(F) with Y replaced, then ycbcr_to_rgb, clipped
      const double r = fused.at(y, x, 0), g = fused.at(y, x, 1), bl = fused.at(y, x, 2);
      const double yy = kKr * r + kKg * g + kKb * bl;
      const double cb = 0.5 + (bl - yy) / (2 * (1 - kKb)), cr = 0.5 + (r - yy) / (2 * (1 - kKr));
      const double cb0 = cb - 0.5, cr0 = cr - 0.5;
      const double ro = y_out + 2 * (1 - kKr) * cr0;
      const double bo = y_out + 2 * (1 - kKb) * cb0;
      const double go = (y_out - kKr * ro - kKb * bo) / kKg;
      out.at(y, x, 0) = static_cast<float>(std::clamp(ro, 0.0, 1.0));
      out.at(y, x, 1) = static_cast<float>(std::clamp(go, 0.0, 1.0));
      out.at(y, x, 2) = static_cast<float>(std::clamp(bo, 0.0, 1.0));
    }
  return out;
}

}  // namespace

}  // namespace latentfuse
