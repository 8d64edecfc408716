/* Example firmware: the model on a Cortex-M with no OS and no heap, driven over
 * semihosting by the host (qemu-system-arm, or a debug probe).
 *
 * Reads input.f32 (records of MSCNN_INPUT_LEN float32 samples in mV at MSCNN_FS_HZ, back
 * to back) from the host's working directory, runs the model on each record, writes the
 * outputs to output.f32 and prints, for the QRS detector, each record's R-peaks (the rule
 * of rpeaks.h), one line per record and a summary:
 *
 *   mscnn beat record=0 sample=1234 ms=2468
 *   mscnn run index=0 rc=0 ticks=123456 ticks_hi=0 beats=5
 *   mscnn calibration instructions=2097152 ticks=52429
 *   mscnn done records=3 stack_peak=1234 stack_size=16384
 *
 * `ticks` counts SysTick at the processor clock around mscnn_run() alone; under
 * `qemu -icount shift=N` every instruction is 2^N ns of virtual time, which turns ticks
 * into instructions; the calibration line times a loop of known length to say how many
 * instructions a tick is (40 on qemu's MPS2 boards: 25 MHz SysTick, 1 ns per
 * instruction at shift=0). The stack is painted at start; stack_peak is how much of it was
 * ever used. The exit status is the first failing run's error code (MSCNN_E_*), or 0. A
 * file whose size is no whole number of records is passed to the model as it is, so the
 * model's own length check answers (MSCNN_E_LENGTH). */
#include <stdint.h>

#include "model.h"
#include "semihost.h"

#ifdef MSCNN_PROFILE
void mscnn_profile_print(void);
#endif

#ifdef MSCNN_RPEAK_THRESHOLD /* the QRS detector: one logit per frame */
#include "rpeaks.h"

/* A sample index as milliseconds, in 32-bit arithmetic (no 64-bit division). */
static uint32_t ms_of(uint32_t sample) {
  return sample / MSCNN_FS_HZ * 1000u + sample % MSCNN_FS_HZ * 1000u / MSCNN_FS_HZ;
}

/* The R-peaks of one record's logits, printed; how many. */
static uint32_t print_beats(int index, const float* logits) {
  static mscnn_beats_t beats;
  uint32_t count = 0;
  int64_t sample;
  mscnn_beats_init(&beats, MSCNN_RPEAK_THRESHOLD, MSCNN_REDUCTION, MSCNN_RPEAK_MIN_RR,
                   MSCNN_RPEAK_EDGE);
  for (size_t i = 0; i <= MSCNN_OUTPUT_LEN; ++i) {
    if (i < MSCNN_OUTPUT_LEN) {
      mscnn_beats_push(&beats, logits[i]);
    } else {
      mscnn_beats_finish(&beats, MSCNN_SAMPLES);
    }
    while (mscnn_beats_next(&beats, &sample)) {
      sh_print("mscnn beat");
      sh_print_kv("record", (uint32_t)index);
      sh_print_kv("sample", (uint32_t)sample);
      sh_print_kv("ms", ms_of((uint32_t)sample));
      sh_print("\n");
      ++count;
    }
  }
  return count;
}
#endif

extern uint32_t __stack_bottom, __stack_top;

#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)
#define SYST_MAX 0xFFFFFFu
#define PAINT 0x5AFEC0DEu

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { ++systick_wraps; }

static void systick_start(void) {
  SYST_RVR = SYST_MAX;
  SYST_CVR = 0u;
  SYST_CSR = 7u; /* enable, interrupt on wrap, processor clock */
}

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

/* A loop of exactly 2 * n instructions (subs, bne), timed like a model run: the host
 * divides to learn instructions per SysTick tick instead of assuming the clock ratio. */
#define CALIBRATION_LOOPS (1u << 20)

__attribute__((noinline)) static uint64_t calibrate(void) {
  uint32_t n = CALIBRATION_LOOPS;
  uint64_t start = systick_now();
  __asm__ volatile("1:\n\tsubs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
  return systick_now() - start;
}

static int run_one(int index, int out) {
  uint64_t start = systick_now();
  int rc = mscnn_run(MSCNN_INPUT_LEN);
  uint64_t ticks = systick_now() - start;
#ifdef MSCNN_RPEAK_THRESHOLD
  uint32_t beats = rc == MSCNN_OK ? print_beats(index, mscnn_output()) : 0u;
#endif
  sh_print("mscnn run");
  sh_print_kv("index", (uint32_t)index);
  sh_print_kv("rc", (uint32_t)rc);
  sh_print_kv("ticks", (uint32_t)ticks);
  sh_print_kv("ticks_hi", (uint32_t)(ticks >> 32));
#ifdef MSCNN_RPEAK_THRESHOLD
  sh_print_kv("beats", beats);
#endif
  if (rc != MSCNN_OK) {
    sh_print(" error=");
    sh_print(mscnn_last_error());
  }
  sh_print("\n");
  size_t bytes = MSCNN_OUTPUT_LEN * sizeof(float);
  if (rc == MSCNN_OK && sh_write(out, mscnn_output(), bytes) != bytes) return 11;
  return rc;
}

static int wrong_length(int in, long bytes) {
  size_t take = (size_t)bytes < MSCNN_INPUT_LEN * sizeof(float) ? (size_t)bytes
                                                                   : MSCNN_INPUT_LEN * sizeof(float);
  sh_read(in, mscnn_input(), take);
  int rc = mscnn_run((size_t)bytes / sizeof(float));
  sh_print("mscnn run");
  sh_print_kv("index", 0u);
  sh_print_kv("rc", (uint32_t)rc);
  sh_print(" error=input length\n");
  return rc == MSCNN_OK ? 12 : rc;
}

int main(void) {
  paint_stack();
  systick_start();
  int in = sh_open("input.f32", 0);
  int out = sh_open("output.f32", 1);
  if (in < 0 || out < 0) {
    sh_print("mscnn error: cannot open input.f32 or output.f32 in the working directory\n");
    return 10;
  }
  long bytes = sh_length(in);
  const long record = (long)(MSCNN_INPUT_LEN * sizeof(float));
  int rc = MSCNN_OK;
  if (bytes <= 0 || bytes % record != 0) {
    rc = wrong_length(in, bytes < 0 ? 0 : bytes);
  } else {
    for (long i = 0; i < bytes / record && rc == MSCNN_OK; ++i) {
      if (sh_read(in, mscnn_input(), (size_t)record) != (size_t)record) return 13;
      rc = run_one((int)i, out);
    }
  }
  sh_close(in);
  sh_close(out);
#ifdef MSCNN_PROFILE
  mscnn_profile_print(); /* profile.c: ticks per kernel call */
#endif
  uint64_t calibration = calibrate();
  sh_print("mscnn calibration");
  sh_print_kv("instructions", 2u * CALIBRATION_LOOPS);
  sh_print_kv("ticks", (uint32_t)calibration);
  sh_print("\n");
  sh_print("mscnn done");
  sh_print_kv("records", (uint32_t)(bytes > 0 ? bytes / record : 0));
  sh_print_kv("stack_peak", stack_peak());
  sh_print_kv("stack_size", (uint32_t)((uintptr_t)&__stack_top - (uintptr_t)&__stack_bottom));
  sh_print("\n");
  return rc;
}
