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
namespace {

// Sample `i` of interleaved samples is a gap when any lead is NaN: the model needs every
// lead (deploy/records.py gap_mask, the same rule).
bool IsGap(const std::vector<float>& xs, std::size_t i, std::int64_t leads) {
  for (std::int64_t lead = 0; lead < leads; ++lead) {
    if (std::isnan(xs[i * std::size_t(leads) + std::size_t(lead)])) return true;
  }
  return false;
}

// With --fs a NaN run (a sensor gap) is refused: the Python runner resamples each segment
// alone (python -m deploy stream --fs), this one does not yet. `first`: the chunk's first
// sample in the record's clock.
void RefuseGapWhenResampled(const std::vector<float>& xs, std::int64_t leads, std::int64_t first) {
  const std::size_t count = xs.size() / std::size_t(leads);
  for (std::size_t i = 0; i < count; ++i) {
    if (!IsGap(xs, i, leads)) continue;
    throw Refusal("sample " + std::to_string(first + std::int64_t(i)) + " is NaN (a sensor gap); "
                  "mscnn-run reads gaps only at the bundle's rate: drop --fs and resample "
                  "first, or use python -m deploy stream --fs, which resamples each segment");
  }
}

}  // namespace

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
  std::vector<GapRun> gaps;             // --json: listed in the object
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
  GapRun open{0, 0};  // the NaN run under way (samples 0: none), reported once it ends
  auto close_gap = [&]() {
    if (open.samples == 0) return;
    if (o.json) {
      gaps.push_back(open);
    } else {
      std::printf("gap %lld %lld\n", static_cast<long long>(open.start),
                  static_cast<long long>(open.samples));
    }
    open.samples = 0;
  };
  for (;;) {
    const std::vector<float>& xs = source.Next();
    if (xs.empty()) break;
    if (rate.resampled()) {  // --fs: each segment would need its own resampler; refused
      RefuseGapWhenResampled(xs, leads, source.samples() - std::int64_t(xs.size()) / leads);
      const std::vector<float>& ys = rate.Push(xs);  // at the bundle's rate
      runner.Push(ys.data(), ys.size() / std::size_t(leads), emit);
      drain();
      continue;
    }
    const std::size_t count = xs.size() / std::size_t(leads);
    for (std::size_t at = 0, end = 0; at < count; at = end) {
      const bool gap = IsGap(xs, at, leads);
      for (end = at + 1; end < count && IsGap(xs, end, leads) == gap;) ++end;
      const std::int64_t n = std::int64_t(end - at);
      if (!gap) {
        close_gap();
        runner.Push(xs.data() + at * std::size_t(leads), end - at, emit);
        drain();
        continue;
      }
      const std::int64_t segment = runner.samples();
      if (open.samples == 0) open.start = runner.start() + segment;
      open.samples += n;
      runner.Gap(n, emit);  // the segment before ends: its last frames, then a fresh state
      drain();
      if (o.detect) report(beats.Gap(n, segment));
    }
  }
  const std::vector<float>& tail = rate.Flush();  // none when not resampled
  runner.Push(tail.data(), tail.size() / std::size_t(leads), emit);
  const std::int64_t last = runner.samples();
  runner.Flush(emit);
  drain();
  if (o.detect) report(beats.Flush(last));
  close_gap();
  if (o.json && rate.resampled()) rate.PrintDetection(found_all, m.detect, source.samples(), true);
  if (o.json && !rate.resampled()) PrintDetection(found_all, m.detect, source.samples(), true, &gaps);
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
