#include "streaming.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "bundle.h"
#include "detection.h"
#include "model.h"
#include "rates.h"
#include "raw.h"
#include "refusal.h"
#include "rpeaks.h"
#include "runner.h"
#include "signature.h"
#include "stream.h"
#include "text.h"

namespace mscnn {

int Stream(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle, TrustedKey(o));
  const Manifest& m = bundle.manifest();
  if (!m.stream_error.empty()) throw Refusal(m.stream_error);
  if (!m.has_stream) {
    throw Refusal("bundle " + Clip(m.name) + " is a window bundle (\"stream\": null); --stream "
                  "needs a stream bundle: python -m compile build --hop 512");
  }
  if (o.detect) RequireDetector(m);
  const std::string device = DeviceFor(bundle, o);
  Admit(bundle);
  InputRate rate(o.fs, m);  // a ratio the filter cannot take is refused before the model loads
  const std::int64_t leads = std::int64_t(m.leads.size());
  RawSource source(o.input, leads, m.stream.hop);
  source.CheckStart();  // a file of another format fails before the model is loaded
  Model model(bundle.LibraryPath(), "model.so in " + bundle.dir(), device, RuntimeDir());
  StreamRunner runner(model, m.stream, leads);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as soon as it is known

  BeatStream beats(m.detect);
  std::vector<double> logits;
  std::int64_t index = 0;
  auto emit = [&](const Array& frames, std::int64_t start, std::int64_t stop) {
    const std::size_t channels = std::size_t(frames.shape[1]), n = std::size_t(frames.shape[2]);
    for (std::int64_t f = start; f < stop; ++f) {
      if (o.detect) {
        const float v = frames.data[std::size_t(f)];
        if (!std::isfinite(v)) {
          throw Refusal("the model's output holds NaN or Inf, so no beats can be found; "
                        "check the bundle with --check");
        }
        logits.push_back(v);
        continue;
      }
      std::printf("frame %lld", static_cast<long long>(index++));
      for (std::size_t c = 0; c < channels; ++c) std::printf(" %.6g", frames.data[c * n + std::size_t(f)]);
      std::printf("\n");
    }
  };
  std::vector<std::int64_t> found_all;  // --json: printed as one object at the end
  auto report = [&](const std::vector<std::int64_t>& found) {
    if (o.json) {
      found_all.insert(found_all.end(), found.begin(), found.end());
      return;
    }
    for (std::int64_t s : found) {
      s = rate.ToRecord(s, source.samples());  // in the record's clock
      std::printf("beat %lld %.3f\n", static_cast<long long>(s), double(s) / double(rate.fs()));
    }
  };
  auto drain = [&]() {
    if (o.detect) report(beats.Push(logits));
    logits.clear();
  };
  for (;;) {
    const std::vector<float>& xs = source.Next();
    if (xs.empty()) break;
    const std::vector<float>& ys = rate.Push(xs);  // at the bundle's rate
    runner.Push(ys.data(), ys.size() / std::size_t(leads), emit);
    drain();
  }
  const std::vector<float>& tail = rate.Flush();
  runner.Push(tail.data(), tail.size() / std::size_t(leads), emit);
  runner.Flush(emit);
  drain();
  if (o.detect) report(beats.Flush());
  if (o.json) rate.PrintDetection(found_all, m.detect, source.samples(), true);
  std::fflush(stdout);
  if (source.leftover() != 0) {
    throw Refusal(source.label() + ": the stream ended " + std::to_string(source.leftover()) +
                  " byte(s) into a sample (" + std::to_string(4 * leads) + " bytes: " +
                  std::to_string(leads) + " lead(s) of float32); the samples before it were "
                  "streamed and their output written");
  }
  return 0;
}

}  // namespace mscnn
