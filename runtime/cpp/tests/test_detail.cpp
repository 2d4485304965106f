// The detail path against model/image_processing/detail.py (tests/vectors/detail.json): restore_detail on small RGB, gray
// and VIF-style (A RGB, B gray) images under configs covering non-integer sigma, gaussians and box windows
// wider than the image, radius 0, fused_candidate both ways, noise_k 0 and > 0, gain != 1 with clipping
// and identical sources (argmax ties) within 1e-5; the filters (scipy gaussian / uniform, reflect), luma
// and noise_sigma; DetailSettings parsed from a manifest section, mode_for / config_for on assorted
// prompts exactly; and the one-line errors of malformed sections and images. With a second argument (a
// scratch directory), the stage inside Pipeline::fuse over stand-in graphs: at the input size on the
// decoded image, the sources as read (B gray, one channel), before the gray conversion, picked by prompt.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "check.hpp"
#include "latentfuse/detail.hpp"
#include "latentfuse/pipeline.hpp"

using namespace latentfuse;
using nlohmann::json;

static Image image_of(const json& entry) {
  const auto shape = entry["shape"].get<std::vector<int>>();
  Image img{shape.at(0), shape.at(1), shape.size() == 3 ? shape[2] : 1, entry["values"].get<std::vector<float>>()};
  return img;
}

static double max_diff(const std::vector<double>& a, const json& ref_json) {
  const auto ref = ref_json.get<std::vector<double>>();
  if (a.size() != ref.size()) return 1e9;
  double worst = 0;
  for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(a[k] - ref[k]));
  return worst;
}

static double max_diff(const std::vector<float>& a, const json& ref) {
  return max_diff(std::vector<double>(a.begin(), a.end()), ref);
}

namespace fs = std::filesystem;

// Stand-in graphs: the encoder an 8x8 box mean per channel, the regression DiT the mean of both
// latents, the decoder an 8x nearest-neighbour enlargement: a blocky fused image for the stage to sharpen.
class StubRunner : public Runner {
 public:
  std::string name() const override { return "stub"; }
  std::vector<Tensor> run(const GraphInfo& graph, const std::vector<Tensor>& in) override {
    if (graph.kind == "vae_encoder") {
      const Tensor& x = in.at(0);
      const int64_t B = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
      Tensor out = Tensor::zeros({B, C, H / 8, W / 8});
      for (int64_t p = 0; p < B * C; ++p)
        for (int64_t r = 0; r < H / 8; ++r)
          for (int64_t c = 0; c < W / 8; ++c) {
            double sum = 0;
            for (int dy = 0; dy < 8; ++dy)
              for (int dx = 0; dx < 8; ++dx) sum += x.f[(p * H + r * 8 + dy) * W + c * 8 + dx];
            out.f[(p * (H / 8) + r) * (W / 8) + c] = static_cast<float>(sum / 64);
          }
      return {out};
    }
    if (graph.kind == "dit") {
      std::map<std::string, Tensor> feeds;
      for (size_t k = 0; k < in.size(); ++k) feeds[graph.inputs[k].name] = in[k];
      Tensor out = feeds.at("z_a");
      for (size_t k = 0; k < out.f.size(); ++k) out.f[k] = 0.5f * (out.f[k] + feeds.at("z_b").f[k]);
      return {out};
    }
    const Tensor& z = in.at(0);
    const int64_t C = z.shape[1], h = z.shape[2], w = z.shape[3];
    Tensor out = Tensor::zeros({1, C, 8 * h, 8 * w});
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < 8 * h; ++y)
        for (int64_t x = 0; x < 8 * w; ++x) out.f[(c * 8 * h + y) * 8 * w + x] = z.f[(c * h + y / 8) * w + x / 8];
    return {out};
  }
};

// A bundle of the stand-in graphs with a prompt cache of two prompts, with or without a detail section.
static fs::path stub_bundle(const fs::path& root, const json& detail) {
  fs::create_directories(root);
  std::ofstream(root / "graph.bin") << "stand-in";
  {  // safetensors: vif / derain embeds [1, 1, 2] F32, masks [1, 1] I64
    std::string header = R"({"vif.embeds":{"dtype":"F32","shape":[1,1,2],"data_offsets":[0,8]},)"
                         R"("vif.mask":{"dtype":"I64","shape":[1,1],"data_offsets":[8,16]},)"
                         R"("derain.embeds":{"dtype":"F32","shape":[1,1,2],"data_offsets":[16,24]},)"
                         R"("derain.mask":{"dtype":"I64","shape":[1,1],"data_offsets":[24,32]}})";
    const uint64_t n = header.size();
    const float e[2] = {0.5f, -0.5f};
    const int64_t m = 1;
    std::ofstream out(root / "prompts.safetensors", std::ios::binary);
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header;
    for (int k = 0; k < 2; ++k) {
      out.write(reinterpret_cast<const char*>(e), 8);
      out.write(reinterpret_cast<const char*>(&m), 8);
    }
  }
  auto io = [](std::vector<std::string> names) {
    json list = json::array();
    for (const auto& n : names) list.push_back({{"name", n}, {"dtype", "float32"}, {"shape", json::array()}});
    return list;
  };
  json m = {{"format", "latentfuse-bundle"}, {"format_version", 1}};
  m["graphs"]["vae_encoder"] = {{"kind", "vae_encoder"}, {"file", "graph.bin"}, {"inputs", io({"image"})}, {"outputs", io({"latent"})}};
  m["graphs"]["vae_decoder"] = {{"kind", "vae_decoder"}, {"file", "graph.bin"}, {"inputs", io({"latent"})}, {"outputs", io({"image"})}};
  m["graphs"]["dit_regression"] = {{"kind", "dit"}, {"head", "regression"}, {"file", "graph.bin"},
                                   {"inputs", io({"z_a", "z_b", "prompt_embeds", "prompt_mask"})}, {"outputs", io({"velocity"})}};
  for (const char* f : {"graph.bin", "prompts.safetensors"})
    m["files"][f] = {{"sha256", sha256_file(root / f)}, {"bytes", fs::file_size(root / f)}};
  m["prompt_cache"] = {{"file", "prompts.safetensors"},
                       {"prompts", {{"vif", "fuse the infrared and visible images"}, {"derain", "derain the images"}}}};
  if (!detail.is_null()) m["detail"] = detail;
  std::ofstream(root / "manifest.json") << m.dump(2);
  return root;
}

static void pipeline_checks(const fs::path& tmp, const json& section) {
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  const int h = 20, w = 28;  // padded to 32 x 32: the crop back and a non-multiple-of-8 input size
  Image a{h, w, 3, std::vector<float>(h * w * 3)}, b{h, w, 1, std::vector<float>(h * w)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) a.at(y, x, c) = static_cast<float>(0.3 + 0.2 * std::sin(1.1 * x + 0.4 * c) * std::cos(0.7 * y));
      b.at(y, x, 0) = ((x / 3 + y / 4) % 2) ? 0.75f : 0.2f;
    }
  write_image(tmp / "a.png", a, 16);
  write_image(tmp / "b.png", b, 16);
  const Image ra = read_image(tmp / "a.png"), rb = read_image(tmp / "b.png");
  check::expect(ra.channels == 3 && rb.channels == 1, "the pair reads as RGB + gray");
  Pipeline with(Bundle::open(stub_bundle(tmp / "with", section)), std::make_unique<StubRunner>());
  Pipeline without(Bundle::open(stub_bundle(tmp / "without", json())), std::make_unique<StubRunner>());
  const DetailSettings settings = DetailSettings::from_json(section);
  auto fuse = [&](Pipeline& p, const std::string& detail, std::optional<std::string> prompt, const char* first = "a.png",
                  const char* second = "b.png") {
    FuseOptions o;
    o.mode = "regression", o.detail = detail, o.prompt = prompt;
    return p.fuse(tmp / first, tmp / second, o);
  };
  const FuseResult off = fuse(with, "off", std::nullopt), none = fuse(without, "auto", std::nullopt);
  const FuseResult automatic = fuse(with, "auto", std::nullopt), safe = fuse(with, "safe", std::nullopt);
  check::expect(off.detail == "off" && none.detail.empty() && automatic.detail == "clean" && safe.detail == "safe",
                "the pipeline reports the detail parameters it ran");
  check::expect(off.image.px == none.image.px && off.image.channels == 3 && off.image.height == h && off.image.width == w,
                "--detail off equals a bundle without a detail path");
  const Image want = restore_detail(off.image, ra, rb, settings.clean);
  check::expect(automatic.image.px == want.px, "auto on the canonical prompt: the clean set on the decoded image and the sources as read");
  check::expect(safe.image.px == restore_detail(off.image, ra, rb, settings.safe).px, "--detail safe: the safe set");
  check::expect(max_diff(automatic.image.px, json(off.image.px)) > 1e-3, "the stage changes the stand-in's blocky image");
  const FuseResult derain = fuse(with, "auto", std::string("derain the images"));
  check::expect(derain.detail == "off" && derain.image.px == off.image.px, "auto on a derain prompt: off");
  check::expect(check::throws([&] { fuse(with, "sharp", std::nullopt); }), "an unknown detail mode is an error");
  check::expect(check::throws([&] { fuse(without, "sharp", std::nullopt); }), "an unknown detail mode is an error without a detail path too");
  // both gray: the stage runs on the decoded RGB image, then the gray conversion
  const FuseResult gray_off = fuse(with, "off", std::nullopt, "b.png", "b.png");
  const FuseResult gray = fuse(with, "auto", std::nullopt, "b.png", "b.png");
  check::expect(gray.image.channels == 1 && gray_off.image.channels == 1 && max_diff(gray.image.px, json(gray_off.image.px)) > 1e-3,
                "a gray pair: gray out, detail restored");
  const std::string table = format_latency({automatic.times}, "stub regression");
  check::expect(table.find("| Detail ") != std::string::npos && table.find("VAE-Dec") < table.find("| Detail "),
                "the latency table has a Detail row after VAE-Dec");
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const auto v = check::load(argv[1]);
  std::map<std::string, Image> images;
  for (const auto& [name, entry] : v["images"].items()) images[name] = image_of(entry);

  // ---- restore_detail
  double worst = 0;
  for (const auto& cs : v["cases"]) {
    const DetailConfig cfg = DetailConfig::from_json(cs["config"], "case");
    const Image& f = images.at(cs["fused"]);
    const int strip_rows = cs.contains("strip_rows") && !cs["strip_rows"].is_null() ? cs["strip_rows"].get<int>() : 0;
    const Image out = restore_detail(f, images.at(cs["a"]), images.at(cs["b"]), cfg, strip_rows);
    const double d = max_diff(out.px, cs["out"]);
    worst = std::max(worst, d);
    const std::string tag = "restore_detail(" + cs["fused"].get<std::string>() + ", " + cs["a"].get<std::string>() +
                            ", " + cs["b"].get<std::string>() + ", " + cs["config"].dump() + ", strips " +
                            std::to_string(strip_rows) + ")";
    check::expect(out.height == f.height && out.width == f.width && out.channels == f.channels, tag + ": fused's shape");
    check::expect(d <= 1e-5, tag + " equals Python (max |diff| " + std::to_string(d) + ")");
  }
  std::cout << "restore_detail: max |C++ - Python| " << worst << " over " << v["cases"].size() << " cases\n";

  // ---- filters, luma, noise estimate
  for (const auto& cs : v["filters"]) {
    const Image& img = images.at(cs["image"]);
    const detail::Plane y = detail::luma(img);
    detail::Plane out;
    std::string tag = cs["kind"].get<std::string>() + " of " + cs["image"].get<std::string>();
    if (cs["kind"] == "gaussian") {
      out = detail::gaussian(y, cs["sigma"].get<double>());
      tag += ", sigma " + cs["sigma"].dump();
    } else if (cs["kind"] == "box") {
      out = detail::box_filter(y, cs["radius"].get<int>());
      tag += ", radius " + cs["radius"].dump();
    } else {
      out = y;
    }
    check::expect(max_diff(out.v, cs["out"]) <= 1e-6, tag + " equals scipy / numpy");
  }
  for (const auto& cs : v["noise_sigma"]) {
    const double got = detail::noise_sigma(detail::luma(images.at(cs["image"])));
    const double want = cs["sigma"].get<double>();
    check::expect(std::abs(got - want) <= 1e-12 * std::max(1.0, std::abs(want)),
                  "noise_sigma(" + cs["image"].get<std::string>() + ") = " + std::to_string(got) + ", Python " +
                      std::to_string(want));
  }
  check::expect(detail::reflect_index(-1, 4) == 0 && detail::reflect_index(4, 4) == 3 && detail::reflect_index(-5, 4) == 3 &&
                    detail::reflect_index(9, 4) == 1 && detail::reflect_index(-9, 2) == 0,
                "reflect index is half-sample symmetric and periodic");

  // ---- settings: parse, normalise, the per-prompt rule
  for (const auto& st : v["settings"]) {
    const DetailSettings s = DetailSettings::from_json(st["section"], "manifest.json: detail");
    check::expect(s.to_json() == st["parsed"], "DetailSettings.from_dict(" + st["section"].dump() + ") as Python");
    for (const auto& p : st["prompts"]) {
      const std::string prompt = p["prompt"];
      check::expect(s.mode_for(prompt) == p["mode"].get<std::string>(),
                    "mode_for(" + json(prompt).dump() + ") = " + s.mode_for(prompt) + ", Python " + p["mode"].dump());
      for (const auto& [mode, want] : p["config_for"].items()) {
        const auto cfg = s.config_for(prompt, mode);
        const bool ok = want.is_null() ? !cfg.has_value()
                                       : cfg && cfg->to_json() == (want == "clean" ? s.clean : s.safe).to_json();
        check::expect(ok, "config_for(" + json(prompt).dump() + ", " + mode + ") is " + want.dump());
      }
    }
  }

  // ---- errors: one line naming the field
  const json good = v["settings"][0]["section"];
  auto error_of = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const Error& err) {
      return err.what();
    }
    return "";
  };
  auto bad = [&](const std::string& what, const std::function<void(json&)>& edit, const std::string& expect_in) {
    json section = good;
    edit(section);
    const std::string msg = error_of([&] { DetailSettings::from_json(section, "/b/manifest.json: detail"); });
    check::expect(!msg.empty() && msg.find("manifest.json") != std::string::npos && msg.find(expect_in) != std::string::npos,
                  what + " is an error naming manifest.json and '" + expect_in + "' (got: " + msg + ")");
  };
  bad("a missing safe set", [](json& s) { s.erase("safe"); }, "'safe'");
  bad("missing clean_prompts", [](json& s) { s.erase("clean_prompts"); }, "clean_prompts");
  bad("a non-object section", [](json& s) { s = json::array(); }, "'clean'");
  bad("sigma 0", [](json& s) { s["clean"]["sigma"] = 0; }, "sigma");
  bad("a string sigma", [](json& s) { s["safe"]["sigma"] = "4"; }, "detail.safe.sigma");
  bad("radius -1", [](json& s) { s["safe"]["radius"] = -1; }, "detail.safe.radius");
  bad("radius 1.5", [](json& s) { s["clean"]["radius"] = 1.5; }, "detail.clean.radius");
  bad("a numeric fused_candidate", [](json& s) { s["clean"]["fused_candidate"] = 1; }, "detail.clean.fused_candidate");
  bad("a negative gain", [](json& s) { s["clean"]["gain"] = -0.5; }, "gain");
  bad("a negative noise_k", [](json& s) { s["safe"]["noise_k"] = -1; }, "noise_k");
  bad("an unknown field", [](json& s) { s["clean"]["sharpen"] = 2; }, "sharpen");
  bad("unknown channels", [](json& s) { s["clean"]["channels"] = "ycbcr"; }, "channels must be one of luma, rgb");
  bad("numeric channels", [](json& s) { s["safe"]["channels"] = 3; }, "detail.safe.channels");
  bad("a non-list clean_prompts", [](json& s) { s["clean_prompts"] = "fuse"; }, "detail.clean_prompts");
  bad("a non-string off prefix", [](json& s) { s["off_prefixes"] = json::array({"rain", 3}); }, "detail.off_prefixes");
  {
    json section = good;
    section["clean"]["radius"] = 3.0;  // Python accepts an integral float
    check::expect(DetailSettings::from_json(section).clean.radius == 3, "radius 3.0 reads as 3");
  }
  check::expect(check::throws([] { check_detail_mode("sharp"); }), "an unknown detail mode is an error");
  check::expect(check_detail_mode("auto") == "auto" && check_detail_mode("off") == "off", "auto and off are modes");
  check::expect(normalize_detail_prompt("  Fuse\tTHE\n images  ") == "fuse the images", "prompts normalise as Python");

  const Image& f = images.at("f13");
  const Image& a = images.at("a13");
  const Image& b7 = images.at("b7g");
  DetailConfig cfg;
  check::expect(check::throws([&] { restore_detail(f, a, b7, cfg); }), "sources of another size are an error");
  const Image line{1, 5, 3, std::vector<float>(15, 0.5f)};
  check::expect(check::throws([&] { restore_detail(line, line, line, cfg); }), "an image under 2x2 is an error");
  const Image two{4, 4, 2, std::vector<float>(32, 0.5f)};
  check::expect(check::throws([&] { restore_detail(two, two, two, cfg); }), "a 2-channel image is an error");
  cfg.sigma = 0;
  check::expect(check::throws([&] { restore_detail(f, a, a, cfg); }), "sigma 0 is an error");
  // a flat image stays flat (no detail anywhere; the noise estimate is 0)
  const Image flat{6, 8, 3, std::vector<float>(144, 0.25f)};
  const Image same = restore_detail(flat, flat, flat, DetailConfig{});
  check::expect(max_diff(same.px, json(flat.px)) <= 1e-7, "a flat image is unchanged");
  if (argc >= 3) pipeline_checks(argv[2], good);
  return check::finish("test_detail");
}
