#include "resample_input.h"

#include "semihost.h"

#define BLOCK 64u /* sensor samples read per lead at a time */

static mscnn_resampler_t rs;
static float pending[MSCNN_RS_MAX_OUT * MSCNN_LEADS]; /* outputs not yet in a hop */
static size_t pending_n, pending_at;
static float block[MSCNN_LEADS][BLOCK];
static size_t total, next, block_first, block_n;

size_t mscnn_input_begin(size_t samples) {
  mscnn_resample_init(&rs);
  total = samples;
  next = block_first = block_n = pending_n = pending_at = 0;
  return mscnn_resample_length((uint32_t)samples);
}

/* The next sensor sample (all leads) into `sample`, reading a block when it runs out. */
static void read_sample(int in, float* sample) {
  if (next >= block_first + block_n) {
    block_first = next;
    block_n = total - next < BLOCK ? total - next : BLOCK;
    for (size_t lead = 0; lead < MSCNN_LEADS; ++lead) {
      sh_seek(in, (lead * total + block_first) * sizeof(float));
      sh_read(in, block[lead], block_n * sizeof(float));
    }
  }
  for (size_t lead = 0; lead < MSCNN_LEADS; ++lead) sample[lead] = block[lead][next - block_first];
  ++next;
}

size_t mscnn_input_hop(int in, float* x) {
  size_t n = 0;
  float sample[MSCNN_LEADS];
  while (n < MSCNN_HOP) {
    if (pending_at == pending_n) { /* resample the next sensor sample, or finish */
      pending_at = 0;
      if (next < total) {
        read_sample(in, sample);
        pending_n = mscnn_resample_push(&rs, sample, pending);
      } else {
        pending_n = mscnn_resample_finish(&rs, pending);
        if (pending_n == 0) break;
      }
      continue;
    }
    for (size_t lead = 0; lead < MSCNN_LEADS; ++lead) {
      x[lead * MSCNN_HOP + n] = pending[pending_at * MSCNN_LEADS + lead];
    }
    ++pending_at;
    ++n;
  }
  return n;
}

uint32_t mscnn_input_sample(uint32_t sample) {
  const uint32_t s = mscnn_resample_to_input(sample);
  return s < total ? s : (uint32_t)total - 1u;
}
