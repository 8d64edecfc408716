#include "stream.h"

#include <algorithm>
#include <string>

#include "refusal.h"

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
  EndSegment(emit);
  start_ = 0;
}

void StreamRunner::Gap(std::int64_t n, const Emit& emit) {
  const std::int64_t end = start_ + samples_ + n;
  EndSegment(emit);
  start_ = end;
}

void StreamRunner::EndSegment(const Emit& emit) {
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

}  // namespace mscnn
