// Tiling against runtime/backends/tiled.py (tests/vectors/tiling.json): window starts and feathering
// weights exactly, and whole tiled calls of the four graph kinds over the same stand-in graphs as
// make_vectors.py's WindowMeanBackend (each output shifted by its window's mean, so a wrong window,
// unit conversion or blend weight changes the numbers) within 1e-5.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "check.hpp"
#include "latentfuse/tiling.hpp"

using namespace latentfuse;

static float mean(const Tensor& t) {
  double sum = 0;
  for (float v : t.f) sum += v;
  return static_cast<float>(sum / static_cast<double>(t.f.size()));
}

// WindowMeanBackend's graphs
static Tensor encode(const Tensor& x) {  // 8x8 box mean + the window's mean
  const int64_t planes = x.shape[0] * x.shape[1], H = x.shape[2], W = x.shape[3], h = H / 8, w = W / 8;
  Tensor out = Tensor::zeros({x.shape[0], x.shape[1], h, w});
  const float m = mean(x);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t r = 0; r < h; ++r)
      for (int64_t c = 0; c < w; ++c) {
        double sum = 0;
        for (int dy = 0; dy < 8; ++dy)
          for (int dx = 0; dx < 8; ++dx) sum += x.f[(p * H + r * 8 + dy) * W + c * 8 + dx];
        out.f[(p * h + r) * w + c] = static_cast<float>(sum / 64.0) + m;
      }
  return out;
}

static Tensor decode(const Tensor& z) {  // 8x nearest-neighbour enlargement - the window's mean
  const int64_t planes = z.shape[0] * z.shape[1], h = z.shape[2], w = z.shape[3], H = h * 8, W = w * 8;
  Tensor out = Tensor::zeros({z.shape[0], z.shape[1], H, W});
  const float m = mean(z);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t r = 0; r < H; ++r)
      for (int64_t c = 0; c < W; ++c) out.f[(p * H + r) * W + c] = z.f[(p * h + r / 8) * w + c / 8] - m;
  return out;
}

static double max_diff(const std::vector<float>& a, const nlohmann::json& b) {
  const auto ref = b.get<std::vector<float>>();
  if (a.size() != ref.size()) return 1e9;
  double worst = 0;
  for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(double(a[k]) - double(ref[k])));
  return worst;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const auto v = check::load(argv[1]);
  for (const auto& cs : v["window_starts"]) {
    const auto got = window_starts(cs["size"], cs["window"], cs["overlap"], cs["step"]);
    check::expect(got == cs["starts"].get<std::vector<int>>(), "window_starts(" + cs["size"].dump() + ", " +
                                                                   cs["window"].dump() + ") equals Python");
  }
  for (const auto& cs : v["ramps"])
    check::expect(ramp(cs["n"], cs["overlap"]) == cs["weights"].get<std::vector<float>>(),
                  "ramp(" + cs["n"].dump() + ", " + cs["overlap"].dump() + ") equals numpy");

  auto tensor = [](const nlohmann::json& shape, const nlohmann::json& values) {
    return Tensor::from_float(shape.get<std::vector<int64_t>>(), values.get<std::vector<float>>());
  };
  const Tensor image = tensor(v["image"]["shape"], v["image"]["values"]);
  const auto& lat = v["latents"];
  const Tensor z_a = tensor(lat["shape"], lat["z_a"]), z_b = tensor(lat["shape"], lat["z_b"]),
               z_t = tensor(lat["shape"], lat["z_t"]);
  const float t = lat["t"].get<float>();
  // the first channel of z_a (make_vectors.py decodes z_a[:, :1])
  const int64_t plane = z_a.shape[2] * z_a.shape[3];
  const Tensor z_dec = Tensor::from_float({1, 1, z_a.shape[2], z_a.shape[3]},
                                          std::vector<float>(z_a.f.begin(), z_a.f.begin() + plane));
  for (const auto& cs : v["calls"]) {
    Tiler tiler(cs["max_height"], cs["max_width"], cs["overlap"]);
    const std::string tag = cs["max_width"].dump() + "x" + cs["max_height"].dump() + " windows";
    check::expect(tiler.overlap() == cs["effective_overlap"].get<int>(), tag + ": overlap clamped as in Python");
    const Tensor enc = tiler.run({image}, 1, kLatentFactor, [](const std::vector<Tensor>& x) { return encode(x[0]); });
    check::expect(max_diff(enc.f, cs["encode"]) <= 1e-5, tag + ": tiled VAE encoder equals Python");
    const Tensor vel = tiler.run({z_a, z_b, z_t}, kLatentFactor, kLatentFactor, [&](const std::vector<Tensor>& x) {
      Tensor out = x[0];
      const float mb = mean(x[1]);
      for (size_t k = 0; k < out.f.size(); ++k) out.f[k] = x[2].f[k] * t + x[0].f[k] - mb;
      return out;
    });
    check::expect(max_diff(vel.f, cs["velocity"]) <= 1e-5, tag + ": tiled velocity equals Python");
    const Tensor reg = tiler.run({z_a, z_b}, kLatentFactor, kLatentFactor, [](const std::vector<Tensor>& x) {
      Tensor out = x[0];
      const float mb = mean(x[1]);
      for (auto& value : out.f) value = 0.5f * value + mb;
      return out;
    });
    check::expect(max_diff(reg.f, cs["regress"]) <= 1e-5, tag + ": tiled regression equals Python");
    const Tensor dec = tiler.run({z_dec}, kLatentFactor, 1, [](const std::vector<Tensor>& x) { return decode(x[0]); });
    check::expect(max_diff(dec.f, cs["decode"]) <= 1e-5, tag + ": tiled VAE decoder equals Python");
    check::expect(tiler.calls() == cs["calls"].get<int>(), tag + ": as many window calls as Python");
  }
  // a local graph is unchanged by tiling (the blend weights sum to one everywhere)
  Tiler tiler(32, 32, 64);
  const Tensor same = tiler.run({image}, 1, 1, [](const std::vector<Tensor>& x) { return x[0]; });
  check::expect(max_diff(same.f, nlohmann::json(image.f)) <= 1e-6, "tiling an identity graph is the identity");
  check::expect(check::throws([] { Tiler(16, 64); }), "a window under 32 px is an error");
  check::expect(check::throws([] { Tiler(64, 64, 8); }), "an overlap under 16 px is an error");
  check::expect(check::throws([&] { crop_hw(image, 40, 0, 16, 16); }), "a window outside the tensor is an error");
  return check::finish("test_tiling");
}
