#include "resample.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "refusal.h"

namespace mscnn {
namespace {

constexpr std::int64_t kHalfLength = 10;  // taps each side of the centre, per max(L, M)
constexpr double kKaiserBeta = 5.0;
constexpr std::int64_t kMaxFactor = 1000;
constexpr double kPi = 3.14159265358979323846;

// Python's floor division, for numerators that may be negative.
std::int64_t FloorDiv(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

double Sinc(double x) { return x == 0.0 ? 1.0 : std::sin(kPi * x) / (kPi * x); }

}  // namespace

std::int64_t RatePair::OutputLength(std::int64_t n) const { return -FloorDiv(-n * up, down); }

std::int64_t RatePair::ToInputClock(std::int64_t s) const {
  return FloorDiv(2 * s * down + up, 2 * up);
}

std::int64_t ParseRate(const std::string& text, const std::string& flag) {
  const bool digits = !text.empty() && text.size() <= 9 &&
                      text.find_first_not_of("0123456789") == std::string::npos;
  const std::int64_t fs = digits ? std::stoll(text) : 0;
  if (fs < 1) {
    throw Refusal(flag + " " + text + ": expected the record's sampling rate as a whole, "
                  "positive number of Hz (e.g. " + flag + " 360)");
  }
  return fs;
}

RatePair MakeRatePair(std::int64_t fs_in, std::int64_t fs_out) {
  if (fs_in < 1 || fs_out < 1) {
    throw Refusal("rates " + std::to_string(fs_in) + " -> " + std::to_string(fs_out) +
                  " Hz: expected whole, positive numbers of Hz");
  }
  RatePair pair;
  pair.fs_in = fs_in;
  pair.fs_out = fs_out;
  const std::int64_t g = std::gcd(fs_in, fs_out);
  pair.up = fs_out / g;
  pair.down = fs_in / g;
  if (std::max(pair.up, pair.down) > kMaxFactor) {
    throw Refusal(std::to_string(fs_in) + " Hz -> " + std::to_string(fs_out) +
                  " Hz is the ratio " + std::to_string(pair.up) + "/" + std::to_string(pair.down) +
                  "; up and down must be <= " + std::to_string(kMaxFactor) + " (a " +
                  std::to_string(2 * kHalfLength * std::max(pair.up, pair.down) + 1) +
                  "-tap filter): resample to a rate with a simpler ratio first");
  }
  return pair;
}

std::vector<double> DesignFilter(const RatePair& pair) {
  const std::int64_t rate = std::max(pair.up, pair.down);
  const std::int64_t half = kHalfLength * rate, n = 2 * half + 1;
  std::vector<double> h(std::size_t(n), 0.0);
  const double i0_beta = std::cyl_bessel_i(0.0, kKaiserBeta);
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double r = double(i - half) / double(half);  // numpy's kaiser: -1 .. 1
    const double w = std::cyl_bessel_i(0.0, kKaiserBeta * std::sqrt(std::max(0.0, 1.0 - r * r)));
    h[std::size_t(i)] = Sinc(double(i - half) / double(rate)) * (w / i0_beta);
    sum += h[std::size_t(i)];
  }
  for (double& v : h) v *= double(pair.up) / sum;
  return h;
}

Resampler::Resampler(const RatePair& pair, std::int64_t leads) : pair_(pair), leads_(leads) {
  const std::vector<double> h = DesignFilter(pair);
  const std::int64_t n = std::int64_t(h.size()), up = pair.up;
  centre_ = n / 2;
  taps_ = (n + up - 1) / up;
  phases_.assign(std::size_t(up * taps_), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    phases_[std::size_t((i % up) * taps_ + i / up)] = h[std::size_t(i)];
  }
  buf_.assign(std::size_t((taps_ - 1) * leads_), 0.0);
  start_ = -(taps_ - 1);
}

void Resampler::Push(const float* interleaved, std::size_t count, std::vector<float>* out) {
  buf_.insert(buf_.end(), interleaved, interleaved + count * std::size_t(leads_));
  received_ += std::int64_t(count);
  // the outputs whose newest input has arrived
  const std::int64_t end = FloorDiv(received_ * pair_.up - 1 - centre_, pair_.down) + 1;
  Emit(std::max(end, next_), out);
}

void Resampler::Flush(std::vector<float>* out) {
  const std::int64_t end = pair_.OutputLength(received_);
  const std::int64_t last = end ? ((end - 1) * pair_.down + centre_) / pair_.up : 0;
  const std::int64_t have = start_ + std::int64_t(buf_.size()) / leads_;
  if (last >= have) buf_.resize(buf_.size() + std::size_t((last - have + 1) * leads_), 0.0);
  Emit(std::max(end, next_), out);
}

void Resampler::Emit(std::int64_t end, std::vector<float>* out) {
  const std::size_t leads = std::size_t(leads_);
  for (std::int64_t k = next_; k < end; ++k) {
    const std::int64_t p = k * pair_.down + centre_;
    const double* phase = &phases_[std::size_t((p % pair_.up) * taps_)];
    const std::int64_t newest = p / pair_.up - start_;  // row of input p / up in buf_
    for (std::size_t lead = 0; lead < leads; ++lead) {
      double acc = 0.0;
      for (std::int64_t j = 0; j < taps_; ++j) {
        acc += phase[j] * buf_[std::size_t(newest - j) * leads + lead];
      }
      out->push_back(float(acc));
    }
  }
  next_ = std::max(next_, end);
  // drop the inputs no later output reaches back to
  const std::int64_t first = (next_ * pair_.down + centre_) / pair_.up - taps_ + 1;
  const std::int64_t rows = std::int64_t(buf_.size()) / leads_;
  const std::int64_t drop = std::max<std::int64_t>(0, std::min(first - start_, rows));
  buf_.erase(buf_.begin(), buf_.begin() + std::ptrdiff_t(drop * leads_));
  start_ += drop;
}

}  // namespace mscnn
