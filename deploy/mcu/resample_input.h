/* The example stream firmware's record at the sensor's rate (built with --input-fs):
 * read from input.f32 (MSCNN_LEADS rows of float32 mV at MSCNN_INPUT_FS_HZ, lead-major),
 * resampled sample by sample (resample.h) and handed to the step hop by hop at the
 * model's MSCNN_FS_HZ. A wearable would push its sensor's samples the same way. */
#ifndef MSCNN_RESAMPLE_INPUT_H_
#define MSCNN_RESAMPLE_INPUT_H_

#include <stddef.h>
#include <stdint.h>

#include "resample.h"

/* A record of `samples` sensor samples per lead; returns its length at the model's rate. */
size_t mscnn_input_begin(size_t samples);
/* The next hop at the model's rate into x (planar: lead l at x + l * MSCNN_HOP); the
 * samples written, fewer than MSCNN_HOP at the end of the record, then 0. */
size_t mscnn_input_hop(int in, float* x);
/* A sample index at the model's rate as the nearest sensor sample (at most the last). */
uint32_t mscnn_input_sample(uint32_t sample);

#endif /* MSCNN_RESAMPLE_INPUT_H_ */
