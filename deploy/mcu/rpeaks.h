/* R-peaks from the QRS detector's per-frame logits, as frames arrive: the same rule as
 * the offline one, beat for beat, reported in rising order once they are certain.
 *
 * The rule, for the logits x[0..F-1] of a record of N samples, r samples per frame:
 *  1. A frame is positive when x[i] > threshold (the logit of the probability
 *     threshold, given here as the float32 just below or at it, so the float test is
 *     the exact one).
 *  2. Every maximal run of positive frames a..b is a candidate at sample
 *     s = (a + b) * r / 2 + r / 2 (integer division), strength max x[a..b].
 *  3. A candidate with s < edge or s >= N - edge is dropped.
 *  4. Candidates are visited strongest first (ties: earlier sample first); one is kept
 *     when it lies at least min_rr samples from every candidate kept before it.
 *  5. The kept samples in rising order.
 *
 * Step 4 is a global sort in the offline rule; here a candidate is decided as soon as
 * every candidate that could precede it within min_rr is known and decided (a kept one
 * drops it at once). A beat is therefore reported about min_rr + edge samples after its
 * run ends, plus the model's own delay. The rule is exact while no more than
 * MSCNN_BEATS_PENDING candidates wait at once (a chain of ever stronger candidates each
 * closer than min_rr to the next; real ECG has a few at most); beyond that the oldest is
 * decided on what is known and `overflows` counts it.
 *
 * No heap, no division, no libm: one mscnn_beats_t of about 850 bytes per record. */
#ifndef MSCNN_RPEAKS_H
#define MSCNN_RPEAKS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MSCNN_BEATS_PENDING 32 /* candidates that may wait for a decision at once */
#define MSCNN_BEATS_READY 32   /* decided beats not yet taken by mscnn_beats_next */

typedef struct {
  int64_t sample;
  float strength;
  uint8_t state; /* 0 undecided, 1 kept, 2 dropped */
} mscnn_candidate_t;

typedef struct {
  float threshold;
  int64_t reduction, min_rr, edge;
  int64_t frames;    /* frames pushed so far */
  int64_t run_first; /* first frame of the run of positive frames still open, or -1 */
  float run_max;
  int64_t n_samples; /* the record's length once mscnn_beats_finish was called, or -1 */
  mscnn_candidate_t pending[MSCNN_BEATS_PENDING];
  size_t count;
  int64_t ready[MSCNN_BEATS_READY];
  size_t ready_first, ready_count;
  uint32_t overflows; /* decisions forced by a full queue, or beats lost by a full ready list */
} mscnn_beats_t;

/* Start a record. threshold: a frame is positive when its logit is greater; reduction:
 * input samples per frame; min_rr and edge in samples (the model's header gives all four:
 * MSCNN_RPEAK_THRESHOLD, MSCNN_REDUCTION, MSCNN_RPEAK_MIN_RR, MSCNN_RPEAK_EDGE). */
void mscnn_beats_init(mscnn_beats_t* b, float threshold, int32_t reduction, int32_t min_rr,
                      int32_t edge);
/* The record's next frame's logit. Take the beats it released with mscnn_beats_next. */
void mscnn_beats_push(mscnn_beats_t* b, float logit);
/* The record ended after n_samples samples (per lead): decide everything still open. */
void mscnn_beats_finish(mscnn_beats_t* b, int64_t n_samples);
/* The next beat's sample index (rising), 1; or 0 when none is certain yet. */
int mscnn_beats_next(mscnn_beats_t* b, int64_t* sample);

#ifdef __cplusplus
}
#endif
#endif
