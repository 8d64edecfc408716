// R-peaks from a QRS detector's per-frame logits: deploy/rpeaks.py's rule, bit for bit
// (integer sample arithmetic, one double comparison per frame, the same tie-breaks), and
// deploy/detect.py's BeatStream, which applies it to an endless stream in bounded memory.
#ifndef MSCNN_RUN_RPEAKS_H_
#define MSCNN_RUN_RPEAKS_H_

#include <cstdint>
#include <vector>

#include "manifest.h"

namespace mscnn {

// R-peak sample indices, rising, of a record of `n_samples` samples from its logits
// (one per frame of rule.reduction samples). The caller checks that the logits are
// finite and that their number fits n_samples.
std::vector<std::int64_t> DetectRpeaks(const std::vector<double>& logits, const DetectRule& rule,
                                       std::int64_t n_samples);

// 60 * fs * (n - 1) / (last - first); false below two beats. With `breaks` (the first
// sample of each gap, rising), an interval across a break is no RR interval: 60 * fs * k
// / (sum of the k intervals that cross none), false if none is left.
bool HeartRate(const std::vector<std::int64_t>& beats, std::int64_t fs, double* bpm,
               const std::vector<std::int64_t>& breaks = {});

// Beats of a stream as its frames arrive: a beat is final once `horizon` samples have
// followed it (no later candidate can then suppress it), so only a few seconds of logits
// are kept whatever the stream's length.
class BeatStream {
 public:
  explicit BeatStream(const DetectRule& rule);
  // New frames' logits; returns the beats that are now final (the record's samples).
  std::vector<std::int64_t> Push(const std::vector<double>& logits);
  // The end of the record: the remaining beats (the end edge rule applies); n_samples:
  // the last segment's length (< 0: its frames times the reduction).
  std::vector<std::int64_t> Flush(std::int64_t n_samples = -1);
  // A gap of `gap` samples after a segment of `n_samples`: the segment's remaining beats
  // (its end edge applies); the rule restarts and later beats count from the gap's end.
  std::vector<std::int64_t> Gap(std::int64_t gap, std::int64_t n_samples = -1);
  std::int64_t horizon() const { return horizon_; }

 private:
  std::vector<std::int64_t> PushSegment(const std::vector<double>& logits);
  std::vector<std::int64_t> End(std::int64_t n_samples);
  std::vector<std::int64_t> Beats(std::int64_t n_samples, std::int64_t limit);

  DetectRule rule_;
  std::int64_t horizon_ = 0;
  std::size_t keep_ = 0;  // frames kept behind the reporting point
  std::vector<double> logits_;
  std::int64_t offset_ = 0;  // frame index of logits_[0]
  std::int64_t last_ = -1;   // last beat reported (sample of the segment)
  std::int64_t origin_ = 0;  // the record's sample where the segment began
};

}  // namespace mscnn

#endif  // MSCNN_RUN_RPEAKS_H_
