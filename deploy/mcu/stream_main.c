/* Example firmware for a streaming step: one record streamed hop by hop, as a wearable
 * would, with no OS and no heap, driven over semihosting by the host (qemu-system-arm, or
 * a debug probe).
 *
 * Reads input.f32 (a record: MSCNN_LEADS rows of float32 samples in mV at MSCNN_FS_HZ,
 * or at MSCNN_INPUT_FS_HZ for a build with --input-fs, which resamples them as they are
 * read, and prints beats in that rate's samples; lead-major) from the host's working
 * directory, streams it through mscnn_step() by the
 * protocol of model.h (whole hops, the partial last hop, empty hops until the frames
 * stop), writes the record's frames to output.f32 frame by frame (frame-major:
 * MSCNN_CHANNELS floats per frame) and prints, for the QRS detector, each R-peak as soon
 * as the rule (rpeaks.h) is certain of it, then a summary:
 *
 *   mscnn beat sample=1234 ms=2468
 *   mscnn stream steps=27 rc=0 ticks=123456 ticks_hi=0 hop_ticks_max=5000 frames=625 beats=12
 *   mscnn calibration instructions=2097152 ticks=52429
 *   mscnn done records=1 stack_peak=1234 stack_size=16384
 *
 * `ticks` counts SysTick at the processor clock over all steps, `hop_ticks_max` the
 * slowest single step (the latency a real-time loop must absorb); see main.c for how
 * ticks become instructions. The exit status is the first failing step's error code
 * (MSCNN_E_*), or 0. */
#include <stdint.h>

#include "model.h"
#include "semihost.h"

#ifdef MSCNN_RESAMPLE /* built with --input-fs: input.f32 is at the sensor's rate */
#include "resample_input.h"
#define BEAT_FS_HZ MSCNN_INPUT_FS_HZ /* beats in the sensor's clock */
#define BEAT_SAMPLE(s) mscnn_input_sample(s)
#else
#define BEAT_FS_HZ MSCNN_FS_HZ
#define BEAT_SAMPLE(s) (s)
#endif

#ifdef MSCNN_PROFILE
void mscnn_profile_print(void);
#endif

#ifdef MSCNN_RPEAK_THRESHOLD /* the QRS detector: one logit per frame */
#include "rpeaks.h"

/* A sample index as milliseconds, in 32-bit arithmetic (no 64-bit division). */
static uint32_t ms_of(uint32_t sample) {
  return sample / BEAT_FS_HZ * 1000u + sample % BEAT_FS_HZ * 1000u / BEAT_FS_HZ;
}
#define WITH_BEATS 1
static mscnn_beats_t beats;
static uint32_t beat_count;

static void print_beats(void) {
  int64_t sample;
  while (mscnn_beats_next(&beats, &sample)) {
    const uint32_t s = BEAT_SAMPLE((uint32_t)sample);
    sh_print("mscnn beat");
    sh_print_kv("sample", s);
    sh_print_kv("ms", ms_of(s));
    sh_print("\n");
    ++beat_count;
  }
}
#else
#define WITH_BEATS 0
#endif

extern uint32_t __stack_bottom, __stack_top;

#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)
#define SYST_MAX 0xFFFFFFu
#define PAINT 0x5AFEC0DEu
#define CALIBRATION_LOOPS (1u << 20)

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { ++systick_wraps; }

static uint64_t systick_now(void) {
  uint32_t wraps, value;
  do {
    wraps = systick_wraps;
    value = SYST_CVR;
  } while (wraps != systick_wraps);
  return (uint64_t)wraps * (SYST_MAX + 1u) + (SYST_MAX - value);
}

__attribute__((noinline)) static void paint_stack(void) {
  uint32_t* sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (uint32_t* p = &__stack_bottom; p < sp - 32; ++p) *p = PAINT;
}

static uint32_t stack_peak(void) {
  const uint32_t* p = &__stack_bottom;
  while (p < &__stack_top && *p == PAINT) ++p;
  return (uint32_t)((uintptr_t)&__stack_top - (uintptr_t)p);
}

__attribute__((noinline)) static uint64_t calibrate(void) {
  uint32_t n = CALIBRATION_LOOPS;
  uint64_t start = systick_now();
  __asm__ volatile("1:\n\tsubs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
  return systick_now() - start;
}

/* Hop k of the record (samples per lead), zero-padded by mscnn_step past `n`. */
static size_t read_hop(int in, size_t samples, size_t k) {
#ifdef MSCNN_RESAMPLE
  (void)samples, (void)k; /* read in order, through the resampler */
  return mscnn_input_hop(in, mscnn_input());
#endif
  size_t first = k * MSCNN_HOP;
  size_t n = first >= samples ? 0 : (samples - first < MSCNN_HOP ? samples - first : MSCNN_HOP);
  float* x = mscnn_input();
  for (size_t lead = 0; lead < MSCNN_LEADS && n > 0; ++lead) {
    sh_seek(in, (lead * samples + first) * sizeof(float));
    sh_read(in, x + lead * MSCNN_HOP, n * sizeof(float));
  }
  return n;
}

static int write_frames(int out) {
  size_t start, stop;
  mscnn_valid(&start, &stop);
  const float* y = mscnn_output();
  for (size_t t = start; t < stop; ++t) {
    for (size_t c = 0; c < MSCNN_CHANNELS; ++c) {
      if (sh_write(out, &y[c * MSCNN_FRAMES_PER_STEP + t], sizeof(float)) != sizeof(float))
        return -1;
    }
#if WITH_BEATS
    mscnn_beats_push(&beats, y[t]);
    print_beats();
#endif
  }
  return (int)(stop - start);
}

static void report(size_t steps, uint64_t ticks, uint64_t hop_max, size_t frames, int rc) {
  sh_print("mscnn stream");
  sh_print_kv("steps", (uint32_t)steps);
  sh_print_kv("rc", (uint32_t)rc);
  sh_print_kv("ticks", (uint32_t)ticks);
  sh_print_kv("ticks_hi", (uint32_t)(ticks >> 32));
  sh_print_kv("hop_ticks_max", (uint32_t)hop_max);
  sh_print_kv("frames", (uint32_t)frames);
#if WITH_BEATS
  sh_print_kv("beats", beat_count);
#endif
  if (rc == MSCNN_E_KERNEL) {
    sh_print(" error=");
    sh_print(mscnn_last_error());
  }
  sh_print("\n");
}

static int stream(int in, int out, size_t samples) {
  size_t end = samples / MSCNN_HOP, steps = 0, frames = 0;
  uint64_t total = 0, hop_max = 0;
  int rc = MSCNN_OK;
  mscnn_reset();
#if WITH_BEATS
  mscnn_beats_init(&beats, MSCNN_RPEAK_THRESHOLD, MSCNN_REDUCTION, MSCNN_RPEAK_MIN_RR,
                   MSCNN_RPEAK_EDGE);
#endif
  for (size_t k = 0; k < end + MSCNN_FLUSH_STEPS; ++k) {
    size_t n = read_hop(in, samples, k);
    uint64_t start = systick_now();
    rc = mscnn_step(n);
    uint64_t ticks = systick_now() - start;
    total += ticks;
    hop_max = ticks > hop_max ? ticks : hop_max;
    ++steps;
    if (rc != MSCNN_OK) break;
    int written = write_frames(out);
    if (written < 0) return 11;
    frames += (size_t)written;
    size_t first, stop;
    mscnn_valid(&first, &stop);
    if (k >= end && stop < MSCNN_FRAMES_PER_STEP) break;
  }
#if WITH_BEATS
  if (rc == MSCNN_OK) {
    mscnn_beats_finish(&beats, (int64_t)samples);
    print_beats();
  }
#endif
  report(steps, total, hop_max, frames, rc);
  return rc;
}

int main(void) {
  paint_stack();
  SYST_RVR = SYST_MAX;
  SYST_CVR = 0u;
  SYST_CSR = 7u; /* enable, interrupt on wrap, processor clock */
  int in = sh_open("input.f32", 0);
  int out = sh_open("output.f32", 1);
  if (in < 0 || out < 0) {
    sh_print("mscnn error: cannot open input.f32 or output.f32 in the working directory\n");
    return 10;
  }
  long bytes = sh_length(in);
  long row = (long)(MSCNN_LEADS * sizeof(float));
  size_t samples = (size_t)(bytes / row);
#ifdef MSCNN_RESAMPLE
  samples = mscnn_input_begin(samples); /* the record's length at the model's rate */
#endif
  int rc = bytes > 0 && bytes % row == 0 ? stream(in, out, samples) : MSCNN_E_LENGTH;
  sh_close(in);
  sh_close(out);
#ifdef MSCNN_PROFILE
  mscnn_profile_print(); /* profile.c: ticks per kernel call */
#endif
  uint64_t calibration = calibrate();
  sh_print("mscnn calibration");
  sh_print_kv("instructions", 2u * CALIBRATION_LOOPS);
  sh_print_kv("ticks", (uint32_t)calibration);
  sh_print("\nmscnn done");
  sh_print_kv("records", 1u);
  sh_print_kv("stack_peak", stack_peak());
  sh_print_kv("stack_size", (uint32_t)((uintptr_t)&__stack_top - (uintptr_t)&__stack_bottom));
  sh_print("\n");
  return rc;
}
