/* Reset and the Cortex-M vector table: enable the FPU, copy .data from flash, zero .bss,
 * run main and report its status through semihosting. Faults end the run with status
 * 100 + the exception number, so a crash under qemu is an error, never a hang. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t __stack_top, __data_load, __data_start, __data_end, __bss_start, __bss_end;
int main(void);
void SysTick_Handler(void);

#define CPACR (*(volatile uint32_t*)0xE000ED88u)
#define ICSR (*(volatile uint32_t*)0xE000ED04u)

void Reset_Handler(void) {
  CPACR |= 0xFu << 20; /* CP10 and CP11 (the FPU): full access, before any float code */
  __asm__ volatile("dsb\n\tisb" ::: "memory");
  const uint32_t* from = &__data_load;
  for (uint32_t* to = &__data_start; to < &__data_end;) *to++ = *from++;
  for (uint32_t* to = &__bss_start; to < &__bss_end;) *to++ = 0u;
  sh_exit(main());
}

static void Fault_Handler(void) {
  uint32_t exception = ICSR & 0x1FFu;
  sh_print("fault: exception");
  sh_print_kv("number", exception);
  sh_print("\n");
  sh_exit(100 + (int)exception);
}

__attribute__((section(".isr_vector"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&__stack_top), /* initial stack pointer */
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    0, 0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    SysTick_Handler,
};
