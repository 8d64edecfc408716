/* The sensor's rate to the model's: deploy/resample.py's polyphase resampler, sample by
 * sample, with no heap and no filter design on the device. `python -m compile mcu
 * --input-fs HZ` writes resample_taps.h beside this header: the rates, the reduced ratio
 * MSCNN_RS_UP / MSCNN_RS_DOWN, the filter's centre and its phases (float32, the taps of
 * deploy/resample.py's design, per phase newest input first).
 *
 * Each sensor sample (all leads) is pushed as it arrives and gives 0 to
 * MSCNN_RS_MAX_OUT samples at the model's rate: those whose newest input it is. Inputs
 * before the first sample and after the last are zeros (mscnn_resample_finish gives the
 * last outputs), so the outputs are the offline resampling of the whole record: equal,
 * within float32 accumulation, to deploy/resample.py's, whatever the chunking. The
 * state is MSCNN_RS_TAPS samples per lead and a few counters; no 64-bit division. */
#ifndef MSCNN_RESAMPLE_H_
#define MSCNN_RESAMPLE_H_

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "resample_taps.h"

#define MSCNN_RS_MAX_OUT ((MSCNN_RS_UP + MSCNN_RS_DOWN - 1) / MSCNN_RS_DOWN)

typedef struct {
  float ring[MSCNN_RS_TAPS][MSCNN_LEADS]; /* the last MSCNN_RS_TAPS inputs */
  uint32_t newest;                        /* ring row of the newest input */
  uint32_t received;                      /* inputs pushed (zeros of the finish not counted) */
  uint32_t pushed;                        /* inputs pushed, zeros included */
  uint32_t q, p;      /* next output k: k * DOWN + CENTRE = q * UP + p (its newest input, phase) */
  uint32_t span;      /* floor(k * DOWN / UP): the output exists while span < received */
  uint32_t span_rest; /* k * DOWN mod UP */
} mscnn_resampler_t;

void mscnn_resample_init(mscnn_resampler_t* r);
/* One input sample (MSCNN_LEADS values); writes the outputs now final to `out`
 * (sample-major, MSCNN_LEADS each, at most MSCNN_RS_MAX_OUT) and returns how many. */
size_t mscnn_resample_push(mscnn_resampler_t* r, const float* sample, float* out);
/* After the last input: the next of the remaining outputs (zeros taken after the end),
 * as push does; 0 when the record's ceil(n * UP / DOWN) outputs have all been given.
 * Call until it returns 0. */
size_t mscnn_resample_finish(mscnn_resampler_t* r, float* out);
/* An output sample index as the nearest input sample index (round half up). */
uint32_t mscnn_resample_to_input(uint32_t sample);
/* ceil(n * UP / DOWN): the outputs of n inputs. */
uint32_t mscnn_resample_length(uint32_t n);

#endif /* MSCNN_RESAMPLE_H_ */
