#include "options.h"

#include <cstdio>

#include "refusal.h"
#include "resample.h"
#include "runner.h"

namespace mscnn {
namespace {

constexpr const char* kVersion = "0.1.0";

constexpr const char* kUsage =
    "usage: mscnn-run BUNDLE --check [--device cpu|cuda] [--cases N]\n"
    "       mscnn-run BUNDLE --input X.npy --output Y.npy [--device cpu|cuda]\n"
    "       mscnn-run BUNDLE --input X.npy --detect [--json] [--fs HZ]  (R-peak detectors)\n"
    "       mscnn-run BUNDLE --stream [--input FILE|-] [--detect [--json]] [--fs HZ]\n"
    "                        (stream bundles; raw little-endian float32 samples in mV,\n"
    "                        leads interleaved)\n"
    "       mscnn-run BUNDLE --info\n"
    "       mscnn-run --tolerances | --version | --help\n"
    "  with any BUNDLE: [--trust KEY.pub] [--require-signature]  run only bundles that key\n"
    "                   signed (trusted.pub beside mscnn-run, as a signed package ships it,\n"
    "                   does the same; --require-signature refuses to run without a key)\n"
    "\n"
    "BUNDLE is a folder made by `python -m compile build` (manifest.json, model.so,\n"
    "golden/). Every file the manifest lists is checked against its SHA-256 before\n"
    "model.so is loaded. --fs HZ: the record's sampling rate (default: the bundle's); a\n"
    "record at another is resampled to the bundle's and its beats are reported in its\n"
    "own samples. --cases N: check only the first N golden cases (under an emulator a\n"
    "large model takes seconds a case). Exit codes: 0 ok, 1 golden mismatch, 2 refused\n"
    "(see stderr).\n";

void SetMode(Options* o, const std::string& mode) {
  if (!o->mode.empty() && o->mode != mode) {
    throw Refusal("--" + o->mode + " and --" + mode + " cannot be combined; run mscnn-run --help");
  }
  o->mode = mode;
}

// --cases N: a whole number of at least 1.
std::int64_t ParseCount(const std::string& text) {
  std::int64_t n = 0;
  const bool digits = !text.empty() && text.size() <= 9 &&
                      text.find_first_not_of("0123456789") == std::string::npos;
  if (digits) n = std::stoll(text);
  if (n < 1) throw Refusal("--cases needs a whole number of at least 1, not '" + text + "'");
  return n;
}

}  // namespace

Options ParseArgs(int argc, char** argv) {
  Options o;
  bool have_input = false, have_output = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool inline_value = false;
    if (arg.rfind("--", 0) == 0) {
      std::size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
        inline_value = true;
      }
    }
    auto take_value = [&](const char* flag) {
      if (inline_value) return value;
      if (i + 1 >= argc) throw Refusal(std::string(flag) + " needs a value; run mscnn-run --help");
      return std::string(argv[++i]);
    };
    if (arg == "--check") {
      SetMode(&o, "check");
    } else if (arg == "--info") {
      SetMode(&o, "info");
    } else if (arg == "--tolerances") {
      SetMode(&o, "tolerances");
    } else if (arg == "--version") {
      SetMode(&o, "version");
    } else if (arg == "--help" || arg == "-h") {
      SetMode(&o, "help");
    } else if (arg == "--stream") {
      SetMode(&o, "stream");
    } else if (arg == "--detect") {
      o.detect = true;
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--input") {
      o.input = take_value("--input");
      have_input = true;
    } else if (arg == "--output") {
      o.output = take_value("--output");
      have_output = true;
    } else if (arg == "--fs") {
      o.fs = ParseRate(take_value("--fs"), "--fs");
    } else if (arg == "--cases") {
      o.cases = ParseCount(take_value("--cases"));
    } else if (arg == "--trust") {
      o.trust = take_value("--trust");
      if (o.trust.empty()) throw Refusal("--trust needs a public key file (KEY.pub)");
    } else if (arg == "--require-signature") {
      o.require_signature = true;
    } else if (arg == "--device") {
      o.device = take_value("--device");
      if (o.device != "cpu" && o.device != "cuda") {
        throw Refusal("--device must be cpu or cuda, not '" + o.device + "'");
      }
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw Refusal("unknown option " + arg + "; run mscnn-run --help");
    } else if (o.bundle.empty()) {
      o.bundle = arg;
    } else {
      throw Refusal("more than one bundle given (" + o.bundle + ", " + arg +
                    "); run mscnn-run --help");
    }
  }
  if (o.json && !o.detect) throw Refusal("--json goes with --detect; run mscnn-run --help");
  if (o.mode == "stream") {
    if (have_output) throw Refusal("--stream prints to stdout; drop --output");
    if (!have_input) o.input = "-";
    if (o.input.empty()) throw Refusal("--input needs a file name, or - for stdin");
  } else if (o.detect) {
    if (!o.mode.empty()) {
      throw Refusal("--detect goes with --input X.npy or --stream, not --" + o.mode +
                    (o.mode == "check" ? " (which compares a detector's beats already)" : ""));
    }
    if (have_output) throw Refusal("--detect prints beats and heart rate; drop --output");
    if (!have_input || o.input.empty()) {
      throw Refusal("--detect needs --input X.npy (the record), or --stream");
    }
    SetMode(&o, "detect");
  } else if (have_input || have_output) {
    if (!(have_input && have_output)) {
      throw Refusal("--input and --output go together: give both, or use --check");
    }
    if (o.input.empty() || o.output.empty()) throw Refusal("--input and --output need file names");
    SetMode(&o, "run");
  }
  if (o.mode.empty()) {
    throw Refusal(o.bundle.empty() ? "no bundle given; run mscnn-run --help"
                                   : "say what to do with the bundle: --check, --info or "
                                     "--input X.npy --output Y.npy");
  }
  const bool needs_bundle = o.mode == "check" || o.mode == "run" || o.mode == "info" ||
                            o.mode == "detect" || o.mode == "stream";
  if (needs_bundle && o.bundle.empty()) throw Refusal("--" + o.mode + " needs a BUNDLE folder");
  if (!needs_bundle && (!o.trust.empty() || o.require_signature)) {
    throw Refusal("--trust and --require-signature go with a BUNDLE; run mscnn-run --help");
  }
  if (!needs_bundle && !o.bundle.empty()) {
    throw Refusal("--" + o.mode + " takes no bundle; run mscnn-run --help");
  }
  if (o.fs != 0 && o.mode != "stream" && o.mode != "detect") {
    throw Refusal("--fs (the record's rate) goes with --stream or --detect --input X.npy, "
                  "not --" + o.mode);
  }
  if (o.cases != 0 && o.mode != "check") {
    throw Refusal("--cases (how many golden cases to check) goes with --check, not --" + o.mode);
  }
  if (!o.device.empty() && o.mode != "check" && o.mode != "run" && o.mode != "detect" &&
      o.mode != "stream") {
    throw Refusal("--device applies to --check, --detect, --stream and --input/--output only");
  }
  return o;
}

int Help(const Options&) {
  std::fputs(kUsage, stdout);
  return 0;
}

int Version(const Options&) {
  std::printf("mscnn-run %s (%s)\n", kVersion, kRunnerArch);
  return 0;
}

}  // namespace mscnn
