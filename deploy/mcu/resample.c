#include "resample.h"

#include <string.h>

void mscnn_resample_init(mscnn_resampler_t* r) {
  memset(r, 0, sizeof *r);
  r->newest = MSCNN_RS_TAPS - 1u;
  r->q = MSCNN_RS_CENTRE / MSCNN_RS_UP; /* output 0 */
  r->p = MSCNN_RS_CENTRE % MSCNN_RS_UP;
}

/* Output k (q, p) from the ring, whose newest row holds input q; then k + 1. */
static void emit(mscnn_resampler_t* r, float* out) {
  const float* phase = mscnn_rs_phases[r->p];
  for (size_t lead = 0; lead < MSCNN_LEADS; ++lead) {
    float acc = 0.0f;
    uint32_t row = r->newest;
    for (size_t j = 0; j < MSCNN_RS_TAPS; ++j) {
      acc += phase[j] * r->ring[row][lead];
      row = row == 0u ? MSCNN_RS_TAPS - 1u : row - 1u;
    }
    out[lead] = acc;
  }
  r->p += MSCNN_RS_DOWN;
  r->q += r->p / MSCNN_RS_UP;
  r->p %= MSCNN_RS_UP;
  r->span_rest += MSCNN_RS_DOWN;
  r->span += r->span_rest / MSCNN_RS_UP;
  r->span_rest %= MSCNN_RS_UP;
}

/* Input number r->pushed into the ring, and the outputs whose newest input it is (no
 * more than `limit`: past the end of the record, none). */
static size_t step(mscnn_resampler_t* r, const float* sample, float* out, int finishing) {
  r->newest = r->newest + 1u == MSCNN_RS_TAPS ? 0u : r->newest + 1u;
  for (size_t lead = 0; lead < MSCNN_LEADS; ++lead) {
    r->ring[r->newest][lead] = sample ? sample[lead] : 0.0f;
  }
  const uint32_t i = r->pushed++;
  size_t n = 0;
  while (r->q <= i && !(finishing && r->span >= r->received)) {
    emit(r, out + n * MSCNN_LEADS);
    ++n;
  }
  return n;
}

size_t mscnn_resample_push(mscnn_resampler_t* r, const float* sample, float* out) {
  ++r->received;
  return step(r, sample, out, 0);
}

size_t mscnn_resample_finish(mscnn_resampler_t* r, float* out) {
  while (r->span < r->received) { /* outputs remain: zeros until the next is final */
    size_t n = step(r, 0, out, 1);
    if (n > 0) return n;
  }
  return 0;
}

uint32_t mscnn_resample_to_input(uint32_t sample) {
  /* round(s * DOWN / UP) with s = a * UP + b, in 32 bits */
  const uint32_t a = sample / MSCNN_RS_UP, b = sample % MSCNN_RS_UP;
  return a * MSCNN_RS_DOWN + (2u * b * MSCNN_RS_DOWN + MSCNN_RS_UP) / (2u * MSCNN_RS_UP);
}

uint32_t mscnn_resample_length(uint32_t n) {
  const uint32_t a = n / MSCNN_RS_DOWN, b = n % MSCNN_RS_DOWN;
  return a * MSCNN_RS_UP + (b * MSCNN_RS_UP + MSCNN_RS_DOWN - 1u) / MSCNN_RS_DOWN;
}
