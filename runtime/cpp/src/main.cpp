// latentfuse-host: the C++ twin of `latentfuse fuse`, running a deployment bundle without Python.
//
//   latentfuse-host A B --task vif --bundle DIR [--backend aoti|tensorrt] [--mode flow|regression]
//                   [--sampler NAME] [--steps N] [--g G] [--seed S] [--prompt TEXT] [--prior NAME] [--start T]
//                   [--bit-depth 8|16] [--tile [PX]] [--detail auto|clean|safe|off] [--warmup N --runs M]
//                   [--no-verify] -o OUT
//
// Any size runs: the VAE on whole images (tiles only over 768 px or --tile PX, within the bundle's
// limit), the DiT in the model's window, the windows batched (runtime.pipeline.Pipeline.plan_windows).
// The decoded image goes through the bundle's detail path (manifest "detail", model/image_processing/detail.py) when it
// has one: --detail picks the parameters (auto: by prompt).
//
// Errors are one line on stderr and exit status 2 (usage errors too), as the Python CLI does.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <optional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "latentfuse/detail.hpp"
#include "latentfuse/pipeline.hpp"
#include "latentfuse/samplers.hpp"

using namespace latentfuse;

namespace {

const char* kUsage =
    "usage: latentfuse-host A B --task {vif,mef,mff} --bundle DIR -o OUT [--backend aoti|tensorrt]\n"
    "                       [--mode flow|regression] [--sampler NAME] [--steps N] [--g G] [--seed S]\n"
    "                       [--prompt TEXT] [--prior gaussian|source_a|source_b|source_mean] [--start T]\n"
    "                       [--bit-depth 8|16] [--tile [PX]] [--detail auto|clean|safe|off] [--warmup N]\n"
    "                       [--runs M] [--max-memory SIZE] [--fidelity W] [--no-verify]\n"
    "  --start T   where the flow starts, T in [0, 1): 0 samples from the prior (the paper), T > 0 refines\n"
    "              the regression graph's estimate noised to T, one more DiT call (default: the manifest's\n"
    "              sampler.start, else 0)\n"
    "  --tile PX   run the VAE in tiles of at most PX working pixels per side, to bound memory (default:\n"
    "              whole images up to 768 px, tiled only over that or the bundle's size limit)\n"
    "  --max-memory SIZE  memory budget of one fuse, e.g. 3G or 1500M: VAE tiles, DiT windows per call and\n"
    "              detail strips are sized to it; one that cannot be met is an error (default: half the\n"
    "              machine's memory)\n"
    "  --detail M  the pixel-space detail path after the VAE decoder (bundles with a manifest 'detail'\n"
    "              section; others have none): auto (default) picks by prompt (the canonical prompts:\n"
    "              clean, prompts naming rain / snow / stripes: off, others: safe), or clean, safe, off\n"
    "  --fidelity W  weight in [0, 1] of the bundle's fidelity decoder (graph 'fidelity'), the learned stage\n"
    "              after the VAE decoder that gives the image the sources' detail back: F + W (fidelity - F);\n"
    "              default 1 where the bundle has it, 0 skips it; with it, --detail auto runs no detail path\n";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> opts;
  bool verify = true;
};

Args parse(int argc, char** argv) {
  static const std::vector<std::string> valued = {"--task", "--bundle", "--backend", "--mode", "--sampler", "--steps",
                                                  "--g", "--seed", "--prompt", "--prior", "--start", "--bit-depth", "--warmup",
                                                  "--runs", "-o", "--out", "--tile", "--detail", "--max-memory",
                                                  "--fidelity"};
  Args args;
  for (int k = 1; k < argc; ++k) {
    std::string a = argv[k];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage << "samplers: ";
      for (const auto& s : samplers::sampler_names()) std::cout << s << " ";
      std::cout << "\nbackends built: ";
      for (const auto& b : available_backends()) std::cout << b << " ";
      std::cout << "\n";
      std::exit(0);
    }
    if (a == "--no-verify") {
      args.verify = false;
      continue;
    }
    if (a == "--tile") {  // argparse nargs="?": a bare --tile is the automatic choice
      const bool value = k + 1 < argc && (argv[k + 1][0] != '-' || std::isdigit(static_cast<unsigned char>(argv[k + 1][1])));
      args.opts["--tile"] = value ? argv[++k] : "";
      continue;
    }
    std::string value;
    const auto eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) value = a.substr(eq + 1), a = a.substr(0, eq);
    if (std::find(valued.begin(), valued.end(), a) != valued.end()) {
      if (eq == std::string::npos) {
        if (k + 1 >= argc) throw Error("argument " + a + " needs a value");
        value = argv[++k];
      }
      args.opts[a == "-o" ? "--out" : a] = value;
    } else if (!a.empty() && a[0] == '-' && a.size() > 1) {
      throw Error("unrecognized argument " + a + " (see --help)");
    } else {
      args.positional.push_back(a);
    }
  }
  return args;
}

long long to_int(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw Error("argument " + flag + ": invalid integer '" + v + "'");
}

double to_double(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    const double x = std::stod(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw Error("argument " + flag + ": invalid number '" + v + "'");
}

int run(int argc, char** argv) {
  Args args = parse(argc, argv);
  auto opt = [&](const std::string& k) { return args.opts.count(k) ? std::optional<std::string>(args.opts[k]) : std::nullopt; };
  if (args.positional.size() != 2) throw Error("expected two input images A B, got " + std::to_string(args.positional.size()));
  if (!opt("--task")) throw Error("the following argument is required: --task {vif,mef,mff}");
  if (!opt("--bundle")) throw Error("the following argument is required: --bundle DIR");
  if (!opt("--out")) throw Error("the following argument is required: -o/--out OUT");

  FuseOptions o;
  o.task = *opt("--task");
  o.prompt = opt("--prompt");
  o.mode = opt("--mode").value_or(o.mode);  // FuseOptions::mode: regression, as Python's DEFAULT_MODE
  o.sampler = opt("--sampler");
  o.prior = opt("--prior");
  if (opt("--steps")) o.steps = static_cast<int>(to_int("--steps", *opt("--steps")));
  if (opt("--start")) o.start = to_double("--start", *opt("--start"));
  if (opt("--g")) {
    o.g = to_double("--g", *opt("--g"));
    if (!(*o.g >= 0)) throw Error("argument --g: the diffusion norm must be >= 0, got " + *opt("--g"));
  }
  if (opt("--seed")) {
    const long long s = to_int("--seed", *opt("--seed"));
    if (s < 0) throw Error("argument --seed: must be >= 0");
    o.seed = static_cast<uint64_t>(s);
  }
  o.detail = opt("--detail").value_or("auto");
  if (o.detail != "auto" && std::find(kDetailModes.begin(), kDetailModes.end(), o.detail) == kDetailModes.end())
    throw Error("argument --detail: invalid choice '" + o.detail + "' (choose from auto, clean, safe, off)");
  if (opt("--fidelity")) {
    o.fidelity = to_double("--fidelity", *opt("--fidelity"));
    check_fidelity_weight(o.fidelity, true);  // the range before the bundle loads; the graph once it has
  }
  if (opt("--tile") && !opt("--tile")->empty()) o.tile = static_cast<int>(to_int("--tile", *opt("--tile")));
  if (opt("--max-memory")) {
    parse_memory(*opt("--max-memory"));  // a bad value fails before the bundle loads
    o.max_memory = *opt("--max-memory");
  }
  const int bits = static_cast<int>(to_int("--bit-depth", opt("--bit-depth").value_or("8")));
  const int warmup = static_cast<int>(to_int("--warmup", opt("--warmup").value_or("0")));
  const int runs = static_cast<int>(to_int("--runs", opt("--runs").value_or("3")));
  const auto built = available_backends();
  const std::string backend = opt("--backend").value_or(built.empty() ? "aoti" : built.front());

  Bundle bundle = Bundle::open(*opt("--bundle"), args.verify);
  std::unique_ptr<Runner> runner = make_runner(backend, bundle);
  Pipeline pipe(std::move(bundle), std::move(runner));

  for (int k = 0; k < warmup; ++k) pipe.fuse(args.positional[0], args.positional[1], o);
  FuseResult result = pipe.fuse(args.positional[0], args.positional[1], o);
  std::vector<StageTimes> timed = {result.times};
  if (warmup > 0)
    for (int k = 1; k < runs; ++k) timed.push_back(pipe.fuse(args.positional[0], args.positional[1], o).times);
  write_image(*opt("--out"), result.image, bits);
  std::cout << "wrote " << *opt("--out") << " (" << result.image.width << "x" << result.image.height << ", "
            << result.sampler << ", NFE " << result.nfe << ", seed " << o.seed << ", backend " << backend;
  if (pipe.bundle().work_scale() > 1) std::cout << ", worked at " << pipe.bundle().work_scale() << "x";
  if (result.dit_window)
    std::cout << ", DiT in " << result.dit_windows << " windows of " << result.dit_window->second << "x"
              << result.dit_window->first << " px (up to " << result.dit_batch << " per call)";
  if (result.vae_tile)
    std::cout << ", VAE tiled over " << result.vae_tile->second << "x" << result.vae_tile->first << " px";
  if (result.window_calls > 0) std::cout << ", " << result.window_calls << " network calls";
  if (result.fidelity > 0) std::cout << ", fidelity " << result.fidelity;
  if (!result.detail.empty()) std::cout << ", detail " << result.detail;
  else if (o.detail != "auto") std::cout << ", no detail path (the bundle has none)";
  std::cout << ")\n";
  std::cout << format_latency(timed, backend + " " + result.sampler);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& err) {
    std::cerr << "latentfuse-host: error: " << err.what() << "\n";
    return 2;
  } catch (const std::exception& err) {
    std::cerr << "latentfuse-host: error: " << err.what() << "\n";
    return 2;
  }
}
