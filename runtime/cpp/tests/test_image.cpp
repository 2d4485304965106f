// Padding and the working-scale resampling against numpy (tests/vectors/padding.json from
// runtime.pipeline.pad_to_size and model.work_scale), the pad -> crop round trip, model-range
// conversion, and PNG 8/16-bit + JPEG write/read round trips.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

#include "check.hpp"
#include "latentfuse/image.hpp"

using namespace latentfuse;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const auto v = check::load(argv[1]);
  const fs::path tmp = argv[2];
  fs::create_directories(tmp);
  for (const auto& cs : v["cases"]) {
    Image img{cs["height"], cs["width"], cs["channels"], cs["image"].get<std::vector<float>>()};
    const std::string tag = std::to_string(img.width) + "x" + std::to_string(img.height);
    const int ph = padded_side(img.height, cs["minimum"]), pw = padded_side(img.width, cs["minimum"]);
    check::expect(ph == cs["padded_height"].get<int>() && pw == cs["padded_width"].get<int>(), tag + ": padded size");
    const Image padded = pad_to_size(img, ph, pw);
    check::expect(padded.px == cs["padded"].get<std::vector<float>>(), tag + ": reflect padding equals numpy");
    const Image back = crop(padded, img.height, img.width);
    check::expect(back.px == img.px, tag + ": pad -> crop round trip");
    check::expect(ph % 16 == 0 && pw % 16 == 0, tag + ": multiple of 16");
  }
  auto max_diff = [](const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return 1e9;
    double worst = 0;
    for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(double(a[k]) - double(b[k])));
    return worst;
  };
  for (const auto& cs : v["resample"]) {
    Image img{cs["height"], cs["width"], cs["channels"], cs["image"].get<std::vector<float>>()};
    const int k = cs["factor"];
    const std::string tag = std::to_string(img.width) + "x" + std::to_string(img.height) + "x" +
                            std::to_string(img.channels) + " at " + std::to_string(k) + "x";
    const Image up = upscale(img, k);
    check::expect(up.height == k * img.height && up.width == k * img.width, tag + ": upscaled size");
    check::expect(max_diff(up.px, cs["upscaled"].get<std::vector<float>>()) <= 1e-6, tag + ": bicubic equals numpy");
    const Image down = downscale(up, k);
    check::expect(max_diff(down.px, cs["downscaled"].get<std::vector<float>>()) <= 1e-6, tag + ": box mean equals numpy");
  }
  check::expect(upscale(Image{1, 1, 1, {0.25f}}, 1).px == std::vector<float>{0.25f}, "upscale by 1 is the identity");
  check::expect(check::throws([&] { downscale(Image{3, 4, 1, std::vector<float>(12)}, 2); }), "downscale of an odd size is an error");

  // model range round trip: [0,1] -> [-1,1] NCHW -> [0,1] HWC
  Image rgb{5, 7, 3, std::vector<float>(105)};
  for (size_t k = 0; k < rgb.px.size(); ++k) rgb.px[k] = static_cast<float>(k % 17) / 16.0f;
  const Tensor t = to_model_range({pad_to_size(rgb, 16, 16)});
  check::expect(t.shape == std::vector<int64_t>({1, 3, 16, 16}), "model-range shape");
  check::expect(from_model_range(t, 5, 7).px == rgb.px, "model-range round trip");

  // PNG 8 / 16 bit, gray and RGB; JPEG 8 bit
  for (int bits : {8, 16})
    for (int channels : {1, 3}) {
      Image img{9, 13, channels, std::vector<float>(9 * 13 * channels)};
      const double peak = bits == 8 ? 255.0 : 65535.0;
      for (size_t k = 0; k < img.px.size(); ++k) img.px[k] = static_cast<float>(((k * 7919) % 1000) / 999.0);
      const fs::path path = tmp / ("img" + std::to_string(bits) + "_" + std::to_string(channels) + ".png");
      write_image(path, img, bits);
      const Image got = read_image(path);
      const std::string tag = std::to_string(bits) + "-bit " + std::to_string(channels) + "-channel PNG";
      check::expect(got.height == 9 && got.width == 13 && got.channels == channels, tag + ": shape");
      double worst = 0;
      for (size_t k = 0; k < img.px.size() && k < got.px.size(); ++k)
        worst = std::max(worst, std::abs(double(got.px[k]) - double(img.px[k])));
      check::expect(worst <= 0.5 / peak + 1e-7, tag + ": round trip within half a quantisation step");
    }
  Image smooth{32, 32, 3, std::vector<float>(32 * 32 * 3)};
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x)
      for (int c = 0; c < 3; ++c) smooth.at(y, x, c) = (x + y + 10 * c) / 100.0f;
  write_image(tmp / "smooth.jpg", smooth);
  const Image jpg = read_image(tmp / "smooth.jpg");
  double err = 0;
  for (size_t k = 0; k < jpg.px.size(); ++k) err = std::max(err, std::abs(double(jpg.px[k]) - double(smooth.px[k])));
  check::expect(jpg.channels == 3 && err < 0.05, "JPEG round trip (quality 95)");
  check::expect(to_gray(to_rgb(Image{1, 1, 1, {0.5f}})).px[0] == 0.5f * 0.299f + 0.5f * 0.587f + 0.5f * 0.114f, "luma");
  check::expect(check::throws([&] { read_image(tmp / "missing.png"); }), "missing image is an error");
  check::expect(check::throws([&] { read_image(argv[1]); }), "a non-image file is an error");
  check::expect(check::throws([&] { write_image(tmp / "x.tif", smooth); }), "unknown suffix is an error");
  check::expect(check::throws([&] { write_image(tmp / "x.jpg", smooth, 16); }), "16-bit JPEG is an error");
  return check::finish("test_image");
}
