#include "stream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "refusal.h"
#include "text.h"

namespace mscnn {

StreamRunner::StreamRunner(Model& model, const StreamSpec& spec, std::int64_t leads)
    : model_(model), spec_(spec), leads_(leads) {
  hop_.shape = {1, leads, spec.hop};
  hop_.data.assign(std::size_t(leads * spec.hop), 0.0f);
  Reset();
}

void StreamRunner::Reset() {
  model_.ResetStates(spec_.states);
  fill_ = samples_ = 0;
}

void StreamRunner::Push(const float* x, std::size_t count, const Emit& emit) {
  const std::int64_t hop = spec_.hop;
  for (std::size_t i = 0; i < count; ++i) {
    for (std::int64_t lead = 0; lead < leads_; ++lead) {
      hop_.data[std::size_t(lead * hop + fill_)] = x[i * std::size_t(leads_) + std::size_t(lead)];
    }
    ++samples_;
    if (++fill_ == hop) {
      std::int64_t valid[2];
      Array frames = model_.Step(hop_, hop, valid);
      fill_ = 0;
      emit(frames, valid[0], valid[1]);
    }
  }
}

void StreamRunner::Flush(const Emit& emit) {
  if (samples_ == 0) return;
  const std::int64_t hop = spec_.hop, per_hop = spec_.hop / spec_.reduction;
  for (std::int64_t lead = 0; lead < leads_; ++lead) {
    for (std::int64_t k = fill_; k < hop; ++k) hop_.data[std::size_t(lead * hop + k)] = 0.0f;
  }
  std::int64_t n_valid = fill_;
  for (std::int64_t step = 0; step < spec_.flush_steps; ++step) {
    std::int64_t valid[2];
    Array frames = model_.Step(hop_, n_valid, valid);
    emit(frames, valid[0], valid[1]);
    if (valid[1] < per_hop) {
      Reset();
      return;
    }
    std::fill(hop_.data.begin(), hop_.data.end(), 0.0f);
    n_valid = 0;
  }
  throw Refusal("the stream did not end within " + std::to_string(spec_.flush_steps) +
                " steps; the bundle's step or manifest is inconsistent: rebuild the bundle");
}

RawSource::RawSource(const std::string& path, std::int64_t leads, std::int64_t hop)
    : label_(path == "-" ? std::string("stdin") : "input " + Printable(path)), leads_(leads) {
  if (path == "-") {
    fd_ = STDIN_FILENO;
  } else {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      throw Refusal("cannot open " + label_ + " (" + std::strerror(errno) +
                    "); give raw float32 samples as --input FILE, or - for stdin");
    }
    owned_ = true;
    struct stat st;
    if (::fstat(fd_, &st) != 0 || S_ISDIR(st.st_mode)) {
      ::close(fd_);
      throw Refusal(label_ + " is a folder; give a file of raw float32 samples, or - for stdin");
    }
  }
  buffer_.resize(std::size_t(hop * leads * 4));
}

RawSource::~RawSource() {
  if (owned_) ::close(fd_);
}

const std::vector<float>& RawSource::Next() {
  const std::size_t frame = std::size_t(leads_) * 4;
  samples_.clear();
  while (samples_.empty()) {
    ssize_t n = ::read(fd_, buffer_.data(), buffer_.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Refusal("cannot read " + label_ + ": " + std::strerror(errno));
    if (n == 0) break;
    rest_.insert(rest_.end(), buffer_.data(), buffer_.data() + n);
    const std::size_t whole = rest_.size() / frame * frame;
    samples_.resize(whole / 4);
    std::memcpy(samples_.data(), rest_.data(), whole);  // little-endian targets only
    rest_.erase(rest_.begin(), rest_.begin() + std::ptrdiff_t(whole));
  }
  for (std::size_t i = 0; i < samples_.size(); ++i) {
    if (!std::isfinite(samples_[i])) {
      const std::int64_t sample = seen_ + std::int64_t(i / std::size_t(leads_));
      throw Refusal(label_ + ": sample " + std::to_string(sample) + " (lead " +
                    std::to_string(i % std::size_t(leads_)) + ") is NaN or Inf; the model "
                    "needs finite samples: fill gaps (interpolate or zero) first");
    }
  }
  seen_ += std::int64_t(samples_.size()) / leads_;
  return samples_;
}

}  // namespace mscnn
