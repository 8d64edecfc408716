#include "window.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bundle.h"
#include "detection.h"
#include "model.h"
#include "npy.h"
#include "output.h"
#include "rates.h"
#include "refusal.h"
#include "rpeaks.h"
#include "runner.h"
#include "signature.h"
#include "text.h"

namespace mscnn {
namespace {

// The samples of a record of `leads` leads in one of the forms --detect takes ((samples,)
// for one lead, (leads, samples), (1, leads, samples)), whatever their number; 0 if
// `shape` is none of them.
std::int64_t RecordSamples(const std::vector<std::int64_t>& shape, std::int64_t leads) {
  if (shape.size() == 1 && leads == 1) return shape[0];
  if (shape.size() == 2 && shape[0] == leads) return shape[1];
  if (shape.size() == 3 && shape[0] == 1 && shape[1] == leads) return shape[2];
  return 0;
}

std::string Number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

// A record longer than the window: the model's stream bundle takes it whole. Its name is
// the one `python -m compile build --hop 512` gives it: -stream512 before the precision
// (stream steps are fp32 or int8, so an fp16 window's model streams in fp32).
[[noreturn]] void RefuseLongRecord(const Manifest& m, const std::string& label, std::int64_t n) {
  const std::string precision = "-" + m.precision;
  std::string name = m.name;
  if (m.precision != "fp32" && name.size() > precision.size() &&
      name.compare(name.size() - precision.size(), precision.size(), precision) == 0) {
    name.resize(name.size() - precision.size());
  }
  const std::string suffix = m.precision == "int8" ? precision : "";
  const std::int64_t leads = m.input.shape[1], samples = m.input.shape[2];
  throw Refusal(
      label + " is a record of " + std::to_string(n) + " samples (" + Number(double(n) / m.fs) +
      " s at " + Number(m.fs) + " Hz), longer than the window of " + std::to_string(samples) +
      " samples (" + Number(double(samples) / m.fs) + " s) of bundle " + Clip(m.name) +
      ": stream it through the model's stream bundle " +
      Clip(name + "-stream512" + suffix) + " (python -m compile build" +
      (m.preset.empty() ? "" : " --preset " + Clip(m.preset)) + " --targets " +
      Clip(m.target_name) + " --hop 512" + (suffix.empty() ? "" : " --precision int8") +
      ") with --stream --detect --input rec.f32, the record as raw float32 samples: python -c "
      "\"import numpy as np; np.load('rec.npy')" + (leads > 1 ? ".T" : "") +
      ".astype('<f4').tofile('rec.f32')\"");
}

}  // namespace

int RunOne(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle, TrustedKey(o));
  const Manifest& m = bundle.manifest();
  const std::string device = DeviceFor(bundle, o);
  Admit(bundle);

  const std::string label = "input " + o.input;
  Array x = ReadNpy(o.input, label);
  if (x.shape != m.input.shape) {
    throw Refusal(label + " has the wrong shape for bundle " + Clip(m.name) + ": " +
                  DescribeShapeMismatch(m, x.shape));
  }
  RequireFiniteInput(m, x, label);
  OutputFile out(o.output);

  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  const auto start = std::chrono::steady_clock::now();
  Array y = model.Run(x);
  const double run_ms = Millis(std::chrono::steady_clock::now() - start);
  out.Commit(NpyHeader(y.shape), y.data.data(), y.data.size() * sizeof(float));

  std::int64_t bad = 0;
  if (FirstNonFinite(y.data, &bad) >= 0) {
    std::fprintf(stderr, "warning: the output holds %lld NaN or Inf value(s)\n",
                 static_cast<long long>(bad));
  }
  std::printf("%s: wrote %s, shape %s float32, run_ms=%.1f\n", Show(m.name).c_str(),
              Show(o.output).c_str(),
              ShapeText(y.shape).c_str(), run_ms);
  return 0;
}

int Detect(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle, TrustedKey(o));
  const Manifest& m = bundle.manifest();
  RequireDetector(m);
  if (m.has_stream) {
    throw Refusal("bundle " + Clip(m.name) + " is a stream bundle; stream the record as raw "
                  "float32 samples with --stream --detect --input FILE");
  }
  const std::string device = DeviceFor(bundle, o);
  Admit(bundle);
  InputRate rate(o.fs, m);
  const std::string label = "input " + o.input;
  Array x = ReadNpy(o.input, label);
  const std::int64_t leads = m.input.shape[1], samples = m.input.shape[2];
  std::int64_t record_samples = samples;  // in the record's own clock
  if (rate.resampled()) x = rate.ResampleWindow(x, samples, label, &record_samples);
  const bool fits = m.input.shape[0] == 1 &&
                    (x.shape == m.input.shape || x.shape == std::vector<std::int64_t>{leads, samples} ||
                     (leads == 1 && x.shape == std::vector<std::int64_t>{samples}));
  if (!fits) {
    const std::int64_t n = RecordSamples(x.shape, leads);
    if (m.input.shape[0] == 1 && n > samples) RefuseLongRecord(m, label, n);
    throw Refusal(label + " has the wrong shape for bundle " + Clip(m.name) + ": " +
                  DescribeShapeMismatch(m, x.shape));
  }
  x.shape = m.input.shape;
  RequireFiniteInput(m, x, label);
  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  Array y = model.Run(x);
  std::int64_t bad = 0;
  if (FirstNonFinite(y.data, &bad) >= 0) {
    throw Refusal("the model's output holds NaN or Inf, so no beats can be found; check the "
                  "bundle with --check");
  }
  const std::int64_t frames = std::int64_t(y.data.size()), r = m.detect.reduction;
  if (frames != samples / r && frames != (samples + r - 1) / r) {
    throw Refusal("the model gives " + std::to_string(frames) + " frames for " +
                  std::to_string(samples) + " samples, which does not fit the rule's reduction " +
                  std::to_string(r) + "; rebuild the bundle");
  }
  rate.PrintDetection(DetectRpeaks(WindowLogits(y, 0), m.detect, samples), m.detect,
                     record_samples, o.json);
  return 0;
}

}  // namespace mscnn
