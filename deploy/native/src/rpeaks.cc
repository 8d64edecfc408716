#include "rpeaks.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <set>

namespace mscnn {

namespace {

struct Candidate {
  std::int64_t sample;
  double strength;
};

}  // namespace

std::vector<std::int64_t> DetectRpeaks(const std::vector<double>& x, const DetectRule& rule,
                                       std::int64_t n) {
  // sigmoid(x) > t  <=>  x > log(t / (1 - t)), in double as Python computes it.
  const double threshold = std::log(rule.threshold / (1.0 - rule.threshold));
  const std::int64_t r = rule.reduction;
  const std::int64_t e = rule.edge_ms * rule.fs / 1000;
  const std::int64_t m = rule.min_rr_ms * rule.fs / 1000;
  std::vector<Candidate> candidates;
  const std::int64_t frames = std::int64_t(x.size());
  for (std::int64_t i = 0; i < frames;) {
    if (!(x[std::size_t(i)] > threshold)) {
      ++i;
      continue;
    }
    const std::int64_t a = i;
    double strength = x[std::size_t(i)];
    while (i + 1 < frames && x[std::size_t(i + 1)] > threshold) {
      ++i;
      strength = std::max(strength, x[std::size_t(i)]);
    }
    const std::int64_t b = i++;
    const std::int64_t s = (a + b) * r / 2 + r / 2;  // non-negative: floor division
    if (s >= e && s < n - e) candidates.push_back({s, strength});
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& p, const Candidate& q) {
                     if (p.strength != q.strength) return p.strength > q.strength;
                     return p.sample < q.sample;
                   });
  // Kept beats in a sorted set: a candidate is m or more from every kept beat exactly when
  // it is from the nearest kept one on each side, so each test is O(log n). Candidates'
  // samples are distinct (runs are disjoint), so a set loses none.
  std::set<std::int64_t> kept;
  for (const Candidate& c : candidates) {
    const auto above = kept.lower_bound(c.sample);
    if (above != kept.end() && *above - c.sample < m) continue;
    if (above != kept.begin() && c.sample - *std::prev(above) < m) continue;
    kept.insert(above, c.sample);
  }
  return std::vector<std::int64_t>(kept.begin(), kept.end());
}

bool HeartRate(const std::vector<std::int64_t>& beats, std::int64_t fs, double* bpm,
               const std::vector<std::int64_t>& breaks) {
  std::int64_t count = 0, total = 0;
  std::size_t next = 0;  // the first break not before beats[i]
  for (std::size_t i = 0; i + 1 < beats.size(); ++i) {
    while (next < breaks.size() && breaks[next] <= beats[i]) ++next;
    if (next < breaks.size() && breaks[next] <= beats[i + 1]) continue;  // across a gap
    ++count;
    total += beats[i + 1] - beats[i];
  }
  if (count == 0 || total <= 0) return false;
  *bpm = 60.0 * double(fs) * double(count) / double(total);
  return true;
}

BeatStream::BeatStream(const DetectRule& rule) : rule_(rule) {
  const std::int64_t r = rule.reduction;
  const std::int64_t min_rr = rule.min_rr_ms * rule.fs / 1000;
  const std::int64_t edge = rule.edge_ms * rule.fs / 1000;
  horizon_ = std::max(2 * min_rr + edge + 4 * r, rule.fs);
  keep_ = std::size_t((2 * horizon_) / r + 1);
}

std::vector<std::int64_t> BeatStream::PushSegment(const std::vector<double>& logits) {
  const std::size_t piece = std::size_t(std::max<std::int64_t>(1, horizon_ / (4 * rule_.reduction)));
  std::vector<std::int64_t> beats;
  for (std::size_t at = 0; at < logits.size(); at += piece) {
    const std::size_t stop = std::min(logits.size(), at + piece);
    logits_.insert(logits_.end(), logits.begin() + std::ptrdiff_t(at),
                   logits.begin() + std::ptrdiff_t(stop));
    const std::int64_t end = (offset_ + std::int64_t(logits_.size())) * rule_.reduction;
    for (std::int64_t s : Beats(-1, end - horizon_)) beats.push_back(s);
    if (logits_.size() > keep_) {
      const std::size_t drop = logits_.size() - keep_;
      logits_.erase(logits_.begin(), logits_.begin() + std::ptrdiff_t(drop));
      offset_ += std::int64_t(drop);
    }
  }
  return beats;
}

std::vector<std::int64_t> BeatStream::Push(const std::vector<double>& logits) {
  std::vector<std::int64_t> beats = PushSegment(logits);
  for (std::int64_t& s : beats) s += origin_;
  return beats;
}

std::vector<std::int64_t> BeatStream::Flush(std::int64_t n_samples) {
  std::vector<std::int64_t> beats = End(n_samples);
  origin_ = 0;
  return beats;
}

std::vector<std::int64_t> BeatStream::Gap(std::int64_t gap, std::int64_t n_samples) {
  const std::int64_t length =
      n_samples < 0 ? (offset_ + std::int64_t(logits_.size())) * rule_.reduction : n_samples;
  std::vector<std::int64_t> beats = End(length);
  origin_ += length + gap;
  return beats;
}

std::vector<std::int64_t> BeatStream::End(std::int64_t n_samples) {
  const std::int64_t n = n_samples < 0
                             ? (offset_ + std::int64_t(logits_.size())) * rule_.reduction
                             : n_samples;
  std::vector<std::int64_t> beats;
  if (!logits_.empty()) beats = Beats(n, n);
  for (std::int64_t& s : beats) s += origin_;
  logits_.clear();
  offset_ = 0;
  last_ = -1;
  return beats;
}

// n_samples < 0: the window ends mid-stream (its length is its frames').
std::vector<std::int64_t> BeatStream::Beats(std::int64_t n_samples, std::int64_t limit) {
  const std::int64_t r = rule_.reduction;
  const std::int64_t start = offset_ * r;
  const std::int64_t window_n =
      n_samples < 0 ? std::int64_t(logits_.size()) * r : n_samples - start;
  DetectRule rule = rule_;
  if (offset_ != 0) rule.edge_ms = 0;  // the window's first samples are not the record's start
  // Mid-stream, runs cut by the window's start are not beats: stay clear of it.
  const std::int64_t lower = offset_ != 0 ? start + horizon_ / 2 : -1;
  const std::int64_t after = std::max(last_, lower);
  std::vector<std::int64_t> fresh;
  for (std::int64_t s : DetectRpeaks(logits_, rule, window_n)) {
    s += start;
    if (after < s && s < limit) fresh.push_back(s);
  }
  if (!fresh.empty()) last_ = fresh.back();
  return fresh;
}

}  // namespace mscnn
