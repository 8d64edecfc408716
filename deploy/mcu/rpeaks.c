/* R-peaks from the detector's logits as frames arrive (rpeaks.h has the rule). */
#include "rpeaks.h"

enum { UNDECIDED = 0, KEPT = 1, DROPPED = 2 };

void mscnn_beats_init(mscnn_beats_t* b, float threshold, int32_t reduction, int32_t min_rr,
                      int32_t edge) {
  b->threshold = threshold;
  b->reduction = reduction;
  b->min_rr = min_rr;
  b->edge = edge;
  b->frames = 0;
  b->run_first = -1;
  b->run_max = 0.0f;
  b->n_samples = -1;
  b->count = 0;
  b->ready_first = 0;
  b->ready_count = 0;
  b->overflows = 0;
}

/* Does p come before q in the offline rule's order (strongest first, then earliest)? */
static int precedes(const mscnn_candidate_t* p, const mscnn_candidate_t* q) {
  return p->strength > q->strength || (p->strength == q->strength && p->sample < q->sample);
}

static int closer_than(int64_t a, int64_t b, int64_t m) { return (a > b ? a - b : b - a) < m; }

/* The verdict on pending[i]: DROPPED when a candidate before it in the rule's order and
 * within min_rr is kept; else KEPT when it is `ready` (every candidate within min_rr is
 * known and inside the record) and none of those before it is still undecided; else
 * UNDECIDED. `force` decides on what is known, undecided ones counting as not kept. */
static uint8_t verdict(const mscnn_beats_t* b, size_t i, int ready, int force) {
  const mscnn_candidate_t* c = &b->pending[i];
  int wait = 0;
  for (size_t j = 0; j < b->count; ++j) {
    const mscnn_candidate_t* o = &b->pending[j];
    if (j == i || o->state == DROPPED || !closer_than(o->sample, c->sample, b->min_rr) ||
        !precedes(o, c))
      continue;
    if (o->state == KEPT) return DROPPED;
    wait = !force;
  }
  return wait || !ready ? UNDECIDED : KEPT;
}

/* Move the decided candidates at the front (rising samples) out: the kept ones to the
 * ready list. A kept candidate leaves no undecided one within min_rr behind it (they
 * were dropped by it) and none can come later (it was ready). */
static void release(mscnn_beats_t* b) {
  size_t k = 0;
  for (; k < b->count && b->pending[k].state != UNDECIDED; ++k) {
    if (b->pending[k].state != KEPT) continue;
    if (b->ready_count == MSCNN_BEATS_READY) {
      ++b->overflows; /* nobody takes the beats: this one is lost */
      continue;
    }
    b->ready[(b->ready_first + b->ready_count) % MSCNN_BEATS_READY] = b->pending[k].sample;
    ++b->ready_count;
  }
  for (size_t i = k; i < b->count; ++i) b->pending[i - k] = b->pending[i];
  b->count -= k;
}

static void decide(mscnn_beats_t* b) {
  const int64_t r = b->reduction;
  const int finished = b->n_samples >= 0;
  /* No candidate still unknown can lie below `unknown` (an open run's, or a later run's);
   * the record holds at least `length` samples (frame F - 1 exists). */
  const int64_t unknown = (b->run_first >= 0 ? b->run_first : b->frames) * r + (r >> 1);
  const int64_t length = finished ? b->n_samples : (b->frames > 0 ? (b->frames - 1) * r + 1 : 0);
  for (int changed = 1; changed;) {
    changed = 0;
    for (size_t i = 0; i < b->count; ++i) {
      mscnn_candidate_t* c = &b->pending[i];
      if (c->state != UNDECIDED) continue;
      /* every candidate before reach is known and inside (s < length - edge), c too */
      const int64_t reach = c->sample + (b->min_rr > 0 ? b->min_rr : 1);
      const int ready = finished || (reach <= unknown && reach + b->edge <= length);
      const uint8_t v = verdict(b, i, ready, 0);
      if (v != UNDECIDED) {
        c->state = v;
        changed = 1;
      }
    }
  }
  release(b);
}

/* The open run ended at frame `last`: its candidate, unless it lies in the first edge. */
static void close_run(mscnn_beats_t* b, int64_t last) {
  const int64_t r = b->reduction;
  const int64_t s = (((b->run_first + last) * r) >> 1) + (r >> 1); /* >= 0: >> is / 2 */
  const float strength = b->run_max;
  b->run_first = -1;
  if (s < b->edge) return;
  if (b->count == MSCNN_BEATS_PENDING) { /* a chain longer than the queue: decide the oldest */
    b->pending[0].state = verdict(b, 0, 1, 1);
    ++b->overflows;
    release(b);
  }
  mscnn_candidate_t* c = &b->pending[b->count++];
  c->sample = s;
  c->strength = strength;
  c->state = UNDECIDED;
}

void mscnn_beats_push(mscnn_beats_t* b, float logit) {
  const int64_t i = b->frames++;
  if (logit > b->threshold) { /* NaN is not positive */
    if (b->run_first < 0) {
      b->run_first = i;
      b->run_max = logit;
    } else if (logit > b->run_max) {
      b->run_max = logit;
    }
  } else if (b->run_first >= 0) {
    close_run(b, i - 1);
  }
  decide(b);
}

void mscnn_beats_finish(mscnn_beats_t* b, int64_t n_samples) {
  if (b->run_first >= 0) close_run(b, b->frames - 1);
  b->n_samples = n_samples < 0 ? 0 : n_samples;
  for (size_t i = 0; i < b->count; ++i) {
    if (b->pending[i].state == UNDECIDED && b->pending[i].sample >= b->n_samples - b->edge)
      b->pending[i].state = DROPPED; /* too near the record's end */
  }
  decide(b);
}

int mscnn_beats_next(mscnn_beats_t* b, int64_t* sample) {
  if (b->ready_count == 0) return 0;
  *sample = b->ready[b->ready_first];
  b->ready_first = (b->ready_first + 1) % MSCNN_BEATS_READY;
  --b->ready_count;
  return 1;
}
