/* The per-kernel profile of the proof firmware (built with -DMSCNN_PROFILE, which also
 * compiles model.c's marks in; see compile/mcu/aot.py): SysTick ticks each kernel call
 * took, summed over every run, printed one call a line:
 *
 *   mscnn profile call=0 ticks=1234
 *
 * The host (compile/mcu/firmware.py) turns ticks into instructions with the firmware's
 * calibration line and names each call's kernel. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t mscnn_profile_ticks[];
extern const uint32_t mscnn_profile_calls;

void mscnn_profile_print(void) {
  for (uint32_t k = 0; k < mscnn_profile_calls; ++k) {
    sh_print("mscnn profile");
    sh_print_kv("call", k);
    sh_print_kv("ticks", mscnn_profile_ticks[k]);
    sh_print("\n");
  }
}
