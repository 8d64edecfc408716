// --fs: a record at another rate than the bundle's, resampled on its way in (resample.h)
// and its beats taken back to its own clock on their way out, for --stream and --detect.
#ifndef MSCNN_RUN_RATES_H_
#define MSCNN_RUN_RATES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "manifest.h"
#include "npy.h"
#include "resample.h"

namespace mscnn {

class InputRate {
 public:
  // `fs`: the record's rate from --fs (0: not given, the bundle's is taken); a Refusal
  // when its ratio to the bundle's rate is one the filter does not support.
  InputRate(std::int64_t fs, const Manifest& m);
  bool resampled() const { return resampler_ != nullptr; }
  std::int64_t fs() const { return fs_; }
  // The record's interleaved samples at the bundle's rate: `xs` itself when not
  // resampled, else the outputs it makes final (the same vector reused).
  const std::vector<float>& Push(const std::vector<float>& xs);
  // The end of the record: the last resampled samples (none when not resampled).
  const std::vector<float>& Flush();
  // A whole record (samples,) for one lead, (leads, samples) or (1, leads, samples), all
  // finite, resampled offline to the bundle's rate as (leads, window): a Refusal naming
  // `label` for another shape, a NaN or Inf, or a length that does not resample to the
  // window's `window` samples. Sets `*samples` to the record's own length.
  Array ResampleWindow(const Array& x, std::int64_t window, const std::string& label,
                       std::int64_t* samples);
  // A beat at the bundle's rate as a sample of the record (nearest; at most its last
  // sample of the `received` so far).
  std::int64_t ToRecord(std::int64_t beat, std::int64_t received) const;
  // The whole record's beats (at the bundle's rate) as --detect prints them: in the
  // record's samples, its rate and length, the heart rate from the beats as found.
  void PrintDetection(const std::vector<std::int64_t>& beats, const DetectRule& rule,
                      std::int64_t samples, bool json) const;

 private:
  void Note();  // once, when the first samples are accepted: the note on stderr

  std::int64_t fs_;
  bool noted_ = false;
  std::unique_ptr<Resampler> resampler_;
  std::vector<float> out_;
};

}  // namespace mscnn

#endif  // MSCNN_RUN_RATES_H_
